//! The reports stage: one day's fetched details of one domain (from every
//! fetcher) become its RFC 8460 reports, one per TLSRPT record, each with
//! the destinations its record and the destination maps give.
//!
//! Pure: the caller reads the details from the database and stores what
//! comes out.

use mailtls_common::day::Day;
use tlsrpt_report::details::DomainDetails;
use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::record::{parse_record, RecordError};
use tlsrpt_report::report::{build_reports, ReportingOrganization};
use tlsrpt_reportd_db::{Withheld, WithheldReason};

/// Limits against amplification: a domain whose TXT record changes on every
/// lookup (TTL 0), each version listing hundreds of destinations, must not
/// turn the reporter into a mail cannon. They apply to the destinations a
/// record names (a stranger's choice), before the operator's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Destinations taken from one record (the first ones).
    pub destinations_per_record: usize,
    /// Distinct records of one domain and day whose destinations are used;
    /// the reports of further records are kept (shown by `tlsrptctl`) and
    /// go only where the maps add destinations.
    pub records_per_domain: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            destinations_per_record: 4,
            records_per_domain: 4,
        }
    }
}

/// At most this many withheld destinations are kept per report and reason
/// (for `tlsrptctl`); a record may list thousands, and the log names them
/// all.
pub const WITHHELD_KEPT: usize = 16;

/// A report ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    pub record: String,
    pub report_id: String,
    /// The report JSON as it is sent.
    pub json: String,
    /// Where it goes after the maps; empty when the record gives nothing
    /// usable (the report is kept, for `tlsrptctl`, but sent nowhere).
    pub destinations: Vec<String>,
    /// Destinations of the record the amplification limits cut (at most
    /// [`WITHHELD_KEPT`] per reason), stored so that `tlsrptctl` shows them.
    pub withheld: Vec<Withheld>,
}

/// The reports of one day and domain, and what the operator should read
/// in the log about them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainOutcome {
    pub reports: Vec<NewReport>,
    /// Problems that cost data or destinations, one line each.
    pub warnings: Vec<String>,
    /// What the maps did, one line each.
    pub notes: Vec<String>,
}

/// Builds the reports of `domain` on `day` from the `policies` JSON texts
/// that the fetchers delivered (one per fetcher). Each destination gets at
/// most one report of the domain and day, and `caps` bound the rest.
pub fn make_reports(
    day: Day,
    domain: &str,
    fetched: &[String],
    organization: &ReportingOrganization,
    maps: &DestinationMaps,
    caps: &Caps,
) -> DomainOutcome {
    let mut outcome = DomainOutcome::default();
    let mut details = DomainDetails::new(domain);
    for policies in fetched {
        let answer = format!(
            "{{\"d\": {}, \"policies\": {policies}}}",
            serde_json::Value::from(domain)
        );
        match DomainDetails::from_fetcher_json(&answer).and_then(|d| details.merge(d)) {
            Ok(()) => {}
            Err(err) => outcome.warnings.push(format!(
                "one fetcher's data for {domain} on {day} left out: {err}"
            )),
        }
    }
    let built = build_reports(day, &details, organization);
    for skipped in built.skipped {
        outcome
            .warnings
            .push(format!("{domain} on {day}: {skipped}"));
    }
    // The record's own (stranger-chosen) destinations already used for
    // this domain and day.
    let mut sent_to: Vec<String> = Vec::new();
    for (index, report) in built.reports.into_iter().enumerate() {
        // A version 1 record whose rua URIs are all unusable still goes
        // through the maps: the record map matches the report domain and
        // may replace or add destinations (as upstream, which takes such
        // URIs as they are).
        let parsed = match parse_record(&report.record) {
            Ok(record) => Ok((record.destinations, record.skipped)),
            Err(RecordError::NoUsableDestination { skipped }) => Ok((Vec::new(), skipped)),
            Err(err) => Err(err),
        };
        let mut withheld: Vec<Withheld> = Vec::new();
        let mut withhold = |destinations: &[String], reason: WithheldReason| {
            let kept = withheld.iter().filter(|w| w.reason == reason).count();
            for destination in destinations.iter().take(WITHHELD_KEPT - kept) {
                withheld.push(Withheld {
                    destination: destination.clone(),
                    reason,
                });
            }
        };
        let destinations = match parsed {
            Ok((mut destinations, skipped)) => {
                if index >= caps.records_per_domain && !destinations.is_empty() {
                    outcome.warnings.push(format!(
                        "{domain} on {day}: more than {} distinct TLSRPT records (max_records_per_domain); the destinations of {:?} are not used",
                        caps.records_per_domain, report.record
                    ));
                    let dropped: Vec<String> =
                        destinations.drain(..).map(|d| d.to_string()).collect();
                    withhold(&dropped, WithheldReason::RecordsPerDomain);
                }
                if destinations.len() > caps.destinations_per_record {
                    let dropped = destinations.split_off(caps.destinations_per_record);
                    withhold(
                        &dropped.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        WithheldReason::DestinationsPerRecord,
                    );
                    outcome.warnings.push(format!(
                        "{domain} on {day}: the record {:?} lists {} destinations; only the first {} are used (max_destinations_per_record), dropped: {}",
                        report.record,
                        caps.destinations_per_record + dropped.len(),
                        caps.destinations_per_record,
                        dropped.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ));
                }
                for uri in &skipped {
                    outcome.warnings.push(format!(
                        "{domain} on {day}: rua destination {uri} skipped in record {:?}",
                        report.record
                    ));
                }
                destinations.retain(|destination| {
                    let text = destination.to_string();
                    if sent_to.contains(&text) {
                        outcome.warnings.push(format!(
                            "{domain} on {day}: {text} already gets a report of this domain and day; not another one for the record {:?}",
                            report.record
                        ));
                        withhold(&[text], WithheldReason::AlreadyReported);
                        false
                    } else {
                        sent_to.push(text);
                        true
                    }
                });
                let trace = maps.explain(domain, &destinations);
                for step in &trace.steps {
                    outcome.notes.push(format!("{domain} on {day}: {step}"));
                }
                for dropped in &trace.dropped {
                    outcome.warnings.push(format!(
                        "{domain} on {day}: destination {} dropped: {}",
                        dropped.destination, dropped.reason
                    ));
                }
                if trace.destinations.is_empty() {
                    outcome.warnings.push(format!(
                        "{domain} on {day}: the record {:?} gives no usable destination; the report is kept but sent nowhere",
                        report.record
                    ));
                }
                trace.destinations
            }
            Err(err) => {
                outcome.warnings.push(format!(
                    "bad TLSRPT record on day {day} for domain {domain}: {:?}: {err}; the report is kept but sent nowhere",
                    report.record
                ));
                Vec::new()
            }
        };
        outcome.reports.push(NewReport {
            record: report.record.clone(),
            report_id: report.report_id.to_string(),
            json: report.to_json_text(),
            destinations,
            withheld,
        });
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> ReportingOrganization {
        ReportingOrganization {
            name: "Example Org".into(),
            contact_info: "tlsrpt@example.net".into(),
        }
    }

    fn day() -> Day {
        Day::from_ymd(2026, 11, 21)
    }

    const POLICY: &str = r#"{\"policy-type\": 9}"#;

    fn policies(record: &str, total: u64) -> String {
        format!(
            r#"{{"{record}": {{"{POLICY}": {{"cntrtotal": {total}, "cntrfailure": 0, "failures": {{}}}}}}}}"#
        )
    }

    /// A domain whose TTL-0 record changed all day, each version listing a
    /// hundred destinations, gets at most 4 reports sent, each to at most 4
    /// destinations, and no destination twice; the other reports are kept
    /// but sent nowhere, and every cut is logged.
    #[test]
    fn hostile_records_cannot_make_the_reporter_a_mail_cannon() {
        let fetched: Vec<String> = (0..10)
            .map(|version| {
                let mut rua: Vec<String> = vec!["mailto:victim@target.example".into()];
                rua.extend((0..100).map(|n| format!("mailto:v{version}n{n}@target.example")));
                policies(&format!("v=TLSRPTv1;rua={}", rua.join(",")), 1)
            })
            .collect();
        let outcome = make_reports(
            day(),
            "evil.example",
            &fetched,
            &org(),
            &DestinationMaps::default(),
            &Caps::default(),
        );
        assert_eq!(outcome.reports.len(), 10, "every record's report is kept");
        let sent: Vec<&String> = outcome
            .reports
            .iter()
            .flat_map(|r| &r.destinations)
            .collect();
        assert!(outcome.reports[..4]
            .iter()
            .all(|r| !r.destinations.is_empty() && r.destinations.len() <= 4));
        assert!(outcome.reports[4..]
            .iter()
            .all(|r| r.destinations.is_empty()));
        assert_eq!(sent.len(), 4 + 3 * 3, "{sent:?}");
        assert_eq!(
            sent.iter()
                .filter(|d| d.as_str() == "mailto:victim@target.example")
                .count(),
            1
        );
        let warned = |what: &str| outcome.warnings.iter().filter(|w| w.contains(what)).count();
        assert_eq!(warned("max_destinations_per_record"), 4);
        assert_eq!(warned("max_records_per_domain"), 6);
        assert_eq!(warned("already gets a report"), 3);
        // What was cut is kept with the reports, at most WITHHELD_KEPT each.
        let withheld = |report: &NewReport, reason: WithheldReason| {
            report
                .withheld
                .iter()
                .filter(|w| w.reason == reason)
                .count()
        };
        assert_eq!(
            withheld(&outcome.reports[0], WithheldReason::DestinationsPerRecord),
            WITHHELD_KEPT
        );
        assert_eq!(
            outcome.reports[0].withheld[0].destination,
            "mailto:v0n3@target.example"
        );
        assert_eq!(
            withheld(&outcome.reports[1], WithheldReason::AlreadyReported),
            1
        );
        assert!(outcome.reports[1].withheld.contains(&Withheld {
            destination: "mailto:victim@target.example".into(),
            reason: WithheldReason::AlreadyReported
        }));
        assert_eq!(
            withheld(&outcome.reports[5], WithheldReason::RecordsPerDomain),
            WITHHELD_KEPT
        );
        for reason in WithheldReason::ALL {
            assert_eq!(WithheldReason::from_status(reason.status()), Some(reason));
        }
        assert_eq!(WithheldReason::from_status("sent"), None);
    }

    #[test]
    fn fetchers_are_summed_and_each_record_gets_its_report() {
        let maps = DestinationMaps::default();
        let outcome = make_reports(
            day(),
            "a.example",
            &[
                policies("v=TLSRPTv1;rua=mailto:r@a.example", 2),
                policies("v=TLSRPTv1;rua=mailto:r@a.example", 3),
                policies("v=TLSRPTv1;rua=https://r.a.example/x,mailto:s@a.example", 1),
            ],
            &org(),
            &maps,
            &Caps::default(),
        );
        assert_eq!(outcome.warnings, Vec::<String>::new());
        assert_eq!(outcome.reports.len(), 2);
        let first: serde_json::Value = serde_json::from_str(&outcome.reports[0].json).unwrap();
        assert_eq!(
            first["policies"][0]["summary"]["total-successful-session-count"],
            5
        );
        assert_eq!(first["policies"][0]["policy"]["policy-domain"], "a.example");
        assert_eq!(outcome.reports[0].destinations, ["mailto:r@a.example"]);
        assert_eq!(
            outcome.reports[1].destinations,
            ["https://r.a.example/x", "mailto:s@a.example"]
        );
        assert_ne!(outcome.reports[0].report_id, outcome.reports[1].report_id);
        assert_eq!(first["report-id"], outcome.reports[0].report_id.as_str());
    }

    #[test]
    fn a_bad_record_keeps_the_report_without_destinations() {
        for record in [
            "v=TLSRPTv1;rua=ftp://x",
            "v=TLSRPTv2;rua=mailto:r@a.example",
        ] {
            let outcome = make_reports(
                day(),
                "a.example",
                &[policies(record, 1)],
                &org(),
                &DestinationMaps::default(),
                &Caps::default(),
            );
            assert_eq!(outcome.reports.len(), 1);
            assert!(outcome.reports[0].destinations.is_empty());
            assert!(
                outcome.warnings.iter().any(|w| w.contains("sent nowhere")),
                "{:?}",
                outcome.warnings
            );
        }
        // The record map can still send it somewhere; not a record that
        // is no TLSRPT record at all.
        let maps = DestinationMaps::from_texts(". REPLACE directory:/srv/r", "", "").unwrap();
        let mapped = make_reports(
            day(),
            "a.example",
            &[policies("v=TLSRPTv1;rua=ftp://x", 1)],
            &org(),
            &maps,
            &Caps::default(),
        );
        assert_eq!(mapped.reports[0].destinations, ["directory:/srv/r"]);
        let refused = make_reports(
            day(),
            "a.example",
            &[policies("v=TLSRPTv2;rua=mailto:r@a.example", 1)],
            &org(),
            &maps,
            &Caps::default(),
        );
        assert!(refused.reports[0].destinations.is_empty());
    }

    #[test]
    fn maps_redirect_and_say_so() {
        let maps = DestinationMaps::from_texts(". REPLACE directory:/srv/reports", "", "").unwrap();
        let outcome = make_reports(
            day(),
            "a.example",
            &[policies("v=TLSRPTv1;rua=mailto:r@a.example", 1)],
            &org(),
            &maps,
            &Caps::default(),
        );
        assert_eq!(outcome.reports[0].destinations, ["directory:/srv/reports"]);
        assert_eq!(outcome.notes.len(), 1, "{:?}", outcome.notes);
    }

    #[test]
    fn unusable_fetcher_data_is_left_out_with_a_warning() {
        let outcome = make_reports(
            day(),
            "a.example",
            &[
                "[1, 2]".into(),
                policies("v=TLSRPTv1;rua=mailto:r@a.example", 4),
            ],
            &org(),
            &DestinationMaps::default(),
            &Caps::default(),
        );
        assert_eq!(outcome.reports.len(), 1);
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    }
}
