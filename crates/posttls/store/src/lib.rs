//! PostTLS state in one SQLite file, shared by the privileged worker (which
//! scans the queue, sends notifications and carries out actions) and the
//! unprivileged web process (which shows state and records requests).
//!
//! The database runs in WAL mode so that the web process reads while the
//! worker writes. Times are Unix seconds (UTC). A message is identified by
//! instance, queue id AND arrival time: Postfix reuses queue ids (unless
//! `enable_long_queue_ids = yes`), so an id alone could point a later
//! request at another sender's message.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

mod counts;
mod journal;
mod states;

pub use counts::{Counts, SendResult};
pub use journal::{ActionCopy, ActionRecipient};
pub use states::{
    ActionKind, ActionState, AuditEvent, CopyRole, MessageState, NotificationKind,
    NotificationOutcome, Phase, RecipientOutcome, RecipientState, UnknownValue,
};

use posttls_classify::TlsFailureKind;

/// A stored TLS failure class: NULL, or a short name this program knows.
fn tls_kind_column(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<Option<TlsFailureKind>> {
    let Some(name) = row.get::<_, Option<String>>(index)? else {
        return Ok(None);
    };
    TlsFailureKind::from_short_name(&name)
        .map(Some)
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(UnknownValue {
                    what: "TLS failure kind",
                    value: name,
                }),
            )
        })
}

/// The schema version in `meta`: the number of the last migration.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64 + 1;

const SCHEMA: &str = "
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
];

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the database file {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("not a PostTLS database (no meta table with a schema version)")]
    Foreign,
    #[error("PostTLS database schema version {0}; this program knows version {SCHEMA_VERSION}")]
    WrongVersion(i64),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What the scanner saw of one queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenMessage<'a> {
    pub instance: &'a str,
    pub queue_id: &'a str,
    pub arrival_time: i64,
    pub sender: &'a str,
    pub subject: Option<&'a str>,
    pub own_sender: bool,
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

pub struct Store {
    conn: Connection,
}

/// An open write transaction of a [`Store`]: rolled back when dropped
/// without [`commit`](Transaction::commit), and rolled back when the
/// COMMIT itself fails, so that no error path leaves the write lock held.
#[must_use = "a transaction rolls back unless committed"]
pub struct Transaction<'a> {
    conn: &'a Connection,
    open: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        if let Err(err) = self.conn.execute_batch("COMMIT") {
            self.rollback();
            return Err(err.into());
        }
        Ok(())
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            if let Err(err) = self.conn.execute_batch("ROLLBACK") {
                log::error!("database: rollback failed: {err}");
            }
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            self.rollback();
        }
    }
}

fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: row.get(0)?,
        instance: row.get(1)?,
        queue_id: row.get(2)?,
        arrival_time: row.get(3)?,
        sender: row.get(4)?,
        subject: row.get(5)?,
        own_sender: row.get(6)?,
        state: row.get(7)?,
        first_seen: row.get(8)?,
        last_seen: row.get(9)?,
    })
}

const MESSAGE_COLUMNS: &str =
    "id, instance, queue_id, arrival_time, sender, subject, own_sender, state, first_seen, last_seen";

impl Store {
    /// Opens (creating when new, migrating when older) the database at
    /// `path`.
    ///
    /// The connection is defensive: the schema cannot be changed behind
    /// SQLite's back (`SQLITE_DBCONFIG_DEFENSIVE`) and functions in the
    /// schema (views, triggers) are not trusted (`trusted_schema = OFF`),
    /// so a database file written by the unprivileged web process cannot
    /// make the privileged worker run anything but this program's SQL.
    pub fn open(path: &Path) -> Result<Store> {
        // Whoever creates the database, the web pages must write it and the
        // worker too (SQLite gives its -wal and -shm files, when root
        // creates them, to the database file's owner).
        mailtls_common::ownership::create_owned_like_directory(path, 0o600).map_err(|source| {
            StoreError::Create {
                path: path.to_owned(),
                source,
            }
        })?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.pragma_update(None, "trusted_schema", false)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // In WAL mode NORMAL loses nothing when a process dies, only the
        // last transactions on power loss, and saves a disk sync per write.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    /// Creates the schema of a new database and brings an older one to
    /// [`SCHEMA_VERSION`], one migration per transaction.
    fn migrate(&self) -> Result<()> {
        let tables: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table'",
            [],
            |r| r.get(0),
        )?;
        if tables == 0 {
            let tx = self.transaction()?;
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
            let tx = self.transaction()?;
            let migration = MIGRATIONS[usize::try_from(version - 1).expect("positive")];
            self.conn.execute_batch(migration)?;
            self.conn.execute(
                "UPDATE meta SET value=? WHERE key='schema_version'",
                [(version + 1).to_string()],
            )?;
            tx.commit()?;
        }
    }

    /// Begins a write transaction; it rolls back unless committed, also
    /// when the caller returns early with an error or panics.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Transaction {
            conn: &self.conn,
            open: true,
        })
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
        let existing: Option<(i64, MessageState)> = self
            .conn
            .query_row(
                "SELECT id, state FROM messages WHERE instance=? AND queue_id=? AND arrival_time=?",
                params![seen.instance, seen.queue_id, seen.arrival_time],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match existing {
            Some((id, state)) => {
                let keep = matches!(
                    state,
                    MessageState::Released | MessageState::Deleted | MessageState::Returned
                );
                let state = if keep { state } else { seen.state };
                self.conn.execute(
                    "UPDATE messages SET last_seen=?, state=?, subject=coalesce(?, subject) WHERE id=?",
                    params![now, state, seen.subject, id],
                )?;
                Ok((id, false))
            }
            None => {
                self.conn.execute(
                    "INSERT INTO messages(instance, queue_id, arrival_time, sender, subject, own_sender, state, first_seen, last_seen) \
                     VALUES(?,?,?,?,?,?,?,?,?)",
                    params![
                        seen.instance,
                        seen.queue_id,
                        seen.arrival_time,
                        seen.sender,
                        seen.subject,
                        seen.own_sender,
                        seen.state,
                        now,
                        now
                    ],
                )?;
                Ok((self.conn.last_insert_rowid(), true))
            }
        }
    }

    /// Replaces the pending recipients of a message with what the queue
    /// shows now; recipients no longer listed are `gone` (delivered or
    /// bounced), unless an action already settled them.
    pub fn set_pending_recipients(
        &self,
        message_id: i64,
        recipients: &[SeenRecipient],
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE recipients SET state='gone' WHERE message_id=? AND state='pending'",
            [message_id],
        )?;
        let mut upsert = self.conn.prepare_cached(
            "INSERT INTO recipients(message_id, address, delay_reason, tls_kind, mandatory, state) VALUES(?,?,?,?,?,'pending') \
             ON CONFLICT(message_id, address) DO UPDATE SET delay_reason=excluded.delay_reason, tls_kind=excluded.tls_kind, \
             mandatory=excluded.mandatory, state=CASE WHEN state IN ('pending', 'gone') THEN 'pending' ELSE state END",
        )?;
        for r in recipients {
            upsert.execute(params![
                message_id,
                r.address,
                r.delay_reason,
                r.tls_kind.map(TlsFailureKind::short_name),
                r.mandatory
            ])?;
        }
        Ok(())
    }

    /// Messages of `instance` in `Deferred` state that are not in the
    /// queue any more (`queued`: queue id and arrival time of every message
    /// the scan listed) become `Gone` and are returned.
    pub fn mark_missing_gone(
        &self,
        instance: &str,
        queued: &std::collections::HashSet<(String, i64)>,
    ) -> Result<Vec<MessageRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE instance=? AND state='deferred'"
        ))?;
        let rows = stmt.query_map(params![instance], message_row)?;
        let mut gone = Vec::new();
        for row in rows {
            let mut message = row?;
            if queued.contains(&(message.queue_id.clone(), message.arrival_time)) {
                continue;
            }
            self.conn
                .execute("UPDATE messages SET state='gone' WHERE id=?", [message.id])?;
            self.conn.execute(
                "UPDATE recipients SET state='gone' WHERE message_id=? AND state='pending'",
                [message.id],
            )?;
            message.state = MessageState::Gone;
            gone.push(message);
        }
        Ok(gone)
    }

    /// The message with this instance, queue id and arrival time.
    pub fn find_message(
        &self,
        instance: &str,
        queue_id: &str,
        arrival_time: i64,
    ) -> Result<Option<MessageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE instance=? AND queue_id=? AND arrival_time=?"),
                params![instance, queue_id, arrival_time],
                message_row,
            )
            .optional()?)
    }

    pub fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id=?"),
                [id],
                message_row,
            )
            .optional()?)
    }

    /// Messages in a state, newest first, at most `limit`.
    pub fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE state=? ORDER BY arrival_time DESC, id DESC LIMIT ?"
        ))?;
        let rows = stmt.query_map(params![state, limit], message_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT address, delay_reason, tls_kind, mandatory, state FROM recipients WHERE message_id=? ORDER BY address",
        )?;
        let rows = stmt.query_map([message_id], |r| {
            Ok(RecipientRow {
                address: r.get(0)?,
                delay_reason: r.get(1)?,
                tls_kind: tls_kind_column(r, 2)?,
                mandatory: r.get(3)?,
                state: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_recipient_state(
        &self,
        message_id: i64,
        address: &str,
        state: RecipientState,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE recipients SET state=? WHERE message_id=? AND address=?",
            params![state, message_id, address],
        )?;
        Ok(())
    }

    pub fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET state=? WHERE id=?",
            params![state, message_id],
        )?;
        Ok(())
    }

    pub fn record_notification(
        &self,
        message_id: i64,
        kind: NotificationKind,
        sent_to: &str,
        outcome: &NotificationOutcome,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO notifications(message_id, kind, sent_to, at, outcome) VALUES(?,?,?,?,?)",
            params![message_id, kind, sent_to, now, outcome],
        )?;
        Ok(())
    }

    /// Notifications of a message, oldest first.
    pub fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, sent_to, at, outcome FROM notifications WHERE message_id=? ORDER BY id",
        )?;
        let rows = stmt.query_map([message_id], |r| {
            Ok(NotificationRow {
                kind: r.get(0)?,
                sent_to: r.get(1)?,
                at: r.get(2)?,
                outcome: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        let inserted = self.conn.execute(
            "INSERT OR IGNORE INTO tokens_used(token_id, message_id, action, at, ip) VALUES(?,?,?,?,?)",
            params![token_id, message_id, action, now, ip],
        )?;
        Ok(inserted == 1)
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
        self.conn.execute(
            "INSERT INTO audit(at, actor, ip, message_id, event, detail) VALUES(?,?,?,?,?,?)",
            params![now, actor, ip, message_id, event, detail],
        )?;
        Ok(())
    }

    /// Deletes the audit entries older than `before`; returns how many.
    pub fn prune_audit(&self, before: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM audit WHERE at < ?", [before])?)
    }

    /// The newest audit entries, at most `limit`.
    pub fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT at, actor, ip, message_id, event, detail FROM audit ORDER BY id DESC LIMIT ?",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(AuditRow {
                at: r.get(0)?,
                actor: r.get(1)?,
                ip: r.get(2)?,
                message_id: r.get(3)?,
                event: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Mandatory-TLS domains managed in the web UI (the configured ones are
    /// added by the caller).
    pub fn mandatory_domains(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT domain FROM mandatory_domains ORDER BY domain")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn add_mandatory_domain(&self, domain: &str, added_by: &str, now: i64) -> Result<bool> {
        Ok(self.conn.execute(
            "INSERT OR IGNORE INTO mandatory_domains(domain, added_by, added_at) VALUES(?,?,?)",
            params![domain, added_by, now],
        )? == 1)
    }

    pub fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM mandatory_domains WHERE domain=?", [domain])?
            == 1)
    }

    /// Creates an admin or sets a new password; a new password ends the
    /// admin's sessions (whoever knew the old one is logged out).
    pub fn set_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        let tx = self.transaction()?;
        self.conn.execute(
            "INSERT INTO admins(name, password_hash, created) VALUES(?,?,?) \
             ON CONFLICT(name) DO UPDATE SET password_hash=excluded.password_hash",
            params![name, password_hash, now],
        )?;
        self.conn
            .execute("DELETE FROM sessions WHERE admin=?", [name])?;
        tx.commit()
    }

    pub fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT password_hash FROM admins WHERE name=?",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn create_session(&self, id: &str, admin: &str, now: i64, expires: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sessions(id, admin, created, expires) VALUES(?,?,?,?)",
            params![id, admin, now, expires],
        )?;
        Ok(())
    }

    /// The admin of a live session.
    pub fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT admin FROM sessions WHERE id=? AND expires>?",
                params![id, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn end_session(&self, id: &str) -> Result<()> {
        self.conn.execute("DELETE FROM sessions WHERE id=?", [id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let taken = store.take_action(11).unwrap().unwrap();
        assert_eq!((taken.id, taken.state), (action, ActionState::Running));
        assert_eq!(store.take_action(11).unwrap(), None);
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
        let version: String = store
            .conn
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
        Ok(self
            .conn
            .query_row(
                "SELECT token_id, message_id, action, at, ip FROM tokens_used WHERE token_id=?",
                [token_id],
                |r| {
                    Ok(TokenUseRow {
                        token_id: r.get(0)?,
                        message_id: r.get(1)?,
                        action: r.get(2)?,
                        at: r.get(3)?,
                        ip: r.get(4)?,
                    })
                },
            )
            .optional()?)
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
