//! The PostTLS store in one SQLite file (one host: the worker and the web
//! process on the MTA). The database runs in WAL mode so that the web
//! process reads while the worker writes; every write transaction is
//! `BEGIN IMMEDIATE`, so writers queue for the lock instead of failing
//! half-way.

use std::path::Path;
use std::time::Duration;

use posttls_classify::TlsFailureKind;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{
    ActionCopy, ActionKind, ActionRecipient, ActionRow, ActionState, AuditEvent, AuditRow,
    CopyRole, Counts, MessageRow, MessageState, NotificationKind, NotificationOutcome,
    NotificationRow, Phase, RecipientOutcome, RecipientRow, RecipientState, Result, SeenMessage,
    SeenRecipient, SendResult, StoreError, TokenUseRow, UnknownValue,
};

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

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open write transaction of a SQLite store: rolled back when dropped
/// without [`commit`](Transaction::commit), and rolled back when the
/// COMMIT itself fails, so that no error path leaves the write lock held.
#[must_use = "a transaction rolls back unless committed"]
pub(crate) struct Transaction<'a> {
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
        requiretls: row.get(10)?,
    })
}

const MESSAGE_COLUMNS: &str =
    "id, instance, queue_id, arrival_time, sender, subject, own_sender, state, \
     first_seen, last_seen, requiretls";

const ACTION_COLUMNS: &str = "id, message_id, action, requested_by, ip, requested_at, state, \
     phase, result, new_queue_id, finished_at";

fn action_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRow> {
    Ok(ActionRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        action: r.get(2)?,
        requested_by: r.get(3)?,
        ip: r.get(4)?,
        requested_at: r.get(5)?,
        state: r.get(6)?,
        phase: r.get(7)?,
        result: r.get(8)?,
        new_queue_id: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

/// One connection to the SQLite file.
pub(crate) struct SqliteDb {
    pub(crate) conn: Connection,
}

impl SqliteDb {
    /// Opens (creating when new, migrating when older) the database at
    /// `path`.
    ///
    /// The connection is defensive: the schema cannot be changed behind
    /// SQLite's back (`SQLITE_DBCONFIG_DEFENSIVE`) and functions in the
    /// schema (views, triggers) are not trusted (`trusted_schema = OFF`),
    /// so a database file written by the unprivileged web process cannot
    /// make the privileged worker run anything but this program's SQL.
    pub(crate) fn open(path: &Path) -> Result<SqliteDb> {
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
        let store = SqliteDb { conn };
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
    pub(crate) fn transaction(&self) -> Result<Transaction<'_>> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Transaction {
            conn: &self.conn,
            open: true,
        })
    }

    pub(crate) fn saw_message(&self, seen: &SeenMessage<'_>, now: i64) -> Result<(i64, bool)> {
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
                    "INSERT INTO messages(instance, queue_id, arrival_time, sender, subject, own_sender, state, first_seen, last_seen, requiretls) \
                     VALUES(?,?,?,?,?,?,?,?,?,?)",
                    params![
                        seen.instance,
                        seen.queue_id,
                        seen.arrival_time,
                        seen.sender,
                        seen.subject,
                        seen.own_sender,
                        seen.state,
                        now,
                        now,
                        seen.requiretls
                    ],
                )?;
                Ok((self.conn.last_insert_rowid(), true))
            }
        }
    }

    pub(crate) fn set_pending_recipients(
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

    pub(crate) fn mark_missing_gone(
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

    pub(crate) fn find_message(
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

    pub(crate) fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id=?"),
                [id],
                message_row,
            )
            .optional()?)
    }

    pub(crate) fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE state=? ORDER BY arrival_time DESC, id DESC LIMIT ?"
        ))?;
        let rows = stmt.query_map(params![state, limit], message_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
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

    pub(crate) fn set_recipient_state(
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

    pub(crate) fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET state=? WHERE id=?",
            params![state, message_id],
        )?;
        Ok(())
    }

    pub(crate) fn record_notification(
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

    pub(crate) fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
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

    pub(crate) fn use_token(
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

    pub(crate) fn audit(
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

    pub(crate) fn prune_audit(&self, before: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM audit WHERE at < ?", [before])?)
    }

    pub(crate) fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
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

    pub(crate) fn mandatory_domains(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT domain FROM mandatory_domains ORDER BY domain")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn add_mandatory_domain(
        &self,
        domain: &str,
        added_by: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(self.conn.execute(
            "INSERT OR IGNORE INTO mandatory_domains(domain, added_by, added_at) VALUES(?,?,?)",
            params![domain, added_by, now],
        )? == 1)
    }

    pub(crate) fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM mandatory_domains WHERE domain=?", [domain])?
            == 1)
    }

    pub(crate) fn set_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
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

    pub(crate) fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT password_hash FROM admins WHERE name=?",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub(crate) fn create_session(
        &self,
        id: &str,
        admin: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sessions(id, admin, created, expires) VALUES(?,?,?,?)",
            params![id, admin, now, expires],
        )?;
        Ok(())
    }

    pub(crate) fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT admin FROM sessions WHERE id=? AND expires>?",
                params![id, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub(crate) fn end_session(&self, id: &str) -> Result<()> {
        self.conn.execute("DELETE FROM sessions WHERE id=?", [id])?;
        Ok(())
    }

    pub(crate) fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>> {
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

    pub(crate) fn request_action(
        &self,
        message_id: i64,
        action: ActionKind,
        requested_by: &str,
        ip: Option<&str>,
        recipients: &[String],
        now: i64,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO actions(message_id, action, requested_by, ip, requested_at, state) VALUES(?,?,?,?,?,?)",
            params![message_id, action, requested_by, ip, now, ActionState::Queued],
        )?;
        let id = self.conn.last_insert_rowid();
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO action_recipients(action_id, address, approved) VALUES(?,?,1)",
        )?;
        for address in recipients {
            insert.execute(params![id, address])?;
        }
        Ok(id)
    }

    pub(crate) fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "UPDATE actions SET state=?1, phase=NULL, attempts=attempts+1 WHERE id=(SELECT min(a.id) FROM actions a \
             JOIN messages m ON m.id = a.message_id WHERE a.state=?2 AND a.not_before<=?3 AND m.instance=?4) \
             RETURNING {ACTION_COLUMNS}"
        ))?;
        Ok(stmt
            .query_row(
                params![ActionState::Running, ActionState::Queued, now, instance],
                action_row,
            )
            .optional()?)
    }

    pub(crate) fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE state=? AND message_id IN \
             (SELECT id FROM messages WHERE instance=?) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![ActionState::Running, instance], action_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn attempts(&self, id: i64) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT attempts FROM actions WHERE id=?", [id], |r| {
                r.get(0)
            })?)
    }

    pub(crate) fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        self.conn.execute(
            "UPDATE actions SET phase=? WHERE id=? AND state=?",
            params![phase, id, ActionState::Running],
        )?;
        Ok(())
    }

    pub(crate) fn postpone_action(&self, id: i64, not_before: i64, why: &str) -> Result<()> {
        let tx = self.transaction()?;
        self.conn.execute(
            "UPDATE actions SET state=?, phase=NULL, not_before=?, result=? WHERE id=?",
            params![ActionState::Queued, not_before, why, id],
        )?;
        self.conn
            .execute("DELETE FROM action_copies WHERE action_id=?", [id])?;
        self.conn.execute(
            "DELETE FROM action_recipients WHERE action_id=? AND approved=0",
            [id],
        )?;
        self.conn.execute(
            "UPDATE action_recipients SET outcome=NULL, why=NULL WHERE action_id=?",
            [id],
        )?;
        tx.commit()
    }

    pub(crate) fn finish_action(
        &self,
        id: i64,
        state: ActionState,
        result: &str,
        new_queue_id: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let tx = self.transaction()?;
        self.conn.execute(
            "UPDATE actions SET state=?, result=?, new_queue_id=?, finished_at=? WHERE id=?",
            params![state, result, new_queue_id, now, id],
        )?;
        if state == ActionState::Failed {
            // The link's use and its request are recorded in one transaction
            // with the same time (see the web's confirm handler).
            self.conn.execute(
                "DELETE FROM tokens_used WHERE rowid IN (SELECT t.rowid FROM tokens_used t \
                 JOIN actions a ON a.message_id = t.message_id AND a.action = t.action \
                 AND a.requested_at = t.at WHERE a.id = ?)",
                [id],
            )?;
        }
        tx.commit()
    }

    pub(crate) fn action(&self, id: i64) -> Result<Option<ActionRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ACTION_COLUMNS} FROM actions WHERE id=?"),
                [id],
                action_row,
            )
            .optional()?)
    }

    pub(crate) fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE message_id=? ORDER BY id"
        ))?;
        let rows = stmt.query_map([message_id], action_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT address, approved, outcome, why FROM action_recipients WHERE action_id=? ORDER BY address",
        )?;
        let rows = stmt.query_map([action_id], |r| {
            Ok(ActionRecipient {
                address: r.get(0)?,
                approved: r.get(1)?,
                outcome: r.get(2)?,
                why: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn set_recipient_outcome(
        &self,
        action_id: i64,
        address: &str,
        outcome: RecipientOutcome,
        why: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO action_recipients(action_id, address, approved, outcome, why) VALUES(?,?,0,?,?) \
             ON CONFLICT(action_id, address) DO UPDATE SET outcome=excluded.outcome, why=excluded.why",
            params![action_id, address, outcome, why],
        )?;
        Ok(())
    }

    pub(crate) fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO action_copies(action_id, role, marker, recipients, queue_id) VALUES(?,?,?,?,?)",
            params![
                action_id,
                copy.role,
                copy.marker,
                copy.recipients.join("\n"),
                copy.queue_id
            ],
        )?;
        Ok(())
    }

    pub(crate) fn set_copy_queue_id(
        &self,
        action_id: i64,
        role: CopyRole,
        queue_id: &str,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE action_copies SET queue_id=? WHERE action_id=? AND role=?",
            params![queue_id, action_id, role],
        )?;
        Ok(())
    }

    pub(crate) fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT role, marker, recipients, queue_id FROM action_copies WHERE action_id=? ORDER BY role",
        )?;
        let rows = stmt.query_map([action_id], |r| {
            let recipients: String = r.get(2)?;
            Ok(ActionCopy {
                role: r.get(0)?,
                marker: r.get(1)?,
                recipients: recipients
                    .split('\n')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
                queue_id: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn counts(&self) -> Result<Counts> {
        let mut counts = Counts::default();
        let mut stmt = self
            .conn
            .prepare("SELECT state, count(*) FROM messages GROUP BY state")?;
        for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?)))? {
            let (state, n) = row?;
            counts.messages.insert(state, n as u64);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT kind, outcome = 'sent', count(*) FROM notifications GROUP BY 1, 2")?;
        for row in stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?))
        })? {
            let (kind, sent, n) = row?;
            let result = if sent {
                SendResult::Sent
            } else {
                SendResult::Failed
            };
            counts.notifications.insert((kind, result), n as u64);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT action, state, count(*) FROM actions GROUP BY 1, 2")?;
        for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?)))? {
            let (kind, state, n) = row?;
            counts.actions.insert((kind, state), n as u64);
        }
        Ok(counts)
    }
}
