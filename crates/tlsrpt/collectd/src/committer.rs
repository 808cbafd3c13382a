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
use tlsrpt_store::{yesterday_path, CollectorDb, Opened, Storage, StorageUrl, StoreError};

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
    target: Target,
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
    rollover_script: Option<String>,
    /// Counted datagrams written to this store since start.
    written: u64,
}

/// The open connection of a store.
enum Target {
    /// A SQLite file of this host, moved to `.yesterday` at midnight.
    Sqlite(Option<CollectorDb>),
    /// The fleet's PostgreSQL database: counters under this collector's
    /// name, a day ended by a record of it.
    Postgres {
        collector: String,
        connection: Option<Box<PgCollectorStore>>,
        /// A batch whose write failed: retried as it is, with its number,
        /// before anything else, so that a commit whose answer was lost is
        /// not counted twice.
        in_flight: Option<(i64, Aggregate)>,
    },
}

impl Store {
    fn new(
        storage: &Storage,
        target: Target,
        rollovers: VecDeque<Day>,
        rollover_script: Option<String>,
    ) -> Store {
        Store {
            storage: storage.clone(),
            target,
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

    fn in_flight(&self) -> Option<&Aggregate> {
        match &self.target {
            Target::Postgres {
                in_flight: Some((_, agg)),
                ..
            } => Some(agg),
            _ => None,
        }
    }

    /// Datagrams received but not yet written here.
    fn unwritten(&self) -> u64 {
        self.pending.datagrams() + self.in_flight().map_or(0, Aggregate::datagrams)
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.relabels.is_empty()
            && self.rollovers.is_empty()
            && self.in_flight().is_none()
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
                if let Target::Postgres { connection, .. } = &mut self.target {
                    // Connect again on the next try: the server may have
                    // restarted.
                    *connection = None;
                }
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

    fn try_flush(&mut self) -> Result<(), StoreError> {
        match &self.target {
            Target::Sqlite(_) => self.flush_sqlite(),
            Target::Postgres { .. } => self.flush_postgres(),
        }
    }

    fn flush_sqlite(&mut self) -> Result<(), StoreError> {
        let Storage::Sqlite(url) = &self.storage else {
            unreachable!("a SQLite target has a SQLite URL")
        };
        if matches!(self.target, Target::Sqlite(None)) {
            let (db, _) = CollectorDb::open(&url.path)?;
            self.target = Target::Sqlite(Some(db));
        }
        while let Some((today, yesterday)) = self.relabels.front().copied() {
            let Target::Sqlite(Some(db)) = &mut self.target else {
                unreachable!("opened above")
            };
            db.relabel_day(today, yesterday)?;
            self.relabels.pop_front();
        }
        while let Some(completed) = self.rollovers.front().copied() {
            self.roll_over(completed)?;
            self.rollovers.pop_front();
        }
        if !self.pending.is_empty() {
            let Target::Sqlite(Some(db)) = &mut self.target else {
                unreachable!("opened above")
            };
            let started = Instant::now();
            db.write(&self.pending)?;
            log::debug!(
                "committed {} datagrams ({} keys) to {} in {} ms",
                self.pending.datagrams(),
                self.pending.len(),
                self.name(),
                started.elapsed().as_millis()
            );
            self.written += self.pending.datagrams();
            self.pending = Aggregate::new();
        }
        Ok(())
    }

    /// PostgreSQL: the batch in flight first, then the counters of each
    /// completed day and its end, then the rest, each batch in one
    /// transaction.
    fn flush_postgres(&mut self) -> Result<(), StoreError> {
        let Storage::Postgres(url) = &self.storage else {
            unreachable!("a PostgreSQL target has a PostgreSQL URL")
        };
        let Target::Postgres {
            collector,
            connection,
            in_flight,
        } = &mut self.target
        else {
            unreachable!("checked by the caller")
        };
        if connection.is_none() {
            *connection = Some(Box::new(PgCollectorStore::connect(url, collector)?));
        }
        let db = connection.as_mut().expect("connected above");
        let mut written = 0;
        let mut write = |db: &mut PgCollectorStore,
                         in_flight: &mut Option<(i64, Aggregate)>|
         -> Result<(), StoreError> {
            if let Some((batch, agg)) = in_flight {
                if !db.write(*batch, agg)? {
                    log::info!("batch {batch} had reached {} before its answer was lost; not counted again", url.shown());
                }
                written += agg.datagrams();
                *in_flight = None;
            }
            Ok(())
        };
        write(db, in_flight)?;
        while let Some((today, yesterday)) = self.relabels.front().copied() {
            db.relabel_day(today, yesterday)?;
            self.relabels.pop_front();
        }
        while let Some(completed) = self.rollovers.front().copied() {
            let old = self.pending.split_off_before(completed.succ());
            if !old.is_empty() {
                *in_flight = Some((rand::random::<i64>(), old));
                write(db, in_flight)?;
            }
            db.end_day(completed)?;
            log::info!(
                "day {completed} ended for collector {collector} in {}",
                url.shown()
            );
            self.rollovers.pop_front();
        }
        if !self.pending.is_empty() {
            let started = Instant::now();
            let agg = std::mem::take(&mut self.pending);
            let (datagrams, keys) = (agg.datagrams(), agg.len());
            *in_flight = Some((rand::random::<i64>(), agg));
            write(db, in_flight)?;
            log::debug!(
                "committed {datagrams} datagrams ({keys} keys) to {} in {} ms",
                url.shown(),
                started.elapsed().as_millis()
            );
        }
        self.written += written;
        Ok(())
    }

    /// SQLite: write the counters of days up to `completed`, then move the
    /// file to `.yesterday` and start a new one.
    fn roll_over(&mut self, completed: Day) -> Result<(), StoreError> {
        let Storage::Sqlite(url) = &self.storage else {
            unreachable!("only SQLite files roll over")
        };
        let Target::Sqlite(slot) = &mut self.target else {
            unreachable!("only SQLite files roll over")
        };
        let db = slot.as_mut().expect("opened before rollover");
        // Counters of the completed day (or older) belong in the file being closed.
        let old = self.pending.split_off_before(completed.succ());
        if let Err(e) = db.write(&old) {
            self.pending.merge(old);
            return Err(e);
        }
        self.written += old.datagrams();
        let db = slot.take().expect("present");
        let (fresh, stale) = db.rollover(completed)?;
        if stale {
            log::error!(
                "possible earlier rollover problem: {} still had a day status, replaced it",
                url.path.display()
            );
        }
        *slot = Some(fresh);
        let yesterday = yesterday_path(&url.path);
        log::info!(
            "day {completed} complete: moved to {}, new database {}",
            yesterday.display(),
            url.path.display()
        );
        self.run_rollover_script(&url.url, &yesterday.to_string_lossy());
        Ok(())
    }

    /// Development rollover: today's counters, here and in the database,
    /// become yesterday's. The database's are relabelled by the next
    /// flush, before the day is ended, and retried as a commit is when the
    /// database fails (a connection that died while idle, say): a day is
    /// never ended without this collector's rows.
    fn relabel(&mut self, today: Day, yesterday: Day) {
        self.pending.relabel_day(today, yesterday);
        if let Target::Postgres {
            in_flight: Some((_, agg)),
            ..
        } = &mut self.target
        {
            agg.relabel_day(today, yesterday);
        }
        self.relabels.push_back((today, yesterday));
        self.rollovers.push_back(yesterday);
    }

    /// Start `daily_rollover_script URL YESTERDAYPATH` without waiting for it;
    /// a helper thread reaps it and logs a failure.
    fn run_rollover_script(&self, url: &str, yesterday: &str) {
        let Some(script) = &self.rollover_script else {
            return;
        };
        let mut words = script.split_whitespace();
        let Some(program) = words.next() else { return };
        let mut cmd = Command::new(program);
        cmd.args(words).arg(url).arg(yesterday);
        log::info!("starting daily rollover script {cmd:?}");
        match cmd.spawn() {
            Ok(mut child) => {
                let script = script.clone();
                std::thread::spawn(move || match child.wait() {
                    Ok(status) if status.success() => {}
                    Ok(status) => log::error!("daily rollover script '{script}' {status}"),
                    Err(e) => log::error!("daily rollover script '{script}': {e}"),
                });
            }
            Err(e) => log::error!("cannot start daily rollover script '{script}': {e}"),
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
            Storage::Sqlite(url) => {
                open_sqlite(storage, url, today, yesterday, rollover_script.clone())?
            }
            Storage::Postgres(url) => open_postgres(storage, url, collector, today),
        };
        stores.push(StoreHandle(store));
    }
    Ok(stores)
}

fn open_sqlite(
    storage: &Storage,
    url: &StorageUrl,
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
    let mut store = Store::new(
        storage,
        Target::Sqlite(Some(db)),
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
            Some(Box::new(db))
        }
        Err(e) => {
            log::error!(
                "cannot reach {} at start: {e}; counting in memory and retrying, receiving goes on",
                url.shown()
            );
            None
        }
    };
    let target = Target::Postgres {
        collector: collector.to_string(),
        connection,
        in_flight: None,
    };
    Store::new(storage, target, rollovers, None)
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
