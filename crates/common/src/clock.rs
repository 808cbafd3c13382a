//! The collector's notion of "now", injectable so that tests can cross UTC
//! midnight in milliseconds instead of waiting for it.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};

use crate::day::Day;

/// Environment variable that starts the clock of a program at a given
/// instant (RFC 3339, e.g. `2026-11-21T23:59:59.5Z`); time then runs at normal
/// speed from there. For tests only; it is logged loudly when used.
pub const TEST_CLOCK_ENV: &str = "MAILTLS_TEST_CLOCK";

/// A source of the current UTC time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// The UTC day of `now()`.
    fn today(&self) -> Day {
        Day::of(self.now())
    }
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that started at a chosen instant and advances in real time.
pub struct OffsetClock {
    start: DateTime<Utc>,
    started: Instant,
}

impl OffsetClock {
    pub fn starting_at(start: DateTime<Utc>) -> OffsetClock {
        OffsetClock {
            start,
            started: Instant::now(),
        }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Duration::from_std(self.started.elapsed()).unwrap_or(Duration::zero());
        self.start + elapsed
    }
}

/// The clock for this process: the system clock, unless [`TEST_CLOCK_ENV`]
/// asks for another start. A malformed value is an error, not silently the
/// system clock.
pub fn from_env() -> Result<Box<dyn Clock>, String> {
    match std::env::var(TEST_CLOCK_ENV) {
        Err(_) => Ok(Box::new(SystemClock)),
        Ok(text) => {
            let start = DateTime::parse_from_rfc3339(&text)
                .map_err(|e| format!("{TEST_CLOCK_ENV}={text:?} is not an RFC 3339 time: {e}"))?;
            Ok(Box::new(OffsetClock::starting_at(
                start.with_timezone(&Utc),
            )))
        }
    }
}

/// The instant of the next UTC midnight after `now`.
pub fn next_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive().succ_opt().expect("date in range");
    tomorrow
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_starts_where_told_and_runs() {
        let start = DateTime::parse_from_rfc3339("2026-11-21T23:59:59.9Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = OffsetClock::starting_at(start);
        assert_eq!(clock.today().to_string(), "2026-11-21");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(clock.today().to_string(), "2026-11-22");
        assert_eq!(
            next_midnight(start).to_rfc3339(),
            "2026-11-22T00:00:00+00:00"
        );
    }
}
