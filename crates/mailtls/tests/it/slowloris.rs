//! Slowloris against the programs as they run under systemd's default
//! soft limit of 1 024 file descriptors: one client (127.0.0.2) opens
//! 1 100 connections and sends half a request head on each, and holds
//! them. Meanwhile the PostTLS login page and the collector's
//! `metrics_listen` keep answering another client (127.0.0.1) within two
//! seconds, and every unfinished head is closed within the head timeout.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Collector};

/// Slow connections the client opens.
const SLOW: usize = 1_100;
/// The soft limit of file descriptors systemd gives a service by default.
const FD_LIMIT: libc::rlim_t = 1_024;

/// A TCP connection from `from` (of 127/8) to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let address = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(to) = to else {
        panic!("an IPv4 address")
    };
    let (local, remote) = (address(from, 0), address(*to.ip(), to.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor the stream owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        // A listener whose queue is full leaves connect() waiting for
        // minutes; on Linux SO_SNDTIMEO bounds it.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// `SLOW` connections from 127.0.0.2 to `to`, each with the first half of
/// a request head.
fn half_open(to: SocketAddr, half: &[u8]) -> Vec<TcpStream> {
    (0..SLOW)
        .map(|_| {
            let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 2), to)
                .unwrap_or_else(|e| panic!("a slow connection: {e}"));
            let _ = stream.write_all(half);
            stream
        })
        .collect()
}

/// Asks `request` of `to` from 127.0.0.1 every quarter second for `during`:
/// each answer must start with `expected` and come within two seconds.
/// Returns how many were asked.
fn probe(to: SocketAddr, request: &str, expected: &str, during: Duration) -> usize {
    let started = Instant::now();
    let mut probes = 0;
    while started.elapsed() < during {
        let asked = Instant::now();
        let reply = connect_from(Ipv4Addr::LOCALHOST, to).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request.as_bytes())?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        });
        let took = asked.elapsed();
        match reply {
            Ok(reply) => assert!(
                reply.starts_with(expected),
                "probe {probes} after {:?}: {reply}",
                started.elapsed()
            ),
            Err(e) => panic!("probe {probes} after {:?}: {e}", started.elapsed()),
        }
        assert!(
            took < Duration::from_secs(2),
            "probe {probes} answered after {took:?}"
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    probes
}

/// How many of `streams` the server still holds open.
fn still_open(streams: &mut [TcpStream]) -> usize {
    streams
        .iter_mut()
        .map(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            let mut buf = [0u8; 1024];
            // 0 (closed), an answer (408/400, then closed) or a reset.
            matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .filter(|&open| open)
        .count()
}

/// Gives a child process systemd's default soft limit of descriptors.
fn limit_descriptors(command: &mut Command) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FD_LIMIT,
                rlim_max: FD_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn the_login_page_answers_while_one_client_holds_1100_unfinished_requests() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    };
    let mut web = limit_descriptors(
        Command::new(support::mailtls_bin())
            .args(["posttls", "web"])
            .arg(format!(
                "--database={}",
                dir.path().join("posttls.sqlite").display()
            ))
            .arg(format!(
                "--secret_key_file={}",
                dir.path().join("secret.key").display()
            ))
            .args([
                "--own_domains=example.org",
                "--notification_from=postmaster@example.org",
                "--base_url=https://posttls.example.org",
                "--instance=lab",
                "--cookie_secure=0",
                "--log_level=warn",
            ])
            .arg(format!("--listen=127.0.0.1:{port}"))
            .stderr(Stdio::null()),
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let web = Stopped(&mut web);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    support::wait_until(20, "the web process", || TcpStream::connect(addr).is_ok());
    let started = Instant::now();
    let mut slow = half_open(addr, b"GET /admin/login HTTP/1.1\r\nHost: p\r\nX-Slow: ");
    // Twice the head timeout (5 s) after the slow connections were made.
    let probes = probe(
        addr,
        "GET /admin/login HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 200",
        Duration::from_secs(12),
    );
    let open = still_open(&mut slow);
    eprintln!(
        "{probes} probes of the login page answered within 2 s over {:?}; {open} of {SLOW} unfinished requests still open",
        started.elapsed()
    );
    assert_eq!(open, 0, "unfinished request heads are closed");
    support::signal(web.0, libc::SIGTERM);
    assert!(web.0.wait().unwrap().success());
}

/// A child that is killed if the test ends early.
struct Stopped<'a>(&'a mut std::process::Child);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_collectors_metrics_answer_while_one_client_holds_1100_unfinished_requests() {
    let collector = Collector::start(&["--metrics_listen=127.0.0.1:0"], &[]);
    let limit = libc::rlimit {
        rlim_cur: FD_LIMIT,
        rlim_max: FD_LIMIT,
    };
    // SAFETY: prlimit on our own child, with a valid limit.
    let set = unsafe {
        libc::prlimit(
            collector.child.id() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let addr: SocketAddr = {
        let find = || {
            let text = collector.log_text();
            let rest = text.split("metrics at http://").nth(1)?;
            rest.split("/metrics").next()?.parse().ok()
        };
        support::wait_until(20, "the collector's metrics", || find().is_some());
        find().expect("found above")
    };
    let started = Instant::now();
    let mut slow = half_open(addr, b"GET /metrics HTTP/1.1\r\nHost: ");
    let probes = probe(
        addr,
        "GET /metrics HTTP/1.0\r\n\r\n",
        "HTTP/1.0 200 OK",
        Duration::from_secs(12),
    );
    let open = still_open(&mut slow);
    eprintln!(
        "{probes} scrapes answered within 2 s over {:?}; {open} of {SLOW} unfinished requests still open",
        started.elapsed()
    );
    assert_eq!(open, 0, "unfinished request heads are closed");
}
