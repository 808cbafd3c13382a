//! Requested actions and the journal of a running one.
//!
//! The web process records a request ([`Store::request_action`]) with the
//! recipients it approved. The worker takes it ([`Store::take_action`]),
//! writes each [`Phase`] before the step it names, notes the copies it
//! makes ([`Store::add_copy`]) and what became of each recipient, and
//! finally settles it ([`Store::finish_action`]). A worker that starts (or
//! begins a pass) finds unsettled actions with [`Store::running_actions`].

use crate::{
    backend, ActionKind, ActionRow, ActionState, Backend, CopyRole, Phase, RecipientOutcome,
    Result, Store,
};

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
        backend!(self.request_action(message_id, action, requested_by, ip, recipients, now))
    }

    /// The oldest queued action on a message of `instance` that is due at
    /// `now`, marked running. Each worker takes only its own instance's
    /// requests: in a fleet's database the others are for other queues.
    pub fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>> {
        backend!(self.take_action(instance, now))
    }

    /// Actions left running (by a worker that died, or whose undo could not
    /// finish), oldest first.
    pub fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>> {
        backend!(self.running_actions(instance))
    }

    /// How many times the worker has taken this action.
    pub fn attempts(&self, id: i64) -> Result<i64> {
        backend!(self.attempts(id))
    }

    /// Journals the step a running action is about to take.
    pub fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        backend!(self.set_phase(id, phase))
    }

    /// Puts a running action back in the queue, not to be taken before
    /// `not_before`; its copies and decisions are forgotten.
    pub fn postpone_action(&self, id: i64, not_before: i64, why: &str) -> Result<()> {
        backend!(self.postpone_action(id, not_before, why))
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
        backend!(self.finish_action(id, state, result, new_queue_id, now))
    }

    pub fn action(&self, id: i64) -> Result<Option<ActionRow>> {
        backend!(self.action(id))
    }

    /// Actions on a message, oldest first.
    pub fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>> {
        backend!(self.actions_of(message_id))
    }

    /// The recipients an action approved, with what it did with each.
    pub fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>> {
        backend!(self.action_recipients(action_id))
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
        backend!(self.set_recipient_outcome(action_id, address, outcome, why))
    }

    /// Journals a copy about to be re-injected.
    pub fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()> {
        backend!(self.add_copy(action_id, copy))
    }

    /// Notes the queue id the listener gave a copy.
    pub fn set_copy_queue_id(&self, action_id: i64, role: CopyRole, queue_id: &str) -> Result<()> {
        backend!(self.set_copy_queue_id(action_id, role, queue_id))
    }

    /// The copies journalled for an action.
    pub fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>> {
        backend!(self.copies(action_id))
    }
}

#[cfg(test)]
mod tests {
    use crate::{ActionCopy, ActionKind, ActionState, CopyRole, MessageState, Phase};
    use crate::{RecipientOutcome, SeenMessage, Store};

    /// A new store holding one deferred message (queue id `queue_id`).
    fn store_with_message(queue_id: &str) -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posttls.sqlite")).unwrap();
        let message = SeenMessage {
            instance: "mx1",
            queue_id,
            arrival_time: 1,
            sender: "alice@example.org",
            subject: None,
            own_sender: true,
            requiretls: false,
            state: MessageState::Deferred,
        };
        let (id, _) = store.saw_message(&message, 10).unwrap();
        (dir, store, id)
    }

    fn release(store: &Store, message_id: i64, approved: &[&str], now: i64) -> i64 {
        let approved: Vec<String> = approved.iter().map(|a| a.to_string()).collect();
        store
            .request_action(
                message_id,
                ActionKind::Release,
                "token",
                None,
                &approved,
                now,
            )
            .unwrap()
    }

    /// A postponed action is not taken before `not_before`; postponing
    /// forgets its copies and the recipients it added, and resets the
    /// outcomes of the approved ones.
    #[test]
    fn a_postponed_action_waits_and_forgets_its_decisions() {
        let (_dir, store, id) = store_with_message("A1");
        let action = release(&store, id, &["a@x"], 10);
        assert_eq!(store.take_action("mx1", 10).unwrap().unwrap().id, action);
        store
            .set_recipient_outcome(action, "a@x", RecipientOutcome::Released, None)
            .unwrap();
        store
            .set_recipient_outcome(action, "k@x", RecipientOutcome::Kept, Some("mandatory"))
            .unwrap();
        let added = &store.action_recipients(action).unwrap()[1];
        assert_eq!((added.address.as_str(), added.approved), ("k@x", false));
        let copy = ActionCopy {
            role: CopyRole::Release,
            marker: "m".into(),
            recipients: vec!["a@x".into()],
            queue_id: None,
        };
        store.add_copy(action, &copy).unwrap();

        store.postpone_action(action, 100, "queue busy").unwrap();
        let postponed = store.action(action).unwrap().unwrap();
        assert_eq!(postponed.state, ActionState::Queued);
        assert_eq!(postponed.result.as_deref(), Some("queue busy"));
        assert!(store.copies(action).unwrap().is_empty());
        let left = store.action_recipients(action).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].address.as_str(), left[0].approved, left[0].outcome),
            ("a@x", true, None)
        );
        assert_eq!(store.take_action("mx1", 99).unwrap(), None);
        assert_eq!(store.take_action("mx1", 100).unwrap().unwrap().id, action);
        assert_eq!(store.attempts(action).unwrap(), 2);
    }

    /// Copies round-trip, including an empty recipient list, and get their
    /// queue id later.
    #[test]
    fn copies_round_trip() {
        let (_dir, store, id) = store_with_message("A1");
        let action = release(&store, id, &["a@x", "b@x"], 10);
        let mut released = ActionCopy {
            role: CopyRole::Release,
            marker: "posttls-1-release".into(),
            recipients: vec!["a@x".into(), "b@x".into()],
            queue_id: None,
        };
        let kept = ActionCopy {
            role: CopyRole::Keep,
            marker: "posttls-1-keep".into(),
            recipients: Vec::new(),
            queue_id: Some("K1".into()),
        };
        store.add_copy(action, &released).unwrap();
        store.add_copy(action, &kept).unwrap();
        store
            .set_copy_queue_id(action, CopyRole::Release, "R1")
            .unwrap();
        released.queue_id = Some("R1".into());
        assert_eq!(store.copies(action).unwrap(), [kept, released]);
    }

    /// `set_phase` changes running actions only, and `running_actions`
    /// lists those.
    #[test]
    fn phases_are_journalled_for_running_actions_only() {
        let (_dir, store, id) = store_with_message("A1");
        let running = release(&store, id, &[], 10);
        let queued = release(&store, id, &[], 10);
        store.take_action("mx1", 10).unwrap();
        store.set_phase(running, Phase::Inject).unwrap();
        store.set_phase(queued, Phase::Inject).unwrap();
        assert_eq!(store.action(queued).unwrap().unwrap().phase, None);
        let listed = store.running_actions("mx1").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].id, listed[0].phase),
            (running, Some(Phase::Inject))
        );
    }

    /// A failed action gives back the token used for it (same message,
    /// action and time), not other tokens; a refused one gives back none.
    #[test]
    fn a_failed_action_gives_back_its_token_and_a_refused_one_does_not() {
        let (_dir, store, id) = store_with_message("A1");
        assert!(store.use_token("t1", id, "release", None, 20).unwrap());
        assert!(store.use_token("t-other", id, "release", None, 21).unwrap());
        let failed = release(&store, id, &["a@x"], 20);
        store.take_action("mx1", 20).unwrap();
        store
            .finish_action(failed, ActionState::Failed, "postsuper failed", None, 30)
            .unwrap();
        assert_eq!(store.token_use("t1").unwrap(), None);
        assert!(store.token_use("t-other").unwrap().is_some());

        assert!(store.use_token("t2", id, "release", None, 40).unwrap());
        let refused = release(&store, id, &["a@x"], 40);
        store.take_action("mx1", 40).unwrap();
        store
            .finish_action(refused, ActionState::Refused, "mandatory", None, 41)
            .unwrap();
        assert!(store.token_use("t2").unwrap().is_some());
        assert!(!store.use_token("t2", id, "release", None, 42).unwrap());
    }
}
