//! The persistent policy cache of `mailtls policyd` (the `database`
//! option): per domain, the last MTA-STS policy fetched and the last failed
//! fetch, so that a restart keeps applying a policy whose host is down
//! (RFC 8461 section 3.3: a valid cached policy MUST be applied) and a fleet
//! of policy servers fetches each policy once.
//!
//! One facade, [`PolicyDb`], over two backends that only store rows
//! ([`sqlite`], [`postgres`]); what a row means is decided here, once:
//!
//! - A policy is kept as its lines and re-parsed when read, so that a row
//!   another process wrote is checked like a fetched body: a row that is
//!   not a valid policy, or claims to be fetched in the future, is
//!   treated as absent (a hostile row cannot make policyd enforce
//!   anything a policy host did not serve).
//! - Rows whose policy expired and whose last failure is older than the
//!   retry interval mean nothing any more: [`PolicyDb::prune`] removes
//!   them, so a flood of domains with `_mta-sts` records does not grow
//!   the database without bound.

pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use mailtls_postgres::{PgError, PgUrl};
use policyd_policy::cache::FETCH_RETRY_SECS;
use policyd_policy::{CachedPolicy, StsPolicy};

/// What is known of one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub policy: Option<CachedPolicy>,
    pub last_failed_fetch: Option<DateTime<Utc>>,
    /// Why that fetch failed, for the Outbound TLS view.
    pub last_error: Option<String>,
}

/// A stored row, as the backends keep it: times in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub domain: String,
    pub policy_id: Option<String>,
    /// The policy's lines, each ended by LF.
    pub policy: Option<String>,
    pub fetched_at: Option<i64>,
    /// Informational (pruning): the expiry is computed anew when read.
    pub expires_at: Option<i64>,
    pub last_failed_fetch: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

/// What a backend does: rows in, rows out.
pub trait Backend: Send {
    fn get(&mut self, domain: &str) -> Result<Option<Row>>;
    /// Inserts or replaces the row of `row.domain`.
    fn put(&mut self, row: &Row) -> Result<()>;
    /// At most `limit` rows, the most recently updated first.
    fn recent(&mut self, limit: usize) -> Result<Vec<Row>>;
    /// Removes the rows with no policy valid at `expired_before` and no
    /// failure at or after `failed_before`.
    fn delete_stale(&mut self, expired_before: i64, failed_before: i64) -> Result<u64>;
}

/// A clock skew between a fleet's hosts tolerated in `fetched_at`.
const FUTURE_SKEW_SECS: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("password_file is only for a postgresql:// database, not the SQLite file {0}")]
    PasswordForSqlite(PathBuf),
    #[error("SQLite {0}: not a policyd cache (its table has other columns)")]
    NotOurs(PathBuf),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where the cache is kept: the `database` option.
#[derive(Debug, Clone)]
pub enum Database {
    /// One SQLite file, for the policy server of one host.
    Sqlite(PathBuf),
    /// One PostgreSQL database that a fleet's policy servers share.
    Postgres(Box<PgUrl>),
}

impl Database {
    /// `database` as configured: a `postgresql://` (or `postgres://`) URL,
    /// its password from `password_file` when one is given, or else the
    /// path of a SQLite file.
    pub fn parse(database: &str, password_file: Option<&Path>) -> Result<Database> {
        if database.starts_with("postgresql://") || database.starts_with("postgres://") {
            return Ok(Database::Postgres(Box::new(PgUrl::parse(
                database,
                password_file,
            )?)));
        }
        if password_file.is_some() {
            return Err(StoreError::PasswordForSqlite(PathBuf::from(database)));
        }
        Ok(Database::Sqlite(PathBuf::from(database)))
    }
}

impl std::fmt::Display for Database {
    /// The path, or the URL without its password: for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(url.shown()),
        }
    }
}

/// Who opens the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The policy server: creates and migrates the schema.
    Writer,
    /// The web pages: read only; the schema must be there.
    Reader,
}

/// The cache, over either backend.
pub struct PolicyDb {
    backend: Box<dyn Backend>,
}

impl PolicyDb {
    pub fn open(database: &Database, access: Access) -> Result<PolicyDb> {
        let backend: Box<dyn Backend> = match database {
            Database::Sqlite(path) => Box::new(sqlite::SqliteBackend::open(path, access)?),
            Database::Postgres(url) => Box::new(postgres::PgBackend::open(url, access)?),
        };
        Ok(PolicyDb { backend })
    }

    /// The entry of `domain`, if a valid one is stored (see the module
    /// notes for what is not valid).
    pub fn get(&mut self, domain: &str, now: DateTime<Utc>) -> Result<Option<Entry>> {
        Ok(self
            .backend
            .get(domain)?
            .and_then(|row| entry_of(row, now))
            .map(|(_, entry)| entry))
    }

    /// Stores `entry` as what is known of `domain` at `now`.
    pub fn put(&mut self, domain: &str, entry: &Entry, now: DateTime<Utc>) -> Result<()> {
        self.backend.put(&row_of(domain, entry, now))
    }

    /// At most `limit` valid entries, the most recently updated first.
    pub fn recent(&mut self, limit: usize, now: DateTime<Utc>) -> Result<Vec<(String, Entry)>> {
        Ok(self
            .backend
            .recent(limit)?
            .into_iter()
            .filter_map(|row| entry_of(row, now))
            .collect())
    }

    /// Removes what no longer matters at `now`: rows whose policy has
    /// expired and whose last failure is older than [`FETCH_RETRY_SECS`].
    /// Returns how many.
    pub fn prune(&mut self, now: DateTime<Utc>) -> Result<u64> {
        let now = now.timestamp();
        self.backend.delete_stale(now, now - FETCH_RETRY_SECS)
    }
}

fn row_of(domain: &str, entry: &Entry, now: DateTime<Utc>) -> Row {
    let policy = entry.policy.as_ref();
    Row {
        domain: domain.to_string(),
        policy_id: policy.map(|p| p.id.clone()),
        policy: policy.map(|p| {
            p.policy
                .lines()
                .iter()
                .map(|line| format!("{line}\n"))
                .collect()
        }),
        fetched_at: policy.map(|p| p.fetched_at.timestamp()),
        expires_at: policy.map(|p| p.expires_at.timestamp()),
        last_failed_fetch: entry.last_failed_fetch.map(|t| t.timestamp()),
        last_error: entry.last_error.clone(),
        updated_at: now.timestamp(),
    }
}

/// The entry a row holds, checked as the module notes say; `None` for a
/// row that holds nothing valid.
fn entry_of(row: Row, now: DateTime<Utc>) -> Option<(String, Entry)> {
    let time = |secs: i64| Utc.timestamp_opt(secs, 0).single();
    let latest = now.timestamp() + FUTURE_SKEW_SECS;
    let policy = match (row.policy_id, row.policy, row.fetched_at) {
        (Some(id), Some(body), Some(fetched)) if fetched <= latest => {
            let policy = StsPolicy::parse(body.as_bytes()).ok()?;
            Some(CachedPolicy::new(id, policy, time(fetched)?))
        }
        (None, None, None) => None,
        _ => return None,
    };
    let last_failed_fetch = row
        .last_failed_fetch
        .filter(|t| *t <= latest)
        .and_then(time);
    if policy.is_none() && last_failed_fetch.is_none() {
        return None;
    }
    Some((
        row.domain,
        Entry {
            policy,
            last_failed_fetch,
            last_error: row.last_error,
        },
    ))
}

#[cfg(test)]
mod tests;
