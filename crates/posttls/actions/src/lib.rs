//! The queue-actions stage of PostTLS, run by the privileged worker for
//! each request the web process recorded.
//!
//! Everything is checked again at action time, against the queue as it is
//! now: the message is still queued (same queue id AND arrival time AND
//! sender), its recipients still wait because of TLS, none of the released
//! ones is in a mandatory-TLS domain.
//!
//! Release, in the safe order of `shared/spec/postfix.md`:
//!
//! 1. hold the original (`postsuper -h`, count checked);
//! 2. read it (`postcat -bh`);
//! 3. re-inject a copy for the TLS-failed recipients through the release
//!    listener (an smtpd with a `content_filter` to a transport with
//!    `smtp_tls_security_level = may`), and, when the message has other
//!    pending recipients, a copy for them through the normal path, so they
//!    keep their normal (mandatory TLS) delivery;
//! 4. only when every copy was accepted (SMTP 250, queue id noted), delete
//!    the original from the hold queue.
//!
//! If anything fails before step 4, the copies made so far are deleted and
//! the original is released from hold: the queue is as it was, and the
//! sender is told honestly what went wrong.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::client::Tls;
use lettre::{SmtpTransport, Transport};
use posttls_classify::classify;
use posttls_policy::{decide, Decision, DomainSet};
use posttls_postfix::Postfix;
use posttls_queue::{parse_queue, QueueId, QueuedMessage};
use posttls_store::{ActionRow, MessageRow, MessageState, Store, StoreError};

/// Where copies are re-injected.
#[derive(Debug, Clone)]
pub struct ReinjectPaths {
    /// `host:port` of the opportunistic-TLS listener (released recipients).
    pub release: String,
    /// `host:port` of a listener with the normal path (other recipients).
    pub normal: String,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an action ended: `Ok` with a text for the sender, or refused /
/// failed with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done {
        result: String,
        new_queue_id: Option<String>,
    },
    Refused(String),
    Failed(String),
}

pub struct Executor<'a> {
    pub postfix: &'a Postfix,
    pub store: &'a Store,
    pub instance: &'a str,
    /// Configured mandatory domains; the UI-managed ones are read from the
    /// store at each action.
    pub mandatory: &'a DomainSet,
    pub paths: &'a ReinjectPaths,
}

impl Executor<'_> {
    /// Carries out `action` and records its outcome (action state, message
    /// and recipient states, audit).
    pub fn execute(&self, action: &ActionRow, now: i64) -> Result<Outcome, ActionError> {
        let outcome = match self.store.message(action.message_id)? {
            None => Outcome::Refused("the message is not known".into()),
            Some(message) => self.run(action, &message, now)?,
        };
        let (state, text, new_id) = match &outcome {
            Outcome::Done {
                result,
                new_queue_id,
            } => ("done", result.as_str(), new_queue_id.as_deref()),
            Outcome::Refused(reason) => ("refused", reason.as_str(), None),
            Outcome::Failed(reason) => ("failed", reason.as_str(), None),
        };
        self.store
            .finish_action(action.id, state, text, new_id, now)?;
        self.store.audit(
            &action.requested_by,
            action.ip.as_deref(),
            Some(action.message_id),
            &format!("{}_{state}", action.action),
            text,
            now,
        )?;
        log::info!(
            "action {} ({} of message {} by {}): {state}: {text}",
            action.id,
            action.action,
            action.message_id,
            action.requested_by
        );
        Ok(outcome)
    }

    fn run(
        &self,
        action: &ActionRow,
        message: &MessageRow,
        now: i64,
    ) -> Result<Outcome, ActionError> {
        match message.state {
            MessageState::Released => {
                return Ok(Outcome::Refused(
                    "the message was already sent unencrypted".into(),
                ))
            }
            MessageState::Deleted => {
                return Ok(Outcome::Refused("the message was already deleted".into()))
            }
            MessageState::Returned => {
                return Ok(Outcome::Refused(
                    "the message was returned to its sender: its recipients require encryption"
                        .into(),
                ))
            }
            MessageState::Gone => {
                return Ok(Outcome::Refused(
                    "the message is no longer in the queue (delivered, expired or removed)".into(),
                ))
            }
            MessageState::Deferred | MessageState::Ignored => {}
        }
        let queued = match self.find_queued(message) {
            Ok(Some(queued)) => queued,
            Ok(None) => {
                self.store
                    .set_message_state(message.id, MessageState::Gone)?;
                return Ok(Outcome::Refused(
                    "the message is no longer in the queue (delivered, expired or removed)".into(),
                ));
            }
            Err(reason) => return Ok(Outcome::Failed(reason)),
        };
        match action.action.as_str() {
            "delete" => self.delete(message, &queued, now),
            "release" => self.release(message, &queued, now),
            other => Ok(Outcome::Refused(format!("unknown action {other:?}"))),
        }
    }

    /// The message in the queue as it is now, if it is still there: same
    /// id, arrival time and sender.
    fn find_queued(&self, message: &MessageRow) -> Result<Option<QueuedMessage>, String> {
        let listing = self.postfix.queue_json().map_err(|e| e.to_string())?;
        Ok(parse_queue(listing.as_slice())
            .messages
            .into_iter()
            .find(|m| {
                m.queue_id.as_str() == message.queue_id
                    && m.arrival_time == message.arrival_time
                    && m.sender == message.sender
            }))
    }

    fn delete(
        &self,
        message: &MessageRow,
        queued: &QueuedMessage,
        _now: i64,
    ) -> Result<Outcome, ActionError> {
        match self.postfix.delete(&queued.queue_id, None) {
            Ok(1) => {
                self.store
                    .set_message_state(message.id, MessageState::Deleted)?;
                for r in self.store.recipients(message.id)? {
                    if r.state == "pending" {
                        self.store
                            .set_recipient_state(message.id, &r.address, "deleted")?;
                    }
                }
                Ok(Outcome::Done {
                    result: "the message was deleted".into(),
                    new_queue_id: None,
                })
            }
            Ok(_) => Ok(Outcome::Refused(
                "the message is no longer in the queue (delivered, expired or removed)".into(),
            )),
            Err(err) => Ok(Outcome::Failed(format!(
                "the message could not be deleted: {err}"
            ))),
        }
    }

    fn release(
        &self,
        message: &MessageRow,
        queued: &QueuedMessage,
        _now: i64,
    ) -> Result<Outcome, ActionError> {
        let mut mandatory = self.mandatory.clone();
        for domain in self.store.mandatory_domains()? {
            let _ = mandatory.insert(&domain);
        }
        let notice = match decide(queued, classify, true, &mandatory) {
            Decision::Notify(notice) => notice,
            Decision::Ignore(reason) => {
                return Ok(Outcome::Refused(format!(
                    "the message no longer waits for TLS ({})",
                    reason.short_name()
                )))
            }
        };
        let released: Vec<String> = notice
            .releasable
            .iter()
            .map(|r| r.address.clone())
            .collect();
        if released.is_empty() {
            return Ok(Outcome::Refused(
                "none of the waiting recipients may be sent unencrypted (their domain requires encryption)".into(),
            ));
        }
        let others: Vec<String> = notice
            .mandatory
            .iter()
            .chain(notice.other_pending.iter())
            .map(|r| r.address.clone())
            .collect();
        let id = &queued.queue_id;
        match self.postfix.hold(id) {
            Ok(1) => {}
            Ok(_) => {
                return Ok(Outcome::Refused(
                    "the message is no longer in the queue (delivered, expired or removed)".into(),
                ))
            }
            Err(err) => {
                return Ok(Outcome::Failed(format!(
                    "the message could not be put on hold: {err}"
                )))
            }
        }
        match self.reinject(id, &queued.sender, &released, &others) {
            Ok((released_copy, others_copy)) => {
                if let Err(err) = self.postfix.delete(id, Some("hold")) {
                    // Copies are out; the original stays on hold, so nobody
                    // gets the message twice. An admin must look.
                    log::error!("{id}: re-injected as {released_copy}, but the original could not be deleted from hold: {err}");
                }
                for address in &released {
                    self.store
                        .set_recipient_state(message.id, address, "released")?;
                }
                self.store
                    .set_message_state(message.id, MessageState::Released)?;
                let mut result = format!(
                    "sent without mandatory encryption to {} (new queue id {released_copy})",
                    released.join(", ")
                );
                if let Some(copy) = others_copy {
                    result.push_str(&format!(
                        "; the other recipients keep their normal delivery (new queue id {copy})"
                    ));
                }
                Ok(Outcome::Done {
                    result,
                    new_queue_id: Some(released_copy),
                })
            }
            Err(reason) => {
                let restored = match self.postfix.unhold(id) {
                    Ok(1) => "the message is back in the queue as it was".to_string(),
                    Ok(_) | Err(_) => {
                        log::error!(
                            "{id}: could not be released from hold after a failed re-injection"
                        );
                        "the message could not be released from hold; the administrator has been told".to_string()
                    }
                };
                Ok(Outcome::Failed(format!("{reason}; {restored}")))
            }
        }
    }

    /// Re-injects the held message: a copy for `released` through the
    /// release listener, one for `others` (if any) through the normal
    /// path. Returns the new queue ids; on failure the copies made so far
    /// are deleted.
    fn reinject(
        &self,
        id: &QueueId,
        sender: &str,
        released: &[String],
        others: &[String],
    ) -> Result<(String, Option<String>), String> {
        let content = self
            .postfix
            .content(id)
            .map_err(|e| format!("the message could not be read: {e}"))?;
        let content = crlf(&content);
        let others_copy = if others.is_empty() {
            None
        } else {
            Some(submit(
                &self.paths.normal,
                sender,
                others,
                &content,
                self.paths.timeout,
            )?)
        };
        match submit(
            &self.paths.release,
            sender,
            released,
            &content,
            self.paths.timeout,
        ) {
            Ok(copy) => Ok((copy, others_copy)),
            Err(reason) => {
                if let Some(copy) = &others_copy {
                    match copy.parse::<QueueId>() {
                        Ok(copy_id) => {
                            if let Err(err) = self.postfix.delete(&copy_id, None) {
                                log::error!("{id}: could not delete copy {copy} after a failed release: {err}");
                            }
                        }
                        Err(_) => log::error!(
                            "{id}: copy {copy} has an unusable queue id and was not deleted"
                        ),
                    }
                }
                Err(reason)
            }
        }
    }
}

/// Line ends as SMTP wants them (`postcat` prints LF).
fn crlf(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 40);
    let mut previous = 0u8;
    for &byte in content {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

/// One SMTP transaction with a loopback listener of the instance; returns
/// the queue id from `250 2.0.0 Ok: queued as ID`.
fn submit(
    listener: &str,
    sender: &str,
    recipients: &[String],
    content: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    let (host, port) = listener
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("listener {listener:?} is not HOST:PORT"))?;
    let parse = |a: &str| {
        a.parse()
            .map_err(|e| format!("{a}: not an address SMTP can carry: {e}"))
    };
    let envelope = Envelope::new(
        if sender == posttls_queue::NULL_SENDER {
            None
        } else {
            Some(parse(sender)?)
        },
        recipients
            .iter()
            .map(|r| parse(r))
            .collect::<Result<_, _>>()?,
    )
    .map_err(|e| e.to_string())?;
    let transport = SmtpTransport::builder_dangerous(host)
        .port(port)
        .tls(Tls::None)
        .timeout(Some(timeout))
        .build();
    let content = content.strip_suffix(b"\r\n").unwrap_or(content);
    let response = transport
        .send_raw(&envelope, content)
        .map_err(|e| format!("the re-injection into {listener} failed: {e}"))?;
    let text = response.message().collect::<Vec<_>>().join(" ");
    text.split_whitespace()
        .skip_while(|w| *w != "as")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("{listener} accepted the copy but named no queue id: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_become_crlf_once() {
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }
}
