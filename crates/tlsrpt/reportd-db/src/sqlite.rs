//! The reportd state in the same SQLite file upstream's tlsrpt-reportd
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

use super::{
    parse_day, CleanedUp, DbError, Delivery, DeliveryOutcome, DestinationState, DetailsJob,
    FetchJob, NewReport, ReportdStore, Result, Status, StatusCount, StoredReport,
};
use crate::pytime;

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

/// The reportd state in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it with upstream's schema
    /// when the file is new or empty. A database of another program (another
    /// purpose, or tables without `dbversion`) is an error and is left as
    /// it is; so is a read-only file, found now rather than at the first
    /// write hours later.
    pub fn open(path: &Path) -> Result<SqliteStore> {
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
        Ok(SqliteStore { conn })
    }

    /// Opens an existing database for `tlsrptctl`: read-only unless
    /// `write` (re-sending a report), never creating one, and only a
    /// reportd database.
    pub fn open_existing(path: &Path, write: bool) -> Result<SqliteStore> {
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
            Some((SCHEMA_VERSION, _)) => Ok(SqliteStore { conn }),
            Some((version, _)) => Err(DbError::WrongVersion(version)),
            None => Err(DbError::ForeignTables),
        }
    }

    /// The deliveries that meet `condition`, each with its `nexttry`.
    fn deliveries(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(Delivery, Option<DateTime<Utc>>)>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT destination, d_r_id, uniqid, report, domain, day, destinations.retries, \
             destinations.its, nexttry FROM destinations JOIN reports ON r_id=d_r_id WHERE {condition} \
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
                Option<String>,
            )>::try_from(row)
        })?;
        rows.map(|row| {
            let (destination, r_id, uniqid, report, domain, day, retries, created, nexttry) = row?;
            let delivery = Delivery {
                destination,
                r_id,
                uniqid,
                report,
                domain,
                day: parse_day(day)?,
                retries,
                created: created.as_deref().and_then(parse_sqlite_timestamp),
            };
            Ok((
                delivery,
                nexttry.as_deref().and_then(pytime::parse_timestamp),
            ))
        })
        .collect()
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
}

impl ReportdStore for SqliteStore {
    fn create_fetch_jobs(
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

    fn due_fetch_jobs(&mut self, now: DateTime<Utc>) -> Result<Vec<FetchJob>> {
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

    fn store_fetched(
        &mut self,
        job: &FetchJob,
        rows: &mut dyn Iterator<Item = (&str, Option<&str>)>,
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

    fn fetch_job_retry_at(&mut self, job: &FetchJob, at: DateTime<Utc>) -> Result<()> {
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

    fn fetch_job_timed_out(&mut self, job: &FetchJob) -> Result<()> {
        set_fetch_job_status(&self.conn, job, "timedout")
    }

    fn due_details(&mut self, now: DateTime<Utc>) -> Result<Vec<DetailsJob>> {
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

    fn store_details(&mut self, job: &DetailsJob, policies_json: &str) -> Result<()> {
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

    fn details_retry_at(&mut self, job: &DetailsJob, at: DateTime<Utc>) -> Result<()> {
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

    fn details_timed_out(&mut self, job: &DetailsJob) -> Result<()> {
        self.conn.execute(
            "UPDATE reportdata SET status='timedout' WHERE day=? AND fetcherindex=? AND domain=?",
            params![job.day.to_string(), job.fetcher_index, job.domain],
        )?;
        Ok(())
    }

    fn ready_for_report(&mut self) -> Result<Vec<(Day, String)>> {
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

    fn fetched_domains(&mut self, day: Day) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT domain FROM reportdata WHERE day=? AND data IS NOT NULL ORDER BY domain",
        )?;
        let rows = stmt.query_map([day.to_string()], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn mark_unreportable(&mut self, day: Day, domain: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE reportdata SET status='unusable' WHERE day=? AND domain=? AND status='fetched'",
            params![day.to_string(), domain],
        )?;
        Ok(())
    }

    fn details_of(&mut self, day: Day, domain: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT data FROM reportdata WHERE day=? AND domain=? AND data IS NOT NULL \
             ORDER BY fetcherindex",
        )?;
        let rows = stmt.query_map(params![day.to_string(), domain], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn details_of_day(&mut self, day: Day) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT domain, data FROM reportdata WHERE day=? AND data IS NOT NULL \
             ORDER BY domain, fetcherindex",
        )?;
        let rows = stmt.query_map([day.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn days_with_details(&mut self) -> Result<Vec<Day>> {
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

    fn insert_report(&mut self, new: NewReport<'_>) -> Result<i64> {
        let day = new.day.to_string();
        let tx = self.conn.savepoint()?;
        let uniqid: i64 = tx.query_row(
            "SELECT COUNT(*)+1 FROM reports WHERE day=? AND domain=?",
            params![day, new.domain],
            |row| row.get(0),
        )?;
        tx.execute(
            "INSERT INTO reports (day, domain, uniqid, tlsrptrecord, report) VALUES(?,?,?,?,?)",
            params![day, new.domain, uniqid, new.tlsrptrecord, new.report],
        )?;
        let r_id = tx.last_insert_rowid();
        for row in new.destination_rows() {
            tx.execute(
                "INSERT OR IGNORE INTO destinations (destination, d_r_id, retries, status, nexttry) \
                 VALUES(?,?,0,?,?)",
                params![
                    row.destination,
                    r_id,
                    row.status,
                    row.first_try.map(pytime::timestamp)
                ],
            )?;
        }
        tx.commit()?;
        Ok(r_id)
    }

    fn due_deliveries(&mut self, now: DateTime<Utc>) -> Result<Vec<Delivery>> {
        let due = self.deliveries(
            "destinations.status IS NULL AND nexttry<?",
            [pytime::timestamp(now)],
        )?;
        Ok(due.into_iter().map(|(delivery, _)| delivery).collect())
    }

    fn interrupted_deliveries(&mut self) -> Result<Vec<(Delivery, Option<DateTime<Utc>>)>> {
        self.deliveries("destinations.status='sending'", [])
    }

    fn delivery_started(&mut self, delivery: &Delivery, now: DateTime<Utc>) -> Result<()> {
        self.conn.execute(
            "UPDATE destinations SET status='sending', nexttry=? WHERE destination=? AND d_r_id=?",
            params![pytime::timestamp(now), delivery.destination, delivery.r_id],
        )?;
        Ok(())
    }

    fn end_delivery(&mut self, delivery: &Delivery, outcome: DeliveryOutcome) -> Result<bool> {
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
        Ok(changed > 0)
    }

    fn clean_up(&mut self, now: DateTime<Utc>, keep_days: i64) -> Result<CleanedUp> {
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

    fn next_due(&mut self) -> Result<Option<DateTime<Utc>>> {
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

    fn reports(&mut self, day: Option<Day>, domain: Option<&str>) -> Result<Vec<StoredReport>> {
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

    fn report(&mut self, r_id: i64) -> Result<Option<StoredReport>> {
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

    fn resend(
        &mut self,
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

    fn status(&mut self) -> Result<Status> {
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

    fn may_resend(&mut self) -> Result<bool> {
        use nix::unistd::{access, AccessFlags};
        let Some(path) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(false);
        };
        let path = Path::new(path);
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Ok(access(path, AccessFlags::W_OK).is_ok() && access(dir, AccessFlags::W_OK).is_ok())
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn take_lead(&mut self) -> Result<std::result::Result<(), String>> {
        Ok(Ok(()))
    }

    fn begin(&mut self) -> Result<()> {
        Ok(self.conn.execute_batch("BEGIN")?)
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        Ok(self.conn.execute_batch("ROLLBACK")?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{day, fetchers, one_delivery, strings, t, with_first_domain_list};
    use crate::{DbName, ReportdDb};
    use chrono::TimeZone;

    fn python(code: &str, db: &Path) -> String {
        crate::python(code, &[db])
    }

    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, ReportdDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reportd.sqlite");
        let db = ReportdDb::open(&DbName::Sqlite(path.clone())).unwrap();
        (dir, path, db)
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
        SqliteStore::open(&theirs).unwrap();
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
            let err = SqliteStore::open(&path).err().expect(name);
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
    fn a_domain_list_is_stored_completely_or_not_at_all() {
        let (_dir, path, mut db) = fresh();
        db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap();
        let job = db.due_fetch_jobs(t(0, 1)).unwrap().remove(0);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON reportdata WHEN NEW.domain='bad.example' \
                 BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
        let list = strings(&["a.example", "bad.example", "c.example"]);
        assert!(db.store_domain_list(&job, &list, t(0, 1)).is_err());
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM reportdata", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        assert_eq!(
            db.due_fetch_jobs(t(0, 1)).unwrap().len(),
            2,
            "the job is still open"
        );
        conn.execute_batch("DROP TRIGGER fail").unwrap();
        // A repeated domain (a retried list, or a fetcher listing it twice) is kept once.
        assert_eq!(
            db.store_domain_list(&job, &[list.clone(), list].concat(), t(0, 1))
                .unwrap(),
            3
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
                "[('mailto:r@a.example', {}, 1, 'report of a.example', 'a.example', '2026-11-21', 0)]",
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
        let (_dir, path, mut db) = fresh();
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
