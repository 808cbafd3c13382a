//! The SQLite file's tables, version by version, and the migration that
//! brings an older file to this program's version.

use rusqlite::OptionalExtension;

use super::SqliteDb;
use crate::{Result, StoreError, Transaction};

/// The schema version in `meta`: the number of the last migration.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64 + 1;

/// The tables of version 1, which a new file gets before the migrations.
pub(crate) const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages(
    id INTEGER PRIMARY KEY,
    instance TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    arrival_time INTEGER NOT NULL,
    sender TEXT NOT NULL,
    subject TEXT,
    own_sender INTEGER NOT NULL,
    state TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    UNIQUE(instance, queue_id, arrival_time));
CREATE INDEX messages_state ON messages(state, last_seen);
CREATE TABLE recipients(
    message_id INTEGER NOT NULL REFERENCES messages(id),
    address TEXT NOT NULL,
    delay_reason TEXT,
    tls_kind TEXT,
    mandatory INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY(message_id, address));
CREATE TABLE notifications(
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    kind TEXT NOT NULL,
    sent_to TEXT NOT NULL,
    at INTEGER NOT NULL,
    outcome TEXT NOT NULL);
CREATE INDEX notifications_message ON notifications(message_id);
CREATE TABLE tokens_used(
    token_id TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    at INTEGER NOT NULL,
    ip TEXT);
CREATE TABLE actions(
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    action TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    ip TEXT,
    requested_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    new_queue_id TEXT,
    finished_at INTEGER);
CREATE INDEX actions_state ON actions(state, id);
CREATE TABLE audit(
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    ip TEXT,
    message_id INTEGER,
    event TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE TABLE admins(name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE sessions(id TEXT PRIMARY KEY, admin TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE mandatory_domains(domain TEXT PRIMARY KEY, added_by TEXT NOT NULL, added_at INTEGER NOT NULL);
";

/// The schema changes after version 1, in order: migration `i` takes a
/// database from version `i + 1` to `i + 2`. Each runs in the transaction
/// that also records the new version.
const MIGRATIONS: &[&str] = &[
    // 2: the journal of running actions, the recipients a request
    // approved, the copies a release made, and a time before which a
    // postponed action is not taken again.
    "
    ALTER TABLE actions ADD COLUMN phase TEXT;
    ALTER TABLE actions ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE actions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE action_recipients(
        action_id INTEGER NOT NULL REFERENCES actions(id),
        address TEXT NOT NULL,
        approved INTEGER NOT NULL,
        outcome TEXT,
        why TEXT,
        PRIMARY KEY(action_id, address));
    CREATE TABLE action_copies(
        action_id INTEGER NOT NULL REFERENCES actions(id),
        role TEXT NOT NULL,
        marker TEXT NOT NULL,
        recipients TEXT NOT NULL,
        queue_id TEXT,
        PRIMARY KEY(action_id, role));
    CREATE INDEX audit_at ON audit(at);
    -- Requests of version 1 recorded no recipients: they approved the
    -- releasable recipients known then.
    INSERT INTO action_recipients(action_id, address, approved)
        SELECT a.id, r.address, 1 FROM actions a JOIN recipients r ON r.message_id = a.message_id
        WHERE a.action = 'release' AND a.state IN ('queued', 'running')
        AND r.state = 'pending' AND r.tls_kind IS NOT NULL AND r.mandatory = 0;
    -- A version 1 worker that died may have left the original on hold.
    UPDATE actions SET phase = 'hold' WHERE state = 'running';
    ",
    // 3: whether the sender asked for REQUIRETLS (Postfix 3.11).
    "ALTER TABLE messages ADD COLUMN requiretls INTEGER NOT NULL DEFAULT 0;",
];

impl SqliteDb {
    /// Creates the schema of a new database and brings an older one to
    /// [`SCHEMA_VERSION`], one migration per transaction.
    pub(super) fn migrate(&self) -> Result<()> {
        let tables: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table'",
            [],
            |r| r.get(0),
        )?;
        if tables == 0 {
            let tx = Transaction::begin(self)?;
            self.conn.execute_batch(SCHEMA)?;
            self.conn
                .execute("INSERT INTO meta VALUES('schema_version', '1')", [])?;
            tx.commit()?;
        }
        loop {
            let version: Option<String> = self
                .conn
                .query_row(
                    "SELECT value FROM meta WHERE key='schema_version'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|_| StoreError::Foreign)?;
            let version = match version.as_deref().map(str::parse::<i64>) {
                Some(Ok(v)) if (1..=SCHEMA_VERSION).contains(&v) => v,
                Some(Ok(other)) => return Err(StoreError::WrongVersion(other)),
                _ => return Err(StoreError::Foreign),
            };
            if version == SCHEMA_VERSION {
                return Ok(());
            }
            let tx = Transaction::begin(self)?;
            let migration = MIGRATIONS[usize::try_from(version - 1).expect("positive")];
            self.conn.execute_batch(migration)?;
            self.conn.execute(
                "UPDATE meta SET value=? WHERE key='schema_version'",
                [(version + 1).to_string()],
            )?;
            tx.commit()?;
        }
    }
}
