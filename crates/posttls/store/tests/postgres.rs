//! The PostTLS store on a real PostgreSQL server (a private cluster per
//! test, Debian's package): the same answers as SQLite for the same calls,
//! the roles and grants of docs/fleets.md (the web's role refused every write only
//! the worker may make), hostile rows refused, the schema version checked.

use std::collections::HashSet;

use mailtls_postgres::postgres::error::SqlState;
use mailtls_test_support::postgres::PgCluster;
use posttls_classify::TlsFailureKind;
use posttls_store::{
    Access, ActionCopy, ActionKind, ActionState, AuditEvent, CopyRole, Database, MessageState,
    NotificationKind, NotificationOutcome, PgError, PgUrl, Phase, RecipientOutcome, RecipientState,
    SeenMessage, SeenRecipient, Store, StoreError,
};

/// The `n`-th (from 0) ```sql block of docs/fleets.md's "PostTLS on
/// PostgreSQL" section, as its statements.
fn documented_sql(n: usize) -> Vec<String> {
    let fleets = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../docs/fleets.md"
    ))
    .unwrap();
    let section = fleets
        .split("## PostTLS on PostgreSQL")
        .nth(1)
        .expect("docs/fleets.md has the section")
        .split("\n## ")
        .next()
        .unwrap();
    let block = section
        .split("```sql\n")
        .nth(n + 1)
        .expect("the SQL block")
        .split("```")
        .next()
        .unwrap();
    block
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

fn url(cluster: &PgCluster, role: &str, password: &str, db: &str) -> PgUrl {
    PgUrl::parse(
        &format!(
            "postgresql://{role}:{}@127.0.0.1:{}/{db}",
            password.replace(' ', "%20"),
            cluster.port
        ),
        None,
    )
    .unwrap()
}

fn pg(url: PgUrl) -> Database {
    Database::Postgres(Box::new(url))
}

fn seen(instance: &'static str, queue_id: &'static str, arrival_time: i64) -> SeenMessage<'static> {
    SeenMessage {
        instance,
        queue_id,
        arrival_time,
        sender: "alice@example.org",
        subject: Some("Hello"),
        own_sender: true,
        requiretls: false,
        state: MessageState::Deferred,
    }
}

fn rcpt(address: &str, tls: bool) -> SeenRecipient {
    SeenRecipient {
        address: address.into(),
        delay_reason: Some("TLS is required, but was not offered".into()),
        tls_kind: tls.then_some(TlsFailureKind::NotOffered),
        mandatory: address.ends_with("bank.example"),
    }
}

/// Every call the worker and the web process make, in an order they make
/// them, with what each answered: the transcript of one store.
fn transcript(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! note {
        ($e:expr) => {
            out.push(format!("{} = {:?}", stringify!($e), $e.unwrap()))
        };
    }
    note!(store.saw_message(&seen("mx1", "A1", 100), 1000));
    note!(store.saw_message(&seen("mx1", "A1", 100), 1060));
    note!(store.saw_message(&seen("mx1", "A1", 200), 1060));
    note!(store.saw_message(&seen("mx2", "A1", 100), 1060));
    note!(store.saw_message(&seen("mx1", "B2", 100), 1060));
    note!(store.set_pending_recipients(
        1,
        &[
            rcpt("b@x", true),
            rcpt("a@x", true),
            rcpt("B@x", false),
            rcpt("c@bank.example", true)
        ]
    ));
    note!(store.set_recipient_state(1, "a@x", RecipientState::Released));
    note!(store.set_pending_recipients(1, &[rcpt("b@x", true), rcpt("a@x", true)]));
    note!(store.recipients(1));
    note!(store.set_pending_recipients(4, &[rcpt("d@x", true)]));
    note!(store.find_message("mx2", "A1", 100));
    note!(store.find_message("mx3", "A1", 100));
    note!(store.message(2));
    note!(store.set_message_state(3, MessageState::Released));
    note!(store.saw_message(&seen("mx1", "A1", 200), 1100));
    note!(store.mark_missing_gone(
        "mx1",
        &HashSet::from([("A1".to_string(), 100), ("A1".to_string(), 200)])
    ));
    note!(store.message(5));
    note!(store.messages_in(MessageState::Deferred, 10));
    note!(store.messages_in(MessageState::Deferred, 1));
    for (kind, outcome) in [
        (
            NotificationKind::First,
            NotificationOutcome::Failed("relay down".into()),
        ),
        (NotificationKind::First, NotificationOutcome::Sent),
        (NotificationKind::Reminder, NotificationOutcome::Sent),
    ] {
        note!(store.record_notification(1, kind, "alice@example.org", &outcome, 1070));
    }
    note!(store.notifications(1));
    note!(store.use_token("t1", 1, "release", Some("192.0.2.1"), 1080));
    note!(store.use_token("t1", 1, "release", Some("192.0.2.1"), 1081));
    note!(store.token_use("t1"));
    note!(store.token_use("t2"));
    let approved = ["b@x".to_string(), "a@x".to_string(), "b@x".to_string()];
    note!(store.request_action(
        1,
        ActionKind::Release,
        "token",
        Some("192.0.2.1"),
        &approved,
        1080
    ));
    note!(store.request_action(3, ActionKind::Delete, "admin:root", None, &[], 1081));
    note!(store.request_action(1, ActionKind::Delete, "admin:root", None, &[], 1082));
    // Each worker takes only its own instance's requests.
    note!(store.take_action("mx2", 1090));
    note!(store.take_action("mx2", 1090));
    note!(store.take_action("mx1", 1090));
    note!(store.running_actions("mx1"));
    note!(store.running_actions("mx2"));
    note!(store.set_phase(1, Phase::Hold));
    note!(store.set_phase(3, Phase::Hold));
    note!(store.set_recipient_outcome(1, "b@x", RecipientOutcome::Released, None));
    note!(store.set_recipient_outcome(1, "k@x", RecipientOutcome::Kept, Some("mandatory")));
    let copy = |role, queue_id: Option<&str>| ActionCopy {
        role,
        marker: format!("posttls.1.{role}"),
        recipients: vec!["b@x".into(), "z@x".into()],
        queue_id: queue_id.map(str::to_string),
    };
    note!(store.add_copy(1, &copy(CopyRole::Release, None)));
    note!(store.add_copy(1, &copy(CopyRole::Keep, Some("K1"))));
    note!(store.add_copy(1, &copy(CopyRole::Keep, None)));
    note!(store.set_copy_queue_id(1, CopyRole::Release, "R1"));
    note!(store.copies(1));
    note!(store.action_recipients(1));
    note!(store.postpone_action(1, 2000, "queue busy"));
    note!(store.action_recipients(1));
    note!(store.copies(1));
    note!(store.take_action("mx1", 1999));
    note!(store.take_action("mx1", 2000));
    note!(store.attempts(1));
    note!(store.finish_action(1, ActionState::Failed, "postsuper failed", None, 2001));
    note!(store.token_use("t1"));
    note!(store.finish_action(2, ActionState::Done, "deleted", Some("N1"), 2002));
    note!(store.action(1));
    note!(store.action(99));
    note!(store.actions_of(1));
    note!(store.counts().map(|c| {
        let mut sorted: Vec<String> = (c.messages.iter().map(|(k, n)| format!("{k:?}={n}")))
            .chain(c.notifications.iter().map(|(k, n)| format!("{k:?}={n}")))
            .chain(c.actions.iter().map(|(k, n)| format!("{k:?}={n}")))
            .collect();
        sorted.sort();
        sorted
    }));
    for (at, event) in [
        (10, AuditEvent::Login),
        (20, AuditEvent::Requested(ActionKind::Release)),
        (
            30,
            AuditEvent::Finished(ActionKind::Delete, ActionState::Refused),
        ),
        (40, AuditEvent::Notified(NotificationKind::Mandatory)),
    ] {
        note!(store.audit("root", Some("::1"), Some(1), event, "detail", at));
    }
    note!(store.prune_audit(20));
    note!(store.audit_log(10));
    note!(store.audit_log(1));
    note!(store.add_mandatory_domain("bank.example", "root", 1));
    note!(store.add_mandatory_domain("bank.example", "root", 2));
    note!(store.add_mandatory_domain("Zed.example", "root", 2));
    note!(store.mandatory_domains());
    note!(store.remove_mandatory_domain("bank.example"));
    note!(store.remove_mandatory_domain("bank.example"));
    note!(store.set_admin("root", "old", 1));
    note!(store.set_admin("other", "hash", 1));
    note!(store.create_session("s-root", "root", 1, 100));
    note!(store.create_session("s-other", "other", 1, 100));
    note!(store.set_admin("root", "new", 2));
    note!(store.session_admin("s-root", 2));
    note!(store.session_admin("s-other", 2));
    note!(store.session_admin("s-other", 100));
    note!(store.admin_password_hash("root"));
    note!(store.admin_password_hash("nobody"));
    note!(store.end_session("s-other"));
    note!(store.session_admin("s-other", 2));
    // A transaction dropped uncommitted leaves nothing; one committed
    // keeps everything.
    let tx = store.transaction().unwrap();
    note!(store.audit("root", None, None, AuditEvent::Logout, "dropped", 50));
    drop(tx);
    let failed = store.in_transaction(|s| {
        s.audit("root", None, None, AuditEvent::LoginFailed, "failed", 51)?;
        Err::<(), _>(StoreError::Foreign)
    });
    out.push(format!("in_transaction failed: {}", failed.is_err()));
    note!(store.in_transaction(|s| s.audit("root", None, None, AuditEvent::Logout, "kept", 52)));
    note!(store.audit_log(2));
    out
}

#[test]
fn postgresql_answers_every_call_as_sqlite_does() {
    let cluster = PgCluster::start();
    cluster.create_database("posttls");
    let pg = Store::connect(
        &pg(url(
            &cluster,
            "postgres",
            mailtls_test_support::postgres::PASSWORD,
            "posttls",
        )),
        Access::Worker,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("posttls.sqlite")).unwrap();
    let expected = transcript(&sqlite);
    let got = transcript(&pg);
    for (sqlite, pg) in expected.iter().zip(&got) {
        assert_eq!(sqlite, pg);
    }
    assert_eq!(expected.len(), got.len());
    // A transaction cannot be opened inside another (PostgreSQL would only
    // warn, and the inner COMMIT would end the outer one).
    let tx = pg.transaction().unwrap();
    assert!(matches!(
        pg.transaction(),
        Err(StoreError::NestedTransaction)
    ));
    tx.commit().unwrap();
    pg.transaction().unwrap().commit().unwrap();
}

/// The error's SQLSTATE, if PostgreSQL refused the statement.
fn sql_state(err: &StoreError) -> Option<SqlState> {
    match err {
        StoreError::Postgres(PgError::Postgres { source, .. }) => source.code().cloned(),
        _ => None,
    }
}

#[test]
fn the_readmes_roles_let_the_web_record_requests_and_nothing_only_the_worker_may_do() {
    let cluster = PgCluster::start();
    for sql in documented_sql(0) {
        cluster.psql("postgres", &sql);
    }
    let worker_url = url(&cluster, "posttls_worker", "worker secret", "posttls");
    let web_url = url(&cluster, "posttls_web", "web secret", "posttls");
    // Before a worker made the tables, the web process says who does.
    match Store::connect(&pg(web_url.clone()), Access::Web) {
        Err(StoreError::Postgres(PgError::Refused { what, .. })) => {
            assert!(what.contains("posttls worker"), "{what}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the web process used tables that do not exist"),
    }
    let worker = Store::connect(&pg(worker_url.clone()), Access::Worker).unwrap();
    for sql in documented_sql(1) {
        cluster.psql("posttls", &sql);
    }
    let web = Store::connect(&pg(web_url.clone()), Access::Web).unwrap();

    // The worker records a message; the web shows it and records a
    // confirmed link's request, in one transaction as its confirm page does.
    let (id, _) = worker.saw_message(&seen("mx1", "A1", 100), 1000).unwrap();
    worker
        .set_pending_recipients(id, &[rcpt("b@x", true)])
        .unwrap();
    worker
        .record_notification(
            id,
            NotificationKind::First,
            "alice@example.org",
            &NotificationOutcome::Sent,
            1001,
        )
        .unwrap();
    worker.set_admin("root", "hash", 1).unwrap();
    assert_eq!(web.message(id).unwrap().unwrap().queue_id, "A1");
    assert_eq!(web.recipients(id).unwrap().len(), 1);
    assert_eq!(web.notifications(id).unwrap().len(), 1);
    assert_eq!(
        web.messages_in(MessageState::Deferred, 10).unwrap().len(),
        1
    );
    assert_eq!(
        web.admin_password_hash("root").unwrap().as_deref(),
        Some("hash")
    );
    let action = web
        .in_transaction(|s| {
            assert!(s.use_token("t1", id, "release", Some("192.0.2.1"), 1010)?);
            let action = s.request_action(
                id,
                ActionKind::Release,
                "token",
                Some("192.0.2.1"),
                &["b@x".into()],
                1010,
            )?;
            s.audit(
                "token",
                Some("192.0.2.1"),
                Some(id),
                AuditEvent::Requested(ActionKind::Release),
                "",
                1010,
            )?;
            Ok(action)
        })
        .unwrap();
    assert!(!web.use_token("t1", id, "release", None, 1011).unwrap());
    assert_eq!(web.token_use("t1").unwrap().unwrap().message_id, id);
    web.create_session("s1", "root", 1, 5000).unwrap();
    assert_eq!(web.session_admin("s1", 2).unwrap().as_deref(), Some("root"));
    web.end_session("s1").unwrap();
    assert!(web.add_mandatory_domain("bank.example", "root", 3).unwrap());
    assert!(web.remove_mandatory_domain("bank.example").unwrap());
    assert!(web.add_mandatory_domain("bank.example", "root", 3).unwrap());
    assert_eq!(web.audit_log(10).unwrap().len(), 1);
    web.counts().unwrap();

    // Every write only the worker makes is refused to the web's role.
    let refused: Vec<(&str, StoreError)> = vec![
        (
            "saw_message",
            web.saw_message(&seen("mx1", "F1", 1), 1).unwrap_err(),
        ),
        (
            "set_pending_recipients",
            web.set_pending_recipients(id, &[rcpt("evil@x", true)])
                .unwrap_err(),
        ),
        (
            "set_message_state",
            web.set_message_state(id, MessageState::Released)
                .unwrap_err(),
        ),
        (
            "set_recipient_state",
            web.set_recipient_state(id, "b@x", RecipientState::Released)
                .unwrap_err(),
        ),
        (
            "record_notification",
            web.record_notification(
                id,
                NotificationKind::First,
                "x",
                &NotificationOutcome::Sent,
                1,
            )
            .unwrap_err(),
        ),
        ("take_action", web.take_action("mx1", 2000).unwrap_err()),
        (
            "set_phase",
            web.set_phase(action, Phase::ReleaseCopies).unwrap_err(),
        ),
        (
            "postpone_action",
            web.postpone_action(action, 0, "x").unwrap_err(),
        ),
        (
            "finish_action",
            web.finish_action(action, ActionState::Done, "released", Some("X"), 1)
                .unwrap_err(),
        ),
        (
            "set_recipient_outcome",
            web.set_recipient_outcome(action, "b@x", RecipientOutcome::Released, None)
                .unwrap_err(),
        ),
        (
            "add_copy",
            web.add_copy(
                action,
                &ActionCopy {
                    role: CopyRole::Release,
                    marker: "m".into(),
                    recipients: vec![],
                    queue_id: None,
                },
            )
            .unwrap_err(),
        ),
        (
            "set_copy_queue_id",
            web.set_copy_queue_id(action, CopyRole::Release, "X")
                .unwrap_err(),
        ),
        ("prune_audit", web.prune_audit(i64::MAX).unwrap_err()),
        ("set_admin", web.set_admin("evil", "hash", 1).unwrap_err()),
    ];
    for (call, err) in &refused {
        assert_eq!(
            sql_state(err),
            Some(SqlState::INSUFFICIENT_PRIVILEGE),
            "{call}: {err}"
        );
    }
    // Nor can it write the worker's columns, or delete, with SQL of its own.
    let mut raw = web_url.connect().unwrap();
    for sql in [
        format!("INSERT INTO posttls_actions (message_id, action, requested_by, requested_at, state, phase) VALUES ({id}, 'release', 'x', 1, 'running', 'release_copies')"),
        format!("INSERT INTO posttls_action_recipients (action_id, address, approved, outcome) VALUES ({action}, 'evil@x', true, 'released')"),
        format!("UPDATE posttls_actions SET state = 'done' WHERE id = {action}"),
        format!("UPDATE posttls_messages SET state = 'released' WHERE id = {id}"),
        "UPDATE posttls_recipients SET state = 'released'".to_string(),
        "UPDATE posttls_audit SET detail = 'nothing happened'".to_string(),
        "UPDATE posttls_tokens_used SET at = 0".to_string(),
        "UPDATE posttls_sessions SET expires = 99999999".to_string(),
        "DELETE FROM posttls_audit".to_string(),
        "DELETE FROM posttls_tokens_used".to_string(),
        "DELETE FROM posttls_actions".to_string(),
        "DELETE FROM posttls_messages".to_string(),
        "INSERT INTO posttls_admins VALUES ('evil', 'hash', 1)".to_string(),
        "UPDATE mailtls_schema SET version = 99".to_string(),
        "CREATE TABLE posttls_evil (x int)".to_string(),
        "ALTER TABLE posttls_actions ADD COLUMN evil int".to_string(),
    ] {
        let err = raw.batch_execute(&sql).expect_err(&sql);
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {err}");
    }
    drop(raw);

    // The worker carries the request out under its role.
    let taken = worker.take_action("mx1", 2000).unwrap().unwrap();
    assert_eq!((taken.id, taken.state), (action, ActionState::Running));
    assert_eq!(worker.action_recipients(action).unwrap()[0].address, "b@x");
    worker.set_phase(action, Phase::Hold).unwrap();
    worker
        .finish_action(action, ActionState::Failed, "postsuper failed", None, 2001)
        .unwrap();
    assert_eq!(
        web.token_use("t1").unwrap(),
        None,
        "a failed request gives its link back"
    );
    assert_eq!(
        web.action(action).unwrap().unwrap().state,
        ActionState::Failed
    );
    assert_eq!(worker.prune_audit(i64::MAX).unwrap(), 1);
    assert!(web.audit_log(10).unwrap().is_empty());
}

#[test]
fn a_word_no_program_wrote_is_an_error_not_a_default() {
    let cluster = PgCluster::start();
    cluster.create_database("posttls");
    let store = Store::connect(
        &pg(url(
            &cluster,
            "postgres",
            mailtls_test_support::postgres::PASSWORD,
            "posttls",
        )),
        Access::Worker,
    )
    .unwrap();
    let (id, _) = store.saw_message(&seen("mx1", "A1", 1), 10).unwrap();
    store
        .set_pending_recipients(id, &[rcpt("a@x", true)])
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
    let action = store
        .request_action(id, ActionKind::Release, "token", None, &["a@x".into()], 13)
        .unwrap();
    store
        .set_recipient_outcome(action, "a@x", RecipientOutcome::Released, None)
        .unwrap();
    let unknown = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::Unknown { url, source }) => {
            assert_eq!(source.what, what);
            assert!(url.contains("postgres:***@"), "{url}");
        }
        other => panic!("{what}: {other:?}"),
    };
    cluster.psql("posttls", "UPDATE posttls_messages SET state = 'sent'");
    unknown(store.message(id).map(drop), "message state");
    unknown(store.counts().map(drop), "message state");
    cluster.psql(
        "posttls",
        "UPDATE posttls_recipients SET tls_kind = '<not a kind>'",
    );
    unknown(store.recipients(id).map(drop), "TLS failure kind");
    cluster.psql("posttls", "UPDATE posttls_notifications SET kind = 'sms'");
    unknown(store.notifications(id).map(drop), "notification kind");
    cluster.psql(
        "posttls",
        "UPDATE posttls_audit SET event = 'release_approved'",
    );
    unknown(store.audit_log(1).map(drop), "audit event");
    cluster.psql("posttls", "UPDATE posttls_actions SET phase = 'launch'");
    unknown(store.action(action).map(drop), "action phase");
    cluster.psql(
        "posttls",
        "UPDATE posttls_action_recipients SET outcome = 'maybe'",
    );
    unknown(
        store.action_recipients(action).map(drop),
        "recipient outcome",
    );
}

#[test]
fn a_newer_schema_is_refused_and_errors_name_the_url_without_its_password() {
    let cluster = PgCluster::start();
    cluster.create_database("posttls");
    let superuser = url(
        &cluster,
        "postgres",
        mailtls_test_support::postgres::PASSWORD,
        "posttls",
    );
    drop(Store::connect(&pg(superuser.clone()), Access::Worker).unwrap());
    // A second start finds the schema made and changes nothing.
    drop(Store::connect(&pg(superuser.clone()), Access::Worker).unwrap());
    assert_eq!(
        cluster.psql(
            "posttls",
            "SELECT version FROM mailtls_schema WHERE component = 'posttls'"
        ),
        "2"
    );
    cluster.psql(
        "posttls",
        "UPDATE mailtls_schema SET version = 3 WHERE component = 'posttls'",
    );
    for access in [Access::Worker, Access::Web] {
        match Store::connect(&pg(superuser.clone()), access) {
            Err(StoreError::Postgres(PgError::NewerSchema {
                found: 3, known: 2, ..
            })) => {}
            Err(other) => panic!("{access:?}: {other}"),
            Ok(_) => panic!("{access:?}: a newer schema was used"),
        }
    }
    let wrong = Database::parse(
        &format!(
            "postgresql://postgres:wrong%20secret@127.0.0.1:{}/posttls",
            cluster.port
        ),
        None,
    )
    .unwrap();
    let err = Store::connect(&wrong, Access::Worker)
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(err.contains("postgres:***@127.0.0.1"), "{err}");
    assert!(!err.contains("wrong"), "{err}");
    assert_eq!(
        wrong.to_string(),
        format!(
            "postgresql://postgres:***@127.0.0.1:{}/posttls",
            cluster.port
        )
    );
    // A password file is for PostgreSQL only.
    assert!(matches!(
        Database::parse(
            "/var/lib/posttls/posttls.sqlite",
            Some(std::path::Path::new("/etc/pw"))
        ),
        Err(StoreError::PasswordForSqlite(_))
    ));
}

/// A server restart costs the call that finds the connection gone; the
/// next one connects again (the worker's loop and the web's requests go
/// on).
#[test]
fn a_connection_lost_to_a_server_restart_is_made_again() {
    let cluster = PgCluster::start();
    cluster.create_database("posttls");
    let superuser = url(
        &cluster,
        "postgres",
        mailtls_test_support::postgres::PASSWORD,
        "posttls",
    );
    let store = Store::connect(&pg(superuser), Access::Worker).unwrap();
    store
        .add_mandatory_domain("bank.example", "root", 1)
        .unwrap();
    cluster.stop_server();
    cluster.start_server();
    let first = store.mandatory_domains();
    if let Err(err) = &first {
        let shown = err.to_string();
        assert!(shown.contains("postgres:***@127.0.0.1"), "{shown}");
    }
    assert_eq!(store.mandatory_domains().unwrap(), ["bank.example"]);
}
