//! A local HTTPS server for report uploads (RFC 8460 section 5.4) and
//! MTA-STS policy hosts (RFC 8461 section 3.3), with a certificate of a
//! [`TestCa`]: it records every request on 127.0.0.1 (or the address given
//! to [`HttpsSink::start_at`]) and answers as the test's plan says.
//!
//! One thread accepts, one thread per connection; one request per
//! connection (every answer says `Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

pub use crate::tls::TestCa;

/// What the server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answer with this status at once.
    Status(u16),
    /// Answer with this status, `Content-Type` and body at once (a policy
    /// file, or something that is not one).
    Text {
        status: u16,
        content_type: &'static str,
        body: &'static str,
    },
    /// Say nothing for this long, then close the connection unanswered.
    Silence(Duration),
}

/// One request as received, and what was done with it.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0 for the first request the server received, and so on.
    pub index: usize,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The body as sent.
    pub body: Vec<u8>,
    /// The answer the plan chose.
    pub answer: Answer,
    /// When the request was complete.
    pub received: Instant,
}

impl Request {
    /// The body, gunzipped; `Err` with the reason when it is not gzip or
    /// not UTF-8.
    pub fn gunzipped(&self) -> Result<String, String> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&self.body[..])
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }
}

type Plan = dyn Fn(&Request) -> Answer + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Request>>,
    /// Connections that ended before a complete request (TLS or HTTP).
    broken: Mutex<Vec<String>>,
    plan: Box<Plan>,
    stop: AtomicBool,
    config: Arc<ServerConfig>,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running server; dropping it stops accepting connections.
pub struct HttpsSink {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpsSink {
    /// Listens on 127.0.0.1 (an ephemeral port). `plan` decides each
    /// answer; it runs on the connection's thread after the request is read
    /// and before anything is answered, so it may also look at the world
    /// at that moment. The request is recorded before `plan` runs (its
    /// `answer` field then set to the plan's choice).
    pub fn start(
        ca: &TestCa,
        plan: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> HttpsSink {
        let address = SocketAddr::from(([127, 0, 0, 1], 0));
        HttpsSink::start_at(address, ca.server_config.clone(), plan)
    }

    /// Listens on `address` (such as a lab address, port 443) with the
    /// certificate of `config` (a [`crate::tls::ServerCert`]'s).
    pub fn start_at(
        address: SocketAddr,
        config: Arc<ServerConfig>,
        plan: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> HttpsSink {
        let listener = TcpListener::bind(address).unwrap();
        let address = listener.local_addr().unwrap();
        let port = address.port();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            broken: Mutex::new(Vec::new()),
            plan: Box::new(plan),
            stop: AtomicBool::new(false),
            config,
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("https-sink-{port}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if shared.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let shared = shared.clone();
                        let _ = std::thread::Builder::new()
                            .name("https-sink-connection".into())
                            .spawn(move || connection(stream, &shared));
                    }
                })
                .unwrap()
        };
        HttpsSink {
            address,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests().clone()
    }

    /// Why connections ended without a complete request.
    pub fn broken(&self) -> Vec<String> {
        self.shared
            .broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for HttpsSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn connection(tcp: TcpStream, shared: &Shared) {
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut tls = StreamOwned::new(ServerConnection::new(shared.config.clone()).unwrap(), tcp);
    let request = match read_request(&mut tls) {
        Ok(request) => request,
        Err(reason) => {
            shared
                .broken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(reason);
            return;
        }
    };
    let index = {
        let mut requests = shared.requests();
        let index = requests.len();
        requests.push(Request {
            index,
            answer: Answer::Silence(Duration::ZERO),
            ..request
        });
        index
    };
    let snapshot = shared.requests()[index].clone();
    let answer = (shared.plan)(&snapshot);
    shared.requests()[index].answer = answer;
    let (status, content_type, body) = match answer {
        Answer::Status(status) => (status, "text/plain", format!("test server says {status}")),
        Answer::Text {
            status,
            content_type,
            body,
        } => (status, content_type, body.to_string()),
        Answer::Silence(duration) => {
            std::thread::sleep(duration);
            return;
        }
    };
    let text = format!(
        "HTTP/1.1 {status} Test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(text.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn read_request(stream: &mut impl Read) -> Result<Request, String> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader
        .read_line(&mut request_line)
        .map_err(|e| format!("request line: {e}"))?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(format!("bad request line {request_line:?}"));
    };
    let (method, path) = (method.to_owned(), path.to_owned());
    let mut content_type = None;
    let mut content_length = None;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("header: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.trim().to_owned()),
            "content-length" => {
                content_length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|e| format!("Content-Length {value:?}: {e}"))?,
                )
            }
            _ => {}
        }
    }
    // A GET has no body, and no Content-Length.
    let length = match content_length {
        Some(length) => length,
        None if method == "GET" => 0,
        None => return Err("no Content-Length".into()),
    };
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok(Request {
        index: 0,
        method,
        path,
        content_type,
        body,
        answer: Answer::Silence(Duration::ZERO),
        received: Instant::now(),
    })
}
