//! What the integration tests of every crate share, so that no test
//! carries its own copy: the repository's captured fixtures and the
//! upstream oracles ([`upstream`], [`venv_python`]), a throwaway TLS CA
//! ([`tls`]), an HTTPS server for uploads ([`https_sink`]), an SMTP server
//! ([`smtp_sink`]), private Postfix instances ([`postfix`]) and PostgreSQL
//! clusters ([`postgres`]), and small
//! helpers to run commands, wait and send datagrams.

pub mod https_sink;
pub mod lab;
pub mod postfix;
pub mod postgres;
pub mod posttls;
pub mod smtp_sink;
pub mod tls;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that nothing listens on just now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

/// The Python of `.venv`, where `scripts/setup-oracle` puts the upstream
/// reporter, dkimpy and parsedmarc. Missing is a failure, never a skip.
pub fn venv_python() -> PathBuf {
    upstream("python")
}

/// Runs a program with `input` on stdin; panics with its stderr unless it
/// exits 0, and returns its stdout as text.
pub fn run_text(program: impl AsRef<std::ffi::OsStr>, args: &[&str], input: &[u8]) -> String {
    String::from_utf8(run(program, args, input)).expect("the output is UTF-8")
}

/// Runs a program with `input` on stdin; panics with its stderr unless it
/// exits 0, and returns its stdout.
pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], input: &[u8]) -> Vec<u8> {
    let program = program.as_ref();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {program:?}: {err}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program:?} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
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

/// A private key made by the `openssl` command (`genpkey` with
/// `genpkey_args`), written to `directory/name`.
pub fn openssl_key(directory: &Path, name: &str, genpkey_args: &[&str]) -> PathBuf {
    let path = directory.join(name);
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey_args);
    args.extend_from_slice(&["-out", path.to_str().unwrap()]);
    run("openssl", &args, b"");
    path
}

/// The headers a report mail's DKIM signature must cover: the ones RFC
/// 8460 section 5.3 names (subject, TLS-Report-Domain, TLS-Report-Submitter)
/// and those no signer should leave out.
pub const DKIM_SIGNED_HEADERS: [&str; 7] = [
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "tls-report-domain",
    "tls-report-submitter",
];

/// What `promtool check metrics` (Prometheus's linter of the text
/// exposition) finds wrong with `exposition`: empty when nothing. Panics
/// when promtool is missing, so that no metrics test passes unchecked;
/// `scripts/test` installs it (Debian's `prometheus` package).
pub fn promtool_problems(exposition: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): scripts/test installs it (apt-get install prometheus)"
            )
        });
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("promtool {}: {said}", out.status)
    }
}
