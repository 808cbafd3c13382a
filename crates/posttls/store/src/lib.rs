//! PostTLS state, shared by the privileged worker (which scans the queue,
//! sends notifications and carries out actions) and the unprivileged web
//! process (which shows state and records requests): in one SQLite file
//! on the MTA (module `sqlite`) or, for a fleet of MTAs with one web process,
//! in PostgreSQL (module `postgres`). Callers use one [`Store`] whatever the
//! backend; each backend's module holds its schema and its SQL.
//!
//! Times are Unix seconds (UTC). A message is identified by instance,
//! queue id AND arrival time: Postfix reuses queue ids (unless
//! `enable_long_queue_ids = yes`), so an id alone could point a later
//! request at another sender's message.

use std::path::{Path, PathBuf};

use posttls_classify::TlsFailureKind;

mod counts;
mod journal;
mod postgres;
mod sqlite;
mod states;

pub use counts::{Counts, SendResult};
pub use journal::{ActionCopy, ActionRecipient};
pub use mailtls_postgres::{PgError, PgUrl};
pub use postgres::{inspect as inspect_postgres, PgInspection};
pub use sqlite::SCHEMA_VERSION;
pub use states::{
    ActionKind, ActionState, AuditEvent, CopyRole, MessageState, NotificationKind,
    NotificationOutcome, Phase, RecipientOutcome, RecipientState, UnknownValue,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Postgres(#[from] PgError),
    /// A stored word (state, kind, event) this program does not know, read
    /// from PostgreSQL: a newer program or a hostile writer put it there.
    #[error("PostgreSQL {url}: {source}")]
    Unknown {
        url: String,
        #[source]
        source: UnknownValue,
    },
    #[error("cannot create the database file {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("not a PostTLS database (no meta table with a schema version)")]
    Foreign,
    #[error("PostTLS database schema version {0}; this program knows version {SCHEMA_VERSION}")]
    WrongVersion(i64),
    #[error("password_file is only for a postgresql:// database, not the SQLite file {0}")]
    PasswordForSqlite(PathBuf),
    #[error("a transaction is already open on this connection")]
    NestedTransaction,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where the PostTLS state is kept: the `database` option.
#[derive(Debug, Clone)]
pub enum Database {
    /// One SQLite file: the worker and the web process on one host.
    Sqlite(PathBuf),
    /// One PostgreSQL database for a fleet: a worker per Postfix instance
    /// and one web process, each with a role of its own.
    Postgres(Box<PgUrl>),
}

impl Database {
    /// `database` as configured: a `postgresql://` (or `postgres://`) URL,
    /// its password from `password_file` when one is given, or else the
    /// path of a SQLite file.
    pub fn parse(database: &str, password_file: Option<&Path>) -> Result<Database> {
        if Database::is_url(database) {
            return Ok(Database::Postgres(Box::new(PgUrl::parse(
                database,
                password_file,
            )?)));
        }
        if password_file.is_some() {
            return Err(StoreError::PasswordForSqlite(PathBuf::from(database)));
        }
        Ok(Database::Sqlite(PathBuf::from(database)))
    }
}

impl Database {
    /// Whether `database` names a PostgreSQL database (`postgresql://` or
    /// `postgres://`) rather than a SQLite file.
    pub fn is_url(database: &str) -> bool {
        database.starts_with("postgresql://") || database.starts_with("postgres://")
    }
}

impl std::fmt::Display for Database {
    /// The path, or the URL without its password: for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(url.shown()),
        }
    }
}

/// Which program opens the store, for what it may do to the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The worker (and `posttls adduser`): creates the schema and migrates
    /// it.
    Worker,
    /// The web process. On PostgreSQL its role may create nothing, so it
    /// only checks that the worker made the schema this program knows; a
    /// SQLite file it creates and migrates like the worker, since either
    /// may start first on one host.
    Web,
}

/// What the scanner saw of one queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenMessage<'a> {
    pub instance: &'a str,
    pub queue_id: &'a str,
    pub arrival_time: i64,
    pub sender: &'a str,
    pub subject: Option<&'a str>,
    pub own_sender: bool,
    /// Its sender asked for REQUIRETLS (RFC 8689; Postfix 3.11 sendopts):
    /// no recipient of it is ever released.
    pub requiretls: bool,
    pub state: MessageState,
}

/// One pending recipient as the scanner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRecipient {
    pub address: String,
    pub delay_reason: Option<String>,
    /// The TLS failure class, if any (stored by its short name).
    pub tls_kind: Option<TlsFailureKind>,
    /// In a mandatory-TLS domain: never released.
    pub mandatory: bool,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub id: i64,
    pub instance: String,
    pub queue_id: String,
    pub arrival_time: i64,
    pub sender: String,
    pub subject: Option<String>,
    pub own_sender: bool,
    /// See [`SeenMessage::requiretls`].
    pub requiretls: bool,
    pub state: MessageState,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A stored recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientRow {
    pub address: String,
    pub delay_reason: Option<String>,
    pub tls_kind: Option<TlsFailureKind>,
    pub mandatory: bool,
    pub state: RecipientState,
}

/// A notification sent (or attempted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRow {
    pub kind: NotificationKind,
    pub sent_to: String,
    pub at: i64,
    pub outcome: NotificationOutcome,
}

/// A requested action on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRow {
    pub id: i64,
    pub message_id: i64,
    pub action: ActionKind,
    pub requested_by: String,
    pub ip: Option<String>,
    pub requested_at: i64,
    pub state: ActionState,
    /// How far a running action got (see [`Phase`]).
    pub phase: Option<Phase>,
    pub result: Option<String>,
    pub new_queue_id: Option<String>,
    pub finished_at: Option<i64>,
}

/// An audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at: i64,
    pub actor: String,
    pub ip: Option<String>,
    pub message_id: Option<i64>,
    pub event: AuditEvent,
    pub detail: String,
}

/// The PostTLS database, on either backend.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::SqliteDb),
    Postgres(Box<postgres::PgDb>),
}

/// Calls the backend's method of the same name.
macro_rules! backend {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(db) => db.$method($($arg),*),
            Backend::Postgres(db) => db.$method($($arg),*),
        }
    };
}
pub(crate) use backend;

/// An open write transaction of a [`Store`]: rolled back when dropped
/// without [`commit`](Transaction::commit), and rolled back when the
/// COMMIT itself fails, so that no error path leaves a transaction (and on
/// SQLite the write lock) open.
#[must_use = "a transaction rolls back unless committed"]
pub struct Transaction<'a>(TransactionOf<'a>);

enum TransactionOf<'a> {
    Sqlite(sqlite::Transaction<'a>),
    Postgres(postgres::Transaction<'a>),
}

impl Transaction<'_> {
    pub fn commit(self) -> Result<()> {
        match self.0 {
            TransactionOf::Sqlite(tx) => tx.commit(),
            TransactionOf::Postgres(tx) => tx.commit(),
        }
    }
}

impl Store {
    /// Opens (creating when new, migrating when older) the SQLite database
    /// at `path`.
    ///
    /// The connection is defensive: the schema cannot be changed behind
    /// SQLite's back (`SQLITE_DBCONFIG_DEFENSIVE`) and functions in the
    /// schema (views, triggers) are not trusted (`trusted_schema = OFF`),
    /// so a database file written by the unprivileged web process cannot
    /// make the privileged worker run anything but this program's SQL.
    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sqlite(sqlite::SqliteDb::open(path)?),
        })
    }

    /// Opens `database` for `access`: a SQLite file as [`Store::open`]
    /// does; on PostgreSQL the worker creates or migrates the `posttls`
    /// tables (recorded in `mailtls_schema`), the web process only checks
    /// their version.
    pub fn connect(database: &Database, access: Access) -> Result<Store> {
        let backend = match database {
            Database::Sqlite(path) => Backend::Sqlite(sqlite::SqliteDb::open(path)?),
            Database::Postgres(url) => {
                Backend::Postgres(Box::new(postgres::PgDb::connect(url, access)?))
            }
        };
        Ok(Store { backend })
    }

    /// Begins a write transaction; it rolls back unless committed, also
    /// when the caller returns early with an error or panics.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        Ok(Transaction(match &self.backend {
            Backend::Sqlite(db) => TransactionOf::Sqlite(db.transaction()?),
            Backend::Postgres(db) => TransactionOf::Postgres(db.transaction()?),
        }))
    }

    /// Runs `work` in one transaction, committed when it returns `Ok`.
    pub fn in_transaction<T>(&self, work: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let tx = self.transaction()?;
        let value = work(self)?;
        tx.commit()?;
        Ok(value)
    }

    /// Records a sighting of a queued message: new, or seen again. A
    /// message already released or deleted keeps that state. Returns the
    /// message's id and whether it is new.
    pub fn saw_message(&self, seen: &SeenMessage<'_>, now: i64) -> Result<(i64, bool)> {
        backend!(self.saw_message(seen, now))
    }

    /// Replaces the pending recipients of a message with what the queue
    /// shows now; recipients no longer listed are `gone` (delivered or
    /// bounced), unless an action already settled them.
    pub fn set_pending_recipients(
        &self,
        message_id: i64,
        recipients: &[SeenRecipient],
    ) -> Result<()> {
        backend!(self.set_pending_recipients(message_id, recipients))
    }

    /// Messages of `instance` in `Deferred` state that are not in the
    /// queue any more (`queued`: queue id and arrival time of every message
    /// the scan listed) become `Gone` and are returned.
    pub fn mark_missing_gone(
        &self,
        instance: &str,
        queued: &std::collections::HashSet<(String, i64)>,
    ) -> Result<Vec<MessageRow>> {
        backend!(self.mark_missing_gone(instance, queued))
    }

    /// The message with this instance, queue id and arrival time.
    pub fn find_message(
        &self,
        instance: &str,
        queue_id: &str,
        arrival_time: i64,
    ) -> Result<Option<MessageRow>> {
        backend!(self.find_message(instance, queue_id, arrival_time))
    }

    pub fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        backend!(self.message(id))
    }

    /// Messages in a state, newest first, at most `limit`.
    pub fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        backend!(self.messages_in(state, limit))
    }

    pub fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        backend!(self.recipients(message_id))
    }

    pub fn set_recipient_state(
        &self,
        message_id: i64,
        address: &str,
        state: RecipientState,
    ) -> Result<()> {
        backend!(self.set_recipient_state(message_id, address, state))
    }

    pub fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        backend!(self.set_message_state(message_id, state))
    }

    pub fn record_notification(
        &self,
        message_id: i64,
        kind: NotificationKind,
        sent_to: &str,
        outcome: &NotificationOutcome,
        now: i64,
    ) -> Result<()> {
        backend!(self.record_notification(message_id, kind, sent_to, outcome, now))
    }

    /// Notifications of a message, oldest first.
    pub fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
        backend!(self.notifications(message_id))
    }

    /// Marks a token used; false when it was used before (single use).
    pub fn use_token(
        &self,
        token_id: &str,
        message_id: i64,
        action: &str,
        ip: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        backend!(self.use_token(token_id, message_id, action, ip, now))
    }

    pub fn audit(
        &self,
        actor: &str,
        ip: Option<&str>,
        message_id: Option<i64>,
        event: AuditEvent,
        detail: &str,
        now: i64,
    ) -> Result<()> {
        backend!(self.audit(actor, ip, message_id, event, detail, now))
    }

    /// Deletes the audit entries older than `before`; returns how many.
    pub fn prune_audit(&self, before: i64) -> Result<usize> {
        backend!(self.prune_audit(before))
    }

    /// The newest audit entries, at most `limit`.
    pub fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        backend!(self.audit_log(limit))
    }

    /// Mandatory-TLS domains managed in the web UI (the configured ones are
    /// added by the caller).
    pub fn mandatory_domains(&self) -> Result<Vec<String>> {
        backend!(self.mandatory_domains())
    }

    pub fn add_mandatory_domain(&self, domain: &str, added_by: &str, now: i64) -> Result<bool> {
        backend!(self.add_mandatory_domain(domain, added_by, now))
    }

    pub fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        backend!(self.remove_mandatory_domain(domain))
    }

    /// Creates an admin or sets a new password; a new password ends the
    /// admin's sessions (whoever knew the old one is logged out).
    pub fn set_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        backend!(self.set_admin(name, password_hash, now))
    }

    pub fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        backend!(self.admin_password_hash(name))
    }

    pub fn create_session(&self, id: &str, admin: &str, now: i64, expires: i64) -> Result<()> {
        backend!(self.create_session(id, admin, now, expires))
    }

    /// The admin of a live session.
    pub fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        backend!(self.session_admin(id, now))
    }

    pub fn end_session(&self, id: &str) -> Result<()> {
        backend!(self.end_session(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SCHEMA;
    use rusqlite::Connection;

    #[test]
    fn a_database_created_by_root_belongs_to_its_directory_owner_with_its_wal() {
        // The worker (root) may start before the web pages (`_posttls`),
        // who must still write the database it created. As another user
        // the test checks that creation works at all.
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        if root {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        }
        let owner = std::fs::metadata(dir.path()).unwrap().uid();
        let path = dir.path().join("posttls.sqlite");
        let store = Store::open(&path).unwrap();
        store
            .add_mandatory_domain("example.org", "test", 0)
            .unwrap();
        for file in ["posttls.sqlite", "posttls.sqlite-wal", "posttls.sqlite-shm"] {
            let meta = std::fs::metadata(dir.path().join(file)).unwrap();
            assert_eq!(meta.uid(), owner, "{file}");
        }
        drop(store);
        assert!(
            Store::open(&path)
                .unwrap()
                .mandatory_domains()
                .unwrap()
                .len()
                == 1
        );
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posttls.sqlite")).unwrap();
        (dir, store)
    }

    fn seen(queue_id: &str, arrival_time: i64) -> SeenMessage<'_> {
        SeenMessage {
            instance: "mx1",
            queue_id,
            arrival_time,
            sender: "alice@example.org",
            subject: Some("Hello"),
            own_sender: true,
            requiretls: false,
            state: MessageState::Deferred,
        }
    }

    fn rcpt(address: &str) -> SeenRecipient {
        SeenRecipient {
            address: address.into(),
            delay_reason: Some("TLS is required, but was not offered by host x[1.2.3.4]".into()),
            tls_kind: Some(TlsFailureKind::NotOffered),
            mandatory: false,
        }
    }

    #[test]
    fn a_reused_queue_id_is_another_message() {
        let (_dir, store) = store();
        let (a, new_a) = store.saw_message(&seen("4A0AF98C232", 100), 1000).unwrap();
        let (again, new_again) = store.saw_message(&seen("4A0AF98C232", 100), 1060).unwrap();
        let (b, new_b) = store.saw_message(&seen("4A0AF98C232", 200), 1060).unwrap();
        assert!(new_a && !new_again && new_b);
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_eq!(store.message(a).unwrap().unwrap().last_seen, 1060);
    }

    #[test]
    fn recipients_follow_the_queue_and_settled_ones_keep_their_state() {
        let (_dir, store) = store();
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

    #[test]
    fn messages_missing_from_a_scan_are_gone_but_settled_ones_keep_their_state() {
        let (_dir, store) = store();
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

    #[test]
    fn tokens_are_single_use_and_actions_are_taken_once() {
        let (_dir, store) = store();
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

    #[test]
    fn notifications_audit_domains_admins_and_sessions() {
        let (_dir, store) = store();
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

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE notes(x);")
            .unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Foreign)));
    }

    /// Creates a database with the version-1 schema at `path`, as a
    /// version-1 program would have, and returns the raw connection.
    fn version_1_database(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute("INSERT INTO meta VALUES('schema_version','1')", [])
            .unwrap();
        conn
    }

    /// A version-1 database migrates: queued releases approve the TLS-failed,
    /// non-mandatory pending recipients, and running actions are in `Hold`.
    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        version_1_database(&path)
            .execute_batch(
                "INSERT INTO messages VALUES(1, 'mx1', 'A1', 1, 'alice@example.org', NULL, 1, 'deferred', 10, 10);
                 INSERT INTO recipients VALUES(1, 'tls@x', 'no TLS', 'not_offered', 0, 'pending');
                 INSERT INTO recipients VALUES(1, 'slow@x', 'timeout', NULL, 0, 'pending');
                 INSERT INTO actions(id, message_id, action, requested_by, requested_at, state)
                     VALUES(1, 1, 'release', 'token', 11, 'queued');
                 INSERT INTO actions(id, message_id, action, requested_by, requested_at, state)
                     VALUES(2, 1, 'delete', 'token', 12, 'running');",
            )
            .unwrap();
        let store = Store::open(&path).unwrap();
        let version: String = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        assert_eq!(
            store.action_recipients(1).unwrap(),
            [ActionRecipient {
                address: "tls@x".into(),
                approved: true,
                outcome: None,
                why: None,
            }]
        );
        let running = store.action(2).unwrap().unwrap();
        assert_eq!(
            (running.state, running.phase),
            (ActionState::Running, Some(Phase::Hold))
        );
        assert_eq!(store.action(1).unwrap().unwrap().phase, None);
    }

    /// A database of a newer schema than this program knows is refused.
    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.sqlite");
        version_1_database(&path)
            .execute(
                "UPDATE meta SET value=? WHERE key='schema_version'",
                [(SCHEMA_VERSION + 1).to_string()],
            )
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::WrongVersion(v)) if v == SCHEMA_VERSION + 1
        ));
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

    /// A transaction dropped without commit rolls back and releases the
    /// store; `in_transaction` rolls back when its closure fails.
    #[test]
    fn uncommitted_transactions_roll_back() {
        let (_dir, store) = store();
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
    #[test]
    fn a_new_password_ends_only_that_admins_sessions() {
        let (_dir, store) = store();
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
    #[test]
    fn pruning_the_audit_log_deletes_only_older_entries() {
        let (_dir, store) = store();
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
}

// ---------------------------------------------------------------------------
// For the web process (posttls-web): reading back a token's use, so that a
// confirmation page can say "this link was already used" without using it.
// ---------------------------------------------------------------------------

/// A recorded use of a single-use token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUseRow {
    pub token_id: String,
    pub message_id: i64,
    pub action: String,
    pub at: i64,
    pub ip: Option<String>,
}

impl Store {
    /// The use of `token_id` recorded by [`Store::use_token`], if any. Reads
    /// only: a GET of a confirmation page calls it.
    pub fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>> {
        backend!(self.token_use(token_id))
    }
}

#[cfg(test)]
mod web_tests {
    use super::*;

    #[test]
    fn a_token_use_reads_back_and_unused_tokens_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posttls.sqlite")).unwrap();
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
}
