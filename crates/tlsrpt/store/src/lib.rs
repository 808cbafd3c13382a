//! The collector's store: SQLite files that the upstream tlsrpt-collectd and
//! tlsrpt-fetcher can read and write too (`shared/spec/tlsrpt-interfaces.md`
//! section 2), so an installation keeps its database files when it switches.
//!
//! Two files per storage URL: the database of "today", written by the
//! collector, and `<file>.yesterday`, the completed day, read by the fetcher.
//! At UTC midnight the collector marks the day complete (`daystatus`), moves
//! today's file over yesterday's and starts a fresh one.
//!
//! Either store is seen through one trait per side: a collector writes
//! through [`CounterStore`] ([`CollectorDb`] or the fleet's
//! [`postgres::PgCollectorStore`]), a fetcher reads through [`DayReader`]
//! ([`FetcherDb`] or [`postgres::PgDayReader`]), which give the same rows
//! in the same order; the bulk read's grouping is written once.

pub mod postgres;
mod reader;
mod url;
mod writer;

use std::path::{Path, PathBuf};

use mailtls_common::day::{Day, DayError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tlsrpt_datagram::Aggregate;

pub use reader::{DayReader, DomainVisitor, VisitError};
pub use url::{parse_storage_list, parse_storages, Storage, StorageUrl};
pub use writer::{CounterStore, DayEnd};

/// The purpose string the upstream stores in `dbversion`; a file with another
/// purpose belongs to another program and is never touched.
pub const PURPOSE: &str = "TLSRPT-Collectd-DB-devel-2024-10-28";
/// The schema version in `dbversion`.
pub const SCHEMA_VERSION: i64 = 1;

/// The upstream schema, statement for statement, so that files created by
/// either implementation are indistinguishable.
const DDL: [&str; 5] = [
    "CREATE TABLE finalresults(day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure, its datetime default CURRENT_TIMESTAMP,PRIMARY KEY(day, domain, tlsrptrecord, policy))",
    "CREATE TABLE failures(day, domain, tlsrptrecord, policy, reason, cntr, PRIMARY KEY(day, domain, tlsrptrecord, policy, reason))",
    "CREATE TABLE daystatus(daycomplete, its datetime default CURRENT_TIMESTAMP, PRIMARY KEY(daycomplete))",
    "CREATE TABLE dbversion(version, installdate, purpose)",
    "INSERT INTO dbversion(version, installdate, purpose)  VALUES(1,strftime('%Y-%m-%d %H-%M-%f','now'),'TLSRPT-Collectd-DB-devel-2024-10-28')",
];

/// What went wrong with a store, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} belongs to another program or version (dbversion says version {version}, purpose {purpose:?}; expected version 1, purpose {PURPOSE:?}); move it away or point storage= elsewhere")]
    WrongPurpose {
        path: PathBuf,
        version: String,
        purpose: String,
    },
    #[error("database {0} does not exist; is tlsrpt-collectd running with this storage, and has it passed its first start?")]
    Missing(PathBuf),
    #[error("cannot move {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid storage URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    /// A day column holds something that is no day (another program wrote
    /// the file).
    #[error("database {path}: {source}")]
    BadDay {
        path: PathBuf,
        #[source]
        source: DayError,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// The name of the completed-day file for a store file.
pub fn yesterday_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".yesterday");
    PathBuf::from(name)
}

/// A day read from the file, which must be one if present.
fn parse_day(path: &Path, text: Option<String>) -> Result<Option<Day>> {
    text.map(|text| Day::parse(&text))
        .transpose()
        .map_err(|source| StoreError::BadDay {
            path: path.to_path_buf(),
            source,
        })
}

fn sql_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// The result of checking the `dbversion` table of a file.
enum Check {
    Ok,
    /// No usable dbversion table: a new (or empty) file.
    Uninitialised,
}

fn check(conn: &Connection, path: &Path) -> Result<Check> {
    let row: Option<(rusqlite::types::Value, rusqlite::types::Value)> = match conn
        .query_row("SELECT version, purpose FROM dbversion", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
    {
        Ok(row) => row,
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
            return Ok(Check::Uninitialised)
        }
        Err(e) => return Err(sql_err(path)(e)),
    };
    let Some((version, purpose)) = row else {
        return Ok(Check::Uninitialised);
    };
    let text = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Integer(i) => i.to_string(),
        rusqlite::types::Value::Text(t) => t.clone(),
        other => format!("{other:?}"),
    };
    let version_ok = matches!(version, rusqlite::types::Value::Integer(SCHEMA_VERSION));
    let purpose_ok = matches!(&purpose, rusqlite::types::Value::Text(p) if p == PURPOSE);
    if version_ok && purpose_ok {
        Ok(Check::Ok)
    } else {
        Err(StoreError::WrongPurpose {
            path: path.to_path_buf(),
            version: text(&version),
            purpose: text(&purpose),
        })
    }
}

/// The database of the running day, written by the collector.
pub struct CollectorDb {
    conn: Connection,
    path: PathBuf,
}

/// How [`CollectorDb::open`] found the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// An existing database of ours or of the upstream collectd.
    Existing,
    /// A new installation: the schema was just created.
    Created,
}

impl CollectorDb {
    /// Open the store file, creating the schema when the file is new.
    pub fn open(path: &Path) -> Result<(CollectorDb, Opened)> {
        let conn = Connection::open(path).map_err(sql_err(path))?;
        conn.busy_timeout(std::time::Duration::from_millis(2000))
            .map_err(sql_err(path))?;
        let opened = match check(&conn, path)? {
            Check::Ok => Opened::Existing,
            Check::Uninitialised => {
                for statement in DDL {
                    conn.execute(statement, []).map_err(sql_err(path))?;
                }
                Opened::Created
            }
        };
        Ok((
            CollectorDb {
                conn,
                path: path.to_path_buf(),
            },
            opened,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Add the counters of `agg` to the database in one transaction: either
    /// all of it is committed or none (so a failed write can be retried with
    /// the same aggregate without counting anything twice).
    pub fn write(&mut self, agg: &Aggregate) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql_err(&path))?;
        {
            let mut upsert_policy = tx
                .prepare_cached(
                    "INSERT INTO finalresults (day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT(day, domain, tlsrptrecord, policy) DO UPDATE SET \
                     cntrtotal = cntrtotal + excluded.cntrtotal, cntrfailure = cntrfailure + excluded.cntrfailure",
                )
                .map_err(sql_err(&path))?;
            let mut upsert_failure = tx
                .prepare_cached(
                    "INSERT INTO failures (day, domain, tlsrptrecord, policy, reason, cntr) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT(day, domain, tlsrptrecord, policy, reason) DO UPDATE SET \
                     cntr = cntr + excluded.cntr",
                )
                .map_err(sql_err(&path))?;
            for (key, counts) in agg.iter() {
                upsert_policy
                    .execute(params![
                        key.day.to_string(),
                        key.domain,
                        key.record,
                        key.policy,
                        counts.total as i64,
                        counts.failed as i64
                    ])
                    .map_err(sql_err(&path))?;
                for (reason, n) in &counts.failures {
                    upsert_failure
                        .execute(params![
                            key.day.to_string(),
                            key.domain,
                            key.record,
                            key.policy,
                            reason,
                            *n as i64
                        ])
                        .map_err(sql_err(&path))?;
                }
            }
        }
        tx.commit().map_err(sql_err(&path))
    }

    /// The newest day with counters in this file, if any.
    pub fn newest_day(&self) -> Result<Option<Day>> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT max(day) FROM finalresults", [], |r| r.get(0))
            .map_err(sql_err(&self.path))?;
        parse_day(&self.path, text)
    }

    /// Move the counters of day `from` to day `to` (development rollover).
    pub fn relabel_day(&mut self, from: Day, to: Day) -> Result<()> {
        let (from, to) = (from.to_string(), to.to_string());
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql_err(&path))?;
        tx.execute(
            "UPDATE finalresults SET day = ?1 WHERE day = ?2",
            params![to, from],
        )
        .map_err(sql_err(&path))?;
        tx.execute(
            "UPDATE failures SET day = ?1 WHERE day = ?2",
            params![to, from],
        )
        .map_err(sql_err(&path))?;
        tx.commit().map_err(sql_err(&path))
    }

    /// Close the running day: mark `completed_day` complete, move this file
    /// over `<file>.yesterday` (atomically, so a fetcher never finds it
    /// missing) and start a fresh file. Returns the new database and whether
    /// a stale day status had to be removed (a sign of an earlier failed
    /// rollover, worth an operator's look).
    pub fn rollover(self, completed_day: Day) -> Result<(CollectorDb, bool)> {
        let path = self.path.clone();
        let stale: i64 = self
            .conn
            .query_row("SELECT count(*) FROM daystatus", [], |r| r.get(0))
            .map_err(sql_err(&path))?;
        if stale > 0 {
            self.conn
                .execute("DELETE FROM daystatus", [])
                .map_err(sql_err(&path))?;
        }
        self.conn
            .execute(
                "INSERT INTO daystatus (daycomplete) VALUES (?1)",
                params![completed_day.to_string()],
            )
            .map_err(sql_err(&path))?;
        self.conn.close().map_err(|(_, e)| sql_err(&path)(e))?;
        let yesterday = yesterday_path(&path);
        std::fs::rename(&path, &yesterday).map_err(|source| StoreError::Rename {
            from: path.clone(),
            to: yesterday.clone(),
            source,
        })?;
        let (db, _) = CollectorDb::open(&path)?;
        Ok((db, stale > 0))
    }
}

/// One `finalresults` row of a domain, as the fetcher reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub record: String,
    pub policy: String,
    pub total: i64,
    pub failed: i64,
}

/// One `failures` row of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    pub record: String,
    pub policy: String,
    pub reason: String,
    pub count: i64,
}

/// The completed-day database, opened read-only by the fetcher.
pub struct FetcherDb {
    conn: Connection,
    path: PathBuf,
}

impl FetcherDb {
    /// Open `path` read-only and check that it is a collector database.
    pub fn open(path: &Path) -> Result<FetcherDb> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path))?;
        conn.busy_timeout(std::time::Duration::from_millis(5000))
            .map_err(sql_err(path))?;
        match check(&conn, path)? {
            Check::Ok => Ok(FetcherDb {
                conn,
                path: path.to_path_buf(),
            }),
            Check::Uninitialised => Err(StoreError::WrongPurpose {
                path: path.to_path_buf(),
                version: "none".into(),
                purpose: "none".into(),
            }),
        }
    }

    /// The newest completed day recorded in `daystatus`.
    pub fn completed_day(&self) -> Result<Option<Day>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT daycomplete FROM daystatus ORDER BY daycomplete DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err(&self.path))?;
        parse_day(&self.path, text)
    }

    /// The days with counters, newest first. A stored day that is no day
    /// is an error.
    pub fn days(&self) -> Result<Vec<Day>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT day FROM finalresults ORDER BY day DESC")
            .map_err(sql_err(&self.path))?;
        let days: Vec<Option<String>> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(sql_err(&self.path))?;
        days.into_iter()
            .filter_map(|text| parse_day(&self.path, text).transpose())
            .collect()
    }

    /// The domains with counters on `day`, sorted.
    pub fn domains(&self, day: Day) -> Result<Vec<String>> {
        let day = day.to_string();
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT domain FROM finalresults WHERE day = ?1 ORDER BY domain")
            .map_err(sql_err(&self.path))?;
        let rows = stmt
            .query_map([&day], |r| r.get(0))
            .map_err(sql_err(&self.path))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(sql_err(&self.path))
    }

    /// The policy and failure rows of `domain` on `day`, in key order (the
    /// order in which the upstream fetcher lists them).
    pub fn details(&self, day: Day, domain: &str) -> Result<(Vec<PolicyRow>, Vec<FailureRow>)> {
        let day = day.to_string();
        let day = day.as_str();
        let err = sql_err(&self.path);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT tlsrptrecord, policy, cntrtotal, cntrfailure FROM finalresults \
                 WHERE day = ?1 AND domain = ?2 ORDER BY tlsrptrecord, policy",
            )
            .map_err(sql_err(&self.path))?;
        let policies = stmt
            .query_map([day, domain], |r| {
                Ok(PolicyRow {
                    record: r.get(0)?,
                    policy: r.get(1)?,
                    total: r.get(2)?,
                    failed: r.get(3)?,
                })
            })
            .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(sql_err(&self.path))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT tlsrptrecord, policy, reason, cntr FROM failures \
                 WHERE day = ?1 AND domain = ?2 ORDER BY tlsrptrecord, policy, reason",
            )
            .map_err(sql_err(&self.path))?;
        let failures = stmt
            .query_map([day, domain], |r| {
                Ok(FailureRow {
                    record: r.get(0)?,
                    policy: r.get(1)?,
                    reason: r.get(2)?,
                    count: r.get(3)?,
                })
            })
            .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(err)?;
        Ok((policies, failures))
    }
}

impl FetcherDb {
    /// Call `visit` with each domain of `day` and its rows, in domain order,
    /// reading both tables once (two ordered scans merged), so that a bulk
    /// answer for many thousand domains costs two queries, not two per domain.
    pub fn for_each_domain<E>(
        &self,
        day: Day,
        visit: impl FnMut(&str, &[PolicyRow], &[FailureRow]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), VisitError<E>> {
        let day = day.to_string();
        let err = |e| VisitError::Store(sql_err(&self.path)(e));
        let mut policies = self
            .conn
            .prepare(
                "SELECT domain, tlsrptrecord, policy, cntrtotal, cntrfailure FROM finalresults \
                 WHERE day = ?1 ORDER BY domain, tlsrptrecord, policy",
            )
            .map_err(err)?;
        let mut failures = self
            .conn
            .prepare(
                "SELECT domain, tlsrptrecord, policy, reason, cntr FROM failures \
                 WHERE day = ?1 ORDER BY domain, tlsrptrecord, policy, reason",
            )
            .map_err(err)?;
        let policy_rows = policies
            .query_map([&day], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PolicyRow {
                        record: r.get(1)?,
                        policy: r.get(2)?,
                        total: r.get(3)?,
                        failed: r.get(4)?,
                    },
                ))
            })
            .map_err(err)?;
        let failure_rows = failures
            .query_map([&day], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    FailureRow {
                        record: r.get(1)?,
                        policy: r.get(2)?,
                        reason: r.get(3)?,
                        count: r.get(4)?,
                    },
                ))
            })
            .map_err(err)?;
        reader::merge_by_domain(
            policy_rows.map(|row| row.map_err(sql_err(&self.path))),
            failure_rows.map(|row| row.map_err(sql_err(&self.path))),
            visit,
        )
    }
}

impl DayReader for FetcherDb {
    fn completed_day(
        &mut self,
        _now: chrono::DateTime<chrono::Utc>,
        _grace: std::time::Duration,
    ) -> Result<Option<Day>> {
        FetcherDb::completed_day(self)
    }

    fn days(&mut self) -> Result<Vec<Day>> {
        FetcherDb::days(self)
    }

    fn domains(&mut self, day: Day) -> Result<Vec<String>> {
        FetcherDb::domains(self, day)
    }

    fn details(&mut self, day: Day, domain: &str) -> Result<(Vec<PolicyRow>, Vec<FailureRow>)> {
        FetcherDb::details(self, day, domain)
    }

    fn visit_domains(
        &mut self,
        day: Day,
        visit: &mut crate::reader::DomainVisitor<'_>,
    ) -> Result<()> {
        reader::walked(FetcherDb::for_each_domain(
            self,
            day,
            reader::until_break(visit),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tlsrpt_datagram::parse;

    fn day(text: &str) -> Day {
        Day::parse(text).unwrap()
    }

    fn agg(day: Day, texts: &[&str]) -> Aggregate {
        let mut a = Aggregate::new();
        for t in texts {
            a.add(day, &parse(t.as_bytes()).unwrap());
        }
        a
    }

    const D: &str = r#"{"d":"a.example","pr":"v=TLSRPTv1;rua=mailto:r@a.example","policies":[{"policy-type":9,"failure-details":[{"c":201}],"t":1,"f":1}]}"#;

    #[test]
    fn writes_add_up_and_roll_over_to_yesterday() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (mut db, opened) = CollectorDb::open(&path).unwrap();
        assert_eq!(opened, Opened::Created);
        db.write(&agg(day("2026-11-21"), &[D, D])).unwrap();
        db.write(&agg(day("2026-11-21"), &[D])).unwrap();
        assert_eq!(db.newest_day().unwrap(), Some(day("2026-11-21")));
        let (db, stale) = db.rollover(day("2026-11-21")).unwrap();
        assert!(!stale);
        assert_eq!(db.newest_day().unwrap(), None);

        let f = FetcherDb::open(&yesterday_path(&path)).unwrap();
        assert_eq!(f.completed_day().unwrap(), Some(day("2026-11-21")));
        assert_eq!(f.domains(day("2026-11-21")).unwrap(), vec!["a.example"]);
        let (p, fl) = f.details(day("2026-11-21"), "a.example").unwrap();
        assert_eq!((p[0].total, p[0].failed), (3, 3));
        assert_eq!(fl[0].reason, r#"{"c": 201}"#);
        assert_eq!(fl[0].count, 3);
    }

    /// Another program may have written the file: a day column that holds
    /// no day is an error, not a day passed on.
    #[test]
    fn a_stored_day_that_is_no_day_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (db, _) = CollectorDb::open(&path).unwrap();
        db.rollover(day("2026-11-21")).unwrap();
        let yesterday = yesterday_path(&path);
        Connection::open(&yesterday)
            .unwrap()
            .execute(
                "UPDATE daystatus SET daycomplete = '2026-11-21; rm -rf /'",
                [],
            )
            .unwrap();
        let f = FetcherDb::open(&yesterday).unwrap();
        let error = f.completed_day().unwrap_err();
        assert!(matches!(error, StoreError::BadDay { .. }), "{error}");
        assert!(error.to_string().contains("is not a day"), "{error}");
    }

    #[test]
    fn every_domain_is_visited_once_with_the_same_rows_as_details() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (mut db, _) = CollectorDb::open(&path).unwrap();
        let other = D.replace("a.example", "b.example");
        let third = r#"{"d":"c.example","pr":"r","policies":[{"policy-type":2,"t":0,"f":0}]}"#;
        db.write(&agg(day("2026-11-21"), &[D, &other, third, D]))
            .unwrap();
        db.write(&agg(day("2026-11-20"), &[D])).unwrap();
        db.rollover(day("2026-11-21")).unwrap();
        let f = FetcherDb::open(&yesterday_path(&path)).unwrap();
        let mut seen = Vec::new();
        f.for_each_domain(day("2026-11-21"), |domain, policies, failures| {
            let (p, fl) = f.details(day("2026-11-21"), domain).unwrap();
            assert_eq!((policies, failures), (&p[..], &fl[..]), "{domain}");
            seen.push(domain.to_string());
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen, ["a.example", "b.example", "c.example"]);
    }

    #[test]
    fn a_foreign_database_is_refused_not_modified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE dbversion(version, installdate, purpose); \
             INSERT INTO dbversion VALUES (1, 'x', 'TLSRPT-Reportd-DB-devel-2024-10-28');",
        )
        .unwrap();
        drop(conn);
        let err = CollectorDb::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::WrongPurpose { .. }), "{err}");
        assert!(FetcherDb::open(&path).is_err());
    }

    #[test]
    fn missing_yesterday_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FetcherDb::open(&dir.path().join("nope.yesterday"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
