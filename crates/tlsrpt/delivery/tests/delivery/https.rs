//! HTTPS upload (RFC 8460 section 5.4) to a local TLS server that checks
//! what arrives, and the answers that must not count as delivered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tlsrpt_delivery::{HttpScript, HttpTransport, HttpsPost, Outcome};

use crate::common::{gzip_report, REPORT_JSON};
use crate::common::{trust, TestCa};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What the server saw of one request.
struct Request {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Serves exactly one connection on 127.0.0.1: reads one request, waits
/// `delay`, answers `status`. Returns the URL and what it received (None
/// when the client went away before sending a request).
fn serve_once(
    config: &Arc<ServerConfig>,
    status: u16,
    delay: Duration,
) -> (String, JoinHandle<Option<Request>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/tlsrpt",
        listener.local_addr().unwrap().port()
    );
    let config = Arc::clone(config);
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        let request = read_request(&mut tls)?;
        thread::sleep(delay);
        let body = format!("said {status}");
        let answer = format!(
            "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // The client may have given up already.
        let _ = tls.write_all(answer.as_bytes());
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Some(request)
    });
    (url, server)
}

fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut content_type = None;
    let mut content_length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.trim().to_owned()),
            "content-length" => content_length = Some(value.trim().parse::<usize>().ok()?),
            _ => {}
        }
    }
    let mut body = vec![0; content_length.expect("the client sends Content-Length")];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        content_type,
        body,
    })
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    GzDecoder::new(bytes).read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_2xx_answer_is_delivered_and_the_server_gets_the_gzip_report() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let client = HttpsPost::new(TIMEOUT, &trust(&ca), true);
    for status in [200, 202] {
        let (url, server) = serve_once(&ca.server_config, status, Duration::ZERO);
        let outcome = client.post(&url, &gzip_report());
        let expected = format!("{url} answered {status} ");
        assert!(
            matches!(&outcome, Outcome::Delivered(text) if text.starts_with(&expected)),
            "{outcome:?}"
        );
        let request = server.join().unwrap().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/tlsrpt");
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/tlsrpt+gzip")
        );
        assert_eq!(gunzip(&request.body), REPORT_JSON);
    }
}

#[test]
fn error_answers_are_retried_or_given_up_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let client = HttpsPost::new(TIMEOUT, &trust(&ca), true);
    for (status, retry) in [
        (500, true),
        (503, true),
        (429, true),
        (408, true),
        (404, false),
        (400, false),
        (301, false),
    ] {
        let (url, server) = serve_once(&ca.server_config, status, Duration::ZERO);
        let outcome = client.post(&url, &gzip_report());
        let text = match (&outcome, retry) {
            (Outcome::RetryLater(text), true) | (Outcome::Permanent(text), false) => text,
            _ => panic!("status {status}, retry expected: {retry}: {outcome:?}"),
        };
        assert!(
            text.starts_with(&format!("{url} answered {status} ")),
            "{text}"
        );
        assert!(text.ends_with(&format!(": said {status}")), "{text}");
        server.join().unwrap().unwrap();
    }
}

#[test]
fn no_answer_in_time_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let client = HttpsPost::new(Duration::from_millis(500), &trust(&ca), true);
    let (url, server) = serve_once(&ca.server_config, 200, Duration::from_secs(2));
    let started = Instant::now();
    let outcome = client.post(&url, &gzip_report());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match outcome {
        Outcome::RetryLater(text) => assert!(text.contains("timeout"), "{text}"),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

#[test]
fn a_refused_connection_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let outcome = HttpsPost::new(TIMEOUT, &trust(&ca), true)
        .post(&format!("https://127.0.0.1:{port}/"), b"x");
    assert!(matches!(outcome, Outcome::RetryLater(_)), "{outcome:?}");
}

#[test]
fn a_server_certificate_from_an_unknown_ca_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new(other_dir.path());
    let (url, server) = serve_once(&server_ca.server_config, 200, Duration::ZERO);
    let outcome = HttpsPost::new(TIMEOUT, &trust(&other_ca), true).post(&url, &gzip_report());
    match outcome {
        Outcome::RetryLater(text) => {
            assert!(text.contains("invalid peer certificate"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    assert!(server.join().unwrap().is_none(), "nothing was sent");
}

#[test]
fn only_https_urls_are_posted_to() {
    let dir = tempfile::tempdir().unwrap();
    let client = HttpsPost::new(TIMEOUT, &trust(&TestCa::new(dir.path())), true);
    for url in ["http://127.0.0.1:9/", "not a url"] {
        assert!(
            matches!(client.post(url, b"x"), Outcome::Permanent(_)),
            "{url}"
        );
    }
}

#[test]
fn http_script_gets_the_url_as_last_argument_and_the_report_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("upload");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat > \"$(dirname \"$0\")/body\"\nprintf '%s' \"$1\" > \"$(dirname \"$0\")/url\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let transport =
        HttpTransport::Script(HttpScript::new(script.to_str().unwrap(), TIMEOUT).unwrap());
    let url = "https://reports.example.com/tlsrpt?a=1&b='2'";
    let outcome = transport.post(url, &gzip_report());
    assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("url")).unwrap(),
        url
    );
    assert_eq!(
        gunzip(&std::fs::read(dir.path().join("body")).unwrap()),
        REPORT_JSON
    );
}

/// The upstream default `http_script` (curl without `--fail`) reports a 500
/// answer as success: the defect the native client fixes. With `--fail`
/// the same script is retried.
#[test]
fn upstream_default_http_script_counts_a_500_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let cacert = format!("--cacert {}", ca.ca_file.display());
    let upstream_default =
        HttpScript::DEFAULT_COMMAND.replacen("curl", &format!("curl {cacert}"), 1);
    for (command, delivered) in [
        (upstream_default.clone(), true),
        (upstream_default.replacen("curl", "curl --fail", 1), false),
    ] {
        let (url, server) = serve_once(&ca.server_config, 500, Duration::ZERO);
        let outcome = HttpScript::new(&command, TIMEOUT)
            .unwrap()
            .post(&url, &gzip_report());
        assert_eq!(outcome.is_delivered(), delivered, "{command}: {outcome:?}");
        let request = server.join().unwrap().unwrap();
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/tlsrpt+gzip")
        );
        assert_eq!(gunzip(&request.body), REPORT_JSON);
    }
}

/// By default an upload never reaches a loopback or private address, by
/// name or by IP: a `rua=https:` record cannot make the reporter POST to
/// an internal service. The refusal is permanent, and nothing connected.
#[test]
fn uploads_reach_only_global_addresses_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = HttpsPost::new(TIMEOUT, &trust(&ca), false);
    for url in [
        format!("https://localhost:{port}/tlsrpt"),
        format!("https://127.0.0.1:{port}/tlsrpt"),
        format!("https://[::ffff:127.0.0.1]:{port}/tlsrpt"),
    ] {
        let outcome = client.post(&url, &gzip_report());
        assert!(
            matches!(&outcome, Outcome::Permanent(text) if text.contains("not global")),
            "{url}: {outcome:?}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the refused uploads must not connect"
    );
}
