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
            /// The word stored in the database and used in logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                match text {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownValue { what: $what, value: text.to_string() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
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
}
