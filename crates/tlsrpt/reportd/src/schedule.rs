//! When to try again, and when to try first.
//!
//! - Fetch retries keep upstream's rule: a random whole number of seconds
//!   between the configured minimum and maximum, at most N times.
//! - Deliveries follow RFC 8460 section 5.5 by default: retry with
//!   exponential backoff and jitter for up to 24 hours after the first
//!   attempt. Upstream instead gives up after `max_retries_delivery` (5)
//!   attempts within about two hours; a site that sets
//!   `max_retries_delivery`, `min_wait_delivery` or `max_wait_delivery`
//!   explicitly gets exactly that behaviour.
//! - First deliveries are spread over `spread_out_delivery` seconds so that
//!   report mail does not leave in one burst at midnight: each second of the
//!   window is used once before any is used twice (as upstream's pool does).

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

/// A random whole number of seconds in `min..=max`, as Python's
/// `random.randint(min, max)`. `max < min` is treated as `min`.
pub fn random_wait(rng: &mut impl Rng, min: u64, max: u64) -> Duration {
    Duration::from_secs(rng.gen_range(min..=max.max(min)))
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryRetry {
    /// RFC 8460 section 5.5: exponential backoff starting at `first`, each
    /// wait at most `longest`, for `give_up_after` after the first attempt.
    Backoff {
        first: Duration,
        longest: Duration,
        give_up_after: Duration,
    },
    /// Upstream's rule, used when the operator configured it explicitly:
    /// up to `max_retries` retries, each after a random wait in
    /// `min_wait..=max_wait` seconds.
    Fixed {
        max_retries: u64,
        min_wait: u64,
        max_wait: u64,
    },
}

impl Default for DeliveryRetry {
    /// 5 minutes, doubling up to 4 hours, for 24 hours.
    fn default() -> DeliveryRetry {
        DeliveryRetry::Backoff {
            first: Duration::from_secs(300),
            longest: Duration::from_secs(4 * 3600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl DeliveryRetry {
    /// The wait before the next attempt after `failed` failed attempts
    /// (1 after the first failure), the first of which started `elapsed`
    /// ago; `None` when it is time to give up.
    pub fn next_wait(
        &self,
        rng: &mut impl Rng,
        failed: u64,
        elapsed: Duration,
    ) -> Option<Duration> {
        match *self {
            DeliveryRetry::Fixed {
                max_retries,
                min_wait,
                max_wait,
            } => (failed <= max_retries).then(|| random_wait(rng, min_wait, max_wait)),
            DeliveryRetry::Backoff {
                first,
                longest,
                give_up_after,
            } => {
                let doublings = failed.saturating_sub(1).min(32) as u32;
                let full = first.saturating_mul(1 << doublings.min(31)).min(longest);
                // "Equal jitter": between half and all of the full wait, so
                // that retries of many reports to one receiver spread out
                // while the backoff still grows.
                let half = full / 2;
                let wait = half + Duration::from_secs(rng.gen_range(0..=half.as_secs()));
                (elapsed + wait <= give_up_after).then_some(wait)
            }
        }
    }
}

/// Offsets (in seconds) of first deliveries within the spreading window:
/// every second of the window once, in random order, then again.
pub struct Spread {
    window: u32,
    pool: Vec<u32>,
}

impl Spread {
    /// `window` is `spread_out_delivery` (at least 1, as upstream checks).
    pub fn new(window: u32) -> Spread {
        Spread {
            window: window.max(1),
            pool: Vec::new(),
        }
    }

    /// The next offset from the start of the window.
    pub fn next(&mut self, rng: &mut impl Rng) -> Duration {
        if self.pool.is_empty() {
            self.pool = (0..self.window).collect();
            self.pool.shuffle(rng);
        }
        Duration::from_secs(u64::from(self.pool.pop().expect("refilled above")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn random_waits_stay_within_bounds_inclusive() {
        let mut rng = StdRng::seed_from_u64(1);
        let waits: Vec<u64> = (0..2000)
            .map(|_| random_wait(&mut rng, 30, 33).as_secs())
            .collect();
        assert!(waits.iter().all(|w| (30..=33).contains(w)));
        for w in 30..=33 {
            assert!(waits.contains(&w), "{w} never drawn");
        }
        assert_eq!(random_wait(&mut rng, 5, 1).as_secs(), 5);
    }

    #[test]
    fn default_backoff_grows_and_gives_up_after_a_day() {
        let mut rng = StdRng::seed_from_u64(2);
        let retry = DeliveryRetry::default();
        let mut elapsed = Duration::ZERO;
        let mut waits = Vec::new();
        while let Some(wait) = retry.next_wait(&mut rng, waits.len() as u64 + 1, elapsed) {
            elapsed += wait;
            waits.push(wait.as_secs());
        }
        assert!(elapsed <= Duration::from_secs(24 * 3600));
        assert!(
            elapsed >= Duration::from_secs(20 * 3600),
            "retries fill most of the day: {waits:?}"
        );
        assert!((150..=300).contains(&waits[0]), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= 4 * 3600), "{waits:?}");
        assert!(waits[4] > waits[0] * 4, "backoff grows: {waits:?}");
        assert!(
            waits.len() > 5,
            "more attempts than upstream's five: {waits:?}"
        );
    }

    #[test]
    fn explicit_upstream_settings_are_honoured() {
        let mut rng = StdRng::seed_from_u64(3);
        let retry = DeliveryRetry::Fixed {
            max_retries: 5,
            min_wait: 300,
            max_wait: 1800,
        };
        for failed in 1..=5 {
            let wait = retry.next_wait(&mut rng, failed, Duration::ZERO).unwrap();
            assert!((300..=1800).contains(&wait.as_secs()));
        }
        assert_eq!(retry.next_wait(&mut rng, 6, Duration::ZERO), None);
    }

    #[test]
    fn spreading_uses_every_second_once_before_repeating() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut spread = Spread::new(10);
        let mut first: Vec<u64> = (0..10).map(|_| spread.next(&mut rng).as_secs()).collect();
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        let again = spread.next(&mut rng).as_secs();
        assert!(again < 10);
        assert_eq!(Spread::new(0).next(&mut rng), Duration::ZERO);
    }
}
