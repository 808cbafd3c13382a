//! Stored rows in the words a person reads: the values the templates show.
//! Nothing here escapes anything: the templates do, for every value.

use posttls_classify::TlsFailureKind;
use posttls_policy::DomainSet;
use posttls_store::{
    ActionKind, ActionRow, ActionState, AuditRow, MessageRow, MessageState, NotificationRow,
    RecipientRow, RecipientState,
};
use serde::Serialize;

/// A Unix time as `2026-11-21 14:03:05 UTC`.
pub fn time(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}

/// What a recipient means for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Waits because of TLS and may be sent unencrypted.
    Release,
    /// Waits because of TLS and is never sent unencrypted.
    Mandatory,
    /// Waits for another reason; Postfix goes on as usual.
    Other,
    /// No longer waiting (delivered, released, deleted, returned).
    Settled,
}

/// The role of `r`, with the mandatory domains as they are now (configured
/// and UI-managed): a domain added after the scan counts at once.
pub fn role(r: &RecipientRow, mandatory: &DomainSet) -> Role {
    if r.state != RecipientState::Pending {
        Role::Settled
    } else if r.tls_kind.is_none() {
        Role::Other
    } else if r.mandatory || mandatory.contains_address(&r.address) {
        Role::Mandatory
    } else {
        Role::Release
    }
}

/// The recipients a release may send to now: pending, TLS-failed, not
/// mandatory. This is what a Release token must be bound to.
pub fn releasable(recipients: &[RecipientRow], mandatory: &DomainSet) -> Vec<String> {
    recipients
        .iter()
        .filter(|r| role(r, mandatory) == Role::Release)
        .map(|r| r.address.clone())
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: i64,
    pub instance: String,
    pub queue_id: String,
    pub arrival: String,
    pub sender: String,
    pub subject: Option<String>,
    pub state: &'static str,
    pub state_words: &'static str,
    pub first_seen: String,
    pub last_seen: String,
}

impl MessageView {
    pub fn new(m: &MessageRow) -> MessageView {
        MessageView {
            id: m.id,
            instance: m.instance.clone(),
            queue_id: m.queue_id.clone(),
            arrival: time(m.arrival_time),
            sender: m.sender.clone(),
            subject: m.subject.clone(),
            state: m.state.as_str(),
            state_words: message_state_words(m.state),
            first_seen: time(m.first_seen),
            last_seen: time(m.last_seen),
        }
    }
}

pub fn message_state_words(state: MessageState) -> &'static str {
    match state {
        MessageState::Deferred => "waiting in the queue because encrypted delivery failed",
        MessageState::Ignored => "not handled by PostTLS (not from our organisation, or not a TLS problem)",
        MessageState::Released => "sent without mandatory encryption to the recipients that could not get it encrypted",
        MessageState::Deleted => "deleted",
        MessageState::Returned => "returned to the sender as undeliverable: its recipients require encryption, and it is never sent to them unencrypted",
        MessageState::Gone => "no longer in the queue (delivered, expired and returned, or removed)",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientView {
    pub address: String,
    pub role: Role,
    /// Why it waits, or what became of it, in plain words.
    pub words: String,
    /// Postfix's own text, for the curious and for admins.
    pub delay_reason: Option<String>,
    pub state: String,
}

impl RecipientView {
    pub fn new(r: &RecipientRow, mandatory: &DomainSet) -> RecipientView {
        let role = role(r, mandatory);
        let failure = r
            .tls_kind
            .map_or("Encrypted delivery failed.", TlsFailureKind::plain_words);
        let words = match role {
            Role::Release => failure.to_owned(),
            Role::Mandatory => format!(
                "{failure} This recipient's domain requires encryption, so it is never sent \
                 unencrypted: the mail server keeps trying to deliver it encrypted."
            ),
            Role::Other => "Waiting for another reason than encryption; the mail server keeps \
                            trying as usual."
                .to_owned(),
            Role::Settled => match r.state {
                RecipientState::Released => "Sent without mandatory encryption.",
                RecipientState::Deleted => "Deleted: will not receive the message.",
                RecipientState::Returned => "Returned to the sender as undeliverable.",
                RecipientState::Gone => {
                    "No longer waiting (delivered, or returned as undeliverable)."
                }
                RecipientState::Pending => "Waiting.",
            }
            .to_owned(),
        };
        RecipientView {
            address: r.address.clone(),
            role,
            words,
            delay_reason: r.delay_reason.clone(),
            state: r.state.to_string(),
        }
    }
}

/// Recipients grouped by role, for the confirmation page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecipientGroups {
    pub release: Vec<RecipientView>,
    pub mandatory: Vec<RecipientView>,
    pub other: Vec<RecipientView>,
    pub settled: Vec<RecipientView>,
}

impl RecipientGroups {
    pub fn new(recipients: &[RecipientRow], mandatory: &DomainSet) -> RecipientGroups {
        let mut groups = RecipientGroups::default();
        for r in recipients {
            let view = RecipientView::new(r, mandatory);
            match view.role {
                Role::Release => groups.release.push(view),
                Role::Mandatory => groups.mandatory.push(view),
                Role::Other => groups.other.push(view),
                Role::Settled => groups.settled.push(view),
            }
        }
        groups
    }

    /// Recipients still waiting, of any role.
    pub fn pending(&self) -> usize {
        self.release.len() + self.mandatory.len() + self.other.len()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionView {
    pub id: i64,
    pub action: String,
    pub action_words: &'static str,
    pub requested_by: String,
    pub ip: Option<String>,
    pub requested_at: String,
    pub state: String,
    pub state_words: &'static str,
    pub result: Option<String>,
    pub new_queue_id: Option<String>,
    pub finished_at: Option<String>,
    /// Queued or running: the page refreshes itself.
    pub active: bool,
}

/// Whether an action is waiting for or in the hands of the worker.
pub fn is_active(a: &ActionRow) -> bool {
    matches!(a.state, ActionState::Queued | ActionState::Running)
}

impl ActionView {
    pub fn new(a: &ActionRow) -> ActionView {
        ActionView {
            id: a.id,
            action: a.action.to_string(),
            action_words: match a.action {
                ActionKind::Release => "send unencrypted",
                ActionKind::Delete => "delete the message",
            },
            requested_by: a.requested_by.clone(),
            ip: a.ip.clone(),
            requested_at: time(a.requested_at),
            state: a.state.to_string(),
            state_words: match a.state {
                ActionState::Queued => {
                    "Waiting for the mail server to carry it out (usually within a minute)."
                }
                ActionState::Running => "Being carried out now.",
                ActionState::Done => "Done.",
                ActionState::Refused => "Not carried out: the mail server's checks refused it.",
                ActionState::Failed => "Failed: the message is in the queue as it was before.",
            },
            result: a.result.clone(),
            new_queue_id: a.new_queue_id.clone(),
            finished_at: a.finished_at.map(time),
            active: is_active(a),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    pub kind: String,
    pub sent_to: String,
    pub at: String,
    pub outcome: String,
}

impl NotificationView {
    pub fn new(n: &NotificationRow) -> NotificationView {
        NotificationView {
            kind: n.kind.to_string(),
            sent_to: n.sent_to.clone(),
            at: time(n.at),
            outcome: n.outcome.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub at: String,
    pub actor: String,
    pub ip: Option<String>,
    pub message_id: Option<i64>,
    pub event: String,
    pub detail: String,
}

impl AuditView {
    pub fn new(a: &AuditRow) -> AuditView {
        AuditView {
            at: time(a.at),
            actor: a.actor.clone(),
            ip: a.ip.clone(),
            message_id: a.message_id,
            event: a.event.to_string(),
            detail: a.detail.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(address: &str, tls: bool, mandatory: bool, state: &str) -> RecipientRow {
        RecipientRow {
            address: address.into(),
            delay_reason: Some("x".into()),
            tls_kind: tls.then_some(TlsFailureKind::NotOffered),
            mandatory,
            state: state.parse().unwrap(),
        }
    }

    #[test]
    fn roles_and_releasable() {
        let domains = DomainSet::parse_list("bank.example").unwrap();
        let rows = [
            r("a@x.example", true, false, "pending"),
            r("b@x.example", true, true, "pending"),
            r("c@bank.example", true, false, "pending"),
            r("d@x.example", false, false, "pending"),
            r("e@x.example", true, false, "released"),
        ];
        let roles: Vec<Role> = rows.iter().map(|x| role(x, &domains)).collect();
        assert_eq!(
            roles,
            [
                Role::Release,
                Role::Mandatory,
                Role::Mandatory,
                Role::Other,
                Role::Settled
            ]
        );
        assert_eq!(releasable(&rows, &domains), ["a@x.example"]);
        let groups = RecipientGroups::new(&rows, &domains);
        assert_eq!(groups.pending(), 4);
        assert!(groups.mandatory[0].words.contains("never sent unencrypted"));
        assert!(groups.release[0]
            .words
            .contains("does not support encryption"));
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(i64::MAX), i64::MAX.to_string());
    }
}
