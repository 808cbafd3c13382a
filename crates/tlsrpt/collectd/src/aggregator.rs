//! Between receiver and committer: parse each distinct datagram of a
//! [`Tally`] once, count it into an in-memory [`Aggregate`] per day, and
//! hand the counters to the committer when the receiver says they are due,
//! and at UTC midnight together with the rollover request.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tlsrpt_datagram::{parse, Aggregate, Invalid};

use crate::committer::Request;
use crate::receiver::Input;
use crate::refused::Refused;
use crate::socket::MAX_DATAGRAM;
use crate::tally::Tally;

/// Distinct keys in memory at which counters are handed over at once, to
/// keep memory small on days with very many domains.
const MAX_KEYS_IN_MEMORY: usize = 4_000;

/// How often the aggregator wakes without input, to log summaries.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

pub struct Aggregator {
    input: Receiver<Input>,
    /// Emptied tallies go back to the receiver for reuse.
    recycle: Sender<Tally>,
    committer: Sender<Request>,
    refused: Refused,
    batch: Aggregate,
    day: String,
    /// Datagrams counted since start.
    pub counted: u64,
}

impl Aggregator {
    pub fn new(
        input: Receiver<Input>,
        recycle: Sender<Tally>,
        committer: Sender<Request>,
        refused: Refused,
        day: String,
    ) -> Aggregator {
        Aggregator {
            input,
            recycle,
            committer,
            refused,
            batch: Aggregate::new(),
            day,
            counted: 0,
        }
    }

    /// Run until the receiver finishes; returns the number of datagrams
    /// counted and the refused-datagram account.
    pub fn run(mut self) -> (u64, Refused) {
        loop {
            match self.input.recv_timeout(IDLE_WAKEUP) {
                Ok(Input::Datagrams { mut tally, commit }) => {
                    self.count(&mut tally);
                    // The receiver may be gone at shutdown; then the tally is dropped.
                    let _ = self.recycle.send(tally);
                    if commit || self.batch.len() >= MAX_KEYS_IN_MEMORY {
                        self.hand_over();
                    }
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
            self.refused.maybe_summarize(Instant::now());
        }
        self.hand_over();
        self.send(Request::Shutdown);
        log::info!("counted {} datagrams since start", self.counted);
        self.refused.summarize();
        (self.counted, self.refused)
    }

    /// Parse each distinct datagram once and count it as often as it came.
    fn count(&mut self, tally: &mut Tally) {
        let (distinct, too_long) = tally.drain();
        for (bytes, n) in distinct {
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
        if let Some((bytes, sent_len)) = too_long.first {
            let error = Invalid::Json(format!(
                "datagram of {sent_len} bytes is larger than the maximum of {MAX_DATAGRAM}"
            ));
            self.refused.refuse(&error, &bytes, too_long.count);
        }
    }

    /// Hand the counters to the committer now.
    fn hand_over(&mut self) {
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
