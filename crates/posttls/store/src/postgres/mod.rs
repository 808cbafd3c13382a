//! The PostTLS store in PostgreSQL, for a fleet: one worker per Postfix
//! instance and one web process share one database. Each process has a
//! role of its own (docs/fleets.md, "PostTLS on PostgreSQL"): the worker's role
//! owns the tables, creates and migrates them ([`schema`]); the web's role
//! may read them and insert requests, token uses, audit entries and
//! sessions, but not change a message's, recipient's or action's state
//! ([`grants`]), so that a web process taken over cannot make the worker
//! do what no request asked for.
//!
//! The statements ([`queries`]) are the SQLite backend's in PostgreSQL's
//! dialect. Stored words are read as text and parsed: a word this program
//! does not know is an error ([`StoreError::Unknown`]), never a default,
//! as on SQLite.

use std::cell::{Cell, RefCell, RefMut};

use mailtls_postgres::postgres::types::{FromSql, ToSql};
use mailtls_postgres::postgres::{Client, Row};
use mailtls_postgres::PgUrl;

use crate::{Access, ActionRow, MessageRow, Result, StoreError, UnknownValue};

mod grants;
mod queries;
mod schema;

pub use grants::{inspect, PgInspection};

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

/// A stored word as its type; an unknown word is an error.
fn word<T: std::str::FromStr<Err = UnknownValue>>(url: &PgUrl, text: &str) -> Result<T> {
    text.parse().map_err(|source| StoreError::Unknown {
        url: url.shown().to_string(),
        source,
    })
}

const MESSAGE_COLUMNS: &str =
    "id, instance, queue_id, arrival_time, sender, subject, own_sender, state, \
     first_seen, last_seen, requiretls";

const ACTION_COLUMNS: &str = "id, message_id, action, requested_by, ip, requested_at, state, \
     phase, result, new_queue_id, finished_at";

impl PgDb {
    /// Connects; the worker creates or migrates the tables, the web
    /// process checks that they are at this program's version.
    pub(crate) fn connect(url: &PgUrl, access: Access) -> Result<PgDb> {
        let mut client = url.connect()?;
        match access {
            Access::Worker => schema::MIGRATIONS.apply(&mut client, url)?,
            Access::Web => schema::MIGRATIONS.check(&mut client, url, schema::CREATOR)?,
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

    /// A value this program does not know, read from this database.
    fn unknown(&self, source: UnknownValue) -> StoreError {
        StoreError::Unknown {
            url: self.url.shown().to_string(),
            source,
        }
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
}
