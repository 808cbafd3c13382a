//! The reportd's state: fetch jobs, the domain lists and details they
//! produced, reports and their destinations with a delivery state recorded
//! before and after every attempt.
//!
//! Two stores behind one interface ([`ReportdStore`]):
//! - [`sqlite`]: the file upstream's tlsrpt-reportd 0.6.0 keeps, so that
//!   either implementation can take over the other's state;
//! - [`postgres`]: the same tables in a PostgreSQL database that several
//!   report daemons share, one of them active (it holds an advisory lock),
//!   the others standing by.
//!
//! Both record a delivery attempt before it starts (status `sending`,
//! `nexttry` = the attempt's start), so that a daemon taking over after a
//! crash knows an attempt may have happened.

use mailtls_common::day::Day;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tlsrpt_store::postgres::{PgError, PgUrl};

use crate::reports::Withheld;

pub mod postgres;
pub mod sqlite;

pub use sqlite::{PURPOSE, SCHEMA_VERSION};
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("not a reportd database: purpose {found:?}, expected {PURPOSE:?}")]
    ForeignPurpose { found: String },
    #[error("not a reportd database: it has tables but no dbversion table")]
    ForeignTables,
    #[error("reportd database version {0}, only version {SCHEMA_VERSION} is supported")]
    WrongVersion(i64),
    #[error("the database is read-only")]
    ReadOnly,
    #[error("stored day {0:?} is not a YYYY-MM-DD day")]
    BadDay(String),
    #[error("no delivery of report {r_id} to {destination} is in progress")]
    NotSending { destination: String, r_id: i64 },
}

type Result<T> = std::result::Result<T, DbError>;

/// A fetch job: one configured fetcher's domain list for one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchJob {
    pub day: Day,
    /// The fetcher's position in the `fetchers` option, from 1.
    pub fetcher_index: i64,
    pub fetcher: String,
    /// Failed attempts so far.
    pub retries: i64,
}

/// One domain whose details a fetcher still has to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailsJob {
    pub day: Day,
    pub domain: String,
    pub fetcher_index: i64,
    pub fetcher: String,
    pub retries: i64,
}

/// One report to one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub destination: String,
    pub r_id: i64,
    /// The report's number among the reports of its day and domain, from 1.
    pub uniqid: i64,
    pub report: String,
    pub domain: String,
    pub day: Day,
    pub retries: i64,
    /// When the destination row was made (with its report), for the
    /// retry window.
    pub created: Option<DateTime<Utc>>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Sent,
    /// Try again at this time, one more failed attempt counted.
    RetryAt(DateTime<Utc>),
    /// The retries are used up.
    TimedOut,
    /// Retrying cannot help (for example an unusable destination).
    Failed,
}

impl DeliveryOutcome {
    /// The `status` an ended attempt leaves (NULL: to be tried again).
    pub(crate) fn status(self) -> Option<&'static str> {
        match self {
            DeliveryOutcome::Sent => Some("sent"),
            DeliveryOutcome::RetryAt(_) => None,
            DeliveryOutcome::TimedOut => Some("timedout"),
            DeliveryOutcome::Failed => Some("failed"),
        }
    }
}

/// Rows deleted by [`ReportdDb::clean_up`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanedUp {
    pub fetchjobs: usize,
    pub reportdata: usize,
    pub destinations: usize,
    pub reports: usize,
}

/// Rows per day and status of one table, for `tlsrptctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub day: Option<String>,
    pub status: Option<String>,
    pub count: i64,
}

/// One stored report and the state of its deliveries, for `tlsrptctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    pub r_id: i64,
    pub day: String,
    pub domain: String,
    pub uniqid: i64,
    /// NULL in reports an upstream reportd made.
    pub tlsrptrecord: Option<String>,
    pub report: String,
    pub destinations: Vec<DestinationState>,
}

impl StoredReport {
    /// The `report-id` of the stored JSON (ours or an upstream reportd's);
    /// `None` when the text holds none.
    pub fn report_id(&self) -> Option<String> {
        report_id_of(&self.report)
    }
}

/// The `report-id` of a stored report's JSON text.
pub fn report_id_of(report: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(report)
        .ok()?
        .get("report-id")?
        .as_str()
        .map(str::to_owned)
}

/// One destination of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    pub destination: String,
    /// `None` while a delivery is pending; `sending`, `sent`, `timedout`,
    /// `failed` (or upstream's `unknownrua`).
    pub status: Option<String>,
    pub retries: i64,
    pub nexttry: Option<String>,
}

/// The counts `tlsrptctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub fetchjobs: Vec<StatusCount>,
    pub reportdata: Vec<StatusCount>,
    pub destinations: Vec<StatusCount>,
}

/// Where the reportd keeps its state: `dbname`, a file or a
/// `postgresql://` URL.
#[derive(Debug, Clone)]
pub enum DbName {
    Sqlite(PathBuf),
    Postgres(Box<PgUrl>),
}

impl DbName {
    /// `dbname` as configured; a `postgresql://` URL takes its password
    /// from `password_file` when one is given.
    pub fn parse(dbname: &str, password_file: Option<&Path>) -> Result<DbName> {
        if dbname.starts_with("postgresql://") || dbname.starts_with("postgres://") {
            Ok(DbName::Postgres(Box::new(PgUrl::parse(
                dbname,
                password_file,
            )?)))
        } else {
            Ok(DbName::Sqlite(PathBuf::from(dbname)))
        }
    }

    /// The file, or the URL without its password, for messages.
    pub fn shown(&self) -> String {
        match self {
            DbName::Sqlite(path) => path.display().to_string(),
            DbName::Postgres(url) => url.shown().to_string(),
        }
    }
}

/// What the daemon, `tlsrptctl` and the dashboard do with the state, the
/// same on every store. Every method is one transaction of its own unless
/// it runs inside [`ReportdDb::in_transaction`].
pub trait ReportdStore: Send {
    /// Creates the fetch jobs of `day`, one per configured fetcher command
    /// (numbered from 1, due at once), unless the day has jobs already.
    /// Returns whether it created them.
    fn create_fetch_jobs(
        &mut self,
        day: Day,
        fetchers: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Fetch jobs without a result whose next try is before `now`.
    fn due_fetch_jobs(&mut self, now: DateTime<Utc>) -> Result<Vec<FetchJob>>;

    /// Stores what a fetch job produced, each domain with its details when
    /// they came along (a bulk answer) or without (to be fetched), and
    /// marks the job done, in one transaction: a list is stored completely
    /// or not at all. A domain already stored for this fetcher is kept as
    /// it is. Returns the number of new domains.
    fn store_fetched(
        &mut self,
        job: &FetchJob,
        rows: &mut dyn Iterator<Item = (&str, Option<&str>)>,
        now: DateTime<Utc>,
    ) -> Result<usize>;

    /// The fetch job failed and is tried again at `at`.
    fn fetch_job_retry_at(&mut self, job: &FetchJob, at: DateTime<Utc>) -> Result<()>;

    /// The fetch job has used up its retries.
    fn fetch_job_timed_out(&mut self, job: &FetchJob) -> Result<()>;

    /// Domains whose details are still missing and due, on days whose fetch
    /// jobs have all ended (as upstream: a day's details are fetched only
    /// once every fetcher's domain list is in).
    fn due_details(&mut self, now: DateTime<Utc>) -> Result<Vec<DetailsJob>>;

    /// Stores a domain's details (the `policies` object of the fetcher's
    /// answer, as JSON text) and marks them fetched.
    fn store_details(&mut self, job: &DetailsJob, policies_json: &str) -> Result<()>;

    /// The details fetch failed and is tried again at `at`.
    fn details_retry_at(&mut self, job: &DetailsJob, at: DateTime<Utc>) -> Result<()>;

    /// The details fetch has used up its retries; the domain's report is
    /// made from the other fetchers' data.
    fn details_timed_out(&mut self, job: &DetailsJob) -> Result<()>;

    /// The (day, domain) pairs with some fetched data, none still pending,
    /// every fetch job of the day ended, and no report yet. (Upstream needs
    /// no fetch job condition: it fetches details only after all lists are
    /// in. A bulk answer brings details with the list, and another fetcher
    /// may still add to the same domain.)
    fn ready_for_report(&mut self) -> Result<Vec<(Day, String)>>;

    /// The domains with fetched data on `day`, sorted.
    fn fetched_domains(&mut self, day: Day) -> Result<Vec<String>>;

    /// Marks a day and domain whose data gave no report (status
    /// `unusable`), so it is not tried again at every loop.
    fn mark_unreportable(&mut self, day: Day, domain: &str) -> Result<()>;

    /// The fetched details (`policies` JSON texts) of one day and domain,
    /// one per fetcher that delivered them, in fetcher order.
    fn details_of(&mut self, day: Day, domain: &str) -> Result<Vec<String>>;

    /// [`details_of`](Self::details_of) for each of `pairs`, in their
    /// order (the report step reads a thousand domains at a time).
    fn details_of_each(&mut self, pairs: &[(Day, String)]) -> Result<Vec<Vec<String>>> {
        pairs
            .iter()
            .map(|(day, domain)| self.details_of(*day, domain))
            .collect()
    }

    /// Every fetched detail (`policies` JSON text) of `day`, as (domain,
    /// text), in domain and fetcher order: the dashboard's view of a
    /// completed day, summed over every fetcher (every MTA).
    fn details_of_day(&mut self, day: Day) -> Result<Vec<(String, String)>>;

    /// The days with fetched details, newest first. A stored day that is
    /// no day is an error ([`DbError::BadDay`]).
    fn days_with_details(&mut self) -> Result<Vec<Day>>;

    /// Stores a report and its destinations, each with the time of its
    /// first delivery, in one transaction, numbered among the reports of
    /// its day and domain (`uniqid`, from 1, as upstream numbers them).
    /// Returns the report's `r_id`. The `withheld` destinations are stored
    /// with their reason as status, so that they are shown and never
    /// delivered.
    fn insert_report(&mut self, report: NewReport<'_>) -> Result<i64>;

    /// [`insert_report`](Self::insert_report) for a batch (the report
    /// step stores a thousand at a time), in order; their `r_id`s.
    fn insert_reports(&mut self, reports: &[NewReport<'_>]) -> Result<Vec<i64>> {
        reports
            .iter()
            .map(|report| self.insert_report(*report))
            .collect()
    }

    /// Deliveries without a result whose next try is before `now`.
    fn due_deliveries(&mut self, now: DateTime<Utc>) -> Result<Vec<Delivery>>;

    /// Deliveries that were started and never recorded as ended: the
    /// daemon stopped during the attempt, which may or may not have
    /// reached the destination. With each, when the attempt started.
    fn interrupted_deliveries(&mut self) -> Result<Vec<(Delivery, Option<DateTime<Utc>>)>>;

    /// Records, before the attempt, that a delivery is starting at `now`.
    fn delivery_started(&mut self, delivery: &Delivery, now: DateTime<Utc>) -> Result<()>;

    /// Records how a started delivery ended.
    fn delivery_finished(&mut self, delivery: &Delivery, outcome: DeliveryOutcome) -> Result<()>;

    /// [`delivery_started`](Self::delivery_started) for a batch (the
    /// `directory:` deliveries, a thousand at a time).
    fn deliveries_started(&mut self, deliveries: &[Delivery], now: DateTime<Utc>) -> Result<()> {
        for delivery in deliveries {
            self.delivery_started(delivery, now)?;
        }
        Ok(())
    }

    /// [`delivery_finished`](Self::delivery_finished) for a batch.
    fn deliveries_finished(&mut self, ended: &[(&Delivery, DeliveryOutcome)]) -> Result<()> {
        for (delivery, outcome) in ended {
            self.delivery_finished(delivery, *outcome)?;
        }
        Ok(())
    }

    /// Deletes everything about days more than `keep_days` days before
    /// `now`, with upstream's condition (`julianday(now) - julianday(day) >
    /// keep_days`, so a day goes a fraction of a day after it is exactly
    /// `keep_days` old).
    fn clean_up(&mut self, now: DateTime<Utc>, keep_days: i64) -> Result<CleanedUp>;

    /// The earliest `nexttry` of all pending work (fetch jobs, details,
    /// deliveries), to know how long the daemon may sleep.
    fn next_due(&mut self) -> Result<Option<DateTime<Utc>>>;

    /// Reports with their destinations, optionally of one day and/or one
    /// domain, in the order they were made.
    fn reports(&mut self, day: Option<Day>, domain: Option<&str>) -> Result<Vec<StoredReport>>;

    /// One report by its `r_id`.
    fn report(&mut self, r_id: i64) -> Result<Option<StoredReport>>;

    /// Queues report `r_id` again for all its destinations, or for one:
    /// due at `now`, with a fresh retry count. A delivery in progress is
    /// left alone, and a destination the amplification limits withheld is
    /// queued only when it is named. Returns the destinations queued.
    fn resend(
        &mut self,
        r_id: i64,
        destination: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>>;

    /// Rows per day and status of the three tables `tlsrptctl status`
    /// shows. (Upstream's queries lack a GROUP BY and print one row per
    /// table with an arbitrary day and status and the table's total.)
    fn status(&mut self) -> Result<Status>;

    /// Whether this process may re-send reports: write access to the
    /// SQLite file and its directory (for the journal), or the PostgreSQL
    /// role's UPDATE on the destinations.
    fn may_resend(&mut self) -> Result<bool>;

    /// Whether other report daemons may share this state (PostgreSQL):
    /// then only the one holding the lead works, and a delivery another
    /// daemon left `sending` may still be under way there.
    fn is_shared(&self) -> bool;

    /// Becomes the active daemon unless another one is: always on SQLite
    /// (one daemon per file); on PostgreSQL when this connection gets the
    /// lock, held until the connection ends. `Ok(Err(who))`: another daemon
    /// is active, `who` names it as far as the server shows.
    fn take_lead(&mut self) -> Result<std::result::Result<(), String>>;

    /// Starts the transaction of [`ReportdDb::in_transaction`].
    fn begin(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self) -> Result<()>;
}

/// A report to store with [`ReportdStore::insert_report`].
#[derive(Debug, Clone, Copy)]
pub struct NewReport<'a> {
    pub day: Day,
    pub domain: &'a str,
    pub tlsrptrecord: &'a str,
    /// The report's JSON text.
    pub report: &'a str,
    /// Each destination with the time of its first delivery.
    pub destinations: &'a [(String, DateTime<Utc>)],
    pub withheld: &'a [Withheld],
}

/// The open reportd state, on either store.
pub struct ReportdDb {
    store: Box<dyn ReportdStore>,
}

impl ReportdDb {
    /// Opens the state for the daemon, creating or migrating the tables.
    pub fn open(name: &DbName) -> Result<ReportdDb> {
        Ok(ReportdDb {
            store: match name {
                DbName::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path)?),
                DbName::Postgres(url) => Box::new(postgres::PgStore::connect(url)?),
            },
        })
    }

    /// Opens existing state for `tlsrptctl` and the dashboard: read-only
    /// unless `write` (re-sending a report), never creating anything.
    pub fn open_existing(name: &DbName, write: bool) -> Result<ReportdDb> {
        Ok(ReportdDb {
            store: match name {
                DbName::Sqlite(path) => Box::new(sqlite::SqliteStore::open_existing(path, write)?),
                DbName::Postgres(url) => Box::new(postgres::PgStore::connect_existing(url, write)?),
            },
        })
    }

    /// Stores the domain list a fetch job produced and marks the job done,
    /// all in one transaction. Returns the number of new domains.
    pub fn store_domain_list(
        &mut self,
        job: &FetchJob,
        domains: &[String],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut rows = domains.iter().map(|domain| (domain.as_str(), None));
        self.store.store_fetched(job, &mut rows, now)
    }

    /// Stores a bulk answer: every domain with its details, and the fetch
    /// job marked done, in one transaction. Returns the number of new
    /// domains.
    pub fn store_bulk(
        &mut self,
        job: &FetchJob,
        details: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let mut rows = details
            .iter()
            .map(|(domain, data)| (domain.as_str(), Some(data.as_str())));
        self.store.store_fetched(job, &mut rows, now)
    }

    /// Runs `work` in one transaction: everything it writes is committed
    /// together, or nothing when it fails (one disk sync instead of one per
    /// row, which matters for thousands of reports).
    pub fn in_transaction<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.store.begin()?;
        match work(self) {
            Ok(value) => {
                self.store.commit()?;
                Ok(value)
            }
            Err(err) => {
                let _ = self.store.rollback();
                Err(err)
            }
        }
    }
}

impl std::ops::Deref for ReportdDb {
    type Target = dyn ReportdStore;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

impl std::ops::DerefMut for ReportdDb {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.store
    }
}

pub(crate) fn parse_day(text: String) -> Result<Day> {
    Day::parse(&text).map_err(|_| DbError::BadDay(text))
}

/// The behaviour every store shares, run on SQLite and on PostgreSQL.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reports::WithheldReason;
    use chrono::TimeZone;
    use mailtls_test_support::postgres::PgCluster;

    pub fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    pub fn day(d: u32) -> Day {
        Day::from_ymd(2026, 11, d)
    }

    pub fn fetchers() -> Vec<String> {
        vec!["fetch-a".into(), "ssh b tlsrpt-fetcher".into()]
    }

    pub fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A day whose fetch jobs both delivered their domain lists.
    /// The two fetchers' jobs of day 21, the first one's domain list in.
    pub fn with_first_domain_list(db: &mut ReportdDb) -> Vec<FetchJob> {
        db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap();
        let jobs = db.due_fetch_jobs(t(0, 1)).unwrap();
        db.store_domain_list(&jobs[0], &strings(&["a.example", "b.example"]), t(0, 1))
            .unwrap();
        jobs
    }

    pub fn with_domain_lists(db: &mut ReportdDb) -> Vec<FetchJob> {
        let jobs = with_first_domain_list(db);
        db.store_domain_list(&jobs[1], &strings(&["b.example"]), t(0, 1))
            .unwrap();
        jobs
    }

    pub fn fetch_jobs_are_created_once_per_day_and_end_ok_retried_or_timed_out(db: &mut ReportdDb) {
        assert!(db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap());
        assert!(!db.create_fetch_jobs(day(21), &fetchers(), t(0, 5)).unwrap());
        // Due strictly after their creation time.
        assert!(db.due_fetch_jobs(t(0, 0)).unwrap().is_empty());
        let jobs = db.due_fetch_jobs(t(0, 1)).unwrap();
        assert_eq!(
            jobs,
            [
                FetchJob {
                    day: day(21),
                    fetcher_index: 1,
                    fetcher: "fetch-a".into(),
                    retries: 0
                },
                FetchJob {
                    day: day(21),
                    fetcher_index: 2,
                    fetcher: "ssh b tlsrpt-fetcher".into(),
                    retries: 0
                },
            ]
        );
        assert_eq!(
            db.store_domain_list(&jobs[0], &strings(&["a.example"]), t(0, 1))
                .unwrap(),
            1
        );
        db.fetch_job_retry_at(&jobs[1], t(0, 10)).unwrap();
        assert!(db.due_fetch_jobs(t(0, 10)).unwrap().is_empty());
        let again = db.due_fetch_jobs(t(0, 11)).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].retries, 1);
        db.fetch_job_timed_out(&again[0]).unwrap();
        assert!(db.due_fetch_jobs(t(23, 0)).unwrap().is_empty());
        let status = db.status().unwrap();
        assert_eq!(
            status.fetchjobs,
            [
                StatusCount {
                    day: Some("2026-11-21".into()),
                    status: Some("ok".into()),
                    count: 1
                },
                StatusCount {
                    day: Some("2026-11-21".into()),
                    status: Some("timedout".into()),
                    count: 1
                },
            ]
        );
    }

    pub fn details_are_due_once_all_domain_lists_are_in_and_retried_or_given_up(
        db: &mut ReportdDb,
    ) {
        let jobs = with_first_domain_list(db);
        assert!(
            db.due_details(t(0, 2)).unwrap().is_empty(),
            "fetcher 2 is still open"
        );
        db.store_domain_list(&jobs[1], &strings(&["b.example"]), t(0, 1))
            .unwrap();
        let due = db.due_details(t(0, 2)).unwrap();
        let keys: Vec<_> = due
            .iter()
            .map(|d| (d.domain.as_str(), d.fetcher_index))
            .collect();
        assert_eq!(keys, [("a.example", 1), ("b.example", 1), ("b.example", 2)]);

        db.store_details(&due[0], r#"{"v=TLSRPTv1; rua=mailto:r@a.example": {}}"#)
            .unwrap();
        db.store_details(&due[1], r#"{"rec": 1}"#).unwrap();
        db.details_retry_at(&due[2], t(1, 0)).unwrap();
        assert!(db.due_details(t(0, 59)).unwrap().is_empty());
        assert_eq!(
            db.ready_for_report().unwrap(),
            [(day(21), "a.example".to_string())]
        );

        let retried = db.due_details(t(1, 1)).unwrap();
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].retries, 1);
        db.details_timed_out(&retried[0]).unwrap();
        assert!(db.due_details(t(23, 0)).unwrap().is_empty());
        assert_eq!(
            db.ready_for_report().unwrap(),
            [
                (day(21), "a.example".to_string()),
                (day(21), "b.example".to_string())
            ]
        );
        assert_eq!(
            db.details_of(day(21), "b.example").unwrap(),
            [r#"{"rec": 1}"#]
        );
        assert!(db.details_of(day(20), "b.example").unwrap().is_empty());
        let each = db
            .details_of_each(&[
                (day(21), "b.example".into()),
                (day(20), "b.example".into()),
                (day(21), "a.example".into()),
                (day(21), "b.example".into()),
            ])
            .unwrap();
        assert_eq!(
            each,
            [
                vec![r#"{"rec": 1}"#.to_string()],
                vec![],
                vec![r#"{"v=TLSRPTv1; rua=mailto:r@a.example": {}}"#.to_string()],
                vec![r#"{"rec": 1}"#.to_string()],
            ]
        );
    }

    pub fn reports_are_numbered_per_day_and_domain_and_no_longer_ready(db: &mut ReportdDb) {
        let jobs = with_domain_lists(db);
        for job in db.due_details(t(0, 2)).unwrap() {
            db.store_details(&job, "{}").unwrap();
        }
        assert_eq!(jobs.len(), 2);
        let first = db
            .insert_report(NewReport {
                day: day(21),
                domain: "b.example",
                tlsrptrecord: "v=TLSRPTv1; rua=mailto:x@b.example",
                report: "a report",
                destinations: &[("mailto:x@b.example".into(), t(3, 0))],
                withheld: &[],
            })
            .unwrap();
        let second = db
            .insert_report(NewReport {
                day: day(21),
                domain: "b.example",
                tlsrptrecord: "v=TLSRPTv1; rua=https://b.example/r",
                report: "a report",
                destinations: &[("https://b.example/r".into(), t(4, 0))],
                withheld: &[],
            })
            .unwrap();
        assert_ne!(first, second);
        let numbers: Vec<i64> = db
            .reports(Some(day(21)), Some("b.example"))
            .unwrap()
            .iter()
            .map(|r| r.uniqid)
            .collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(
            db.ready_for_report().unwrap(),
            [(day(21), "a.example".to_string())]
        );
        let stored = db.report(second).unwrap().unwrap();
        assert_eq!(
            stored.tlsrptrecord.as_deref(),
            Some("v=TLSRPTv1; rua=https://b.example/r")
        );
        assert_eq!((stored.uniqid, stored.report.as_str()), (2, "a report"));
    }

    /// A report of `domain` on day 21 ("report of DOMAIN"), for one destination
    /// first tried at 03:00, with `withheld` ones.
    pub fn report_to(
        db: &mut ReportdDb,
        domain: &str,
        destination: &str,
        withheld: &[Withheld],
    ) -> i64 {
        db.insert_report(NewReport {
            day: day(21),
            domain,
            tlsrptrecord: "rec",
            report: &format!("report of {domain}"),
            destinations: &[(destination.into(), t(3, 0))],
            withheld,
        })
        .unwrap()
    }

    pub fn one_delivery(db: &mut ReportdDb) -> Delivery {
        let r_id = report_to(db, "a.example", "mailto:r@a.example", &[]);
        assert!(db.due_deliveries(t(3, 0)).unwrap().is_empty());
        let due = db.due_deliveries(t(3, 1)).unwrap();
        let created = due[0].created.expect("its is set");
        assert!((Utc::now() - created).num_seconds().abs() < 60, "{created}");
        assert_eq!(
            due,
            [Delivery {
                destination: "mailto:r@a.example".into(),
                r_id,
                uniqid: 1,
                report: "report of a.example".into(),
                domain: "a.example".into(),
                day: day(21),
                retries: 0,
                created: Some(created),
            }]
        );
        due.into_iter().next().unwrap()
    }

    pub fn withheld_destinations_are_shown_never_delivered_and_resent_only_by_name(
        db: &mut ReportdDb,
    ) {
        let withheld = Withheld {
            destination: "mailto:v5@evil.example".into(),
            reason: WithheldReason::DestinationsPerRecord,
        };
        let r_id = report_to(
            db,
            "evil.example",
            "mailto:v1@evil.example",
            std::slice::from_ref(&withheld),
        );
        let due = db.due_deliveries(t(23, 0)).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].destination, "mailto:v1@evil.example");
        let stored = db.report(r_id).unwrap().unwrap().destinations;
        assert_eq!(stored[1].destination, "mailto:v5@evil.example");
        assert_eq!(
            stored[1].status.as_deref(),
            Some("withheld:max_destinations_per_record")
        );
        assert_eq!(
            db.resend(r_id, None, t(4, 0)).unwrap(),
            ["mailto:v1@evil.example"]
        );
        assert_eq!(
            db.resend(r_id, Some("mailto:v5@evil.example"), t(4, 0))
                .unwrap(),
            ["mailto:v5@evil.example"]
        );
        assert_eq!(db.due_deliveries(t(23, 0)).unwrap().len(), 2);
    }

    pub fn a_delivery_is_recorded_before_and_after_each_attempt(db: &mut ReportdDb) {
        let delivery = one_delivery(db);
        assert!(matches!(
            db.delivery_finished(&delivery, DeliveryOutcome::Sent),
            Err(DbError::NotSending { .. })
        ));
        db.delivery_started(&delivery, t(3, 1)).unwrap();
        assert!(
            db.due_deliveries(t(23, 0)).unwrap().is_empty(),
            "not sent twice"
        );
        assert_eq!(
            db.interrupted_deliveries().unwrap(),
            [(delivery.clone(), Some(t(3, 1)))]
        );

        db.delivery_finished(&delivery, DeliveryOutcome::RetryAt(t(4, 0)))
            .unwrap();
        assert!(db.interrupted_deliveries().unwrap().is_empty());
        assert!(db.due_deliveries(t(4, 0)).unwrap().is_empty());
        let again = db.due_deliveries(t(4, 1)).unwrap().remove(0);
        assert_eq!(again.retries, 1);

        for (outcome, status) in [
            (DeliveryOutcome::Sent, "sent"),
            (DeliveryOutcome::TimedOut, "timedout"),
            (DeliveryOutcome::Failed, "failed"),
        ] {
            assert_eq!(
                db.resend(again.r_id, None, t(4, 1)).unwrap(),
                std::slice::from_ref(&again.destination)
            );
            db.delivery_started(&again, t(4, 1)).unwrap();
            db.delivery_finished(&again, outcome).unwrap();
            assert!(db.due_deliveries(t(23, 0)).unwrap().is_empty());
            assert_eq!(
                db.status().unwrap().destinations,
                [StatusCount {
                    day: Some("2026-11-21".into()),
                    status: Some(status.into()),
                    count: 1
                }]
            );
        }
    }

    pub fn clean_up_keeps_days_until_more_than_keep_days_old(db: &mut ReportdDb) {
        with_domain_lists(db);
        one_delivery(db);
        // Day 21 is 10 days old at midnight of day 31 (2026-12-01): kept;
        // a second later it is more than 10 days old.
        let midnight = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(db.clean_up(midnight, 10).unwrap(), CleanedUp::default());
        assert_eq!(
            db.clean_up(midnight + chrono::Duration::seconds(1), 10)
                .unwrap(),
            CleanedUp {
                fetchjobs: 2,
                reportdata: 3,
                destinations: 1,
                reports: 1
            }
        );
        let status = db.status().unwrap();
        assert!(
            status.fetchjobs.is_empty()
                && status.reportdata.is_empty()
                && status.destinations.is_empty()
        );
    }

    pub fn a_batch_of_deliveries_is_recorded_as_each_one_is(db: &mut ReportdDb) {
        let withheld = Withheld {
            destination: "mailto:held@b.example".into(),
            reason: WithheldReason::DestinationsPerRecord,
        };
        report_to(db, "a.example", "directory:/a", &[]);
        report_to(
            db,
            "b.example",
            "directory:/b",
            std::slice::from_ref(&withheld),
        );
        let due = db.due_deliveries(t(3, 1)).unwrap();
        assert_eq!(due.len(), 2, "the withheld destination is not due");
        db.deliveries_started(&due, t(3, 1)).unwrap();
        let interrupted: Vec<_> = db
            .interrupted_deliveries()
            .unwrap()
            .into_iter()
            .map(|(d, started)| (d.destination, started))
            .collect();
        assert_eq!(
            interrupted,
            [
                ("directory:/a".to_string(), Some(t(3, 1))),
                ("directory:/b".to_string(), Some(t(3, 1)))
            ]
        );
        db.deliveries_finished(&[
            (&due[0], DeliveryOutcome::Sent),
            (&due[1], DeliveryOutcome::RetryAt(t(5, 0))),
        ])
        .unwrap();
        assert!(db.interrupted_deliveries().unwrap().is_empty());
        let again = db.due_deliveries(t(5, 1)).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].destination.as_str(), again[0].retries),
            ("directory:/b", 1)
        );
        let states: Vec<Option<String>> = db
            .reports(None, None)
            .unwrap()
            .into_iter()
            .flat_map(|r| r.destinations)
            .map(|d| d.status)
            .collect();
        assert_eq!(
            states,
            [
                Some("sent".to_string()),
                None,
                Some("withheld:max_destinations_per_record".to_string())
            ]
        );
        // An attempt that was not started cannot be finished.
        match db.deliveries_finished(&[(&due[0], DeliveryOutcome::Failed)]) {
            Err(DbError::NotSending { destination, .. }) => assert_eq!(destination, "directory:/a"),
            other => panic!("{other:?}"),
        }
    }

    pub fn a_batch_of_reports_is_stored_and_numbered_as_one_by_one(db: &mut ReportdDb) {
        let before = report_to(db, "a.example", "mailto:r@a.example", &[]);
        let held = [Withheld {
            destination: "mailto:r@a.example".into(),
            reason: WithheldReason::DestinationsPerRecord,
        }];
        fn report<'a>(
            domain: &'a str,
            text: &'a str,
            destinations: &'a [(String, DateTime<Utc>)],
            withheld: &'a [Withheld],
        ) -> NewReport<'a> {
            NewReport {
                day: day(21),
                domain,
                tlsrptrecord: "rec",
                report: text,
                destinations,
                withheld,
            }
        }
        let to_a = [("mailto:r@a.example".to_string(), t(3, 0))];
        let to_b = [("https://b.example/r".to_string(), t(4, 0))];
        let ids = db
            .insert_reports(&[
                report("a.example", "a2", &to_a, &held),
                report("b.example", "b1", &to_b, &[]),
                report("a.example", "a3", &[], &held),
            ])
            .unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|id| *id > before));
        // Each as "domain uniqid text: destination=status ...", in order.
        let stored: Vec<String> = ids
            .iter()
            .map(|id| {
                let r = db.report(*id).unwrap().unwrap();
                let destinations: Vec<String> = r
                    .destinations
                    .iter()
                    .map(|d| format!("{}={}", d.destination, d.status.as_deref().unwrap_or("due")))
                    .collect();
                format!(
                    "{} {} {}: {}",
                    r.domain,
                    r.uniqid,
                    r.report,
                    destinations.join(" ")
                )
            })
            .collect();
        assert_eq!(
            stored,
            [
                "a.example 2 a2: mailto:r@a.example=due",
                "b.example 1 b1: https://b.example/r=due",
                "a.example 3 a3: mailto:r@a.example=withheld:max_destinations_per_record",
            ],
            "a destination both delivered and withheld is delivered"
        );
        assert!(db.insert_reports(&[]).unwrap().is_empty());
    }

    pub fn a_failed_transaction_leaves_nothing(db: &mut ReportdDb) {
        let outcome: Result<()> = db.in_transaction(|db| {
            db.create_fetch_jobs(day(21), &fetchers(), t(0, 0))?;
            report_to(db, "a.example", "mailto:r@a.example", &[]);
            Err(DbError::ReadOnly)
        });
        assert!(outcome.is_err());
        assert!(db.due_fetch_jobs(t(0, 1)).unwrap().is_empty());
        assert!(db.reports(None, None).unwrap().is_empty());
        // A step that is atomic by itself nests inside a transaction.
        db.in_transaction(|db| {
            with_domain_lists(db);
            Ok(())
        })
        .unwrap();
        assert_eq!(db.fetched_domains(day(21)).unwrap(), Vec::<String>::new());
        assert_eq!(db.due_details(t(0, 2)).unwrap().len(), 3);
    }

    /// A fresh PostgreSQL store in a private cluster (kept running while
    /// the returned guard lives).
    pub fn postgres_store() -> (PgCluster, ReportdDb) {
        let cluster = PgCluster::start();
        cluster.create_database("tlsrpt");
        let db = ReportdDb::open(&DbName::Postgres(Box::new(postgres_url(&cluster)))).unwrap();
        (cluster, db)
    }

    pub fn postgres_url(cluster: &PgCluster) -> PgUrl {
        PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap()
    }

    macro_rules! on_both_stores {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(
                    #[test]
                    fn $name() {
                        let dir = tempfile::tempdir().unwrap();
                        let name = crate::db::DbName::Sqlite(dir.path().join("reportd.sqlite"));
                        super::$name(&mut crate::db::ReportdDb::open(&name).unwrap());
                    }
                )*
            }
            mod on_postgres {
                $(
                    #[test]
                    fn $name() {
                        let (_cluster, mut db) = super::postgres_store();
                        super::$name(&mut db);
                    }
                )*
            }
        };
    }

    on_both_stores!(
        fetch_jobs_are_created_once_per_day_and_end_ok_retried_or_timed_out,
        details_are_due_once_all_domain_lists_are_in_and_retried_or_given_up,
        reports_are_numbered_per_day_and_domain_and_no_longer_ready,
        withheld_destinations_are_shown_never_delivered_and_resent_only_by_name,
        a_delivery_is_recorded_before_and_after_each_attempt,
        clean_up_keeps_days_until_more_than_keep_days_old,
        a_failed_transaction_leaves_nothing,
        a_batch_of_deliveries_is_recorded_as_each_one_is,
        a_batch_of_reports_is_stored_and_numbered_as_one_by_one,
    );
}
