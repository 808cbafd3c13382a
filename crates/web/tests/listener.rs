//! The web pages on a real listener (`mailtls_web::serve_on`), over TCP on
//! loopback: a dual-stack listener behind a proxy on this host, and
//! clients that hold connections open with unfinished requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use mailtls_web::{AppState, WebConfig};
use posttls_auth::{hash_password_with, Params};
use posttls_policy::DomainSet;
use posttls_store::{AuditEvent, Store};
use posttls_token::SecretKey;

const ADMIN: &str = "root";

struct Server {
    _dir: tempfile::TempDir,
    db: PathBuf,
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn config() -> WebConfig {
    WebConfig {
        listen: String::new(),
        instance: Some("lab".into()),
        base_url: "http://posttls.example.org".into(),
        organization: "Example Org".into(),
        secure_cookies: false,
        mandatory_domains: DomainSet::new(),
        trusted_proxies: Vec::new(),
        tlsrpt: Default::default(),
        policyd: None,
        limits: Default::default(),
        more_metrics: Default::default(),
    }
}

/// `serve_on` on `bind` with `config`, on a runtime of its own.
fn serve(bind: &str, config: WebConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posttls.sqlite");
    let store = Store::open(&db).unwrap();
    let hash = hash_password_with("right", &Params::new(8, 1, 1, None).unwrap());
    store.set_admin(ADMIN, &hash, 1).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = AppState::new(config, store, SecretKey::generate()).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(bind))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(mailtls_web::serve_on(
        listener,
        state,
        std::future::pending(),
    ));
    Server {
        _dir: dir,
        db,
        addr,
        _runtime: runtime,
    }
}

/// One request on a new connection from `from` to `port`; the whole answer.
fn exchange(from: &str, port: u16, request: &str) -> std::io::Result<String> {
    let socket = socket2_free_connect(from, port)?;
    let mut stream = socket;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A TCP connection from the IPv4 loopback address `from` (any of 127/8)
/// to `port` on 127.0.0.1.
fn socket2_free_connect(from: &str, port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let from: std::net::Ipv4Addr = from.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor owned by the TcpStream
    // made from it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(from).to_be(),
            },
            sin_zero: [0; 8],
        };
        let remote = libc::sockaddr_in {
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            ..local
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// The `posttls-login` cookie and the CSRF token of a login page.
fn login_form(port: u16) -> (String, String) {
    let page = exchange(
        "127.0.0.1",
        port,
        "GET /admin/login HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let cookie = page
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: posttls-login="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let start = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = page[start..start + page[start..].find('"').unwrap()].to_owned();
    (format!("posttls-login={cookie}"), csrf)
}

/// A failed login sent through the proxy (127.0.0.1) for `client`.
fn proxied_failure(port: u16, client: &str, cookie: &str, csrf: &str) -> String {
    let body = format!("name={ADMIN}&password=wrong&csrf={csrf}");
    exchange(
        "127.0.0.1",
        port,
        &format!(
            "POST /admin/login HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nCookie: {cookie}\r\n\
             X-Forwarded-For: {client}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

/// On `listen = [::]:PORT` a proxy on 127.0.0.1 arrives as
/// `::ffff:127.0.0.1`: it is still the trusted proxy, so each client is
/// named by its `X-Forwarded-For` (in the audit log and the throttle).
#[test]
fn a_dual_stack_listener_believes_its_proxy_on_ipv4() {
    let mut config = config();
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let server = serve("[::]:0", config);
    let port = server.addr.port();
    let (cookie, csrf) = login_form(port);
    // Four failures for one client: its address must wait now.
    for _ in 0..4 {
        let reply = proxied_failure(port, "198.51.100.7", &cookie, &csrf);
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    }
    // Another client through the same proxy is not held up by that (the
    // admin's name is, after four failures: so another name).
    let body = format!("name=nobody&password=x&csrf={csrf}");
    let reply = exchange(
        "127.0.0.1",
        port,
        &format!(
            "POST /admin/login HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nCookie: {cookie}\r\n\
             X-Forwarded-For: 203.0.113.9\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    let store = Store::open(&server.db).unwrap();
    let ips: Vec<String> = store
        .audit_log(10)
        .unwrap()
        .into_iter()
        .filter(|a| a.event == AuditEvent::LoginFailed)
        .map(|a| a.ip.unwrap_or_default())
        .collect();
    assert_eq!(
        ips,
        [
            "203.0.113.9",
            "198.51.100.7",
            "198.51.100.7",
            "198.51.100.7",
            "198.51.100.7"
        ],
        "the audit log names the clients, not the proxy"
    );
}

/// Half a request head: the connection is open and the request unfinished.
const HALF_HEAD: &[u8] = b"GET /admin/login HTTP/1.1\r\nHost: p\r\nX-Slow: ";

/// Slowloris: one client opens 1 100 connections and sends half a request
/// head on each. The login page goes on answering other clients, each
/// unfinished head is closed within the head timeout, and the client gets
/// no more connections than its share.
#[test]
fn half_open_connections_do_not_stop_the_pages() {
    let server = serve("127.0.0.1:0", config());
    let port = server.addr.port();
    let limits = mailtls_web::ConnectionLimits::default();
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..1_100 {
        let Ok(mut stream) = socket2_free_connect("127.0.0.2", port) else {
            break;
        };
        let _ = stream.write_all(HALF_HEAD);
        slow.push(stream);
    }
    assert_eq!(slow.len(), 1_100, "the kernel takes the connections");
    let probe = || {
        let asked = std::time::Instant::now();
        let reply = exchange(
            "127.0.0.1",
            port,
            "GET /admin/login HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        );
        (reply, asked.elapsed())
    };
    // Probes while the slow client holds its connections, until its first
    // connections have been open for twice the head timeout.
    let mut probes = 0;
    while started.elapsed() < limits.head_timeout * 2 {
        let (reply, took) = probe();
        let reply = reply.expect("an answer");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(took < Duration::from_secs(2), "answered after {took:?}");
        probes += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(probes >= 10, "{probes} probes");
    // Every slow connection has been closed by now: those the server took
    // after the head timeout, the others at once.
    let mut open = 0;
    for stream in &mut slow {
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(_) => {} // closed (0) or a 408 and closed
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            Err(_) => {} // reset
        }
    }
    assert_eq!(open, 0, "{open} of 1 100 unfinished heads still open");
    eprintln!("{probes} probes answered, every unfinished head closed");
}
