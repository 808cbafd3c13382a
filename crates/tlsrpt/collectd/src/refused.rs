//! Accounting for datagrams that cannot be counted, and for those counted
//! with a repair, without flooding the log: the first of each kind in a
//! period is logged in full (and dumped to `dump_path_for_invalid_datagram`),
//! the rest only as numbers in one summary line per period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tlsrpt_datagram::Invalid;

/// How often the summary of refused datagrams is logged.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

/// Longest excerpt of a bad datagram in the log.
const EXCERPT: usize = 200;

/// Refused and repaired datagrams of the current period.
pub struct Refused {
    dump_path: Option<PathBuf>,
    period_start: Instant,
    /// Refused datagrams per category in this period.
    refused: BTreeMap<&'static str, u64>,
    /// Datagrams counted despite a problem, per kind, in this period.
    warned: BTreeMap<&'static str, u64>,
    /// Everything refused since start.
    pub total_refused: u64,
}

impl Refused {
    pub fn new(dump_path: Option<PathBuf>, now: Instant) -> Refused {
        Refused {
            dump_path,
            period_start: now,
            refused: BTreeMap::new(),
            warned: BTreeMap::new(),
            total_refused: 0,
        }
    }

    /// `n` identical datagrams that cannot be counted.
    pub fn refuse(&mut self, error: &Invalid, bytes: &[u8], n: u64) {
        self.total_refused += n;
        let seen = self.refused.entry(error.category()).or_insert(0);
        let first = *seen == 0;
        *seen += n;
        if first {
            // Dump outside the log macro: its arguments are not evaluated when
            // the level is disabled.
            let dumped = self.dump(bytes);
            log::error!(
                "refused an invalid datagram ({error}), {} bytes: {}{}; further ones of this kind are only counted until the next summary",
                bytes.len(),
                excerpt(bytes),
                dumped
            );
        }
    }

    /// `n` identical datagrams counted despite a problem of kind `kind`.
    pub fn warn(&mut self, kind: &'static str, bytes: &[u8], n: u64) {
        let seen = self.warned.entry(kind).or_insert(0);
        let first = *seen == 0;
        *seen += n;
        if first {
            let dumped = self.dump(bytes);
            log::warn!(
                "counted a datagram despite: {kind}: {}{dumped}; further ones are only counted until the next summary",
                excerpt(bytes)
            );
        }
    }

    /// Log the summary of the period if it is over, and start a new one.
    pub fn maybe_summarize(&mut self, now: Instant) {
        if now.duration_since(self.period_start) < SUMMARY_PERIOD {
            return;
        }
        self.summarize();
        self.period_start = now;
    }

    /// Log what this period saw beyond the first of each kind.
    pub fn summarize(&mut self) {
        let refused: u64 = self.refused.values().sum();
        if refused > 0 {
            log::error!(
                "refused {refused} invalid datagrams in the last {} s ({}); {} since start",
                SUMMARY_PERIOD.as_secs(),
                per_kind(&self.refused),
                self.total_refused
            );
        }
        if !self.warned.is_empty() {
            log::warn!(
                "counted datagrams with problems in the last {} s ({})",
                SUMMARY_PERIOD.as_secs(),
                per_kind(&self.warned)
            );
        }
        self.refused.clear();
        self.warned.clear();
    }

    /// Write the datagram to the dump file (replacing the previous one, as
    /// upstream does) and say so for the log line. The file is private
    /// (0600: a datagram names other sites' mail servers) and a symbolic
    /// link there is not followed (the collector may run as root, and the
    /// content is a stranger's).
    fn dump(&self, bytes: &[u8]) -> String {
        let Some(path) = &self.dump_path else {
            return String::new();
        };
        let written = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(bytes)
        };
        match written() {
            Ok(()) => format!(" (saved to {})", path.display()),
            Err(e) => format!(" (could not save it to {}: {e})", path.display()),
        }
    }
}

/// `kind: count, ...` for a summary line.
fn per_kind(counts: &BTreeMap<&'static str, u64>) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    parts.join(", ")
}

/// A printable excerpt of a datagram for the log.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT)]);
    let mut out: String = text.escape_debug().collect();
    if bytes.len() > EXCERPT {
        out.push_str("...");
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_category_and_dumps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("bad");
        let mut r = Refused::new(Some(dump.clone()), Instant::now());
        let err = tlsrpt_datagram::parse(b"garbage").unwrap_err();
        r.refuse(&err, b"garbage", 1);
        r.refuse(&err, b"garbage2", 1);
        assert_eq!(r.total_refused, 2);
        assert_eq!(r.refused["invalid JSON"], 2);
        assert_eq!(std::fs::read(&dump).unwrap(), b"garbage");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dump).unwrap().permissions().mode() & 0o777,
            0o600
        );
        r.summarize();
        assert!(r.refused.is_empty());
        assert_eq!(r.total_refused, 2);
    }

    /// A symbolic link at the dump path is not followed: its target keeps
    /// its content.
    #[test]
    fn the_dump_does_not_follow_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let dump = dir.path().join("bad");
        std::os::unix::fs::symlink(&target, &dump).unwrap();
        let r = Refused::new(Some(dump.clone()), Instant::now());
        let said = r.dump(b"garbage");
        assert!(said.contains("could not save it"), "{said}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }
}
