//! How many messages, notifications and actions the database holds, for
//! the Prometheus metrics of the worker and the web process. Rows of these
//! tables are never deleted, so the numbers of notifications and of
//! finished actions only grow, as counters must.

use std::collections::HashMap;

use crate::{
    backend, ActionKind, ActionState, Backend, MessageState, NotificationKind, Result, Store,
};

/// Whether a notification reached the mail path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendResult {
    Sent,
    /// Not sent; the scanner tries again (another row).
    Failed,
}

impl SendResult {
    pub const ALL: &'static [SendResult] = &[SendResult::Sent, SendResult::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            SendResult::Sent => "sent",
            SendResult::Failed => "failed",
        }
    }
}

/// The rows of each kind; a combination without rows is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub messages: HashMap<MessageState, u64>,
    pub notifications: HashMap<(NotificationKind, SendResult), u64>,
    pub actions: HashMap<(ActionKind, ActionState), u64>,
}

impl Store {
    /// Counts every message per state, notification per kind and result,
    /// and action per kind and state. A stored word this program does not
    /// know is an error, as everywhere in the store.
    pub fn counts(&self) -> Result<Counts> {
        backend!(self.counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NotificationOutcome, SeenMessage};

    #[test]
    fn counts_group_the_rows_by_state_kind_and_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posttls.sqlite")).unwrap();
        assert_eq!(store.counts().unwrap(), Counts::default());
        let seen = |queue_id, state| SeenMessage {
            instance: "mx1",
            queue_id,
            arrival_time: 1,
            sender: "alice@example.org",
            subject: None,
            own_sender: true,
            requiretls: false,
            state,
        };
        let (first, _) = store
            .saw_message(&seen("A1", MessageState::Deferred), 10)
            .unwrap();
        let (second, _) = store
            .saw_message(&seen("B2", MessageState::Deferred), 10)
            .unwrap();
        store
            .saw_message(&seen("C3", MessageState::Ignored), 10)
            .unwrap();
        let sent = NotificationOutcome::Sent;
        let failed = NotificationOutcome::Failed("relay down".into());
        for (kind, outcome) in [
            (NotificationKind::First, &failed),
            (NotificationKind::First, &sent),
            (NotificationKind::First, &sent),
            (NotificationKind::Reminder, &sent),
        ] {
            store
                .record_notification(first, kind, "alice@example.org", outcome, 11)
                .unwrap();
        }
        let release = store
            .request_action(first, ActionKind::Release, "sender", None, &[], 12)
            .unwrap();
        store
            .finish_action(release, ActionState::Done, "released", Some("D4"), 13)
            .unwrap();
        store
            .request_action(second, ActionKind::Delete, "admin", None, &[], 14)
            .unwrap();

        let counts = store.counts().unwrap();
        assert_eq!(
            counts.messages,
            HashMap::from([(MessageState::Deferred, 2), (MessageState::Ignored, 1)])
        );
        assert_eq!(
            counts.notifications,
            HashMap::from([
                ((NotificationKind::First, SendResult::Sent), 2),
                ((NotificationKind::First, SendResult::Failed), 1),
                ((NotificationKind::Reminder, SendResult::Sent), 1),
            ])
        );
        assert_eq!(
            counts.actions,
            HashMap::from([
                ((ActionKind::Release, ActionState::Done), 1),
                ((ActionKind::Delete, ActionState::Queued), 1),
            ])
        );
    }
}
