//! The states and kinds kept in the database, as types. Each is stored as a
//! fixed lower-case word; a word this program does not know (a newer
//! schema, or a row another process wrote) is an error, never a default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A stored word that names no known value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a known {what}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

/// Implements `FromStr`, `Display`, `ToSql` and `FromSql` for a type with
/// `fn word(&self) -> String` and `fn from_word(&str) -> Option<Self>`.
macro_rules! stored_as_word {
    ($name:ident, $what:literal) => {
        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                $name::from_word(text).ok_or_else(|| UnknownValue {
                    what: $what,
                    value: text.to_string(),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.word())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.word()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: UnknownValue| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

/// Declares an enum stored as text: `as_str`, `FromStr`, `Display`,
/// `ToSql` and `FromSql` from one list of variants and words.
macro_rules! stored_words {
    ($(#[$meta:meta])* $name:ident, $what:literal {
        $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word stored in the database and used in logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }

            fn word(&self) -> String {
                self.as_str().to_string()
            }

            fn from_word(text: &str) -> Option<Self> {
                match text {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        stored_as_word!($name, $what);
    };
}

stored_words! {
    /// A message's place in the PostTLS life cycle.
    MessageState, "message state" {
        /// Deferred for TLS reasons; the sender has been (or is being) told.
        Deferred = "deferred",
        /// Seen, but nothing for us to do (not our sender, or not TLS).
        Ignored = "ignored",
        /// The TLS-failed recipients were released (sent without mandatory TLS).
        Released = "released",
        /// Deleted at the sender's or an admin's request.
        Deleted = "deleted",
        /// Returned to the sender (expired at once) because its TLS-failed
        /// recipients are all in mandatory-TLS domains.
        Returned = "returned",
        /// No longer in the queue (delivered, expired or removed otherwise).
        Gone = "gone",
    }
}

stored_words! {
    /// What became of one recipient of a message.
    RecipientState, "recipient state" {
        /// Still in the queue, waiting.
        Pending = "pending",
        /// Sent on without mandatory encryption at the sender's request.
        Released = "released",
        /// Its message was deleted.
        Deleted = "deleted",
        /// Its message was returned to the sender.
        Returned = "returned",
        /// No longer in the queue (delivered or bounced).
        Gone = "gone",
    }
}

stored_words! {
    /// What a sender or an admin asked for.
    ActionKind, "action" {
        /// Send the approved TLS-failed recipients a copy with
        /// opportunistic TLS.
        Release = "release",
        /// Delete the message.
        Delete = "delete",
    }
}

stored_words! {
    /// Where a requested action stands.
    ActionState, "action state" {
        /// Recorded, waiting for the worker.
        Queued = "queued",
        /// Being carried out; its [`Phase`] says how far it got.
        Running = "running",
        /// Carried out.
        Done = "done",
        /// Not carried out: the queue or the policy does not allow it.
        Refused = "refused",
        /// Not carried out because something went wrong; the queue is as it
        /// was.
        Failed = "failed",
    }
}

stored_words! {
    /// The journal of a running action: the step it is about to take,
    /// written (and committed) before the step, so that a worker that was
    /// killed can finish or undo it. See `posttls-actions`.
    Phase, "action phase" {
        /// About to put the original on hold.
        Hold = "hold",
        /// About to re-inject copies (on hold) of the held original.
        Inject = "inject",
        /// Every copy is on hold; about to delete the original.
        DeleteOriginal = "delete_original",
        /// The original is deleted; about to release the copies from hold.
        ReleaseCopies = "release_copies",
    }
}

stored_words! {
    /// Which listener a copy of a released message went through.
    CopyRole, "copy role" {
        /// The approved TLS-failed recipients: opportunistic TLS.
        Release = "release",
        /// The message's other pending recipients: their normal path
        /// (mandatory TLS) in a copy of their own.
        Keep = "keep",
    }
}

stored_words! {
    /// What an action did with one recipient of the message.
    RecipientOutcome, "recipient outcome" {
        /// Sent on with opportunistic TLS.
        Released = "released",
        /// Left on its normal, mandatory-TLS path.
        Kept = "kept",
        /// Deleted with the message.
        Deleted = "deleted",
        /// No longer waiting when the action ran (delivered or returned).
        Gone = "gone",
    }
}

stored_words! {
    /// Why the sender hears from us.
    NotificationKind, "notification kind" {
        /// The first notice about a message.
        First = "first",
        /// A later notice while the message still waits.
        Reminder = "reminder",
        /// The message left the queue undelivered (expired or bounced).
        Expired = "expired",
        /// Recipients in mandatory-TLS domains were returned or deleted.
        Mandatory = "mandatory",
    }
}

/// How sending a notification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// Handed to the mail path.
    Sent,
    /// Not sent, and why; the scanner tries again.
    Failed(String),
}

impl NotificationOutcome {
    /// `sent`, or `failed: REASON`.
    pub fn word(&self) -> String {
        match self {
            NotificationOutcome::Sent => "sent".into(),
            NotificationOutcome::Failed(reason) => format!("failed: {reason}"),
        }
    }

    fn from_word(text: &str) -> Option<NotificationOutcome> {
        match text {
            "sent" => Some(NotificationOutcome::Sent),
            _ => text
                .strip_prefix("failed: ")
                .map(|reason| NotificationOutcome::Failed(reason.to_string())),
        }
    }
}

stored_as_word!(NotificationOutcome, "notification outcome");

/// What an entry of the audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent {
    /// `posttls adduser` set an admin's password.
    AdminPasswordSet,
    Login,
    LoginFailed,
    Logout,
    MandatoryDomainAdded,
    MandatoryDomainRemoved,
    /// The scanner applied `mandatory_policy` to a message.
    MandatoryPolicy,
    /// An admin queued a TLSRPT report again (the TLS dashboard).
    ReportResent,
    /// A sender or an admin asked for an action (`release_requested`).
    Requested(ActionKind),
    /// The worker ended an action (`release_done`, `delete_refused`, ...).
    Finished(ActionKind, ActionState),
    /// The sender was told (`notified_first`, ...).
    Notified(NotificationKind),
}

impl AuditEvent {
    const SIMPLE: [(AuditEvent, &'static str); 8] = [
        (AuditEvent::AdminPasswordSet, "admin_password_set"),
        (AuditEvent::Login, "login"),
        (AuditEvent::LoginFailed, "login_failed"),
        (AuditEvent::Logout, "logout"),
        (AuditEvent::MandatoryDomainAdded, "mandatory_domain_added"),
        (
            AuditEvent::MandatoryDomainRemoved,
            "mandatory_domain_removed",
        ),
        (AuditEvent::MandatoryPolicy, "mandatory_policy"),
        (AuditEvent::ReportResent, "report_resent"),
    ];

    /// The word stored and shown in the audit log.
    pub fn word(&self) -> String {
        match self {
            AuditEvent::Requested(kind) => format!("{kind}_requested"),
            AuditEvent::Finished(kind, state) => format!("{kind}_{state}"),
            AuditEvent::Notified(kind) => format!("notified_{kind}"),
            simple => Self::SIMPLE
                .iter()
                .find(|(event, _)| event == simple)
                .map(|(_, word)| (*word).to_string())
                .expect("every simple event has a word"),
        }
    }

    fn from_word(text: &str) -> Option<AuditEvent> {
        if let Some((event, _)) = Self::SIMPLE.iter().find(|(_, word)| *word == text) {
            return Some(*event);
        }
        if let Some(kind) = text.strip_prefix("notified_") {
            return kind.parse().ok().map(AuditEvent::Notified);
        }
        let (kind, rest) = text.split_once('_')?;
        let kind: ActionKind = kind.parse().ok()?;
        match rest {
            "requested" => Some(AuditEvent::Requested(kind)),
            state => state
                .parse()
                .ok()
                .map(|state| AuditEvent::Finished(kind, state)),
        }
    }
}

stored_as_word!(AuditEvent, "audit event");

/// A stored TLS failure class, by its short name; a name this program does
/// not know is an error.
pub(crate) fn tls_kind_named(name: &str) -> Result<posttls_classify::TlsFailureKind, UnknownValue> {
    posttls_classify::TlsFailureKind::from_short_name(name).ok_or_else(|| UnknownValue {
        what: "TLS failure kind",
        value: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_are_errors() {
        for state in [ActionState::Queued, ActionState::Failed] {
            assert_eq!(state.as_str().parse::<ActionState>(), Ok(state));
        }
        assert_eq!(
            "sent".parse::<MessageState>(),
            Err(UnknownValue {
                what: "message state",
                value: "sent".into()
            })
        );
        assert_eq!(Phase::DeleteOriginal.to_string(), "delete_original");
    }

    #[test]
    fn audit_events_and_notification_outcomes_round_trip() {
        let events = [
            AuditEvent::AdminPasswordSet,
            AuditEvent::LoginFailed,
            AuditEvent::MandatoryDomainRemoved,
            AuditEvent::Requested(ActionKind::Release),
            AuditEvent::Finished(ActionKind::Delete, ActionState::Refused),
            AuditEvent::Notified(NotificationKind::Reminder),
        ];
        for event in events {
            assert_eq!(event.to_string().parse::<AuditEvent>(), Ok(event));
        }
        assert_eq!(
            AuditEvent::Requested(ActionKind::Release).to_string(),
            "release_requested"
        );
        assert_eq!(
            AuditEvent::Finished(ActionKind::Release, ActionState::Done).to_string(),
            "release_done"
        );
        for unknown in [
            "",
            "release",
            "release_sent",
            "notified_",
            "shutdown",
            "x_requested",
        ] {
            assert!(unknown.parse::<AuditEvent>().is_err(), "{unknown:?}");
        }
        let failed = NotificationOutcome::Failed("relay said no".into());
        assert_eq!(failed.to_string(), "failed: relay said no");
        assert_eq!("failed: relay said no".parse(), Ok(failed));
        assert_eq!("sent".parse(), Ok(NotificationOutcome::Sent));
        assert!("maybe".parse::<NotificationOutcome>().is_err());
    }
}
