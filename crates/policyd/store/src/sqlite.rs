//! The cache in one SQLite file. A rollback journal rather than WAL: the
//! web pages read the file as another user, which WAL would oblige to
//! write its shared-memory file; writes are one per fetch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::{Access, Backend, Result, Row, StoreError};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS policyd_policies (
    domain TEXT PRIMARY KEY NOT NULL,
    policy_id TEXT,
    policy TEXT,
    fetched_at INTEGER,
    expires_at INTEGER,
    last_failed_fetch INTEGER,
    last_error TEXT,
    updated_at INTEGER NOT NULL)";

const INDEX: &str =
    "CREATE INDEX IF NOT EXISTS policyd_policies_updated ON policyd_policies (updated_at)";

const COLUMNS: &str =
    "domain, policy_id, policy, fetched_at, expires_at, last_failed_fetch, last_error, updated_at";

pub struct SqliteBackend {
    path: PathBuf,
    conn: Connection,
}

impl SqliteBackend {
    pub fn open(path: &Path, access: Access) -> Result<SqliteBackend> {
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = match access {
            Access::Writer => Connection::open(path),
            Access::Reader => Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
        }
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        if access == Access::Writer {
            conn.execute_batch(SCHEMA).map_err(err)?;
        }
        // A file of another program (or an older layout) is refused rather
        // than misread.
        if conn
            .prepare(&format!("SELECT {COLUMNS} FROM policyd_policies LIMIT 0"))
            .is_err()
        {
            return Err(StoreError::NotOurs(path.to_path_buf()));
        }
        if access == Access::Writer {
            conn.execute_batch(INDEX).map_err(err)?;
        }
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        domain: r.get(0)?,
        policy_id: r.get(1)?,
        policy: r.get(2)?,
        fetched_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_failed_fetch: r.get(5)?,
        last_error: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

impl Backend for SqliteBackend {
    fn get(&mut self, domain: &str) -> Result<Option<Row>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM policyd_policies WHERE domain = ?1"),
                [domain],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn put(&mut self, r: &Row) -> Result<()> {
        self.conn
            .execute(
                &format!("INSERT OR REPLACE INTO policyd_policies ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    r.domain,
                    r.policy_id,
                    r.policy,
                    r.fetched_at,
                    r.expires_at,
                    r.last_failed_fetch,
                    r.last_error,
                    r.updated_at
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    fn recent(&mut self, limit: usize) -> Result<Vec<Row>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = (|| {
            let mut statement = self.conn.prepare(&format!(
                "SELECT {COLUMNS} FROM policyd_policies ORDER BY updated_at DESC, domain LIMIT ?1"
            ))?;
            let rows = statement.query_map([limit], row)?;
            rows.collect::<rusqlite::Result<Vec<Row>>>()
        })();
        result.map_err(|e| self.err(e))
    }

    fn delete_stale(&mut self, expired_before: i64, failed_before: i64) -> Result<u64> {
        self.conn
            .execute(
                "DELETE FROM policyd_policies
                 WHERE coalesce(expires_at, 0) < ?1 AND coalesce(last_failed_fetch, 0) < ?2",
                params![expired_before, failed_before],
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}
