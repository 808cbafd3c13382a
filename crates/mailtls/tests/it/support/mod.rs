//! Helpers of the programs' integration tests: the programs under test, a
//! collector started in a private directory, and the report daemon
//! ([`reportd`]); with everything of `mailtls-test-support` (fixtures,
//! oracles, test servers, Postfix instances).

pub mod reportd;

pub use mailtls_test_support::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn collectd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsrpt-collectd"))
}

pub fn fetcher_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsrpt-fetcher"))
}

pub fn mailtls_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailtls"))
}

/// A collector (ours or upstream) running in its own directory.
pub struct Collector {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub socket: PathBuf,
    pub db: PathBuf,
    pub log: PathBuf,
}

impl Collector {
    /// Start `program` with storage and socket in a fresh directory, plus
    /// `args` and `env`.
    pub fn start_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Collector {
        Collector::spawn(program, None, None, args, env)
    }

    /// Our collector counting into `storage` with its socket at `socket`
    /// (such as the one in a lab Postfix's spool).
    pub fn start_at(storage: &str, socket: &Path, args: &[&str]) -> Collector {
        Collector::spawn(&collectd_bin(), Some(storage), Some(socket), args, &[])
    }

    /// Our collector counting into `storage` (such as a postgresql://
    /// URL) instead of its own SQLite file.
    pub fn start_with_storage(storage: &str, args: &[&str]) -> Collector {
        Collector::spawn(&collectd_bin(), Some(storage), None, args, &[])
    }

    fn spawn(
        program: &Path,
        storage: Option<&str>,
        socket: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let socket = match socket {
            Some(socket) => socket.to_path_buf(),
            None => dir.path().join("collectd.socket"),
        };
        let db = dir.path().join("collectd.sqlite");
        let log = dir.path().join("collectd.log");
        let storage = match storage {
            Some(storage) => storage.to_string(),
            None => format!("sqlite://{}", db.display()),
        };
        let mut cmd = Command::new(program);
        cmd.arg(format!("--storage={storage}"))
            .arg(format!("--socketname={}", socket.display()))
            .arg(format!("--logfilename={}", log.display()))
            .arg("--log_level=debug")
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut c = Collector {
            dir,
            child,
            socket,
            db,
            log,
        };
        let socket = c.socket.clone();
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = c.child.try_wait().unwrap() {
                panic!("collector exited at start with {status}: {}", c.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        c
    }

    /// Our collector.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Collector {
        Collector::start_program(&collectd_bin(), args, env)
    }

    pub fn send(&self, bytes: &[u8]) {
        send(&self.socket, bytes);
    }

    pub fn storage_url(&self) -> String {
        format!("sqlite://{}", self.db.display())
    }

    pub fn yesterday(&self) -> PathBuf {
        PathBuf::from(format!("{}.yesterday", self.db.display()))
    }

    pub fn signal(&self, sig: i32) {
        signal(&self.child, sig);
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(30)
    }

    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("collector did not exit: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of `cntrtotal` in a store file, or `None` while it cannot be read
/// (upstream removes `.yesterday` and then renames: a short gap).
pub fn try_total(db: &Path) -> Option<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row(
        "SELECT coalesce(sum(cntrtotal), 0) FROM finalresults",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Sum of `cntrtotal` in a store file (0 for an empty table).
pub fn total_count(db: &Path) -> i64 {
    try_total(db).unwrap_or_else(|| panic!("cannot read {}", db.display()))
}

/// Run a fetcher; returns (exit code, stdout, stderr).
pub fn run_fetcher(program: &Path, storage: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program)
        .arg(format!("--storage={storage}"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
