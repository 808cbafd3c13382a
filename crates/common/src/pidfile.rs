//! A pid file that is written at start and removed when the daemon exits.

use std::path::PathBuf;

/// Holds the pid file for the life of the daemon; dropping it removes the file.
/// An empty name means no pid file, as upstream.
pub struct PidFile {
    path: Option<PathBuf>,
}

impl PidFile {
    /// Write our pid to `name`. Failure is logged, not fatal, as upstream:
    /// a daemon should not refuse to receive mail reports over a pid file.
    pub fn create(name: &str) -> PidFile {
        if name.is_empty() {
            return PidFile { path: None };
        }
        let path = PathBuf::from(name);
        match std::fs::write(&path, format!("{}\n", std::process::id())) {
            Ok(()) => PidFile { path: Some(path) },
            Err(e) => {
                log::warn!("cannot write pid file {}: {e}", path.display());
                PidFile { path: None }
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove pid file {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_holds_our_pid_and_goes_away_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        let pid = PidFile::create(path.to_str().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(pid);
        assert!(!path.exists());
    }
}
