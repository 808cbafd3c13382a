//! The daemon's main loop, the upstream's steps in the upstream's order:
//!
//! 1. a new UTC day: delete what is older than `keep_days`, create one
//!    fetch job per fetcher for the completed day;
//! 2. fetch jobs: each fetcher's domain list (or, from a fetcher that offers
//!    it, every domain's details in one bulk run);
//! 3. each listed domain's details;
//! 4. reports for every domain whose details are all in;
//! 5. deliveries that are due.
//!
//! Fetchers run on worker threads, one per fetcher command, so a slow or
//! hung fetcher (every run has a time limit) holds up neither the others
//! nor the deliveries. The main thread alone writes the database.
//!
//! On a PostgreSQL `dbname` several daemons share the state: the one that
//! takes the lead works, the others stand by and try again every
//! `interval_main_loop`. A daemon that loses its database connection has
//! lost the lead with it: it stands by, reconnects, and works again only
//! if it takes the lead again.

use mailtls_common::day::Day;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use mailtls_common::clock::Clock;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tlsrpt_delivery::{Directory, Outcome};

use crate::config::{FetchRetry, ReportdConfig};
use crate::deliver::{Deliverer, Target};
use crate::fetch::{
    shown_command, BulkAnswer, DetailsAnswer, Fetcher, Limits, ListAnswer, DEFAULT_MAX_OUTPUT,
};
use crate::metrics::{DeliveryResult, FetchStep, ReportdMetrics};
use crate::reports::make_reports;
use crate::schedule::{random_wait, Spread};
use tlsrpt_reportd_db::{
    DbError, Delivery, DeliveryOutcome, DetailsJob, FetchJob, NewReport, ReportdDb,
};

/// A bulk answer covers a whole day: it may take this many times as long
/// as one ordinary fetcher run (but may not stall for longer than one run
/// may take), and be this large.
const BULK_TIME_FACTOR: u32 = 60;
const BULK_MAX_OUTPUT: usize = 1 << 30;
/// Reports made per database transaction.
const REPORTS_PER_TRANSACTION: usize = 1000;
/// `directory:` deliveries written per disk sync.
const FILES_PER_SYNC: usize = 1000;
/// How often the main thread looks at the pending work while fetch
/// results stream in.
const BUSY_INTERVAL: Duration = Duration::from_millis(500);

/// What a worker reports to the main thread.
enum Event {
    List {
        job: FetchJob,
        answer: ListOutcome,
        /// The fetcher's clock when it answered.
        fetcher_time: Option<NaiveDateTime>,
    },
    Details {
        job: DetailsJob,
        answer: DetailsAnswer,
    },
    /// The worker of this fetcher command has finished its batch.
    Idle(String),
    /// SIGTERM or SIGINT.
    Stop,
}

enum ListOutcome {
    Domains(Vec<String>),
    Bulk(Vec<(String, String)>),
    NotReady(String),
    Failed(String),
}

pub struct Reportd<'c> {
    cfg: ReportdConfig,
    db: ReportdDb,
    deliverer: Deliverer,
    clock: &'c dyn Clock,
    rng: StdRng,
    spread: Spread,
    events: (Sender<Event>, Receiver<Event>),
    /// Fetcher commands whose worker is busy.
    busy: HashSet<String>,
    /// Fetcher commands that ignored `--bulk` (answered with a v1 list) or
    /// refused it as an unknown option.
    no_bulk: Arc<std::sync::Mutex<HashSet<String>>>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<ReportdMetrics>,
}

impl<'c> Reportd<'c> {
    pub fn new(
        cfg: ReportdConfig,
        db: ReportdDb,
        deliverer: Deliverer,
        clock: &'c dyn Clock,
    ) -> Self {
        let spread = Spread::new(cfg.spread_out_delivery);
        Reportd {
            cfg,
            db,
            deliverer,
            clock,
            rng: StdRng::from_entropy(),
            spread,
            events: mpsc::channel(),
            busy: HashSet::new(),
            no_bulk: Arc::default(),
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            metrics: Arc::default(),
        }
    }

    /// What the daemon counts, for `metrics_listen`.
    pub fn metrics(&self) -> Arc<ReportdMetrics> {
        Arc::clone(&self.metrics)
    }

    /// A handle that makes [`run`](Self::run) return, for the signal
    /// handler.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            flag: self.stop.clone(),
            events: self.events.0.clone(),
        }
    }

    /// Runs until [`Stopper::stop`]: works whenever this daemon has the
    /// lead (always, on SQLite), stands by otherwise. A database error ends
    /// the run on SQLite; on PostgreSQL the daemon reconnects and stands
    /// by.
    pub fn run(&mut self) -> Result<(), DbError> {
        let mut standing_by: Option<String> = None;
        while !self.stopped() {
            match self.db.take_lead() {
                Ok(Ok(())) => {}
                Ok(Err(active)) => {
                    if standing_by.as_ref() != Some(&active) {
                        log::info!(
                            "standing by: {active} is the active report daemon; trying to take over every {} s",
                            self.cfg.interval_main_loop.as_secs()
                        );
                        standing_by = Some(active);
                    }
                    self.pause(self.cfg.interval_main_loop);
                    continue;
                }
                Err(err) => {
                    self.reconnect(err)?;
                    continue;
                }
            }
            if self.db.is_shared() {
                log::info!(
                    "this is the active report daemon on {}",
                    self.cfg.dbname.shown()
                );
            }
            standing_by = None;
            self.metrics.set_active(true);
            let worked = self.work();
            self.metrics.set_active(false);
            match worked {
                Ok(()) => return self.shut_down(),
                Err(err) => self.reconnect(err)?,
            }
        }
        Ok(())
    }

    /// The active daemon's work, until [`Stopper::stop`] or a database
    /// error. Deliveries that a previous run (or another daemon) left
    /// unfinished are queued again first.
    fn work(&mut self) -> Result<(), DbError> {
        self.requeue_interrupted()?;
        while !self.stopped() {
            self.work_once()?;
            if self.stopped() {
                break;
            }
            self.wait()?;
        }
        Ok(())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// After a database error: on SQLite the error ends the run; on
    /// PostgreSQL the connection (and with it the lead) may be lost, so
    /// the daemon opens a new one, waiting `interval_main_loop` between
    /// tries, and then tries to take the lead again.
    fn reconnect(&mut self, err: DbError) -> Result<(), DbError> {
        if !self.db.is_shared() {
            return Err(err);
        }
        let every = self.cfg.interval_main_loop;
        log::error!(
            "{err}; standing by and connecting again every {} s",
            every.as_secs()
        );
        while !self.stopped() {
            self.pause(every);
            match ReportdDb::open(&self.cfg.dbname) {
                Ok(db) => {
                    log::info!("connected again to {}", self.cfg.dbname.shown());
                    self.db = db;
                    return Ok(());
                }
                Err(err) => log::warn!("{err}; trying again in {} s", every.as_secs()),
            }
        }
        Ok(())
    }

    /// Sleeps for `duration` or until [`Stopper::stop`]. Results of fetcher
    /// runs stay queued for when this daemon works again.
    fn pause(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while !self.stopped() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100).min(deadline - Instant::now()));
        }
    }

    /// One pass over all steps.
    pub fn work_once(&mut self) -> Result<(), DbError> {
        self.check_day()?;
        self.start_fetch_jobs()?;
        self.start_details()?;
        self.create_reports()?;
        self.send_due()?;
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Deliveries left `sending`: the daemon that started them stopped
    /// during the attempt. Its attempt died with it (KillWithParent), so on
    /// SQLite (one daemon, now restarted) it is made again at once. On
    /// PostgreSQL that daemon may instead have lost its connection and
    /// still be running: the attempt is made again only once it has
    /// surely ended (its start plus the attempt time limit).
    fn requeue_interrupted(&mut self) -> Result<(), DbError> {
        let now = self.now();
        let shared = self.db.is_shared();
        for (delivery, started) in self.db.interrupted_deliveries()? {
            let limit = chrono::Duration::from_std(self.cfg.attempt_limit).unwrap_or_default();
            let at = match started {
                Some(started) if shared => (started + limit).max(now),
                _ => now,
            };
            let what = format!(
                "report {} for {} ({}) to {}",
                delivery.r_id, delivery.domain, delivery.day, delivery.destination
            );
            if at > now {
                log::warn!("{what}: the daemon that was making this delivery stopped during it; it is made again at {at}, when that attempt has surely ended");
            } else {
                log::warn!("{what}: the previous run stopped during this delivery; the attempt was cut off with it and is made again");
            }
            self.db
                .delivery_finished(&delivery, DeliveryOutcome::RetryAt(at))?;
        }
        Ok(())
    }

    /// Step 1.
    fn check_day(&mut self) -> Result<(), DbError> {
        let now = self.now();
        let cleaned = self.db.clean_up(now, self.cfg.keep_days)?;
        if cleaned != Default::default() {
            log::info!(
                "deleted data older than {} days: {} fetch jobs, {} domain details, {} reports, {} destinations",
                self.cfg.keep_days, cleaned.fetchjobs, cleaned.reportdata, cleaned.reports, cleaned.destinations
            );
        }
        let yesterday = Day::of(now).pred();
        if self
            .db
            .create_fetch_jobs(yesterday, &self.cfg.fetchers, now)?
        {
            log::info!(
                "new day: fetching {yesterday} from {} fetcher(s)",
                self.cfg.fetchers.len()
            );
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.cfg.fetcher_timeout,
            max_output: DEFAULT_MAX_OUTPUT,
            idle_timeout: None,
        }
    }

    /// Step 2: a worker per due fetch job whose fetcher is idle.
    fn start_fetch_jobs(&mut self) -> Result<(), DbError> {
        let now = self.now();
        for job in self.db.due_fetch_jobs(now)? {
            if self.busy.contains(&job.fetcher) {
                continue;
            }
            let Some(fetcher) = Fetcher::new(&job.fetcher) else {
                log::error!(
                    "fetch job {} {}: empty fetcher command",
                    job.day,
                    job.fetcher_index
                );
                self.db.fetch_job_timed_out(&job)?;
                continue;
            };
            let limits = self.limits();
            let bulk_limits = Limits {
                timeout: limits.timeout * BULK_TIME_FACTOR,
                max_output: BULK_MAX_OUTPUT,
                idle_timeout: Some(limits.timeout),
            };
            let try_bulk = self.cfg.fetcher_bulk
                && !self
                    .no_bulk
                    .lock()
                    .expect("not poisoned")
                    .contains(&job.fetcher);
            let no_bulk = self.no_bulk.clone();
            self.spawn_worker(job.fetcher.clone(), move |events, _stop| {
                let name = job.fetcher.clone();
                let (answer, fetcher_time) =
                    fetch_list(&fetcher, &job, try_bulk, limits, bulk_limits, &no_bulk);
                let _ = events.send(Event::List {
                    job,
                    answer,
                    fetcher_time,
                });
                let _ = events.send(Event::Idle(name));
            });
        }
        Ok(())
    }

    /// Step 3: the due details of each idle fetcher, as one batch for its
    /// worker.
    fn start_details(&mut self) -> Result<(), DbError> {
        let mut by_fetcher: HashMap<String, Vec<DetailsJob>> = HashMap::new();
        let now = self.now();
        for job in self.db.due_details(now)? {
            if !self.busy.contains(&job.fetcher) {
                by_fetcher.entry(job.fetcher.clone()).or_default().push(job);
            }
        }
        for (name, jobs) in by_fetcher {
            let Some(fetcher) = Fetcher::new(&name) else {
                for job in &jobs {
                    self.db.details_timed_out(job)?;
                }
                continue;
            };
            log::info!(
                "fetching the details of {} domain(s) from `{}`",
                jobs.len(),
                shown_command(&name)
            );
            let limits = self.limits();
            self.spawn_worker(name.clone(), move |events, stop| {
                for job in jobs {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let answer = fetcher.details(job.day, &job.domain, limits);
                    if events.send(Event::Details { job, answer }).is_err() {
                        break;
                    }
                }
                let _ = events.send(Event::Idle(name));
            });
        }
        Ok(())
    }

    fn spawn_worker(
        &mut self,
        fetcher: String,
        work: impl FnOnce(Sender<Event>, Arc<AtomicBool>) + Send + 'static,
    ) {
        self.busy.insert(fetcher.clone());
        let events = self.events.0.clone();
        let stop = self.stop.clone();
        let handle = thread::Builder::new()
            .name(format!("fetch {fetcher}"))
            .spawn(move || work(events, stop))
            .expect("threads can be started");
        self.workers.push(handle);
    }

    /// Waits for worker events or the next due time, and stores what the
    /// workers deliver. Returns when the steps should run again: at the
    /// due time, when a worker has finished, or, while fetch results
    /// stream in, every [`BUSY_INTERVAL`] so that reports and deliveries
    /// go on meanwhile.
    fn wait(&mut self) -> Result<(), DbError> {
        let now = self.now();
        let mut wake =
            now + chrono::Duration::from_std(self.cfg.interval_main_loop).unwrap_or_default();
        if let Some(due) = self.db.next_due()? {
            wake = wake.min(due);
        }
        // The new day's fetch jobs start right after midnight.
        let midnight = mailtls_common::clock::next_midnight(now);
        wake = wake.min(midnight + chrono::Duration::seconds(1));
        let mut sleep = (wake - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(10));
        if !self.busy.is_empty() {
            sleep = sleep.min(BUSY_INTERVAL);
        }
        let deadline = Instant::now() + sleep;
        loop {
            match self
                .events
                .1
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(event) => {
                    if self.drain(event)? == Drained::RunSteps {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
            }
        }
    }

    /// Handles `first` and every event already queued, in one transaction.
    fn drain(&mut self, first: Event) -> Result<Drained, DbError> {
        let mut events = vec![first];
        while let Ok(event) = self.events.1.try_recv() {
            events.push(event);
            if events.len() >= 5000 {
                break;
            }
        }
        let mut result = Drained::KeepWaiting;
        let mut to_store = Vec::new();
        for event in events {
            match event {
                Event::Stop => {
                    result = Drained::RunSteps;
                }
                Event::Idle(fetcher) => {
                    self.busy.remove(&fetcher);
                    result = Drained::RunSteps;
                }
                other => to_store.push(other),
            }
        }
        if !to_store.is_empty() {
            let now = self.now();
            let cfg_list = self.cfg.domainlist_retry;
            let cfg_details = self.cfg.domaindetails_retry;
            for event in &to_store {
                if let Event::List {
                    job,
                    fetcher_time: Some(time),
                    ..
                } = event
                {
                    self.check_clock(job, *time, now);
                }
            }
            for event in &to_store {
                let (step, failed) = match event {
                    Event::List { answer, .. } => (
                        FetchStep::DomainList,
                        matches!(answer, ListOutcome::NotReady(_) | ListOutcome::Failed(_)),
                    ),
                    Event::Details { answer, .. } => (
                        FetchStep::DomainDetails,
                        matches!(answer, DetailsAnswer::RetryLater(_)),
                    ),
                    Event::Idle(_) | Event::Stop => unreachable!("handled above"),
                };
                self.metrics.fetch_run(step, failed);
            }
            let mut rng = StdRng::from_rng(&mut self.rng).expect("seeded");
            self.db.in_transaction(|db| {
                for event in to_store {
                    match event {
                        Event::List { job, answer, .. } => {
                            store_list(db, &job, answer, now, cfg_list, &mut rng)?
                        }
                        Event::Details { job, answer } => {
                            store_details(db, &job, answer, now, cfg_details, &mut rng)?
                        }
                        Event::Idle(_) | Event::Stop => unreachable!("handled above"),
                    }
                }
                Ok(())
            })?;
        }
        Ok(result)
    }

    /// Step 4.
    fn create_reports(&mut self) -> Result<(), DbError> {
        let ready = self.db.ready_for_report()?;
        if ready.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let organization = self.cfg.organization.clone();
        let mut made = 0usize;
        for chunk in ready.chunks(REPORTS_PER_TRANSACTION) {
            let now = self.now();
            let maps = &self.cfg.maps;
            let caps = self.cfg.caps;
            let spread = &mut self.spread;
            let rng = &mut self.rng;
            let made_here = self.db.in_transaction(|db| {
                let mut made = Vec::new();
                let fetched_each = db.details_of_each(chunk)?;
                for ((day, domain), fetched) in chunk.iter().zip(fetched_each) {
                    let outcome = make_reports(*day, domain, &fetched, &organization, maps, &caps);
                    for warning in &outcome.warnings {
                        log::warn!("{warning}");
                    }
                    for note in &outcome.notes {
                        log::info!("{note}");
                    }
                    if outcome.reports.is_empty() {
                        log::warn!("no report for {domain} on {day}: none of its data was usable");
                        db.mark_unreportable(*day, domain)?;
                        continue;
                    }
                    for report in outcome.reports {
                        let destinations: Vec<(String, DateTime<Utc>)> = report
                            .destinations
                            .iter()
                            .map(|d| {
                                let wait = spread.next(rng);
                                (
                                    d.clone(),
                                    now + chrono::Duration::from_std(wait).unwrap_or_default(),
                                )
                            })
                            .collect();
                        made.push((*day, domain, report, destinations));
                    }
                }
                let stored: Vec<NewReport> = made
                    .iter()
                    .map(|(day, domain, report, destinations)| NewReport {
                        day: *day,
                        domain,
                        tlsrptrecord: &report.record,
                        report: &report.json,
                        destinations,
                        withheld: &report.withheld,
                    })
                    .collect();
                db.insert_reports(&stored)?;
                for (_, _, report, destinations) in &made {
                    log::info!(
                        "report {} made, {} destination(s): {}",
                        report.report_id,
                        destinations.len(),
                        report.destinations.join(", ")
                    );
                }
                Ok(made.len())
            })?;
            self.metrics.reports_made(made_here);
            made += made_here;
        }
        log::info!(
            "made {made} report(s) for {} domain(s) in {:.3} s",
            ready.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Step 5.
    fn send_due(&mut self) -> Result<(), DbError> {
        let now = self.now();
        let due = self.db.due_deliveries(now)?;
        if due.is_empty() {
            return Ok(());
        }
        let (files, others): (Vec<Delivery>, Vec<Delivery>) = due
            .into_iter()
            .partition(|d| matches!(Target::of(&d.destination), Target::Directory(_)));
        self.store_files(files)?;
        for delivery in others {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            // Recorded before the attempt: if the daemon dies during it,
            // the next start knows (and the attempt's process dies with
            // us, see KillWithParent).
            let now = self.now();
            self.db.delivery_started(&delivery, now)?;
            let outcome = self.deliverer.deliver(&delivery, now);
            let recorded = self.outcome(&delivery, outcome);
            self.db.delivery_finished(&delivery, recorded)?;
        }
        Ok(())
    }

    /// `directory:` deliveries in batches: recorded as started, written,
    /// synced to disk once, recorded as done. Storing is idempotent (same
    /// report, same file), so a batch cut off by a crash is simply stored
    /// again.
    fn store_files(&mut self, files: Vec<Delivery>) -> Result<(), DbError> {
        for batch in files.chunks(FILES_PER_SYNC) {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let now = self.now();
            self.db
                .in_transaction(|db| db.deliveries_started(batch, now))?;
            let batch_started = Instant::now();
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut directories: HashMap<std::path::PathBuf, Directory> = HashMap::new();
            for delivery in batch {
                let Target::Directory(path) = Target::of(&delivery.destination) else {
                    unreachable!("partitioned by scheme")
                };
                let directory = directories
                    .entry(path.clone())
                    .or_insert_with(|| Directory::new(path));
                outcomes.push(self.deliverer.store_unsynced(delivery, directory));
            }
            let written = batch_started.elapsed();
            for (path, directory) in &directories {
                if let Err(err) = directory.sync() {
                    let reason = format!("cannot flush {} to disk: {err}", path.display());
                    for (delivery, outcome) in batch.iter().zip(outcomes.iter_mut()) {
                        if Target::of(&delivery.destination) == Target::Directory(path.clone()) {
                            *outcome = Outcome::RetryLater(reason.clone());
                        }
                    }
                }
            }
            log::debug!(
                "stored {} report file(s): written in {:.3} s, on disk after {:.3} s",
                batch.len(),
                written.as_secs_f64(),
                batch_started.elapsed().as_secs_f64()
            );
            let recorded: Vec<DeliveryOutcome> = batch
                .iter()
                .zip(outcomes)
                .map(|(delivery, outcome)| self.outcome(delivery, outcome))
                .collect();
            let ended: Vec<(&Delivery, DeliveryOutcome)> = batch.iter().zip(recorded).collect();
            self.db
                .in_transaction(|db| db.deliveries_finished(&ended))?;
        }
        Ok(())
    }

    /// Logs an attempt's outcome and decides what to record.
    fn outcome(&mut self, delivery: &Delivery, outcome: Outcome) -> DeliveryOutcome {
        let what = format!(
            "report {} for {} ({}) to {}",
            delivery.r_id, delivery.domain, delivery.day, delivery.destination
        );
        match outcome {
            Outcome::Delivered(text) => {
                log::info!("{what}: delivered: {text}");
                self.metrics.delivery(DeliveryResult::Sent);
                DeliveryOutcome::Sent
            }
            Outcome::Permanent(text) => {
                log::error!("{what}: failed for good, not retried: {text}");
                self.metrics.delivery(DeliveryResult::Failed);
                DeliveryOutcome::Failed
            }
            Outcome::RetryLater(text) => {
                let now = self.now();
                let failed = u64::try_from(delivery.retries).unwrap_or(0) + 1;
                let elapsed = delivery
                    .created
                    .map(|created| (now - created).to_std().unwrap_or_default())
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_secs(u64::from(self.cfg.spread_out_delivery)));
                match self
                    .cfg
                    .delivery_retry
                    .next_wait(&mut self.rng, failed, elapsed)
                {
                    Some(wait) => {
                        let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
                        log::warn!("{what}: attempt {failed} failed, next try at {at}: {text}");
                        self.metrics.delivery(DeliveryResult::Retry);
                        DeliveryOutcome::RetryAt(at)
                    }
                    None => {
                        log::error!("{what}: attempt {failed} failed, giving up: {text}");
                        self.metrics.delivery(DeliveryResult::Failed);
                        DeliveryOutcome::TimedOut
                    }
                }
            }
        }
    }

    /// The upstream's warning about a collector whose clock is off: its
    /// day boundaries are then not ours.
    fn check_clock(&self, job: &FetchJob, fetcher_time: NaiveDateTime, now: DateTime<Utc>) {
        let difference = now.naive_utc() - fetcher_time;
        if difference.num_seconds().unsigned_abs() > self.cfg.max_collectd_timediff.as_secs() {
            log::warn!(
                "the clock of fetcher {} `{}` ({fetcher_time}) is {} s away from ours ({}), more than max_collectd_timediff = {} s: its days do not begin when ours do",
                job.fetcher_index,
                shown_command(&job.fetcher),
                difference.num_seconds(),
                now.naive_utc(),
                self.cfg.max_collectd_timediff.as_secs()
            );
        }
    }

    /// Stores what the workers have already delivered and leaves the rest:
    /// a fetcher run still going is killed with us (KillWithParent), and
    /// its job is still pending in the database for the next start.
    fn shut_down(&mut self) -> Result<(), DbError> {
        self.stop.store(true, Ordering::SeqCst);
        while let Ok(event) = self.events.1.try_recv() {
            self.drain(event)?;
        }
        self.workers.retain(|worker| !worker.is_finished());
        if !self.workers.is_empty() {
            log::info!(
                "{} fetcher run(s) cut off; they are made again at the next start",
                self.workers.len()
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    KeepWaiting,
    RunSteps,
}

/// Makes a running daemon stop (from a signal handler thread).
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    events: Sender<Event>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.events.send(Event::Stop);
    }
}

/// A fetch job's run: bulk first when allowed, the v1 list otherwise or
/// when the fetcher does not answer the bulk request.
fn fetch_list(
    fetcher: &Fetcher,
    job: &FetchJob,
    try_bulk: bool,
    limits: Limits,
    bulk_limits: Limits,
    no_bulk: &std::sync::Mutex<HashSet<String>>,
) -> (ListOutcome, Option<NaiveDateTime>) {
    let list = |answer: ListAnswer| match answer {
        ListAnswer::Ok { domains, header } => {
            (ListOutcome::Domains(domains), Some(header.fetcher_time))
        }
        ListAnswer::NotReady(header) => (
            ListOutcome::NotReady(match header.available_day {
                Some(day) => format!("its newest complete day is {day}"),
                None => "it has no complete day yet".into(),
            }),
            Some(header.fetcher_time),
        ),
        ListAnswer::RetryLater(reason) => (ListOutcome::Failed(reason), None),
    };
    if try_bulk {
        match fetcher.bulk(job.day, bulk_limits) {
            BulkAnswer::Ok { details, header } => {
                return (ListOutcome::Bulk(details), Some(header.fetcher_time))
            }
            BulkAnswer::NotReady(header) => {
                return list(ListAnswer::NotReady(header));
            }
            BulkAnswer::List(answer) => {
                log::info!(
                    "fetcher `{}` ignores --bulk; asking it once per domain",
                    shown_command(&job.fetcher)
                );
                no_bulk
                    .lock()
                    .expect("not poisoned")
                    .insert(job.fetcher.clone());
                return list(answer);
            }
            BulkAnswer::RetryLater(reason) => {
                // Upstream's fetcher refuses the option; the failure may
                // also be passing (a collector that has not rolled over
                // yet), so the next job asks for bulk again: one process
                // more per day.
                let answer = fetcher.domain_list(job.day, limits);
                if matches!(answer, ListAnswer::Ok { .. } | ListAnswer::NotReady(_)) {
                    log::info!(
                        "fetcher `{}` gave no bulk answer ({reason}); asking it once per domain",
                        shown_command(&job.fetcher)
                    );
                    // Upstream's argparse says so plainly: no need to ask
                    // again (and fill its log) every day.
                    if reason.contains("unrecognized arguments: --bulk") {
                        no_bulk
                            .lock()
                            .expect("not poisoned")
                            .insert(job.fetcher.clone());
                    }
                }
                return list(answer);
            }
        }
    }
    list(fetcher.domain_list(job.day, limits))
}

fn retry_or_give_up(
    retries: i64,
    rule: FetchRetry,
    now: DateTime<Utc>,
    rng: &mut StdRng,
) -> Option<DateTime<Utc>> {
    (retries < rule.max_retries).then(|| {
        now + chrono::Duration::from_std(random_wait(rng, rule.min_wait, rule.max_wait))
            .unwrap_or_default()
    })
}

fn store_list(
    db: &mut ReportdDb,
    job: &FetchJob,
    answer: ListOutcome,
    now: DateTime<Utc>,
    rule: FetchRetry,
    rng: &mut StdRng,
) -> Result<(), DbError> {
    let what = format!(
        "fetcher {} `{}` for {}",
        job.fetcher_index,
        shown_command(&job.fetcher),
        job.day
    );
    let reason = match answer {
        ListOutcome::Domains(domains) => {
            let added = db.store_domain_list(job, &domains, now)?;
            log::info!("{what}: {} domain(s) listed ({added} new)", domains.len());
            return Ok(());
        }
        ListOutcome::Bulk(details) => {
            let added = db.store_bulk(job, &details, now)?;
            log::info!(
                "{what}: {} domain(s) with details in one bulk answer ({added} new)",
                details.len()
            );
            return Ok(());
        }
        ListOutcome::NotReady(why) => format!("the day is not ready yet: {why}"),
        ListOutcome::Failed(reason) => reason,
    };
    match retry_or_give_up(job.retries, rule, now, rng) {
        Some(at) => {
            log::warn!(
                "{what} failed in run {}, next try at {at}: {reason}",
                job.retries
            );
            db.fetch_job_retry_at(job, at)
        }
        None => {
            log::error!(
                "{what} failed in run {}, giving up after max_retries_domainlist = {}: {reason}; its data will be missing from the reports",
                job.retries, rule.max_retries
            );
            db.fetch_job_timed_out(job)
        }
    }
}

fn store_details(
    db: &mut ReportdDb,
    job: &DetailsJob,
    answer: DetailsAnswer,
    now: DateTime<Utc>,
    rule: FetchRetry,
    rng: &mut StdRng,
) -> Result<(), DbError> {
    let reason = match answer {
        DetailsAnswer::Ok(policies) => return db.store_details(job, &policies),
        DetailsAnswer::RetryLater(reason) => reason,
    };
    let what = format!(
        "details of {} for {} from fetcher {} `{}`",
        job.domain,
        job.day,
        job.fetcher_index,
        shown_command(&job.fetcher)
    );
    match retry_or_give_up(job.retries, rule, now, rng) {
        Some(at) => {
            log::warn!(
                "{what} failed in run {}, next try at {at}: {reason}",
                job.retries
            );
            db.details_retry_at(job, at)
        }
        None => {
            log::error!(
                "{what} failed in run {}, giving up after max_retries_domaindetails = {}: {reason}; the report is made without them",
                job.retries, rule.max_retries
            );
            db.details_timed_out(job)
        }
    }
}
