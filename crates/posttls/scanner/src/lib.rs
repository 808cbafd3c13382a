//! The scanner stage of PostTLS: one pass over the Postfix queue.
//!
//! ```text
//! postqueue -j --> parse --> classify each pending recipient's delay reason
//!   --> own sender? (domain, then postcat -e of the new messages: local or
//!       authenticated submission)
//!   --> decide (mandatory domains never releasable)
//!   --> store (message, recipients), in short write transactions;
//!       messages no longer queued --> gone
//!   --> mandatory policy: postsuper -e or -d, then store the outcome
//!   --> notify: first notice, reminders; store each outcome
//! ```
//!
//! Only messages with at least one TLS-failed pending recipient cost more
//! than parsing: `postcat` reads each such message once, when it is first
//! seen (its evidence and subject are stored), never again.
//!
//! No Postfix command runs and no mail is sent while a write transaction
//! is open: the web process writes to the same database and must not wait
//! for them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use posttls_classify::{classify, Classification};
use posttls_notify::{
    build_mail, subject_of, Notification, NotificationKind, RecipientLine, Templates,
};
use posttls_policy::{decide, Decision, DomainSet, Notice, OwnSenders, SubmissionEvidence};
use posttls_postfix::{Postfix, PostfixError};
use posttls_queue::{parse_queue, QueueId, QueueScan, QueuedMessage};
use posttls_store::{
    AuditEvent, MessageRow, MessageState, NotificationOutcome, SeenMessage, SeenRecipient, Store,
    StoreError,
};
use posttls_token::{Action, ActionToken, SecretKey};

/// Longest time the scan holds the database's write lock at once.
const BATCH_TIME: Duration = Duration::from_millis(200);

/// Sends a finished notification mail to one address.
pub trait Mailer {
    fn send(&self, to: &str, message: &[u8]) -> Result<(), String>;
}

/// What the scanner needs to know.
pub struct ScanConfig {
    /// This Postfix instance's name, bound into every token.
    pub instance: String,
    pub own: OwnSenders,
    /// Configured mandatory-TLS domains (the UI-managed ones come from the
    /// store).
    pub mandatory: DomainSet,
    pub organization: String,
    pub notification_from: String,
    /// Where the confirmation pages are, e.g. `https://posttls.example.org`.
    pub base_url: String,
    pub link_lifetime: Duration,
    /// Time between notices about the same message; `None`: no reminders.
    pub reminder_interval: Option<Duration>,
    /// At most this many reminders (the original reminded every 30 minutes
    /// forever).
    pub max_reminders: u32,
    /// What happens to a message whose waiting recipients are all in
    /// mandatory-TLS domains.
    pub mandatory_policy: MandatoryPolicy,
    /// Postfix's `maximal_queue_lifetime`: a message that leaves the queue
    /// this old has expired (and bounced) rather than been delivered.
    pub queue_lifetime: Duration,
}

/// The fate of a message that may never be sent unencrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MandatoryPolicy {
    /// Return it to the sender now (`postsuper -e`: Postfix bounces it
    /// with the delay reason).
    Return,
    /// Delete it (`postsuper -d`) and tell the sender, as the original
    /// PostTLS did.
    Delete,
    /// Leave it: Postfix keeps trying encrypted until it expires.
    Wait,
}

impl MandatoryPolicy {
    pub fn parse(text: &str) -> Option<MandatoryPolicy> {
        match text {
            "return" => Some(MandatoryPolicy::Return),
            "delete" => Some(MandatoryPolicy::Delete),
            "wait" => Some(MandatoryPolicy::Wait),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Postfix(#[from] PostfixError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the queue file says of a message's sender, read once.
#[derive(Debug, Clone, Copy, Default)]
struct Own {
    /// One of our own senders (domain and local or authenticated
    /// submission).
    sender: bool,
    /// It asked for REQUIRETLS: never released.
    requiretls: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub queued: usize,
    /// Messages waiting for a sender's decision.
    pub tls_deferred: usize,
    pub notified: usize,
    pub reminded: usize,
    /// Messages with a TLS failure that are not ours to notify about.
    pub ignored: usize,
    pub gone: usize,
    /// Lines of the queue listing that could not be read, notifications
    /// that could not be sent: one line each, for the log.
    pub problems: Vec<String>,
    /// Until every decision was made and stored (before notifications
    /// were sent).
    pub decided: Duration,
    pub elapsed: Duration,
}

/// Envelope evidence and header block of new messages, by queue id.
type Evidence = HashMap<String, (posttls_postfix::Envelope, Vec<u8>)>;

/// Queue ids per `postcat` run.
const POSTCAT_BATCH: usize = 500;

/// What one pass knows before it looks at each message.
struct Pass<'p> {
    mandatory: &'p DomainSet,
    cache: &'p ClassifyCache,
    evidence: &'p Evidence,
    now: DateTime<Utc>,
}

/// A notification decided on, to be sent once all decisions are stored.
struct Outgoing {
    message_id: i64,
    notification: Notification,
    sequence: usize,
}

/// A stored message whose sender may be told that it waits for TLS.
struct Deferral<'m> {
    message: &'m QueuedMessage,
    /// Its row in the store.
    id: i64,
    subject: Option<String>,
    notice: Notice<'m>,
    /// Its sender asked for REQUIRETLS.
    requiretls: bool,
}

/// What the write transactions of a pass leave to be done after them.
#[derive(Default)]
struct Later<'m> {
    /// Messages whose waiting recipients all require TLS, to be returned
    /// or deleted (`mandatory_policy`).
    mandatory: Vec<Deferral<'m>>,
    outbox: Vec<Outgoing>,
}

pub struct Scanner<'a> {
    pub config: &'a ScanConfig,
    pub store: &'a Store,
    pub postfix: &'a Postfix,
    pub templates: &'a Templates,
    pub key: &'a SecretKey,
    pub mailer: &'a dyn Mailer,
}

/// The delay reasons of a queue repeat; classify each text once per pass.
#[derive(Default)]
struct ClassifyCache(RefCell<HashMap<String, Classification>>);

impl ClassifyCache {
    fn get(&self, reason: &str) -> Classification {
        if let Some(c) = self.0.borrow().get(reason) {
            return c.clone();
        }
        let c = classify(reason);
        self.0.borrow_mut().insert(reason.to_string(), c.clone());
        c
    }
}

impl Scanner<'_> {
    /// One pass at time `now`.
    pub fn scan(&self, now: DateTime<Utc>) -> Result<ScanReport, ScanError> {
        let started = Instant::now();
        let listing = self.postfix.queue_json()?;
        let scan = parse_queue(listing.as_slice());
        let mut report = ScanReport {
            queued: scan.messages.len(),
            ..ScanReport::default()
        };
        for (line, error) in &scan.errors {
            report
                .problems
                .push(format!("postqueue -j line {line}: {error}"));
        }
        let mut mandatory = self.config.mandatory.clone();
        for domain in self.store.mandatory_domains()? {
            let _ = mandatory.insert(&domain);
        }
        let cache = ClassifyCache::default();
        let candidates: Vec<&QueuedMessage> = scan
            .messages
            .iter()
            .filter(|message| {
                !message.is_null_sender()
                    && message.pending_recipients().any(|r| {
                        r.delay_reason.as_deref().is_some_and(|reason| {
                            matches!(cache.get(reason), Classification::Tls(_))
                        })
                    })
            })
            .collect();
        let evidence = self.gather_evidence(&candidates, &mut report)?;
        let pass = Pass {
            mandatory: &mandatory,
            cache: &cache,
            evidence: &evidence,
            now,
        };
        let mut later = Later::default();
        self.store_decisions(&candidates, &scan, &pass, &mut report, &mut later)?;
        for deferral in &later.mandatory {
            if let Err(err) =
                self.apply_mandatory_policy(deferral, now, &mut report, &mut later.outbox)
            {
                report
                    .problems
                    .push(format!("message {}: {err}", deferral.message.queue_id));
            }
        }
        report.decided = started.elapsed();
        for outgoing in later.outbox {
            self.send_notification(outgoing, now, &mut report)?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Envelope evidence and headers of the candidates that are new and
    /// from one of our domains, read with a few `postcat` runs instead of
    /// one per message; one by one those that such a run missed. A message
    /// that cannot be read is left out (and reported).
    fn gather_evidence(
        &self,
        candidates: &[&QueuedMessage],
        report: &mut ScanReport,
    ) -> Result<Evidence, ScanError> {
        let mut needed = Vec::new();
        for message in candidates {
            if self.config.own.domains.contains_address(&message.sender)
                && self
                    .store
                    .find_message(
                        &self.config.instance,
                        message.queue_id.as_str(),
                        message.arrival_time,
                    )?
                    .is_none()
            {
                needed.push(&message.queue_id);
            }
        }
        let mut evidence = Evidence::new();
        let mut runs = 0;
        for chunk in needed.chunks(POSTCAT_BATCH) {
            runs += 1;
            match self.postfix.envelopes_and_headers(chunk) {
                Ok(files) => evidence.extend(files),
                // A message that left meanwhile stops postcat: the rest
                // is read one by one.
                Err(err) => report.problems.push(format!(
                    "postcat of {} messages at once: {err}",
                    chunk.len()
                )),
            }
        }
        for id in &needed {
            if evidence.contains_key(id.as_str()) {
                continue;
            }
            runs += 1;
            match self.postfix.envelope_and_headers(id) {
                Ok(found) => {
                    evidence.insert(id.as_str().to_string(), found);
                }
                Err(err) => report.problems.push(format!("message {id}: {err}")),
            }
        }
        if !needed.is_empty() {
            log::info!(
                "envelopes of {} new message(s) read in {runs} postcat run(s): {} found",
                needed.len(),
                evidence.len()
            );
        }
        Ok(evidence)
    }

    /// Stores what is decided about each candidate in write transactions
    /// of about [`BATCH_TIME`] each, so that the web process is never
    /// locked out for long, and marks the messages no longer queued gone.
    /// What must not run inside a transaction (Postfix commands, sending
    /// mail) is left in `later`.
    fn store_decisions<'m>(
        &self,
        candidates: &[&'m QueuedMessage],
        scan: &QueueScan,
        pass: &Pass<'_>,
        report: &mut ScanReport,
        later: &mut Later<'m>,
    ) -> Result<(), ScanError> {
        let mut batch = self.store.transaction()?;
        let mut batch_started = Instant::now();
        for &message in candidates {
            if batch_started.elapsed() > BATCH_TIME {
                batch.commit()?;
                batch = self.store.transaction()?;
                batch_started = Instant::now();
            }
            if let Err(err) = self.one_message(message, pass, report, later) {
                report
                    .problems
                    .push(format!("message {}: {err}", message.queue_id));
            }
        }
        let queued: std::collections::HashSet<(String, i64)> = scan
            .messages
            .iter()
            .map(|m| (m.queue_id.to_string(), m.arrival_time))
            .collect();
        // A listing with a line that could not be read proves nothing
        // about the messages it did not show.
        let gone = if scan.errors.is_empty() {
            self.store
                .mark_missing_gone(&self.config.instance, &queued)?
        } else {
            Vec::new()
        };
        report.gone = gone.len();
        for message in &gone {
            self.note_expiry(message, pass.now, &mut later.outbox)?;
        }
        batch.commit()?;
        Ok(())
    }

    /// Decides about one message and stores the decision; runs inside a
    /// write transaction.
    fn one_message<'m>(
        &self,
        message: &'m QueuedMessage,
        pass: &Pass<'_>,
        report: &mut ScanReport,
        later: &mut Later<'m>,
    ) -> Result<(), ScanError> {
        let now_s = pass.now.timestamp();
        let known = self.store.find_message(
            &self.config.instance,
            message.queue_id.as_str(),
            message.arrival_time,
        )?;
        // Evidence and subject: once per message, from postcat.
        let (own, subject) = match &known {
            Some(row) => (
                Own {
                    sender: row.own_sender,
                    requiretls: row.requiretls,
                },
                row.subject.clone(),
            ),
            None if !self.config.own.domains.contains_address(&message.sender) => {
                (Own::default(), None)
            }
            None => match pass.evidence.get(message.queue_id.as_str()) {
                Some((envelope, headers)) => {
                    let evidence = SubmissionEvidence {
                        local_submission: envelope.local_submission,
                        sasl_username: envelope.sasl_username.clone(),
                    };
                    let sender = self.config.own.is_own(&message.sender, &evidence);
                    let own = Own {
                        sender,
                        requiretls: envelope.has_unknown_sendopts(),
                    };
                    (own, sender.then(|| subject_of(headers)).flatten())
                }
                // postcat could not read it (reported): the next pass tries
                // again.
                None => return Ok(()),
            },
        };
        let decision = decide(
            message,
            |reason| pass.cache.get(reason),
            own.sender,
            own.requiretls,
            pass.mandatory,
        );
        let notice = match decision {
            Decision::Ignore(reason) => {
                report.ignored += 1;
                if known.is_none() {
                    log::info!(
                        "{} from {}: TLS deferral ignored ({})",
                        message.queue_id,
                        message.sender,
                        reason.short_name()
                    );
                }
                self.store.saw_message(
                    &self.seen(message, subject.as_deref(), own, MessageState::Ignored),
                    now_s,
                )?;
                return Ok(());
            }
            Decision::Notify(notice) => notice,
        };
        report.tls_deferred += 1;
        let (id, new) = self.store.saw_message(
            &self.seen(message, subject.as_deref(), own, MessageState::Deferred),
            now_s,
        )?;
        self.store
            .set_pending_recipients(id, &pending_recipients(&notice))?;
        let stored = self.store.message(id)?.expect("just stored");
        if stored.state != MessageState::Deferred {
            return Ok(()); // released or deleted already: nothing to ask
        }
        if new {
            log::info!(
                "{} from {}: {} recipient(s) wait for TLS ({} may be released)",
                message.queue_id,
                message.sender,
                notice.tls_failed.len(),
                notice.releasable.len()
            );
        }
        let only_mandatory = notice.releasable.is_empty() && notice.other_pending.is_empty();
        let deferral = Deferral {
            message,
            id,
            subject,
            notice,
            requiretls: own.requiretls,
        };
        if only_mandatory && self.config.mandatory_policy != MandatoryPolicy::Wait {
            later.mandatory.push(deferral); // once the batch is committed
            return Ok(());
        }
        self.notify(&deferral, None, pass.now, &mut later.outbox)
    }

    /// Returns or deletes a message whose waiting recipients all require
    /// TLS, as `mandatory_policy` says (`return` or `delete`), outside any
    /// write transaction; then stores the outcome in a short one and
    /// decides what the sender is told. When Postfix fails, the sender is
    /// told as with `wait`.
    fn apply_mandatory_policy(
        &self,
        deferral: &Deferral<'_>,
        now: DateTime<Utc>,
        report: &mut ScanReport,
        outbox: &mut Vec<Outgoing>,
    ) -> Result<(), ScanError> {
        let action = match self.run_mandatory_policy(&deferral.message.queue_id) {
            Ok(Some((state, action))) => {
                self.store.in_transaction(|store| {
                    store.set_message_state(deferral.id, state)?;
                    store.audit(
                        "scanner",
                        None,
                        Some(deferral.id),
                        AuditEvent::MandatoryPolicy,
                        &format!("all waiting recipients require TLS: {action}"),
                        now.timestamp(),
                    )
                })?;
                Some(action)
            }
            Ok(None) => return Ok(()), // gone meanwhile
            Err(problem) => {
                report.problems.push(problem);
                None
            }
        };
        self.notify(deferral, action, now, outbox)
    }

    /// Runs `postsuper -d` (policy `delete`) or `postsuper -e` and
    /// `postqueue -i` (policy `return`) on a message: its new state and
    /// what its sender is told happened to it; `None` when it left the
    /// queue meanwhile.
    fn run_mandatory_policy(
        &self,
        queue_id: &QueueId,
    ) -> Result<Option<(MessageState, &'static str)>, String> {
        if self.config.mandatory_policy == MandatoryPolicy::Delete {
            return match self.postfix.delete(queue_id, None) {
                Ok(1) => Ok(Some((MessageState::Deleted, "it was deleted."))),
                Ok(_) => Ok(None),
                Err(err) => Err(format!("{queue_id}: could not delete it: {err}")),
            };
        }
        match self.postfix.expire(queue_id) {
            Ok(1) => {
                // Bounce it now rather than at the next queue run.
                if let Err(err) = self.postfix.retry(queue_id) {
                    log::warn!("{queue_id}: expired, but could not be retried now: {err}");
                }
                Ok(Some((
                    MessageState::Returned,
                    "it is being returned to you as undeliverable.",
                )))
            }
            Ok(_) => Ok(None),
            Err(err) => Err(format!("{queue_id}: could not return it: {err}")),
        }
    }

    /// Decides whether the sender is told about a deferral now (first
    /// notice, reminder, or what `mandatory_action` did to the message)
    /// and puts the notification in `outbox`.
    fn notify(
        &self,
        deferral: &Deferral<'_>,
        mandatory_action: Option<&str>,
        now: DateTime<Utc>,
        outbox: &mut Vec<Outgoing>,
    ) -> Result<(), ScanError> {
        let sent: Vec<i64> = self
            .store
            .notifications(deferral.id)?
            .iter()
            .filter(|n| n.outcome == NotificationOutcome::Sent)
            .map(|n| n.at)
            .collect();
        let kind = match (sent.last(), self.config.reminder_interval) {
            _ if mandatory_action.is_some() => NotificationKind::Mandatory,
            (None, _) => NotificationKind::First,
            (Some(&last), Some(interval))
                if sent.len() <= self.config.max_reminders as usize
                    && now.timestamp() - last >= interval.as_secs() as i64 =>
            {
                NotificationKind::Reminder
            }
            _ => return Ok(()),
        };
        outbox.push(Outgoing {
            message_id: deferral.id,
            notification: self.notification(deferral, kind, mandatory_action, now),
            sequence: sent.len(),
        });
        Ok(())
    }

    /// The notification of `kind` about a deferral; with links to release
    /// or delete the message unless `mandatory_action` already acted on
    /// it or nothing may be released.
    fn notification(
        &self,
        deferral: &Deferral<'_>,
        kind: NotificationKind,
        mandatory_action: Option<&str>,
        now: DateTime<Utc>,
    ) -> Notification {
        let Deferral {
            message,
            subject,
            notice,
            requiretls,
            ..
        } = deferral;
        let words = |address: &str| {
            notice
                .tls_failed
                .iter()
                .find(|(r, _)| r.address == address)
                .map(|(_, f)| f.kind.plain_words().to_string())
                .unwrap_or_default()
        };
        let releasable: Vec<String> = notice
            .releasable
            .iter()
            .map(|r| r.address.clone())
            .collect();
        let expires =
            now + chrono::Duration::from_std(self.config.link_lifetime).unwrap_or_default();
        let link = |action: Action| -> Option<String> {
            if releasable.is_empty() || mandatory_action.is_some() {
                return None;
            }
            let token = ActionToken::new(
                &self.config.instance,
                message.queue_id.as_str(),
                message.arrival_time,
                &message.sender,
                &releasable,
                action,
                expires.timestamp(),
            );
            token
                .sign(self.key)
                .ok()
                .map(|t| format!("{}/confirm/{t}", self.config.base_url.trim_end_matches('/')))
        };
        Notification {
            kind,
            requiretls: *requiretls,
            to: message.sender.clone(),
            from: self.config.notification_from.clone(),
            organization: self.config.organization.clone(),
            queue_id: message.queue_id.to_string(),
            subject: subject.clone(),
            sent: Utc.timestamp_opt(message.arrival_time, 0).single().unwrap_or(now),
            failed: releasable
                .iter()
                .map(|a| RecipientLine {
                    address: a.clone(),
                    reason: words(a),
                })
                .collect(),
            mandatory: notice
                .mandatory
                .iter()
                .map(|r| RecipientLine {
                    address: r.address.clone(),
                    reason: words(&r.address),
                })
                .collect(),
            mandatory_action: mandatory_action
                .unwrap_or("Postfix keeps trying to deliver it encrypted; if that does not succeed, you get it back as undeliverable.")
                .into(),
            release_url: link(Action::Release),
            delete_url: link(Action::Delete),
            links_expire: Some(expires),
        }
    }

    /// Renders and sends one notification outside any write transaction,
    /// then records the outcome (a failed send is recorded and tried again
    /// at the next scan).
    fn send_notification(
        &self,
        outgoing: Outgoing,
        now: DateTime<Utc>,
        report: &mut ScanReport,
    ) -> Result<(), ScanError> {
        let Outgoing {
            message_id: id,
            notification,
            sequence,
        } = outgoing;
        let notification = &notification;
        let now_s = now.timestamp();
        let kind = notification.kind;
        let outcome = self
            .templates
            .render(notification)
            .map_err(|e| e.to_string())
            .and_then(|rendered| {
                let message_id = format!(
                    "posttls.{}.{id}.{sequence}@{}",
                    notification.queue_id, self.config.instance
                );
                build_mail(notification, &rendered, &message_id, now).map_err(|e| e.to_string())
            })
            .and_then(|mail| self.mailer.send(&notification.to, &mail));
        match outcome {
            Ok(()) => {
                self.store.in_transaction(|store| {
                    store.record_notification(
                        id,
                        kind,
                        &notification.to,
                        &NotificationOutcome::Sent,
                        now_s,
                    )?;
                    store.audit(
                        "scanner",
                        None,
                        Some(id),
                        AuditEvent::Notified(kind),
                        &format!(
                            "told {} about {} recipient(s)",
                            notification.to,
                            notification.failed.len() + notification.mandatory.len()
                        ),
                        now_s,
                    )
                })?;
                match kind {
                    NotificationKind::Reminder => report.reminded += 1,
                    _ => report.notified += 1,
                }
            }
            Err(reason) => {
                self.store.record_notification(
                    id,
                    kind,
                    &notification.to,
                    &NotificationOutcome::Failed(reason.clone()),
                    now_s,
                )?;
                report.problems.push(format!(
                    "{}: notification to {} failed: {reason}",
                    notification.queue_id, notification.to
                ));
            }
        }
        Ok(())
    }

    /// A message the sender was told about left the queue as old as
    /// Postfix lets messages get: it expired and bounced, undelivered to
    /// the recipients that waited for TLS. Say so. (One that leaves
    /// earlier was delivered, or removed by an admin.)
    fn note_expiry(
        &self,
        message: &MessageRow,
        now: DateTime<Utc>,
        outbox: &mut Vec<Outgoing>,
    ) -> Result<(), ScanError> {
        let age = now.timestamp() - message.arrival_time;
        let margin = 3600;
        if !message.own_sender || age + margin < self.config.queue_lifetime.as_secs() as i64 {
            return Ok(());
        }
        let notifications = self.store.notifications(message.id)?;
        if !notifications
            .iter()
            .any(|n| n.outcome == NotificationOutcome::Sent)
            || notifications
                .iter()
                .any(|n| n.kind == NotificationKind::Expired)
        {
            return Ok(());
        }
        let recipients = self.store.recipients(message.id)?;
        let line = |r: &posttls_store::RecipientRow| RecipientLine {
            address: r.address.clone(),
            reason: r
                .tls_kind
                .map(|k| k.plain_words().to_string())
                .unwrap_or_default(),
        };
        let notification = Notification {
            kind: NotificationKind::Expired,
            requiretls: false,
            to: message.sender.clone(),
            from: self.config.notification_from.clone(),
            organization: self.config.organization.clone(),
            queue_id: message.queue_id.clone(),
            subject: message.subject.clone(),
            sent: Utc
                .timestamp_opt(message.arrival_time, 0)
                .single()
                .unwrap_or(now),
            failed: recipients
                .iter()
                .filter(|r| r.tls_kind.is_some() && !r.mandatory)
                .map(line)
                .collect(),
            mandatory: recipients
                .iter()
                .filter(|r| r.tls_kind.is_some() && r.mandatory)
                .map(line)
                .collect(),
            mandatory_action: "it expired undelivered.".into(),
            release_url: None,
            delete_url: None,
            links_expire: None,
        };
        outbox.push(Outgoing {
            message_id: message.id,
            notification,
            sequence: notifications.len(),
        });
        Ok(())
    }

    fn seen<'m>(
        &'m self,
        message: &'m QueuedMessage,
        subject: Option<&'m str>,
        own: Own,
        state: MessageState,
    ) -> SeenMessage<'m> {
        SeenMessage {
            instance: &self.config.instance,
            queue_id: message.queue_id.as_str(),
            arrival_time: message.arrival_time,
            sender: &message.sender,
            subject,
            own_sender: own.sender,
            requiretls: own.requiretls,
            state,
        }
    }
}

/// The pending recipients of a message to store: the TLS-failed ones with
/// how they failed, then the others.
fn pending_recipients(notice: &Notice<'_>) -> Vec<SeenRecipient> {
    let mut recipients: Vec<SeenRecipient> = notice
        .tls_failed
        .iter()
        .map(|(r, failure)| SeenRecipient {
            address: r.address.clone(),
            delay_reason: r.delay_reason.clone(),
            tls_kind: Some(failure.kind),
            mandatory: notice.mandatory.iter().any(|m| m.address == r.address),
        })
        .collect();
    recipients.extend(notice.other_pending.iter().map(|r| SeenRecipient {
        address: r.address.clone(),
        delay_reason: r.delay_reason.clone(),
        tls_kind: None,
        mandatory: false,
    }));
    recipients
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Whether another connection could take the database's write lock now
    /// (the sqlite3 shell waits for no lock).
    fn write_lock_free(db: &Path) -> bool {
        Command::new("sqlite3")
            .arg(db)
            .arg("BEGIN IMMEDIATE; COMMIT;")
            .output()
            .expect("sqlite3 runs")
            .status
            .success()
    }

    /// Records what it sends, and refuses to send under a write lock.
    struct Recorder {
        db: PathBuf,
        sent: RefCell<Vec<String>>,
    }

    impl Mailer for Recorder {
        fn send(&self, to: &str, _message: &[u8]) -> Result<(), String> {
            if !write_lock_free(&self.db) {
                return Err("sent inside a write transaction".into());
            }
            self.sent.borrow_mut().push(to.to_string());
            Ok(())
        }
    }

    /// Fake Postfix commands that log their arguments to `calls`, and to
    /// `locked` when they run under a write lock. The queue holds one
    /// message with a releasable recipient (A) and one whose recipient
    /// requires TLS (B); postcat shows only the first message it is asked
    /// for, as when the others left the queue meanwhile.
    fn fake_postfix(dir: &Path, arrival: i64) {
        let check = "D=$(dirname \"$0\")\necho \"$(basename \"$0\") $*\" >> \"$D/calls\"\n\
                     sqlite3 \"$D/posttls.sqlite\" 'BEGIN IMMEDIATE; COMMIT;' >/dev/null 2>&1 \
                     || echo \"$(basename \"$0\") $*\" >> \"$D/locked\"\n";
        let scripts = [
            ("postqueue", "[ \"$1\" = -j ] && cat \"$D/queue.json\"\n"),
            (
                "postcat",
                "printf '*** ENVELOPE RECORDS deferred/%s ***\\nnamed_attribute: rewrite_context=local\\n\
                 sender: alice@example.org\\n*** MESSAGE CONTENTS deferred/%s ***\\nSubject: about %s\\n\\n' \
                 \"$4\" \"$4\" \"$4\"\n",
            ),
            ("postsuper", "echo 'postsuper: Deleted: 1 message' >&2\n"),
        ];
        for (name, body) in scripts {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{check}{body}")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let line = |id: &str, to: &str| {
            format!(
                r#"{{"queue_name": "deferred", "queue_id": "{id}", "arrival_time": {arrival}, "message_size": 324, "forced_expire": false, "sender": "alice@example.org", "recipients": [{{"address": "{to}", "delay_reason": "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]"}}]}}"#
            )
        };
        std::fs::write(
            dir.join("queue.json"),
            format!(
                "{}\n{}\n",
                line("4A0AF98C232", "bob@notls.example"),
                line("4A0AF98C233", "frank@bank.example")
            ),
        )
        .unwrap();
    }

    fn config() -> ScanConfig {
        ScanConfig {
            instance: "postfix".into(),
            own: OwnSenders {
                domains: DomainSet::parse_list("example.org").unwrap(),
            },
            mandatory: DomainSet::parse_list("bank.example").unwrap(),
            organization: "Example".into(),
            notification_from: "postmaster@example.org".into(),
            base_url: "https://posttls.example.org".into(),
            link_lifetime: Duration::from_secs(3 * 86400),
            reminder_interval: None,
            max_reminders: 0,
            mandatory_policy: MandatoryPolicy::Delete,
            queue_lifetime: Duration::from_secs(5 * 86400),
        }
    }

    #[test]
    fn no_postfix_command_and_no_mail_runs_inside_a_write_transaction() {
        assert!(
            Command::new("sqlite3").arg("-version").output().is_ok(),
            "the sqlite3 shell is missing: install Debian's sqlite3 (scripts/test does)"
        );
        let dir = std::env::temp_dir().join(format!("posttls-scanner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let now = Utc::now();
        let arrival = now.timestamp() - 3600;
        fake_postfix(&dir, arrival);
        let db = dir.join("posttls.sqlite");
        let store = Store::open(&db).unwrap();
        let mailer = Recorder {
            db: db.clone(),
            sent: RefCell::default(),
        };
        let scanner = Scanner {
            config: &config(),
            store: &store,
            postfix: &Postfix::new(None, dir.clone(), Duration::from_secs(10)),
            templates: &Templates::load(None).unwrap(),
            key: &SecretKey::generate(),
            mailer: &mailer,
        };
        let report = scanner.scan(now).unwrap();

        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!((report.tls_deferred, report.notified), (2, 2));
        assert!(!dir.join("locked").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("calls")).unwrap(),
            "postqueue -j\n\
             postcat -e -h -q 4A0AF98C232 4A0AF98C233\n\
             postcat -e -h -q 4A0AF98C233\n\
             postsuper -d 4A0AF98C233\n"
        );
        assert_eq!(*mailer.sent.borrow(), ["alice@example.org"; 2]);
        let deleted = store
            .find_message("postfix", "4A0AF98C233", arrival)
            .unwrap()
            .unwrap();
        assert_eq!(deleted.state, MessageState::Deleted);
        assert_eq!(deleted.subject.as_deref(), Some("about 4A0AF98C233"));
        let kinds: Vec<(NotificationKind, NotificationOutcome)> = store
            .notifications(deleted.id)
            .unwrap()
            .into_iter()
            .map(|n| (n.kind, n.outcome))
            .collect();
        assert_eq!(
            kinds,
            [(NotificationKind::Mandatory, NotificationOutcome::Sent)]
        );
        assert!(store
            .audit_log(10)
            .unwrap()
            .iter()
            .any(|a| a.event == AuditEvent::MandatoryPolicy
                && a.detail == "all waiting recipients require TLS: it was deleted."));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
