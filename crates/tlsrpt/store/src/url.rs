//! Storage URLs as the upstream accepts them: `sqlite:///absolute/path`,
//! several separated by commas, percent-encoding allowed.

use std::path::PathBuf;

use crate::StoreError;

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
                "unsupported scheme {scheme:?}; use sqlite:///path/to/file.sqlite"
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
