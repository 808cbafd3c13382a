//! Between receiver and committer: parse the raw datagrams, count them into
//! an in-memory [`Aggregate`] per day, and hand it to the committer after
//! `max_uncommited_datagrams` datagrams or `sockettimeout` seconds, and at
//! UTC midnight together with the rollover request.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use tlsrpt_datagram::{parse, Aggregate, Invalid};

use crate::committer::Request;
use crate::receiver::{Chunk, Input};
use crate::refused::Refused;
use crate::socket::MAX_DATAGRAM;

/// Least time between two hand-overs to the committer. Under load
/// `max_uncommited_datagrams` is reached many times a second; counting on
/// into the same aggregate and handing it over once a second spares the
/// merging and the database most of the work (repeated keys are counted in
/// memory), which on a busy host is CPU the receiver needs.
const MIN_HANDOVER_INTERVAL: Duration = Duration::from_secs(1);

/// Distinct raw datagrams kept unparsed before they are parsed and counted.
/// Most datagrams repeat byte for byte (same domain, same policy, same
/// outcome), so counting raw bytes first parses each of them once.
const RAW_DISTINCT_LIMIT: usize = 4096;

/// Distinct keys in memory at which counters are handed over at once, to
/// keep memory small on days with very many domains.
const MAX_KEYS_IN_MEMORY: usize = 4_000;

pub struct AggregatorSettings {
    /// Hand the aggregate over after this many datagrams.
    pub max_uncommitted: u64,
    /// Hand the aggregate over at the latest this long after its first datagram.
    pub commit_after: Duration,
}

pub struct Aggregator {
    input: Receiver<Input>,
    /// Emptied chunks go back to the receiver for reuse.
    recycle: Sender<Chunk>,
    committer: Sender<Request>,
    settings: AggregatorSettings,
    refused: Refused,
    /// Raw datagrams not parsed yet, with their counts.
    raw: HashMap<Box<[u8]>, u64>,
    raw_datagrams: u64,
    batch: Aggregate,
    batch_since: Option<Instant>,
    last_handover: Instant,
    day: String,
    /// Datagrams counted since start.
    pub counted: u64,
}

impl Aggregator {
    pub fn new(
        input: Receiver<Input>,
        recycle: Sender<Chunk>,
        committer: Sender<Request>,
        settings: AggregatorSettings,
        refused: Refused,
        day: String,
    ) -> Aggregator {
        Aggregator {
            input,
            recycle,
            committer,
            settings,
            refused,
            raw: HashMap::new(),
            raw_datagrams: 0,
            batch: Aggregate::new(),
            batch_since: None,
            last_handover: Instant::now(),
            day,
            counted: 0,
        }
    }

    /// Run until the receiver finishes; returns the number of datagrams
    /// counted and the refused-datagram account.
    pub fn run(mut self) -> (u64, Refused) {
        loop {
            let timeout = match self.batch_since {
                Some(since) => self
                    .settings
                    .commit_after
                    .saturating_sub(since.elapsed())
                    .min(
                        if self.pending_datagrams() >= self.settings.max_uncommitted {
                            Duration::ZERO
                        } else {
                            Duration::MAX
                        },
                    )
                    .max(MIN_HANDOVER_INTERVAL.saturating_sub(self.last_handover.elapsed())),
                None => Duration::from_secs(1),
            };
            match self.input.recv_timeout(timeout) {
                Ok(Input::Datagrams(mut chunk)) => {
                    self.count_chunk(&chunk);
                    chunk.clear();
                    // The receiver may be gone at shutdown; then the chunk is dropped.
                    let _ = self.recycle.send(chunk);
                }
                Ok(Input::NewDay(day)) => {
                    self.hand_over();
                    let completed = std::mem::replace(&mut self.day, day);
                    log::info!("UTC midnight: day {completed} is complete");
                    self.send(Request::Rollover { completed });
                }
                Ok(Input::DevelopmentRollover { today }) => {
                    self.hand_over();
                    let yesterday = chrono::NaiveDate::parse_from_str(&today, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.pred_opt())
                        .map(mailtls_common::clock::day_string)
                        .unwrap_or_else(|| today.clone());
                    log::info!(
                        "SIGUSR2: development rollover, counters of {today} become {yesterday}'s"
                    );
                    self.send(Request::DevelopmentRollover { today, yesterday });
                }
                Ok(Input::Finish) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let full = self.pending_datagrams() >= self.settings.max_uncommitted;
            if full
                || self
                    .batch_since
                    .is_some_and(|t| t.elapsed() >= self.settings.commit_after)
            {
                self.hand_over_when_due();
            }
            self.refused.maybe_summarize(Instant::now());
        }
        self.hand_over();
        self.send(Request::Shutdown);
        log::info!("counted {} datagrams since start", self.counted);
        self.refused.summarize();
        (self.counted, self.refused)
    }

    fn count_chunk(&mut self, chunk: &Chunk) {
        for (bytes, sent_len) in chunk.iter() {
            self.count(bytes, sent_len);
        }
    }

    fn count(&mut self, bytes: &[u8], sent_len: usize) {
        if sent_len > bytes.len() {
            let error = Invalid::Json(format!(
                "datagram of {sent_len} bytes is larger than the maximum of {MAX_DATAGRAM}"
            ));
            self.refused.refuse(&error, bytes, 1);
            return;
        }
        match self.raw.get_mut(bytes) {
            Some(n) => *n += 1,
            None => {
                self.raw.insert(bytes.into(), 1);
            }
        }
        self.raw_datagrams += 1;
        if self.batch_since.is_none() {
            self.batch_since = Some(Instant::now());
        }
        if self.raw.len() >= RAW_DISTINCT_LIMIT {
            self.parse_raw();
        }
        if self.pending_datagrams() >= self.settings.max_uncommitted {
            self.hand_over_when_due();
        }
    }

    fn pending_datagrams(&self) -> u64 {
        self.batch.datagrams() + self.raw_datagrams
    }

    /// Parse each distinct raw datagram once and count it as often as it came.
    fn parse_raw(&mut self) {
        self.raw_datagrams = 0;
        for (bytes, n) in self.raw.drain() {
            match parse(&bytes) {
                Ok(delivery) => {
                    for kind in delivery.warnings() {
                        self.refused.warn(kind, &bytes, n);
                    }
                    if log::log_enabled!(log::Level::Debug) {
                        log::debug!(
                            "{n} datagram(s) for {}: {}",
                            delivery.domain,
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                    self.batch.add_n(&self.day, &delivery, n);
                    self.counted += n;
                }
                Err(error) => self.refused.refuse(&error, &bytes, n),
            }
        }
        if self.batch.len() >= MAX_KEYS_IN_MEMORY {
            self.hand_over();
        }
    }

    /// Hand over unless the last hand-over was less than
    /// [`MIN_HANDOVER_INTERVAL`] ago (then the next timeout does it).
    fn hand_over_when_due(&mut self) {
        if self.last_handover.elapsed() >= MIN_HANDOVER_INTERVAL {
            self.hand_over();
        }
    }

    /// Hand the counters to the committer now.
    fn hand_over(&mut self) {
        if !self.raw.is_empty() {
            self.parse_raw();
        }
        self.batch_since = None;
        self.last_handover = Instant::now();
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
