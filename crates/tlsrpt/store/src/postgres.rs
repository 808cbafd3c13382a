//! The collectors' shared store on PostgreSQL (fleets): many collectors
//! write their counters into one database, each under its name; a fetcher
//! reads the sum over every collector of a completed day, as the same
//! [`PolicyRow`]s and [`FailureRow`]s a single collector's SQLite file
//! gives, so that its answers are byte for byte those of one big collector.
//!
//! Tables, created and migrated here (`mailtls_schema` holds each
//! component's version; a database newer than this program is refused):
//!
//! | table | what |
//! | --- | --- |
//! | `tlsrpt_results(day, domain, record, policy, collector, total, failed)` | `finalresults` per collector |
//! | `tlsrpt_failures(day, domain, record, policy, reason, collector, count)` | `failures` per collector |
//! | `tlsrpt_day_ends(collector, day, ended_at)` | a collector ended its day (midnight or SIGUSR2) |
//! | `tlsrpt_batches(collector, batch, written_at)` | batches written, so that a batch whose commit reached the server but whose answer was lost is not counted twice when it is retried |
//!
//! A day is complete when every collector that wrote to it has ended it,
//! or, for a collector that stopped for good, `grace` after the day's end.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use mailtls_common::day::Day;
use mailtls_postgres::{postgres::Client, Migrations};
pub use mailtls_postgres::{PgError, PgUrl};
use tlsrpt_datagram::Aggregate;

use crate::{DayReader, FailureRow, PolicyRow, StoreError, VisitError};

/// The collectors' tables, version by version.
const MIGRATIONS: Migrations = Migrations {
    component: "tlsrpt",
    steps: &[(
    1,
    "CREATE TABLE tlsrpt_results (
         day date NOT NULL, domain text NOT NULL, record text NOT NULL, policy text NOT NULL,
         collector text NOT NULL, total bigint NOT NULL CHECK (total >= 0),
         failed bigint NOT NULL CHECK (failed >= 0 AND failed <= total),
         PRIMARY KEY (day, domain, record, policy, collector));
     CREATE TABLE tlsrpt_failures (
         day date NOT NULL, domain text NOT NULL, record text NOT NULL, policy text NOT NULL,
         reason text NOT NULL, collector text NOT NULL, count bigint NOT NULL CHECK (count >= 0),
         PRIMARY KEY (day, domain, record, policy, reason, collector));
     CREATE TABLE tlsrpt_day_ends (
         collector text NOT NULL, day date NOT NULL, ended_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (collector, day));
     CREATE TABLE tlsrpt_batches (
         collector text NOT NULL, batch bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (collector, batch));
     -- Each write forgets the collector's old batches: found by time.
     CREATE INDEX tlsrpt_batches_age ON tlsrpt_batches (collector, written_at);",
    )],
};

/// What readers are told when the tables are missing or old.
const CREATOR: &str = "start a collector with this storage";

type Result<T> = std::result::Result<T, PgError>;

/// Batches are remembered this long: a retry comes within minutes.
const BATCH_MEMORY: &str = "2 days";

/// One collector's connection: writes its counters and ends its days.
pub struct PgCollectorStore {
    url: PgUrl,
    client: Client,
    collector: String,
}

impl PgCollectorStore {
    /// Connects as collector `collector` (a name of 1 to 255 bytes without
    /// control characters) and migrates the schema.
    pub fn connect(url: &PgUrl, collector: &str) -> Result<PgCollectorStore> {
        if collector.is_empty() || collector.len() > 255 || collector.chars().any(char::is_control)
        {
            return Err(PgError::Refused {
                url: url.shown().to_string(),
                what: format!("collector_name {collector:?} must be 1 to 255 bytes without control characters"),
            });
        }
        let mut client = url.connect()?;
        MIGRATIONS.apply(&mut client, url)?;
        Ok(PgCollectorStore {
            url: url.clone(),
            client,
            collector: collector.to_string(),
        })
    }

    /// Adds the counters of `agg` as batch `batch` (a number the caller
    /// chose at random for this aggregate and keeps for every retry of it),
    /// in one transaction. `Ok(false)`: the batch was written before (its
    /// commit reached the server, the answer did not reach us), nothing
    /// was added again.
    pub fn write(&mut self, batch: i64, agg: &Aggregate) -> Result<bool> {
        let url = &self.url;
        let err = |e| url.error(e);
        let mut tx = self.client.transaction().map_err(err)?;
        let fresh = tx
            .execute(
                "INSERT INTO tlsrpt_batches (collector, batch) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&self.collector, &batch],
            )
            .map_err(err)?;
        if fresh == 0 {
            return Ok(false);
        }
        let mut days = Vec::new();
        let mut domains = Vec::new();
        let mut records = Vec::new();
        let mut policies = Vec::new();
        let mut totals = Vec::new();
        let mut failed = Vec::new();
        let (mut f_days, mut f_domains, mut f_records, mut f_policies, mut f_reasons, mut f_counts) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (key, counts) in agg.iter() {
            days.push(key.day.date());
            domains.push(key.domain.as_str());
            records.push(key.record.as_str());
            policies.push(key.policy.as_str());
            totals.push(counts.total as i64);
            failed.push(counts.failed.min(counts.total) as i64);
            for (reason, n) in &counts.failures {
                f_days.push(key.day.date());
                f_domains.push(key.domain.as_str());
                f_records.push(key.record.as_str());
                f_policies.push(key.policy.as_str());
                f_reasons.push(reason.as_str());
                f_counts.push(*n as i64);
            }
        }
        // One statement per table, whatever the number of keys: the rows go
        // as arrays (one round trip), merged by the primary key.
        tx.execute(
            "INSERT INTO tlsrpt_results (day, domain, record, policy, collector, total, failed)
             SELECT d, dom, rec, pol, $5, t, f
               FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $6::bigint[], $7::bigint[])
                    AS u(d, dom, rec, pol, t, f)
             ON CONFLICT (day, domain, record, policy, collector) DO UPDATE SET
                 total = tlsrpt_results.total + excluded.total,
                 failed = tlsrpt_results.failed + excluded.failed",
            &[&days, &domains, &records, &policies, &self.collector, &totals, &failed],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO tlsrpt_failures (day, domain, record, policy, reason, collector, count)
             SELECT d, dom, rec, pol, rea, $6, c
               FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], $7::bigint[])
                    AS u(d, dom, rec, pol, rea, c)
             ON CONFLICT (day, domain, record, policy, reason, collector) DO UPDATE SET
                 count = tlsrpt_failures.count + excluded.count",
            &[
                &f_days,
                &f_domains,
                &f_records,
                &f_policies,
                &f_reasons,
                &self.collector,
                &f_counts,
            ],
        )
        .map_err(err)?;
        tx.execute(
            &format!("DELETE FROM tlsrpt_batches WHERE collector = $1 AND written_at < now() - interval '{BATCH_MEMORY}'"),
            &[&self.collector],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    /// Records that this collector's `day` is over: its counters of the
    /// day are all written. Idempotent.
    pub fn end_day(&mut self, day: Day) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO tlsrpt_day_ends (collector, day) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&self.collector, &day.date()],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(())
    }

    /// Days before `today` this collector wrote to but never ended (it was
    /// not running at midnight), oldest first.
    pub fn unended_days_before(&mut self, today: Day) -> Result<Vec<Day>> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT r.day FROM tlsrpt_results r
                  WHERE r.collector = $1 AND r.day < $2
                    AND NOT EXISTS (SELECT 1 FROM tlsrpt_day_ends e WHERE e.collector = r.collector AND e.day = r.day)
                  ORDER BY r.day",
                &[&self.collector, &today.date()],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(rows
            .into_iter()
            .map(|r| Day::from(r.get::<_, NaiveDate>(0)))
            .collect())
    }

    /// Moves this collector's counters of `from` to `to` (the development
    /// rollover, SIGUSR2).
    pub fn relabel_day(&mut self, from: Day, to: Day) -> Result<()> {
        let url = &self.url;
        let err = |e| url.error(e);
        let mut tx = self.client.transaction().map_err(err)?;
        for table in ["tlsrpt_results", "tlsrpt_failures"] {
            tx.execute(
                &format!("UPDATE {table} SET day = $1 WHERE day = $2 AND collector = $3"),
                &[&to.date(), &from.date(), &self.collector],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

/// The fetcher's view: the sum over every collector.
pub struct PgDayReader {
    url: PgUrl,
    client: Client,
}

/// What one collector of the fleet has done lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorStatus {
    pub collector: String,
    pub newest_counted: Day,
    pub newest_ended: Option<Day>,
}

/// Why a day is taken as complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub day: Day,
    /// Collectors that wrote to the day but never ended it, taken as done
    /// because the grace time after the day has passed (to be logged).
    pub given_up: Vec<String>,
}

impl PgDayReader {
    /// Connects and checks the tables' version; it creates nothing, so the
    /// reader's role may be one that can only read.
    pub fn connect(url: &PgUrl) -> Result<PgDayReader> {
        let mut client = url.connect()?;
        MIGRATIONS.check(&mut client, url, CREATOR)?;
        Ok(PgDayReader {
            url: url.clone(),
            client,
        })
    }

    /// The newest complete day before `now`'s day: every collector that
    /// wrote to it has ended it, or `grace` has passed since the day's end.
    pub fn completed_day(
        &mut self,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Option<Completion>> {
        let today = Day::of(now);
        let rows = self
            .client
            .query(
                "SELECT day, array_agg(DISTINCT collector) FROM tlsrpt_results
                  WHERE day < $1 AND day >= $1 - 14 GROUP BY day ORDER BY day DESC",
                &[&today.date()],
            )
            .map_err(|e| self.url.error(e))?;
        for row in rows {
            let day: Day = Day::from(row.get::<_, NaiveDate>(0));
            let writers: Vec<String> = row.get(1);
            let ended: BTreeSet<String> = self
                .client
                .query(
                    "SELECT collector FROM tlsrpt_day_ends WHERE day = $1",
                    &[&day.date()],
                )
                .map_err(|e| self.url.error(e))?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<String> = writers.into_iter().filter(|c| !ended.contains(c)).collect();
            let day_end = day
                .succ()
                .date()
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc();
            let waited = (now - day_end).to_std().unwrap_or_default();
            if missing.is_empty() {
                return Ok(Some(Completion {
                    day,
                    given_up: Vec::new(),
                }));
            }
            if waited >= grace {
                return Ok(Some(Completion {
                    day,
                    given_up: missing,
                }));
            }
        }
        Ok(None)
    }

    /// [`completed_day`](Self::completed_day), with a warning in the log
    /// for each collector given up on.
    pub fn completed_day_logged(
        &mut self,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Option<Day>> {
        let completion = self.completed_day(now, grace)?;
        if let Some(c) = completion.as_ref().filter(|c| !c.given_up.is_empty()) {
            log::warn!(
                "day {} taken as complete without the day end of collector(s) {}: {} s have passed since the day's end (day_end_grace)",
                c.day,
                c.given_up.join(", "),
                grace.as_secs()
            );
        }
        Ok(completion.map(|c| c.day))
    }

    /// Every day with counters of any collector, newest first (the
    /// dashboard's list of days; today's are still being counted).
    pub fn days(&mut self) -> Result<Vec<Day>> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT day FROM tlsrpt_results ORDER BY day DESC",
                &[],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(rows
            .into_iter()
            .map(|r| Day::from(r.get::<_, NaiveDate>(0)))
            .collect())
    }

    /// The domains with counters on `day`, sorted.
    pub fn domains(&mut self, day: Day) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT domain FROM tlsrpt_results WHERE day = $1 ORDER BY domain",
                &[&day.date()],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The policy and failure rows of `domain` on `day`, summed over every
    /// collector, in key order (as from one collector's SQLite file).
    pub fn details(&mut self, day: Day, domain: &str) -> Result<(Vec<PolicyRow>, Vec<FailureRow>)> {
        let policies = self
            .client
            .query(
                "SELECT record, policy, sum(total)::bigint, sum(failed)::bigint FROM tlsrpt_results
                  WHERE day = $1 AND domain = $2 GROUP BY record, policy
                  ORDER BY record COLLATE \"C\", policy COLLATE \"C\"",
                &[&day.date(), &domain],
            )
            .map_err(|e| self.url.error(e))?
            .into_iter()
            .map(|r| PolicyRow {
                record: r.get(0),
                policy: r.get(1),
                total: r.get(2),
                failed: r.get(3),
            })
            .collect();
        let failures = self
            .client
            .query(
                "SELECT record, policy, reason, sum(count)::bigint FROM tlsrpt_failures
                  WHERE day = $1 AND domain = $2 GROUP BY record, policy, reason
                  ORDER BY record COLLATE \"C\", policy COLLATE \"C\", reason COLLATE \"C\"",
                &[&day.date(), &domain],
            )
            .map_err(|e| self.url.error(e))?
            .into_iter()
            .map(|r| FailureRow {
                record: r.get(0),
                policy: r.get(1),
                reason: r.get(2),
                count: r.get(3),
            })
            .collect();
        Ok((policies, failures))
    }

    /// Calls `visit` with each domain of `day` and its rows summed over
    /// every collector, in domain order (as [`crate::FetcherDb::for_each_domain`]):
    /// two ordered queries merged, not two per domain.
    pub fn for_each_domain<E>(
        &mut self,
        day: Day,
        visit: impl FnMut(&str, &[PolicyRow], &[FailureRow]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), VisitError<E>> {
        let url = &self.url;
        let store_error = |e| VisitError::Store(StoreError::from(url.error(e)));
        let policies = self
            .client
            .query(
                "SELECT domain, record, policy, sum(total)::bigint, sum(failed)::bigint FROM tlsrpt_results
                  WHERE day = $1 GROUP BY domain, record, policy
                  ORDER BY domain COLLATE \"C\", record COLLATE \"C\", policy COLLATE \"C\"",
                &[&day.date()],
            )
            .map_err(store_error)?;
        let failures = self
            .client
            .query(
                "SELECT domain, record, policy, reason, sum(count)::bigint FROM tlsrpt_failures
                  WHERE day = $1 GROUP BY domain, record, policy, reason
                  ORDER BY domain COLLATE \"C\", record COLLATE \"C\", policy COLLATE \"C\", reason COLLATE \"C\"",
                &[&day.date()],
            )
            .map_err(store_error)?;
        crate::reader::merge_by_domain(
            policies.iter().map(|r| {
                Ok((
                    r.get(0),
                    PolicyRow {
                        record: r.get(1),
                        policy: r.get(2),
                        total: r.get(3),
                        failed: r.get(4),
                    },
                ))
            }),
            failures.iter().map(|r| {
                Ok((
                    r.get(0),
                    FailureRow {
                        record: r.get(1),
                        policy: r.get(2),
                        reason: r.get(3),
                        count: r.get(4),
                    },
                ))
            }),
            visit,
        )
    }

    /// Every collector with counters in the last `days` days before
    /// `today`: its newest day with counters and its newest ended day.
    pub fn collector_status(&mut self, today: Day, days: i32) -> Result<Vec<CollectorStatus>> {
        let rows = self
            .client
            .query(
                "SELECT r.collector, max(r.day),
                        (SELECT max(e.day) FROM tlsrpt_day_ends e WHERE e.collector = r.collector)
                   FROM tlsrpt_results r WHERE r.day >= $1::date - $2::int AND r.day <= $1
                  GROUP BY r.collector ORDER BY r.collector",
                &[&today.date(), &days],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(rows
            .into_iter()
            .map(|r| CollectorStatus {
                collector: r.get(0),
                newest_counted: Day::from(r.get::<_, NaiveDate>(1)),
                newest_ended: r.get::<_, Option<NaiveDate>>(2).map(Day::from),
            })
            .collect())
    }

    /// The collectors that wrote to `day`, sorted.
    pub fn collectors(&mut self, day: Day) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT collector FROM tlsrpt_results WHERE day = $1 ORDER BY collector",
                &[&day.date()],
            )
            .map_err(|e| self.url.error(e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}

impl DayReader for PgDayReader {
    fn completed_day(&mut self, now: DateTime<Utc>, grace: Duration) -> crate::Result<Option<Day>> {
        Ok(self.completed_day_logged(now, grace)?)
    }

    fn days(&mut self) -> crate::Result<Vec<Day>> {
        Ok(PgDayReader::days(self)?)
    }

    fn domains(&mut self, day: Day) -> crate::Result<Vec<String>> {
        Ok(PgDayReader::domains(self, day)?)
    }

    fn details(
        &mut self,
        day: Day,
        domain: &str,
    ) -> crate::Result<(Vec<PolicyRow>, Vec<FailureRow>)> {
        Ok(PgDayReader::details(self, day, domain)?)
    }

    fn visit_domains(
        &mut self,
        day: Day,
        visit: &mut crate::reader::DomainVisitor<'_>,
    ) -> crate::Result<()> {
        crate::reader::walked(PgDayReader::for_each_domain(
            self,
            day,
            crate::reader::until_break(visit),
        ))
    }
}
