//! Between receiver and committer: parse each distinct datagram of a
//! [`Tally`] once, count it into an in-memory [`Aggregate`] per day, and
//! hand the counters to the committer when the receiver says they are due,
//! and at UTC midnight together with the rollover request.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailtls_common::day::Day;
use tlsrpt_datagram::{parse, Aggregate, Invalid};

use crate::committer::Request;
use crate::metrics::CollectdMetrics;
use crate::receiver::Input;
use crate::refused::Refused;
use crate::socket::MAX_DATAGRAM;
use crate::tally::Tally;

/// Distinct keys in memory at which counters are handed over at once, to
/// keep memory small on days with very many domains.
const MAX_KEYS_IN_MEMORY: usize = 4_000;

/// Distinct failure details kept per domain, record, policy and day. A
/// remote MX that names itself differently in every session (EHLO) or
/// varies its reason text makes every session a new detail; beyond this
/// many, sessions are still counted in the totals, but their details are
/// dropped (and counted), so memory and the database stay bounded.
pub const MAX_FAILURE_DETAILS: usize = 1_000;

/// How often the aggregator wakes without input, to log summaries.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

pub struct Aggregator {
    input: Receiver<Input>,
    /// Emptied tallies go back to the receiver for reuse.
    recycle: Sender<Tally>,
    committer: Sender<Request>,
    refused: Refused,
    metrics: Arc<CollectdMetrics>,
    batch: Aggregate,
    details: DetailCap,
    day: Day,
    /// Datagrams counted since start.
    pub counted: u64,
}

impl Aggregator {
    pub fn new(
        input: Receiver<Input>,
        recycle: Sender<Tally>,
        committer: Sender<Request>,
        refused: Refused,
        metrics: Arc<CollectdMetrics>,
        day: Day,
    ) -> Aggregator {
        Aggregator {
            input,
            recycle,
            committer,
            refused,
            metrics,
            batch: Aggregate::new(),
            details: DetailCap::default(),
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
                    self.details.new_day();
                    let completed = std::mem::replace(&mut self.day, day);
                    log::info!("UTC midnight: day {completed} is complete");
                    self.send(Request::Rollover { completed });
                }
                Ok(Input::DevelopmentRollover { today }) => {
                    self.hand_over();
                    self.details.new_day();
                    let yesterday = today.pred();
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
        self.details.new_day();
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
                Ok(mut delivery) => {
                    self.details.limit(&mut delivery, n);
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
                    self.batch.add_n(self.day, &delivery, n);
                    self.counted += n;
                    self.metrics.counted(n);
                }
                Err(error) => {
                    self.refused.refuse(&error, &bytes, n);
                    self.metrics.invalid(n);
                }
            }
        }
        if let Some((bytes, sent_len)) = too_long.first {
            let error = Invalid::Json(format!(
                "datagram of {sent_len} bytes is larger than the maximum of {MAX_DATAGRAM}"
            ));
            self.refused.refuse(&error, &bytes, too_long.count);
            self.metrics.invalid(too_long.count);
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

/// The distinct failure details seen today per domain, record and policy
/// (as 64-bit hashes: 8 bytes each), to cap them at
/// [`MAX_FAILURE_DETAILS`].
#[derive(Default)]
struct DetailCap {
    hasher: std::hash::RandomState,
    seen: std::collections::HashMap<u64, std::collections::HashSet<u64>>,
    /// Sessions' details dropped today, per domain.
    dropped: std::collections::BTreeMap<String, u64>,
}

impl DetailCap {
    /// Drops the details of `delivery` (counted `n` times) that would make
    /// a key exceed the cap; the sessions stay in the totals.
    fn limit(&mut self, delivery: &mut tlsrpt_datagram::Delivery, n: u64) {
        use std::hash::BuildHasher;
        for policy in &mut delivery.policies {
            if policy.failures.is_empty() {
                continue;
            }
            let key =
                self.hasher
                    .hash_one((&delivery.domain, &delivery.record, &policy.policy_json));
            let seen = self.seen.entry(key).or_default();
            let before = policy.failures.len();
            policy.failures.retain(|detail| {
                let hash = self.hasher.hash_one(detail);
                seen.contains(&hash) || (seen.len() < MAX_FAILURE_DETAILS && seen.insert(hash))
            });
            let dropped = (before - policy.failures.len()) as u64 * n;
            if dropped > 0 {
                let total = self.dropped.entry(delivery.domain.clone()).or_insert(0);
                if *total == 0 {
                    log::warn!(
                        "{}: more than {MAX_FAILURE_DETAILS} distinct failure details today (a remote server \
                         that names itself or words its errors differently every time?); further sessions are \
                         counted in the totals without their details",
                        delivery.domain
                    );
                }
                *total += dropped;
            }
        }
    }

    /// Logs what was dropped and starts afresh.
    fn new_day(&mut self) {
        for (domain, n) in std::mem::take(&mut self.dropped) {
            log::warn!("{domain}: failure details of {n} session(s) dropped (more than {MAX_FAILURE_DETAILS} distinct)");
        }
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(ehlo: &str) -> tlsrpt_datagram::Delivery {
        let datagram = format!(
            r#"{{"dpv":"1","d":"example.com","pr":"v=TLSRPTv1;rua=mailto:r@example.com","policies":[{{"policy-type":9,"t":1,"f":1,"failure-details":[{{"c":201,"h":"{ehlo}"}}]}}]}}"#
        );
        parse(datagram.as_bytes()).unwrap()
    }

    /// A remote server with a new EHLO name in every session: the totals
    /// count every session, the details stop at the cap, repeats of a kept
    /// detail still count, and a new day starts afresh.
    #[test]
    fn failure_details_are_capped_per_key_and_day() {
        let mut cap = DetailCap::default();
        let mut aggregate = Aggregate::new();
        for i in 0..MAX_FAILURE_DETAILS + 500 {
            let mut d = delivery(&format!("mx{i}.example"));
            cap.limit(&mut d, 2);
            aggregate.add_n(
                mailtls_common::day::Day::parse("2026-12-02").unwrap(),
                &d,
                2,
            );
        }
        let mut again = delivery("mx0.example");
        cap.limit(&mut again, 1);
        aggregate.add_n(
            mailtls_common::day::Day::parse("2026-12-02").unwrap(),
            &again,
            1,
        );
        let counts: Vec<_> = aggregate.iter().collect();
        assert_eq!(counts.len(), 1);
        let (_, c) = counts[0];
        assert_eq!(c.total, 2 * (MAX_FAILURE_DETAILS as u64 + 500) + 1);
        assert_eq!(c.failed, c.total);
        assert_eq!(c.failures.len(), MAX_FAILURE_DETAILS);
        assert_eq!(
            c.failures.values().sum::<u64>(),
            2 * MAX_FAILURE_DETAILS as u64 + 1
        );
        assert_eq!(cap.dropped["example.com"], 1000);
        cap.new_day();
        let mut tomorrow = delivery("mx-new.example");
        cap.limit(&mut tomorrow, 1);
        assert_eq!(tomorrow.policies[0].failures.len(), 1);
    }
}
