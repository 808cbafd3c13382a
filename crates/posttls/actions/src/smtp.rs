//! The SMTP client that re-injects a held message into one of the
//! instance's re-injection listeners (an `smtpd` on a UNIX-domain socket
//! under Postfix's `private/` directory, which only root and Postfix can
//! open).
//!
//! Our own, because a copy must be the message the sender sent, with the
//! envelope the sender gave: the DSN parameters (RFC 3461 sections 4.1-4.4:
//! NOTIFY, ORCPT, RET, ENVID), BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531)
//! and `XFORWARD IDENT` (Postfix's XFORWARD_README), which marks the copy so
//! that a restarted worker can find it. The content goes with BDAT (RFC
//! 3030) when the listener offers CHUNKING, so bytes are passed as they
//! are, and with DATA and dot-stuffing (RFC 5321 section 4.5.2) otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use posttls_postfix::{Envelope, EnvelopeRecipient, SENDOPTS_SMTPUTF8_REQUESTED};

/// One copy to submit.
pub struct Submission<'a> {
    /// The original's envelope: sender, ENVID, RET, BODY, SMTPUTF8.
    pub envelope: &'a Envelope,
    /// The recipients of this copy, with their NOTIFY and ORCPT.
    pub recipients: &'a [EnvelopeRecipient],
    /// `XFORWARD IDENT`: the marker Postfix keeps as `log_ident`.
    pub marker: &'a str,
    /// The content as `postcat -bh` prints it: one line per record, LF.
    pub content: &'a [u8],
}

/// A listener answered something other than what the step needs.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot connect to {listener}: {source}")]
    Connect {
        listener: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{listener}: {source}")]
    Io {
        listener: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{listener} answered {command:?} with: {reply}")]
    Refused {
        listener: String,
        command: String,
        reply: String,
    },
    #[error("{listener} does not offer {extension}: {hint}")]
    Missing {
        listener: String,
        extension: &'static str,
        hint: &'static str,
    },
    #[error("{0}")]
    Address(String),
}

/// One SMTP session with a listener.
struct Session {
    listener: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    extensions: Vec<String>,
}

/// A reply: its code and its text lines.
struct Reply {
    code: u16,
    text: String,
}

impl Session {
    /// Connects, reads the greeting and sends EHLO.
    fn open(listener: &Path, timeout: Duration) -> Result<Session, SubmitError> {
        let name = listener.display().to_string();
        let stream = UnixStream::connect(listener).map_err(|source| SubmitError::Connect {
            listener: name.clone(),
            source,
        })?;
        let io = |source| SubmitError::Io {
            listener: name.clone(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut session = Session {
            listener: name,
            reader: BufReader::new(stream),
            writer,
            extensions: Vec::new(),
        };
        session.expect("(greeting)", 220)?;
        let ehlo = session.command("EHLO posttls-worker", 250)?;
        session.extensions = ehlo
            .text
            .lines()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect();
        Ok(session)
    }

    fn offers(&self, extension: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e == extension || e.starts_with(&format!("{extension} ")))
    }

    fn io(&self, source: std::io::Error) -> SubmitError {
        SubmitError::Io {
            listener: self.listener.clone(),
            source,
        }
    }

    fn read_reply(&mut self) -> Result<Reply, SubmitError> {
        let mut text = String::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(4096)
                .read_until(b'\n', &mut line)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| SubmitError::Refused {
                    listener: self.listener.clone(),
                    command: "(reply)".into(),
                    reply: line.clone(),
                })?;
            text.push_str(line.get(4..).unwrap_or(""));
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.trim_end().to_string(),
                });
            }
        }
    }

    fn expect(&mut self, command: &str, code: u16) -> Result<Reply, SubmitError> {
        let reply = self.read_reply()?;
        if reply.code != code {
            return Err(SubmitError::Refused {
                listener: self.listener.clone(),
                command: command.to_string(),
                reply: format!("{} {}", reply.code, reply.text),
            });
        }
        Ok(reply)
    }

    fn command(&mut self, line: &str, code: u16) -> Result<Reply, SubmitError> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| self.io(e))?;
        self.expect(line, code)
    }
}

/// Submits one copy; returns the queue id from `250 ... queued as ID`.
pub fn submit(
    listener: &Path,
    submission: &Submission<'_>,
    timeout: Duration,
) -> Result<String, SubmitError> {
    let envelope = submission.envelope;
    let smtputf8 = envelope.sendopts & SENDOPTS_SMTPUTF8_REQUESTED != 0
        || !envelope.sender.is_ascii()
        || submission.recipients.iter().any(|r| !r.address.is_ascii());
    let mut mail = format!("MAIL FROM:<{}>", smtp_path(&envelope.sender)?);
    if envelope.eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    match envelope.ret_flags {
        1 => mail.push_str(" RET=FULL"),
        2 => mail.push_str(" RET=HDRS"),
        _ => {}
    }
    if let Some(id) = &envelope.envelope_id {
        mail.push_str(&format!(" ENVID={}", xtext(id)));
    }
    let rcpts = submission
        .recipients
        .iter()
        .map(|r| {
            let mut line = format!("RCPT TO:<{}>", smtp_path(&r.address)?);
            if let Some(notify) = notify_keywords(r.notify_flags) {
                line.push_str(&format!(" NOTIFY={notify}"));
            }
            if let Some(orcpt) = &r.dsn_orig_rcpt {
                if let Some((kind, address)) = orcpt.split_once(';') {
                    line.push_str(&format!(" ORCPT={kind};{}", xtext(address)));
                }
            }
            Ok(line)
        })
        .collect::<Result<Vec<_>, SubmitError>>()?;
    if rcpts.is_empty() {
        return Err(SubmitError::Address("a copy without recipients".into()));
    }
    let content = crlf(submission.content);

    let mut session = Session::open(listener, timeout)?;
    let needs = |session: &Session, extension: &'static str, hint: &'static str| {
        if session.offers(extension) {
            Ok(())
        } else {
            Err(SubmitError::Missing {
                listener: session.listener.clone(),
                extension,
                hint,
            })
        }
    };
    needs(
        &session,
        "XFORWARD",
        "set -o smtpd_authorized_xforward_hosts=127.0.0.0/8 on the listener (see docs/posttls.md)",
    )?;
    if envelope.ret_flags != 0
        || envelope.envelope_id.is_some()
        || submission
            .recipients
            .iter()
            .any(|r| r.notify_flags != 0 || r.dsn_orig_rcpt.is_some())
    {
        needs(
            &session,
            "DSN",
            "the message's DSN requests cannot be carried",
        )?;
    }
    if smtputf8 {
        needs(&session, "SMTPUTF8", "set smtputf8_enable = yes")?;
    }
    session.command(&format!("XFORWARD IDENT={}", submission.marker), 250)?;
    session.command(&mail, 250)?;
    for rcpt in &rcpts {
        session.command(rcpt, 250)?;
    }
    let accepted = if session.offers("CHUNKING") {
        session
            .writer
            .write_all(format!("BDAT {} LAST\r\n", content.len()).as_bytes())
            .and_then(|()| session.writer.write_all(&content))
            .map_err(|e| session.io(e))?;
        session.expect("BDAT", 250)?
    } else {
        session.command("DATA", 354)?;
        session
            .writer
            .write_all(&dot_stuff(&content))
            .and_then(|()| session.writer.write_all(b".\r\n"))
            .map_err(|e| session.io(e))?;
        session.expect("DATA", 250)?
    };
    let _ = session.writer.write_all(b"QUIT\r\n");
    accepted
        .text
        .split_whitespace()
        .skip_while(|w| *w != "as")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| SubmitError::Refused {
            listener: session.listener.clone(),
            command: "(end of data)".into(),
            reply: format!("accepted, but named no queue id: {}", accepted.text),
        })
}

/// Checks that the listener answers and offers what a copy needs, before
/// anything is done to the queue.
pub fn probe(listener: &Path, timeout: Duration) -> Result<(), SubmitError> {
    let mut session = Session::open(listener, timeout)?;
    if !session.offers("XFORWARD") {
        return Err(SubmitError::Missing {
            listener: session.listener.clone(),
            extension: "XFORWARD",
            hint: "set -o smtpd_authorized_xforward_hosts=127.0.0.0/8 on the listener (see docs/posttls.md)",
        });
    }
    session.command("QUIT", 221).map(|_| ())
}

/// Whether SMTP can carry the address (as Postfix keeps it internally).
pub fn check_address(address: &str) -> Result<(), SubmitError> {
    smtp_path(address).map(|_| ())
}

/// The RFC 5321 path of an address as Postfix keeps it internally
/// (unquoted): the local part quoted when it is not a dot-atom.
fn smtp_path(address: &str) -> Result<String, SubmitError> {
    if address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
    {
        return Err(SubmitError::Address(format!(
            "{address:?} is not an address SMTP can carry"
        )));
    }
    if address.is_empty() {
        return Ok(String::new());
    }
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let atext =
        |c: char| c.is_ascii_alphanumeric() || !c.is_ascii() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = !local.is_empty()
        && local
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(atext));
    let local = if dot_atom {
        local.to_string()
    } else {
        let mut quoted = String::from("\"");
        for c in local.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    };
    Ok(if domain.is_empty() {
        local
    } else {
        format!("{local}@{domain}")
    })
}

/// RFC 3461 section 4: xtext, `+XX` for `+`, `=`, and bytes outside
/// `!`..`~`.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// The NOTIFY keywords of Postfix's `notify_flags` (DSN_NOTIFY_NEVER 1,
/// SUCCESS 2, FAILURE 4, DELAY 8); `None` when none was given.
fn notify_keywords(flags: u32) -> Option<String> {
    if flags == 0 {
        return None;
    }
    if flags & 1 != 0 {
        return Some("NEVER".into());
    }
    let words: Vec<&str> = [(2, "SUCCESS"), (4, "FAILURE"), (8, "DELAY")]
        .into_iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, word)| word)
        .collect();
    Some(words.join(","))
}

/// Every LF of postcat's output ends a record: CRLF for SMTP (a record that
/// itself ends in CR keeps it).
fn crlf(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 2);
    for &byte in content {
        if byte == b'\n' {
            out.push(b'\r');
        }
        out.push(byte);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 5321 section 4.5.2: a line that starts with a dot gets another.
fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut line_start = true;
    for &byte in content {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_only_when_needed_and_controls_refused() {
        assert_eq!(smtp_path("bob@x.example").unwrap(), "bob@x.example");
        assert_eq!(smtp_path("jörg@x.example").unwrap(), "jörg@x.example");
        assert_eq!(
            smtp_path("john doe@x.example").unwrap(),
            "\"john doe\"@x.example"
        );
        assert_eq!(smtp_path("a\"b@x").unwrap(), "\"a\\\"b\"@x");
        assert_eq!(smtp_path("").unwrap(), "");
        assert!(smtp_path("a\r\nRCPT TO:<x>@y").is_err());
        assert!(smtp_path("a>@y").is_err());
    }

    #[test]
    fn dsn_values_are_xtext_and_notify_words() {
        assert_eq!(xtext("xyz+q=1 é"), "xyz+2Bq+3D1+20+C3+A9");
        assert_eq!(notify_keywords(10).as_deref(), Some("SUCCESS,DELAY"));
        assert_eq!(notify_keywords(1).as_deref(), Some("NEVER"));
        assert_eq!(notify_keywords(0), None);
    }

    #[test]
    fn records_become_crlf_lines_and_dots_are_stuffed() {
        assert_eq!(crlf(b"a\nb\r\n"), b"a\r\nb\r\r\n");
        assert_eq!(crlf(b"last"), b"last\r\n");
        assert_eq!(dot_stuff(b".\r\n..x\r\na.b\r\n"), b"..\r\n...x\r\na.b\r\n");
    }
}
