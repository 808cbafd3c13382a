//! The PostTLS store in PostgreSQL, for a fleet: one worker per Postfix
//! instance and one web process share one database. Each process has a
//! role of its own (README, "PostTLS on PostgreSQL"): the worker's role
//! owns the tables, creates and migrates them (component `posttls` in
//! `mailtls_schema`); the web's role may read them and insert requests,
//! token uses, audit entries and sessions, but not change a message's,
//! recipient's or action's state, so that a web process taken over cannot
//! make the worker do what no request asked for.
//!
//! The SQL mirrors the SQLite backend statement for statement; the tables
//! are prefixed `posttls_` so that they can share a database with the
//! TLSRPT tables. Stored words are read as text and parsed: a word this
//! program does not know is an error ([`StoreError::Unknown`]), never a
//! default, as on SQLite.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashSet;

use mailtls_postgres::postgres::types::{FromSql, ToSql};
use mailtls_postgres::postgres::{Client, Row};
use mailtls_postgres::{Migrations, PgUrl};
use posttls_classify::TlsFailureKind;

use crate::{
    Access, ActionCopy, ActionKind, ActionRecipient, ActionRow, ActionState, AuditEvent, AuditRow,
    CopyRole, Counts, MessageRow, MessageState, NotificationKind, NotificationOutcome,
    NotificationRow, Phase, RecipientOutcome, RecipientRow, RecipientState, Result, SeenMessage,
    SeenRecipient, SendResult, StoreError, TokenUseRow, UnknownValue,
};

/// The `posttls` tables, version by version. Only the worker applies
/// them; the web process checks the version.
const MIGRATIONS: Migrations = Migrations {
    component: "posttls",
    steps: &[
        (
            1,
            "CREATE TABLE posttls_messages (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             instance text NOT NULL, queue_id text NOT NULL, arrival_time bigint NOT NULL,
             sender text NOT NULL, subject text, own_sender boolean NOT NULL, state text NOT NULL,
             first_seen bigint NOT NULL, last_seen bigint NOT NULL,
             UNIQUE (instance, queue_id, arrival_time));
         CREATE INDEX posttls_messages_state ON posttls_messages (state, last_seen);
         CREATE TABLE posttls_recipients (
             message_id bigint NOT NULL REFERENCES posttls_messages (id),
             address text NOT NULL, delay_reason text, tls_kind text,
             mandatory boolean NOT NULL, state text NOT NULL,
             PRIMARY KEY (message_id, address));
         CREATE TABLE posttls_notifications (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             message_id bigint NOT NULL REFERENCES posttls_messages (id),
             kind text NOT NULL, sent_to text NOT NULL, at bigint NOT NULL, outcome text NOT NULL);
         CREATE INDEX posttls_notifications_message ON posttls_notifications (message_id);
         CREATE TABLE posttls_tokens_used (
             token_id text PRIMARY KEY, message_id bigint NOT NULL, action text NOT NULL,
             at bigint NOT NULL, ip text);
         -- The web role inserts requests without naming the worker's
         -- columns (it has no grant for them): a request starts queued.
         CREATE TABLE posttls_actions (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             message_id bigint NOT NULL REFERENCES posttls_messages (id),
             action text NOT NULL, requested_by text NOT NULL, ip text, requested_at bigint NOT NULL,
             state text NOT NULL DEFAULT 'queued', phase text,
             not_before bigint NOT NULL DEFAULT 0, attempts bigint NOT NULL DEFAULT 0,
             result text, new_queue_id text, finished_at bigint);
         CREATE INDEX posttls_actions_state ON posttls_actions (state, id);
         CREATE TABLE posttls_action_recipients (
             action_id bigint NOT NULL REFERENCES posttls_actions (id),
             address text NOT NULL, approved boolean NOT NULL, outcome text, why text,
             PRIMARY KEY (action_id, address));
         CREATE TABLE posttls_action_copies (
             action_id bigint NOT NULL REFERENCES posttls_actions (id),
             role text NOT NULL, marker text NOT NULL, recipients text NOT NULL, queue_id text,
             PRIMARY KEY (action_id, role));
         CREATE TABLE posttls_audit (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             at bigint NOT NULL, actor text NOT NULL, ip text, message_id bigint,
             event text NOT NULL, detail text NOT NULL);
         CREATE INDEX posttls_audit_at ON posttls_audit (at);
         CREATE TABLE posttls_admins (
             name text PRIMARY KEY, password_hash text NOT NULL, created bigint NOT NULL);
         CREATE TABLE posttls_sessions (
             id text PRIMARY KEY, admin text NOT NULL, created bigint NOT NULL, expires bigint NOT NULL);
         CREATE TABLE posttls_mandatory_domains (
             domain text PRIMARY KEY, added_by text NOT NULL, added_at bigint NOT NULL);",
        ),
        // Whether the sender asked for REQUIRETLS (Postfix 3.11).
        (
            2,
            "ALTER TABLE posttls_messages ADD COLUMN requiretls boolean NOT NULL DEFAULT false;",
        ),
    ],
};

/// What the web process says when the tables are missing or old.
const CREATOR: &str = "start `posttls worker` (or run `posttls adduser`) with its role";

const MESSAGE_COLUMNS: &str =
    "id, instance, queue_id, arrival_time, sender, subject, own_sender, state, \
     first_seen, last_seen, requiretls";

const ACTION_COLUMNS: &str = "id, message_id, action, requested_by, ip, requested_at, state, \
     phase, result, new_queue_id, finished_at";

/// One connection to the database.
pub(crate) struct PgDb {
    url: PgUrl,
    /// `None` only while the store is dropped (see [`Drop`]).
    client: RefCell<Option<Client>>,
    /// Whether a transaction is open: PostgreSQL only warns about a
    /// BEGIN inside one (and the inner COMMIT would end the outer), so a
    /// nested transaction is refused here, as SQLite refuses it.
    in_transaction: Cell<bool>,
}

impl Drop for PgDb {
    /// The client closes its connection by blocking on a runtime of its
    /// own, which panics when the store is dropped inside another runtime
    /// (the web process's): it is closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            std::thread::scope(|scope| {
                scope.spawn(move || drop(client));
            });
        }
    }
}

/// An open transaction of a [`PgDb`]: rolled back when dropped without
/// [`commit`](Transaction::commit), and when the COMMIT itself fails.
#[must_use = "a transaction rolls back unless committed"]
pub(crate) struct Transaction<'a> {
    db: &'a PgDb,
    open: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        let committed = self.db.batch("COMMIT");
        if committed.is_err() {
            self.rollback();
        }
        self.db.in_transaction.set(false);
        committed
    }

    fn rollback(&self) {
        if let Err(err) = self.db.batch("ROLLBACK") {
            log::error!("database: rollback failed: {err}");
        }
        self.db.in_transaction.set(false);
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            self.rollback();
        }
    }
}

/// A stored word as its type; an unknown word is an error.
fn word<T: std::str::FromStr<Err = UnknownValue>>(url: &PgUrl, text: &str) -> Result<T> {
    text.parse().map_err(|source| StoreError::Unknown {
        url: url.shown().to_string(),
        source,
    })
}

impl PgDb {
    /// Connects; the worker creates or migrates the tables, the web
    /// process checks that they are at this program's version.
    pub(crate) fn connect(url: &PgUrl, access: Access) -> Result<PgDb> {
        let mut client = url.connect()?;
        match access {
            Access::Worker => MIGRATIONS.apply(&mut client, url)?,
            Access::Web => MIGRATIONS.check(&mut client, url, CREATOR)?,
        }
        Ok(PgDb {
            url: url.clone(),
            client: RefCell::new(Some(client)),
            in_transaction: Cell::new(false),
        })
    }

    /// The connection; a new one when the server closed the old one (it
    /// restarted) and no transaction was open on it.
    fn client(&self) -> Result<RefMut<'_, Client>> {
        let mut client = RefMut::map(self.client.borrow_mut(), |client| {
            client
                .as_mut()
                .expect("the client is there until the store is dropped")
        });
        if client.is_closed() && !self.in_transaction.get() {
            log::warn!(
                "PostgreSQL {}: connection lost; connecting again",
                self.url.shown()
            );
            *client = self.url.connect()?;
        }
        Ok(client)
    }

    fn error(&self, source: mailtls_postgres::postgres::Error) -> StoreError {
        StoreError::Postgres(self.url.error(source))
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.client()?.batch_execute(sql).map_err(|e| self.error(e))
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.client()?
            .execute(sql, params)
            .map_err(|e| self.error(e))
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.client()?.query(sql, params).map_err(|e| self.error(e))
    }

    fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        self.client()?
            .query_opt(sql, params)
            .map_err(|e| self.error(e))
    }

    /// Column `index` of `row`; a type that does not match is an error.
    fn get<'r, T: FromSql<'r>>(&self, row: &'r Row, index: usize) -> Result<T> {
        row.try_get(index).map_err(|e| self.error(e))
    }

    /// A column holding a stored word, as its type.
    fn word<T: std::str::FromStr<Err = UnknownValue>>(&self, row: &Row, index: usize) -> Result<T> {
        word(&self.url, self.get::<&str>(row, index)?)
    }

    /// A nullable column holding a stored word.
    fn word_opt<T: std::str::FromStr<Err = UnknownValue>>(
        &self,
        row: &Row,
        index: usize,
    ) -> Result<Option<T>> {
        self.get::<Option<&str>>(row, index)?
            .map(|text| word(&self.url, text))
            .transpose()
    }

    fn message_row(&self, row: &Row) -> Result<MessageRow> {
        Ok(MessageRow {
            id: self.get(row, 0)?,
            instance: self.get(row, 1)?,
            queue_id: self.get(row, 2)?,
            arrival_time: self.get(row, 3)?,
            sender: self.get(row, 4)?,
            subject: self.get(row, 5)?,
            own_sender: self.get(row, 6)?,
            state: self.word(row, 7)?,
            first_seen: self.get(row, 8)?,
            last_seen: self.get(row, 9)?,
            requiretls: self.get(row, 10)?,
        })
    }

    fn action_row(&self, row: &Row) -> Result<ActionRow> {
        Ok(ActionRow {
            id: self.get(row, 0)?,
            message_id: self.get(row, 1)?,
            action: self.word(row, 2)?,
            requested_by: self.get(row, 3)?,
            ip: self.get(row, 4)?,
            requested_at: self.get(row, 5)?,
            state: self.word(row, 6)?,
            phase: self.word_opt(row, 7)?,
            result: self.get(row, 8)?,
            new_queue_id: self.get(row, 9)?,
            finished_at: self.get(row, 10)?,
        })
    }

    pub(crate) fn transaction(&self) -> Result<Transaction<'_>> {
        if self.in_transaction.get() {
            return Err(StoreError::NestedTransaction);
        }
        self.batch("BEGIN")?;
        self.in_transaction.set(true);
        Ok(Transaction {
            db: self,
            open: true,
        })
    }

    pub(crate) fn saw_message(&self, seen: &SeenMessage<'_>, now: i64) -> Result<(i64, bool)> {
        let existing = self.query_opt(
            "SELECT id, state FROM posttls_messages WHERE instance = $1 AND queue_id = $2 AND arrival_time = $3",
            &[&seen.instance, &seen.queue_id, &seen.arrival_time],
        )?;
        match existing {
            Some(row) => {
                let id: i64 = self.get(&row, 0)?;
                let state: MessageState = self.word(&row, 1)?;
                let keep = matches!(
                    state,
                    MessageState::Released | MessageState::Deleted | MessageState::Returned
                );
                let state = if keep { state } else { seen.state };
                self.execute(
                    "UPDATE posttls_messages SET last_seen = $1, state = $2, subject = coalesce($3, subject) WHERE id = $4",
                    &[&now, &state.as_str(), &seen.subject, &id],
                )?;
                Ok((id, false))
            }
            None => {
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
                let row = row.expect("INSERT ... RETURNING gives a row");
                Ok((self.get(&row, 0)?, true))
            }
        }
    }

    pub(crate) fn set_pending_recipients(
        &self,
        message_id: i64,
        recipients: &[SeenRecipient],
    ) -> Result<()> {
        self.execute(
            "UPDATE posttls_recipients SET state = 'gone' WHERE message_id = $1 AND state = 'pending'",
            &[&message_id],
        )?;
        for r in recipients {
            self.execute(
                "INSERT INTO posttls_recipients (message_id, address, delay_reason, tls_kind, mandatory, state)
                 VALUES ($1, $2, $3, $4, $5, 'pending')
                 ON CONFLICT (message_id, address) DO UPDATE SET delay_reason = excluded.delay_reason,
                     tls_kind = excluded.tls_kind, mandatory = excluded.mandatory,
                     state = CASE WHEN posttls_recipients.state IN ('pending', 'gone') THEN 'pending'
                                  ELSE posttls_recipients.state END",
                &[
                    &message_id,
                    &r.address,
                    &r.delay_reason,
                    &r.tls_kind.map(TlsFailureKind::short_name),
                    &r.mandatory,
                ],
            )?;
        }
        Ok(())
    }

    pub(crate) fn mark_missing_gone(
        &self,
        instance: &str,
        queued: &HashSet<(String, i64)>,
    ) -> Result<Vec<MessageRow>> {
        let rows = self.query(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE instance = $1 AND state = 'deferred'"),
            &[&instance],
        )?;
        let mut gone = Vec::new();
        for row in &rows {
            let mut message = self.message_row(row)?;
            if queued.contains(&(message.queue_id.clone(), message.arrival_time)) {
                continue;
            }
            self.execute(
                "UPDATE posttls_messages SET state = 'gone' WHERE id = $1",
                &[&message.id],
            )?;
            self.execute(
                "UPDATE posttls_recipients SET state = 'gone' WHERE message_id = $1 AND state = 'pending'",
                &[&message.id],
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
        self.query_opt(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE instance = $1 AND queue_id = $2 AND arrival_time = $3"),
            &[&instance, &queue_id, &arrival_time],
        )?
        .map(|row| self.message_row(&row))
        .transpose()
    }

    pub(crate) fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        self.query_opt(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE id = $1"),
            &[&id],
        )?
        .map(|row| self.message_row(&row))
        .transpose()
    }

    pub(crate) fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        self.query(
            &format!("SELECT {MESSAGE_COLUMNS} FROM posttls_messages WHERE state = $1 ORDER BY arrival_time DESC, id DESC LIMIT $2"),
            &[&state.as_str(), &limit],
        )?
        .iter()
        .map(|row| self.message_row(row))
        .collect()
    }

    pub(crate) fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        self.query(
            "SELECT address, delay_reason, tls_kind, mandatory, state FROM posttls_recipients
             WHERE message_id = $1 ORDER BY address COLLATE \"C\"",
            &[&message_id],
        )?
        .iter()
        .map(|r| {
            let tls_kind = match self.get::<Option<&str>>(r, 2)? {
                None => None,
                Some(name) => Some(TlsFailureKind::from_short_name(name).ok_or_else(|| {
                    StoreError::Unknown {
                        url: self.url.shown().to_string(),
                        source: UnknownValue {
                            what: "TLS failure kind",
                            value: name.to_string(),
                        },
                    }
                })?),
            };
            Ok(RecipientRow {
                address: self.get(r, 0)?,
                delay_reason: self.get(r, 1)?,
                tls_kind,
                mandatory: self.get(r, 3)?,
                state: self.word(r, 4)?,
            })
        })
        .collect()
    }

    pub(crate) fn set_recipient_state(
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

    pub(crate) fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        self.execute(
            "UPDATE posttls_messages SET state = $1 WHERE id = $2",
            &[&state.as_str(), &message_id],
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
        self.execute(
            "INSERT INTO posttls_notifications (message_id, kind, sent_to, at, outcome) VALUES ($1, $2, $3, $4, $5)",
            &[&message_id, &kind.as_str(), &sent_to, &now, &outcome.word()],
        )?;
        Ok(())
    }

    pub(crate) fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
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

    pub(crate) fn use_token(
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

    pub(crate) fn audit(
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

    pub(crate) fn prune_audit(&self, before: i64) -> Result<usize> {
        let deleted = self.execute("DELETE FROM posttls_audit WHERE at < $1", &[&before])?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    pub(crate) fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
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

    pub(crate) fn mandatory_domains(&self) -> Result<Vec<String>> {
        self.query(
            "SELECT domain FROM posttls_mandatory_domains ORDER BY domain COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(|r| self.get(r, 0))
        .collect()
    }

    pub(crate) fn add_mandatory_domain(
        &self,
        domain: &str,
        added_by: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(self.execute(
            "INSERT INTO posttls_mandatory_domains (domain, added_by, added_at) VALUES ($1, $2, $3)
             ON CONFLICT (domain) DO NOTHING",
            &[&domain, &added_by, &now],
        )? == 1)
    }

    pub(crate) fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        Ok(self.execute(
            "DELETE FROM posttls_mandatory_domains WHERE domain = $1",
            &[&domain],
        )? == 1)
    }

    pub(crate) fn set_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        let tx = self.transaction()?;
        self.execute(
            "INSERT INTO posttls_admins (name, password_hash, created) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            &[&name, &password_hash, &now],
        )?;
        self.execute("DELETE FROM posttls_sessions WHERE admin = $1", &[&name])?;
        tx.commit()
    }

    pub(crate) fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        self.query_opt(
            "SELECT password_hash FROM posttls_admins WHERE name = $1",
            &[&name],
        )?
        .map(|r| self.get(&r, 0))
        .transpose()
    }

    pub(crate) fn create_session(
        &self,
        id: &str,
        admin: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_sessions (id, admin, created, expires) VALUES ($1, $2, $3, $4)",
            &[&id, &admin, &now, &expires],
        )?;
        Ok(())
    }

    pub(crate) fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        self.query_opt(
            "SELECT admin FROM posttls_sessions WHERE id = $1 AND expires > $2",
            &[&id, &now],
        )?
        .map(|r| self.get(&r, 0))
        .transpose()
    }

    pub(crate) fn end_session(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM posttls_sessions WHERE id = $1", &[&id])?;
        Ok(())
    }

    pub(crate) fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>> {
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

    /// Inserts only the columns the web role may insert: `state` and the
    /// journal columns take their defaults (queued, nothing done yet).
    pub(crate) fn request_action(
        &self,
        message_id: i64,
        action: ActionKind,
        requested_by: &str,
        ip: Option<&str>,
        recipients: &[String],
        now: i64,
    ) -> Result<i64> {
        let row = self.query_opt(
            "INSERT INTO posttls_actions (message_id, action, requested_by, ip, requested_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&message_id, &action.as_str(), &requested_by, &ip, &now],
        )?;
        let id: i64 = self.get(&row.expect("INSERT ... RETURNING gives a row"), 0)?;
        for address in recipients {
            self.execute(
                "INSERT INTO posttls_action_recipients (action_id, address, approved) VALUES ($1, $2, true)
                 ON CONFLICT (action_id, address) DO NOTHING",
                &[&id, address],
            )?;
        }
        Ok(id)
    }

    /// Locks the row it takes (`SKIP LOCKED`) and takes it only while it
    /// is still queued, so that two workers never take one action.
    pub(crate) fn take_action(&self, instance: &str, now: i64) -> Result<Option<ActionRow>> {
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

    pub(crate) fn running_actions(&self, instance: &str) -> Result<Vec<ActionRow>> {
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

    pub(crate) fn attempts(&self, id: i64) -> Result<i64> {
        let row = self.query_opt("SELECT attempts FROM posttls_actions WHERE id = $1", &[&id])?;
        match row {
            Some(row) => self.get(&row, 0),
            None => Err(StoreError::Postgres(mailtls_postgres::PgError::Refused {
                url: self.url.shown().to_string(),
                what: format!("no action {id}"),
            })),
        }
    }

    pub(crate) fn set_phase(&self, id: i64, phase: Phase) -> Result<()> {
        self.execute(
            "UPDATE posttls_actions SET phase = $1 WHERE id = $2 AND state = $3",
            &[&phase.as_str(), &id, &ActionState::Running.as_str()],
        )?;
        Ok(())
    }

    pub(crate) fn postpone_action(&self, id: i64, not_before: i64, why: &str) -> Result<()> {
        let tx = self.transaction()?;
        self.execute(
            "UPDATE posttls_actions SET state = $1, phase = NULL, not_before = $2, result = $3 WHERE id = $4",
            &[&ActionState::Queued.as_str(), &not_before, &why, &id],
        )?;
        self.execute(
            "DELETE FROM posttls_action_copies WHERE action_id = $1",
            &[&id],
        )?;
        self.execute(
            "DELETE FROM posttls_action_recipients WHERE action_id = $1 AND NOT approved",
            &[&id],
        )?;
        self.execute(
            "UPDATE posttls_action_recipients SET outcome = NULL, why = NULL WHERE action_id = $1",
            &[&id],
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
        self.execute(
            "UPDATE posttls_actions SET state = $1, result = $2, new_queue_id = $3, finished_at = $4 WHERE id = $5",
            &[&state.as_str(), &result, &new_queue_id, &now, &id],
        )?;
        if state == ActionState::Failed {
            // The link's use and its request are recorded in one transaction
            // with the same time (see the web's confirm handler).
            self.execute(
                "DELETE FROM posttls_tokens_used t USING posttls_actions a
                  WHERE a.message_id = t.message_id AND a.action = t.action
                    AND a.requested_at = t.at AND a.id = $1",
                &[&id],
            )?;
        }
        tx.commit()
    }

    pub(crate) fn action(&self, id: i64) -> Result<Option<ActionRow>> {
        self.query_opt(
            &format!("SELECT {ACTION_COLUMNS} FROM posttls_actions WHERE id = $1"),
            &[&id],
        )?
        .map(|row| self.action_row(&row))
        .transpose()
    }

    pub(crate) fn actions_of(&self, message_id: i64) -> Result<Vec<ActionRow>> {
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

    pub(crate) fn action_recipients(&self, action_id: i64) -> Result<Vec<ActionRecipient>> {
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

    pub(crate) fn set_recipient_outcome(
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

    pub(crate) fn add_copy(&self, action_id: i64, copy: &ActionCopy) -> Result<()> {
        self.execute(
            "INSERT INTO posttls_action_copies (action_id, role, marker, recipients, queue_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (action_id, role) DO UPDATE SET marker = excluded.marker,
                 recipients = excluded.recipients, queue_id = excluded.queue_id",
            &[
                &action_id,
                &copy.role.as_str(),
                &copy.marker,
                &copy.recipients.join("\n"),
                &copy.queue_id,
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
        self.execute(
            "UPDATE posttls_action_copies SET queue_id = $1 WHERE action_id = $2 AND role = $3",
            &[&queue_id, &action_id, &role.as_str()],
        )?;
        Ok(())
    }

    pub(crate) fn copies(&self, action_id: i64) -> Result<Vec<ActionCopy>> {
        self.query(
            "SELECT role, marker, recipients, queue_id FROM posttls_action_copies
             WHERE action_id = $1 ORDER BY role COLLATE \"C\"",
            &[&action_id],
        )?
        .iter()
        .map(|r| {
            let recipients: &str = self.get(r, 2)?;
            Ok(ActionCopy {
                role: self.word(r, 0)?,
                marker: self.get(r, 1)?,
                recipients: recipients
                    .split('\n')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
                queue_id: self.get(r, 3)?,
            })
        })
        .collect()
    }

    pub(crate) fn counts(&self) -> Result<Counts> {
        let mut counts = Counts::default();
        for r in self.query(
            "SELECT state, count(*) FROM posttls_messages GROUP BY state",
            &[],
        )? {
            let n: i64 = self.get(&r, 1)?;
            counts.messages.insert(self.word(&r, 0)?, n as u64);
        }
        for r in self.query(
            "SELECT kind, outcome = 'sent', count(*) FROM posttls_notifications GROUP BY 1, 2",
            &[],
        )? {
            let kind: NotificationKind = self.word(&r, 0)?;
            let result = if self.get(&r, 1)? {
                SendResult::Sent
            } else {
                SendResult::Failed
            };
            let n: i64 = self.get(&r, 2)?;
            counts.notifications.insert((kind, result), n as u64);
        }
        for r in self.query(
            "SELECT action, state, count(*) FROM posttls_actions GROUP BY 1, 2",
            &[],
        )? {
            let kind: ActionKind = self.word(&r, 0)?;
            let state: ActionState = self.word(&r, 1)?;
            let n: i64 = self.get(&r, 2)?;
            counts.actions.insert((kind, state), n as u64);
        }
        Ok(counts)
    }
}

/// What `mailtls check` says of a PostTLS database on PostgreSQL and of
/// the role the configuration reaches it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInspection {
    /// The role connected as.
    pub role: String,
    /// The `posttls` tables' schema version (0: not made yet).
    pub version: i32,
    /// This program's schema version.
    pub known: i32,
    /// The role owns the tables: the workers' role.
    pub owner: bool,
    /// What the web pages need that the role may not do, e.g.
    /// `INSERT on posttls_audit`.
    pub web_lacks: Vec<String>,
    /// What only the worker should do that the role may do too.
    pub worker_only: Vec<String>,
}

/// A privilege on a table, or on one of its columns.
type Privilege = (&'static str, Option<&'static str>, &'static str);

/// What the web role needs: the README's grants.
const WEB_NEEDS: &[Privilege] = &[
    ("mailtls_schema", None, "SELECT"),
    ("posttls_messages", None, "SELECT"),
    ("posttls_recipients", None, "SELECT"),
    ("posttls_notifications", None, "SELECT"),
    ("posttls_tokens_used", None, "SELECT"),
    ("posttls_actions", None, "SELECT"),
    ("posttls_action_recipients", None, "SELECT"),
    ("posttls_action_copies", None, "SELECT"),
    ("posttls_audit", None, "SELECT"),
    ("posttls_admins", None, "SELECT"),
    ("posttls_sessions", None, "SELECT"),
    ("posttls_mandatory_domains", None, "SELECT"),
    ("posttls_tokens_used", None, "INSERT"),
    ("posttls_audit", None, "INSERT"),
    ("posttls_sessions", None, "INSERT"),
    ("posttls_mandatory_domains", None, "INSERT"),
    ("posttls_actions", Some("message_id"), "INSERT"),
    ("posttls_actions", Some("action"), "INSERT"),
    ("posttls_actions", Some("requested_by"), "INSERT"),
    ("posttls_actions", Some("ip"), "INSERT"),
    ("posttls_actions", Some("requested_at"), "INSERT"),
    ("posttls_action_recipients", Some("action_id"), "INSERT"),
    ("posttls_action_recipients", Some("address"), "INSERT"),
    ("posttls_action_recipients", Some("approved"), "INSERT"),
    ("posttls_sessions", None, "DELETE"),
    ("posttls_mandatory_domains", None, "DELETE"),
];

/// What only the worker may do: with any of these a web process taken
/// over could change a state, forge a result or erase its traces.
const WORKER_ONLY: &[Privilege] = &[
    ("posttls_messages", None, "INSERT"),
    ("posttls_messages", None, "UPDATE"),
    ("posttls_messages", None, "DELETE"),
    ("posttls_recipients", None, "INSERT"),
    ("posttls_recipients", None, "UPDATE"),
    ("posttls_notifications", None, "INSERT"),
    ("posttls_notifications", None, "UPDATE"),
    ("posttls_actions", None, "UPDATE"),
    ("posttls_actions", None, "DELETE"),
    ("posttls_actions", Some("state"), "INSERT"),
    ("posttls_actions", Some("phase"), "INSERT"),
    ("posttls_actions", Some("result"), "INSERT"),
    ("posttls_actions", Some("new_queue_id"), "INSERT"),
    ("posttls_action_recipients", None, "UPDATE"),
    ("posttls_action_recipients", Some("outcome"), "INSERT"),
    ("posttls_action_copies", None, "INSERT"),
    ("posttls_action_copies", None, "UPDATE"),
    ("posttls_tokens_used", None, "UPDATE"),
    ("posttls_tokens_used", None, "DELETE"),
    ("posttls_audit", None, "UPDATE"),
    ("posttls_audit", None, "DELETE"),
    ("posttls_admins", None, "INSERT"),
    ("posttls_admins", None, "UPDATE"),
    ("mailtls_schema", None, "UPDATE"),
];

/// Connects to `url` and reads what [`PgInspection`] says, changing
/// nothing.
pub fn inspect(url: &PgUrl) -> std::result::Result<PgInspection, mailtls_postgres::PgError> {
    let mut client = url.connect()?;
    let err = |e| url.error(e);
    let row = client
        .query_one(
            "SELECT current_user::text, to_regclass('mailtls_schema') IS NOT NULL,
                    coalesce((SELECT tableowner = current_user FROM pg_tables
                               WHERE schemaname = current_schema() AND tablename = 'posttls_messages'), false)",
            &[],
        )
        .map_err(err)?;
    let (role, schema_table, owner): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let version: i32 = if schema_table {
        client
            .query_opt(
                "SELECT version FROM mailtls_schema WHERE component = $1",
                &[&MIGRATIONS.component],
            )
            .map_err(err)?
            .map_or(0, |row| row.get(0))
    } else {
        0
    };
    let mut inspection = PgInspection {
        role,
        version,
        known: MIGRATIONS.newest(),
        owner,
        web_lacks: Vec::new(),
        worker_only: Vec::new(),
    };
    if version == 0 {
        return Ok(inspection);
    }
    let mut may = |&(table, column, privilege): &Privilege| -> std::result::Result<bool, _> {
        let row = match column {
            None => client.query_one("SELECT has_table_privilege($1, $2)", &[&table, &privilege]),
            Some(column) => client.query_one(
                "SELECT has_column_privilege($1, $2, $3)",
                &[&table, &column, &privilege],
            ),
        };
        row.map(|row| row.get::<_, bool>(0)).map_err(err)
    };
    let named = |&(table, column, privilege): &Privilege| match column {
        None => format!("{privilege} on {table}"),
        Some(column) => format!("{privilege} ({column}) on {table}"),
    };
    for needed in WEB_NEEDS {
        if !may(needed)? {
            inspection.web_lacks.push(named(needed));
        }
    }
    for forbidden in WORKER_ONLY {
        if may(forbidden)? {
            inspection.worker_only.push(named(forbidden));
        }
    }
    Ok(inspection)
}
