//! What a backend does: store and read rows, one statement (or one fixed
//! group of statements) per method. The rules of PostTLS (which state a
//! message seen again keeps, what finishing or postponing an action
//! undoes, which messages a scan found gone) are decided once, in
//! [`Store`](crate::Store), and reach every backend through these methods.

use crate::{
    ActionCopy, ActionKind, ActionRecipient, ActionRow, ActionState, AuditEvent, AuditRow,
    CopyRole, MessageRow, MessageState, NotificationKind, NotificationOutcome, NotificationRow,
    Phase, RecipientOutcome, RecipientRow, RecipientState, Result, SeenMessage, SeenRecipient,
    TokenUseRow,
};

/// One connection to a PostTLS database. Every method is one statement
/// (or a group that must stay together) in the transaction that is open,
/// or its own when none is.
pub(crate) trait Backend: Send {
    /// Begins a write transaction; a backend refuses one inside another.
    fn begin(&self) -> Result<()>;
    fn commit(&self) -> Result<()>;
    /// Rolls back the open transaction, if any; a failure is only logged
    /// (it runs on error paths and in `Drop`).
    fn rollback(&self);

    fn find_message(
        &self,
        instance: &str,
        queue_id: &str,
        arrival_time: i64,
    ) -> Result<Option<MessageRow>>;
    fn message(&self, id: i64) -> Result<Option<MessageRow>>;
    /// Messages in `state`, newest arrival first, at most `limit`.
    fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>>;
    /// Every message of `instance` in `state`.
    fn instance_messages_in(&self, instance: &str, state: MessageState) -> Result<Vec<MessageRow>>;
    /// Inserts a message first seen at `now`; its id.
    fn insert_message(&self, seen: &SeenMessage<'_>, now: i64) -> Result<i64>;
    /// A message seen again at `now`: its state, and its subject when the
    /// scan read one.
    fn message_seen_again(
        &self,
        id: i64,
        state: MessageState,
        subject: Option<&str>,
        now: i64,
    ) -> Result<()>;
    fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()>;

    /// Recipients of a message, by address.
    fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>>;
    /// Recipients of a message in state `from` go to `to`.
    fn move_recipients(
        &self,
        message_id: i64,
        from: RecipientState,
        to: RecipientState,
    ) -> Result<()>;
    /// Inserts or updates a recipient the queue lists: pending again,
    /// unless an action settled it (only `pending` and `gone` become
    /// `pending`).
    fn list_pending_recipient(&self, message_id: i64, recipient: &SeenRecipient) -> Result<()>;
    fn set_recipient_state(
        &self,
        message_id: i64,
        address: &str,
        state: RecipientState,
    ) -> Result<()>;

    fn record_notification(
        &self,
        message_id: i64,
        kind: NotificationKind,
        sent_to: &str,
        outcome: &NotificationOutcome,
        now: i64,
    ) -> Result<()>;
    /// Notifications of a message, oldest first.
    fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>>;

    /// Records a token's use unless it was used before; whether it was new.
    fn use_token(
        &self,
        token_id: &str,
        message_id: i64,
        action: &str,
        ip: Option<&str>,
        now: i64,
    ) -> Result<bool>;
    fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>>;
    /// Deletes the use of the token that requested action `action_id`: the
    /// one of the same message and action, recorded at the request's time
    /// (the web's confirm handler records both in one transaction).
    fn forget_requesting_token(&self, action_id: i64) -> Result<()>;

    fn audit(
        &self,
        actor: &str,
        ip: Option<&str>,
        message_id: Option<i64>,
        event: AuditEvent,
        detail: &str,
        now: i64,
    ) -> Result<()>;
    /// Deletes the audit entries older than `before`; how many.
    fn prune_audit(&self, before: i64) -> Result<usize>;
    /// The newest audit entries, at most `limit`.
    fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>>;

    fn mandatory_domains(&self) -> Result<Vec<String>>;
    /// Whether the domain was new.
    fn add_mandatory_domain(&self, domain: &str, added_by: &str, now: i64) -> Result<bool>;
    /// Whether the domain was there.
    fn remove_mandatory_domain(&self, domain: &str) -> Result<bool>;

    /// Creates an admin, or sets the password of one.
    fn upsert_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()>;
    fn admin_password_hash(&self, name: &str) -> Result<Option<String>>;
    fn create_session(&self, id: &str, admin: &str, now: i64, expires: i64) -> Result<()>;
    /// The admin of a session that expires after `now`.
    fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>>;
    fn end_session(&self, id: &str) -> Result<()>;
    fn end_sessions_of(&self, admin: &str) -> Result<()>;

    /// Inserts a queued action; its id. Only the columns the web's role may
    /// insert are named: the state and the journal take their defaults.
    fn insert_action(
        &self,
        message_id: i64,
        action: ActionKind,
        requested_by: &str,
        ip: Option<&str>,
        now: i64,
    ) -> Result<i64>;
    /// Records a recipient the request approved (once).
    fn approve_recipient(&self, action_id: i64, address: &str) -> Result<()>;
    /// Marks the oldest queued action of `instance` due at `now` running
    /// (one more attempt) and returns it; never the same action to two
    /// callers.
    fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>>;
    /// Running actions on messages of `instance`, oldest first.
    fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>>;
    fn attempts(&self, id: i64) -> Result<i64>;
    /// Sets the phase of a running action (of no other).
    fn set_phase(&self, id: i64, phase: Phase) -> Result<()>;
    /// Queues an action again, not before `not_before`, with `why` as its
    /// result and no phase.
    fn requeue_action(&self, id: i64, not_before: i64, why: &str) -> Result<()>;
    fn forget_copies(&self, action_id: i64) -> Result<()>;
    /// Deletes the recipients the action added and clears the outcomes of
    /// the approved ones.
    fn forget_decisions(&self, action_id: i64) -> Result<()>;
    fn set_action_finished(
        &self,
        id: i64,
        state: ActionState,
        result: &str,
        new_queue_id: Option<&str>,
        now: i64,
    ) -> Result<()>;
    fn action(&self, id: i64) -> Result<Option<ActionRow>>;
    /// Actions on a message, oldest first.
    fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>>;
    /// The recipients of an action, by address.
    fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>>;
    /// Inserts (not approved) or updates what an action did with a
    /// recipient.
    fn set_recipient_outcome(
        &self,
        action_id: i64,
        address: &str,
        outcome: RecipientOutcome,
        why: Option<&str>,
    ) -> Result<()>;
    /// Inserts or replaces the action's copy of `copy.role`.
    fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()>;
    fn set_copy_queue_id(&self, action_id: i64, role: CopyRole, queue_id: &str) -> Result<()>;
    /// The copies of an action, by role.
    fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>>;

    /// Messages per state.
    fn message_counts(&self) -> Result<Vec<(MessageState, i64)>>;
    /// Notifications per kind and whether they were sent.
    fn notification_counts(&self) -> Result<Vec<(NotificationKind, bool, i64)>>;
    /// Actions per kind and state.
    fn action_counts(&self) -> Result<Vec<(ActionKind, ActionState, i64)>>;
}
