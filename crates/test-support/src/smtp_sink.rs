//! A small SMTP server for the tests: it listens on 127.0.0.1 (an ephemeral
//! port) or on a lab MX's address ([`SmtpSink::start_mx`]), speaks enough
//! ESMTP for Postfix's smtp client (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP,
//! QUIT, and STARTTLS as [`Starttls`] says) and records every message it
//! accepts. [`Mode`] makes it answer RCPT or DATA with a 4xx, to simulate a
//! failing next hop.
//!
//! One thread accepts, one thread per connection; TLS by rustls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The name the sink gives itself in its greeting and EHLO reply.
pub const HOSTNAME: &str = "sink.mailtls.test";

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The EHLO/HELO argument of the session.
    pub helo: String,
    /// The MAIL FROM address, without angle brackets (empty for `<>`).
    pub sender: String,
    /// The ESMTP parameters of MAIL FROM (RFC 3461 RET/ENVID, BODY,
    /// SMTPUTF8, SIZE), as sent.
    pub mail_params: String,
    /// The accepted RCPT TO addresses, without angle brackets, in order.
    pub recipients: Vec<String>,
    /// The ESMTP parameters of each accepted RCPT TO (NOTIFY, ORCPT).
    pub rcpt_params: Vec<String>,
    /// The message as received between DATA and the final dot, dot-unstuffed,
    /// line ends as sent (CRLF from any real client).
    pub data: Vec<u8>,
    /// Whether the session had switched to TLS (STARTTLS) before MAIL.
    pub tls: bool,
}

impl Message {
    /// The data as text (lossy), for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accept every recipient and message.
    Accept,
    /// Answer every RCPT with `451 4.3.0` (so DATA finds no recipients).
    DeferRcpt,
    /// Accept the recipients, then answer the end of DATA with `451 4.3.0`;
    /// the message is not recorded.
    DeferData,
}

/// Whether and how the sink offers STARTTLS (RFC 3207).
#[derive(Clone, Default)]
pub enum Starttls {
    /// Not in the EHLO reply; the command is refused as unknown.
    #[default]
    NotOffered,
    /// Offered, and the handshake done with this configuration (the lab's
    /// certificates: trusted, for another name, expired, from an unknown CA).
    Offered(Arc<rustls::ServerConfig>),
    /// Offered in the EHLO reply, but the command answered `454 4.7.0`.
    Refused,
}

#[derive(Default)]
struct State {
    messages: Vec<Message>,
    connections: usize,
    rejections: usize,
}

struct Shared {
    starttls: Starttls,
    state: Mutex<State>,
    changed: Condvar,
    mode: Mutex<Mode>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.changed.notify_all();
    }
}

/// A running sink; dropping it stops accepting connections.
pub struct SmtpSink {
    addr: SocketAddr,
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// A sink that accepts everything.
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(Mode::Accept)
    }

    /// A sink answering as `mode` says (changeable later with
    /// [`set_mode`](Self::set_mode)).
    pub fn start_with(mode: Mode) -> SmtpSink {
        SmtpSink::bind("127.0.0.1:0".parse().unwrap(), mode, Starttls::NotOffered)
    }

    /// A lab MX: port 25 of `ip` (a 127.0.0.0/8 address of the lab's),
    /// accepting everything, with STARTTLS as `starttls` says.
    pub fn start_mx(ip: std::net::Ipv4Addr, starttls: Starttls) -> SmtpSink {
        SmtpSink::bind(SocketAddr::from((ip, 25)), Mode::Accept, starttls)
    }

    fn bind(addr: SocketAddr, mode: Mode, starttls: Starttls) -> SmtpSink {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind the SMTP sink on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let shared = Arc::new(Shared {
            starttls,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            mode: Mutex::new(mode),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("smtp-sink-{port}"))
                .spawn(move || accept_loop(listener, shared))
                .unwrap()
        };
        SmtpSink {
            addr,
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `IP:PORT`, such as `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Change how later commands are answered (sessions already open see the
    /// change at their next command).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Every message accepted so far, in order of acceptance.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.state().messages.clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    /// How many RCPT or DATA commands were answered with a 4xx by the
    /// failure modes so far.
    pub fn rejections(&self) -> usize {
        self.shared.state().rejections
    }

    /// Wait until at least `n` messages were accepted and return them all;
    /// panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        self.wait_until(timeout, &format!("{n} message(s)"), |s| {
            s.messages.len() >= n
        });
        self.messages()
    }

    /// Wait until at least `n` RCPT/DATA commands were rejected; panics after
    /// `timeout`.
    pub fn wait_for_rejections(&self, n: usize, timeout: Duration) {
        self.wait_until(timeout, &format!("{n} rejection(s)"), |s| s.rejections >= n);
    }

    fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state();
        while !cond(&state) {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "SMTP sink on {}: timed out after {timeout:?} waiting for {what}; \
                     {} connection(s), {} rejection(s), {} message(s) so far: {:#?}",
                    self.addr,
                    state.connections,
                    state.rejections,
                    state.messages.len(),
                    state.messages
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        shared.update(|s| s.connections += 1);
        let shared = shared.clone();
        // Sessions are detached; they end with the client, at QUIT, or after
        // the read timeout.
        let _ = std::thread::Builder::new()
            .name("smtp-sink-session".into())
            .spawn(move || {
                let _ = session(stream, &shared);
            });
    }
}

/// The address inside `<...>` after `FROM:` / `TO:` (tolerating a space after
/// the colon and a missing pair of brackets), ignoring ESMTP parameters.
fn path_arg(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        Some(inner[..end].to_string())
    } else {
        rest.split_whitespace().next().map(str::to_string)
    }
}

/// What follows the `<path>` of MAIL FROM / RCPT TO: the ESMTP parameters.
fn params_after_path(rest: &str) -> String {
    let rest = rest.trim_start();
    match rest
        .strip_prefix('<')
        .and_then(|r| r.find('>').map(|end| &r[end + 1..]))
    {
        Some(params) => params.trim().to_string(),
        None => rest
            .split_once(' ')
            .map(|(_, p)| p.trim().to_string())
            .unwrap_or_default(),
    }
}

/// A session's connection, plain or after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn reply(input: &mut BufReader<Conn>, text: &str) -> std::io::Result<()> {
    let conn = input.get_mut();
    conn.write_all(text.as_bytes())?;
    conn.flush()
}

fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut input = BufReader::new(Conn::Plain(stream));

    reply(
        &mut input,
        &format!("220 {HOSTNAME} ESMTP mailtls test sink\r\n"),
    )?;
    let mut helo = String::new();
    let mut sender: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    let mut mail_params = String::new();
    let mut rcpt_params: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, rest) = match text.find(' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, ""),
        };
        let verb = verb.to_ascii_uppercase();
        let upper_rest = rest.to_ascii_uppercase();
        let tls = matches!(input.get_ref(), Conn::Tls(_));
        match verb.as_str() {
            "EHLO" => {
                helo = rest.trim().to_string();
                sender = None;
                recipients.clear();
                let starttls = match shared.starttls {
                    Starttls::NotOffered => "",
                    _ if tls => "",
                    _ => "250-STARTTLS\r\n",
                };
                reply(
                    &mut input,
                    &format!(
                        "250-{HOSTNAME}\r\n250-PIPELINING\r\n{starttls}250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
                    ),
                )?;
            }
            "STARTTLS" if !tls && !matches!(shared.starttls, Starttls::NotOffered) => {
                let Starttls::Offered(config) = &shared.starttls else {
                    reply(
                        &mut input,
                        "454 4.7.0 TLS not available due to local problem\r\n",
                    )?;
                    continue;
                };
                // RFC 3207 section 4.2: the client sends nothing more before
                // the handshake, so nothing can be left in the buffer.
                if !input.buffer().is_empty() {
                    reply(&mut input, "501 5.5.4 pipelined after STARTTLS\r\n")?;
                    return Ok(());
                }
                reply(&mut input, "220 2.0.0 Ready to start TLS\r\n")?;
                let Conn::Plain(tcp) = input.into_inner() else {
                    unreachable!("checked above")
                };
                let server =
                    rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(server, tcp);
                // A client that rejects the certificate aborts here.
                while stream.conn.is_handshaking() {
                    stream.conn.complete_io(&mut stream.sock)?;
                }
                input = BufReader::new(Conn::Tls(Box::new(stream)));
                // RFC 3207 section 4.2: the session starts over.
                helo.clear();
                sender = None;
                recipients.clear();
            }
            "HELO" => {
                helo = rest.trim().to_string();
                sender = None;
                recipients.clear();
                reply(&mut input, &format!("250 {HOSTNAME}\r\n"))?;
            }
            "MAIL" if upper_rest.starts_with("FROM:") => {
                if sender.is_some() {
                    reply(&mut input, "503 5.5.1 nested MAIL command\r\n")?;
                    continue;
                }
                match path_arg(&rest[5..]) {
                    Some(addr) => {
                        sender = Some(addr);
                        recipients.clear();
                        rcpt_params.clear();
                        mail_params = params_after_path(&rest[5..]);
                        reply(&mut input, "250 2.1.0 Ok\r\n")?;
                    }
                    None => reply(&mut input, "501 5.5.4 bad MAIL syntax\r\n")?,
                }
            }
            "RCPT" if upper_rest.starts_with("TO:") => {
                if sender.is_none() {
                    reply(&mut input, "503 5.5.1 need MAIL command\r\n")?;
                    continue;
                }
                match path_arg(&rest[3..]) {
                    None => reply(&mut input, "501 5.5.4 bad RCPT syntax\r\n")?,
                    Some(_) if shared.mode() == Mode::DeferRcpt => {
                        shared.update(|s| s.rejections += 1);
                        reply(&mut input, "451 4.3.0 test sink: recipient deferred\r\n")?;
                    }
                    Some(addr) => {
                        recipients.push(addr);
                        rcpt_params.push(params_after_path(&rest[3..]));
                        reply(&mut input, "250 2.1.5 Ok\r\n")?;
                    }
                }
            }
            "DATA" => {
                if sender.is_none() {
                    reply(&mut input, "503 5.5.1 need MAIL command\r\n")?;
                    continue;
                }
                if recipients.is_empty() {
                    reply(&mut input, "554 5.5.1 no valid recipients\r\n")?;
                    continue;
                }
                reply(&mut input, "354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if input.read_until(b'\n', &mut line)? == 0 {
                        return Ok(()); // connection lost inside DATA: no message
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 4.5.2).
                    let body = line.strip_prefix(b".").unwrap_or(&line);
                    data.extend_from_slice(body);
                }
                let envelope = (sender.take().unwrap(), std::mem::take(&mut recipients));
                if shared.mode() == Mode::DeferData {
                    shared.update(|s| s.rejections += 1);
                    reply(&mut input, "451 4.3.0 test sink: message deferred\r\n")?;
                } else {
                    let message = Message {
                        helo: helo.clone(),
                        sender: envelope.0,
                        mail_params: std::mem::take(&mut mail_params),
                        recipients: envelope.1,
                        rcpt_params: std::mem::take(&mut rcpt_params),
                        data,
                        tls,
                    };
                    shared.update(|s| s.messages.push(message));
                    reply(&mut input, "250 2.0.0 Ok: queued\r\n")?;
                }
            }
            "RSET" => {
                sender = None;
                recipients.clear();
                reply(&mut input, "250 2.0.0 Ok\r\n")?;
            }
            "NOOP" => reply(&mut input, "250 2.0.0 Ok\r\n")?,
            "VRFY" => reply(&mut input, "252 2.0.0 send some mail, I'll try my best\r\n")?,
            "QUIT" => {
                reply(&mut input, "221 2.0.0 Bye\r\n")?;
                let _ = input.get_ref().tcp().shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => reply(&mut input, "502 5.5.2 command not implemented\r\n")?,
        }
    }
}
