//! The reportd state in PostgreSQL, shared by several report daemons: the
//! tables of the SQLite file ([`super::sqlite`]) with SQL types, named
//! `reportd_*`, created and migrated by the daemon (component
//! `tlsrpt_reportd` in `mailtls_schema`).
//!
//! One daemon works at a time: the one whose connection holds the session
//! advisory lock ([`LOCK`]). The others stand by and try to take it every
//! `interval_main_loop`; the server frees it when the active daemon's
//! connection ends, so a daemon that stops or dies (even with SIGKILL) is
//! replaced within one interval. Every write of the active daemon goes
//! through the connection that holds the lock: a daemon that lost its
//! connection has lost the lock too and can write nothing more.

use chrono::{DateTime, NaiveDate, Utc};
use mailtls_common::day::Day;
use tlsrpt_store::postgres::PgUrl;

use mailtls_postgres::postgres::types::ToSql;
use mailtls_postgres::postgres::{Client, Row, Statement};
use mailtls_postgres::Migrations;
use std::collections::HashMap;

use super::{
    CleanedUp, DbError, Delivery, DeliveryOutcome, DestinationState, DetailsJob, FetchJob,
    NewReport, ReportdStore, Result, Status, StatusCount, StoredReport,
};
use crate::pytime;

/// The reportd's tables, version by version.
const MIGRATIONS: Migrations = Migrations {
    component: "tlsrpt_reportd",
    steps: &[(
        1,
        "CREATE TABLE reportd_fetchjobs (
             day date NOT NULL, fetcherindex bigint NOT NULL, fetcher text NOT NULL,
             retries bigint NOT NULL DEFAULT 0, status text, nexttry timestamptz,
             its timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (day, fetcherindex));
         CREATE TABLE reportd_reportdata (
             day date NOT NULL, domain text NOT NULL, data text, fetcher text NOT NULL,
             fetcherindex bigint NOT NULL, retries bigint NOT NULL DEFAULT 0, status text,
             nexttry timestamptz, its timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (day, domain, fetcher));
         CREATE INDEX reportd_reportdata_pending ON reportd_reportdata (day) WHERE status IS NULL;
         CREATE TABLE reportd_reports (
             r_id bigserial PRIMARY KEY, day date NOT NULL, domain text NOT NULL,
             uniqid bigint NOT NULL, tlsrptrecord text, report text NOT NULL,
             its timestamptz NOT NULL DEFAULT now());
         CREATE INDEX reportd_reports_day_domain ON reportd_reports (day, domain);
         CREATE TABLE reportd_destinations (
             destination text NOT NULL, d_r_id bigint NOT NULL REFERENCES reportd_reports (r_id),
             retries bigint NOT NULL DEFAULT 0, status text, nexttry timestamptz,
             its timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (destination, d_r_id));
         CREATE INDEX reportd_destinations_due ON reportd_destinations (nexttry) WHERE status IS NULL;
         CREATE INDEX reportd_destinations_report ON reportd_destinations (d_r_id);",
    )],
};

/// The session advisory lock of the active report daemon, as the two
/// 32-bit keys `pg_try_advisory_lock(int, int)` takes: "mlts" and 1.
pub const LOCK: (i32, i32) = (0x6d6c_7473, 1);

/// A report daemon connected to the shared state, as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportDaemon {
    /// "tlsrpt-reportd on HOST pid N".
    pub name: String,
    /// The address it connects from.
    pub from: String,
    /// It holds the lead.
    pub active: bool,
}

/// The report daemons connected to the state at `url` (for `mailtls
/// check`), by name; it reads the tables' version and nothing else.
/// Another role's connections are visible only to members of
/// `pg_read_all_stats` or that role.
pub fn report_daemons(url: &PgUrl) -> Result<Vec<ReportDaemon>> {
    let mut store = PgStore::connect_existing(url, false)?;
    let (class, id) = LOCK;
    let rows = store.query(
        "SELECT a.application_name, coalesce(host(a.client_addr), 'a local socket'),
                EXISTS (SELECT 1 FROM pg_locks l
                         WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                           AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2)
           FROM pg_stat_activity a
          WHERE a.datname = current_database() AND a.application_name LIKE 'tlsrpt-reportd on %'
          ORDER BY 3 DESC, 1",
        &[&class, &id],
    )?;
    Ok(rows
        .iter()
        .map(|row| ReportDaemon {
            name: row.get(0),
            from: row.get(1),
            active: row.get(2),
        })
        .collect())
}

/// What `tlsrptctl` is told when the tables are missing.
const CREATOR: &str = "start tlsrpt-reportd with this dbname";

/// The reportd state in a PostgreSQL database.
pub struct PgStore {
    url: PgUrl,
    client: Client,
    /// Inside [`ReportdStore::begin`]: atomic steps use savepoints.
    in_transaction: bool,
    /// The statements prepared on this connection, by their text.
    statements: HashMap<String, Statement>,
}

impl PgStore {
    /// Connects for the daemon and creates or migrates the tables. The
    /// connection is named after this process, so that standbys can say
    /// which daemon is active.
    pub fn connect(url: &PgUrl) -> Result<PgStore> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let url = url.with_application_name(&format!(
            "tlsrpt-reportd on {host} pid {}",
            std::process::id()
        ));
        let mut store = PgStore::session(&url)?;
        MIGRATIONS.apply(&mut store.client, &url)?;
        Ok(store)
    }

    /// Connects to existing tables for `tlsrptctl` and the dashboard,
    /// creating nothing; unless `write`, the session cannot write at all.
    pub fn connect_existing(url: &PgUrl, write: bool) -> Result<PgStore> {
        let mut store = PgStore::session(url)?;
        MIGRATIONS.check(&mut store.client, url, CREATOR)?;
        if !write {
            store.batch("SET default_transaction_read_only = on")?;
        }
        Ok(store)
    }

    fn session(url: &PgUrl) -> Result<PgStore> {
        let mut store = PgStore {
            url: url.clone(),
            client: url.connect()?,
            in_transaction: false,
            statements: HashMap::new(),
        };
        // Times as text (tlsrptctl) in UTC, as in the SQLite file.
        store.batch("SET TimeZone = 'UTC'")?;
        Ok(store)
    }

    fn error(&self, source: mailtls_postgres::postgres::Error) -> DbError {
        DbError::Postgres(self.url.error(source))
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(|e| self.error(e))
    }

    /// `sql` prepared once per connection: a statement given as text is
    /// prepared anew each time, one more round trip to the server.
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(|e| self.error(e))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.statement(sql)?;
        self.client
            .execute(&statement, params)
            .map_err(|e| self.error(e))
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.client
            .query(&statement, params)
            .map_err(|e| self.error(e))
    }

    /// Runs `work` atomically: in a transaction of its own, or, inside
    /// [`ReportdStore::begin`], in a savepoint.
    fn atomic<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let (start, keep, undo) = if self.in_transaction {
            (
                "SAVEPOINT reportd_step",
                "RELEASE SAVEPOINT reportd_step",
                "ROLLBACK TO SAVEPOINT reportd_step",
            )
        } else {
            ("BEGIN", "COMMIT", "ROLLBACK")
        };
        self.batch(start)?;
        match work(self) {
            Ok(value) => {
                self.batch(keep)?;
                Ok(value)
            }
            Err(err) => {
                let _ = self.batch(undo);
                Err(err)
            }
        }
    }

    /// The deliveries that meet `condition`, each with its `nexttry`.
    fn deliveries(
        &mut self,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<(Delivery, Option<DateTime<Utc>>)>> {
        let rows = self.query(
            &format!(
                "SELECT destination, d_r_id, uniqid, report, domain, day, d.retries, d.its, nexttry
                   FROM reportd_destinations d JOIN reportd_reports ON r_id = d_r_id
                  WHERE {condition}
                  ORDER BY nexttry, d_r_id, destination COLLATE \"C\""
            ),
            params,
        )?;
        Ok(rows
            .iter()
            .map(|row| {
                let delivery = Delivery {
                    destination: row.get(0),
                    r_id: row.get(1),
                    uniqid: row.get(2),
                    report: row.get(3),
                    domain: row.get(4),
                    day: day_of(row, 5),
                    retries: row.get(6),
                    created: Some(row.get(7)),
                };
                (delivery, row.get(8))
            })
            .collect())
    }

    fn destinations_of(&mut self, r_id: i64) -> Result<Vec<DestinationState>> {
        let rows = self.query(
            "SELECT destination, status, retries, nexttry FROM reportd_destinations
              WHERE d_r_id = $1 ORDER BY destination COLLATE \"C\"",
            &[&r_id],
        )?;
        Ok(rows
            .iter()
            .map(|row| DestinationState {
                destination: row.get(0),
                status: row.get(1),
                retries: row.get(2),
                nexttry: row
                    .get::<_, Option<DateTime<Utc>>>(3)
                    .map(pytime::timestamp),
            })
            .collect())
    }

    fn stored_reports(&mut self, rows: Vec<Row>) -> Result<Vec<StoredReport>> {
        let mut reports: Vec<StoredReport> = rows
            .iter()
            .map(|row| StoredReport {
                r_id: row.get(0),
                day: row.get(1),
                domain: row.get(2),
                uniqid: row.get(3),
                tlsrptrecord: row.get(4),
                report: row.get(5),
                destinations: Vec::new(),
            })
            .collect();
        for report in &mut reports {
            report.destinations = self.destinations_of(report.r_id)?;
        }
        Ok(reports)
    }
}

/// A `date` column as a [`Day`] (every PostgreSQL date a client can store
/// is one).
fn day_of(row: &Row, index: usize) -> Day {
    Day::from(row.get::<_, NaiveDate>(index))
}

/// The first day kept by upstream's age condition (`julianday(now) -
/// julianday(day) > keep_days`: a day goes when its midnight is more than
/// `keep_days` times 86 400 s before `now`), so that the deletions compare
/// `day < $1` along the tables' day indexes instead of computing on every
/// row at every loop.
fn first_day_kept(now: DateTime<Utc>, keep_days: i64) -> NaiveDate {
    let limit = now - chrono::Duration::seconds(keep_days.saturating_mul(86_400));
    let date = limit.date_naive();
    if limit.time() == chrono::NaiveTime::MIN {
        date
    } else {
        date.succ_opt().unwrap_or(date)
    }
}

impl ReportdStore for PgStore {
    fn create_fetch_jobs(
        &mut self,
        day: Day,
        fetchers: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let created = self.execute(
            "INSERT INTO reportd_fetchjobs (day, fetcherindex, fetcher, retries, status, nexttry)
             SELECT $1, i, f, 0, NULL, $3 FROM unnest($2::text[]) WITH ORDINALITY AS u(f, i)
              WHERE NOT EXISTS (SELECT 1 FROM reportd_fetchjobs WHERE day = $1)",
            &[&day.date(), &fetchers, &now],
        )?;
        Ok(created > 0)
    }

    fn due_fetch_jobs(&mut self, now: DateTime<Utc>) -> Result<Vec<FetchJob>> {
        let rows = self.query(
            "SELECT day, fetcherindex, fetcher, retries FROM reportd_fetchjobs
              WHERE status IS NULL AND nexttry < $1 ORDER BY day, fetcherindex",
            &[&now],
        )?;
        Ok(rows
            .iter()
            .map(|row| FetchJob {
                day: day_of(row, 0),
                fetcher_index: row.get(1),
                fetcher: row.get(2),
                retries: row.get(3),
            })
            .collect())
    }

    fn store_fetched(
        &mut self,
        job: &FetchJob,
        rows: &mut dyn Iterator<Item = (&str, Option<&str>)>,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let (domains, data): (Vec<&str>, Vec<Option<&str>>) = rows.unzip();
        self.atomic(|db| {
            // One statement for the whole list (a bulk answer has every
            // domain of the day).
            let added = db.execute(
                "INSERT INTO reportd_reportdata
                     (day, domain, data, fetcherindex, fetcher, retries, status, nexttry)
                 SELECT $1, d, x, $4, $5, 0, CASE WHEN x IS NULL THEN NULL ELSE 'fetched' END, $6
                   FROM unnest($2::text[], $3::text[]) AS u(d, x)
                 ON CONFLICT DO NOTHING",
                &[
                    &job.day.date(),
                    &domains,
                    &data,
                    &job.fetcher_index,
                    &job.fetcher,
                    &now,
                ],
            )?;
            db.execute(
                "UPDATE reportd_fetchjobs SET status = 'ok' WHERE day = $1 AND fetcherindex = $2",
                &[&job.day.date(), &job.fetcher_index],
            )?;
            Ok(usize::try_from(added).unwrap_or(usize::MAX))
        })
    }

    fn fetch_job_retry_at(&mut self, job: &FetchJob, at: DateTime<Utc>) -> Result<()> {
        self.execute(
            "UPDATE reportd_fetchjobs SET retries = retries + 1, nexttry = $1
              WHERE day = $2 AND fetcherindex = $3",
            &[&at, &job.day.date(), &job.fetcher_index],
        )?;
        Ok(())
    }

    fn fetch_job_timed_out(&mut self, job: &FetchJob) -> Result<()> {
        self.execute(
            "UPDATE reportd_fetchjobs SET status = 'timedout' WHERE day = $1 AND fetcherindex = $2",
            &[&job.day.date(), &job.fetcher_index],
        )?;
        Ok(())
    }

    fn due_details(&mut self, now: DateTime<Utc>) -> Result<Vec<DetailsJob>> {
        let rows = self.query(
            "SELECT day, domain, fetcherindex, fetcher, retries FROM reportd_reportdata
              WHERE data IS NULL AND status IS NULL AND nexttry < $1
                AND day NOT IN (SELECT day FROM reportd_fetchjobs WHERE status IS NULL)
              ORDER BY day, domain COLLATE \"C\", fetcherindex",
            &[&now],
        )?;
        Ok(rows
            .iter()
            .map(|row| DetailsJob {
                day: day_of(row, 0),
                domain: row.get(1),
                fetcher_index: row.get(2),
                fetcher: row.get(3),
                retries: row.get(4),
            })
            .collect())
    }

    fn store_details(&mut self, job: &DetailsJob, policies_json: &str) -> Result<()> {
        self.execute(
            "UPDATE reportd_reportdata SET data = $1, status = 'fetched'
              WHERE day = $2 AND fetcherindex = $3 AND domain = $4",
            &[
                &policies_json,
                &job.day.date(),
                &job.fetcher_index,
                &job.domain,
            ],
        )?;
        Ok(())
    }

    fn details_retry_at(&mut self, job: &DetailsJob, at: DateTime<Utc>) -> Result<()> {
        self.execute(
            "UPDATE reportd_reportdata SET retries = retries + 1, nexttry = $1
              WHERE day = $2 AND fetcherindex = $3 AND domain = $4",
            &[&at, &job.day.date(), &job.fetcher_index, &job.domain],
        )?;
        Ok(())
    }

    fn details_timed_out(&mut self, job: &DetailsJob) -> Result<()> {
        self.execute(
            "UPDATE reportd_reportdata SET status = 'timedout'
              WHERE day = $1 AND fetcherindex = $2 AND domain = $3",
            &[&job.day.date(), &job.fetcher_index, &job.domain],
        )?;
        Ok(())
    }

    fn ready_for_report(&mut self) -> Result<Vec<(Day, String)>> {
        let rows = self.query(
            "SELECT DISTINCT day, domain COLLATE \"C\" FROM reportd_reportdata r
              WHERE status = 'fetched'
                AND day NOT IN (SELECT day FROM reportd_fetchjobs WHERE status IS NULL)
                AND NOT EXISTS (SELECT 1 FROM reportd_reportdata p
                                 WHERE p.day = r.day AND p.domain = r.domain AND p.status IS NULL)
                AND NOT EXISTS (SELECT 1 FROM reportd_reports x
                                 WHERE x.day = r.day AND x.domain = r.domain)
              ORDER BY 1, 2",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|row| (day_of(row, 0), row.get(1)))
            .collect())
    }

    fn fetched_domains(&mut self, day: Day) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT DISTINCT domain COLLATE \"C\" FROM reportd_reportdata
              WHERE day = $1 AND data IS NOT NULL ORDER BY 1",
            &[&day.date()],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn mark_unreportable(&mut self, day: Day, domain: &str) -> Result<()> {
        self.execute(
            "UPDATE reportd_reportdata SET status = 'unusable'
              WHERE day = $1 AND domain = $2 AND status = 'fetched'",
            &[&day.date(), &domain],
        )?;
        Ok(())
    }

    fn details_of(&mut self, day: Day, domain: &str) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT data FROM reportd_reportdata
              WHERE day = $1 AND domain = $2 AND data IS NOT NULL ORDER BY fetcherindex",
            &[&day.date(), &domain],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn details_of_each(&mut self, pairs: &[(Day, String)]) -> Result<Vec<Vec<String>>> {
        let days: Vec<NaiveDate> = pairs.iter().map(|(day, _)| day.date()).collect();
        let domains: Vec<&str> = pairs.iter().map(|(_, domain)| domain.as_str()).collect();
        let rows = self.query(
            "SELECT u.i, r.data
               FROM unnest($1::date[], $2::text[]) WITH ORDINALITY AS u(day, domain, i)
               JOIN reportd_reportdata r
                 ON r.day = u.day AND r.domain = u.domain AND r.data IS NOT NULL
              ORDER BY u.i, r.fetcherindex",
            &[&days, &domains],
        )?;
        let mut each = vec![Vec::new(); pairs.len()];
        for row in &rows {
            let index = usize::try_from(row.get::<_, i64>(0) - 1).expect("ordinality from 1");
            each[index].push(row.get(1));
        }
        Ok(each)
    }

    fn details_of_day(&mut self, day: Day) -> Result<Vec<(String, String)>> {
        let rows = self.query(
            "SELECT domain, data FROM reportd_reportdata WHERE day = $1 AND data IS NOT NULL
              ORDER BY domain COLLATE \"C\", fetcherindex",
            &[&day.date()],
        )?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn days_with_details(&mut self) -> Result<Vec<Day>> {
        let rows = self.query(
            "SELECT DISTINCT day FROM reportd_reportdata WHERE data IS NOT NULL ORDER BY day DESC",
            &[],
        )?;
        Ok(rows.iter().map(|row| day_of(row, 0)).collect())
    }

    fn insert_report(&mut self, new: NewReport<'_>) -> Result<i64> {
        let mut names: Vec<&str> = Vec::new();
        let mut statuses: Vec<Option<&str>> = Vec::new();
        let mut first_tries: Vec<Option<DateTime<Utc>>> = Vec::new();
        for row in new.destination_rows() {
            names.push(row.destination);
            statuses.push(row.status);
            first_tries.push(row.first_try);
        }
        // One statement, atomic by itself: the report, numbered, and its
        // destinations in one round trip (a day has a report per domain).
        // Only the active daemon writes reports, so the count cannot race.
        let r_id: i64 = self
            .query(
                "WITH report AS (
                     INSERT INTO reportd_reports (day, domain, uniqid, tlsrptrecord, report)
                     SELECT $1, $2, count(*) + 1, $3, $4 FROM reportd_reports
                      WHERE day = $1 AND domain = $2
                     RETURNING r_id),
                 destinations AS (
                     INSERT INTO reportd_destinations (destination, d_r_id, retries, status, nexttry)
                     SELECT u.destination, report.r_id, 0, u.status, u.first_try
                       FROM report, unnest($5::text[], $6::text[], $7::timestamptz[])
                            AS u(destination, status, first_try)
                     ON CONFLICT DO NOTHING)
                 SELECT r_id FROM report",
                &[
                    &new.day.date(),
                    &new.domain,
                    &new.tlsrptrecord,
                    &new.report,
                    &names,
                    &statuses,
                    &first_tries,
                ],
            )?
            .first()
            .map(|row| row.get(0))
            .expect("INSERT ... RETURNING returns the row");
        Ok(r_id)
    }

    fn insert_reports(&mut self, reports: &[NewReport<'_>]) -> Result<Vec<i64>> {
        let mut days = Vec::with_capacity(reports.len());
        let mut domains = Vec::with_capacity(reports.len());
        let mut records = Vec::with_capacity(reports.len());
        let mut texts = Vec::with_capacity(reports.len());
        // Every report's destinations, then its withheld ones, flattened
        // with the report's position (from 1).
        let (mut owners, mut names, mut statuses, mut first_tries) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (position, report) in (1i64..).zip(reports) {
            days.push(report.day.date());
            domains.push(report.domain);
            records.push(report.tlsrptrecord);
            texts.push(report.report);
            for row in report.destination_rows() {
                owners.push(position);
                names.push(row.destination);
                statuses.push(row.status);
                first_tries.push(row.first_try);
            }
        }
        // One statement for the batch: each report numbered after those
        // stored before and those of the batch before it, then the
        // destinations joined to the reports' new ids.
        let rows = self.query(
            "WITH input AS (
                 SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[])
                          WITH ORDINALITY AS u(day, domain, record, report, position)),
             numbered AS (
                 SELECT position, day, domain, record, report,
                        (SELECT count(*) FROM reportd_reports r
                          WHERE r.day = input.day AND r.domain = input.domain)
                        + row_number() OVER (PARTITION BY day, domain ORDER BY position) AS uniqid
                   FROM input),
             inserted AS (
                 INSERT INTO reportd_reports (day, domain, uniqid, tlsrptrecord, report)
                 SELECT day, domain, uniqid, record, report FROM numbered ORDER BY position
                 RETURNING r_id, day, domain, uniqid),
             ids AS (
                 SELECT n.position, i.r_id FROM numbered n
                   JOIN inserted i ON i.day = n.day AND i.domain = n.domain AND i.uniqid = n.uniqid),
             destinations AS (
                 INSERT INTO reportd_destinations (destination, d_r_id, retries, status, nexttry)
                 SELECT d.destination, ids.r_id, 0, d.status, d.first_try
                   FROM unnest($5::bigint[], $6::text[], $7::text[], $8::timestamptz[])
                        WITH ORDINALITY AS d(position, destination, status, first_try, item)
                   JOIN ids ON ids.position = d.position
                  ORDER BY d.item
                 ON CONFLICT DO NOTHING)
             SELECT r_id FROM ids ORDER BY position",
            &[
                &days,
                &domains,
                &records,
                &texts,
                &owners,
                &names,
                &statuses,
                &first_tries,
            ],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn due_deliveries(&mut self, now: DateTime<Utc>) -> Result<Vec<Delivery>> {
        let due = self.deliveries("d.status IS NULL AND nexttry < $1", &[&now])?;
        Ok(due.into_iter().map(|(delivery, _)| delivery).collect())
    }

    fn interrupted_deliveries(&mut self) -> Result<Vec<(Delivery, Option<DateTime<Utc>>)>> {
        self.deliveries("d.status = 'sending'", &[])
    }

    fn delivery_started(&mut self, delivery: &Delivery, now: DateTime<Utc>) -> Result<()> {
        self.execute(
            "UPDATE reportd_destinations SET status = 'sending', nexttry = $1
              WHERE destination = $2 AND d_r_id = $3",
            &[&now, &delivery.destination, &delivery.r_id],
        )?;
        Ok(())
    }

    fn end_delivery(&mut self, delivery: &Delivery, outcome: DeliveryOutcome) -> Result<bool> {
        let changed = match outcome {
            DeliveryOutcome::RetryAt(at) => self.execute(
                "UPDATE reportd_destinations SET status = NULL, retries = retries + 1, nexttry = $1
                  WHERE destination = $2 AND d_r_id = $3 AND status = 'sending'",
                &[&at, &delivery.destination, &delivery.r_id],
            )?,
            _ => self.execute(
                "UPDATE reportd_destinations SET status = $1
                  WHERE destination = $2 AND d_r_id = $3 AND status = 'sending'",
                &[&outcome.status(), &delivery.destination, &delivery.r_id],
            )?,
        };
        Ok(changed > 0)
    }

    fn deliveries_started(&mut self, deliveries: &[Delivery], now: DateTime<Utc>) -> Result<()> {
        let (destinations, r_ids): (Vec<&str>, Vec<i64>) = deliveries
            .iter()
            .map(|d| (d.destination.as_str(), d.r_id))
            .unzip();
        // One statement for the batch: a round trip per delivery would
        // cost more than the delivery into a directory.
        self.execute(
            "UPDATE reportd_destinations d SET status = 'sending', nexttry = $1
               FROM unnest($2::text[], $3::bigint[]) AS u(destination, r_id)
              WHERE d.destination = u.destination AND d.d_r_id = u.r_id",
            &[&now, &destinations, &r_ids],
        )?;
        Ok(())
    }

    fn end_deliveries<'d>(
        &mut self,
        ended: &[(&'d Delivery, DeliveryOutcome)],
    ) -> Result<Vec<&'d Delivery>> {
        let (mut retry, mut done): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for (delivery, outcome) in ended {
            match outcome {
                DeliveryOutcome::RetryAt(at) => retry.push((*delivery, *at)),
                other => done.push((*delivery, other.status())),
            }
        }
        let mut recorded: Vec<(String, i64)> = Vec::with_capacity(ended.len());
        let key = |row: &Row| (row.get::<_, String>(0), row.get::<_, i64>(1));
        if !retry.is_empty() {
            let destinations: Vec<&str> =
                retry.iter().map(|(d, _)| d.destination.as_str()).collect();
            let r_ids: Vec<i64> = retry.iter().map(|(d, _)| d.r_id).collect();
            let at: Vec<DateTime<Utc>> = retry.iter().map(|(_, at)| *at).collect();
            let rows = self.query(
                "UPDATE reportd_destinations d SET status = NULL, retries = d.retries + 1, nexttry = u.at
                   FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(destination, r_id, at)
                  WHERE d.destination = u.destination AND d.d_r_id = u.r_id AND d.status = 'sending'
                 RETURNING d.destination, d.d_r_id",
                &[&destinations, &r_ids, &at],
            )?;
            recorded.extend(rows.iter().map(key));
        }
        if !done.is_empty() {
            let destinations: Vec<&str> =
                done.iter().map(|(d, _)| d.destination.as_str()).collect();
            let r_ids: Vec<i64> = done.iter().map(|(d, _)| d.r_id).collect();
            let statuses: Vec<Option<&str>> = done.iter().map(|(_, status)| *status).collect();
            let rows = self.query(
                "UPDATE reportd_destinations d SET status = u.status
                   FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(destination, r_id, status)
                  WHERE d.destination = u.destination AND d.d_r_id = u.r_id AND d.status = 'sending'
                 RETURNING d.destination, d.d_r_id",
                &[&destinations, &r_ids, &statuses],
            )?;
            recorded.extend(rows.iter().map(key));
        }
        if recorded.len() == ended.len() {
            return Ok(Vec::new());
        }
        let recorded: std::collections::HashSet<(String, i64)> = recorded.into_iter().collect();
        Ok(ended
            .iter()
            .map(|(delivery, _)| *delivery)
            .filter(|d| !recorded.contains(&(d.destination.clone(), d.r_id)))
            .collect())
    }

    fn clean_up(&mut self, now: DateTime<Utc>, keep_days: i64) -> Result<CleanedUp> {
        let kept = first_day_kept(now, keep_days);
        self.atomic(|db| {
            let mut delete = |sql: &str| -> Result<usize> {
                let n = db.execute(sql, &[&kept])?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            };
            Ok(CleanedUp {
                fetchjobs: delete("DELETE FROM reportd_fetchjobs WHERE day < $1")?,
                reportdata: delete("DELETE FROM reportd_reportdata WHERE day < $1")?,
                destinations: delete(
                    "DELETE FROM reportd_destinations
                      WHERE d_r_id IN (SELECT r_id FROM reportd_reports WHERE day < $1)",
                )?,
                reports: delete("DELETE FROM reportd_reports WHERE day < $1")?,
            })
        })
    }

    fn next_due(&mut self) -> Result<Option<DateTime<Utc>>> {
        let rows = self.query(
            "SELECT min(t) FROM (
                 SELECT min(nexttry) AS t FROM reportd_fetchjobs WHERE status IS NULL
                 UNION ALL SELECT min(nexttry) FROM reportd_reportdata
                  WHERE data IS NULL AND status IS NULL
                    AND day NOT IN (SELECT day FROM reportd_fetchjobs WHERE status IS NULL)
                 UNION ALL SELECT min(nexttry) FROM reportd_destinations WHERE status IS NULL) AS due",
            &[],
        )?;
        Ok(rows.first().and_then(|row| row.get(0)))
    }

    fn reports(&mut self, day: Option<Day>, domain: Option<&str>) -> Result<Vec<StoredReport>> {
        let rows = self.query(
            "SELECT r_id, day::text, domain, uniqid, tlsrptrecord, report FROM reportd_reports
              WHERE ($1::date IS NULL OR day = $1) AND ($2::text IS NULL OR domain = $2)
              ORDER BY r_id",
            &[&day.map(Day::date), &domain],
        )?;
        self.stored_reports(rows)
    }

    fn report(&mut self, r_id: i64) -> Result<Option<StoredReport>> {
        let rows = self.query(
            "SELECT r_id, day::text, domain, uniqid, tlsrptrecord, report FROM reportd_reports
              WHERE r_id = $1",
            &[&r_id],
        )?;
        Ok(self.stored_reports(rows)?.pop())
    }

    fn resend(
        &mut self,
        r_id: i64,
        destination: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let rows = self.query(
            "UPDATE reportd_destinations SET status = NULL, retries = 0, nexttry = $1
              WHERE d_r_id = $2 AND ($3::text IS NULL OR destination = $3)
                AND (status IS NULL OR status <> 'sending')
                AND ($3::text IS NOT NULL OR status IS NULL OR status NOT LIKE 'withheld:%')
             RETURNING destination",
            &[&now, &r_id, &destination],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn status(&mut self) -> Result<Status> {
        let mut counts = |sql: &str| -> Result<Vec<StatusCount>> {
            Ok(self
                .query(sql, &[])?
                .iter()
                .map(|row| StatusCount {
                    day: row.get(0),
                    status: row.get(1),
                    count: row.get(2),
                })
                .collect())
        };
        Ok(Status {
            fetchjobs: counts(
                "SELECT day::text, status, count(*) FROM reportd_fetchjobs
                  GROUP BY day, status ORDER BY day NULLS FIRST, status COLLATE \"C\" NULLS FIRST",
            )?,
            reportdata: counts(
                "SELECT day::text, status, count(*) FROM reportd_reportdata
                  GROUP BY day, status ORDER BY day NULLS FIRST, status COLLATE \"C\" NULLS FIRST",
            )?,
            destinations: counts(
                "SELECT r.day::text, d.status, count(*) FROM reportd_destinations d
                   LEFT JOIN reportd_reports r ON d.d_r_id = r.r_id
                  GROUP BY r.day, d.status ORDER BY r.day NULLS FIRST, d.status COLLATE \"C\" NULLS FIRST",
            )?,
        })
    }

    fn may_resend(&mut self) -> Result<bool> {
        Ok(self
            .query(
                "SELECT has_table_privilege('reportd_destinations', 'UPDATE')",
                &[],
            )?
            .first()
            .is_some_and(|row| row.get(0)))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn take_lead(&mut self) -> Result<std::result::Result<(), String>> {
        let (class, id) = LOCK;
        let got: bool = self
            .query("SELECT pg_try_advisory_lock($1, $2)", &[&class, &id])?
            .first()
            .is_some_and(|row| row.get(0));
        if got {
            // The server notices a vanished daemon (a cut network rather
            // than a closed connection) within about a minute and frees the
            // lock for a standby.
            self.batch(
                "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; \
                 SET tcp_keepalives_count = 3",
            )?;
            return Ok(Ok(()));
        }
        let holder = self.query(
            "SELECT a.application_name, coalesce(host(a.client_addr), 'a local socket'), a.backend_start
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2",
            &[&class, &id],
        )?;
        Ok(Err(match holder.first() {
            Some(row) => format!(
                "{} (connected from {} since {})",
                row.get::<_, Option<String>>(0).unwrap_or_default(),
                row.get::<_, String>(1),
                row.get::<_, DateTime<Utc>>(2)
                    .format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => "another report daemon (not visible to this role)".into(),
        }))
    }

    fn begin(&mut self) -> Result<()> {
        self.batch("BEGIN")?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.in_transaction = false;
        self.batch("COMMIT")
    }

    fn rollback(&mut self) -> Result<()> {
        self.in_transaction = false;
        self.batch("ROLLBACK")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{day, fetchers, postgres_store, postgres_url, strings, t};
    use crate::{DbName, ReportdDb};
    use tlsrpt_store::postgres::PgError;

    #[test]
    fn the_first_day_kept_is_upstreams_condition() {
        use chrono::TimeZone;
        let at = |d, h, m, s| Utc.with_ymd_and_hms(2026, 12, d, h, m, s).unwrap();
        let date = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        // 2026-11-21 is exactly 10 days old at midnight of 2026-12-01:
        // kept; a second later it goes.
        assert_eq!(first_day_kept(at(1, 0, 0, 0), 10), date(21));
        assert_eq!(first_day_kept(at(1, 0, 0, 1), 10), date(22));
        assert_eq!(first_day_kept(at(1, 23, 59, 59), 10), date(22));
    }

    #[test]
    fn one_daemon_leads_and_a_standby_takes_over_when_its_connection_ends() {
        let (cluster, mut first) = postgres_store();
        let name = DbName::Postgres(Box::new(postgres_url(&cluster)));
        let mut second = ReportdDb::open(&name).unwrap();
        assert_eq!(first.take_lead().unwrap(), Ok(()));
        let active = second.take_lead().unwrap().unwrap_err();
        assert!(
            active.starts_with(&format!(
                "tlsrpt-reportd on {} pid {} (connected from 127.0.0.1 since ",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )),
            "{active}"
        );
        assert!(second.take_lead().unwrap().is_err(), "still standing by");
        // The server frees the lock with the connection.
        drop(first);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while second.take_lead().unwrap().is_err() {
            assert!(std::time::Instant::now() < deadline, "never took over");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(ReportdDb::open(&name)
            .unwrap()
            .take_lead()
            .unwrap()
            .is_err());
    }

    #[test]
    fn tlsrptctl_reads_without_writing_and_creates_nothing() {
        let (cluster, _db) = postgres_store();
        cluster.create_database("empty");
        let empty = PgUrl::parse(&cluster.url("empty"), None).unwrap();
        match ReportdDb::open_existing(&DbName::Postgres(Box::new(empty)), false) {
            Err(DbError::Postgres(PgError::Refused { what, .. })) => {
                assert!(what.contains("start tlsrpt-reportd"), "{what}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("opened a database without the tables"),
        }
        assert_eq!(
            cluster.psql(
                "empty",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ),
            "0"
        );
        let name = DbName::Postgres(Box::new(postgres_url(&cluster)));
        let mut reader = ReportdDb::open_existing(&name, false).unwrap();
        assert!(reader.status().unwrap().fetchjobs.is_empty());
        match reader.create_fetch_jobs(day(21), &fetchers(), t(0, 0)) {
            Err(DbError::Postgres(e)) => assert!(e.to_string().contains("read-only"), "{e}"),
            other => panic!("{other:?}"),
        }
        let mut writer = ReportdDb::open_existing(&name, true).unwrap();
        assert!(writer
            .create_fetch_jobs(day(21), &fetchers(), t(0, 0))
            .unwrap());
    }

    #[test]
    fn a_domain_list_is_stored_completely_or_not_at_all() {
        let (cluster, mut db) = postgres_store();
        db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap();
        let job = db.due_fetch_jobs(t(0, 1)).unwrap().remove(0);
        cluster.psql(
            "tlsrpt",
            "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.domain = 'bad.example' THEN RAISE EXCEPTION 'injected'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER fail BEFORE INSERT ON reportd_reportdata FOR EACH ROW EXECUTE FUNCTION fail();",
        );
        let list = strings(&["a.example", "bad.example", "c.example"]);
        assert!(db.store_domain_list(&job, &list, t(0, 1)).is_err());
        assert_eq!(
            cluster.psql("tlsrpt", "SELECT count(*) FROM reportd_reportdata"),
            "0"
        );
        assert_eq!(
            db.due_fetch_jobs(t(0, 1)).unwrap().len(),
            2,
            "the job is still open"
        );
        cluster.psql("tlsrpt", "DROP TRIGGER fail ON reportd_reportdata");
        assert_eq!(
            db.store_domain_list(&job, &[list.clone(), list].concat(), t(0, 1))
                .unwrap(),
            3
        );
    }
}
