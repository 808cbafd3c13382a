//! Storage URLs as the upstream accepts them: `sqlite:///absolute/path`,
//! several separated by commas, percent-encoding allowed; and ours,
//! `postgresql://` for the fleet's shared database.

use std::path::{Path, PathBuf};

use crate::postgres::PgUrl;
use crate::StoreError;

/// One configured store: a SQLite file of this host (upstream's format), or
/// the PostgreSQL database a fleet of collectors shares.
#[derive(Debug, Clone)]
pub enum Storage {
    Sqlite(StorageUrl),
    Postgres(Box<PgUrl>),
}

impl Storage {
    /// How the store is named in messages: the file, or the URL without
    /// its password.
    pub fn name(&self) -> String {
        match self {
            Storage::Sqlite(url) => url.path.display().to_string(),
            Storage::Postgres(url) => url.shown().to_string(),
        }
    }

    /// The SQLite file's URL, for what only exists for files (the
    /// `.yesterday` file, the rollover script).
    pub fn sqlite(&self) -> Option<&StorageUrl> {
        match self {
            Storage::Sqlite(url) => Some(url),
            Storage::Postgres(_) => None,
        }
    }
}

/// `storage` as configured: comma-separated URLs, `sqlite:` as upstream's
/// and `postgresql://` (libpq's URI syntax, one host: a comma ends the
/// URL), whose password may come from `password_file`.
pub fn parse_storages(
    list: &str,
    password_file: Option<&Path>,
) -> Result<Vec<Storage>, StoreError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|url| {
            if url.starts_with("postgresql://") || url.starts_with("postgres://") {
                Ok(Storage::Postgres(Box::new(PgUrl::parse(
                    url,
                    password_file,
                )?)))
            } else {
                StorageUrl::parse(url).map(Storage::Sqlite)
            }
        })
        .collect()
}

/// One configured store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrl {
    /// The URL as configured (passed to the daily rollover script).
    pub url: String,
    /// The database file of the running day.
    pub path: PathBuf,
}

impl StorageUrl {
    pub fn parse(url: &str) -> Result<StorageUrl, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let decoded = mailtls_common::percent::decode(url).map_err(|e| bad(&e.to_string()))?;
        let Some(rest) = decoded.strip_prefix("sqlite:") else {
            let scheme = decoded.split(':').next().unwrap_or_default();
            return Err(bad(&format!(
                "unsupported scheme {scheme:?}; use sqlite:///path/to/file.sqlite or postgresql://USER@HOST/DATABASE"
            )));
        };
        let path = if let Some(absolute) = rest.strip_prefix("//") {
            if !absolute.starts_with('/') {
                return Err(bad("a host part is not supported; use sqlite:///path/to/file.sqlite (three slashes)"));
            }
            absolute
        } else {
            rest
        };
        if path.is_empty() || path.ends_with('/') {
            return Err(bad("no database file name"));
        }
        Ok(StorageUrl {
            url: url.to_string(),
            path: PathBuf::from(path),
        })
    }
}

/// Parse a comma-separated list of storage URLs; empty items are skipped as
/// upstream does.
pub fn parse_storage_list(list: &str) -> Result<Vec<StorageUrl>, StoreError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(StorageUrl::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_upstream_forms() {
        let u = StorageUrl::parse("sqlite:///var/lib/tlsrpt/collectd.sqlite").unwrap();
        assert_eq!(u.path, PathBuf::from("/var/lib/tlsrpt/collectd.sqlite"));
        let u = StorageUrl::parse("sqlite:///tmp/with%20space.sqlite").unwrap();
        assert_eq!(u.path, PathBuf::from("/tmp/with space.sqlite"));
        let u = StorageUrl::parse("sqlite:run/local.sqlite").unwrap();
        assert_eq!(u.path, PathBuf::from("run/local.sqlite"));
        let list = parse_storage_list("sqlite:///a.sqlite,,sqlite:///b.sqlite").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn postgresql_urls_are_ours_beside_sqlite() {
        let list = parse_storages(
            "sqlite:///a.sqlite, postgresql://tlsrpt:secret@db.example:5433/tlsrpt?sslmode=prefer",
            None,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].sqlite().is_some());
        assert_eq!(
            list[1].name(),
            "postgresql://tlsrpt:***@db.example:5433/tlsrpt?sslmode=prefer"
        );
        assert!(parse_storages("postgresql://db.example", None).is_err());
        assert!(parse_storages("mysql://db.example/x", None).is_err());
    }

    #[test]
    fn refuses_what_would_go_wrong() {
        for bad in [
            "postgres://x/y",
            "sqlite://host/x",
            "sqlite:///dir/",
            "sqlite:///x%zz",
        ] {
            assert!(StorageUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
