//! PostTLS state, shared by the privileged worker (which scans the queue,
//! sends notifications and carries out actions) and the unprivileged web
//! process (which shows state and records requests): in one SQLite file
//! on the MTA (module `sqlite`) or, for a fleet of MTAs with one web process,
//! in PostgreSQL (module `postgres`). Callers use one [`Store`] whatever the
//! backend: it decides PostTLS's rules once, over a `Backend` trait that
//! each backend's module implements with its schema and its SQL only.
//!
//! Times are Unix seconds (UTC). A message is identified by instance,
//! queue id AND arrival time: Postfix reuses queue ids (unless
//! `enable_long_queue_ids = yes`), so an id alone could point a later
//! request at another sender's message.

use std::path::{Path, PathBuf};

use posttls_classify::TlsFailureKind;

mod backend;
mod counts;
mod journal;
mod postgres;
mod sqlite;
mod states;

use backend::Backend;

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

/// A recorded use of a single-use token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUseRow {
    pub token_id: String,
    pub message_id: i64,
    pub action: String,
    pub at: i64,
    pub ip: Option<String>,
}

/// The PostTLS database, on either backend: PostTLS's rules, decided here
/// once, over a `Backend` that only stores and reads.
pub struct Store {
    backend: Box<dyn Backend>,
}

/// An open write transaction of a [`Store`]: rolled back when dropped
/// without [`commit`](Transaction::commit), and rolled back when the
/// COMMIT itself fails, so that no error path leaves a transaction (and on
/// SQLite the write lock) open.
#[must_use = "a transaction rolls back unless committed"]
pub struct Transaction<'a> {
    backend: &'a dyn Backend,
    open: bool,
}

impl<'a> Transaction<'a> {
    pub(crate) fn begin(backend: &'a dyn Backend) -> Result<Transaction<'a>> {
        backend.begin()?;
        Ok(Transaction {
            backend,
            open: true,
        })
    }

    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        let committed = self.backend.commit();
        if committed.is_err() {
            self.backend.rollback();
        }
        committed
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            self.backend.rollback();
        }
    }
}

/// Whether a message seen again in the queue keeps its state: an action
/// settled it (the queue shows the message until Postfix has acted).
fn settled_by_an_action(state: MessageState) -> bool {
    matches!(
        state,
        MessageState::Released | MessageState::Deleted | MessageState::Returned
    )
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
            backend: Box::new(sqlite::SqliteDb::open(path)?),
        })
    }

    /// Opens `database` for `access`: a SQLite file as [`Store::open`]
    /// does; on PostgreSQL the worker creates or migrates the `posttls`
    /// tables (recorded in `mailtls_schema`), the web process only checks
    /// their version.
    pub fn connect(database: &Database, access: Access) -> Result<Store> {
        match database {
            Database::Sqlite(path) => Store::open(path),
            Database::Postgres(url) => Ok(Store {
                backend: Box::new(postgres::PgDb::connect(url, access)?),
            }),
        }
    }

    /// Begins a write transaction; it rolls back unless committed, also
    /// when the caller returns early with an error or panics.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        Transaction::begin(self.backend.as_ref())
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
        let known = self
            .backend
            .find_message(seen.instance, seen.queue_id, seen.arrival_time)?;
        let Some(message) = known else {
            return Ok((self.backend.insert_message(seen, now)?, true));
        };
        let state = if settled_by_an_action(message.state) {
            message.state
        } else {
            seen.state
        };
        self.backend
            .message_seen_again(message.id, state, seen.subject, now)?;
        Ok((message.id, false))
    }

    /// Replaces the pending recipients of a message with what the queue
    /// shows now; recipients no longer listed are `gone` (delivered or
    /// bounced), unless an action already settled them.
    pub fn set_pending_recipients(
        &self,
        message_id: i64,
        recipients: &[SeenRecipient],
    ) -> Result<()> {
        self.backend
            .move_recipients(message_id, RecipientState::Pending, RecipientState::Gone)?;
        for recipient in recipients {
            self.backend.list_pending_recipient(message_id, recipient)?;
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
        let mut gone = Vec::new();
        for mut message in self
            .backend
            .instance_messages_in(instance, MessageState::Deferred)?
        {
            if queued.contains(&(message.queue_id.clone(), message.arrival_time)) {
                continue;
            }
            self.backend
                .set_message_state(message.id, MessageState::Gone)?;
            self.backend.move_recipients(
                message.id,
                RecipientState::Pending,
                RecipientState::Gone,
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
        self.backend.find_message(instance, queue_id, arrival_time)
    }

    pub fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        self.backend.message(id)
    }

    /// Messages in a state, newest first, at most `limit`.
    pub fn messages_in(&self, state: MessageState, limit: i64) -> Result<Vec<MessageRow>> {
        self.backend.messages_in(state, limit)
    }

    pub fn recipients(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        self.backend.recipients(message_id)
    }

    pub fn set_recipient_state(
        &self,
        message_id: i64,
        address: &str,
        state: RecipientState,
    ) -> Result<()> {
        self.backend.set_recipient_state(message_id, address, state)
    }

    pub fn set_message_state(&self, message_id: i64, state: MessageState) -> Result<()> {
        self.backend.set_message_state(message_id, state)
    }

    pub fn record_notification(
        &self,
        message_id: i64,
        kind: NotificationKind,
        sent_to: &str,
        outcome: &NotificationOutcome,
        now: i64,
    ) -> Result<()> {
        self.backend
            .record_notification(message_id, kind, sent_to, outcome, now)
    }

    /// Notifications of a message, oldest first.
    pub fn notifications(&self, message_id: i64) -> Result<Vec<NotificationRow>> {
        self.backend.notifications(message_id)
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
        self.backend
            .use_token(token_id, message_id, action, ip, now)
    }

    /// The use of `token_id` recorded by [`Store::use_token`], if any. Reads
    /// only: a GET of a confirmation page calls it, to say "this link was
    /// already used" without using it.
    pub fn token_use(&self, token_id: &str) -> Result<Option<TokenUseRow>> {
        self.backend.token_use(token_id)
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
        self.backend
            .audit(actor, ip, message_id, event, detail, now)
    }

    /// Deletes the audit entries older than `before`; returns how many.
    pub fn prune_audit(&self, before: i64) -> Result<usize> {
        self.backend.prune_audit(before)
    }

    /// The newest audit entries, at most `limit`.
    pub fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        self.backend.audit_log(limit)
    }

    /// Mandatory-TLS domains managed in the web UI (the configured ones are
    /// added by the caller).
    pub fn mandatory_domains(&self) -> Result<Vec<String>> {
        self.backend.mandatory_domains()
    }

    pub fn add_mandatory_domain(&self, domain: &str, added_by: &str, now: i64) -> Result<bool> {
        self.backend.add_mandatory_domain(domain, added_by, now)
    }

    pub fn remove_mandatory_domain(&self, domain: &str) -> Result<bool> {
        self.backend.remove_mandatory_domain(domain)
    }

    /// Creates an admin or sets a new password; a new password ends the
    /// admin's sessions (whoever knew the old one is logged out).
    pub fn set_admin(&self, name: &str, password_hash: &str, now: i64) -> Result<()> {
        let tx = self.transaction()?;
        self.backend.upsert_admin(name, password_hash, now)?;
        self.backend.end_sessions_of(name)?;
        tx.commit()
    }

    pub fn admin_password_hash(&self, name: &str) -> Result<Option<String>> {
        self.backend.admin_password_hash(name)
    }

    pub fn create_session(&self, id: &str, admin: &str, now: i64, expires: i64) -> Result<()> {
        self.backend.create_session(id, admin, now, expires)
    }

    /// The admin of a live session.
    pub fn session_admin(&self, id: &str, now: i64) -> Result<Option<String>> {
        self.backend.session_admin(id, now)
    }

    pub fn end_session(&self, id: &str) -> Result<()> {
        self.backend.end_session(id)
    }
}
