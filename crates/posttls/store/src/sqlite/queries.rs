//! The backend's statements in SQLite's dialect.

use posttls_classify::TlsFailureKind;
use rusqlite::{params, OptionalExtension};

use super::{action_row, message_row, tls_kind_column, SqliteDb, ACTION_COLUMNS, MESSAGE_COLUMNS};
use crate::backend::Backend;
use crate::journal::{recipients_column, recipients_of_column};
use crate::{
    ActionCopy, ActionKind, ActionRecipient, ActionRow, ActionState, AuditEvent, AuditRow,
    CopyRole, MessageRow, MessageState, NotificationKind, NotificationOutcome, NotificationRow,
    Phase, RecipientOutcome, RecipientRow, RecipientState, Result, SeenMessage, SeenRecipient,
    TokenUseRow,
};

impl Backend for SqliteDb {
    fn begin(&self) -> Result<()> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn commit(&self) -> Result<()> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            if let Err(err) = self.conn.execute_batch("ROLLBACK") {
                log::error!("database: rollback failed: {err}");
            }
        }
    }

    fn find_message(
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

    fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id=?"),
                [id],
                message_row,
            )
            .optional()?)
    }

    fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE state=? ORDER BY arrival_time DESC, id DESC LIMIT ?"
        ))?;
        let rows = stmt.query_map(params![state, limit], message_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn instance_messages_in(&self, instance: &str, state: MessageState) -> Result<Vec<MessageRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE instance=? AND state=?"
        ))?;
        let rows = stmt.query_map(params![instance, state], message_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_message(&self, seen: &SeenMessage<'_>, now: i64) -> Result<i64> {
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
        Ok(self.conn.last_insert_rowid())
    }

    fn message_seen_again(
        &self,
        id: i64,
        state: MessageState,
        subject: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET last_seen=?, state=?, subject=coalesce(?, subject) WHERE id=?",
            params![now, state, subject, id],
        )?;
        Ok(())
    }

    fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET state=? WHERE id=?",
            params![state, message_id],
        )?;
        Ok(())
    }

    fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
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

    fn move_recipients(
        &self,
        message_id: i64,
        from: RecipientState,
        to: RecipientState,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE recipients SET state=? WHERE message_id=? AND state=?",
            params![to, message_id, from],
        )?;
        Ok(())
    }

    fn list_pending_recipient(&self, message_id: i64, recipient: &SeenRecipient) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO recipients(message_id, address, delay_reason, tls_kind, mandatory, state) VALUES(?,?,?,?,?,'pending') \
                 ON CONFLICT(message_id, address) DO UPDATE SET delay_reason=excluded.delay_reason, tls_kind=excluded.tls_kind, \
                 mandatory=excluded.mandatory, state=CASE WHEN state IN ('pending', 'gone') THEN 'pending' ELSE state END",
            )?
            .execute(params![
                message_id,
                recipient.address,
                recipient.delay_reason,
                recipient.tls_kind.map(TlsFailureKind::short_name),
                recipient.mandatory
            ])?;
        Ok(())
    }

    fn set_recipient_state(
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

    fn record_notification(
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

    fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
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

    fn use_token(
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

    fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>> {
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

    fn forget_requesting_token(&self, action_id: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM tokens_used WHERE rowid IN (SELECT t.rowid FROM tokens_used t \
             JOIN actions a ON a.message_id = t.message_id AND a.action = t.action \
             AND a.requested_at = t.at WHERE a.id = ?)",
            [action_id],
        )?;
        Ok(())
    }

    fn audit(
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

    fn prune_audit(&self, before: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM audit WHERE at < ?", [before])?)
    }

    fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
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

    fn mandatory_domains(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT domain FROM mandatory_domains ORDER BY domain")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn add_mandatory_domain(&self, domain: &str, added_by: &str, now: i64) -> Result<bool> {
        Ok(self.conn.execute(
            "INSERT OR IGNORE INTO mandatory_domains(domain, added_by, added_at) VALUES(?,?,?)",
            params![domain, added_by, now],
        )? == 1)
    }

    fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM mandatory_domains WHERE domain=?", [domain])?
            == 1)
    }

    fn upsert_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO admins(name, password_hash, created) VALUES(?,?,?) \
             ON CONFLICT(name) DO UPDATE SET password_hash=excluded.password_hash",
            params![name, password_hash, now],
        )?;
        Ok(())
    }

    fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT password_hash FROM admins WHERE name=?",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn create_session(&self, id: &str, admin: &str, now: i64, expires: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sessions(id, admin, created, expires) VALUES(?,?,?,?)",
            params![id, admin, now, expires],
        )?;
        Ok(())
    }

    fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT admin FROM sessions WHERE id=? AND expires>?",
                params![id, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn end_session(&self, id: &str) -> Result<()> {
        self.conn.execute("DELETE FROM sessions WHERE id=?", [id])?;
        Ok(())
    }

    fn end_sessions_of(&self, admin: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE admin=?", [admin])?;
        Ok(())
    }

    fn insert_action(
        &self,
        message_id: i64,
        action: ActionKind,
        requested_by: &str,
        ip: Option<&str>,
        now: i64,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO actions(message_id, action, requested_by, ip, requested_at, state) VALUES(?,?,?,?,?,?)",
            params![message_id, action, requested_by, ip, now, ActionState::Queued],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn approve_recipient(&self, action_id: i64, address: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO action_recipients(action_id, address, approved) VALUES(?,?,1)",
            )?
            .execute(params![action_id, address])?;
        Ok(())
    }

    fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>> {
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

    fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE state=? AND message_id IN \
             (SELECT id FROM messages WHERE instance=?) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![ActionState::Running, instance], action_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn attempts(&self, id: i64) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT attempts FROM actions WHERE id=?", [id], |r| {
                r.get(0)
            })?)
    }

    fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        self.conn.execute(
            "UPDATE actions SET phase=? WHERE id=? AND state=?",
            params![phase, id, ActionState::Running],
        )?;
        Ok(())
    }

    fn requeue_action(&self, id: i64, not_before: i64, why: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE actions SET state=?, phase=NULL, not_before=?, result=? WHERE id=?",
            params![ActionState::Queued, not_before, why, id],
        )?;
        Ok(())
    }

    fn forget_copies(&self, action_id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM action_copies WHERE action_id=?", [action_id])?;
        Ok(())
    }

    fn forget_decisions(&self, action_id: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM action_recipients WHERE action_id=? AND approved=0",
            [action_id],
        )?;
        self.conn.execute(
            "UPDATE action_recipients SET outcome=NULL, why=NULL WHERE action_id=?",
            [action_id],
        )?;
        Ok(())
    }

    fn set_action_finished(
        &self,
        id: i64,
        state: ActionState,
        result: &str,
        new_queue_id: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE actions SET state=?, result=?, new_queue_id=?, finished_at=? WHERE id=?",
            params![state, result, new_queue_id, now, id],
        )?;
        Ok(())
    }

    fn action(&self, id: i64) -> Result<Option<ActionRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ACTION_COLUMNS} FROM actions WHERE id=?"),
                [id],
                action_row,
            )
            .optional()?)
    }

    fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE message_id=? ORDER BY id"
        ))?;
        let rows = stmt.query_map([message_id], action_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>> {
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

    fn set_recipient_outcome(
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

    fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO action_copies(action_id, role, marker, recipients, queue_id) VALUES(?,?,?,?,?)",
            params![
                action_id,
                copy.role,
                copy.marker,
                recipients_column(&copy.recipients),
                copy.queue_id
            ],
        )?;
        Ok(())
    }

    fn set_copy_queue_id(&self, action_id: i64, role: CopyRole, queue_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE action_copies SET queue_id=? WHERE action_id=? AND role=?",
            params![queue_id, action_id, role],
        )?;
        Ok(())
    }

    fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT role, marker, recipients, queue_id FROM action_copies WHERE action_id=? ORDER BY role",
        )?;
        let rows = stmt.query_map([action_id], |r| {
            Ok(ActionCopy {
                role: r.get(0)?,
                marker: r.get(1)?,
                recipients: recipients_of_column(&r.get::<_, String>(2)?),
                queue_id: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn message_counts(&self) -> Result<Vec<(MessageState, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, count(*) FROM messages GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn notification_counts(&self) -> Result<Vec<(NotificationKind, bool, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, outcome = 'sent', count(*) FROM notifications GROUP BY 1, 2")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn action_counts(&self) -> Result<Vec<(ActionKind, ActionState, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT action, state, count(*) FROM actions GROUP BY 1, 2")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
