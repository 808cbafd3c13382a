//! The scanner stage of PostTLS: one pass over the Postfix queue.
//!
//! ```text
//! postqueue -j --> parse --> classify each pending recipient's delay reason
//!   --> own sender? (domain, then postcat -e: local or authenticated submission)
//!   --> decide (mandatory domains never releasable)
//!   --> store (message, recipients) --> notify: first notice, reminders
//! messages no longer queued --> gone
//! ```
//!
//! Only messages with at least one TLS-failed pending recipient cost more
//! than parsing: `postcat` runs once per such message when it is first
//! seen (its evidence and subject are stored), never again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use posttls_classify::{classify, Classification};
use posttls_notify::{
    build_mail, subject_of, Notification, NotificationKind, RecipientLine, Templates,
};
use posttls_policy::{decide, Decision, DomainSet, OwnSenders, SubmissionEvidence};
use posttls_postfix::{Postfix, PostfixError};
use posttls_queue::{parse_queue, QueuedMessage};
use posttls_store::{MessageRow, MessageState, SeenMessage, SeenRecipient, Store, StoreError};
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
        let mut outbox = Vec::new();
        let pass = Pass {
            mandatory: &mandatory,
            cache: &cache,
            evidence: &evidence,
            now,
        };
        // Batched writes; short batches, so that the web process is never
        // locked out for long.
        let mut batch = self.store.transaction()?;
        let mut batch_started = Instant::now();
        for message in candidates {
            if batch_started.elapsed() > BATCH_TIME {
                batch.commit()?;
                batch = self.store.transaction()?;
                batch_started = Instant::now();
            }
            if let Err(err) = self.one_message(message, &pass, &mut report, &mut outbox) {
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
            self.note_expiry(message, now, &mut outbox)?;
        }
        batch.commit()?;
        report.decided = started.elapsed();
        let mut batch = self.store.transaction()?;
        let mut batch_started = Instant::now();
        for outgoing in outbox {
            if batch_started.elapsed() > BATCH_TIME {
                batch.commit()?;
                batch = self.store.transaction()?;
                batch_started = Instant::now();
            }
            self.send_notification(outgoing, now, &mut report)?;
        }
        batch.commit()?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Envelope evidence and headers of the candidates that are new and
    /// from one of our domains, read with a few `postcat` runs instead of
    /// one per message.
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
        for chunk in needed.chunks(POSTCAT_BATCH) {
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
        if !needed.is_empty() {
            log::info!(
                "envelopes of {} new message(s) read in {} postcat run(s): {} found",
                needed.len(),
                needed.len().div_ceil(POSTCAT_BATCH),
                evidence.len()
            );
        }
        Ok(evidence)
    }

    fn one_message(
        &self,
        message: &QueuedMessage,
        pass: &Pass<'_>,
        report: &mut ScanReport,
        outbox: &mut Vec<Outgoing>,
    ) -> Result<(), ScanError> {
        let (mandatory, cache, evidence, now) =
            (pass.mandatory, pass.cache, pass.evidence, pass.now);
        let now_s = now.timestamp();
        let known = self.store.find_message(
            &self.config.instance,
            message.queue_id.as_str(),
            message.arrival_time,
        )?;
        // Evidence and subject: once per message, from postcat.
        let (own, subject) = match &known {
            Some(row) => (row.own_sender, row.subject.clone()),
            None if !self.config.own.domains.contains_address(&message.sender) => (false, None),
            None => {
                let (envelope, headers) = match evidence.get(message.queue_id.as_str()) {
                    Some(found) => found.clone(),
                    None => self.postfix.envelope_and_headers(&message.queue_id)?,
                };
                let evidence = SubmissionEvidence {
                    local_submission: envelope.local_submission,
                    sasl_username: envelope.sasl_username,
                };
                let own = self.config.own.is_own(&message.sender, &evidence);
                (own, own.then(|| subject_of(&headers)).flatten())
            }
        };
        let decision = decide(message, |reason| cache.get(reason), own, mandatory);
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
        let mut recipients: Vec<SeenRecipient> = notice
            .tls_failed
            .iter()
            .map(|(r, failure)| SeenRecipient {
                address: r.address.clone(),
                delay_reason: r.delay_reason.clone(),
                tls_kind: Some(failure.kind.short_name().to_string()),
                mandatory: notice.mandatory.iter().any(|m| m.address == r.address),
            })
            .collect();
        recipients.extend(notice.other_pending.iter().map(|r| SeenRecipient {
            address: r.address.clone(),
            delay_reason: r.delay_reason.clone(),
            tls_kind: None,
            mandatory: false,
        }));
        self.store.set_pending_recipients(id, &recipients)?;
        let stored = self.store.message(id)?.expect("just stored");
        if stored.state != MessageState::Deferred {
            return Ok(()); // released or deleted already: nothing to ask
        }
        let only_mandatory = notice.releasable.is_empty() && notice.other_pending.is_empty();
        let mandatory_action = match self.config.mandatory_policy {
            MandatoryPolicy::Return if only_mandatory => {
                match self.postfix.expire(&message.queue_id) {
                    Ok(1) => {
                        // Bounce it now rather than at the next queue run.
                        if let Err(err) = self.postfix.retry(&message.queue_id) {
                            log::warn!(
                                "{}: expired, but could not be retried now: {err}",
                                message.queue_id
                            );
                        }
                        self.store.set_message_state(id, MessageState::Returned)?;
                        Some("it is being returned to you as undeliverable.")
                    }
                    Ok(_) => return Ok(()), // gone meanwhile
                    Err(err) => {
                        report
                            .problems
                            .push(format!("{}: could not return it: {err}", message.queue_id));
                        None
                    }
                }
            }
            MandatoryPolicy::Delete if only_mandatory => {
                match self.postfix.delete(&message.queue_id, None) {
                    Ok(1) => {
                        self.store.set_message_state(id, MessageState::Deleted)?;
                        Some("it was deleted.")
                    }
                    Ok(_) => return Ok(()),
                    Err(err) => {
                        report
                            .problems
                            .push(format!("{}: could not delete it: {err}", message.queue_id));
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(action) = mandatory_action {
            self.store.audit(
                "scanner",
                None,
                Some(id),
                "mandatory_policy",
                &format!("all waiting recipients require TLS: {action}"),
                now_s,
            )?;
        }

        let sent: Vec<i64> = self
            .store
            .notifications(id)?
            .iter()
            .filter(|n| n.outcome == "sent")
            .map(|n| n.at)
            .collect();
        let kind = match (sent.last(), self.config.reminder_interval) {
            _ if mandatory_action.is_some() => NotificationKind::Mandatory,
            (None, _) => NotificationKind::First,
            (Some(&last), Some(interval))
                if sent.len() <= self.config.max_reminders as usize
                    && now_s - last >= interval.as_secs() as i64 =>
            {
                NotificationKind::Reminder
            }
            _ => return Ok(()),
        };
        if new {
            log::info!(
                "{} from {}: {} recipient(s) wait for TLS ({} may be released)",
                message.queue_id,
                message.sender,
                notice.tls_failed.len(),
                notice.releasable.len()
            );
        }
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
            if releasable.is_empty() {
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
        let notification = Notification {
            kind,
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
            release_url: if mandatory_action.is_some() { None } else { link(Action::Release) },
            delete_url: if mandatory_action.is_some() { None } else { link(Action::Delete) },
            links_expire: Some(expires),
        };
        outbox.push(Outgoing {
            message_id: id,
            notification,
            sequence: sent.len(),
        });
        Ok(())
    }

    /// Renders, sends and records one notification (a failed send is
    /// recorded and tried again at the next scan).
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
                self.store.record_notification(
                    id,
                    kind.as_str(),
                    &notification.to,
                    "sent",
                    now_s,
                )?;
                self.store.audit(
                    "scanner",
                    None,
                    Some(id),
                    &format!("notified_{}", kind.as_str()),
                    &format!(
                        "told {} about {} recipient(s)",
                        notification.to,
                        notification.failed.len() + notification.mandatory.len()
                    ),
                    now_s,
                )?;
                match kind {
                    NotificationKind::Reminder => report.reminded += 1,
                    _ => report.notified += 1,
                }
            }
            Err(reason) => {
                self.store.record_notification(
                    id,
                    kind.as_str(),
                    &notification.to,
                    &format!("failed: {reason}"),
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
        if !notifications.iter().any(|n| n.outcome == "sent")
            || notifications.iter().any(|n| n.kind == "expired")
        {
            return Ok(());
        }
        let recipients = self.store.recipients(message.id)?;
        let line = |r: &posttls_store::RecipientRow| RecipientLine {
            address: r.address.clone(),
            reason: r
                .tls_kind
                .as_deref()
                .and_then(posttls_classify::TlsFailureKind::from_short_name)
                .map(|k| k.plain_words().to_string())
                .unwrap_or_default(),
        };
        let notification = Notification {
            kind: NotificationKind::Expired,
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
        own: bool,
        state: MessageState,
    ) -> SeenMessage<'m> {
        SeenMessage {
            instance: &self.config.instance,
            queue_id: message.queue_id.as_str(),
            arrival_time: message.arrival_time,
            sender: &message.sender,
            subject,
            own_sender: own,
            state,
        }
    }
}
