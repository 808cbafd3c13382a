//! The backend's statements in PostgreSQL's dialect.

use posttls_classify::TlsFailureKind;

use super::{PgDb, ACTION_COLUMNS, MESSAGE_COLUMNS};
use crate::backend::Backend;
use crate::journal::{recipients_column, recipients_of_column};
use crate::states::tls_kind_named;
use crate::{
    ActionCopy, ActionKind, ActionRecipient, ActionRow, ActionState, AuditEvent, AuditRow,
    CopyRole, MessageRow, MessageState, NotificationKind, NotificationOutcome, NotificationRow,
    Phase, RecipientOutcome, RecipientRow, RecipientState, Result, SeenMessage, SeenRecipient,
    StoreError, TokenUseRow,
};

/// Why an `INSERT ... RETURNING` always has a row to read.
const RETURNED: &str = "INSERT ... RETURNING gives a row";

impl Backend for PgDb {
    fn begin(&self) -> Result<()> {
        if self.in_transaction.get() {
            return Err(StoreError::NestedTransaction);
        }
        self.batch("BEGIN")?;
        self.in_transaction.set(true);
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        self.batch("COMMIT")?;
        self.in_transaction.set(false);
        Ok(())
    }

    fn rollback(&self) {
        if let Err(err) = self.batch("ROLLBACK") {
            log::error!("database: rollback failed: {err}");
        }
        self.in_transaction.set(false);
    }

    fn find_message(
        &self,
        instance: &str,
        queue_id: &str,
        arrival_time: i64,
    ) -> Result<Option<MessageRow>> {
        self.query_opt(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE instance = $1 AND queue_id = $2 AND arrival_time = $3"),
            &[&instance, &queue_id, &arrival_time],
        )?
        .map(|row| self.message_row(&row))
        .transpose()
    }

    fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        self.query_opt(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE id = $1"),
            &[&id],
        )?
        .map(|row| self.message_row(&row))
        .transpose()
    }

    fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        self.query(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE state = $1 ORDER BY arrival_time DESC, id DESC LIMIT $2"),
            &[&state.as_str(), &limit],
        )?
        .iter()
        .map(|row| self.message_row(row))
        .collect()
    }

    fn instance_messages_in(&self, instance: &str, state: MessageState) -> Result<Vec<MessageRow>> {
        self.query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE instance = $1 AND state = $2"
            ),
            &[&instance, &state.as_str()],
        )?
        .iter()
        .map(|row| self.message_row(row))
        .collect()
    }

    fn insert_message(&self, seen: &SeenMessage<'_>, now: i64) -> Result<i64> {
        let row = self.query_opt(
            "INSERT INTO posttls_messages (instance, queue_id, arrival_time, sender, subject, own_sender, state, first_seen, last_seen, requiretls)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) RETURNING id",
            &[
                &seen.instance,
                &seen.queue_id,
                &seen.arrival_time,
                &seen.sender,
                &seen.subject,
                &seen.own_sender,
                &seen.state.as_str(),
                &now,
                &seen.requiretls,
            ],
        )?;
        self.get(&row.expect(RETURNED), 0)
    }

    fn message_seen_again(
        &self,
        id: i64,
        state: MessageState,
        subject: Option<&str>,
        now: i64,
    ) -> Result<()> {
        self.execute(
            "UPDATE posttls_messages SET last_seen = $1, state = $2, subject = coalesce($3, subject) WHERE id = $4",
            &[&now, &state.as_str(), &subject, &id],
        )?;
        Ok(())
    }

    fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        self.execute(
            "UPDATE posttls_messages SET state = $1 WHERE id = $2",
            &[&state.as_str(), &message_id],
        )?;
        Ok(())
    }

    fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        self.query(
            "SELECT address, delay_reason, tls_kind, mandatory, state FROM posttls_recipients
             WHERE message_id = $1 ORDER BY address COLLATE \"C\"",
            &[&message_id],
        )?
        .iter()
        .map(|r| {
            Ok(RecipientRow {
                address: self.get(r, 0)?,
                delay_reason: self.get(r, 1)?,
                tls_kind: self
                    .get::<Option<&str>>(r, 2)?
                    .map(tls_kind_named)
                    .transpose()
                    .map_err(|unknown| self.unknown(unknown))?,
                mandatory: self.get(r, 3)?,
                state: self.word(r, 4)?,
            })
        })
        .collect()
    }

    fn move_recipients(
        &self,
        message_id: i64,
        from: RecipientState,
        to: RecipientState,
    ) -> Result<()> {
        self.execute(
            "UPDATE posttls_recipients SET state = $1 WHERE message_id = $2 AND state = $3",
            &[&to.as_str(), &message_id, &from.as_str()],
        )?;
        Ok(())
    }

    fn list_pending_recipient(&self, message_id: i64, recipient: &SeenRecipient) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_recipients (message_id, address, delay_reason, tls_kind, mandatory, state)
             VALUES ($1, $2, $3, $4, $5, 'pending')
             ON CONFLICT (message_id, address) DO UPDATE SET delay_reason = excluded.delay_reason,
                 tls_kind = excluded.tls_kind, mandatory = excluded.mandatory,
                 state = CASE WHEN posttls_recipients.state IN ('pending', 'gone') THEN 'pending'
                              ELSE posttls_recipients.state END",
            &[
                &message_id,
                &recipient.address,
                &recipient.delay_reason,
                &recipient.tls_kind.map(TlsFailureKind::short_name),
                &recipient.mandatory,
            ],
        )?;
        Ok(())
    }

    fn set_recipient_state(
        &self,
        message_id: i64,
        address: &str,
        state: RecipientState,
    ) -> Result<()> {
        self.execute(
            "UPDATE posttls_recipients SET state = $1 WHERE message_id = $2 AND address = $3",
            &[&state.as_str(), &message_id, &address],
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
        self.execute(
            "INSERT INTO posttls_notifications (message_id, kind, sent_to, at, outcome) VALUES ($1, $2, $3, $4, $5)",
            &[&message_id, &kind.as_str(), &sent_to, &now, &outcome.word()],
        )?;
        Ok(())
    }

    fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
        self.query(
            "SELECT kind, sent_to, at, outcome FROM posttls_notifications WHERE message_id = $1 ORDER BY id",
            &[&message_id],
        )?
        .iter()
        .map(|r| {
            Ok(NotificationRow {
                kind: self.word(r, 0)?,
                sent_to: self.get(r, 1)?,
                at: self.get(r, 2)?,
                outcome: self.word(r, 3)?,
            })
        })
        .collect()
    }

    fn use_token(
        &self,
        token_id: &str,
        message_id: i64,
        action: &str,
        ip: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let inserted = self.execute(
            "INSERT INTO posttls_tokens_used (token_id, message_id, action, at, ip) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (token_id) DO NOTHING",
            &[&token_id, &message_id, &action, &now, &ip],
        )?;
        Ok(inserted == 1)
    }

    fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>> {
        self.query_opt(
            "SELECT token_id, message_id, action, at, ip FROM posttls_tokens_used WHERE token_id = $1",
            &[&token_id],
        )?
        .map(|r| {
            Ok(TokenUseRow {
                token_id: self.get(&r, 0)?,
                message_id: self.get(&r, 1)?,
                action: self.get(&r, 2)?,
                at: self.get(&r, 3)?,
                ip: self.get(&r, 4)?,
            })
        })
        .transpose()
    }

    fn forget_requesting_token(&self, action_id: i64) -> Result<()> {
        self.execute(
            "DELETE FROM posttls_tokens_used t USING posttls_actions a
              WHERE a.message_id = t.message_id AND a.action = t.action
                AND a.requested_at = t.at AND a.id = $1",
            &[&action_id],
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
        self.execute(
            "INSERT INTO posttls_audit (at, actor, ip, message_id, event, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&now, &actor, &ip, &message_id, &event.word(), &detail],
        )?;
        Ok(())
    }

    fn prune_audit(&self, before: i64) -> Result<usize> {
        let deleted = self.execute("DELETE FROM posttls_audit WHERE at < $1", &[&before])?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        self.query(
            "SELECT at, actor, ip, message_id, event, detail FROM posttls_audit ORDER BY id DESC LIMIT $1",
            &[&limit],
        )?
        .iter()
        .map(|r| {
            Ok(AuditRow {
                at: self.get(r, 0)?,
                actor: self.get(r, 1)?,
                ip: self.get(r, 2)?,
                message_id: self.get(r, 3)?,
                event: self.word(r, 4)?,
                detail: self.get(r, 5)?,
            })
        })
        .collect()
    }

    fn mandatory_domains(&self) -> Result<Vec<String>> {
        self.query(
            "SELECT domain FROM posttls_mandatory_domains ORDER BY domain COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(|r| self.get(r, 0))
        .collect()
    }

    fn add_mandatory_domain(&self, domain: &str, added_by: &str, now: i64) -> Result<bool> {
        Ok(self.execute(
            "INSERT INTO posttls_mandatory_domains (domain, added_by, added_at) VALUES ($1, $2, $3)
             ON CONFLICT (domain) DO NOTHING",
            &[&domain, &added_by, &now],
        )? == 1)
    }

    fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        Ok(self.execute(
            "DELETE FROM posttls_mandatory_domains WHERE domain = $1",
            &[&domain],
        )? == 1)
    }

    fn upsert_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_admins (name, password_hash, created) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            &[&name, &password_hash, &now],
        )?;
        Ok(())
    }

    fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        self.query_opt(
            "SELECT password_hash FROM posttls_admins WHERE name = $1",
            &[&name],
        )?
        .map(|r| self.get(&r, 0))
        .transpose()
    }

    fn create_session(&self, id: &str, admin: &str, now: i64, expires: i64) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_sessions (id, admin, created, expires) VALUES ($1, $2, $3, $4)",
            &[&id, &admin, &now, &expires],
        )?;
        Ok(())
    }

    fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        self.query_opt(
            "SELECT admin FROM posttls_sessions WHERE id = $1 AND expires > $2",
            &[&id, &now],
        )?
        .map(|r| self.get(&r, 0))
        .transpose()
    }

    fn end_session(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM posttls_sessions WHERE id = $1", &[&id])?;
        Ok(())
    }

    fn end_sessions_of(&self, admin: &str) -> Result<()> {
        self.execute("DELETE FROM posttls_sessions WHERE admin = $1", &[&admin])?;
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
        let row = self.query_opt(
            "INSERT INTO posttls_actions (message_id, action, requested_by, ip, requested_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&message_id, &action.as_str(), &requested_by, &ip, &now],
        )?;
        self.get(&row.expect(RETURNED), 0)
    }

    fn approve_recipient(&self, action_id: i64, address: &str) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_action_recipients (action_id, address, approved) VALUES ($1, $2, true)
             ON CONFLICT (action_id, address) DO NOTHING",
            &[&action_id, &address],
        )?;
        Ok(())
    }

    /// Locks the row it takes (`SKIP LOCKED`) and takes it only while it
    /// is still queued, so that two workers never take one action.
    fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>> {
        self.query_opt(
            &format!(
                "UPDATE posttls_actions SET state = $1, phase = NULL, attempts = attempts + 1
                  WHERE state = $2 AND id = (
                      SELECT a.id FROM posttls_actions a JOIN posttls_messages m ON m.id = a.message_id
                       WHERE a.state = $2 AND a.not_before <= $3 AND m.instance = $4
                       ORDER BY a.id LIMIT 1 FOR UPDATE OF a SKIP LOCKED)
                  RETURNING {ACTION_COLUMNS}"
            ),
            &[
                &ActionState::Running.as_str(),
                &ActionState::Queued.as_str(),
                &now,
                &instance,
            ],
        )?
        .map(|row| self.action_row(&row))
        .transpose()
    }

    fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>> {
        self.query(
            &format!(
                "SELECT {ACTION_COLUMNS} FROM posttls_actions WHERE state = $1 AND message_id IN
                     (SELECT id FROM posttls_messages WHERE instance = $2) ORDER BY id"
            ),
            &[&ActionState::Running.as_str(), &instance],
        )?
        .iter()
        .map(|row| self.action_row(row))
        .collect()
    }

    fn attempts(&self, id: i64) -> Result<i64> {
        let row = self.query_opt("SELECT attempts FROM posttls_actions WHERE id = $1", &[&id])?;
        match row {
            Some(row) => self.get(&row, 0),
            None => Err(StoreError::Postgres(mailtls_postgres::PgError::Refused {
                url: self.url.shown().to_string(),
                what: format!("no action {id}"),
            })),
        }
    }

    fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        self.execute(
            "UPDATE posttls_actions SET phase = $1 WHERE id = $2 AND state = $3",
            &[&phase.as_str(), &id, &ActionState::Running.as_str()],
        )?;
        Ok(())
    }

    fn requeue_action(&self, id: i64, not_before: i64, why: &str) -> Result<()> {
        self.execute(
            "UPDATE posttls_actions SET state = $1, phase = NULL, not_before = $2, result = $3 WHERE id = $4",
            &[&ActionState::Queued.as_str(), &not_before, &why, &id],
        )?;
        Ok(())
    }

    fn forget_copies(&self, action_id: i64) -> Result<()> {
        self.execute(
            "DELETE FROM posttls_action_copies WHERE action_id = $1",
            &[&action_id],
        )?;
        Ok(())
    }

    fn forget_decisions(&self, action_id: i64) -> Result<()> {
        self.execute(
            "DELETE FROM posttls_action_recipients WHERE action_id = $1 AND NOT approved",
            &[&action_id],
        )?;
        self.execute(
            "UPDATE posttls_action_recipients SET outcome = NULL, why = NULL WHERE action_id = $1",
            &[&action_id],
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
        self.execute(
            "UPDATE posttls_actions SET state = $1, result = $2, new_queue_id = $3, finished_at = $4 WHERE id = $5",
            &[&state.as_str(), &result, &new_queue_id, &now, &id],
        )?;
        Ok(())
    }

    fn action(&self, id: i64) -> Result<Option<ActionRow>> {
        self.query_opt(
            &format!("SELECT {ACTION_COLUMNS} FROM posttls_actions WHERE id = $1"),
            &[&id],
        )?
        .map(|row| self.action_row(&row))
        .transpose()
    }

    fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>> {
        self.query(
            &format!(
                "SELECT {ACTION_COLUMNS} FROM posttls_actions WHERE message_id = $1 ORDER BY id"
            ),
            &[&message_id],
        )?
        .iter()
        .map(|row| self.action_row(row))
        .collect()
    }

    fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>> {
        self.query(
            "SELECT address, approved, outcome, why FROM posttls_action_recipients
             WHERE action_id = $1 ORDER BY address COLLATE \"C\"",
            &[&action_id],
        )?
        .iter()
        .map(|r| {
            Ok(ActionRecipient {
                address: self.get(r, 0)?,
                approved: self.get(r, 1)?,
                outcome: self.word_opt(r, 2)?,
                why: self.get(r, 3)?,
            })
        })
        .collect()
    }

    fn set_recipient_outcome(
        &self,
        action_id: i64,
        address: &str,
        outcome: RecipientOutcome,
        why: Option<&str>,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_action_recipients (action_id, address, approved, outcome, why) VALUES ($1, $2, false, $3, $4)
             ON CONFLICT (action_id, address) DO UPDATE SET outcome = excluded.outcome, why = excluded.why",
            &[&action_id, &address, &outcome.as_str(), &why],
        )?;
        Ok(())
    }

    fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_action_copies (action_id, role, marker, recipients, queue_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (action_id, role) DO UPDATE SET marker = excluded.marker,
                 recipients = excluded.recipients, queue_id = excluded.queue_id",
            &[
                &action_id,
                &copy.role.as_str(),
                &copy.marker,
                &recipients_column(&copy.recipients),
                &copy.queue_id,
            ],
        )?;
        Ok(())
    }

    fn set_copy_queue_id(&self, action_id: i64, role: CopyRole, queue_id: &str) -> Result<()> {
        self.execute(
            "UPDATE posttls_action_copies SET queue_id = $1 WHERE action_id = $2 AND role = $3",
            &[&queue_id, &action_id, &role.as_str()],
        )?;
        Ok(())
    }

    fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>> {
        self.query(
            "SELECT role, marker, recipients, queue_id FROM posttls_action_copies
             WHERE action_id = $1 ORDER BY role COLLATE \"C\"",
            &[&action_id],
        )?
        .iter()
        .map(|r| {
            Ok(ActionCopy {
                role: self.word(r, 0)?,
                marker: self.get(r, 1)?,
                recipients: recipients_of_column(self.get(r, 2)?),
                queue_id: self.get(r, 3)?,
            })
        })
        .collect()
    }

    fn message_counts(&self) -> Result<Vec<(MessageState, i64)>> {
        self.query(
            "SELECT state, count(*) FROM posttls_messages GROUP BY state",
            &[],
        )?
        .iter()
        .map(|r| Ok((self.word(r, 0)?, self.get(r, 1)?)))
        .collect()
    }

    fn notification_counts(&self) -> Result<Vec<(NotificationKind, bool, i64)>> {
        self.query(
            "SELECT kind, outcome = 'sent', count(*) FROM posttls_notifications GROUP BY 1, 2",
            &[],
        )?
        .iter()
        .map(|r| Ok((self.word(r, 0)?, self.get(r, 1)?, self.get(r, 2)?)))
        .collect()
    }

    fn action_counts(&self) -> Result<Vec<(ActionKind, ActionState, i64)>> {
        self.query(
            "SELECT action, state, count(*) FROM posttls_actions GROUP BY 1, 2",
            &[],
        )?
        .iter()
        .map(|r| Ok((self.word(r, 0)?, self.word(r, 1)?, self.get(r, 2)?)))
        .collect()
    }
}
