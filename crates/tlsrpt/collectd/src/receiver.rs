//! The hot path: drain the socket, parse, count into an in-memory aggregate,
//! and hand the aggregate to the committer. Nothing here touches a disk or
//! waits for a lock (the hand-over is a channel send), so the kernel queue is
//! emptied as fast as datagrams arrive whatever the database is doing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tlsrpt_datagram::{parse, Aggregate, Invalid};

use crate::committer::Request;
use crate::refused::Refused;
use crate::socket::{CollectorSocket, MAX_DATAGRAM};
use mailtls_common::clock::{day_string, next_midnight, Clock};

/// Signals the receiver reacts to, set by signal handlers. A signal also
/// interrupts the receiver's read, so it is seen at once.
#[derive(Default)]
pub struct SignalFlags {
    pub terminate: Arc<AtomicBool>,
    pub rollover: Arc<AtomicBool>,
    pub reopen_log: Arc<AtomicBool>,
}

pub struct ReceiverSettings {
    /// Hand the aggregate over after this many datagrams.
    pub max_uncommitted: u64,
    /// Hand the aggregate over at the latest this long after its first datagram.
    pub commit_after: Duration,
}

pub struct Receiver<'a> {
    socket: CollectorSocket,
    flags: SignalFlags,
    clock: &'a dyn Clock,
    committer: Sender<Request>,
    settings: ReceiverSettings,
    refused: Refused,
    batch: Aggregate,
    batch_since: Option<Instant>,
    day: String,
    midnight: DateTime<Utc>,
    buf: Vec<u8>,
    /// Datagrams counted since start.
    pub counted: u64,
}

impl<'a> Receiver<'a> {
    pub fn new(
        socket: CollectorSocket,
        flags: SignalFlags,
        clock: &'a dyn Clock,
        committer: Sender<Request>,
        settings: ReceiverSettings,
        refused: Refused,
    ) -> Receiver<'a> {
        let now = clock.now();
        Receiver {
            socket,
            flags,
            clock,
            committer,
            settings,
            refused,
            batch: Aggregate::new(),
            batch_since: None,
            day: day_string(now.date_naive()),
            midnight: next_midnight(now),
            buf: vec![0; MAX_DATAGRAM],
            counted: 0,
        }
    }

    /// Receive until SIGTERM/SIGINT; then drain what the kernel already
    /// accepted, hand everything over and ask the committer to finish.
    pub fn run(mut self) -> Refused {
        while !self.flags.terminate.load(Ordering::Relaxed) {
            match self.socket.recv(&mut self.buf, true) {
                Ok(Some(len)) => {
                    self.check_midnight();
                    self.count(len);
                }
                Ok(None) => self.check_midnight(),
                Err(e) => {
                    log::error!("reading from socket {}: {e}", self.socket.path().display());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if self
                .batch_since
                .is_some_and(|t| t.elapsed() >= self.settings.commit_after)
            {
                self.hand_over();
            }
            if self.flags.reopen_log.swap(false, Ordering::Relaxed) {
                mailtls_common::logging::reopen();
            }
            if self.flags.rollover.swap(false, Ordering::Relaxed) {
                self.development_rollover();
            }
            self.refused.maybe_summarize(Instant::now());
        }
        log::info!("terminating: removing the socket and reading what is still queued");
        self.socket.unlink();
        while let Ok(Some(len)) = self.socket.recv(&mut self.buf, false) {
            self.check_midnight();
            self.count(len);
        }
        self.check_midnight();
        self.hand_over();
        let _ = self.committer.send(Request::Shutdown);
        log::info!(
            "received and counted {} datagrams since start",
            self.counted
        );
        self.refused.summarize();
        self.refused
    }

    fn count(&mut self, len: usize) {
        if len > self.buf.len() {
            let error = Invalid::Json(format!(
                "datagram of {len} bytes is larger than the maximum of {MAX_DATAGRAM}"
            ));
            self.refused.refuse(&error, &self.buf);
            return;
        }
        let bytes = &self.buf[..len];
        match parse(bytes) {
            Ok(delivery) => {
                if delivery.replaced_invalid_utf8 {
                    self.refused.repaired_utf8(bytes);
                }
                if delivery.failure_count_mismatch {
                    self.refused.count_mismatch(bytes);
                }
                if log::log_enabled!(log::Level::Debug) {
                    log::debug!(
                        "datagram for {}: {}",
                        delivery.domain,
                        String::from_utf8_lossy(bytes)
                    );
                }
                self.batch.add(&self.day, &delivery);
                self.counted += 1;
                if self.batch_since.is_none() {
                    self.batch_since = Some(Instant::now());
                }
                if self.batch.datagrams() >= self.settings.max_uncommitted {
                    self.hand_over();
                }
            }
            Err(error) => self.refused.refuse(&error, bytes),
        }
    }

    /// At the first moment after UTC midnight: hand over the old day's
    /// counters and ask for the rollover, before counting anything new.
    fn check_midnight(&mut self) {
        let now = self.clock.now();
        if now < self.midnight {
            return;
        }
        let completed = std::mem::replace(&mut self.day, day_string(now.date_naive()));
        self.midnight = next_midnight(now);
        self.hand_over();
        log::info!("UTC midnight: day {completed} is complete");
        self.send(Request::Rollover { completed });
    }

    fn development_rollover(&mut self) {
        self.hand_over();
        let today = self.day.clone();
        let yesterday = day_string(self.clock.today().pred_opt().expect("date in range"));
        log::info!("SIGUSR2: development rollover, counters of {today} become {yesterday}'s");
        self.send(Request::DevelopmentRollover { today, yesterday });
    }

    fn hand_over(&mut self) {
        self.batch_since = None;
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.send(Request::Counters(batch));
    }

    fn send(&self, request: Request) {
        if self.committer.send(request).is_err() {
            log::error!("the database writer has stopped; counters cannot be saved");
        }
    }
}
