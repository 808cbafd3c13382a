//! How many messages, notifications and actions the database holds, for
//! the Prometheus metrics of the worker and the web process. Rows of these
//! tables are never deleted, so the numbers of notifications and of
//! finished actions only grow, as counters must.

use std::collections::HashMap;

use crate::{ActionKind, ActionState, MessageState, NotificationKind, Result, Store};

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
        let mut counts = Counts::default();
        for (state, n) in self.backend.message_counts()? {
            counts.messages.insert(state, n as u64);
        }
        for (kind, sent, n) in self.backend.notification_counts()? {
            let result = if sent {
                SendResult::Sent
            } else {
                SendResult::Failed
            };
            counts.notifications.insert((kind, result), n as u64);
        }
        for (kind, state, n) in self.backend.action_counts()? {
            counts.actions.insert((kind, state), n as u64);
        }
        Ok(counts)
    }
}
