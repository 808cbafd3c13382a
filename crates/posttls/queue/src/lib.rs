//! The first stage of the PostTLS flow: what is in the Postfix queue, read
//! from `postqueue -j` (Postfix >= 3.1).
//!
//! `postqueue -j` prints one JSON object per queued message, one per line
//! (Postfix `src/postqueue/showq_json.c`, documented in postqueue(1)):
//!
//! ```text
//! {"queue_name": "deferred", "queue_id": "4A0AF98C232", "arrival_time": 1795308412, "message_size": 324, "forced_expire": false, "sender": "alice@example.test", "recipients": [{"address": "bob@notls.example", "delay_reason": "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]"}]}
//! ```
//!
//! This is the machine interface; `mailq` output decorates ids with status
//! characters and wraps reasons, and is not read here.
//!
//! Everything in this crate is pure: text in, validated values out. The
//! caller runs `postqueue` and hands its standard output to [`parse_queue`].
//! Each line is parsed on its own, so one malformed line never costs the
//! others (a scanner that stopped at the first bad line would silently stop
//! protecting everything queued after it).
//!
//! The one security decision made here: queue ids are validated
//! ([`QueueId`]) before anything else sees them, because they end up as
//! arguments of root-run `postsuper` and `postcat`.

mod queue_id;

use std::borrow::Cow;
use std::io::BufRead;

use serde::Deserialize;

pub use queue_id::{QueueId, QueueIdError, MAX_QUEUE_ID_LEN};

/// The sender `postqueue` shows for the null envelope sender `<>` (bounces
/// and other delivery status notifications): `MAIL_ADDR_MAIL_DAEMON` in
/// Postfix `src/global/mail_addr.h`, substituted by the showq daemon.
pub const NULL_SENDER: &str = "MAILER-DAEMON";

/// One queued message as `postqueue -j` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// `incoming`, `active`, `deferred`, `hold` or `maildrop`.
    pub queue_name: String,
    /// Validated: safe to pass to `postsuper`/`postcat`.
    pub queue_id: QueueId,
    /// Seconds since the epoch. Queue ids are reused (unless
    /// `enable_long_queue_ids = yes`), so a message is identified by the id
    /// together with this time.
    pub arrival_time: i64,
    /// Bytes, as Postfix counts them.
    pub message_size: u64,
    /// The message was marked for expiry (`postsuper -e`/`-f`, since
    /// Postfix 3.5) and will bounce at its next delivery attempt. `false`
    /// when the member is absent (before Postfix 3.5).
    pub forced_expire: bool,
    /// The envelope sender as shown, RFC 5322-quoted where needed; the null
    /// sender is shown as [`NULL_SENDER`] and kept as shown.
    pub sender: String,
    /// The recipients still listed for the message, in queue file order.
    pub recipients: Vec<QueuedRecipient>,
}

impl QueuedMessage {
    /// Whether the envelope sender is the null sender `<>`: a bounce or other
    /// notification, which has nobody to ask and must never be answered
    /// with another notification (RFC 5321 section 4.5.5).
    ///
    /// `postqueue` prints the null sender as `MAILER-DAEMON`, which is also
    /// what a literal local sender `MAILER-DAEMON` would look like; both are
    /// the mail system's own mail, so treating them alike is right.
    pub fn is_null_sender(&self) -> bool {
        self.sender.is_empty() || self.sender == NULL_SENDER
    }

    /// The recipients Postfix still has to deliver (see
    /// [`QueuedRecipient::is_pending`]).
    pub fn pending_recipients(&self) -> impl Iterator<Item = &QueuedRecipient> {
        self.recipients.iter().filter(|r| r.is_pending())
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecipient {
    /// The recipient address as shown (RFC 5322-quoted where needed,
    /// unprintable bytes replaced by `?`).
    pub address: String,
    /// Why the last delivery attempt was deferred. `None` while no attempt
    /// has failed yet, e.g. while delivery is in progress.
    pub delay_reason: Option<String>,
    /// The address before rewriting (aliases, virtual, canonical), when
    /// Postfix lists it (3.11) and it is not empty.
    pub orig_address: Option<String>,
    /// Set (Postfix 3.11) when delivery to this recipient already failed for
    /// good: the bounce is under way and the recipient must never be sent
    /// again.
    pub bounce_reason: Option<String>,
}

impl QueuedRecipient {
    /// Whether Postfix will still try to deliver to this recipient. A
    /// recipient with a bounce reason is finished, whatever else it shows.
    pub fn is_pending(&self) -> bool {
        self.bounce_reason.is_none()
    }
}

/// Why one line of `postqueue -j` output was not turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum QueueParseError {
    /// The line is not UTF-8. `postqueue` replaces unprintable bytes by `?`,
    /// so this means the output was not from `postqueue`, or was damaged.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// Not JSON, or a member is missing or of the wrong type. serde_json
    /// quotes offending values escaped, so the text is safe to log.
    #[error("malformed queue entry: {0}")]
    Json(#[from] serde_json::Error),
    /// A well-formed entry with a queue id we refuse to handle.
    #[error("refused queue id: {0}")]
    QueueId(#[from] QueueIdError),
    /// Reading the output failed; nothing after this point was read, so the
    /// listing is incomplete.
    #[error("reading the queue listing failed: {0}")]
    Read(#[from] std::io::Error),
}

/// The result of reading one `postqueue -j` listing.
#[derive(Debug, Default)]
pub struct QueueScan {
    /// The messages of all lines that parsed, in listing order.
    pub messages: Vec<QueuedMessage>,
    /// The lines that did not, with their 1-based line numbers.
    pub errors: Vec<(usize, QueueParseError)>,
}

impl QueueScan {
    /// Whether the whole listing was read. When it was not, a message
    /// missing from [`QueueScan::messages`] may still be queued: callers must
    /// not conclude that it left the queue.
    pub fn is_complete(&self) -> bool {
        !self
            .errors
            .iter()
            .any(|(_, e)| matches!(e, QueueParseError::Read(_)))
    }
}

/// The wire form, borrowing from the line wherever the JSON string has no
/// escapes. Unknown members are ignored (serde's default), so newer Postfix
/// versions can add members without breaking the scanner.
#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    queue_name: Cow<'a, str>,
    #[serde(borrow)]
    queue_id: Cow<'a, str>,
    arrival_time: i64,
    message_size: u64,
    /// Absent before Postfix 3.5. Development snapshots of 3.5 printed it as
    /// `force_expired`.
    #[serde(default, alias = "force_expired")]
    forced_expire: bool,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(borrow)]
    recipients: Vec<WireRecipient<'a>>,
}

#[derive(Deserialize)]
struct WireRecipient<'a> {
    #[serde(borrow)]
    address: Cow<'a, str>,
    #[serde(default, borrow)]
    delay_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    orig_address: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    bounce_reason: Option<Cow<'a, str>>,
}

/// An optional text member; an empty text means the same as an absent one
/// (postqueue prints `"orig_address": ""` when there was no rewriting).
fn non_empty(value: Option<Cow<'_, str>>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(Cow::into_owned)
}

/// Parse one line of `postqueue -j` output (without or with its line end).
pub fn parse_line(line: &str) -> Result<QueuedMessage, QueueParseError> {
    let wire: WireMessage<'_> = serde_json::from_str(line)?;
    let queue_id = QueueId::new(&wire.queue_id)?;
    Ok(QueuedMessage {
        queue_name: wire.queue_name.into_owned(),
        queue_id,
        arrival_time: wire.arrival_time,
        message_size: wire.message_size,
        forced_expire: wire.forced_expire,
        sender: wire.sender.into_owned(),
        recipients: wire
            .recipients
            .into_iter()
            .map(|r| QueuedRecipient {
                address: r.address.into_owned(),
                delay_reason: non_empty(r.delay_reason),
                orig_address: non_empty(r.orig_address),
                bounce_reason: non_empty(r.bounce_reason),
            })
            .collect(),
    })
}

/// Read a whole `postqueue -j` listing. Blank lines are skipped; every other
/// line becomes a message or an error, independently of the others. A read
/// error ends the listing (recorded as [`QueueParseError::Read`]).
pub fn parse_queue(mut input: impl BufRead) -> QueueScan {
    let mut scan = QueueScan::default();
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0;
    loop {
        buf.clear();
        line_no += 1;
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            // read_until already retries on EINTR: any error here is real.
            Err(e) => {
                scan.errors.push((line_no, QueueParseError::Read(e)));
                break;
            }
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            scan.errors.push((line_no, QueueParseError::NotUtf8));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(message) => scan.messages.push(message),
            Err(e) => scan.errors.push((line_no, e)),
        }
    }
    scan
}

#[cfg(test)]
mod tests;
