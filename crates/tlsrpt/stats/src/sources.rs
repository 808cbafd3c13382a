//! Reading the databases: the collector's live database (today) and its
//! completed day (`FILE.yesterday`), or a fleet's collectors in PostgreSQL,
//! and the report daemon's state, a SQLite file or PostgreSQL (the details
//! it fetched from every fetcher, and the reports it sent).
//!
//! All are opened read-only (a resend, which writes, is the web pages'
//! own). A day the report daemon
//! has details for is read from there (the sum over every MTA's fetcher);
//! other days from the collector.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mailtls_common::day::Day;
use serde::Serialize;
use tlsrpt_report::details::DomainDetails;
use tlsrpt_reportd_db::{DbError, DbName, ReportdDb, StoredReport};
use tlsrpt_store::postgres::{PgDayReader, PgUrl};
use tlsrpt_store::{DayReader, FetcherDb, StoreError, VisitError};

use crate::summary::{self, DaySummary, DomainDay, DomainHistory, DomainPoint, PolicyTypeCount};

/// Where a day's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaySource {
    /// The collector's live database: the day so far.
    Collector,
    /// The collector's completed day (`FILE.yesterday`).
    CollectorCompleted,
    /// The details the report daemon fetched (from every fetcher).
    ReportDaemon,
    /// The fleet's collectors in PostgreSQL: the sum over every MTA (a day
    /// so far, or one they have ended).
    Fleet,
}

impl DaySource {
    /// Said on the page under the day's totals.
    pub fn words(self) -> &'static str {
        match self {
            DaySource::Collector => "the collector's live database (the day so far)",
            DaySource::CollectorCompleted => "the collector's completed day",
            DaySource::ReportDaemon => "the details the report daemon fetched",
            DaySource::Fleet => "the fleet's collectors in PostgreSQL (every MTA)",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("collector database: {0}")]
    Collector(#[from] StoreError),
    #[error("report daemon database {name}: {source}")]
    Reportd { name: String, source: DbError },
    #[error("no report daemon database is configured")]
    NoReportd,
    #[error("no PostgreSQL collector store is configured")]
    NoFleet,
    #[error("no collector database is configured")]
    NoCollector,
}

/// Where the collectors' counters are.
#[derive(Debug, Clone)]
pub enum CollectorSource {
    /// One collector's live SQLite database (`collectd.sqlite`); its
    /// completed day is `FILE.yesterday` beside it.
    Sqlite(PathBuf),
    /// A fleet's collectors in PostgreSQL (read as the fetcher reads them).
    Postgres(Box<PgUrl>),
}

impl CollectorSource {
    /// A path, or a `postgresql://` URL whose password is in
    /// `password_file` when one is given.
    pub fn parse(
        value: &str,
        password_file: Option<&std::path::Path>,
    ) -> Result<CollectorSource, StatsError> {
        if value.starts_with("postgresql://") || value.starts_with("postgres://") {
            let url = PgUrl::parse(value, password_file).map_err(StoreError::from)?;
            Ok(CollectorSource::Postgres(Box::new(url)))
        } else {
            Ok(CollectorSource::Sqlite(PathBuf::from(value)))
        }
    }
}

/// The databases the dashboard reads; either may be absent.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub collector: Option<CollectorSource>,
    /// The report daemon's state (`reportd.sqlite`, or PostgreSQL).
    pub reportd: Option<DbName>,
}

impl Sources {
    /// The collector's SQLite files: the live day and the completed one.
    fn collector_dbs(&self) -> Vec<(DaySource, PathBuf)> {
        let Some(CollectorSource::Sqlite(live)) = &self.collector else {
            return Vec::new();
        };
        [
            (DaySource::Collector, live.clone()),
            (
                DaySource::CollectorCompleted,
                tlsrpt_store::yesterday_path(live),
            ),
        ]
        .into_iter()
        .filter(|(_, path)| path.exists())
        .collect()
    }

    /// The report daemon's state, read-only; `None` when none is configured
    /// or its SQLite file does not exist yet.
    fn reportd_db(&self) -> Result<Option<ReportdDb>, StatsError> {
        match &self.reportd {
            Some(DbName::Sqlite(path)) if !path.exists() => Ok(None),
            Some(name) => ReportdDb::open_existing(name, false)
                .map(Some)
                .map_err(|source| self.reportd_error(source)),
            None => Ok(None),
        }
    }

    fn reportd_error(&self, source: DbError) -> StatsError {
        StatsError::Reportd {
            name: self.reportd.as_ref().map(DbName::shown).unwrap_or_default(),
            source,
        }
    }

    /// The collectors' counters behind `source`: the collector's live or
    /// completed-day file, or the fleet's database; `None` when that is
    /// not configured (or the file not there), and for the report daemon.
    fn collector_reader(
        &self,
        source: DaySource,
    ) -> Result<Option<Box<dyn DayReader>>, StatsError> {
        let reader: Box<dyn DayReader> = match (source, &self.collector) {
            (DaySource::Fleet, Some(CollectorSource::Postgres(url))) => {
                Box::new(PgDayReader::connect(url).map_err(StoreError::from)?)
            }
            (DaySource::Collector | DaySource::CollectorCompleted, _) => {
                match self.collector_dbs().into_iter().find(|(s, _)| *s == source) {
                    Some((_, path)) => Box::new(FetcherDb::open(&path)?),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(reader))
    }

    /// Every day with numbers and where they come from, newest first.
    pub fn days(&self) -> Result<Vec<(Day, DaySource)>, StatsError> {
        let mut days: Vec<(Day, DaySource)> = Vec::new();
        let mut seen = BTreeSet::new();
        if let Some(mut db) = self.reportd_db()? {
            for day in db.days_with_details().map_err(|e| self.reportd_error(e))? {
                seen.insert(day);
                days.push((day, DaySource::ReportDaemon));
            }
        }
        for source in [
            DaySource::Collector,
            DaySource::CollectorCompleted,
            DaySource::Fleet,
        ] {
            if let Some(mut reader) = self.collector_reader(source)? {
                for day in reader.days()? {
                    if seen.insert(day) {
                        days.push((day, source));
                    }
                }
            }
        }
        days.sort_by_key(|(day, _)| std::cmp::Reverse(*day));
        Ok(days)
    }

    /// Each domain's counters of `day`, from where [`Sources::days`] says.
    fn details_of_day(
        &self,
        day: Day,
        source: DaySource,
        mut visit: impl FnMut(DomainDetails),
    ) -> Result<(), StatsError> {
        match source {
            DaySource::ReportDaemon => {
                let mut db = self.reportd_db()?.ok_or(StatsError::NoReportd)?;
                let mut current: Option<DomainDetails> = None;
                for (domain, text) in db.details_of_day(day).map_err(|e| self.reportd_error(e))? {
                    let details = match DomainDetails::from_fetcher_json(&text) {
                        Ok(details) if details.domain() == domain => details,
                        // A row whose text is not a fetcher answer for its
                        // domain counts nothing (the report daemon made no
                        // report of it either).
                        _ => DomainDetails::new(&domain),
                    };
                    match &mut current {
                        Some(sum) if sum.domain() == domain => {
                            sum.merge(details).expect("same domain");
                        }
                        _ => {
                            if let Some(done) = current.replace(details) {
                                visit(done);
                            }
                        }
                    }
                }
                if let Some(done) = current {
                    visit(done);
                }
                Ok(())
            }
            DaySource::Fleet | DaySource::Collector | DaySource::CollectorCompleted => {
                let missing = match source {
                    DaySource::Fleet => StatsError::NoFleet,
                    _ => StatsError::NoCollector,
                };
                let mut reader = self.collector_reader(source)?.ok_or(missing)?;
                let visited = reader.for_each_domain(day, |domain, policies, failures| {
                    visit(collector_details(domain, policies, failures));
                    Ok::<(), std::convert::Infallible>(())
                });
                match visited {
                    Ok(()) => Ok(()),
                    Err(VisitError::Store(e)) => Err(e.into()),
                    Err(VisitError::Visitor(never)) => match never {},
                }
            }
        }
    }

    /// The summary of `day`, `None` when no database has it.
    pub fn day(&self, day: Day) -> Result<Option<DaySummary>, StatsError> {
        let Some((_, source)) = self.days()?.into_iter().find(|(d, _)| *d == day) else {
            return Ok(None);
        };
        let mut domains: Vec<DomainDay> = Vec::new();
        let mut by_type: Vec<PolicyTypeCount> = Vec::new();
        self.details_of_day(day, source, |details| {
            let (policies, _) = summary::policies_of(day, &details);
            summary::add_policy_types(&mut by_type, &policies);
            domains.push(summary::domain_day(day, &details));
        })?;
        Ok(Some(DaySummary::new(day, source, domains, by_type)))
    }

    /// The whole site on `day` (from `source`, as [`Sources::days`] lists
    /// it): the sessions summed over its domains, read as [`Sources::day`]
    /// reads them, so the trend and the day pages agree.
    pub fn day_point(&self, day: Day, source: DaySource) -> Result<DomainPoint, StatsError> {
        let mut point = DomainPoint {
            day,
            successful: 0,
            failed: 0,
        };
        self.details_of_day(day, source, |details| {
            let counted = summary::domain_day(day, &details);
            point.successful = point.successful.saturating_add(counted.successful);
            point.failed = point.failed.saturating_add(counted.failed);
        })?;
        Ok(point)
    }

    /// `domain` over every day kept, with the policies of `day` (default:
    /// the newest day it has sessions on).
    pub fn domain(&self, domain: &str, day: Option<Day>) -> Result<DomainHistory, StatsError> {
        let mut points = Vec::new();
        let mut details_by_day = Vec::new();
        for (d, source) in self.days()? {
            let details = self.domain_details(d, source, domain)?;
            let counted = summary::domain_day(d, &details);
            if counted.sessions() > 0 || counted.skipped > 0 {
                points.push(DomainPoint {
                    day: d,
                    successful: counted.successful,
                    failed: counted.failed,
                });
                details_by_day.push((d, details));
            }
        }
        points.reverse();
        let shown = day.or_else(|| details_by_day.first().map(|(d, _)| *d));
        let (policies, skipped) = details_by_day
            .iter()
            .find(|(d, _)| Some(*d) == shown)
            .map(|(d, details)| summary::policies_of(*d, details))
            .unwrap_or_default();
        Ok(DomainHistory {
            domain: domain.to_string(),
            days: points,
            day: shown,
            policies,
            skipped,
        })
    }

    fn domain_details(
        &self,
        day: Day,
        source: DaySource,
        domain: &str,
    ) -> Result<DomainDetails, StatsError> {
        let mut sum = DomainDetails::new(domain);
        match source {
            DaySource::ReportDaemon => {
                let mut db = self.reportd_db()?.ok_or(StatsError::NoReportd)?;
                for text in db
                    .details_of(day, domain)
                    .map_err(|e| self.reportd_error(e))?
                {
                    if let Ok(details) = DomainDetails::from_fetcher_json(&text) {
                        let _ = sum.merge(details);
                    }
                }
            }
            DaySource::Fleet | DaySource::Collector | DaySource::CollectorCompleted => {
                match self.collector_reader(source)? {
                    Some(mut reader) => {
                        let (policies, failures) = reader.details(day, domain)?;
                        sum = collector_details(domain, &policies, &failures);
                    }
                    None if source == DaySource::Fleet => return Err(StatsError::NoFleet),
                    None => {}
                }
            }
        }
        Ok(sum)
    }

    /// The reports of `day` (and of `domain`, if given) with the state of
    /// each delivery.
    pub fn reports(
        &self,
        day: Option<Day>,
        domain: Option<&str>,
    ) -> Result<Vec<StoredReport>, StatsError> {
        match self.reportd_db()? {
            Some(mut db) => db.reports(day, domain).map_err(|e| self.reportd_error(e)),
            None => Ok(Vec::new()),
        }
    }

    /// Whether this process may resend reports (see
    /// [`ReportdStore::may_resend`](tlsrpt_reportd_db::ReportdStore::may_resend)).
    /// The packaged web pages run as `_posttls`, who may read the TLSRPT
    /// data but not change it; they then point to `tlsrptctl resend`
    /// instead.
    pub fn can_resend(&self) -> bool {
        match self.reportd_db() {
            Ok(Some(mut db)) => db.may_resend().unwrap_or(false),
            _ => false,
        }
    }
}

/// A domain's collector rows as the counters a fetcher would answer.
/// Negative counts (only another process could have stored them) count as
/// nothing.
fn collector_details(
    domain: &str,
    policies: &[tlsrpt_store::PolicyRow],
    failures: &[tlsrpt_store::FailureRow],
) -> DomainDetails {
    let mut details = DomainDetails::new(domain);
    for row in policies {
        let total = u64::try_from(row.total).unwrap_or(0);
        let failed = u64::try_from(row.failed).unwrap_or(0);
        details.add_sessions(&row.record, &row.policy, total, failed);
    }
    for row in failures {
        details.add_failure(
            &row.record,
            &row.policy,
            &row.reason,
            u64::try_from(row.count).unwrap_or(0),
        );
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Sort;
    use tlsrpt_report::report::{PolicyType, ResultType};

    const REC: &str = "v=TLSRPTv1;rua=mailto:tlsrpt@example.net";

    /// A collector database with `rows` of (day, domain, policy, total,
    /// failed) and `failures` of (day, domain, policy, reason, count).
    fn collector(
        path: &std::path::Path,
        rows: &[(&str, &str, &str, i64, i64)],
        failures: &[(&str, &str, &str, &str, i64)],
    ) {
        drop(tlsrpt_store::CollectorDb::open(path).unwrap());
        let conn = rusqlite::Connection::open(path).unwrap();
        for (day, domain, policy, total, failed) in rows {
            conn.execute(
                "INSERT INTO finalresults (day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![day, domain, REC, policy, total, failed],
            )
            .unwrap();
        }
        for (day, domain, policy, reason, count) in failures {
            conn.execute(
                "INSERT INTO failures (day, domain, tlsrptrecord, policy, reason, cntr) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![day, domain, REC, policy, reason, count],
            )
            .unwrap();
        }
    }

    const DANE: &str =
        r#"{"policy-type": 1, "policy-domain": "a.example", "policy-string": ["3 1 1 abcd"]}"#;
    const STS: &str =
        r#"{"policy-type": 2, "policy-domain": "b.example", "mx-host": ["mx.b.example"]}"#;
    const NONE_A: &str = r#"{"policy-type": 9, "policy-domain": "a.example"}"#;
    const NONE_C: &str = r#"{"policy-type": 9, "policy-domain": "c.example"}"#;

    #[test]
    fn a_day_is_summed_per_domain_and_policy_type_and_hostile_rows_count_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("collectd.sqlite");
        let day = "2026-12-02";
        collector(
            &live,
            &[
                (day, "a.example", DANE, 10, 2),
                (day, "a.example", NONE_A, 5, 0),
                (day, "b.example", STS, 7, 7),
                (day, "c.example", NONE_C, 3, 0),
                // Hostile: not JSON, and negative counts.
                (day, "d.example", "{not json", 1000, 1000),
                (day, "e.example", NONE_C, -5, -5),
            ],
            &[
                (
                    day,
                    "a.example",
                    DANE,
                    r#"{"c": 304, "r": "192.0.2.1", "n": "mx.a.example"}"#,
                    2,
                ),
                (day, "b.example", STS, r#"{"c": 203}"#, 7),
            ],
        );
        let sources = Sources {
            collector: Some(CollectorSource::Sqlite(live)),
            reportd: None,
        };
        let day = Day::parse(day).unwrap();
        assert_eq!(sources.days().unwrap(), [(day, DaySource::Collector)]);
        let summary = sources.day(day).unwrap().unwrap();
        assert_eq!((summary.successful, summary.failed), (16, 9));
        assert_eq!(summary.skipped, 1);
        let worst: Vec<&str> = summary.domains.iter().map(|d| d.domain.as_str()).collect();
        assert_eq!(
            worst,
            [
                "b.example",
                "a.example",
                "c.example",
                "d.example",
                "e.example"
            ]
        );
        let a = &summary.domains[1];
        assert_eq!((a.successful, a.failed), (13, 2));
        assert_eq!(
            a.policy_types,
            [PolicyType::NoPolicyFound, PolicyType::Tlsa]
        );
        assert_eq!(a.result_types[0].result_type, ResultType::TlsaInvalid);
        assert_eq!(a.result_types[0].sessions, 2);
        let by_type: Vec<(PolicyType, u64, u64)> = summary
            .policy_types
            .iter()
            .map(|t| (t.policy_type, t.successful, t.failed))
            .collect();
        assert_eq!(
            by_type,
            [
                (PolicyType::Tlsa, 8, 2),
                (PolicyType::Sts, 0, 7),
                (PolicyType::NoPolicyFound, 8, 0)
            ]
        );
        let mut domains = summary.domains.clone();
        Sort::Domain.apply(&mut domains);
        assert_eq!(domains[0].domain, "a.example");
        Sort::Rate.apply(&mut domains);
        assert_eq!(domains[0].domain, "b.example");
        assert!("worst".parse::<Sort>().is_err());
        assert!(sources.day(day.pred()).unwrap().is_none());

        let history = sources.domain("a.example", None).unwrap();
        assert_eq!(history.day, Some(day));
        assert_eq!(history.days.len(), 1);
        assert_eq!(
            (history.days[0].successful, history.days[0].failed),
            (13, 2)
        );
        assert_eq!(history.policies.len(), 2);
    }

    #[test]
    fn a_day_the_report_daemon_fetched_is_read_from_there_summed_over_fetchers() {
        let dir = tempfile::tempdir().unwrap();
        let reportd = dir.path().join("reportd.sqlite");
        drop(ReportdDb::open(&DbName::Sqlite(reportd.clone())).unwrap());
        let conn = rusqlite::Connection::open(&reportd).unwrap();
        let answer = |n: u64| {
            format!(
                r#"{{"d": "a.example", "policies": {{"{REC}": {{{}: {{"cntrtotal": {n}, "cntrfailure": 1, "failures": {{}}}}}}}}}}"#,
                serde_json_string(DANE)
            )
        };
        for (fetcher, n) in [(1, 4), (2, 6)] {
            conn.execute(
                "INSERT INTO reportdata (day, domain, data, fetcher, fetcherindex, retries, status) VALUES ('2026-12-01', 'a.example', ?1, ?2, ?3, 0, 'fetched')",
                rusqlite::params![answer(n), format!("f{fetcher}"), fetcher],
            )
            .unwrap();
        }
        // A row another process damaged.
        conn.execute(
            "INSERT INTO reportdata (day, domain, data, fetcher, fetcherindex, retries, status) VALUES ('2026-12-01', 'z.example', 'garbage', 'f1', 1, 0, 'fetched')",
            [],
        )
        .unwrap();
        let live = dir.path().join("collectd.sqlite");
        collector(
            &live,
            &[
                ("2026-12-01", "a.example", DANE, 1, 0),
                ("2026-12-02", "a.example", DANE, 3, 0),
            ],
            &[],
        );
        let sources = Sources {
            collector: Some(CollectorSource::Sqlite(live)),
            reportd: Some(DbName::Sqlite(reportd)),
        };
        let yesterday = Day::parse("2026-12-01").unwrap();
        assert_eq!(
            sources.days().unwrap(),
            [
                (yesterday.succ(), DaySource::Collector),
                (yesterday, DaySource::ReportDaemon)
            ]
        );
        let summary = sources.day(yesterday).unwrap().unwrap();
        assert_eq!((summary.successful, summary.failed), (8, 2));
        assert_eq!(summary.domains.len(), 2);
        let history = sources.domain("a.example", Some(yesterday)).unwrap();
        let points: Vec<(u64, u64)> = history
            .days
            .iter()
            .map(|p| (p.successful, p.failed))
            .collect();
        assert_eq!(points, [(8, 2), (3, 0)]);
        assert_eq!(
            history.policies[0].summary.total_successful_session_count,
            8
        );
        // A garbage row in the stored day is refused, not guessed at.
        conn.execute("INSERT INTO reportdata (day, domain, data, fetcher, fetcherindex) VALUES ('yesterday', 'a.example', '{}', 'f', 1)", []).unwrap();
        assert!(matches!(sources.days(), Err(StatsError::Reportd { .. })));
    }

    /// A fleet's collectors in PostgreSQL, and the report daemon's state
    /// there: the dashboard sums the collectors of a day, and may resend
    /// when its role may.
    #[test]
    fn a_fleets_postgresql_collectors_and_report_state_are_read() {
        let cluster = mailtls_test_support::postgres::PgCluster::start();
        cluster.create_database("tlsrpt");
        let url = PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap();
        // The collectors' tables, made as a collector makes them.
        tlsrpt_store::postgres::PgCollectorStore::connect(&url, "mx1").unwrap();
        let policy = DANE.replace('\'', "''");
        cluster.psql(
            "tlsrpt",
            &format!(
                "INSERT INTO tlsrpt_results VALUES \
                 ('2026-11-20', 'a.example', '{REC}', '{policy}', 'mx1', 5, 1), \
                 ('2026-11-20', 'a.example', '{REC}', '{policy}', 'mx2', 4, 2), \
                 ('2026-11-21', 'a.example', '{REC}', '{policy}', 'mx2', 3, 0); \
                 INSERT INTO tlsrpt_failures VALUES \
                 ('2026-11-20', 'a.example', '{REC}', '{policy}', '{{\"c\": 304}}', 'mx2', 3)"
            ),
        );
        let mut sources = Sources {
            collector: Some(CollectorSource::Postgres(Box::new(url.clone()))),
            reportd: None,
        };
        let (d20, d21) = (
            Day::parse("2026-11-20").unwrap(),
            Day::parse("2026-11-21").unwrap(),
        );
        assert_eq!(
            sources.days().unwrap(),
            [(d21, DaySource::Fleet), (d20, DaySource::Fleet)]
        );
        let summary = sources.day(d20).unwrap().unwrap();
        assert_eq!((summary.successful, summary.failed), (6, 3));
        let history = sources.domain("a.example", Some(d20)).unwrap();
        let points: Vec<(u64, u64)> = history
            .days
            .iter()
            .map(|p| (p.successful, p.failed))
            .collect();
        assert_eq!(points, [(6, 3), (3, 0)]);
        assert_eq!(history.policies[0].failure_details.len(), 1);

        cluster.create_database("reportd");
        let state = DbName::Postgres(Box::new(
            PgUrl::parse(&cluster.url("reportd"), None).unwrap(),
        ));
        drop(ReportdDb::open(&state).unwrap());
        sources.reportd = Some(state);
        assert!(sources.reports(None, None).unwrap().is_empty());
        assert!(sources.can_resend(), "the superuser may");
        cluster.psql("postgres", "CREATE ROLE viewer LOGIN PASSWORD 'viewer'");
        cluster.psql(
            "reportd",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO viewer",
        );
        let viewer = format!(
            "postgresql://viewer:viewer@127.0.0.1:{}/reportd",
            cluster.port
        );
        sources.reportd = Some(DbName::Postgres(Box::new(
            PgUrl::parse(&viewer, None).unwrap(),
        )));
        assert!(sources.reports(None, None).unwrap().is_empty());
        assert!(!sources.can_resend(), "a role that may only read");
    }

    fn serde_json_string(text: &str) -> String {
        let mut quoted = String::from('"');
        for c in text.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        quoted
    }
}
