//! The store's contract: every behaviour here runs on SQLite and on
//! PostgreSQL (a private cluster per test), so that PostTLS's rules,
//! decided once in `Store`, hold whichever backend stores them.

mod support;

use std::collections::HashMap;

use mailtls_test_support::postgres::PgCluster;
use posttls_store::{
    Access, ActionCopy, ActionKind, ActionState, AuditEvent, CopyRole, Counts, Database,
    MessageState, NotificationKind, NotificationOutcome, PgUrl, Phase, RecipientOutcome,
    RecipientState, SeenMessage, SendResult, Store, StoreError, TokenUseRow,
};
use support::{rcpt, seen};

/// A fresh store on a private PostgreSQL cluster, opened as the worker
/// opens it (kept running while the returned cluster lives).
fn postgres_store() -> (PgCluster, Store) {
    let cluster = PgCluster::start();
    cluster.create_database("posttls");
    let url = PgUrl::parse(&cluster.url("posttls"), None).unwrap();
    let store = Store::connect(&Database::Postgres(Box::new(url)), Access::Worker).unwrap();
    (cluster, store)
}

/// Runs each named behaviour once on a new SQLite file and once on a new
/// PostgreSQL database.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::Store::open(&dir.path().join("posttls.sqlite")).unwrap();
                    super::$name(&store);
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    let (_cluster, store) = super::postgres_store();
                    super::$name(&store);
                }
            )*
        }
    };
}

on_both_stores!(
    a_reused_queue_id_is_another_message,
    recipients_follow_the_queue_and_settled_ones_keep_their_state,
    messages_missing_from_a_scan_are_gone_but_settled_ones_keep_their_state,
    tokens_are_single_use_and_actions_are_taken_once,
    notifications_audit_domains_admins_and_sessions,
    uncommitted_transactions_roll_back,
    a_new_password_ends_only_that_admins_sessions,
    pruning_the_audit_log_deletes_only_older_entries,
    a_postponed_action_waits_and_forgets_its_decisions,
    copies_round_trip,
    phases_are_journalled_for_running_actions_only,
    a_failed_action_gives_back_its_token_and_a_refused_one_does_not,
    counts_group_the_rows_by_state_kind_and_result,
    a_token_use_reads_back_and_unused_tokens_are_none,
);

fn a_reused_queue_id_is_another_message(store: &Store) {
    let (a, new_a) = store.saw_message(&seen("4A0AF98C232", 100), 1000).unwrap();
    let (again, new_again) = store.saw_message(&seen("4A0AF98C232", 100), 1060).unwrap();
    let (b, new_b) = store.saw_message(&seen("4A0AF98C232", 200), 1060).unwrap();
    assert!(new_a && !new_again && new_b);
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert_eq!(store.message(a).unwrap().unwrap().last_seen, 1060);
}

fn recipients_follow_the_queue_and_settled_ones_keep_their_state(store: &Store) {
    let (id, _) = store.saw_message(&seen("A1", 1), 10).unwrap();
    store
        .set_pending_recipients(id, &[rcpt("a@x"), rcpt("b@x"), rcpt("c@x")])
        .unwrap();
    store
        .set_recipient_state(id, "c@x", RecipientState::Released)
        .unwrap();
    // b was delivered meanwhile; c released.
    store.set_pending_recipients(id, &[rcpt("a@x")]).unwrap();
    let states: Vec<(String, RecipientState)> = store
        .recipients(id)
        .unwrap()
        .into_iter()
        .map(|r| (r.address, r.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a@x".into(), RecipientState::Pending),
            ("b@x".into(), RecipientState::Gone),
            ("c@x".into(), RecipientState::Released)
        ]
    );
}

fn messages_missing_from_a_scan_are_gone_but_settled_ones_keep_their_state(store: &Store) {
    let (kept, _) = store.saw_message(&seen("K", 1), 10).unwrap();
    let (left, _) = store.saw_message(&seen("L", 1), 10).unwrap();
    let (released, _) = store.saw_message(&seen("R", 1), 10).unwrap();
    store
        .set_message_state(released, MessageState::Released)
        .unwrap();
    store.saw_message(&seen("K", 1), 20).unwrap();
    let gone: Vec<i64> = store
        .mark_missing_gone(
            "mx1",
            &[("K".to_string(), 1), ("R".to_string(), 1)]
                .into_iter()
                .collect(),
        )
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(gone, [left]);
    assert_eq!(
        store.message(kept).unwrap().unwrap().state,
        MessageState::Deferred
    );
    assert_eq!(
        store.message(released).unwrap().unwrap().state,
        MessageState::Released
    );
    // A released message seen again stays released.
    store.saw_message(&seen("R", 1), 30).unwrap();
    assert_eq!(
        store.message(released).unwrap().unwrap().state,
        MessageState::Released
    );
}

fn tokens_are_single_use_and_actions_are_taken_once(store: &Store) {
    let (id, _) = store.saw_message(&seen("A1", 1), 10).unwrap();
    assert!(store
        .use_token("t1", id, "release", Some("192.0.2.1"), 11)
        .unwrap());
    assert!(!store
        .use_token("t1", id, "release", Some("192.0.2.1"), 12)
        .unwrap());
    let action = store
        .request_action(
            id,
            ActionKind::Release,
            "token",
            Some("192.0.2.1"),
            &["b@x".to_string()],
            11,
        )
        .unwrap();
    let taken = store.take_action("mx1", 11).unwrap().unwrap();
    assert_eq!((taken.id, taken.state), (action, ActionState::Running));
    assert_eq!(store.take_action("mx1", 11).unwrap(), None);
    assert_eq!(store.action_recipients(action).unwrap()[0].address, "b@x");
    store
        .finish_action(action, ActionState::Done, "released", Some("B2"), 12)
        .unwrap();
    assert_eq!(
        store
            .action(action)
            .unwrap()
            .unwrap()
            .new_queue_id
            .as_deref(),
        Some("B2")
    );
}

fn notifications_audit_domains_admins_and_sessions(store: &Store) {
    let (id, _) = store.saw_message(&seen("A1", 1), 10).unwrap();
    store
        .record_notification(
            id,
            NotificationKind::First,
            "alice@example.org",
            &NotificationOutcome::Sent,
            10,
        )
        .unwrap();
    assert_eq!(store.notifications(id).unwrap().len(), 1);
    store
        .audit(
            "admin:root",
            Some("::1"),
            Some(id),
            AuditEvent::Requested(ActionKind::Delete),
            "deleted by admin",
            11,
        )
        .unwrap();
    assert_eq!(
        store.audit_log(10).unwrap()[0].event,
        AuditEvent::Requested(ActionKind::Delete)
    );
    assert!(store
        .add_mandatory_domain("bank.example", "root", 1)
        .unwrap());
    assert!(!store
        .add_mandatory_domain("bank.example", "root", 1)
        .unwrap());
    assert_eq!(store.mandatory_domains().unwrap(), ["bank.example"]);
    assert!(store.remove_mandatory_domain("bank.example").unwrap());
    store.set_admin("root", "$argon2id$x", 1).unwrap();
    assert_eq!(
        store.admin_password_hash("root").unwrap().as_deref(),
        Some("$argon2id$x")
    );
    store.create_session("s1", "root", 1, 100).unwrap();
    assert_eq!(
        store.session_admin("s1", 50).unwrap().as_deref(),
        Some("root")
    );
    assert_eq!(store.session_admin("s1", 100).unwrap(), None);
}

/// A transaction dropped without commit rolls back and releases the
/// store; `in_transaction` rolls back when its closure fails.
fn uncommitted_transactions_roll_back(store: &Store) {
    let tx = store.transaction().unwrap();
    store
        .audit("root", None, None, AuditEvent::Login, "", 1)
        .unwrap();
    drop(tx);
    assert!(store.audit_log(10).unwrap().is_empty());

    let tx = store.transaction().unwrap();
    store
        .audit("root", None, None, AuditEvent::Logout, "", 2)
        .unwrap();
    tx.commit().unwrap();

    let failed = store.in_transaction(|s| {
        s.audit("root", None, None, AuditEvent::LoginFailed, "", 3)?;
        Err::<(), _>(StoreError::Foreign)
    });
    assert!(matches!(failed, Err(StoreError::Foreign)));
    let events: Vec<AuditEvent> = store
        .audit_log(10)
        .unwrap()
        .into_iter()
        .map(|a| a.event)
        .collect();
    assert_eq!(events, [AuditEvent::Logout]);
}

/// A new password ends that admin's sessions only.
fn a_new_password_ends_only_that_admins_sessions(store: &Store) {
    store.set_admin("root", "old", 1).unwrap();
    store.set_admin("other", "hash", 1).unwrap();
    store.create_session("s-root", "root", 1, 100).unwrap();
    store.create_session("s-other", "other", 1, 100).unwrap();
    store.set_admin("root", "new", 2).unwrap();
    assert_eq!(store.session_admin("s-root", 2).unwrap(), None);
    assert_eq!(
        store.session_admin("s-other", 2).unwrap().as_deref(),
        Some("other")
    );
    assert_eq!(
        store.admin_password_hash("root").unwrap().as_deref(),
        Some("new")
    );
}

/// `prune_audit` deletes the entries older than `before` and counts them.
fn pruning_the_audit_log_deletes_only_older_entries(store: &Store) {
    for at in [10, 20, 30] {
        store
            .audit("root", None, None, AuditEvent::Login, "", at)
            .unwrap();
    }
    assert_eq!(store.prune_audit(20).unwrap(), 1);
    let left: Vec<i64> = store
        .audit_log(10)
        .unwrap()
        .into_iter()
        .map(|a| a.at)
        .collect();
    assert_eq!(left, [30, 20]);
}

/// Stores one deferred message (queue id `queue_id`); its id.
fn store_with_message(store: &Store, queue_id: &str) -> i64 {
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
    store.saw_message(&message, 10).unwrap().0
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
fn a_postponed_action_waits_and_forgets_its_decisions(store: &Store) {
    let id = store_with_message(store, "A1");
    let action = release(store, id, &["a@x"], 10);
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
fn copies_round_trip(store: &Store) {
    let id = store_with_message(store, "A1");
    let action = release(store, id, &["a@x", "b@x"], 10);
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
fn phases_are_journalled_for_running_actions_only(store: &Store) {
    let id = store_with_message(store, "A1");
    let running = release(store, id, &[], 10);
    let queued = release(store, id, &[], 10);
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
fn a_failed_action_gives_back_its_token_and_a_refused_one_does_not(store: &Store) {
    let id = store_with_message(store, "A1");
    assert!(store.use_token("t1", id, "release", None, 20).unwrap());
    assert!(store.use_token("t-other", id, "release", None, 21).unwrap());
    let failed = release(store, id, &["a@x"], 20);
    store.take_action("mx1", 20).unwrap();
    store
        .finish_action(failed, ActionState::Failed, "postsuper failed", None, 30)
        .unwrap();
    assert_eq!(store.token_use("t1").unwrap(), None);
    assert!(store.token_use("t-other").unwrap().is_some());

    assert!(store.use_token("t2", id, "release", None, 40).unwrap());
    let refused = release(store, id, &["a@x"], 40);
    store.take_action("mx1", 40).unwrap();
    store
        .finish_action(refused, ActionState::Refused, "mandatory", None, 41)
        .unwrap();
    assert!(store.token_use("t2").unwrap().is_some());
    assert!(!store.use_token("t2", id, "release", None, 42).unwrap());
}

fn counts_group_the_rows_by_state_kind_and_result(store: &Store) {
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

fn a_token_use_reads_back_and_unused_tokens_are_none(store: &Store) {
    let (id, _) = store
        .saw_message(
            &SeenMessage {
                instance: "mx1",
                queue_id: "A1",
                arrival_time: 1,
                sender: "alice@example.org",
                subject: None,
                own_sender: true,
                requiretls: false,
                state: MessageState::Deferred,
            },
            10,
        )
        .unwrap();
    assert_eq!(store.token_use("t1").unwrap(), None);
    assert!(store
        .use_token("t1", id, "release", Some("192.0.2.1"), 11)
        .unwrap());
    assert_eq!(
        store.token_use("t1").unwrap(),
        Some(TokenUseRow {
            token_id: "t1".into(),
            message_id: id,
            action: "release".into(),
            at: 11,
            ip: Some("192.0.2.1".into()),
        })
    );
    assert_eq!(store.token_use("t2").unwrap(), None);
}
