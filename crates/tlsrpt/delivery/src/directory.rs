//! `directory:` destinations: the report stored as a file, for archives,
//! tests and other programs to pick up.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::Outcome;

/// Writes the uncompressed report JSON into one directory.
///
/// The file is `tlsrpt-DOMAIN-REPORTID.json`. The upstream names it
/// `tlsrpt-DOMAIN-N-RANDOM.json` (N its database row) and so leaves one more
/// file behind for every attempt that it repeats; our name depends only on
/// the report, so an attempt made again replaces the file with the same
/// content. Two destinations that name the same directory share the file.
/// Characters that do not belong in a file name are percent-encoded, which
/// keeps names of different reports different.
///
/// The report id repeats the domain, so a domain of more than about 107
/// bytes (DNS allows 253) would give a name over the 255 bytes a Linux file
/// system allows. Such a name is cut to its first [`KEPT_OF_LONG_NAME`]
/// bytes and ends in `~` and 32 hex digits of the SHA-256 of the whole
/// name, so that it fits and two reports never share a file.
///
/// The file appears complete or not at all: it is written under a temporary
/// name in the same directory and renamed, and is on disk before the
/// delivery counts as done.
#[derive(Debug, Clone)]
pub struct Directory {
    path: PathBuf,
}

impl Directory {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Directory { path: path.into() }
    }

    /// The file that [`store`](Self::store) writes for this report.
    pub fn file_for(&self, report_domain: &str, report_id: &str) -> PathBuf {
        let stem = format!(
            "tlsrpt-{}-{}",
            file_name_safe(report_domain),
            file_name_safe(report_id)
        );
        self.path.join(fitting_name(&stem))
    }

    /// Every failure (missing directory, permissions, full disk) is
    /// [`Outcome::RetryLater`]: all of them are the operator's to fix.
    pub fn store(&self, report_domain: &str, report_id: &str, report_json: &[u8]) -> Outcome {
        match self.store_unsynced(report_domain, report_id, report_json) {
            Outcome::Delivered(text) => match self.sync() {
                Ok(()) => Outcome::Delivered(text),
                Err(err) => Outcome::RetryLater(format!(
                    "cannot flush {} to disk: {err}",
                    self.path.display()
                )),
            },
            other => other,
        }
    }

    /// [`store`](Self::store) without waiting for the disk: for many
    /// reports at once, followed by one [`sync`](Self::sync) before any of
    /// them is recorded as delivered.
    pub fn store_unsynced(
        &self,
        report_domain: &str,
        report_id: &str,
        report_json: &[u8],
    ) -> Outcome {
        let target = self.file_for(report_domain, report_id);
        match write_atomically(&self.path, &target, report_json) {
            Ok(()) => Outcome::Delivered(format!("stored as {}", target.display())),
            Err(err) => Outcome::RetryLater(format!("cannot store {}: {err}", target.display())),
        }
    }

    /// Flushes everything written to the directory's file system to disk
    /// (`syncfs`): one wait for a whole batch of files instead of one per
    /// file.
    pub fn sync(&self) -> std::io::Result<()> {
        let directory = File::open(&self.path)?;
        // SAFETY: syncfs only reads the descriptor, which lives until the
        // end of this function.
        if unsafe { libc::syncfs(directory.as_raw_fd()) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        directory.sync_all()
    }
}

/// Writes under a temporary name and renames, so the file appears
/// complete or not at all.
fn write_atomically(directory: &Path, target: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = NamedTempFile::new_in(directory)?;
    file.write_all(contents)?;
    file.persist(target).map_err(|err| err.error)?;
    Ok(())
}

/// The longest file name Linux file systems take (`NAME_MAX`), in bytes.
const NAME_MAX: usize = 255;

/// Bytes of a long name kept before its hash (`~` and 32 hex digits) and
/// `.json`: what fills [`NAME_MAX`].
pub const KEPT_OF_LONG_NAME: usize = NAME_MAX - 1 - 32 - ".json".len();

/// `STEM.json` when it fits [`NAME_MAX`]; otherwise the first
/// [`KEPT_OF_LONG_NAME`] bytes of the stem, `~`, the first 128 bits of the
/// SHA-256 of the stem in hex, and `.json`. (The stem is ASCII: see
/// [`file_name_safe`].)
fn fitting_name(stem: &str) -> String {
    let plain = format!("{stem}.json");
    if plain.len() <= NAME_MAX {
        return plain;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(stem.as_bytes());
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}~{hash}.json", &stem[..KEPT_OF_LONG_NAME])
}

/// Keeps letters, digits and `-_.:@+=` and percent-encodes every other byte
/// (`%` and `/` included).
fn file_name_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        match byte {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b':'
            | b'@'
            | b'+'
            | b'=' => safe.push(char::from(byte)),
            _ => safe.push_str(&format!("%{byte:02X}")),
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_readable_and_cannot_escape_the_directory() {
        let directory = Directory::new("/var/spool/tlsrpt");
        assert_eq!(
            directory.file_for("example.com", "2026-11-21T00:00:00Z_idx1_example.com"),
            Path::new(
                "/var/spool/tlsrpt/tlsrpt-example.com-2026-11-21T00:00:00Z_idx1_example.com.json"
            )
        );
        assert_eq!(
            directory.file_for("../x", "a/b%c"),
            Path::new("/var/spool/tlsrpt/tlsrpt-..%2Fx-a%2Fb%25c.json")
        );
    }
}
