//! Growing delays after failed logins.
//!
//! A person who mistypes a password a few times waits not at all or a few
//! seconds; a program guessing passwords gets at most four tries an hour
//! after the first dozen, since every further failure keeps the delay at 15
//! minutes.
//!
//! The web layer keys the throttle by user name and by client address (for
//! IPv6 the /64 network, since whoever has one address of it usually has
//! them all; an IPv4-mapped address as IPv4), and for each login attempt:
//!
//! 1. if [`LoginThrottle::delay_for`] is non-zero for the user or the
//!    address, refuses the attempt with "try again in N seconds" without
//!    checking the password (and without counting it);
//! 2. otherwise checks the password, then calls
//!    [`LoginThrottle::record_failure`] for both keys, or
//!    [`LoginThrottle::record_success`] for the user (not the address: a
//!    guesser who owns one account could otherwise clear the address's
//!    record between guesses at other accounts).
//!
//! The throttle has no clock: the caller passes `now`, which makes it
//! testable and keeps it pure. Memory is bounded by `max_entries` and
//! [`MAX_KEY_LEN`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Failures that cost no delay: typing mistakes.
pub const FREE_FAILURES: u32 = 3;

/// The delay after the first failure beyond [`FREE_FAILURES`]; it doubles
/// with each further failure.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);

/// The longest delay, reached after 14 failures.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// After this long without a failure, a key's failures are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Keys are cut to this many bytes: a "user name" is whatever a client
/// submits, and must not make each entry kilobytes long. Longer keys that
/// share their first bytes share an entry, which only makes them wait more.
pub const MAX_KEY_LEN: usize = 128;

/// Failed login counts per key (a user name or a client address).
#[derive(Debug)]
pub struct LoginThrottle {
    max_entries: usize,
    entries: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    last_failure: Instant,
}

impl Entry {
    /// Whether the failures are forgotten at `now`.
    fn forgotten(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_failure) >= FORGET_AFTER
    }
}

impl LoginThrottle {
    /// A throttle that remembers at most `max_entries` keys (at least one).
    /// When a new key comes and all places are taken, the key with the
    /// oldest last failure is dropped: memory stays bounded whatever an
    /// attacker sends, and the keys dropped first are the ones closest to
    /// being forgotten anyway. Each entry takes about 100 bytes plus its
    /// key (at most [`MAX_KEY_LEN`]), so 100 000 is a reasonable size.
    pub fn new(max_entries: usize) -> Self {
        LoginThrottle {
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
        }
    }

    /// Count a failed login of `key` at `now`.
    pub fn record_failure(&mut self, key: &str, now: Instant) {
        let key = capped(key);
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.forgotten(now) {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            // Calls from several threads may arrive slightly out of order.
            entry.last_failure = entry.last_failure.max(now);
            return;
        }
        if self.entries.len() >= self.max_entries {
            self.evict_oldest();
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                failures: 1,
                last_failure: now,
            },
        );
    }

    /// Forget the failures of `key` after a successful login.
    pub fn record_success(&mut self, key: &str) {
        self.entries.remove(capped(key));
    }

    /// How long `key` must still wait at `now` before its next attempt is
    /// checked: zero for the first [`FREE_FAILURES`] failures, then
    /// [`FIRST_DELAY`] doubling with each failure up to [`MAX_DELAY`],
    /// counted from the last failure.
    pub fn delay_for(&self, key: &str, now: Instant) -> Duration {
        match self.entries.get(capped(key)) {
            Some(entry) if !entry.forgotten(now) => delay_after(entry.failures)
                .saturating_sub(now.saturating_duration_since(entry.last_failure)),
            _ => Duration::ZERO,
        }
    }

    /// Drop the entry with the oldest last failure, by a linear scan: it
    /// runs only when the table is full, and a scan of 100 000 entries
    /// takes well under a millisecond.
    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_failure)
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            self.entries.remove(&key);
        }
    }
}

/// `key` cut to at most [`MAX_KEY_LEN`] bytes, at a character boundary.
fn capped(key: &str) -> &str {
    let mut end = key.len().min(MAX_KEY_LEN);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// The full delay after `failures` failures.
fn delay_after(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES + 1) {
        None => Duration::ZERO,
        // 2^10 seconds already exceed MAX_DELAY.
        Some(doublings) if doublings >= 10 => MAX_DELAY,
        Some(doublings) => (FIRST_DELAY * (1 << doublings)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn fail(throttle: &mut LoginThrottle, key: &str, times: u32, now: Instant) {
        for _ in 0..times {
            throttle.record_failure(key, now);
        }
    }

    #[test]
    fn delays_grow_exponentially_to_the_cap() {
        let expected = [
            0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900,
        ];
        for (failures, seconds) in expected.into_iter().enumerate() {
            assert_eq!(
                delay_after(failures as u32),
                seconds * S,
                "{failures} failures"
            );
        }
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);

        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        for (failures, seconds) in expected.into_iter().enumerate().skip(1) {
            throttle.record_failure("admin", t0);
            assert_eq!(
                throttle.delay_for("admin", t0),
                seconds * S,
                "{failures} failures"
            );
        }
    }

    #[test]
    fn the_delay_runs_from_the_last_failure() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "admin", 6, t0); // 4 s
        assert_eq!(throttle.delay_for("admin", t0), 4 * S);
        assert_eq!(throttle.delay_for("admin", t0 + S), 3 * S);
        assert_eq!(
            throttle.delay_for("admin", t0 + Duration::from_millis(3500)),
            Duration::from_millis(500)
        );
        assert_eq!(throttle.delay_for("admin", t0 + 4 * S), Duration::ZERO);
        assert_eq!(throttle.delay_for("admin", t0 + 100 * S), Duration::ZERO);
        // The next failure after waiting doubles the delay, from its own time.
        throttle.record_failure("admin", t0 + 100 * S);
        assert_eq!(throttle.delay_for("admin", t0 + 100 * S), 8 * S);
        // A `now` before the last failure (threads out of order) sees the
        // full delay and does not move the last failure back.
        assert_eq!(throttle.delay_for("admin", t0), 8 * S);
        throttle.record_failure("admin", t0 + 99 * S);
        assert_eq!(throttle.delay_for("admin", t0 + 100 * S), 16 * S);
    }

    #[test]
    fn failures_are_forgotten_after_an_hour_of_quiet() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "admin", 20, t0);
        assert_eq!(
            throttle.delay_for("admin", t0 + FORGET_AFTER - S),
            Duration::ZERO,
            "15 min elapsed"
        );
        throttle.record_failure("admin", t0 + FORGET_AFTER - S);
        assert_eq!(
            throttle.delay_for("admin", t0 + FORGET_AFTER - S),
            MAX_DELAY,
            "still remembered"
        );
        let later = t0 + 2 * FORGET_AFTER;
        assert_eq!(throttle.delay_for("admin", later), Duration::ZERO);
        // Counting starts again from one.
        fail(&mut throttle, "admin", 3, later);
        assert_eq!(throttle.delay_for("admin", later), Duration::ZERO);
        throttle.record_failure("admin", later);
        assert_eq!(throttle.delay_for("admin", later), S);
    }

    #[test]
    fn success_clears_the_key_only() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "admin", 5, t0);
        fail(&mut throttle, "192.0.2.7", 5, t0);
        throttle.record_success("admin");
        assert_eq!(throttle.delay_for("admin", t0), Duration::ZERO);
        assert_eq!(throttle.delay_for("192.0.2.7", t0), 2 * S);
        throttle.record_failure("admin", t0);
        assert_eq!(
            throttle.delay_for("admin", t0),
            Duration::ZERO,
            "counting from one again"
        );
        throttle.record_success("unknown");
    }

    #[test]
    fn keys_are_independent() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "alice", 8, t0);
        assert_eq!(throttle.delay_for("alice", t0), 16 * S);
        assert_eq!(throttle.delay_for("bob", t0), Duration::ZERO);
        assert_eq!(
            throttle.delay_for("Alice", t0),
            Duration::ZERO,
            "keys are exact"
        );
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_key_goes_first() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(3);
        fail(&mut throttle, "a", 10, t0);
        fail(&mut throttle, "b", 10, t0 + S);
        fail(&mut throttle, "c", 10, t0 + 2 * S);
        // A new failure of a known key keeps everything.
        throttle.record_failure("a", t0 + 3 * S);
        assert_eq!(throttle.entries.len(), 3);
        // A new key drops the one with the oldest last failure: now "b".
        throttle.record_failure("d", t0 + 4 * S);
        assert_eq!(throttle.entries.len(), 3);
        let now = t0 + 5 * S;
        assert_eq!(throttle.delay_for("b", now), Duration::ZERO);
        assert!(throttle.delay_for("a", now) > Duration::ZERO);
        assert!(throttle.delay_for("c", now) > Duration::ZERO);
        assert!(throttle.entries.contains_key("d"));

        for i in 0..10_000 {
            throttle.record_failure(&format!("spray-{i}"), now + i * S);
        }
        assert_eq!(throttle.entries.len(), 3);
    }

    #[test]
    fn long_keys_are_stored_cut() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        let long = format!("user:{}", "x".repeat(16 * 1024));
        fail(&mut throttle, &long, 5, t0);
        assert_eq!(throttle.entries.len(), 1);
        assert!(throttle.entries.keys().all(|k| k.len() == MAX_KEY_LEN));
        assert_eq!(throttle.delay_for(&long, t0), 2 * S);
        // Another long key with the same first bytes shares the entry.
        let other = format!("{long}y");
        assert_eq!(throttle.delay_for(&other, t0), 2 * S);
        throttle.record_success(&other);
        assert!(throttle.entries.is_empty());

        // A cut never splits a character (ü is two bytes).
        let unicode = format!("user:{}", "ü".repeat(100));
        throttle.record_failure(&unicode, t0);
        let stored = throttle.entries.keys().next().unwrap();
        assert_eq!(stored.len(), MAX_KEY_LEN - 1);
        assert!(unicode.starts_with(stored.as_str()));
        // Short keys are exact, up to the limit.
        let limit = "k".repeat(MAX_KEY_LEN);
        fail(&mut throttle, &limit, 5, t0);
        assert_eq!(throttle.delay_for(&limit, t0), 2 * S);
        assert_eq!(throttle.delay_for(&limit[1..], t0), Duration::ZERO);
    }

    #[test]
    fn at_least_one_entry() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(0);
        fail(&mut throttle, "a", 5, t0);
        assert_eq!(throttle.delay_for("a", t0), 2 * S);
        throttle.record_failure("b", t0);
        assert_eq!(throttle.entries.len(), 1);
        assert_eq!(throttle.delay_for("a", t0), Duration::ZERO);
    }

    #[test]
    fn counts_saturate() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(1);
        throttle.record_failure("a", t0);
        throttle.entries.get_mut("a").unwrap().failures = u32::MAX;
        throttle.record_failure("a", t0);
        assert_eq!(throttle.entries["a"].failures, u32::MAX);
        assert_eq!(throttle.delay_for("a", t0), MAX_DELAY);
    }
}
