//! Shared helpers of the integration tests: the programs under test, the
//! shared test vectors, the upstream oracle, a collector started in a
//! private directory, a private Postfix ([`postfix`]), an SMTP sink
//! ([`smtp_sink`]) and an HTTPS server for uploads ([`https_sink`]).
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod https_sink;
pub mod postfix;
pub mod reportd;
pub mod smtp_sink;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The captured fixtures in the repository (`tests/fixtures/README.md`).
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The datagram vectors captured from real libtlsrpt, by file name.
pub fn vectors() -> Vec<(String, Vec<u8>)> {
    let dir = fixtures().join("datagrams");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 9,
        "expected the 9 libtlsrpt vectors in {}",
        dir.display()
    );
    out
}

/// A file of the upstream reference outputs.
pub fn reference(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("reference").join(name)).unwrap()
}

/// A program of the upstream Python reporter from the oracle venv. The test
/// command installs it (scripts/setup-oracle); a missing oracle is a failure,
/// never a skip.
pub fn upstream(program: &str) -> PathBuf {
    let path = repo().join(".venv/bin").join(program);
    assert!(
        path.exists(),
        "the upstream oracle {} is missing: run scripts/setup-oracle (the README's test command does)",
        path.display()
    );
    path
}

pub fn collectd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsrpt-collectd"))
}

pub fn fetcher_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tlsrpt-fetcher"))
}

pub fn mailtls_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailtls"))
}

/// Send one datagram, retrying briefly while the receiver's queue is full
/// (tests want every datagram delivered; loss is the benchmark's business).
/// The send buffer is raised so that datagrams beyond the collector's
/// maximum (256 KiB) can be sent too.
pub fn send(socket: &Path, bytes: &[u8]) {
    let s = UnixDatagram::unbound().unwrap();
    raise_send_buffer(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.send_to(bytes, socket) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("send to {}: {e}", socket.display()),
        }
    }
}

/// As large a send buffer as the kernel allows an unprivileged process
/// (`net.core.wmem_max`, doubled: about 416 KiB by default).
pub fn raise_send_buffer(s: &UnixDatagram) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 1 << 20;
    // SAFETY: setsockopt reads a c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_SNDBUF: {}", std::io::Error::last_os_error());
}

/// Wait until `cond` holds, or panic after `secs` seconds with `what`.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
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
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("collectd.socket");
        let db = dir.path().join("collectd.sqlite");
        let log = dir.path().join("collectd.log");
        let mut cmd = Command::new(program);
        cmd.arg(format!("--storage=sqlite://{}", db.display()))
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

/// Sum of `cntrtotal` in a store file (0 for an empty or missing table).
pub fn total_count(db: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT coalesce(sum(cntrtotal), 0) FROM finalresults",
        [],
        |r| r.get(0),
    )
    .unwrap()
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
