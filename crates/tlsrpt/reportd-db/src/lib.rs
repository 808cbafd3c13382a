//! The report daemon's state: fetch jobs, the domain lists and details
//! they produced, reports and their destinations with a delivery state
//! recorded before and after every attempt. A crate of its own because the
//! daemon writes it while `tlsrptctl` and the web pages read it (and
//! resend reports), and those need none of the daemon's mail, HTTPS and
//! DKIM code.
//!
//! Two stores behind one interface ([`ReportdStore`]):
//! - [`sqlite`]: the file upstream's tlsrpt-reportd 0.6.0 keeps, so that
//!   either implementation can take over the other's state;
//! - [`postgres`]: the same tables in a PostgreSQL database that several
//!   report daemons share, one of them active (it holds an advisory lock),
//!   the others standing by.
//!
//! [`pytime`] writes timestamps as upstream's Python `sqlite3` stores them,
//! so that both implementations' `nexttry < ?` comparisons agree;
//! [`WithheldReason`] names the destinations the amplification limits cut.
//!
//! Both record a delivery attempt before it starts (status `sending`,
//! `nexttry` = the attempt's start), so that a daemon taking over after a
//! crash knows an attempt may have happened.

use mailtls_common::day::Day;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tlsrpt_store::postgres::{PgError, PgUrl};

pub mod postgres;
pub mod pytime;
pub mod sqlite;
#[cfg(test)]
mod tests;
mod withheld;

pub use withheld::{Withheld, WithheldReason};

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

impl DbError {
    fn not_sending(delivery: &Delivery) -> DbError {
        DbError::NotSending {
            destination: delivery.destination.clone(),
            r_id: delivery.r_id,
        }
    }
}

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

    /// Records how `delivery` ended if it is `sending`; whether it was.
    fn end_delivery(&mut self, delivery: &Delivery, outcome: DeliveryOutcome) -> Result<bool>;

    /// [`end_delivery`](Self::end_delivery) for a batch: the deliveries
    /// that were not `sending`.
    fn end_deliveries<'d>(
        &mut self,
        ended: &[(&'d Delivery, DeliveryOutcome)],
    ) -> Result<Vec<&'d Delivery>> {
        let mut not_sending = Vec::new();
        for (delivery, outcome) in ended {
            if !self.end_delivery(delivery, *outcome)? {
                not_sending.push(*delivery);
            }
        }
        Ok(not_sending)
    }

    /// Records how a started delivery ended. One that is not `sending`
    /// (never started, or ended already) is an error: an attempt is
    /// recorded once.
    fn delivery_finished(&mut self, delivery: &Delivery, outcome: DeliveryOutcome) -> Result<()> {
        match self.end_delivery(delivery, outcome)? {
            true => Ok(()),
            false => Err(DbError::not_sending(delivery)),
        }
    }

    /// [`delivery_started`](Self::delivery_started) for a batch (the
    /// `directory:` deliveries, a thousand at a time).
    fn deliveries_started(&mut self, deliveries: &[Delivery], now: DateTime<Utc>) -> Result<()> {
        for delivery in deliveries {
            self.delivery_started(delivery, now)?;
        }
        Ok(())
    }

    /// [`delivery_finished`](Self::delivery_finished) for a batch; the
    /// error names the first that was not `sending`.
    fn deliveries_finished(&mut self, ended: &[(&Delivery, DeliveryOutcome)]) -> Result<()> {
        match self.end_deliveries(ended)?.first() {
            None => Ok(()),
            Some(delivery) => Err(DbError::not_sending(delivery)),
        }
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

/// One `destinations` row of a new report: a destination to deliver (no
/// status yet, its first try at a time) or a withheld one (its status, no
/// time).
pub(crate) struct DestinationRow<'a> {
    pub destination: &'a str,
    pub status: Option<&'static str>,
    pub first_try: Option<DateTime<Utc>>,
}

impl<'a> NewReport<'a> {
    /// Its `destinations` rows: the destinations first, then the withheld
    /// ones, so that a destination that is both is delivered (the stores
    /// keep the first row of a destination and report).
    pub(crate) fn destination_rows(&self) -> impl Iterator<Item = DestinationRow<'a>> {
        let delivered = self
            .destinations
            .iter()
            .map(|(destination, at)| DestinationRow {
                destination,
                status: None,
                first_try: Some(*at),
            });
        let withheld = self.withheld.iter().map(|w| DestinationRow {
            destination: &w.destination,
            status: Some(w.reason.status()),
            first_try: None,
        });
        delivered.chain(withheld)
    }
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

/// The upstream's Python (scripts/setup-oracle installs it in .venv), for
/// tests that check our files against what upstream's sqlite3 reads and writes.
#[cfg(test)]
pub(crate) fn python(code: &str, args: &[&std::path::Path]) -> String {
    let out = std::process::Command::new(mailtls_test_support::venv_python())
        .args(["-c", code])
        .args(args)
        .output()
        .expect("the upstream oracle in .venv: run scripts/setup-oracle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
