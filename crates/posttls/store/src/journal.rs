//! Requested actions and the journal of a running one.
//!
//! The web process records a request ([`Store::request_action`]) with the
//! recipients it approved. The worker takes it ([`Store::take_action`]),
//! writes each [`Phase`] before the step it names, notes the copies it
//! makes ([`Store::add_copy`]) and what became of each recipient, and
//! finally settles it ([`Store::finish_action`]). A worker that starts (or
//! begins a pass) finds unsettled actions with [`Store::running_actions`].

use crate::{ActionKind, ActionRow, ActionState, CopyRole, Phase, RecipientOutcome, Result, Store};

/// A recipient a request approved, and what the action did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecipient {
    pub address: String,
    /// Named by the request; otherwise a recipient the action kept on its
    /// normal path.
    pub approved: bool,
    /// `None` until the action decided.
    pub outcome: Option<RecipientOutcome>,
    /// Why, in words for the sender (for recipients not released).
    pub why: Option<String>,
}

/// A copy of a released message, re-injected on hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionCopy {
    pub role: CopyRole,
    /// The `XFORWARD IDENT` the copy was submitted with: Postfix keeps it
    /// in the queue file (`log_ident`), so the copy can be found again
    /// when the worker died before it learnt the queue id.
    pub marker: String,
    /// The recipients the copy is for.
    pub recipients: Vec<String>,
    /// Its queue id, once the listener named it.
    pub queue_id: Option<String>,
}

/// How a copy's recipients are stored: one address a line.
pub(crate) fn recipients_column(recipients: &[String]) -> String {
    recipients.join("\n")
}

/// A copy's recipients as stored by [`recipients_column`].
pub(crate) fn recipients_of_column(column: &str) -> Vec<String> {
    column
        .split('\n')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

impl Store {
    /// Queues an action for the worker; returns its id. `recipients`: the
    /// recipients the request approved (for a release: the ones the link
    /// or the admin's page offered).
    pub fn request_action(
        &self,
        message_id: i64,
        action: ActionKind,
        requested_by: &str,
        ip: Option<&str>,
        recipients: &[String],
        now: i64,
    ) -> Result<i64> {
        let id = self
            .backend
            .insert_action(message_id, action, requested_by, ip, now)?;
        for address in recipients {
            self.backend.approve_recipient(id, address)?;
        }
        Ok(id)
    }

    /// The oldest queued action on a message of `instance` that is due at
    /// `now`, marked running. Each worker takes only its own instance's
    /// requests: in a fleet's database the others are for other queues.
    pub fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>> {
        self.backend.take_action(instance, now)
    }

    /// Actions left running (by a worker that died, or whose undo could not
    /// finish), oldest first.
    pub fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>> {
        self.backend.running_actions(instance)
    }

    /// How many times the worker has taken this action.
    pub fn attempts(&self, id: i64) -> Result<i64> {
        self.backend.attempts(id)
    }

    /// Journals the step a running action is about to take.
    pub fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        self.backend.set_phase(id, phase)
    }

    /// Puts a running action back in the queue, not to be taken before
    /// `not_before`; its copies and decisions are forgotten.
    pub fn postpone_action(&self, id: i64, not_before: i64, why: &str) -> Result<()> {
        let tx = self.transaction()?;
        self.backend.requeue_action(id, not_before, why)?;
        self.backend.forget_copies(id)?;
        self.backend.forget_decisions(id)?;
        tx.commit()
    }

    /// Records how an action ended. A `failed` action (something went
    /// wrong and the queue was put back as it was) gives back the link that
    /// requested it, so that the sender can simply try again; a `refused`
    /// one does not, since asking again would be refused again.
    pub fn finish_action(
        &self,
        id: i64,
        state: ActionState,
        result: &str,
        new_queue_id: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let tx = self.transaction()?;
        self.backend
            .set_action_finished(id, state, result, new_queue_id, now)?;
        if state == ActionState::Failed {
            self.backend.forget_requesting_token(id)?;
        }
        tx.commit()
    }

    pub fn action(&self, id: i64) -> Result<Option<ActionRow>> {
        self.backend.action(id)
    }

    /// Actions on a message, oldest first.
    pub fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>> {
        self.backend.actions_of(message_id)
    }

    /// The recipients an action approved, with what it did with each.
    pub fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>> {
        self.backend.action_recipients(action_id)
    }

    /// Records what an action did with a recipient (adding it when the
    /// request did not name it: a recipient kept on its normal path).
    pub fn set_recipient_outcome(
        &self,
        action_id: i64,
        address: &str,
        outcome: RecipientOutcome,
        why: Option<&str>,
    ) -> Result<()> {
        self.backend
            .set_recipient_outcome(action_id, address, outcome, why)
    }

    /// Journals a copy about to be re-injected.
    pub fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()> {
        self.backend.add_copy(action_id, copy)
    }

    /// Notes the queue id the listener gave a copy.
    pub fn set_copy_queue_id(&self, action_id: i64, role: CopyRole, queue_id: &str) -> Result<()> {
        self.backend.set_copy_queue_id(action_id, role, queue_id)
    }

    /// The copies journalled for an action.
    pub fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>> {
        self.backend.copies(action_id)
    }
}
