//! The queue-actions stage of PostTLS, run by the privileged worker for
//! each request the web process recorded.
//!
//! The worker trusts nothing the (unprivileged) web process wrote: the
//! database names a message and the recipients a request approved, and
//! everything else is read again from the live queue — the message is in
//! the deferred queue (not being delivered), it is ours (our domain AND a
//! local or authenticated submission, from `postcat -e`), it waits for
//! TLS, and the recipients released are the approved ones that still fail
//! TLS and are not in a mandatory-TLS domain ([`plan`]).
//!
//! A release never leaves an original and a live copy at the same time:
//!
//! ```text
//!  journal phase        step                                   undo / finish after a crash
//!  hold                 postsuper -h ID deferred               take it off hold, queue the request again
//!  inject               copies via the private listeners;      delete the copies from hold (they never
//!                       each is put ON HOLD by the listener     left), take the original off hold, again
//!  delete_original      postsuper -d ID hold                   delete it if still held, then release copies
//!  release_copies       postsuper -H COPY...                   release the copies still held
//! ```
//!
//! Each phase is written to the database before its step. Copies carry an
//! `XFORWARD IDENT` marker that Postfix keeps in the queue file, so a
//! restarted worker finds them even when it died before the listener
//! named their queue ids. An action left `running` is settled by
//! [`Executor::recover`] at worker start and before every pass. A delete
//! holds, re-checks and deletes from the hold queue, with the same journal.

pub mod plan;
pub mod smtp;

use std::path::PathBuf;
use std::time::Duration;

use posttls_policy::{DomainSet, OwnSenders};
use posttls_postfix::{Envelope, Postfix, PostfixError};
use posttls_queue::{parse_queue, QueueId, QueuedMessage};
use posttls_store::{
    ActionCopy, ActionKind, ActionRow, ActionState, AuditEvent, CopyRole, MessageRow, MessageState,
    Phase, RecipientOutcome, RecipientState, Store, StoreError,
};

/// The re-injection listeners: `smtpd` services on UNIX-domain sockets
/// under the instance's `private/` directory, each putting what it
/// receives on hold (see docs/posttls.md).
#[derive(Debug, Clone)]
pub struct Listeners {
    /// How the released recipients' copy leaves without mandatory TLS.
    pub release: ReleaseRoute,
    /// For the other pending recipients: the normal path.
    pub keep: PathBuf,
    pub timeout: Duration,
}

/// The header that lets one message go without mandatory TLS on Postfix
/// 3.10 and later (RFC 8689 section 5).
pub const TLS_REQUIRED_NO: &[u8] = b"TLS-Required: No\n";

/// How a released copy goes without mandatory TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRoute {
    /// Postfix before 3.10: its own listener (`posttls-release`), whose
    /// `content_filter` hands it to a transport with
    /// `smtp_tls_security_level = may`.
    Listener(PathBuf),
    /// Postfix 3.10 and later: the `keep` listener with [`TLS_REQUIRED_NO`]
    /// prepended, so the copy follows the instance's own routing
    /// (`relayhost`, `transport_maps`) with TLS at most opportunistic.
    /// Postfix then skips `smtp_tls_policy_maps` for it: a recipient of a
    /// mandatory-TLS domain is never in such a copy ([`plan::release`]).
    TlsRequiredHeader,
}

/// The `release_method` option: how released mail leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseMethod {
    /// The header on Postfix 3.10 and later with `tls_required_enable =
    /// yes`, else the content filter.
    Auto,
    /// [`ReleaseRoute::Listener`], on any Postfix.
    ContentFilter,
    /// [`ReleaseRoute::TlsRequiredHeader`] (Postfix 3.10 and later).
    TlsRequiredHeader,
}

impl ReleaseMethod {
    pub fn parse(text: &str) -> Option<ReleaseMethod> {
        match text {
            "auto" => Some(ReleaseMethod::Auto),
            "content_filter" => Some(ReleaseMethod::ContentFilter),
            "tls_required_header" => Some(ReleaseMethod::TlsRequiredHeader),
            _ => None,
        }
    }

    /// Whether releases go with the `TLS-Required: No` header on an
    /// instance whose `mail_version` is `version` and whose
    /// `tls_required_enable` is `tls_required_enable` (`None` before 3.10,
    /// which has no such parameter). An error when the header was asked for
    /// where Postfix would ignore it.
    pub fn uses_header(
        self,
        version: &str,
        tls_required_enable: Option<&str>,
    ) -> Result<bool, String> {
        let honoured = postfix_version(version).is_some_and(|v| v >= (3, 10))
            && tls_required_enable == Some("yes");
        match self {
            ReleaseMethod::Auto => Ok(honoured),
            ReleaseMethod::ContentFilter => Ok(false),
            ReleaseMethod::TlsRequiredHeader if honoured => Ok(true),
            ReleaseMethod::TlsRequiredHeader => Err(format!(
                "release_method = tls_required_header needs Postfix 3.10 or later with tls_required_enable = yes; \
                 this is Postfix {version} (tls_required_enable = {}): use content_filter or auto",
                tls_required_enable.unwrap_or("unknown")
            )),
        }
    }
}

/// `(major, minor)` of a Postfix `mail_version` such as `3.10.13`.
pub fn postfix_version(mail_version: &str) -> Option<(u32, u32)> {
    let mut parts = mail_version.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out; a text for the sender.
    Done {
        result: String,
        new_queue_id: Option<String>,
    },
    /// Not carried out: the queue or the policy does not allow it.
    Refused(String),
    /// Not carried out because something went wrong; the queue is as it
    /// was.
    Failed(String),
    /// Not now (the message is being delivered, or a crashed attempt was
    /// undone): queued again.
    Postponed(String),
    /// An interrupted attempt was undone: queued again, to be taken at
    /// once.
    Retry(String),
    /// Interrupted by an error that left work to finish (a Postfix
    /// command failed half-way); left running for [`Executor::recover`].
    Unsettled(String),
}

const TAKEN_OFF_HOLD: &str = "the message was taken off hold by someone else; nothing was sent";

/// How long a postponed action waits before it is taken again.
const POSTPONE_SECONDS: i64 = 20;
/// How often an action is taken (and interrupted) before it fails.
const MAX_ATTEMPTS: i64 = 10;

pub struct Executor<'a> {
    pub postfix: &'a Postfix,
    pub store: &'a Store,
    /// This worker's instance: it acts only on messages recorded for it.
    pub instance: &'a str,
    pub own: &'a OwnSenders,
    /// Configured mandatory domains; the UI-managed ones are read from the
    /// store at each action (they can only add restrictions).
    pub mandatory: &'a DomainSet,
    pub listeners: &'a Listeners,
}

type Step<T> = Result<T, Outcome>;

impl Executor<'_> {
    /// Carries out a freshly taken action and records its outcome.
    pub fn execute(&self, action: &ActionRow, now: i64) -> Result<Outcome, StoreError> {
        let outcome = match self.checked_message(action)? {
            Err(outcome) => outcome,
            Ok(message) => match action.action {
                ActionKind::Release => self.release(action, &message)?,
                ActionKind::Delete => self.delete(action, &message)?,
            },
        };
        self.settle(action, outcome, now)
    }

    /// Finishes or undoes an action left running, from its journal and
    /// the live queue.
    pub fn recover(&self, action: &ActionRow, now: i64) -> Result<Outcome, StoreError> {
        log::warn!(
            "action {} ({} of message {}) was left {} at phase {}: settling it",
            action.id,
            action.action,
            action.message_id,
            action.state,
            action.phase.map_or("(none)", |p| p.as_str())
        );
        let outcome = match self.store.message(action.message_id)? {
            None => Outcome::Refused("the message is not known".into()),
            Some(message) => self.recover_message(action, &message)?,
        };
        self.settle(action, outcome, now)
    }

    /// Records an outcome: the action's state, the audit log, the log.
    fn settle(
        &self,
        action: &ActionRow,
        outcome: Outcome,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        let outcome = match outcome {
            Outcome::Postponed(why) | Outcome::Retry(why)
                if self.store.attempts(action.id)? >= MAX_ATTEMPTS =>
            {
                Outcome::Failed(format!("given up after {MAX_ATTEMPTS} attempts: {why}"))
            }
            other => other,
        };
        let (state, text, new_id) = match &outcome {
            Outcome::Done {
                result,
                new_queue_id,
            } => (ActionState::Done, result.as_str(), new_queue_id.as_deref()),
            Outcome::Refused(reason) => (ActionState::Refused, reason.as_str(), None),
            Outcome::Failed(reason) => (ActionState::Failed, reason.as_str(), None),
            Outcome::Postponed(why) => {
                self.store
                    .postpone_action(action.id, now + POSTPONE_SECONDS, why)?;
                log::info!("action {} postponed: {why}", action.id);
                return Ok(outcome);
            }
            Outcome::Retry(why) => {
                self.store.postpone_action(action.id, now, why)?;
                log::info!("action {} queued again: {why}", action.id);
                return Ok(outcome);
            }
            Outcome::Unsettled(why) => {
                log::error!(
                    "action {} ({} of message {}) is unfinished and will be settled at the next pass: {why}",
                    action.id,
                    action.action,
                    action.message_id
                );
                return Ok(outcome);
            }
        };
        self.store
            .finish_action(action.id, state, text, new_id, now)?;
        self.store.audit(
            &action.requested_by,
            action.ip.as_deref(),
            Some(action.message_id),
            AuditEvent::Finished(action.action, state),
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

    /// The action's message, if it is one this worker may act on at all.
    fn checked_message(&self, action: &ActionRow) -> Result<Step<MessageRow>, StoreError> {
        let Some(message) = self.store.message(action.message_id)? else {
            return Ok(Err(Outcome::Refused("the message is not known".into())));
        };
        if message.instance != self.instance {
            return Ok(Err(Outcome::Refused(format!(
                "the message is queued on instance {:?}, not this one",
                message.instance
            ))));
        }
        let refusal = match message.state {
            MessageState::Released => "the message was already sent unencrypted",
            MessageState::Deleted => "the message was already deleted",
            MessageState::Returned => {
                "the message was returned to its sender: its recipients require encryption"
            }
            MessageState::Gone => {
                "the message is no longer in the queue (delivered, expired or removed)"
            }
            MessageState::Ignored => "the message is not one PostTLS acts on",
            MessageState::Deferred => return Ok(Ok(message)),
        };
        Ok(Err(Outcome::Refused(refusal.into())))
    }

    fn queue_id(message: &MessageRow) -> Step<QueueId> {
        message
            .queue_id
            .parse()
            .map_err(|e| Outcome::Refused(format!("the stored queue id is not valid: {e}")))
    }

    /// The queue listing now.
    fn listing(&self) -> Step<Vec<QueuedMessage>> {
        let listing = self
            .postfix
            .queue_json()
            .map_err(|e| Outcome::Postponed(format!("the queue cannot be read: {e}")))?;
        Ok(parse_queue(listing.as_slice()).messages)
    }

    /// The message in a listing: same id, arrival time and sender.
    fn find<'l>(listing: &'l [QueuedMessage], message: &MessageRow) -> Option<&'l QueuedMessage> {
        listing.iter().find(|m| {
            m.queue_id.as_str() == message.queue_id
                && m.arrival_time == message.arrival_time
                && m.sender == message.sender
        })
    }

    fn gone(&self, message: &MessageRow) -> Result<Outcome, StoreError> {
        self.store
            .set_message_state(message.id, MessageState::Gone)?;
        Ok(Outcome::Refused(
            "the message is no longer in the queue (delivered, expired or removed)".into(),
        ))
    }

    fn mandatory_domains(&self) -> Result<DomainSet, StoreError> {
        let mut mandatory = self.mandatory.clone();
        for domain in self.store.mandatory_domains()? {
            // A domain the web process stored that is no domain adds
            // nothing (it can only ever add restrictions).
            let _ = mandatory.insert(&domain);
        }
        Ok(mandatory)
    }

    /// Holds the message if it waits in the deferred queue and passes
    /// `check` (a refusal before the queue is touched); the listing entry
    /// taken just before (with the delay reasons).
    fn hold(
        &self,
        action: &ActionRow,
        message: &MessageRow,
        check: impl FnOnce(&QueuedMessage) -> Option<Outcome>,
    ) -> Result<Step<QueuedMessage>, StoreError> {
        let id = match Self::queue_id(message) {
            Ok(id) => id,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let listing = match self.listing() {
            Ok(l) => l,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let Some(queued) = Self::find(&listing, message) else {
            return Ok(Err(self.gone(message)?));
        };
        match queued.queue_name.as_str() {
            "deferred" => {}
            "hold" => {
                return Ok(Err(Outcome::Refused(
                    "the message is on hold: an administrator must release it first".into(),
                )))
            }
            other => {
                return Ok(Err(Outcome::Postponed(format!(
                    "the message is in the {other} queue (being delivered right now)"
                ))))
            }
        }
        if let Some(refusal) = check(queued) {
            return Ok(Err(refusal));
        }
        self.store.set_phase(action.id, Phase::Hold)?;
        match self.postfix.hold_deferred(&id) {
            Ok(1) => Ok(Ok(queued.clone())),
            Ok(_) => Ok(Err(Outcome::Postponed(
                "the message left the deferred queue just now".into(),
            ))),
            Err(err) => Ok(Err(Outcome::Postponed(format!(
                "the message could not be put on hold: {err}"
            )))),
        }
    }

    /// Whether a listener answers, offers XFORWARD, and is a master.cf
    /// service that puts what it receives on hold (a copy that left at
    /// once could go out before the original is deleted).
    fn listener_ready(&self, listener: &std::path::Path) -> Result<(), String> {
        smtp::probe(listener, self.listeners.timeout).map_err(|e| e.to_string())?;
        let service = listener
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let restrictions = self
            .postfix
            .service_setting(service, "smtpd_end_of_data_restrictions")
            .map_err(|e| e.to_string())?;
        if restrictions.to_ascii_uppercase().contains("HOLD") {
            Ok(())
        } else {
            Err(format!(
                "master.cf service {service} must put copies on hold \
                 (-o smtpd_end_of_data_restrictions=check_client_access,static:HOLD; see docs/posttls.md)"
            ))
        }
    }

    /// `postcat -e` of the held original; on failure it is taken off hold.
    fn held_envelope(&self, message: &MessageRow) -> Step<Envelope> {
        let id = Self::queue_id(message)?;
        match self.postfix.envelope(&id) {
            Ok(envelope) if envelope.queue_name.as_deref() == Some("hold") => Ok(envelope),
            Ok(envelope) => Err(self.unhold_then(
                &id,
                Outcome::Postponed(format!(
                    "the message is in the {} queue, not on hold",
                    envelope.queue_name.as_deref().unwrap_or("unknown")
                )),
            )),
            Err(err) => Err(self.unhold_then(
                &id,
                Outcome::Postponed(format!("the message could not be read: {err}")),
            )),
        }
    }

    /// Takes the original off hold, then ends with `outcome`; if that
    /// fails, the action stays unsettled (and is settled next pass).
    fn unhold_then(&self, id: &QueueId, outcome: Outcome) -> Outcome {
        match self.postfix.unhold(id) {
            Ok(_) => outcome,
            Err(err) => Outcome::Unsettled(format!("{id} could not be taken off hold: {err}")),
        }
    }

    fn delete(&self, action: &ActionRow, message: &MessageRow) -> Result<Outcome, StoreError> {
        let queued = match self.hold(action, message, |_| None)? {
            Ok(q) => q,
            Err(outcome) => return Ok(outcome),
        };
        let envelope = match self.held_envelope(message) {
            Ok(e) => e,
            Err(outcome) => return Ok(outcome),
        };
        let id = queued.queue_id.clone();
        if let Err(refusal) =
            plan::check_message(&queued, &envelope, self.own, &self.mandatory_domains()?)
        {
            return Ok(self.unhold_then(&id, Outcome::Refused(refusal.0)));
        }
        self.store.set_phase(action.id, Phase::DeleteOriginal)?;
        self.finish_delete(action, message, &id)
    }

    /// Deletes the held original of a delete request.
    fn finish_delete(
        &self,
        action: &ActionRow,
        message: &MessageRow,
        id: &QueueId,
    ) -> Result<Outcome, StoreError> {
        match self.postfix.delete(id, Some("hold")) {
            Ok(0) if self.postfix.envelope(id).is_ok() => Ok(Outcome::Failed(
                "the message was taken off hold by someone else; it was not deleted".into(),
            )),
            // Also when nothing was left to delete: a worker that died after
            // the deletion.
            Ok(_) => {
                let tx = self.store.transaction()?;
                self.store
                    .set_message_state(message.id, MessageState::Deleted)?;
                for r in self.store.recipients(message.id)? {
                    if r.state == RecipientState::Pending {
                        self.store.set_recipient_state(
                            message.id,
                            &r.address,
                            RecipientState::Deleted,
                        )?;
                        self.store.set_recipient_outcome(
                            action.id,
                            &r.address,
                            RecipientOutcome::Deleted,
                            None,
                        )?;
                    }
                }
                tx.commit()?;
                Ok(Outcome::Done {
                    result: "the message was deleted".into(),
                    new_queue_id: None,
                })
            }
            Err(err) => Ok(Outcome::Unsettled(format!(
                "{id} could not be deleted: {err}"
            ))),
        }
    }

    fn release(&self, action: &ActionRow, message: &MessageRow) -> Result<Outcome, StoreError> {
        // Both listeners answer and hold what they receive before
        // anything is done to the queue.
        let release_listener = match &self.listeners.release {
            ReleaseRoute::Listener(listener) => Some(listener),
            ReleaseRoute::TlsRequiredHeader => None,
        };
        for listener in release_listener.into_iter().chain([&self.listeners.keep]) {
            if let Err(why) = self.listener_ready(listener) {
                return Ok(Outcome::Failed(format!(
                    "the re-injection listener is not usable: {why}; the message was not touched"
                )));
            }
        }
        let approved: Vec<String> = self
            .store
            .action_recipients(action.id)?
            .into_iter()
            .filter(|r| r.approved)
            .map(|r| r.address)
            .collect();
        // Every address must be one SMTP can carry before the queue is
        // touched.
        let addresses_usable = |queued: &QueuedMessage| {
            std::iter::once(queued.sender.as_str())
                .filter(|_| !queued.is_null_sender())
                .chain(queued.recipients.iter().map(|r| r.address.as_str()))
                .find_map(|a| smtp::check_address(&plan::internal_form(a)).err())
                .map(|err| Outcome::Refused(format!("{err}; the message was not touched")))
        };
        let queued = match self.hold(action, message, addresses_usable)? {
            Ok(q) => q,
            Err(outcome) => return Ok(outcome),
        };
        let id = queued.queue_id.clone();
        let envelope = match self.held_envelope(message) {
            Ok(e) => e,
            Err(outcome) => return Ok(outcome),
        };
        let plan = match plan::release(
            &approved,
            &queued,
            &envelope,
            self.own,
            &self.mandatory_domains()?,
        ) {
            Ok(plan) => plan,
            Err(refusal) => return Ok(self.unhold_then(&id, Outcome::Refused(refusal.0))),
        };
        let content = match self.postfix.content(&id) {
            Ok(c) => c,
            Err(err) => {
                return Ok(self.unhold_then(
                    &id,
                    Outcome::Failed(format!("the message could not be read: {err}")),
                ))
            }
        };
        // The journal: who goes where, and the copies' markers.
        let copies: Vec<(ActionCopy, Vec<posttls_postfix::EnvelopeRecipient>)> = [
            (CopyRole::Release, plan.release.clone()),
            (CopyRole::Keep, plan.keep.clone()),
        ]
        .into_iter()
        .filter(|(_, recipients)| !recipients.is_empty())
        .map(|(role, recipients)| {
            (
                ActionCopy {
                    role,
                    marker: marker(action.id, role),
                    recipients: recipients.iter().map(|r| r.address.clone()).collect(),
                    queue_id: None,
                },
                recipients,
            )
        })
        .collect();
        let tx = self.store.transaction()?;
        for (address, outcome, why) in &plan.outcomes {
            self.store
                .set_recipient_outcome(action.id, address, *outcome, why.as_deref())?;
        }
        for (copy, _) in &copies {
            self.store.add_copy(action.id, copy)?;
        }
        self.store.set_phase(action.id, Phase::Inject)?;
        tx.commit()?;

        let released_content = match &self.listeners.release {
            ReleaseRoute::Listener(_) => None,
            ReleaseRoute::TlsRequiredHeader => Some([TLS_REQUIRED_NO, &content].concat()),
        };
        for (copy, recipients) in &copies {
            let (listener, content): (&PathBuf, &[u8]) = match &self.listeners.release {
                _ if copy.role == CopyRole::Keep => (&self.listeners.keep, &content),
                ReleaseRoute::Listener(listener) => (listener, &content),
                ReleaseRoute::TlsRequiredHeader => (
                    &self.listeners.keep,
                    released_content.as_deref().unwrap_or(&content),
                ),
            };
            let submission = smtp::Submission {
                envelope: &envelope,
                recipients,
                marker: &copy.marker,
                content,
            };
            let copy_id = match smtp::submit(listener, &submission, self.listeners.timeout) {
                Ok(copy_id) => copy_id,
                Err(err) => {
                    return Ok(self.undo_copies(
                        action,
                        message,
                        Outcome::Failed(format!("the copy could not be re-injected: {err}")),
                    ))
                }
            };
            self.store
                .set_copy_queue_id(action.id, copy.role, &copy_id)?;
            // The copy must be on hold with exactly its recipients.
            let held = copy_id
                .parse::<QueueId>()
                .ok()
                .and_then(|cid| self.postfix.envelope(&cid).ok())
                .filter(|e| {
                    e.queue_name.as_deref() == Some("hold")
                        && e.log_ident.as_deref() == Some(copy.marker.as_str())
                        && same_set(e.recipient_addresses(), &copy.recipients)
                });
            if held.is_none() {
                return Ok(self.undo_copies(
                    action,
                    message,
                    Outcome::Failed(format!(
                        "the copy {copy_id} is not on hold as it must be: is the listener set up to HOLD (see docs/posttls.md)?"
                    )),
                ));
            }
        }
        self.store.set_phase(action.id, Phase::DeleteOriginal)?;
        self.finish_release(action, message, &id)
    }

    /// Deletes the held original (every copy is on hold), then releases
    /// the copies.
    fn finish_release(
        &self,
        action: &ActionRow,
        message: &MessageRow,
        id: &QueueId,
    ) -> Result<Outcome, StoreError> {
        let found = match self.held_copies(action, message) {
            Ok(found) => found,
            Err(outcome) => return Ok(outcome),
        };
        let journal = self.store.copies(action.id)?;
        let complete = journal.iter().all(|copy| {
            found.iter().any(|(role, _, e)| {
                *role == copy.role && same_set(e.recipient_addresses(), &copy.recipients)
            })
        });
        match self.postfix.envelope(id) {
            Ok(original) if original.queue_name.as_deref() == Some("hold") => {
                // Delete the original only when the held copies carry every
                // recipient it still has.
                let covered = original.recipient_addresses().all(|a| {
                    found
                        .iter()
                        .any(|(_, _, e)| e.recipient_addresses().any(|c| c == a))
                });
                if !complete || !covered {
                    return Ok(self.undo_copies(
                        action,
                        message,
                        Outcome::Failed(
                            "the copies do not match the message; nothing was sent".into(),
                        ),
                    ));
                }
                match self.postfix.delete(id, Some("hold")) {
                    Ok(1) => {}
                    Ok(_) => {
                        return Ok(self.undo_copies(
                            action,
                            message,
                            Outcome::Failed(TAKEN_OFF_HOLD.into()),
                        ))
                    }
                    Err(err) => {
                        return Ok(Outcome::Unsettled(format!(
                            "{id} could not be deleted: {err}"
                        )))
                    }
                }
            }
            // Not on hold: someone released it, so its recipients keep
            // their normal path and the copies go.
            Ok(_) => {
                return Ok(self.undo_copies(
                    action,
                    message,
                    Outcome::Failed(TAKEN_OFF_HOLD.into()),
                ))
            }
            // No queue file: deleted at this phase by the worker that died.
            Err(PostfixError::Failed { .. }) => {}
            Err(err) => return Ok(Outcome::Unsettled(format!("{id} could not be read: {err}"))),
        }
        self.store.set_phase(action.id, Phase::ReleaseCopies)?;
        self.release_copies(action, message)
    }

    /// Releases every held copy of the action and records the result.
    fn release_copies(
        &self,
        action: &ActionRow,
        message: &MessageRow,
    ) -> Result<Outcome, StoreError> {
        let found = match self.held_copies(action, message) {
            Ok(found) => found,
            Err(outcome) => return Ok(outcome),
        };
        for (_, copy_id, _) in &found {
            if let Err(err) = self.postfix.unhold(copy_id) {
                return Ok(Outcome::Unsettled(format!(
                    "copy {copy_id} could not be released from hold: {err}"
                )));
            }
        }
        // Off hold is the deferred queue: every copy is tried now, not at
        // the next queue run (also one released by a worker that died).
        for copy in self.store.copies(action.id)? {
            if let Some(copy_id) = copy.queue_id.and_then(|id| id.parse::<QueueId>().ok()) {
                if let Err(err) = self.postfix.retry(&copy_id) {
                    log::warn!("copy {copy_id}: released, but not retried now: {err}");
                }
            }
        }
        let tx = self.store.transaction()?;
        let recipients = self.store.action_recipients(action.id)?;
        for r in &recipients {
            if r.outcome == Some(RecipientOutcome::Released) {
                self.store
                    .set_recipient_state(message.id, &r.address, RecipientState::Released)?;
            }
        }
        self.store
            .set_message_state(message.id, MessageState::Released)?;
        tx.commit()?;
        let copies = self.store.copies(action.id)?;
        let id_of = |role| {
            copies
                .iter()
                .find(|c| c.role == role)
                .and_then(|c| c.queue_id.clone())
        };
        let released_id = id_of(CopyRole::Release);
        let mut result = format!(
            "sent without mandatory encryption to {}",
            recipients
                .iter()
                .filter(|r| r.outcome == Some(RecipientOutcome::Released))
                .map(|r| r.address.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(copy) = &released_id {
            result.push_str(&format!(" (new queue id {copy})"));
        }
        let others: Vec<String> = recipients
            .iter()
            .filter(|r| r.outcome != Some(RecipientOutcome::Released))
            .map(|r| format!("{}: {}", r.address, r.why.as_deref().unwrap_or("kept")))
            .collect();
        if !others.is_empty() {
            result.push_str(&format!("; not released: {}", others.join("; ")));
        }
        if let Some(copy) = id_of(CopyRole::Keep) {
            result.push_str(&format!(
                "; the other recipients keep their normal delivery (new queue id {copy})"
            ));
        }
        Ok(Outcome::Done {
            result,
            new_queue_id: released_id,
        })
    }

    /// The action's copies that are on hold: role, queue id, envelope.
    fn held_copies(
        &self,
        action: &ActionRow,
        message: &MessageRow,
    ) -> Step<Vec<(CopyRole, QueueId, Envelope)>> {
        let journal = self
            .store
            .copies(action.id)
            .map_err(|e| Outcome::Unsettled(e.to_string()))?;
        if journal.is_empty() {
            return Ok(Vec::new());
        }
        let listing = self.listing().map_err(|o| match o {
            Outcome::Postponed(why) => Outcome::Unsettled(why),
            other => other,
        })?;
        let mut found = Vec::new();
        for held in listing
            .iter()
            .filter(|m| m.queue_name == "hold" && m.sender == message.sender)
        {
            let envelope = match self.postfix.envelope(&held.queue_id) {
                Ok(e) => e,
                // Left the hold queue meanwhile: not one to act on.
                Err(PostfixError::Failed { .. }) => continue,
                Err(err) => return Err(Outcome::Unsettled(format!("{}: {err}", held.queue_id))),
            };
            if let Some(copy) = journal
                .iter()
                .find(|c| envelope.log_ident.as_deref() == Some(c.marker.as_str()))
            {
                found.push((copy.role, held.queue_id.clone(), envelope));
            }
        }
        Ok(found)
    }

    /// Deletes the action's held copies, takes the original off hold and
    /// ends with `outcome` (a failure: the queue is as it was).
    fn undo_copies(&self, action: &ActionRow, message: &MessageRow, outcome: Outcome) -> Outcome {
        let found = match self.held_copies(action, message) {
            Ok(found) => found,
            Err(unsettled) => return unsettled,
        };
        for (_, copy_id, _) in &found {
            if let Err(err) = self.postfix.delete(copy_id, Some("hold")) {
                return Outcome::Unsettled(format!("copy {copy_id} could not be deleted: {err}"));
            }
        }
        match Self::queue_id(message) {
            Ok(id) => {
                let outcome = match outcome {
                    Outcome::Failed(why) => Outcome::Failed(format!(
                        "{why}; the message is back in the queue as it was"
                    )),
                    other => other,
                };
                self.unhold_then(&id, outcome)
            }
            Err(refused) => refused,
        }
    }

    /// Whether a queue file is a message of our own senders (the journal
    /// of a recovered action is no reason to touch anyone else's mail).
    fn ours(&self, envelope: &Envelope) -> bool {
        let evidence = posttls_policy::SubmissionEvidence {
            local_submission: envelope.local_submission,
            sasl_username: envelope.sasl_username.clone(),
        };
        self.own.is_own(&envelope.sender, &evidence)
    }

    fn recover_message(
        &self,
        action: &ActionRow,
        message: &MessageRow,
    ) -> Result<Outcome, StoreError> {
        let id = match Self::queue_id(message) {
            Ok(id) => id,
            Err(outcome) => return Ok(outcome),
        };
        let interrupted = "an earlier attempt was interrupted and undone".to_string();
        Ok(match (action.action, action.phase) {
            // Taken, nothing done to the queue yet.
            (_, None) => Outcome::Retry(interrupted),
            (_, Some(Phase::Hold)) => {
                let held = self
                    .postfix
                    .envelope(&id)
                    .is_ok_and(|e| e.queue_name.as_deref() == Some("hold") && self.ours(&e));
                if held {
                    self.unhold_then(&id, Outcome::Retry(interrupted))
                } else {
                    Outcome::Retry(interrupted)
                }
            }
            (ActionKind::Release, Some(Phase::Inject)) => {
                match self.undo_copies(action, message, Outcome::Retry(interrupted)) {
                    // The original is not held any more: it was deleted or
                    // released by someone else; the request ends here.
                    Outcome::Unsettled(why) if self.postfix.envelope(&id).is_err() => {
                        Outcome::Failed(format!("{why}; the message is no longer in the queue"))
                    }
                    other => other,
                }
            }
            (ActionKind::Release, Some(Phase::DeleteOriginal)) => {
                self.finish_release(action, message, &id)?
            }
            (ActionKind::Release, Some(Phase::ReleaseCopies)) => {
                self.release_copies(action, message)?
            }
            (ActionKind::Delete, Some(Phase::DeleteOriginal)) => match self.postfix.envelope(&id) {
                Ok(e) if !self.ours(&e) => {
                    Outcome::Refused("the message is not one of ours".into())
                }
                _ => self.finish_delete(action, message, &id)?,
            },
            (ActionKind::Delete, Some(phase)) => {
                Outcome::Failed(format!("a delete has no phase {phase}; nothing was done"))
            }
        })
    }
}

/// The `XFORWARD IDENT` of a copy: Postfix logs it as `orig_queue_id` and
/// keeps it in the queue file as `log_ident`.
fn marker(action_id: i64, role: CopyRole) -> String {
    format!("posttls.{action_id}.{role}")
}

fn same_set<'a>(a: impl Iterator<Item = &'a str>, b: &[String]) -> bool {
    let mut a: Vec<&str> = a.collect();
    let mut b: Vec<&str> = b.iter().map(String::as_str).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_header_only_where_postfix_honours_it() {
        let auto = ReleaseMethod::Auto;
        assert_eq!(auto.uses_header("3.7.11", None), Ok(false));
        assert_eq!(auto.uses_header("3.9.0", None), Ok(false));
        assert_eq!(auto.uses_header("3.10.13", Some("yes")), Ok(true));
        assert_eq!(auto.uses_header("3.11.1", Some("yes")), Ok(true));
        assert_eq!(auto.uses_header("3.10.13", Some("no")), Ok(false));
        assert_eq!(auto.uses_header("4.0.0", Some("yes")), Ok(true));
        assert_eq!(
            ReleaseMethod::ContentFilter.uses_header("3.10.13", Some("yes")),
            Ok(false)
        );
        assert!(ReleaseMethod::TlsRequiredHeader
            .uses_header("3.7.11", None)
            .unwrap_err()
            .contains("needs Postfix 3.10"));
        assert_eq!(ReleaseMethod::parse("content-filter"), None);
        assert_eq!(
            ReleaseMethod::parse("tls_required_header"),
            Some(ReleaseMethod::TlsRequiredHeader)
        );
    }
}
