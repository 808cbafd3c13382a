//! The `metrics_listen` endpoint of the daemons without a web server
//! (`tlsrpt-collectd`, `tlsrpt-reportd`, `posttls worker`): a thread that
//! accepts connections and one short-lived thread per connection that
//! answers `GET /metrics` with the Prometheus text exposition, HTTP/1.0.
//!
//! It is deliberately small: Prometheus is the only client, so there is no
//! keep-alive, no chunking and no other path. A client gets at most
//! [`Limits::deadline`] to send at most [`MAX_REQUEST_HEAD`] bytes of
//! request head, and as long again to take the answer; at most
//! [`Limits::max_connections`] connections are served at once (further ones
//! wait in the kernel's queue) and at most a quarter of them (at least one)
//! of one client address, so a client that holds connections open with
//! unfinished requests ("slowloris") cannot keep Prometheus out. Whatever a
//! client does, the threads that serve it are their own, so the program's
//! work (the collector's receive path above all) never waits for a scrape. What is served comes from a `render` function of the program,
//! which only reads counters (or the database); when it fails, the answer
//! is 500 and the reason is logged.
//!
//! [`answer`] (the request head to the response) is pure; [`spawn`] does
//! the I/O. [`registry`] and [`text`] are how every program (the web pages
//! too) registers its metrics and writes them.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A registry of `metrics`, whose names must differ.
pub fn registry(metrics: Vec<Box<dyn prometheus::core::Collector>>) -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    for metric in metrics {
        registry.register(metric).expect("distinct names");
    }
    registry
}

/// The text exposition of every metric in `registry`.
pub fn text(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("the text format of valid metrics")
}

/// The Content-Type of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The only path served.
pub const PATH: &str = "/metrics";

/// Largest request head read (request line and headers); Prometheus sends
/// a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How many connections the endpoint serves, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (`metrics_max_connections`); a client
    /// address gets a quarter of them, at least one.
    pub max_connections: usize,
    /// Time a client has to send its request head, and then to take the
    /// answer (`metrics_request_timeout`).
    pub deadline: Duration,
}

impl Default for Limits {
    /// 8 connections (Prometheus scrapes with one; an HA pair with two),
    /// 2 of one address, 5 s (Prometheus sends its request at once).
    fn default() -> Self {
        Limits {
            max_connections: 8,
            deadline: Duration::from_secs(5),
        }
    }
}

impl Limits {
    /// Connections of one client address at once.
    pub fn max_per_client(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the metrics.
    Metrics,
    /// 404: another path.
    NotFound,
    /// 405: `/metrics` with another method than GET.
    MethodNotAllowed,
    /// 400: not an HTTP request line, or a head that is too long.
    BadRequest,
}

impl Answer {
    fn status_line(self) -> &'static str {
        match self {
            Answer::Metrics => "HTTP/1.0 200 OK",
            Answer::NotFound => "HTTP/1.0 404 Not Found",
            Answer::MethodNotAllowed => "HTTP/1.0 405 Method Not Allowed",
            Answer::BadRequest => "HTTP/1.0 400 Bad Request",
        }
    }
}

/// The answer to a complete request head (only its request line matters).
pub fn answer(head: &[u8]) -> Answer {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Answer::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Answer::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (path == PATH, method == "GET") {
        (true, true) => Answer::Metrics,
        (true, false) => Answer::MethodNotAllowed,
        (false, _) => Answer::NotFound,
    }
}

/// The whole response for `answer`; `render` is called only for
/// [`Answer::Metrics`].
pub fn response(answer: Answer, render: impl FnOnce() -> Result<String, String>) -> Vec<u8> {
    let (status, content_type, body, allow) = match answer {
        Answer::Metrics => match render() {
            Ok(text) => (answer.status_line(), CONTENT_TYPE, text, ""),
            Err(why) => {
                log::error!("metrics: {why}");
                (
                    "HTTP/1.0 500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    "metrics unavailable; see the log\n".to_owned(),
                    "",
                )
            }
        },
        Answer::MethodNotAllowed => (
            answer.status_line(),
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
            "Allow: GET\r\n",
        ),
        Answer::NotFound => (
            answer.status_line(),
            "text/plain; charset=utf-8",
            format!("not found; the metrics are at {PATH}\n"),
            "",
        ),
        Answer::BadRequest => (
            answer.status_line(),
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
            "",
        ),
    };
    let mut out = format!(
        "{status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Where a request head ends: after the first empty line.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        if bytes[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if bytes[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Reads a request head within `deadline`; `None` when the client
/// sent too much (answered with 400). An error when it was too slow or
/// went away (the connection is just closed).
fn read_head(stream: &mut TcpStream, deadline: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + deadline;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

fn serve_one(
    stream: &mut TcpStream,
    deadline: Duration,
    render: &dyn Fn() -> Result<String, String>,
) -> io::Result<()> {
    let answer = match read_head(stream, deadline)? {
        Some(head) => answer(&head),
        None => Answer::BadRequest,
    };
    stream.set_write_timeout(Some(deadline))?;
    stream.write_all(&response(answer, render))?;
    stream.flush()
}

/// The connections being served: in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Binds `listen` (an error here stops the program at start) and serves
/// `GET /metrics` with `render()` within `limits` for the rest of the
/// process's life. Returns the bound address (port 0 picks a free one).
pub fn spawn(
    listen: SocketAddr,
    limits: Limits,
    render: impl Fn() -> Result<String, String> + Send + Sync + 'static,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let bound = listener.local_addr()?;
    let render = Arc::new(render);
    let open = Arc::new((Mutex::new(Open::default()), Condvar::new()));
    let max = limits.max_connections.max(1);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            leave_signals_to_other_threads();
            loop {
                // A free place first: until then, connections wait in the
                // kernel's queue and use no descriptor of ours.
                {
                    let (lock, freed) = &*open;
                    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
                    while state.total >= max {
                        state = freed.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                }
                let (stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        log::warn!("metrics listener on {bound}: {e}");
                        // E.g. out of file descriptors: do not spin.
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let client = peer.ip().to_canonical();
                {
                    let mut state = open.0.lock().unwrap_or_else(|e| e.into_inner());
                    let mine = state.per_client.entry(client).or_insert(0);
                    if *mine >= limits.max_per_client() {
                        log::debug!(
                            "metrics connection from {peer} closed: too many of that address"
                        );
                        continue;
                    }
                    *mine += 1;
                    state.total += 1;
                }
                let (render, places) = (Arc::clone(&render), Arc::clone(&open));
                let served = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || {
                        leave_signals_to_other_threads();
                        let mut stream = stream;
                        if let Err(e) = serve_one(&mut stream, limits.deadline, &*render) {
                            log::debug!("metrics request from {peer}: {e}");
                        }
                        // The place is free before the client sees the
                        // end of the answer, so that it may connect again.
                        closed(&places, client);
                        drop(stream);
                    });
                if let Err(e) = served {
                    log::warn!("metrics: no thread for {peer}: {e}");
                    closed(&open, client);
                }
            }
        })?;
    log::info!("metrics at http://{bound}{PATH}");
    Ok(bound)
}

/// Gives a connection's place back.
fn closed(open: &(Mutex<Open>, Condvar), client: IpAddr) {
    let mut state = open.0.lock().unwrap_or_else(|e| e.into_inner());
    state.total -= 1;
    if let Some(mine) = state.per_client.get_mut(&client) {
        *mine -= 1;
        if *mine == 0 {
            state.per_client.remove(&client);
        }
    }
    open.1.notify_one();
}

/// The metrics thread takes none of the signals the daemons handle, so
/// that the kernel delivers them to a thread that reacts at once (the
/// collector's receiver is woken from its read by them).
fn leave_signals_to_other_threads() {
    // SAFETY: sigset operations on a local set, and pthread_sigmask on the
    // calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_answered_with_metrics() {
        assert_eq!(
            answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Answer::Metrics
        );
        assert_eq!(answer(b"GET /metrics HTTP/1.0\n\n"), Answer::Metrics);
        assert_eq!(
            answer(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Answer::Metrics
        );
        assert_eq!(
            answer(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Answer::MethodNotAllowed
        );
        assert_eq!(
            answer(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Answer::MethodNotAllowed
        );
        for path in ["/", "/metrics/", "/metricsx", "/admin", "/Metrics"] {
            let head = format!("GET {path} HTTP/1.1\r\n\r\n");
            assert_eq!(answer(head.as_bytes()), Answer::NotFound, "{path}");
        }
        for bad in [
            &b""[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\xff /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                answer(bad),
                Answer::BadRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn responses_are_complete_http_1_0() {
        let ok = String::from_utf8(response(Answer::Metrics, || Ok("a 1\n".into()))).unwrap();
        assert_eq!(
            ok,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let not_found = response(Answer::NotFound, || unreachable!("not rendered"));
        assert!(not_found.starts_with(b"HTTP/1.0 404 Not Found\r\n"));
        let method =
            String::from_utf8(response(Answer::MethodNotAllowed, || Ok(String::new()))).unwrap();
        assert!(method.contains("\r\nAllow: GET\r\n"), "{method}");
        let failed =
            String::from_utf8(response(Answer::Metrics, || Err("db gone".into()))).unwrap();
        assert!(
            failed.starts_with("HTTP/1.0 500 Internal Server Error\r\n"),
            "{failed}"
        );
        assert!(
            !failed.contains("db gone"),
            "the reason is logged, not shown"
        );
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nHost: x\r\n"), None);
    }

    /// The real listener: metrics, 404, an oversized head, and a client
    /// that sends nothing does not stop the next one from being served
    /// after the deadline.
    #[test]
    fn the_listener_serves_scrapes_and_refuses_the_rest() {
        let bound = spawn("127.0.0.1:0".parse().unwrap(), Limits::default(), || {
            Ok("up 1\n".to_owned())
        })
        .unwrap();
        let exchange = |request: &[u8]| {
            let mut stream = TcpStream::connect(bound).unwrap();
            stream.write_all(request).unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            reply
        };
        let reply = exchange(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nup 1\n"), "{reply}");
        let reply = exchange(b"GET /other HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.0 404 "), "{reply}");
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_REQUEST_HEAD + 10));
        let reply = exchange(&huge);
        assert!(reply.starts_with("HTTP/1.0 400 "), "{reply}");

        let _silent = TcpStream::connect(bound).unwrap();
        let started = Instant::now();
        let reply = exchange(b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// Slowloris: one address opens 200 connections with half a request
    /// head each; a scrape from another address is answered at once, the
    /// whole time, and every unfinished head is closed by the deadline.
    #[test]
    fn half_open_connections_do_not_keep_prometheus_out() {
        let limits = Limits {
            max_connections: 8,
            deadline: Duration::from_secs(2),
        };
        let bound = spawn("127.0.0.1:0".parse().unwrap(), limits, || {
            Ok("up 1\n".to_owned())
        })
        .unwrap();
        let mut slow: Vec<TcpStream> = (0..200)
            .map(|_| {
                let mut stream = connect_from([127, 0, 0, 2], bound);
                let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: ");
                stream
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < limits.deadline * 2 {
            let asked = Instant::now();
            let mut probe = connect_from([127, 0, 0, 1], bound);
            probe
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            probe.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut reply = String::new();
            probe.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "{:?}",
                asked.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let open = slow
            .iter_mut()
            .map(|stream| {
                stream
                    .set_read_timeout(Some(Duration::from_millis(1)))
                    .unwrap();
                matches!(stream.read(&mut [0; 64]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            })
            .filter(|&open| open)
            .count();
        assert_eq!(open, 0, "unfinished heads still open");
    }

    /// A connection from `from` (of 127/8) to `to`.
    fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        use std::os::fd::FromRawFd;
        let port = to.port();
        // SAFETY: plain socket calls on a descriptor owned by the stream.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let stream = TcpStream::from_raw_fd(fd);
            let address = |ip: [u8; 4], port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let (local, remote) = (address(from, 0), address([127, 0, 0, 1], port));
            assert_eq!(
                libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
                0
            );
            assert_eq!(
                libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
                0,
                "{}",
                io::Error::last_os_error()
            );
            stream
        }
    }
}
