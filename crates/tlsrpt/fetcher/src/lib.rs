//! The fetcher protocol v1 (`shared/spec/tlsrpt-interfaces.md` section 3):
//! how a reportd, locally or through `ssh host tlsrpt-fetcher`, reads one
//! completed day from a collector's store.
//!
//! `DAY` alone prints the domain list:
//! ```text
//! TLSRPT FETCHER v1devel-c domain list
//! 2026-11-22 00:49:28        (fetcher's UTC time)
//! 2026-11-21                 (newest completed day in the store)
//! example.com
//! .
//! ```
//! `DAY DOMAIN` prints one JSON object with the counters of that domain, as
//! Python's `json.dumps(..., indent=4)` writes it. The reportd aggregates
//! several fetchers by the policy and failure strings, so they are passed
//! through exactly as stored.

use std::io::{self, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailtls_common::day::Day;
use serde_json::{Map, Value};
use tlsrpt_datagram::pyjson;
use tlsrpt_store::{DayReader, FailureRow, PolicyRow, StoreError, VisitError};

/// First line of a domain list in protocol v1, verbatim from upstream.
pub const VERSION_LINE: &str = "TLSRPT FETCHER v1devel-c domain list";

/// First line of a bulk answer: our extension for large sites, asked for
/// with `--bulk`. It streams every domain's details in one call instead of
/// one process per domain. An upstream fetcher refuses the option, which
/// tells a reportd to fall back to protocol v1; an upstream reportd never
/// asks for it.
pub const BULK_VERSION_LINE: &str = "TLSRPT FETCHER v1devel-c bulk";

/// The time format of the second line.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// What a reportd asks of a fetcher about one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `DAY`: the domains with counters.
    DomainList,
    /// `DAY DOMAIN`: one domain's counters.
    Details(&'a str),
    /// `--bulk DAY`: every domain's counters (our extension).
    Bulk,
}

/// Why no whole answer was written.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the answer: {0}")]
    Output(#[from] io::Error),
}

/// Writes the answer to `request` about `day`, read from `reader` (one
/// collector's completed-day file or a fleet's database), to `out`, as
/// `tlsrpt-fetcher` prints it; `grace` is the fleet's `day_end_grace`.
/// Returns how many domains (or, for details, policies) it holds.
pub fn answer(
    reader: &mut dyn DayReader,
    now: DateTime<Utc>,
    grace: Duration,
    day: Day,
    request: Request<'_>,
    out: &mut impl Write,
) -> Result<usize, AnswerError> {
    match request {
        Request::DomainList => {
            let completed = reader.completed_day(now, grace)?;
            let domains = reader.domains(day)?;
            write_domain_list(out, now, completed, &domains)?;
            Ok(domains.len())
        }
        Request::Bulk => {
            let completed = reader.completed_day(now, grace)?;
            write_bulk_header(out, now, completed)?;
            let mut domains = 0;
            reader
                .for_each_domain(day, |domain, policies, failures| {
                    domains += 1;
                    write_bulk_domain(out, domain, policies, failures)
                })
                .map_err(|e| match e {
                    VisitError::Store(e) => AnswerError::Store(e),
                    VisitError::Visitor(e) => AnswerError::Output(e),
                })?;
            write_bulk_end(out)?;
            Ok(domains)
        }
        Request::Details(domain) => {
            let (policies, failures) = reader.details(day, domain)?;
            out.write_all(render_details(domain, &policies, &failures).as_bytes())?;
            Ok(policies.len())
        }
    }
}

/// Write the domain list answer. `completed_day` is `None` when the store has
/// no completed day yet: the line is then left empty, which a reportd reads
/// as "not ready" (the upstream fetcher omits the line and shifts the
/// protocol instead).
fn write_domain_list(
    out: &mut impl Write,
    now: DateTime<Utc>,
    completed_day: Option<Day>,
    domains: &[String],
) -> io::Result<()> {
    let mut text = String::with_capacity(64 + domains.iter().map(|d| d.len() + 1).sum::<usize>());
    push_header(&mut text, VERSION_LINE, now, completed_day);
    for domain in domains {
        text.push_str(domain);
        text.push('\n');
    }
    text.push_str(".\n");
    out.write_all(text.as_bytes())
}

/// The three header lines shared by the domain list and the bulk answer.
fn push_header(text: &mut String, version: &str, now: DateTime<Utc>, completed_day: Option<Day>) {
    text.push_str(version);
    text.push('\n');
    text.push_str(&now.format(TIME_FORMAT).to_string());
    text.push('\n');
    if let Some(day) = completed_day {
        text.push_str(&day.to_string());
    }
    text.push('\n');
}

/// Write the bulk answer: the header lines (with [`BULK_VERSION_LINE`]),
/// then one line per domain holding the same JSON object as the details
/// answer in compact form, then a line `.`. Streams: one domain in memory at
/// a time.
fn write_bulk_header(
    out: &mut impl Write,
    now: DateTime<Utc>,
    completed_day: Option<Day>,
) -> io::Result<()> {
    let mut text = String::with_capacity(80);
    push_header(&mut text, BULK_VERSION_LINE, now, completed_day);
    out.write_all(text.as_bytes())
}

/// One domain's line of a bulk answer.
fn write_bulk_domain(
    out: &mut impl Write,
    domain: &str,
    policies: &[PolicyRow],
    failures: &[FailureRow],
) -> io::Result<()> {
    let mut line = pyjson::dumps(&details_value(domain, policies, failures));
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// The end of a bulk answer.
fn write_bulk_end(out: &mut impl Write) -> io::Result<()> {
    out.write_all(b".\n")
}

/// The details answer for one domain (with a trailing newline).
fn render_details(domain: &str, policies: &[PolicyRow], failures: &[FailureRow]) -> String {
    let mut text = pyjson::dumps_indent(&details_value(domain, policies, failures), 4);
    text.push('\n');
    text
}

/// `{"d": DOMAIN, "policies": {RECORD: {POLICY: {cntrtotal, cntrfailure, failures}}}}`
fn details_value(domain: &str, policies: &[PolicyRow], failures: &[FailureRow]) -> Value {
    let mut by_record: Map<String, Value> = Map::new();
    for row in policies {
        let entry = counters(&mut by_record, &row.record, &row.policy);
        add(entry, "cntrtotal", row.total);
        add(entry, "cntrfailure", row.failed);
    }
    for row in failures {
        // A failure row without its policy row cannot come from a collector,
        // but if a hand-edited file has one, report it rather than crash.
        let entry = counters(&mut by_record, &row.record, &row.policy);
        let failures = entry
            .get_mut("failures")
            .and_then(Value::as_object_mut)
            .expect("failures is an object");
        add(failures, &row.reason, row.count);
    }
    let mut top = Map::new();
    top.insert("d".into(), Value::from(domain));
    top.insert("policies".into(), Value::Object(by_record));
    Value::Object(top)
}

/// The counter object of one (record, policy), created empty on first use.
fn counters<'a>(
    by_record: &'a mut Map<String, Value>,
    record: &str,
    policy: &str,
) -> &'a mut Map<String, Value> {
    let per_record = by_record
        .entry(record.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(per_record) = per_record else {
        unreachable!("records map to objects")
    };
    let entry = per_record.entry(policy.to_string()).or_insert_with(|| {
        let mut m = Map::new();
        m.insert("cntrtotal".into(), Value::from(0));
        m.insert("cntrfailure".into(), Value::from(0));
        m.insert("failures".into(), Value::Object(Map::new()));
        Value::Object(m)
    });
    let Value::Object(entry) = entry else {
        unreachable!("policies map to objects")
    };
    entry
}

fn add(map: &mut Map<String, Value>, key: &str, n: i64) {
    let old = map.get(key).and_then(Value::as_i64).unwrap_or(0);
    map.insert(key.to_string(), Value::from(old + n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn domain_list_has_the_v1_header_and_dot() {
        let mut out = Vec::new();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 59, 18).unwrap();
        write_domain_list(
            &mut out,
            now,
            Some(Day::parse("2026-11-21").unwrap()),
            &["a.example".into()],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TLSRPT FETCHER v1devel-c domain list\n2026-11-22 00:59:18\n2026-11-21\na.example\n.\n"
        );
    }

    #[test]
    fn details_group_by_record_and_policy() {
        let p = |policy: &str, total, failed| PolicyRow {
            record: "r".into(),
            policy: policy.into(),
            total,
            failed,
        };
        let text = render_details(
            "a.example",
            &[p("{\"policy-type\": 9}", 2, 1)],
            &[FailureRow {
                record: "r".into(),
                policy: "{\"policy-type\": 9}".into(),
                reason: "{\"c\": 201}".into(),
                count: 1,
            }],
        );
        let expected = "{\n    \"d\": \"a.example\",\n    \"policies\": {\n        \"r\": {\n            \"{\\\"policy-type\\\": 9}\": {\n                \"cntrtotal\": 2,\n                \"cntrfailure\": 1,\n                \"failures\": {\n                    \"{\\\"c\\\": 201}\": 1\n                }\n            }\n        }\n    }\n}\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn bulk_lines_hold_the_details_in_compact_form() {
        let mut out = Vec::new();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 59, 18).unwrap();
        write_bulk_header(&mut out, now, Some(Day::parse("2026-11-21").unwrap())).unwrap();
        let policy = PolicyRow {
            record: "r".into(),
            policy: "{\"policy-type\": 9}".into(),
            total: 3,
            failed: 0,
        };
        write_bulk_domain(&mut out, "a.example", &[policy], &[]).unwrap();
        write_bulk_end(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TLSRPT FETCHER v1devel-c bulk\n2026-11-22 00:59:18\n2026-11-21\n\
             {\"d\": \"a.example\", \"policies\": {\"r\": {\"{\\\"policy-type\\\": 9}\": {\"cntrtotal\": 3, \"cntrfailure\": 0, \"failures\": {}}}}}\n.\n"
        );
    }
}
