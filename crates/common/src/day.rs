//! A UTC day: what the collector counts per, the fetcher protocol asks
//! for, the databases key their rows by and a report covers (RFC 8460
//! section 4.4: `date-range`). One parser and one formatter for the form
//! every interface spells it in, `YYYY-MM-DD`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};

/// A UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(NaiveDate);

/// Text that is not a day in the form `YYYY-MM-DD`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a day: expected YYYY-MM-DD, e.g. 2026-11-21")]
pub struct DayError {
    pub text: String,
}

impl Day {
    /// The day of `year`-`month`-`day`; panics when there is none (for
    /// constants and tests).
    pub const fn from_ymd(year: i32, month: u32, day: u32) -> Day {
        match NaiveDate::from_ymd_opt(year, month, day) {
            Some(date) => Day(date),
            None => panic!("no such day"),
        }
    }

    /// The UTC day of an instant.
    pub fn of(instant: DateTime<Utc>) -> Day {
        Day(instant.date_naive())
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }

    /// The day before.
    pub fn pred(self) -> Day {
        Day(self.0.pred_opt().expect("days in range"))
    }

    /// The day after.
    pub fn succ(self) -> Day {
        Day(self.0.succ_opt().expect("days in range"))
    }

    /// Exactly `YYYY-MM-DD` (four-digit year, two-digit month and day),
    /// nothing around it: the form is also a database key and a file
    /// name part, so `2026-1-5` or ` 2026-01-05` are refused, not mended.
    pub fn parse(text: &str) -> Result<Day, DayError> {
        let error = || DayError {
            text: text.to_string(),
        };
        let well_formed = text.len() == 10
            && text.bytes().enumerate().all(|(index, byte)| match index {
                4 | 7 => byte == b'-',
                _ => byte.is_ascii_digit(),
            });
        if !well_formed {
            return Err(error());
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(Day)
            .map_err(|_| error())
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

/// As its `YYYY-MM-DD` text (the dashboard's JSON).
impl serde::Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Day {
    type Err = DayError;
    fn from_str(text: &str) -> Result<Day, DayError> {
        Day::parse(text)
    }
}

impl From<NaiveDate> for Day {
    fn from(date: NaiveDate) -> Day {
        Day(date)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_one_form_is_a_day() {
        let day = Day::parse("2026-11-21").unwrap();
        assert_eq!(day.to_string(), "2026-11-21");
        assert_eq!(day.pred().to_string(), "2026-11-20");
        assert_eq!(
            Day::parse("2024-02-29").unwrap().succ().to_string(),
            "2024-03-01"
        );
        for bad in [
            "",
            "2026-1-05",
            "2026-01-5",
            " 2026-01-05",
            "2026-01-05 ",
            "2026/01/05",
            "2026-02-30",
            "20260-01-05",
            "+2026-01-05",
            "2026-13-01",
            "2026-01-05\n",
        ] {
            let error = Day::parse(bad).unwrap_err();
            assert!(error.to_string().contains("expected YYYY-MM-DD"), "{bad:?}");
        }
        assert!(Day::parse("2026-11-20").unwrap() < day);
        let noon = DateTime::parse_from_rfc3339("2026-11-21T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(Day::of(noon), day);
    }
}
