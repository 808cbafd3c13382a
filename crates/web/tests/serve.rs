//! `mailtls_web::serve`, the blocking entry point of the web process: it
//! serves on the configured address and returns after SIGTERM. Alone in
//! its test binary, because it signals its own process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mailtls_web::{serve, WebConfig, WebError};
use posttls_policy::DomainSet;
use posttls_token::SecretKey;

fn config(listen: String) -> WebConfig {
    WebConfig {
        listen,
        instance: Some("lab".into()),
        base_url: "https://posttls.example.org".into(),
        organization: String::new(),
        secure_cookies: true,
        mandatory_domains: DomainSet::new(),
        trusted_proxies: Vec::new(),
        tlsrpt: Default::default(),
        policyd: None,
        limits: Default::default(),
        more_metrics: Default::default(),
    }
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

#[test]
fn serves_until_sigterm_and_refuses_bad_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let db = posttls_store::Database::Sqlite(dir.path().join("posttls.sqlite"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let err = serve(config(taken.clone()), &db, SecretKey::generate()).unwrap_err();
    assert!(matches!(err, WebError::Listen { .. }), "{err}");
    assert!(err.to_string().contains(&taken), "{err}");
    let mut bad_url = config("127.0.0.1:0".into());
    bad_url.base_url = "posttls.example.org".into();
    assert!(matches!(
        serve(bad_url, &db, SecretKey::generate()),
        Err(WebError::BaseUrl(_))
    ));
    drop(busy);

    let addr = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().to_string()
    };
    let server = {
        let (addr, db) = (addr.clone(), db.clone());
        std::thread::spawn(move || serve(config(addr), &db, SecretKey::generate()))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        if let Some(reply) = get(&addr, "/") {
            break reply;
        }
        assert!(Instant::now() < deadline, "the server did not answer");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("content-security-policy: default-src 'self'"),
        "{reply}"
    );
    std::thread::sleep(Duration::from_millis(200));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.is_finished() {
        assert!(
            Instant::now() < deadline,
            "serve did not return after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.join().unwrap().unwrap();
    assert!(get(&addr, "/").is_none(), "nothing listens any more");
}
