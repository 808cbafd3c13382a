//! The reportd database: the same SQLite file upstream's tlsrpt-reportd
//! 0.6.0 keeps (same tables, purpose string and value forms), so either
//! implementation can take over the other's state and upstream's
//! `tlsrptctl status` reads ours.
//!
//! Differences from upstream, all invisible to its queries:
//! - `reports.tlsrptrecord` is filled (upstream leaves it NULL).
//! - A delivery attempt is recorded before it starts (status `sending`,
//!   `nexttry` = the attempt's start), so after a crash the daemon knows an
//!   attempt may have happened instead of silently sending again.
//!   Upstream's delivery query (`status IS NULL`) skips such rows.
//! - Domain details can be retried and given up (`reportdata.retries`,
//!   status `timedout`); upstream retries a failing domain forever and
//!   never reports the day.
//! - A domain list and its fetch job's `ok` are stored in one transaction.

use mailtls_common::day::Day;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, MAIN_DB};

use crate::pytime;
use crate::reports::Withheld;

/// The purpose string in `dbversion`; a file with another purpose belongs
/// to another program and is never modified.
pub const PURPOSE: &str = "TLSRPT-Reportd-DB-devel-2024-10-28";
/// The schema version in `dbversion`.
pub const SCHEMA_VERSION: i64 = 1;

/// Upstream's DDL, statement for statement.
const DDL: [&str; 6] = [
    "CREATE TABLE fetchjobs(day, fetcherindex, fetcher, retries, status, nexttry, its datetime default CURRENT_TIMESTAMP, PRIMARY KEY(day, fetcherindex))",
    "CREATE TABLE reportdata(day, domain, data, fetcher, fetcherindex, retries, status, nexttry, its datetime default CURRENT_TIMESTAMP, PRIMARY KEY(day, domain, fetcher))",
    "CREATE TABLE reports(r_id INTEGER PRIMARY KEY ASC, day, domain, uniqid, tlsrptrecord, report, its datetime default CURRENT_TIMESTAMP) ",
    "CREATE TABLE destinations(destination, d_r_id INTEGER, retries, status, nexttry, its datetime default CURRENT_TIMESTAMP, PRIMARY KEY(destination, d_r_id), FOREIGN KEY(d_r_id) REFERENCES reports(r_id))",
    "CREATE TABLE dbversion(version, installdate, purpose)",
    "INSERT INTO dbversion(version, installdate, purpose)  VALUES(1,strftime('%Y-%m-%d %H-%M-%f','now'),'TLSRPT-Reportd-DB-devel-2024-10-28')",
];

/// An index upstream lacks: each new report counts its day's and domain's
/// reports, which without it scans the whole table (quadratic time, 30 s
/// for 10 000 domains). Upstream's queries and checks ignore it.
const REPORTS_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS mailtls_reports_day_domain ON reports(day, domain)";

/// Upstream's wait for a lock held by another writer (Python's default).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
    fn status(self) -> Option<&'static str> {
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

/// The open reportd database.
pub struct ReportdDb {
    conn: Connection,
}

impl ReportdDb {
    /// Opens the database at `path`, creating it with upstream's schema
    /// when the file is new or empty. A database of another program (another
    /// purpose, or tables without `dbversion`) is an error and is left as
    /// it is; so is a read-only file, found now rather than at the first
    /// write hours later.
    pub fn open(path: &Path) -> Result<ReportdDb> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if conn.is_readonly(MAIN_DB)? {
            return Err(DbError::ReadOnly);
        }
        let tx = conn.transaction()?;
        let has_dbversion: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type='table' AND name='dbversion'",
            [],
            |row| row.get(0),
        )?;
        if has_dbversion {
            let row: Option<(i64, String)> = tx
                .query_row("SELECT version, purpose FROM dbversion", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            match row {
                Some((_, purpose)) if purpose != PURPOSE => {
                    return Err(DbError::ForeignPurpose { found: purpose })
                }
                Some((SCHEMA_VERSION, _)) => {}
                Some((version, _)) => return Err(DbError::WrongVersion(version)),
                None => return Err(DbError::ForeignTables),
            }
        } else {
            let tables: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
            if tables > 0 {
                return Err(DbError::ForeignTables);
            }
            for statement in DDL {
                tx.execute(statement, [])?;
            }
        }
        tx.execute(REPORTS_INDEX, [])?;
        tx.commit()?;
        Ok(ReportdDb { conn })
    }

    /// Opens an existing database for `tlsrptctl`: read-only unless
    /// `write` (re-sending a report), never creating one, and only a
    /// reportd database.
    pub fn open_existing(path: &Path, write: bool) -> Result<ReportdDb> {
        let flags = if write {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn =
            Connection::open_with_flags(path, flags | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let row: Option<(i64, String)> = conn
            .query_row("SELECT version, purpose FROM dbversion", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
            .map_err(|_| DbError::ForeignTables)?;
        match row {
            Some((_, purpose)) if purpose != PURPOSE => {
                Err(DbError::ForeignPurpose { found: purpose })
            }
            Some((SCHEMA_VERSION, _)) => Ok(ReportdDb { conn }),
            Some((version, _)) => Err(DbError::WrongVersion(version)),
            None => Err(DbError::ForeignTables),
        }
    }

    /// Creates the fetch jobs of `day`, one per configured fetcher command
    /// (numbered from 1, due at once), unless the day has jobs already.
    /// Returns whether it created them.
    pub fn create_fetch_jobs(
        &mut self,
        day: Day,
        fetchers: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let tx = self.conn.savepoint()?;
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM fetchjobs WHERE day=?",
            [day.to_string()],
            |row| row.get(0),
        )?;
        if exists {
            return Ok(false);
        }
        for (index, fetcher) in (1i64..).zip(fetchers) {
            tx.execute(
                "INSERT INTO fetchjobs (day, fetcherindex, fetcher, retries, status, nexttry) \
                 VALUES (?,?,?,0,NULL,?)",
                params![day.to_string(), index, fetcher, pytime::timestamp(now)],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Fetch jobs without a result whose next try is before `now`.
    pub fn due_fetch_jobs(&self, now: DateTime<Utc>) -> Result<Vec<FetchJob>> {
        let mut stmt = self.conn.prepare(
            "SELECT day, fetcherindex, fetcher, retries FROM fetchjobs \
             WHERE status IS NULL AND nexttry<? ORDER BY day, fetcherindex",
        )?;
        let rows = stmt.query_map([pytime::timestamp(now)], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
        rows.map(|row| {
            let (day, fetcher_index, fetcher, retries): (String, _, _, _) = row?;
            Ok(FetchJob {
                day: parse_day(day)?,
                fetcher_index,
                fetcher,
                retries,
            })
        })
        .collect()
    }

    /// Stores the domain list a fetch job produced and marks the job done,
    /// all in one transaction: a list is stored completely or not at all.
    /// A domain already stored for this fetcher is kept as it is (upstream
    /// logs and skips it, too). Returns the number of new domains.
    pub fn store_domain_list(
        &mut self,
        job: &FetchJob,
        domains: &[String],
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let rows = domains.iter().map(|domain| (domain.as_str(), None));
        self.store_fetched(job, rows, now)
    }

    /// Stores what a fetch job produced, each domain with its details when
    /// they came along (`fetched`) or without (to be fetched), and marks
    /// the job done, in one transaction.
    fn store_fetched<'a>(
        &mut self,
        job: &FetchJob,
        rows: impl Iterator<Item = (&'a str, Option<&'a str>)>,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let tx = self.conn.savepoint()?;
        let mut added = 0;
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO reportdata \
                 (day, domain, data, fetcherindex, fetcher, retries, status, nexttry) \
                 VALUES (?1,?2,?3,?4,?5,0,CASE WHEN ?3 IS NULL THEN NULL ELSE 'fetched' END,?6)",
            )?;
            for (domain, data) in rows {
                added += insert.execute(params![
                    job.day.to_string(),
                    domain,
                    data,
                    job.fetcher_index,
                    job.fetcher,
                    pytime::timestamp(now)
                ])?;
            }
        }
        set_fetch_job_status(&tx, job, "ok")?;
        tx.commit()?;
        Ok(added)
    }

    /// The fetch job failed and is tried again at `at`.
    pub fn fetch_job_retry_at(&self, job: &FetchJob, at: DateTime<Utc>) -> Result<()> {
        self.conn.execute(
            "UPDATE fetchjobs SET retries=retries+1, nexttry=? WHERE day=? AND fetcherindex=?",
            params![
                pytime::timestamp(at),
                job.day.to_string(),
                job.fetcher_index
            ],
        )?;
        Ok(())
    }

    /// The fetch job has used up its retries.
    pub fn fetch_job_timed_out(&self, job: &FetchJob) -> Result<()> {
        set_fetch_job_status(&self.conn, job, "timedout")
    }

    /// Domains whose details are still missing and due, on days whose fetch
    /// jobs have all ended (as upstream: a day's details are fetched only
    /// once every fetcher's domain list is in).
    pub fn due_details(&self, now: DateTime<Utc>) -> Result<Vec<DetailsJob>> {
        let mut stmt = self.conn.prepare(
            "SELECT day, domain, fetcherindex, fetcher, retries FROM reportdata \
             WHERE data IS NULL AND status IS NULL AND nexttry<? \
             AND day NOT IN (SELECT day FROM fetchjobs WHERE status IS NULL) \
             ORDER BY day, domain, fetcherindex",
        )?;
        let rows = stmt.query_map([pytime::timestamp(now)], |row| {
            <(String, String, i64, String, i64)>::try_from(row)
        })?;
        rows.map(|row| {
            let (day, domain, fetcher_index, fetcher, retries) = row?;
            Ok(DetailsJob {
                day: parse_day(day)?,
                domain,
                fetcher_index,
                fetcher,
                retries,
            })
        })
        .collect()
    }

    /// Stores a domain's details (the `policies` object of the fetcher's
    /// answer, as JSON text) and marks them fetched.
    pub fn store_details(&self, job: &DetailsJob, policies_json: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE reportdata SET data=?, status='fetched' \
             WHERE day=? AND fetcherindex=? AND domain=?",
            params![
                policies_json,
                job.day.to_string(),
                job.fetcher_index,
                job.domain
            ],
        )?;
        Ok(())
    }

    /// The details fetch failed and is tried again at `at`.
    pub fn details_retry_at(&self, job: &DetailsJob, at: DateTime<Utc>) -> Result<()> {
        self.conn.execute(
            "UPDATE reportdata SET retries=retries+1, nexttry=? \
             WHERE day=? AND fetcherindex=? AND domain=?",
            params![
                pytime::timestamp(at),
                job.day.to_string(),
                job.fetcher_index,
                job.domain
            ],
        )?;
        Ok(())
    }

    /// The details fetch has used up its retries; the domain's report is
    /// made from the other fetchers' data.
    pub fn details_timed_out(&self, job: &DetailsJob) -> Result<()> {
        self.conn.execute(
            "UPDATE reportdata SET status='timedout' WHERE day=? AND fetcherindex=? AND domain=?",
            params![job.day.to_string(), job.fetcher_index, job.domain],
        )?;
        Ok(())
    }

    /// The (day, domain) pairs with some fetched data, none still pending,
    /// every fetch job of the day ended, and no report yet. (Upstream needs
    /// no fetch job condition: it fetches details only after all lists are
    /// in. A bulk answer brings details with the list, and another fetcher
    /// may still add to the same domain.)
    pub fn ready_for_report(&self) -> Result<Vec<(Day, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT day, domain FROM reportdata WHERE status='fetched' \
             AND day NOT IN (SELECT day FROM fetchjobs WHERE status IS NULL) \
             AND NOT (day, domain) IN (SELECT day, domain FROM reportdata WHERE status IS NULL) \
             AND NOT (day, domain) IN (SELECT day, domain FROM reports) \
             ORDER BY day, domain",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.map(|row| {
            let (day, domain): (String, String) = row?;
            Ok((parse_day(day)?, domain))
        })
        .collect()
    }

    /// The domains with fetched data on `day`.
    pub fn fetched_domains(&self, day: Day) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT domain FROM reportdata WHERE day=? AND data IS NOT NULL ORDER BY domain",
        )?;
        let rows = stmt.query_map([day.to_string()], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks a day and domain whose data gave no report (status
    /// `unusable`), so it is not tried again at every loop.
    pub fn mark_unreportable(&self, day: Day, domain: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE reportdata SET status='unusable' WHERE day=? AND domain=? AND status='fetched'",
            params![day.to_string(), domain],
        )?;
        Ok(())
    }

    /// The fetched details (`policies` JSON texts) of one day and domain,
    /// one per fetcher that delivered them, in fetcher order.
    pub fn details_of(&self, day: Day, domain: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT data FROM reportdata WHERE day=? AND domain=? AND data IS NOT NULL \
             ORDER BY fetcherindex",
        )?;
        let rows = stmt.query_map(params![day.to_string(), domain], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every fetched detail (`policies` JSON text) of `day`, as (domain,
    /// text), in domain and fetcher order: the dashboard's view of a
    /// completed day, summed over every fetcher (every MTA).
    pub fn details_of_day(&self, day: Day) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT domain, data FROM reportdata WHERE day=? AND data IS NOT NULL \
             ORDER BY domain, fetcherindex",
        )?;
        let rows = stmt.query_map([day.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The days with fetched details, newest first. A stored day that is
    /// no day is an error ([`DbError::BadDay`]).
    pub fn days_with_details(&self) -> Result<Vec<Day>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT day FROM reportdata WHERE data IS NOT NULL ORDER BY day DESC",
        )?;
        let rows = stmt.query_map([], |row| row.get::<_, Option<String>>(0))?;
        let days: Vec<Option<String>> = rows.collect::<rusqlite::Result<_>>()?;
        days.into_iter()
            .flatten()
            .map(|text| Day::parse(&text).map_err(|_| DbError::BadDay(text)))
            .collect()
    }

    /// Stores a report and its destinations, each with the time of its
    /// first delivery, in one transaction. `render` gets the report's
    /// number among the reports of its day and domain (from 1; it is part
    /// of the report-id) and returns the report's JSON text. Returns the
    /// report's `r_id`. The `withheld` destinations are stored with their
    /// reason as status, so that they are shown and never delivered.
    pub fn insert_report(
        &mut self,
        day: Day,
        domain: &str,
        tlsrptrecord: &str,
        render: impl FnOnce(i64) -> String,
        destinations: &[(String, DateTime<Utc>)],
        withheld: &[Withheld],
    ) -> Result<i64> {
        let tx = self.conn.savepoint()?;
        let uniqid: i64 = tx.query_row(
            "SELECT COUNT(*)+1 FROM reports WHERE day=? AND domain=?",
            params![day.to_string(), domain],
            |row| row.get(0),
        )?;
        tx.execute(
            "INSERT INTO reports (day, domain, uniqid, tlsrptrecord, report) VALUES(?,?,?,?,?)",
            params![
                day.to_string(),
                domain,
                uniqid,
                tlsrptrecord,
                render(uniqid)
            ],
        )?;
        let r_id = tx.last_insert_rowid();
        for (destination, first_try) in destinations {
            tx.execute(
                "INSERT OR IGNORE INTO destinations (destination, d_r_id, retries, status, nexttry) \
                 VALUES(?,?,0,NULL,?)",
                params![destination, r_id, pytime::timestamp(*first_try)],
            )?;
        }
        for withheld in withheld {
            tx.execute(
                "INSERT OR IGNORE INTO destinations (destination, d_r_id, retries, status, nexttry) \
                 VALUES(?,?,0,?,NULL)",
                params![withheld.destination, r_id, withheld.reason.status()],
            )?;
        }
        tx.commit()?;
        Ok(r_id)
    }

    /// Deliveries without a result whose next try is before `now`.
    pub fn due_deliveries(&self, now: DateTime<Utc>) -> Result<Vec<Delivery>> {
        self.deliveries(
            "destinations.status IS NULL AND nexttry<?",
            [pytime::timestamp(now)],
        )
    }

    /// Deliveries that were started and never recorded as ended: the
    /// daemon stopped during the attempt, which may or may not have
    /// reached the destination.
    pub fn interrupted_deliveries(&self) -> Result<Vec<Delivery>> {
        self.deliveries("destinations.status='sending'", [])
    }

    fn deliveries(&self, condition: &str, args: impl rusqlite::Params) -> Result<Vec<Delivery>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT destination, d_r_id, uniqid, report, domain, day, destinations.retries, \
             destinations.its FROM destinations JOIN reports ON r_id=d_r_id WHERE {condition} \
             ORDER BY nexttry, d_r_id, destination"
        ))?;
        let rows = stmt.query_map(args, |row| {
            <(
                String,
                i64,
                i64,
                String,
                String,
                String,
                i64,
                Option<String>,
            )>::try_from(row)
        })?;
        rows.map(|row| {
            let (destination, r_id, uniqid, report, domain, day, retries, created) = row?;
            Ok(Delivery {
                destination,
                r_id,
                uniqid,
                report,
                domain,
                day: parse_day(day)?,
                retries,
                created: created.as_deref().and_then(parse_sqlite_timestamp),
            })
        })
        .collect()
    }

    /// Records, before the attempt, that a delivery is starting at `now`.
    pub fn delivery_started(&self, delivery: &Delivery, now: DateTime<Utc>) -> Result<()> {
        self.conn.execute(
            "UPDATE destinations SET status='sending', nexttry=? WHERE destination=? AND d_r_id=?",
            params![pytime::timestamp(now), delivery.destination, delivery.r_id],
        )?;
        Ok(())
    }

    /// Records how a started delivery ended.
    pub fn delivery_finished(&self, delivery: &Delivery, outcome: DeliveryOutcome) -> Result<()> {
        let changed = match outcome {
            DeliveryOutcome::RetryAt(at) => self.conn.execute(
                "UPDATE destinations SET status=NULL, retries=retries+1, nexttry=? \
                 WHERE destination=? AND d_r_id=? AND status='sending'",
                params![pytime::timestamp(at), delivery.destination, delivery.r_id],
            )?,
            _ => self.conn.execute(
                "UPDATE destinations SET status=? WHERE destination=? AND d_r_id=? AND status='sending'",
                params![outcome.status(), delivery.destination, delivery.r_id],
            )?,
        };
        if changed == 0 {
            return Err(DbError::NotSending {
                destination: delivery.destination.clone(),
                r_id: delivery.r_id,
            });
        }
        Ok(())
    }

    /// Deletes everything about days more than `keep_days` days before
    /// `now`, with upstream's condition (`julianday(now) - julianday(day) >
    /// keep_days`, so a day goes a fraction of a day after it is exactly
    /// `keep_days` old).
    pub fn clean_up(&mut self, now: DateTime<Utc>, keep_days: i64) -> Result<CleanedUp> {
        let now = pytime::timestamp(now);
        let tx = self.conn.savepoint()?;
        let old = "julianday(?1)-julianday(day)>?2";
        let cleaned = CleanedUp {
            fetchjobs: tx.execute(&format!("DELETE FROM fetchjobs WHERE {old}"), params![now, keep_days])?,
            reportdata: tx.execute(&format!("DELETE FROM reportdata WHERE {old}"), params![now, keep_days])?,
            destinations: tx.execute(
                &format!("DELETE FROM destinations WHERE d_r_id IN (SELECT r_id FROM reports WHERE {old})"),
                params![now, keep_days],
            )?,
            reports: tx.execute(&format!("DELETE FROM reports WHERE {old}"), params![now, keep_days])?,
        };
        tx.commit()?;
        Ok(cleaned)
    }

    /// Runs `work` in one transaction: everything it writes is committed
    /// together, or nothing when it fails (one disk sync instead of one per
    /// row, which matters for thousands of reports).
    pub fn in_transaction<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN")?;
        match work(self) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(err) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(err)
            }
        }
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
        let rows = details
            .iter()
            .map(|(domain, data)| (domain.as_str(), Some(data.as_str())));
        self.store_fetched(job, rows, now)
    }

    /// The earliest `nexttry` of all pending work (fetch jobs, details,
    /// deliveries), to know how long the daemon may sleep.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = self.conn.query_row(
            "SELECT min(t) FROM (\
             SELECT min(nexttry) AS t FROM fetchjobs WHERE status IS NULL \
             UNION ALL SELECT min(nexttry) FROM reportdata WHERE data IS NULL AND status IS NULL \
             AND day NOT IN (SELECT day FROM fetchjobs WHERE status IS NULL) \
             UNION ALL SELECT min(nexttry) FROM destinations WHERE status IS NULL)",
            [],
            |row| row.get(0),
        )?;
        Ok(text.as_deref().and_then(pytime::parse_timestamp))
    }

    /// Reports with their destinations, optionally of one day and/or one
    /// domain, in the order they were made.
    pub fn reports(&self, day: Option<Day>, domain: Option<&str>) -> Result<Vec<StoredReport>> {
        let mut stmt = self.conn.prepare(
            "SELECT r_id, day, domain, uniqid, tlsrptrecord, report FROM reports \
             WHERE (?1 IS NULL OR day=?1) AND (?2 IS NULL OR domain=?2) ORDER BY r_id",
        )?;
        let rows = stmt.query_map(
            params![day.map(|day| day.to_string()), domain],
            stored_report,
        )?;
        let mut reports = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        for report in &mut reports {
            report.destinations = self.destinations_of(report.r_id)?;
        }
        Ok(reports)
    }

    /// One report by its `r_id`.
    pub fn report(&self, r_id: i64) -> Result<Option<StoredReport>> {
        let mut report = self
            .conn
            .query_row(
                "SELECT r_id, day, domain, uniqid, tlsrptrecord, report FROM reports WHERE r_id=?",
                [r_id],
                stored_report,
            )
            .optional()?;
        if let Some(report) = &mut report {
            report.destinations = self.destinations_of(report.r_id)?;
        }
        Ok(report)
    }

    fn destinations_of(&self, r_id: i64) -> Result<Vec<DestinationState>> {
        let mut stmt = self.conn.prepare(
            "SELECT destination, status, retries, nexttry FROM destinations \
             WHERE d_r_id=? ORDER BY destination",
        )?;
        let rows = stmt.query_map([r_id], |row| {
            Ok(DestinationState {
                destination: row.get(0)?,
                status: row.get(1)?,
                retries: row.get(2)?,
                nexttry: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Queues report `r_id` again for all its destinations, or for one:
    /// due at `now`, with a fresh retry count. A delivery in progress is
    /// left alone, and a destination the amplification limits withheld is
    /// queued only when it is named. Returns the destinations queued.
    pub fn resend(
        &self,
        r_id: i64,
        destination: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "UPDATE destinations SET status=NULL, retries=0, nexttry=?1 \
             WHERE d_r_id=?2 AND (?3 IS NULL OR destination=?3) \
             AND (status IS NULL OR status<>'sending') \
             AND (?3 IS NOT NULL OR status IS NULL OR status NOT LIKE 'withheld:%') \
             RETURNING destination",
        )?;
        let rows = stmt.query_map(params![pytime::timestamp(now), r_id, destination], |row| {
            row.get(0)
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rows per day and status of the three tables `tlsrptctl status`
    /// shows. (Upstream's queries lack a GROUP BY and print one row per
    /// table with an arbitrary day and status and the table's total.)
    pub fn status(&self) -> Result<Status> {
        let counts = |sql: &str| -> Result<Vec<StatusCount>> {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt.query_map([], |row| {
                Ok(StatusCount {
                    day: row.get(0)?,
                    status: row.get(1)?,
                    count: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        Ok(Status {
            fetchjobs: counts(
                "SELECT day, status, count(*) FROM fetchjobs GROUP BY day, status ORDER BY day, status",
            )?,
            reportdata: counts(
                "SELECT day, status, count(*) FROM reportdata GROUP BY day, status ORDER BY day, status",
            )?,
            destinations: counts(
                "SELECT reports.day, destinations.status, count(*) FROM destinations \
                 LEFT JOIN reports ON destinations.d_r_id=reports.r_id \
                 GROUP BY reports.day, destinations.status ORDER BY reports.day, destinations.status",
            )?,
        })
    }
}

/// A `reports` row (`r_id, day, domain, uniqid, tlsrptrecord, report`),
/// its destinations still to be read.
fn stored_report(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredReport> {
    Ok(StoredReport {
        r_id: row.get(0)?,
        day: row.get(1)?,
        domain: row.get(2)?,
        uniqid: row.get(3)?,
        tlsrptrecord: row.get(4)?,
        report: row.get(5)?,
        destinations: Vec::new(),
    })
}

fn set_fetch_job_status(conn: &Connection, job: &FetchJob, status: &str) -> Result<()> {
    conn.execute(
        "UPDATE fetchjobs SET status=? WHERE day=? AND fetcherindex=?",
        params![status, job.day.to_string(), job.fetcher_index],
    )?;
    Ok(())
}

/// SQLite's `CURRENT_TIMESTAMP` form, `2026-11-22 00:49:28` (UTC).
fn parse_sqlite_timestamp(text: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

fn parse_day(text: String) -> Result<Day> {
    Day::parse(&text).map_err(|_| DbError::BadDay(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::WithheldReason;
    use chrono::TimeZone;

    fn python(code: &str, db: &Path) -> String {
        crate::python(code, &[db])
    }

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    fn day(d: u32) -> Day {
        Day::from_ymd(2026, 11, d)
    }

    fn fetchers() -> Vec<String> {
        vec!["fetch-a".into(), "ssh b tlsrpt-fetcher".into()]
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, ReportdDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reportd.sqlite");
        let db = ReportdDb::open(&path).unwrap();
        (dir, path, db)
    }

    /// A day whose fetch jobs both delivered their domain lists.
    /// The two fetchers' jobs of day 21, the first one's domain list in.
    fn with_first_domain_list(db: &mut ReportdDb) -> Vec<FetchJob> {
        db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap();
        let jobs = db.due_fetch_jobs(t(0, 1)).unwrap();
        db.store_domain_list(&jobs[0], &strings(&["a.example", "b.example"]), t(0, 1))
            .unwrap();
        jobs
    }

    fn with_domain_lists(db: &mut ReportdDb) -> Vec<FetchJob> {
        let jobs = with_first_domain_list(db);
        db.store_domain_list(&jobs[1], &strings(&["b.example"]), t(0, 1))
            .unwrap();
        jobs
    }

    #[test]
    fn schema_is_upstreams_statement_for_statement() {
        let (_dir, ours, _db) = fresh();
        let theirs = ours.with_file_name("upstream.sqlite");
        let dump = "import sqlite3, sys\n\
            c = sqlite3.connect(sys.argv[1])\n\
            print(c.execute(\"SELECT group_concat(sql, ';') FROM sqlite_master WHERE name NOT LIKE 'mailtls_%'\").fetchone()[0])\n\
            print(c.execute('SELECT version, purpose FROM dbversion').fetchall())";
        python(
            "import sqlite3, sys, types\n\
             from tlsrpt_reporter.tlsrpt import TLSRPTReportd as R\n\
             c = sqlite3.connect(sys.argv[1])\n\
             for s in R._ddl(types.SimpleNamespace(_db_purpose=lambda: R._db_purpose(None))):\n    c.execute(s)\n\
             c.commit()",
            &theirs,
        );
        assert_eq!(python(dump, &ours), python(dump, &theirs));
        // And reopening the upstream-made file is fine.
        ReportdDb::open(&theirs).unwrap();
    }

    #[test]
    fn foreign_databases_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("collectd", "CREATE TABLE dbversion(version, installdate, purpose); INSERT INTO dbversion VALUES(1, 'x', 'TLSRPT-Collectd-DB-devel-2024-10-28');"),
            ("other", "CREATE TABLE notes(text);"),
            ("newer", "CREATE TABLE dbversion(version, installdate, purpose); INSERT INTO dbversion VALUES(2, 'x', 'TLSRPT-Reportd-DB-devel-2024-10-28');"),
            ("emptyversion", "CREATE TABLE dbversion(version, installdate, purpose);"),
        ];
        for (name, sql) in cases {
            let path = dir.path().join(name);
            Connection::open(&path).unwrap().execute_batch(sql).unwrap();
            let before = std::fs::read(&path).unwrap();
            let err = ReportdDb::open(&path).err().expect(name);
            match (name, err) {
                ("collectd", DbError::ForeignPurpose { found }) => {
                    assert_eq!(found, "TLSRPT-Collectd-DB-devel-2024-10-28")
                }
                ("other" | "emptyversion", DbError::ForeignTables) => {}
                ("newer", DbError::WrongVersion(2)) => {}
                (name, err) => panic!("{name}: {err}"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), before, "{name}");
        }
    }

    #[test]
    fn fetch_jobs_are_created_once_per_day_and_end_ok_retried_or_timed_out() {
        let (_dir, _path, mut db) = fresh();
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

    #[test]
    fn a_domain_list_is_stored_completely_or_not_at_all() {
        let (_dir, _path, mut db) = fresh();
        db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap();
        let job = db.due_fetch_jobs(t(0, 1)).unwrap().remove(0);
        db.conn
            .execute_batch(
                "CREATE TRIGGER fail BEFORE INSERT ON reportdata WHEN NEW.domain='bad.example' \
                 BEGIN SELECT RAISE(ABORT, 'injected'); END;",
            )
            .unwrap();
        let list = strings(&["a.example", "bad.example", "c.example"]);
        assert!(db.store_domain_list(&job, &list, t(0, 1)).is_err());
        let rows: i64 = db
            .conn
            .query_row("SELECT count(*) FROM reportdata", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        assert_eq!(
            db.due_fetch_jobs(t(0, 1)).unwrap().len(),
            2,
            "the job is still open"
        );
        db.conn.execute_batch("DROP TRIGGER fail").unwrap();
        // A repeated domain (a retried list, or a fetcher listing it twice) is kept once.
        assert_eq!(
            db.store_domain_list(&job, &[list.clone(), list].concat(), t(0, 1))
                .unwrap(),
            3
        );
    }

    #[test]
    fn details_are_due_once_all_domain_lists_are_in_and_retried_or_given_up() {
        let (_dir, _path, mut db) = fresh();
        let jobs = with_first_domain_list(&mut db);
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
    }

    #[test]
    fn reports_are_numbered_per_day_and_domain_and_no_longer_ready() {
        let (_dir, _path, mut db) = fresh();
        let jobs = with_domain_lists(&mut db);
        for job in db.due_details(t(0, 2)).unwrap() {
            db.store_details(&job, "{}").unwrap();
        }
        assert_eq!(jobs.len(), 2);
        let mut seen = Vec::new();
        let first = db
            .insert_report(
                day(21),
                "b.example",
                "v=TLSRPTv1; rua=mailto:x@b.example",
                |n| {
                    seen.push(n);
                    format!("report {n}")
                },
                &[("mailto:x@b.example".into(), t(3, 0))],
                &[],
            )
            .unwrap();
        let second = db
            .insert_report(
                day(21),
                "b.example",
                "v=TLSRPTv1; rua=https://b.example/r",
                |n| {
                    seen.push(n);
                    format!("report {n}")
                },
                &[("https://b.example/r".into(), t(4, 0))],
                &[],
            )
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(seen, [1, 2]);
        assert_eq!(
            db.ready_for_report().unwrap(),
            [(day(21), "a.example".to_string())]
        );
        let record: String = db
            .conn
            .query_row(
                "SELECT tlsrptrecord FROM reports WHERE r_id=?",
                [second],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(record, "v=TLSRPTv1; rua=https://b.example/r");
    }

    /// A report of `domain` on day 21 ("report N"), for one destination
    /// first tried at 03:00, with `withheld` ones.
    fn report_to(
        db: &mut ReportdDb,
        domain: &str,
        destination: &str,
        withheld: &[Withheld],
    ) -> i64 {
        db.insert_report(
            day(21),
            domain,
            "rec",
            |n| format!("report {n}"),
            &[(destination.into(), t(3, 0))],
            withheld,
        )
        .unwrap()
    }

    fn one_delivery(db: &mut ReportdDb) -> Delivery {
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
                report: "report 1".into(),
                domain: "a.example".into(),
                day: day(21),
                retries: 0,
                created: Some(created),
            }]
        );
        due.into_iter().next().unwrap()
    }

    #[test]
    fn withheld_destinations_are_shown_never_delivered_and_resent_only_by_name() {
        let (_dir, _path, mut db) = fresh();
        let withheld = Withheld {
            destination: "mailto:v5@evil.example".into(),
            reason: WithheldReason::DestinationsPerRecord,
        };
        let r_id = report_to(
            &mut db,
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

    #[test]
    fn a_delivery_is_recorded_before_and_after_each_attempt() {
        let (_dir, _path, mut db) = fresh();
        let delivery = one_delivery(&mut db);
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
            std::slice::from_ref(&delivery)
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
            db.conn
                .execute("UPDATE destinations SET status=NULL", [])
                .unwrap();
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

    #[test]
    fn clean_up_keeps_days_until_more_than_keep_days_old() {
        let (_dir, _path, mut db) = fresh();
        with_domain_lists(&mut db);
        one_delivery(&mut db);
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

    /// Upstream's own queries (tlsrpt.py 0.6.0, as `sqlite3` runs them with
    /// its datetime adapter) see our rows as upstream's rows.
    #[test]
    fn upstreams_queries_read_our_rows() {
        let (_dir, path, mut db) = fresh();
        let jobs = with_first_domain_list(&mut db);
        db.fetch_job_retry_at(
            &jobs[1],
            Utc.with_ymd_and_hms(2026, 11, 22, 0, 5, 0).unwrap()
                + chrono::Duration::microseconds(250_000),
        )
        .unwrap();
        let out = python(
            "import sqlite3, sys, datetime\n\
             c = sqlite3.connect(sys.argv[1])\n\
             def at(h, m, s=0, us=0): return datetime.datetime(2026, 11, 22, h, m, s, us, tzinfo=datetime.timezone.utc)\n\
             q = lambda sql, *a: print(c.execute(sql, a).fetchall())\n\
             q('SELECT * FROM fetchjobs WHERE day=?', datetime.date(2026, 11, 21))\n\
             for now in (at(0, 5), at(0, 5, 0, 250001)):\n    q('SELECT day, fetcherindex, fetcher, retries FROM fetchjobs WHERE status IS NULL AND nexttry<?', now)",
            &path,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with(
                "[('2026-11-21', 1, 'fetch-a', 0, 'ok', '2026-11-22 00:00:00+00:00', '"
            ),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "[]");
        assert_eq!(lines[2], "[('2026-11-21', 2, 'ssh b tlsrpt-fetcher', 1)]");

        db.fetch_job_timed_out(&jobs[1]).unwrap();
        let due = db.due_details(t(0, 2)).unwrap();
        db.store_details(&due[0], r#"{"rec": {}}"#).unwrap();
        let out = python(
            "import sqlite3, sys, datetime\n\
             c = sqlite3.connect(sys.argv[1])\n\
             now = datetime.datetime(2026, 11, 22, 0, 2, tzinfo=datetime.timezone.utc)\n\
             q = lambda sql, *a: print(c.execute(sql, a).fetchall())\n\
             q('SELECT day, fetcher, fetcherindex, domain FROM reportdata WHERE data IS NULL AND nexttry<? AND day NOT IN (SELECT day FROM fetchjobs WHERE status IS NULL)', now)\n\
             q(\"SELECT DISTINCT day, domain FROM reportdata WHERE status='fetched' AND NOT (day, domain) IN (SELECT day, domain FROM reportdata WHERE status IS NULL) AND NOT (day, domain) IN (SELECT day, domain FROM reports)\")",
            &path,
        );
        assert_eq!(
            out,
            "[('2026-11-21', 'fetch-a', 1, 'b.example')]\n[('2026-11-21', 'a.example')]\n"
        );

        let delivery = one_delivery(&mut db);
        let sends = "import sqlite3, sys, datetime\n\
             c = sqlite3.connect(sys.argv[1])\n\
             now = datetime.datetime(2026, 11, 22, 3, 0, 0, 1, tzinfo=datetime.timezone.utc)\n\
             print(c.execute('SELECT destination, d_r_id, uniqid, report, domain, day, retries FROM destinations LEFT JOIN reports on r_id=d_r_id WHERE destinations.status IS NULL and nexttry<?', (now,)).fetchall())\n\
             for q in ('SELECT day, status, count(*) AS cnt FROM fetchjobs', 'SELECT reports.day, destinations.status, count(*) AS cnt FROM destinations LEFT JOIN reports ON destinations.d_r_id=reports.r_id'):\n    print(c.execute(q).fetchall())";
        let out = python(sends, &path);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "[('mailto:r@a.example', {}, 1, 'report 1', 'a.example', '2026-11-21', 0)]",
                delivery.r_id
            )
        );
        assert_eq!(lines[2], "[('2026-11-21', None, 1)]");
        // A started attempt is invisible to upstream's delivery query.
        db.delivery_started(&delivery, t(3, 0)).unwrap();
        assert!(python(sends, &path).starts_with("[]\n"));
    }

    /// Rows upstream wrote (through Python's adapters) are due for us at
    /// the same moment.
    #[test]
    fn we_read_upstreams_rows() {
        let (_dir, path, db) = fresh();
        python(
            "import sqlite3, sys, datetime\n\
             c = sqlite3.connect(sys.argv[1])\n\
             now = datetime.datetime(2026, 11, 22, 0, 0, 0, 500000, tzinfo=datetime.timezone.utc)\n\
             c.execute('INSERT INTO fetchjobs (day, fetcherindex, fetcher, retries, status, nexttry) VALUES (?,?,?,0,NULL,?)', (datetime.date(2026, 11, 21), 1, 'fetch-a', now))\n\
             c.commit()",
            &path,
        );
        assert!(db.due_fetch_jobs(t(0, 0)).unwrap().is_empty());
        assert!(db
            .due_fetch_jobs(t(0, 0) + chrono::Duration::microseconds(500_000))
            .unwrap()
            .is_empty());
        let due = db
            .due_fetch_jobs(t(0, 0) + chrono::Duration::microseconds(500_001))
            .unwrap();
        assert_eq!(due[0].day, day(21));
    }
}
