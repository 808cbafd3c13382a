//! What only a SQLite file shows from outside: rows a hand (not this
//! program) wrote are refused when read.

mod support;

use posttls_store::{AuditEvent, NotificationKind, NotificationOutcome, Store, StoreError};
use rusqlite::Connection;
use support::{rcpt, seen};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("posttls.sqlite")).unwrap();
    (dir, store)
}

/// A state word this program does not know is an error, not a default.
#[test]
fn an_unknown_stored_state_is_an_error() {
    let (dir, store) = store();
    let (id, _) = store.saw_message(&seen("A1", 1), 10).unwrap();
    Connection::open(dir.path().join("posttls.sqlite"))
        .unwrap()
        .execute("UPDATE messages SET state='sent' WHERE id=?", [id])
        .unwrap();
    assert!(matches!(store.message(id), Err(StoreError::Sqlite(_))));
    // Likewise a TLS failure kind, a notification and an audit event.
    store
        .set_pending_recipients(id, &[rcpt("a@x.example")])
        .unwrap();
    store
        .record_notification(
            id,
            NotificationKind::First,
            "a@x",
            &NotificationOutcome::Sent,
            11,
        )
        .unwrap();
    store
        .audit("root", None, Some(id), AuditEvent::Logout, "", 12)
        .unwrap();
    let conn = Connection::open(dir.path().join("posttls.sqlite")).unwrap();
    for forge in [
        "UPDATE recipients SET tls_kind='<not a kind>'",
        "UPDATE notifications SET kind='sms'",
        "UPDATE audit SET event='release_approved'",
    ] {
        conn.execute(forge, []).unwrap();
    }
    assert!(matches!(store.recipients(id), Err(StoreError::Sqlite(_))));
    assert!(matches!(
        store.notifications(id),
        Err(StoreError::Sqlite(_))
    ));
    assert!(matches!(store.audit_log(1), Err(StoreError::Sqlite(_))));
}
