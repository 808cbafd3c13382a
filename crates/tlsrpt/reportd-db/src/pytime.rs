//! Timestamps (and days, [`Day`]'s form) in the text form upstream's Python `sqlite3` module
//! writes (its default adapters: `date.isoformat()` and
//! `datetime.isoformat(" ")` of an aware UTC datetime).
//!
//! The reportd compares these texts as strings (`nexttry < ?`), so both
//! implementations must write exactly the same form: a row written by one
//! is then due at the same moment for the other. The comparison is correct
//! even between texts with and without microseconds, because `+` sorts
//! before `.`.

use chrono::{DateTime, Timelike, Utc};

/// `2026-11-22 00:49:28.123456+00:00`, or `2026-11-22 00:49:28+00:00` when
/// the microseconds are zero (Python's `isoformat` omits them then).
/// Sub-microsecond precision is cut off, as Python has none.
pub fn timestamp(t: DateTime<Utc>) -> String {
    let micros = t.nanosecond() / 1000;
    if micros == 0 {
        t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
    } else {
        format!("{}.{micros:06}+00:00", t.format("%Y-%m-%d %H:%M:%S"))
    }
}

/// A stored timestamp back (either implementation's form, with or without
/// microseconds); `None` when it is not one.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use mailtls_common::day::Day;

    fn python(code: &str) -> String {
        crate::python(code, &[])
    }

    #[test]
    fn timestamps_are_what_python_sqlite3_stores() {
        let cases = [
            (2026, 11, 22, 0, 49, 28, 123_456_789),
            (2026, 11, 22, 0, 49, 28, 0),
            (1999, 1, 1, 23, 59, 59, 1000),
            (2024, 2, 29, 12, 0, 0, 999),
        ];
        for (y, mo, d, h, mi, s, nanos) in cases {
            let t = Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
                + chrono::Duration::nanoseconds(nanos);
            let ours = timestamp(t);
            let theirs = python(&format!(
                "import sqlite3, datetime\n\
                 t = datetime.datetime({y}, {mo}, {d}, {h}, {mi}, {s}, {}, tzinfo=datetime.timezone.utc)\n\
                 c = sqlite3.connect(':memory:')\n\
                 print(c.execute('SELECT ?', (t,)).fetchone()[0], end='')",
                nanos / 1000
            ));
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn string_order_is_time_order_with_and_without_microseconds() {
        let base = Utc.with_ymd_and_hms(2026, 11, 22, 0, 49, 28).unwrap();
        let later = base + chrono::Duration::microseconds(1);
        assert!(timestamp(base) < timestamp(later));
        assert!(timestamp(later) < timestamp(base + chrono::Duration::seconds(1)));
    }

    #[test]
    fn days_are_what_python_sqlite3_stores() {
        let d = Day::from_ymd(2026, 3, 7);
        let theirs = python(
            "import sqlite3, datetime\n\
             c = sqlite3.connect(':memory:')\n\
             print(c.execute('SELECT ?', (datetime.date(2026, 3, 7),)).fetchone()[0], end='')",
        );
        assert_eq!(d.to_string(), theirs);
        assert_eq!(Day::parse(&theirs), Ok(d));
    }
}
