//! What a collector does with its store (add counters, end a day, move a
//! day's counters for a development rollover), the same calls for one
//! host's SQLite file and a fleet's PostgreSQL database: [`CounterStore`].

use std::path::PathBuf;

use mailtls_common::day::Day;
use rusqlite::Connection;
use tlsrpt_datagram::Aggregate;

use crate::postgres::PgCollectorStore;
use crate::{sql_err, yesterday_path, CollectorDb, Result, Storage};

/// How a store ended a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayEnd {
    /// A SQLite file: marked complete and moved to `yesterday`, a fresh
    /// file in its place. `stale`: a day status was there already and was
    /// replaced (an earlier rollover failed half-way, worth an operator's
    /// look).
    Moved { yesterday: PathBuf, stale: bool },
    /// PostgreSQL: this collector's end of the day is recorded.
    Recorded,
}

/// One collector's store. After an error the store is opened again
/// ([`Storage::open_counter_store`]): a server may have restarted, a
/// rollover have stopped half-way.
pub trait CounterStore: Send {
    /// Adds the counters of `agg` in one transaction, as batch `batch` (a
    /// number the caller chose at random for this aggregate and keeps for
    /// every retry of it). `Ok(false)`: the batch was written before (its
    /// commit reached the server, the answer did not reach us) and nothing
    /// was added again; a SQLite file, committed on this host, always adds.
    fn write(&mut self, batch: i64, agg: &Aggregate) -> Result<bool>;

    /// Moves this collector's counters of `from` to `to` (the development
    /// rollover, SIGUSR2).
    fn relabel_day(&mut self, from: Day, to: Day) -> Result<()>;

    /// Ends `day`: this collector's counters of it are all written, a
    /// fetcher may report it.
    fn end_day(&mut self, day: Day) -> Result<DayEnd>;
}

impl Storage {
    /// Opens this store for the collector named `collector` (the name a
    /// fleet's database counts it under; a SQLite file is one collector's
    /// own).
    pub fn open_counter_store(&self, collector: &str) -> Result<Box<dyn CounterStore>> {
        Ok(match self {
            Storage::Sqlite(url) => Box::new(CollectorDb::open(&url.path)?.0),
            Storage::Postgres(url) => Box::new(PgCollectorStore::connect(url, collector)?),
        })
    }
}

impl CounterStore for CollectorDb {
    fn write(&mut self, _batch: i64, agg: &Aggregate) -> Result<bool> {
        CollectorDb::write(self, agg)?;
        Ok(true)
    }

    fn relabel_day(&mut self, from: Day, to: Day) -> Result<()> {
        CollectorDb::relabel_day(self, from, to)
    }

    /// [`CollectorDb::rollover`] in place: until it succeeds the store
    /// holds an empty database in memory, which refuses every write.
    fn end_day(&mut self, day: Day) -> Result<DayEnd> {
        let stand_in = CollectorDb {
            conn: Connection::open_in_memory().map_err(sql_err(&self.path))?,
            path: self.path.clone(),
        };
        let (fresh, stale) = std::mem::replace(self, stand_in).rollover(day)?;
        *self = fresh;
        Ok(DayEnd::Moved {
            yesterday: yesterday_path(&self.path),
            stale,
        })
    }
}

impl CounterStore for PgCollectorStore {
    fn write(&mut self, batch: i64, agg: &Aggregate) -> Result<bool> {
        Ok(PgCollectorStore::write(self, batch, agg)?)
    }

    fn relabel_day(&mut self, from: Day, to: Day) -> Result<()> {
        Ok(PgCollectorStore::relabel_day(self, from, to)?)
    }

    fn end_day(&mut self, day: Day) -> Result<DayEnd> {
        PgCollectorStore::end_day(self, day)?;
        Ok(DayEnd::Recorded)
    }
}
