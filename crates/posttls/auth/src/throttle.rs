//! Growing delays after failed logins.
//!
//! A person who mistypes a password a few times waits not at all or a few
//! seconds; a program guessing passwords gets at most four tries an hour
//! after the first dozen, since every further failure keeps the delay at 15
//! minutes.
//!
//! Failures are counted per login name and per client address (the web
//! layer's key: for IPv6 the /64 network, since whoever has one address of
//! it usually has them all; an IPv4-mapped address as IPv4), in three
//! tables, so that failures that cost an attacker nothing cannot push out
//! what protects an admin:
//!
//! - names of existing admins: never evicted (there are as many entries as
//!   admins, and the operator makes those);
//! - other names and client addresses: a table each of at most
//!   `max_entries`; when one is full, a new key takes the place of the
//!   entry with the oldest failure *that is not locked*. A locked entry is
//!   never dropped; while every entry is locked, a new key is not recorded
//!   (its failures still count for the other key of the attempt, and an
//!   admin's name is always counted).
//!
//! For each login attempt the web layer
//!
//! 1. calls [`LoginThrottle::begin`], which refuses it, unchecked and
//!    uncounted, while the name or the address must wait or has another
//!    attempt being checked (so parallel guesses cannot all pass before the
//!    first is counted, without one lock for all logins);
//! 2. checks the password, then ends the attempt with
//!    [`LoginThrottle::failed`] (counting it against the name and the
//!    address) or [`LoginThrottle::succeeded`] (forgetting the name's
//!    failures, not the address's: a guesser who owns one account could
//!    otherwise clear the address's record between guesses at other
//!    accounts), or [`LoginThrottle::abandoned`] when no check was made.
//!
//! The throttle has no clock: the caller passes `now`, which makes it
//! testable and keeps it pure. Memory is bounded by `max_entries`, the
//! number of admins, [`MAX_KEY_LEN`] and the attempts being checked.

use std::collections::{HashMap, HashSet};
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

/// What a refused attempt is told to wait while another attempt of the same
/// name or address is being checked.
pub const BUSY_DELAY: Duration = Duration::from_secs(1);

/// Keys are cut to this many bytes: a "user name" is whatever a client
/// submits, and must not make each entry kilobytes long. Longer keys that
/// share their first bytes share an entry, which only makes them wait more.
pub const MAX_KEY_LEN: usize = 128;

/// Failed login counts per login name and per client address.
#[derive(Debug)]
pub struct LoginThrottle {
    /// Names of existing admins.
    admins: HashMap<String, Entry>,
    /// Names no admin has.
    names: Table,
    /// Client addresses.
    addresses: Table,
    /// Names and addresses with an attempt being checked.
    checking_names: HashSet<String>,
    checking_addresses: HashSet<String>,
}

/// Whether the name of a failed attempt belongs to an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// An existing admin's name: its entry is never evicted.
    Admin,
    /// Any other name, including ones no admin can have.
    Unknown,
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

    /// How long the key must still wait at `now`.
    fn delay(&self, now: Instant) -> Duration {
        if self.forgotten(now) {
            return Duration::ZERO;
        }
        delay_after(self.failures).saturating_sub(now.saturating_duration_since(self.last_failure))
    }

    /// When the delay ends.
    fn unlocks_at(&self) -> Instant {
        self.last_failure + delay_after(self.failures)
    }

    fn fail(&mut self, now: Instant) {
        if self.forgotten(now) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        // Calls from several threads may arrive slightly out of order.
        self.last_failure = self.last_failure.max(now);
    }
}

/// A bounded table whose locked entries are never evicted.
#[derive(Debug)]
struct Table {
    max_entries: usize,
    entries: HashMap<String, Entry>,
    /// While every entry is locked: when the first of them unlocks. No
    /// entry can be evicted before, so new keys are not scanned for.
    all_locked_until: Option<Instant>,
}

impl Table {
    fn new(max_entries: usize) -> Table {
        Table {
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            all_locked_until: None,
        }
    }

    fn delay(&self, key: &str, now: Instant) -> Duration {
        self.entries
            .get(key)
            .map_or(Duration::ZERO, |entry| entry.delay(now))
    }

    /// Counts a failure of `key`; false when the table is full of locked
    /// entries and `key` is new (not recorded).
    fn fail(&mut self, key: &str, now: Instant) -> bool {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.fail(now);
            return true;
        }
        if self.entries.len() >= self.max_entries && !self.make_room(now) {
            return false;
        }
        let mut entry = Entry {
            failures: 0,
            last_failure: now,
        };
        entry.fail(now);
        self.entries.insert(key.to_owned(), entry);
        true
    }

    /// Drops the entry with the oldest last failure among those that are
    /// not locked at `now`, by a linear scan (well under a millisecond for
    /// 100 000 entries); false when every entry is locked. Such a full scan
    /// is not repeated before the first lock ends.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.all_locked_until.is_some_and(|until| now < until) {
            return false;
        }
        let oldest = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.delay(now).is_zero())
            .min_by_key(|(_, entry)| entry.last_failure)
            .map(|(key, _)| key.clone());
        match oldest {
            Some(key) => {
                self.entries.remove(&key);
                self.all_locked_until = None;
                true
            }
            None => {
                self.all_locked_until = self.entries.values().map(Entry::unlocks_at).min();
                false
            }
        }
    }
}

impl LoginThrottle {
    /// A throttle that remembers at most `max_entries` (at least one) names
    /// that are no admin's and as many client addresses, besides every
    /// admin's name. Each entry takes about 100 bytes plus its key (at most
    /// [`MAX_KEY_LEN`]), so 100 000 is a reasonable size.
    pub fn new(max_entries: usize) -> Self {
        LoginThrottle {
            admins: HashMap::new(),
            names: Table::new(max_entries),
            addresses: Table::new(max_entries),
            checking_names: HashSet::new(),
            checking_addresses: HashSet::new(),
        }
    }

    /// How long an attempt of `name` from `address` must still wait at
    /// `now` before it is checked: zero for the first [`FREE_FAILURES`]
    /// failures of each, then [`FIRST_DELAY`] doubling with each failure up
    /// to [`MAX_DELAY`], counted from the last failure.
    pub fn delay_for(&self, name: &str, address: &str, now: Instant) -> Duration {
        let (name, address) = (capped(name), capped(address));
        let admin = self
            .admins
            .get(name)
            .map_or(Duration::ZERO, |entry| entry.delay(now));
        admin
            .max(self.names.delay(name, now))
            .max(self.addresses.delay(address, now))
    }

    /// Starts the check of an attempt: `Err(wait)` when the name or the
    /// address must wait ([`delay_for`](Self::delay_for)) or has another
    /// attempt being checked ([`BUSY_DELAY`]). After `Ok`, the attempt
    /// must be ended by [`failed`](Self::failed),
    /// [`succeeded`](Self::succeeded) or [`abandoned`](Self::abandoned).
    pub fn begin(&mut self, name: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let wait = self.delay_for(name, address, now);
        if !wait.is_zero() {
            return Err(wait);
        }
        let (name, address) = (capped(name), capped(address));
        if self.checking_names.contains(name) || self.checking_addresses.contains(address) {
            return Err(BUSY_DELAY);
        }
        self.checking_names.insert(name.to_owned());
        self.checking_addresses.insert(address.to_owned());
        Ok(())
    }

    /// Ends an attempt that failed at `now`: counts it against the name
    /// (in the admins' table for [`Name::Admin`]) and the address.
    pub fn failed(&mut self, name: &str, kind: Name, address: &str, now: Instant) {
        self.abandoned(name, address);
        let (name, address) = (capped(name), capped(address));
        match kind {
            Name::Admin => {
                // An admin's name is never counted among the others.
                let entry = self.names.entries.remove(name);
                self.admins
                    .entry(name.to_owned())
                    .or_insert(entry.unwrap_or(Entry {
                        failures: 0,
                        last_failure: now,
                    }))
                    .fail(now);
                // Entries of admins deleted since are dropped once forgotten.
                self.admins.retain(|_, entry| !entry.forgotten(now));
            }
            Name::Unknown => {
                self.names.fail(name, now);
            }
        }
        self.addresses.fail(address, now);
    }

    /// Ends an attempt that logged in: the name's failures are forgotten.
    pub fn succeeded(&mut self, name: &str, address: &str) {
        self.abandoned(name, address);
        let name = capped(name);
        self.admins.remove(name);
        self.names.entries.remove(name);
    }

    /// Ends an attempt that was not checked (an internal error).
    pub fn abandoned(&mut self, name: &str, address: &str) {
        self.checking_names.remove(capped(name));
        self.checking_addresses.remove(capped(address));
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

    /// `times` failed attempts of `name` from `address` at `now`, each
    /// counted whatever the delay (as if each came after the previous one's).
    fn fail(
        throttle: &mut LoginThrottle,
        name: &str,
        kind: Name,
        address: &str,
        times: u32,
        now: Instant,
    ) {
        for _ in 0..times {
            throttle.failed(name, kind, address, now);
        }
    }

    fn admin_delay(throttle: &LoginThrottle, name: &str, now: Instant) -> Duration {
        throttle.delay_for(name, "ip:elsewhere", now)
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
        for kind in [Name::Admin, Name::Unknown] {
            let mut throttle = LoginThrottle::new(10);
            for (failures, seconds) in expected.into_iter().enumerate().skip(1) {
                throttle.failed("admin", kind, &format!("ip:{failures}"), t0);
                assert_eq!(
                    admin_delay(&throttle, "admin", t0),
                    seconds * S,
                    "{kind:?}, {failures} failures"
                );
            }
        }
    }

    #[test]
    fn the_delay_runs_from_the_last_failure() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "admin", Name::Admin, "ip:a", 6, t0); // 4 s
        assert_eq!(throttle.delay_for("admin", "ip:b", t0), 4 * S);
        assert_eq!(throttle.delay_for("admin", "ip:b", t0 + S), 3 * S);
        assert_eq!(
            throttle.delay_for("admin", "ip:b", t0 + Duration::from_millis(3500)),
            Duration::from_millis(500)
        );
        assert_eq!(
            throttle.delay_for("admin", "ip:b", t0 + 4 * S),
            Duration::ZERO
        );
        assert_eq!(
            throttle.delay_for("root", "ip:a", t0 + 4 * S),
            Duration::ZERO
        );
        // The next failure after waiting doubles the delay, from its own time.
        throttle.failed("admin", Name::Admin, "ip:b", t0 + 100 * S);
        assert_eq!(admin_delay(&throttle, "admin", t0 + 100 * S), 8 * S);
        // A `now` before the last failure (threads out of order) sees the
        // full delay and does not move the last failure back.
        assert_eq!(admin_delay(&throttle, "admin", t0), 8 * S);
        throttle.failed("admin", Name::Admin, "ip:c", t0 + 99 * S);
        assert_eq!(admin_delay(&throttle, "admin", t0 + 100 * S), 16 * S);
    }

    #[test]
    fn failures_are_forgotten_after_an_hour_of_quiet() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "admin", Name::Admin, "ip:a", 20, t0);
        assert_eq!(
            admin_delay(&throttle, "admin", t0 + FORGET_AFTER - S),
            Duration::ZERO,
            "15 min elapsed"
        );
        throttle.failed("admin", Name::Admin, "ip:b", t0 + FORGET_AFTER - S);
        assert_eq!(
            admin_delay(&throttle, "admin", t0 + FORGET_AFTER - S),
            MAX_DELAY,
            "still remembered"
        );
        let later = t0 + 2 * FORGET_AFTER;
        assert_eq!(admin_delay(&throttle, "admin", later), Duration::ZERO);
        // Counting starts again from one.
        fail(&mut throttle, "admin", Name::Admin, "ip:c", 3, later);
        assert_eq!(admin_delay(&throttle, "admin", later), Duration::ZERO);
        throttle.failed("admin", Name::Admin, "ip:d", later);
        assert_eq!(admin_delay(&throttle, "admin", later), S);
    }

    #[test]
    fn success_clears_the_name_only() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "admin", Name::Admin, "192.0.2.7", 5, t0);
        throttle.succeeded("admin", "192.0.2.7");
        assert_eq!(admin_delay(&throttle, "admin", t0), Duration::ZERO);
        assert_eq!(throttle.delay_for("other", "192.0.2.7", t0), 2 * S);
        throttle.failed("admin", Name::Admin, "192.0.2.8", t0);
        assert_eq!(
            admin_delay(&throttle, "admin", t0),
            Duration::ZERO,
            "counting from one again"
        );
        throttle.succeeded("unknown", "192.0.2.9");
    }

    #[test]
    fn keys_are_independent() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "alice", Name::Admin, "ip:a", 8, t0);
        assert_eq!(admin_delay(&throttle, "alice", t0), 16 * S);
        assert_eq!(admin_delay(&throttle, "bob", t0), Duration::ZERO);
        assert_eq!(
            admin_delay(&throttle, "Alice", t0),
            Duration::ZERO,
            "keys are exact"
        );
        // A name and an address are never the same key.
        assert_eq!(throttle.delay_for("ip:a", "alice", t0), Duration::ZERO);
    }

    #[test]
    fn one_attempt_of_a_name_or_an_address_is_checked_at_a_time() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        assert_eq!(throttle.begin("admin", "ip:a", t0), Ok(()));
        assert_eq!(throttle.begin("admin", "ip:b", t0), Err(BUSY_DELAY));
        assert_eq!(throttle.begin("other", "ip:a", t0), Err(BUSY_DELAY));
        assert_eq!(throttle.begin("other", "ip:b", t0), Ok(()));
        throttle.failed("admin", Name::Admin, "ip:a", t0);
        assert_eq!(throttle.begin("admin", "ip:c", t0), Ok(()));
        throttle.succeeded("admin", "ip:c");
        throttle.abandoned("other", "ip:b");
        assert_eq!(throttle.begin("other", "ip:b", t0), Ok(()));
        throttle.abandoned("other", "ip:b");
        // A name that must wait is refused with its delay, unchecked.
        fail(&mut throttle, "admin", Name::Admin, "ip:d", 4, t0);
        assert_eq!(throttle.begin("admin", "ip:e", t0), Err(S));
        assert!(throttle.checking_names.is_empty() && throttle.checking_addresses.is_empty());
    }

    /// The outside test's flood: an admin locked out by 11 failures (128 s
    /// to wait), then 78 000 failures of names over 64 bytes, 3 from each
    /// of 26 000 addresses, against tables of 100 000 entries.
    #[test]
    fn a_flood_of_other_names_and_addresses_never_ends_a_lockout() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(100_000);
        for i in 0..11 {
            throttle.failed("admin", Name::Admin, &format!("ip:198.51.100.{i}"), t0);
        }
        assert_eq!(admin_delay(&throttle, "admin", t0), 128 * S);
        let mut at = t0;
        for n in 0..78_000u32 {
            at = t0 + Duration::from_micros(u64::from(n) * 200);
            let name = format!("user:{n:0>70}");
            let address = format!("ip:127.{}", 26_000 + n / 3);
            throttle.failed(&name, Name::Unknown, &address, at);
        }
        assert_eq!(admin_delay(&throttle, "admin", at), 128 * S - (at - t0));
        // And so every table full of locked entries: nothing locked goes.
        let mut small = LoginThrottle::new(3);
        for key in ["a", "b", "c"] {
            fail(
                &mut small,
                &format!("name {key}"),
                Name::Unknown,
                &format!("ip:{key}"),
                5,
                t0,
            );
        }
        small.failed("name d", Name::Unknown, "ip:d", t0 + S);
        for key in ["a", "b", "c"] {
            assert_eq!(
                small.delay_for(&format!("name {key}"), "ip:x", t0 + S),
                S,
                "{key}"
            );
            assert_eq!(
                small.delay_for("x", &format!("ip:{key}"), t0 + S),
                S,
                "{key}"
            );
        }
        assert!(
            !small.addresses.entries.contains_key("ip:d"),
            "not recorded"
        );
        assert!(small.addresses.all_locked_until.is_some());
        // Once the locks are over, the oldest entry makes room again.
        small.failed("name e", Name::Unknown, "ip:e", t0 + 3 * S);
        assert!(small.addresses.entries.contains_key("ip:e"));
        assert_eq!(small.addresses.entries.len(), 3);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_unlocked_key_goes_first() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(3);
        fail(&mut throttle, "n", Name::Unknown, "a", 2, t0);
        fail(&mut throttle, "n", Name::Unknown, "b", 2, t0 + S);
        fail(&mut throttle, "n", Name::Unknown, "c", 2, t0 + 2 * S);
        // A new failure of a known key keeps everything.
        throttle.failed("n", Name::Unknown, "a", t0 + 3 * S);
        assert_eq!(throttle.addresses.entries.len(), 3);
        // A new key drops the one with the oldest last failure: now "b".
        throttle.failed("m", Name::Unknown, "d", t0 + 4 * S);
        assert_eq!(throttle.addresses.entries.len(), 3);
        assert!(!throttle.addresses.entries.contains_key("b"));
        assert!(throttle.addresses.entries.contains_key("d"));

        for i in 0..10_000u32 {
            throttle.failed(
                &format!("spray-{i}"),
                Name::Unknown,
                &format!("ip-{i}"),
                t0 + 10 * S,
            );
        }
        assert_eq!(throttle.addresses.entries.len(), 3);
        assert_eq!(throttle.names.entries.len(), 3);
        // Admins' names are never evicted.
        throttle.failed("root", Name::Admin, "x", t0 + 11 * S);
        for i in 0..1_000u32 {
            throttle.failed(
                &format!("more-{i}"),
                Name::Unknown,
                &format!("y-{i}"),
                t0 + 12 * S,
            );
        }
        assert!(throttle.admins.contains_key("root"));
    }

    #[test]
    fn an_admins_earlier_failures_as_an_unknown_name_carry_over() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        fail(&mut throttle, "root", Name::Unknown, "a", 4, t0);
        throttle.failed("root", Name::Admin, "b", t0);
        assert_eq!(admin_delay(&throttle, "root", t0), 2 * S);
        assert!(!throttle.names.entries.contains_key("root"));
    }

    #[test]
    fn long_keys_are_stored_cut() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(10);
        let long = format!("user:{}", "x".repeat(16 * 1024));
        fail(&mut throttle, &long, Name::Unknown, &long, 5, t0);
        assert_eq!(throttle.names.entries.len(), 1);
        assert!(throttle
            .names
            .entries
            .keys()
            .all(|k| k.len() == MAX_KEY_LEN));
        assert!(throttle
            .addresses
            .entries
            .keys()
            .all(|k| k.len() == MAX_KEY_LEN));
        assert_eq!(throttle.delay_for(&long, "ip:x", t0), 2 * S);
        // Another long key with the same first bytes shares the entry.
        let other = format!("{long}y");
        assert_eq!(throttle.delay_for(&other, "ip:x", t0), 2 * S);
        throttle.succeeded(&other, "ip:x");
        assert!(throttle.names.entries.is_empty());

        // A cut never splits a character (ü is two bytes).
        let unicode = format!("user:{}", "ü".repeat(100));
        throttle.failed(&unicode, Name::Unknown, "ip:x", t0);
        let stored = throttle.names.entries.keys().next().unwrap();
        assert_eq!(stored.len(), MAX_KEY_LEN - 1);
        assert!(unicode.starts_with(stored.as_str()));
    }

    #[test]
    fn at_least_one_entry() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(0);
        fail(&mut throttle, "n", Name::Unknown, "a", 2, t0);
        throttle.failed("n", Name::Unknown, "b", t0);
        assert_eq!(throttle.addresses.entries.len(), 1);
        assert!(throttle.addresses.entries.contains_key("b"));
    }

    #[test]
    fn counts_saturate() {
        let t0 = Instant::now();
        let mut throttle = LoginThrottle::new(1);
        throttle.failed("a", Name::Admin, "x", t0);
        throttle.admins.get_mut("a").unwrap().failures = u32::MAX;
        throttle.failed("a", Name::Admin, "x", t0);
        assert_eq!(throttle.admins["a"].failures, u32::MAX);
        assert_eq!(admin_delay(&throttle, "a", t0), MAX_DELAY);
    }
}
