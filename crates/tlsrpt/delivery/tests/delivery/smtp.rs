//! SMTP submission to a small local SMTP server that answers as told, with
//! STARTTLS, implicit TLS and AUTH PLAIN on a certificate from a test CA.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tlsrpt_delivery::{
    Error, MailTransport, Outcome, Smtp, SmtpCredentials, SmtpSecurity, TrustAnchors,
};

use crate::common::{gzip_report, render_mail, RECIPIENT, SENDER};
use crate::common::{trust, TestCa};

const TIMEOUT: Duration = Duration::from_secs(5);

/// How the test server answers.
#[derive(Clone)]
struct Script {
    greeting: &'static str,
    rcpt_reply: &'static str,
    data_reply: &'static str,
    /// Offer STARTTLS with this configuration.
    starttls: Option<Arc<ServerConfig>>,
    /// Speak TLS from the start with this configuration.
    implicit_tls: Option<Arc<ServerConfig>>,
    /// Offer AUTH PLAIN (once the connection is encrypted) for this login.
    login: Option<(&'static str, &'static str)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 test.example ESMTP",
            rcpt_reply: "250 2.1.5 Ok",
            data_reply: "250 2.0.0 Ok: queued as TEST",
            starttls: None,
            implicit_tls: None,
            login: None,
        }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
struct Session {
    encrypted: bool,
    authenticated_as: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Option<String>,
    data: Option<Vec<u8>>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

struct Connection {
    stream: Stream,
    pending: Vec<u8>,
}

impl Connection {
    /// One line without its CRLF; None at the end of the connection.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|pair| pair == b"\r\n") {
                let line = String::from_utf8(self.pending[..end].to_vec()).unwrap();
                self.pending.drain(..end + 2);
                return Some(line);
            }
            let mut chunk = [0; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn reply(&mut self, text: &str) {
        self.stream
            .write_all(format!("{text}\r\n").as_bytes())
            .unwrap();
        self.stream.flush().unwrap();
    }

    fn upgrade(self, config: &Arc<ServerConfig>) -> Connection {
        assert!(self.pending.is_empty(), "pipelined data before TLS");
        let Stream::Plain(tcp) = self.stream else {
            panic!("TLS twice")
        };
        let tls = StreamOwned::new(ServerConnection::new(Arc::clone(config)).unwrap(), tcp);
        Connection {
            stream: Stream::Tls(Box::new(tls)),
            pending: Vec::new(),
        }
    }
}

/// Serves one SMTP connection on 127.0.0.1 as `script` says.
fn serve_once(script: Script) -> (u16, JoinHandle<Session>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut connection = Connection {
            stream: Stream::Plain(tcp),
            pending: Vec::new(),
        };
        let mut session = Session::default();
        if let Some(config) = &script.implicit_tls {
            connection = connection.upgrade(config);
            session.encrypted = true;
        }
        connection.reply(script.greeting);
        if !script.greeting.starts_with('2') {
            return session;
        }
        while let Some(command) = connection.line() {
            let verb = command.split(' ').next().unwrap().to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => {
                    let mut lines = vec!["250-test.example".to_owned()];
                    if script.starttls.is_some() && !session.encrypted {
                        lines.push("250-STARTTLS".into());
                    }
                    if script.login.is_some() && session.encrypted {
                        lines.push("250-AUTH PLAIN".into());
                    }
                    lines.push("250 HELP".into());
                    connection.reply(&lines.join("\r\n"));
                }
                "STARTTLS" => {
                    connection.reply("220 2.0.0 Ready to start TLS");
                    connection = connection.upgrade(script.starttls.as_ref().unwrap());
                    session.encrypted = true;
                }
                "AUTH" => {
                    let (user, password) = script.login.unwrap();
                    let initial = command
                        .split(' ')
                        .nth(2)
                        .expect("PLAIN with initial response");
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(initial)
                        .unwrap();
                    if decoded == format!("\0{user}\0{password}").as_bytes() {
                        session.authenticated_as = Some(user.to_owned());
                        connection.reply("235 2.7.0 Authentication successful");
                    } else {
                        connection.reply("535 5.7.8 Error: authentication failed");
                    }
                }
                "MAIL" => {
                    session.mail_from = Some(command[10..].to_owned());
                    connection.reply("250 2.1.0 Ok");
                }
                "RCPT" => {
                    session.rcpt_to = Some(command[8..].to_owned());
                    connection.reply(script.rcpt_reply);
                }
                "DATA" => {
                    connection.reply("354 End data with <CR><LF>.<CR><LF>");
                    let mut data = Vec::new();
                    loop {
                        let line = connection.line().expect("data ends with a dot");
                        if line == "." {
                            break;
                        }
                        // RFC 5321 section 4.5.2: remove the stuffed dot.
                        let line = line.strip_prefix('.').unwrap_or(&line);
                        data.extend_from_slice(line.as_bytes());
                        data.extend_from_slice(b"\r\n");
                    }
                    session.data = Some(data);
                    connection.reply(script.data_reply);
                }
                "QUIT" => {
                    connection.reply("221 2.0.0 Bye");
                    break;
                }
                "RSET" | "NOOP" => connection.reply("250 2.0.0 Ok"),
                _ => connection.reply("502 5.5.2 Error: command not recognized"),
            }
        }
        session
    });
    (port, server)
}

fn submit(smtp: &Smtp) -> Outcome {
    MailTransport::Smtp(smtp.clone()).send(SENDER, RECIPIENT, &render_mail(&gzip_report()))
}

fn plaintext_relay(port: u16) -> Smtp {
    let dir = tempfile::tempdir().unwrap();
    let trust = trust(&TestCa::new(dir.path()));
    Smtp::new(
        "127.0.0.1",
        port,
        SmtpSecurity::Plaintext,
        None,
        TIMEOUT,
        &trust,
    )
    .unwrap()
}

#[test]
fn a_relay_that_takes_the_mail_is_delivered() {
    let (port, server) = serve_once(Script::default());
    let outcome = submit(&plaintext_relay(port));
    assert_eq!(
        outcome,
        Outcome::Delivered(format!(
            "127.0.0.1:{port} answered 250 2.0.0 Ok: queued as TEST"
        ))
    );
    let session = server.join().unwrap();
    assert_eq!(session.mail_from.as_deref(), Some(&*format!("<{SENDER}>")));
    assert_eq!(session.rcpt_to.as_deref(), Some(&*format!("<{RECIPIENT}>")));
    assert_eq!(session.data.unwrap(), render_mail(&gzip_report()));
}

#[test]
fn answers_4xx_are_retried_and_5xx_are_permanent() {
    for (script, retry) in [
        (
            Script {
                rcpt_reply: "451 4.3.0 Try again later",
                ..Script::default()
            },
            true,
        ),
        (
            Script {
                greeting: "421 4.3.2 Busy",
                ..Script::default()
            },
            true,
        ),
        (
            Script {
                rcpt_reply: "550 5.1.1 No such user",
                ..Script::default()
            },
            false,
        ),
        (
            Script {
                data_reply: "552 5.3.4 Message too big",
                ..Script::default()
            },
            false,
        ),
    ] {
        let (port, server) = serve_once(script);
        let outcome = submit(&plaintext_relay(port));
        match (&outcome, retry) {
            (Outcome::RetryLater(text), true) | (Outcome::Permanent(text), false) => {
                assert!(text.starts_with(&format!("127.0.0.1:{port}: ")), "{text}");
            }
            _ => panic!("retry={retry}: {outcome:?}"),
        }
        let session = server.join().unwrap();
        assert!(session.data.is_none() || !retry);
    }
}

/// A submission with STARTTLS and AUTH as `reporter` with `password` to a
/// relay whose certificate is trusted and that knows the password
/// `s3cret`: the outcome and what the relay saw.
fn starttls_login(password: &str) -> (Outcome, Session) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (port, server) = serve_once(Script {
        starttls: Some(Arc::clone(&ca.server_config)),
        login: Some(("reporter", "s3cret")),
        ..Script::default()
    });
    let credentials = SmtpCredentials {
        user: "reporter".into(),
        password: password.into(),
    };
    let smtp = Smtp::new(
        "127.0.0.1",
        port,
        SmtpSecurity::StartTls,
        Some(credentials),
        TIMEOUT,
        &trust(&ca),
    )
    .unwrap();
    let outcome = submit(&smtp);
    (outcome, server.join().unwrap())
}

#[test]
fn starttls_and_auth_with_a_verified_certificate() {
    let (outcome, session) = starttls_login("s3cret");
    assert!(outcome.is_delivered(), "{outcome:?}");
    assert!(session.encrypted);
    assert_eq!(session.authenticated_as.as_deref(), Some("reporter"));
    assert_eq!(session.data.unwrap(), render_mail(&gzip_report()));
}

#[test]
fn a_refused_login_is_retried_until_the_configuration_is_fixed() {
    let (outcome, session) = starttls_login("wrong");
    match outcome {
        Outcome::RetryLater(text) => {
            assert!(
                text.contains("535") && text.contains("check the AUTH settings"),
                "{text}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(session.data.is_none());
}

#[test]
fn implicit_tls_with_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (port, server) = serve_once(Script {
        implicit_tls: Some(Arc::clone(&ca.server_config)),
        ..Script::default()
    });
    let smtp = Smtp::new(
        "127.0.0.1",
        port,
        SmtpSecurity::ImplicitTls,
        None,
        TIMEOUT,
        &trust(&ca),
    )
    .unwrap();
    let outcome = submit(&smtp);
    assert!(outcome.is_delivered(), "{outcome:?}");
    assert!(server.join().unwrap().encrypted);
}

#[test]
fn a_relay_without_starttls_gets_nothing_when_starttls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let trust = trust(&TestCa::new(dir.path()));
    let (port, server) = serve_once(Script::default());
    let smtp = Smtp::new(
        "127.0.0.1",
        port,
        SmtpSecurity::StartTls,
        None,
        TIMEOUT,
        &trust,
    )
    .unwrap();
    let outcome = submit(&smtp);
    assert!(matches!(outcome, Outcome::RetryLater(_)), "{outcome:?}");
    let session = server.join().unwrap();
    assert!(session.mail_from.is_none() && session.data.is_none());
}

#[test]
fn a_refused_connection_is_retried() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let outcome = submit(&plaintext_relay(port));
    assert!(matches!(outcome, Outcome::RetryLater(_)), "{outcome:?}");
}

#[test]
fn auth_without_tls_is_refused_at_setup() {
    let dir = tempfile::tempdir().unwrap();
    let trust: TrustAnchors = trust(&TestCa::new(dir.path()));
    let credentials = SmtpCredentials {
        user: "u".into(),
        password: "p".into(),
    };
    let err = Smtp::new(
        "127.0.0.1",
        25,
        SmtpSecurity::Plaintext,
        Some(credentials),
        TIMEOUT,
        &trust,
    )
    .unwrap_err();
    assert!(matches!(err, Error::BadSmtpRelay { .. }), "{err}");
}
