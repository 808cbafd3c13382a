//! The hot path: empty the socket as fast as datagrams arrive. The receiver
//! only tallies raw datagrams by their bytes (see [`crate::tally`]) and
//! hands a tally to the aggregator when counts are due at the database or
//! the tally is full, a few times a second at most. It does no parsing,
//! touches no disk, takes no lock and never waits for another thread, so even
//! on a busy host it is back in `recv` before the kernel's short queue
//! (`net.unix.max_dgram_qlen`) fills.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver as ChannelReceiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mailtls_common::clock::{next_midnight, Clock};
use mailtls_common::day::Day;

use crate::metrics::CollectdMetrics;
use crate::sched::RealtimeGuard;
use crate::socket::{CollectorSocket, RecvBatch};
use crate::tally::{CommitSchedule, Tally};

/// Signals the receiver reacts to, set by signal handlers. A signal also
/// interrupts the receiver's read, so it is seen at once.
#[derive(Default)]
pub struct SignalFlags {
    pub terminate: Arc<AtomicBool>,
    pub rollover: Arc<AtomicBool>,
    pub reopen_log: Arc<AtomicBool>,
}

/// What the receiver passes on, in order.
#[derive(Debug)]
pub enum Input {
    /// Datagrams to parse and count; `commit` when the counts are due at
    /// the database (see [`CommitSchedule`]).
    Datagrams { tally: Tally, commit: bool },
    /// UTC midnight has passed: what follows belongs to `day`.
    NewDay(Day),
    /// SIGUSR2: development rollover of the counters of `today`.
    DevelopmentRollover { today: Day },
    /// SIGTERM/SIGINT: everything has been passed on.
    Finish,
}

/// Tallies handed over but not yet returned by the aggregator, beyond which
/// a full tally is kept and grows instead: should the aggregator fall behind
/// (starved of CPU), memory then grows only with new distinct datagrams.
const TALLIES_IN_FLIGHT: usize = 4;

pub struct Receiver<'a> {
    socket: CollectorSocket,
    flags: SignalFlags,
    clock: &'a dyn Clock,
    /// Unbounded, so that handing over never blocks; [`TALLIES_IN_FLIGHT`]
    /// bounds what it holds.
    out: Sender<Input>,
    /// Tallies the aggregator has emptied, to be filled again: no
    /// allocation for the map once they exist.
    recycled: ChannelReceiver<Tally>,
    spares: Vec<Tally>,
    in_flight: usize,
    tally: Tally,
    schedule: CommitSchedule,
    day: Day,
    midnight: DateTime<Utc>,
    batch: RecvBatch,
    metrics: Arc<CollectdMetrics>,
    /// Datagrams received since start.
    pub received: u64,
}

impl<'a> Receiver<'a> {
    pub fn new(
        socket: CollectorSocket,
        flags: SignalFlags,
        clock: &'a dyn Clock,
        schedule: CommitSchedule,
        out: Sender<Input>,
        recycled: ChannelReceiver<Tally>,
        metrics: Arc<CollectdMetrics>,
    ) -> Receiver<'a> {
        let now = clock.now();
        Receiver {
            socket,
            flags,
            clock,
            out,
            recycled,
            spares: Vec::new(),
            in_flight: 0,
            tally: Tally::default(),
            schedule,
            day: Day::of(now),
            midnight: next_midnight(now),
            batch: RecvBatch::new(),
            metrics,
            received: 0,
        }
    }

    /// The day the receiver starts in.
    pub fn day(&self) -> Day {
        self.day
    }

    /// Receive until SIGTERM/SIGINT; then remove the socket, read what the
    /// kernel had already accepted, and pass everything on.
    pub fn run(mut self, mut guard: Option<RealtimeGuard>) -> u64 {
        while !self.flags.terminate.load(Ordering::Relaxed) {
            match self.socket.recv_batch(&mut self.batch, true) {
                Ok(n) => {
                    let now = self.take_batch(n);
                    if let Some(guard) = &mut guard {
                        guard.check(now);
                    }
                }
                Err(e) => {
                    log::error!("reading from socket {}: {e}", self.socket.path().display());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if self.flags.reopen_log.swap(false, Ordering::Relaxed) {
                mailtls_common::logging::reopen();
            }
            if self.flags.rollover.swap(false, Ordering::Relaxed) {
                self.hand_over(true);
                let today = self.day;
                self.send(Input::DevelopmentRollover { today });
            }
        }
        log::info!("terminating: removing the socket and reading what is still queued");
        self.socket.unlink();
        while let Ok(n @ 1..) = self.socket.recv_batch(&mut self.batch, false) {
            self.take_batch(n);
        }
        self.check_midnight();
        self.hand_over(true);
        self.send(Input::Finish);
        self.received
    }

    /// The `n` datagrams of one batch (none after a timeout or a signal):
    /// all read at the same instant, so one look at each clock serves them
    /// all. Returns that instant.
    fn take_batch(&mut self, n: usize) -> Instant {
        self.check_midnight();
        self.received += n as u64;
        self.metrics.received(n as u64);
        for i in 0..n {
            let (data, len) = self.batch.get(i);
            self.tally.add(data, len);
        }
        let now = Instant::now();
        self.schedule.arrived(n as u64, now);
        if self.schedule.is_due(now) {
            self.hand_over(true);
        } else if self.tally.is_full() {
            self.take_back_returned();
            if self.in_flight < TALLIES_IN_FLIGHT {
                self.hand_over(false);
            }
        }
        now
    }

    /// At the first moment after UTC midnight, before taking anything new.
    fn check_midnight(&mut self) {
        let now = self.clock.now();
        if now < self.midnight {
            return;
        }
        self.hand_over(true);
        self.day = Day::of(now);
        self.midnight = next_midnight(now);
        self.send(Input::NewDay(self.day));
    }

    /// Pass the tally on (even if empty when `commit`, so that the
    /// aggregator commits what it holds) and start a new one.
    fn hand_over(&mut self, commit: bool) {
        if commit {
            self.schedule.committed(Instant::now());
        }
        if self.tally.is_empty() && !commit {
            return;
        }
        self.take_back_returned();
        let next = self.spares.pop().unwrap_or_default();
        let tally = std::mem::replace(&mut self.tally, next);
        self.in_flight += 1;
        self.send(Input::Datagrams { tally, commit });
    }

    /// Take back the tallies the aggregator has emptied.
    fn take_back_returned(&mut self) {
        while let Ok(tally) = self.recycled.try_recv() {
            self.in_flight -= 1;
            self.spares.push(tally);
        }
    }

    fn send(&self, input: Input) {
        if self.out.send(input).is_err() {
            log::error!("the aggregator has stopped; datagrams cannot be counted");
        }
    }
}
