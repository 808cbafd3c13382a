//! The writing side of the collector: a thread that owns the database
//! connections, so that a slow, locked or broken database never stops the
//! receiver from draining the socket.
//!
//! The receiver hands over aggregates; the committer merges them into a
//! pending aggregate per store and writes that in one transaction. When a
//! write fails, the pending counters stay in memory (bounded by the number of
//! distinct keys) and the write is retried with a growing pause.

use std::collections::VecDeque;
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use mailtls_common::day::Day;
use tlsrpt_datagram::Aggregate;
use tlsrpt_store::postgres::{PgCollectorStore, PgUrl};
use tlsrpt_store::{
    yesterday_path, CollectorDb, CounterStore, DayEnd, Opened, Storage, StorageUrl, StoreError,
};

use crate::metrics::CollectdMetrics;

/// What the receiver asks of the committer, in order.
#[derive(Debug)]
pub enum Request {
    /// Counters to add.
    Counters(Aggregate),
    /// The UTC day `completed` is over: write its counters, then roll the
    /// files over so the fetcher can read it.
    Rollover { completed: Day },
    /// Development rollover (SIGUSR2): today's counters become `yesterday`'s,
    /// then roll over as at midnight.
    DevelopmentRollover { today: Day, yesterday: Day },
    /// Write everything and stop.
    Shutdown,
}

/// Pause before the first retry of a failed write; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long shutdown keeps retrying a failing store before giving up.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// One configured store and what still has to reach it.
struct Store {
    storage: Storage,
    /// The name this collector counts under in a fleet's database.
    collector: String,
    /// The open store; `None` until it is opened again after a failure.
    connection: Option<Box<dyn CounterStore>>,
    /// A batch whose write failed: retried as it is, with its number,
    /// before anything else, so that a commit whose answer was lost is
    /// not counted twice.
    in_flight: Option<(i64, Aggregate)>,
    pending: Aggregate,
    /// Development rollovers (today, yesterday) still to be made in the
    /// database: each before the day end queued with it, and retried like
    /// a commit.
    relabels: VecDeque<(Day, Day)>,
    rollovers: VecDeque<Day>,
    /// No write before this instant (pause after a failure).
    not_before: Option<Instant>,
    retry_pause: Duration,
    failing_since: Option<Instant>,
    rollover_script: Option<RolloverScript>,
    /// Counted datagrams written to this store since start.
    written: u64,
}

/// `daily_rollover_script`, started with a SQLite store's URL and the path
/// of its completed day after each rollover.
struct RolloverScript {
    command: String,
    url: String,
}

impl Store {
    fn new(
        storage: &Storage,
        collector: &str,
        connection: Option<Box<dyn CounterStore>>,
        rollovers: VecDeque<Day>,
        rollover_script: Option<RolloverScript>,
    ) -> Store {
        Store {
            storage: storage.clone(),
            collector: collector.to_string(),
            connection,
            in_flight: None,
            pending: Aggregate::new(),
            relabels: VecDeque::new(),
            rollovers,
            not_before: None,
            retry_pause: FIRST_RETRY,
            failing_since: None,
            rollover_script,
            written: 0,
        }
    }

    fn name(&self) -> String {
        self.storage.name()
    }

    /// Datagrams received but not yet written here.
    fn unwritten(&self) -> u64 {
        self.pending.datagrams()
            + self
                .in_flight
                .as_ref()
                .map_or(0, |(_, agg)| agg.datagrams())
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.relabels.is_empty()
            && self.rollovers.is_empty()
            && self.in_flight.is_none()
    }

    /// Try to bring the database up to date. Returns false if something is
    /// still pending after a failure.
    fn flush(&mut self, now: Instant, metrics: &CollectdMetrics) -> bool {
        if self.is_idle() {
            return true;
        }
        if self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        let started = Instant::now();
        match self.try_flush() {
            Ok(()) => {
                metrics.commit_succeeded(started.elapsed());
                if let Some(since) = self.failing_since.take() {
                    log::info!(
                        "database {} writable again after {:.1} s; nothing was lost",
                        self.name(),
                        since.elapsed().as_secs_f64()
                    );
                }
                self.not_before = None;
                self.retry_pause = FIRST_RETRY;
                true
            }
            Err(e) => {
                metrics.commit_failed();
                // Open again on the next try: the server may have
                // restarted, a rollover stopped half-way.
                self.connection = None;
                if self.failing_since.is_none() {
                    self.failing_since = Some(now);
                    log::error!(
                        "cannot write to {}: {e}; keeping {} datagrams ({} keys) in memory and retrying, receiving goes on",
                        self.name(),
                        self.unwritten(),
                        self.pending.len()
                    );
                } else {
                    log::warn!(
                        "still cannot write to {}: {e}; {} keys pending",
                        self.name(),
                        self.pending.len()
                    );
                }
                self.not_before = Some(now + self.retry_pause);
                self.retry_pause = (self.retry_pause * 2).min(MAX_RETRY);
                false
            }
        }
    }

    /// The batch in flight first, then the relabelled days, then the
    /// counters of each completed day and its end, then the rest, each
    /// batch in one transaction.
    fn try_flush(&mut self) -> Result<(), StoreError> {
        if self.connection.is_none() {
            self.connection = Some(self.storage.open_counter_store(&self.collector)?);
        }
        self.write_in_flight()?;
        while let Some((today, yesterday)) = self.relabels.front().copied() {
            self.connection().relabel_day(today, yesterday)?;
            self.relabels.pop_front();
        }
        while let Some(completed) = self.rollovers.front().copied() {
            // Counters of the completed day (or older) belong to it.
            let old = self.pending.split_off_before(completed.succ());
            if !old.is_empty() {
                self.in_flight = Some((rand::random::<i64>(), old));
                self.write_in_flight()?;
            }
            let ended = self.connection().end_day(completed)?;
            self.day_ended(completed, ended);
            self.rollovers.pop_front();
        }
        if !self.pending.is_empty() {
            let started = Instant::now();
            let agg = std::mem::take(&mut self.pending);
            let (datagrams, keys) = (agg.datagrams(), agg.len());
            self.in_flight = Some((rand::random::<i64>(), agg));
            self.write_in_flight()?;
            log::debug!(
                "committed {datagrams} datagrams ({keys} keys) to {} in {} ms",
                self.name(),
                started.elapsed().as_millis()
            );
        }
        Ok(())
    }

    fn connection(&mut self) -> &mut dyn CounterStore {
        self.connection
            .as_deref_mut()
            .expect("opened at the start of the flush")
    }

    /// Writes the batch in flight, if any.
    fn write_in_flight(&mut self) -> Result<(), StoreError> {
        let Some((batch, agg)) = self.in_flight.take() else {
            return Ok(());
        };
        match self.connection().write(batch, &agg) {
            Ok(added) => {
                if !added {
                    log::info!(
                        "batch {batch} had reached {} before its answer was lost; not counted again",
                        self.name()
                    );
                }
                self.written += agg.datagrams();
                Ok(())
            }
            Err(e) => {
                self.in_flight = Some((batch, agg));
                Err(e)
            }
        }
    }

    /// Says how `completed` ended, and starts the rollover script after a
    /// SQLite file's move.
    fn day_ended(&self, completed: Day, ended: DayEnd) {
        match ended {
            DayEnd::Moved { yesterday, stale } => {
                if stale {
                    log::error!(
                        "possible earlier rollover problem: {} still had a day status, replaced it",
                        self.name()
                    );
                }
                log::info!(
                    "day {completed} complete: moved to {}, new database {}",
                    yesterday.display(),
                    self.name()
                );
                self.run_rollover_script(&yesterday.to_string_lossy());
            }
            DayEnd::Recorded => log::info!(
                "day {completed} ended for collector {} in {}",
                self.collector,
                self.name()
            ),
        }
    }

    /// Development rollover: today's counters, here and in the database,
    /// become yesterday's. The database's are relabelled by the next
    /// flush, before the day is ended, and retried as a commit is when the
    /// database fails (a connection that died while idle, say): a day is
    /// never ended without this collector's rows.
    fn relabel(&mut self, today: Day, yesterday: Day) {
        self.pending.relabel_day(today, yesterday);
        if let Some((_, agg)) = &mut self.in_flight {
            agg.relabel_day(today, yesterday);
        }
        self.relabels.push_back((today, yesterday));
        self.rollovers.push_back(yesterday);
    }

    /// Start `daily_rollover_script URL YESTERDAYPATH` without waiting for it;
    /// a helper thread reaps it and logs a failure.
    fn run_rollover_script(&self, yesterday: &str) {
        let Some(RolloverScript { command, url }) = &self.rollover_script else {
            return;
        };
        let mut words = command.split_whitespace();
        let Some(program) = words.next() else { return };
        let mut cmd = Command::new(program);
        cmd.args(words).arg(url).arg(yesterday);
        log::info!("starting daily rollover script {cmd:?}");
        match cmd.spawn() {
            Ok(mut child) => {
                let script = command.clone();
                std::thread::spawn(move || match child.wait() {
                    Ok(status) if status.success() => {}
                    Ok(status) => log::error!("daily rollover script '{script}' {status}"),
                    Err(e) => log::error!("daily rollover script '{script}': {e}"),
                });
            }
            Err(e) => log::error!(
                "cannot start daily rollover script '{script}': {e}",
                script = command
            ),
        }
    }
}

/// Open every store at start. A new SQLite installation also gets its
/// `.yesterday` file, and a store left with counters of an earlier day that
/// was not ended (the collector was down over midnight) is rolled over or
/// ended at once, so that day can still be reported.
///
/// A PostgreSQL store that cannot be reached at start is not an error: the
/// collector counts in memory and keeps trying, as when the server goes
/// away later.
pub fn open_stores(
    storages: &[Storage],
    collector: &str,
    today: Day,
    yesterday: Day,
    rollover_script: Option<String>,
) -> Result<Vec<StoreHandle>, StoreError> {
    let mut stores = Vec::with_capacity(storages.len());
    for storage in storages {
        let store = match storage {
            Storage::Sqlite(url) => open_sqlite(
                storage,
                url,
                collector,
                today,
                yesterday,
                rollover_script.clone(),
            )?,
            Storage::Postgres(url) => open_postgres(storage, url, collector, today),
        };
        stores.push(StoreHandle(store));
    }
    Ok(stores)
}

fn open_sqlite(
    storage: &Storage,
    url: &StorageUrl,
    collector: &str,
    today: Day,
    yesterday: Day,
    rollover_script: Option<String>,
) -> Result<Store, StoreError> {
    let (db, opened) = CollectorDb::open(&url.path)?;
    let mut rollovers = VecDeque::new();
    match opened {
        Opened::Created => {
            log::info!(
                "created new database {}, preparing {} as well",
                url.path.display(),
                yesterday_path(&url.path).display()
            );
            rollovers.push_back(yesterday);
        }
        Opened::Existing => {
            log::info!("database {} looks OK", url.path.display());
            if let Some(newest) = db.newest_day()? {
                if newest < today {
                    log::warn!(
                        "database {} holds counters of {newest}, before today {today}: the collector was not running at midnight; rolling over now",
                        url.path.display()
                    );
                    rollovers.push_back(yesterday);
                }
            }
        }
    }
    let rollover_script = rollover_script.map(|command| RolloverScript {
        command,
        url: url.url.clone(),
    });
    let mut store = Store::new(
        storage,
        collector,
        Some(Box::new(db)),
        rollovers,
        rollover_script,
    );
    store.try_flush()?;
    Ok(store)
}

fn open_postgres(storage: &Storage, url: &PgUrl, collector: &str, today: Day) -> Store {
    let mut rollovers = VecDeque::new();
    let connection = match PgCollectorStore::connect(url, collector) {
        Ok(mut db) => {
            log::info!(
                "database {} looks OK; counting as collector {collector}",
                url.shown()
            );
            match db.unended_days_before(today) {
                Ok(days) => {
                    for day in days {
                        log::warn!(
                            "collector {collector} never ended {day} in {} (it was not running at midnight); ending it now",
                            url.shown()
                        );
                        rollovers.push_back(day);
                    }
                }
                Err(e) => log::error!("{e}"),
            }
            Some(Box::new(db) as Box<dyn CounterStore>)
        }
        Err(e) => {
            log::error!(
                "cannot reach {} at start: {e}; counting in memory and retrying, receiving goes on",
                url.shown()
            );
            None
        }
    };
    Store::new(storage, collector, connection, rollovers, None)
}

/// A store opened at start, to be moved into the committer thread.
pub struct StoreHandle(Store);

/// The outcome of the committer thread.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything received was written.
    AllWritten,
    /// Some counters could not be written before shutdown.
    Lost { datagrams: u64 },
}

/// Run the committer until [`Request::Shutdown`] (or until the receiver is
/// gone), telling `metrics` what it writes.
pub fn run(
    stores: Vec<StoreHandle>,
    requests: Receiver<Request>,
    metrics: &CollectdMetrics,
) -> Outcome {
    let mut stores: Vec<Store> = stores.into_iter().map(|h| h.0).collect();
    loop {
        // A store with work and no pause (a PostgreSQL store with days to
        // end at start, or one not reached at start) is due at once.
        let now = Instant::now();
        let wait = stores
            .iter()
            .filter(|s| !s.is_idle())
            .map(|s| s.not_before.unwrap_or(now))
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let first = match requests.recv_timeout(wait) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Request::Shutdown),
        };
        // Take everything that is already queued, so that a backlog becomes
        // one transaction instead of many.
        let mut shutdown = false;
        for request in first.into_iter().chain(requests.try_iter()) {
            match request {
                Request::Counters(agg) => add_to_all(&mut stores, agg),
                Request::Rollover { completed } => {
                    for s in &mut stores {
                        s.rollovers.push_back(completed);
                    }
                }
                Request::DevelopmentRollover { today, yesterday } => {
                    log::info!("development rollover: counters of {today} become {yesterday}'s");
                    for s in &mut stores {
                        s.relabel(today, yesterday);
                    }
                }
                Request::Shutdown => shutdown = true,
            }
        }
        let now = Instant::now();
        for s in &mut stores {
            s.flush(now, metrics);
        }
        published_written(&stores, metrics);
        if shutdown {
            return finish(stores, metrics);
        }
    }
}

fn add_to_all(stores: &mut [Store], agg: Aggregate) {
    if let Some((last, others)) = stores.split_last_mut() {
        for s in others {
            s.pending.merge(agg.clone());
        }
        last.pending.merge(agg);
    }
}

/// What every store has: the datagrams written to the one that has the fewest.
fn published_written(stores: &[Store], metrics: &CollectdMetrics) {
    let everywhere = stores.iter().map(|s| s.written).min().unwrap_or(0);
    metrics.committed_everywhere(everywhere);
}

/// Shutdown: keep trying for a while, then report what could not be written.
fn finish(mut stores: Vec<Store>, metrics: &CollectdMetrics) -> Outcome {
    let deadline = Instant::now() + SHUTDOWN_PATIENCE;
    loop {
        let mut all_done = true;
        for s in &mut stores {
            s.not_before = None;
            all_done &= s.flush(Instant::now(), metrics);
        }
        published_written(&stores, metrics);
        if all_done {
            return Outcome::AllWritten;
        }
        if Instant::now() >= deadline {
            let mut lost = 0;
            for s in &stores {
                if s.unwritten() > 0 {
                    log::error!(
                        "giving up on {}: {} datagrams received since the last successful write are lost",
                        s.name(),
                        s.unwritten()
                    );
                    lost = lost.max(s.unwritten());
                }
            }
            return Outcome::Lost { datagrams: lost };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use tlsrpt_store::FetcherDb;

    const D: &str = r#"{"d":"a.example","pr":"r","policies":[{"policy-type":9,"t":0,"f":0}]}"#;

    fn day(text: &str) -> Day {
        Day::parse(text).unwrap()
    }

    fn counters(day: Day, n: usize) -> Aggregate {
        let mut a = Aggregate::new();
        let d = tlsrpt_datagram::parse(D.as_bytes()).unwrap();
        for _ in 0..n {
            a.add(day, &d);
        }
        a
    }

    /// A store file in a fresh directory, opened as the collector does on
    /// `today` (`yesterday` completed).
    fn opened(today: Day, yesterday: Day) -> (tempfile::TempDir, StorageUrl, Vec<StoreHandle>) {
        let dir = tempfile::tempdir().unwrap();
        let url =
            StorageUrl::parse(&format!("sqlite://{}/c.sqlite", dir.path().display())).unwrap();
        let stores = open_stores(
            &[Storage::Sqlite(url.clone())],
            "test",
            today,
            yesterday,
            None,
        )
        .unwrap();
        (dir, url, stores)
    }

    fn total(db: &FetcherDb, day: Day) -> i64 {
        let (p, _) = db.details(day, "a.example").unwrap();
        p.iter().map(|r| r.total).sum()
    }

    #[test]
    fn new_installation_gets_a_yesterday_file() {
        let (_dir, url, _) = opened(day("2026-11-22"), day("2026-11-21"));
        let y = FetcherDb::open(&yesterday_path(&url.path)).unwrap();
        assert_eq!(y.completed_day().unwrap(), Some(day("2026-11-21")));
    }

    #[test]
    fn counters_before_and_after_midnight_land_in_their_files() {
        let (_dir, url, stores) = opened(day("2026-11-21"), day("2026-11-20"));
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || run(stores, rx, &CollectdMetrics::new()));
        tx.send(Request::Counters(counters(day("2026-11-21"), 3)))
            .unwrap();
        tx.send(Request::Rollover {
            completed: day("2026-11-21"),
        })
        .unwrap();
        tx.send(Request::Counters(counters(day("2026-11-22"), 2)))
            .unwrap();
        tx.send(Request::Shutdown).unwrap();
        assert_eq!(t.join().unwrap(), Outcome::AllWritten);
        let y = FetcherDb::open(&yesterday_path(&url.path)).unwrap();
        assert_eq!(y.completed_day().unwrap(), Some(day("2026-11-21")));
        assert_eq!(total(&y, day("2026-11-21")), 3);
        let (today, _) = CollectorDb::open(&url.path).unwrap();
        assert_eq!(today.newest_day().unwrap(), Some(day("2026-11-22")));
    }

    #[test]
    fn a_locked_database_keeps_counters_until_it_is_free() {
        let (_dir, url, stores) = opened(day("2026-11-21"), day("2026-11-20"));
        // Another process holds an exclusive lock on the file.
        let locker = rusqlite::Connection::open(&url.path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let (tx, rx) = mpsc::channel();
        let metrics = std::sync::Arc::new(CollectdMetrics::new());
        let shared = metrics.clone();
        let t = std::thread::spawn(move || run(stores, rx, &shared));
        metrics.received(50);
        for _ in 0..5 {
            tx.send(Request::Counters(counters(day("2026-11-21"), 10)))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(2500));
        locker.execute_batch("COMMIT").unwrap();
        drop(locker);
        tx.send(Request::Shutdown).unwrap();
        assert_eq!(t.join().unwrap(), Outcome::AllWritten);
        let conn = rusqlite::Connection::open(&url.path).unwrap();
        let n: i64 = conn
            .query_row("SELECT sum(cntrtotal) FROM finalresults", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 50);
        // The metrics saw the failed writes, then the one that wrote all.
        let text = metrics.render();
        let value = |name: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
            line.unwrap_or_else(|| panic!("{name} in {text}"))[name.len() + 1..]
                .parse()
                .unwrap()
        };
        assert!(
            value("tlsrpt_collectd_commit_failures_total") >= 1,
            "{text}"
        );
        assert!(value("tlsrpt_collectd_commits_total") >= 1, "{text}");
        assert_eq!(value("tlsrpt_collectd_datagrams_waiting"), 0, "{text}");
        assert_eq!(metrics.waiting(), 0);
    }
}
