//! The collector's counters for Prometheus (`metrics_listen`), shared by its
//! threads. Each is an atomic: the receiver adds one number per `recvmmsg`
//! call and never waits; the aggregator and the committer count what they
//! do; a scrape only reads.
//!
//! The kernel's refusals cannot be counted here. A unix datagram socket
//! does not drop what does not fit into its queue (so `SO_RXQ_OVFL` has
//! nothing to report for it): the sender's `send` fails with `EAGAIN`
//! instead, and libtlsrpt, which sends without blocking, loses the
//! datagram on the MTA's side.

use std::sync::atomic::{AtomicU64, Ordering};

use mailtls_common::metrics::{registry, text};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric of the collector, registered once.
pub struct CollectdMetrics {
    registry: Registry,
    /// Datagrams read from the socket since start (not exported: it is the
    /// sum of the outcomes and the waiting ones).
    received: AtomicU64,
    /// Counted datagrams whose counters are in every store.
    committed: AtomicU64,
    counted: IntCounter,
    invalid: IntCounter,
    waiting: IntGauge,
    commits: IntCounter,
    commit_failures: IntCounter,
    commit_duration: Histogram,
}

impl Default for CollectdMetrics {
    fn default() -> Self {
        CollectdMetrics::new()
    }
}

impl CollectdMetrics {
    pub fn new() -> CollectdMetrics {
        let datagrams = IntCounterVec::new(
            Opts::new(
                "tlsrpt_collectd_datagrams_total",
                "Datagrams read from the socket since start, by outcome: counted, or invalid \
                 (refused, not counted)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let waiting = IntGauge::new(
            "tlsrpt_collectd_datagrams_waiting",
            "Datagrams read but not yet in every database (in memory, or not yet parsed)",
        )
        .expect("valid metric");
        let commits = IntCounter::new(
            "tlsrpt_collectd_commits_total",
            "Successful writes of counters (and rollovers) to a database",
        )
        .expect("valid metric");
        let commit_failures = IntCounter::new(
            "tlsrpt_collectd_commit_failures_total",
            "Failed writes to a database; the counters stay in memory and the write is retried",
        )
        .expect("valid metric");
        let commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tlsrpt_collectd_commit_duration_seconds",
                "Time a successful write of counters to a database took (one transaction; with a \
                 PostgreSQL store, the round trips to the server)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        CollectdMetrics {
            registry: registry(vec![
                Box::new(commit_duration.clone()),
                Box::new(datagrams.clone()),
                Box::new(waiting.clone()),
                Box::new(commits.clone()),
                Box::new(commit_failures.clone()),
            ]),
            received: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            counted: datagrams.with_label_values(&["counted"]),
            invalid: datagrams.with_label_values(&["invalid"]),
            waiting,
            commits,
            commit_failures,
            commit_duration,
        }
    }

    /// The receiver read `n` datagrams.
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// The aggregator counted `n` datagrams.
    pub fn counted(&self, n: u64) {
        self.counted.inc_by(n);
    }

    /// The aggregator refused `n` invalid datagrams.
    pub fn invalid(&self, n: u64) {
        self.invalid.inc_by(n);
    }

    /// The committer wrote to a database.
    pub fn commit_succeeded(&self, took: std::time::Duration) {
        self.commits.inc();
        self.commit_duration.observe(took.as_secs_f64());
    }

    /// A write to a database failed.
    pub fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    /// The committer: `datagrams` counted datagrams are in every store now.
    pub fn committed_everywhere(&self, datagrams: u64) {
        self.committed.store(datagrams, Ordering::Release);
    }

    /// Datagrams read but not (yet) in every database: neither written nor
    /// refused. Read in the order that keeps it from going below zero (a
    /// datagram is read before it is refused or written).
    pub fn waiting(&self) -> u64 {
        let committed = self.committed.load(Ordering::Acquire);
        let invalid = self.invalid.get();
        let received = self.received.load(Ordering::Acquire);
        received.saturating_sub(invalid + committed)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.waiting
            .set(i64::try_from(self.waiting()).unwrap_or(i64::MAX));
        text(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_what_was_read_but_is_neither_written_nor_refused() {
        let metrics = CollectdMetrics::new();
        metrics.received(10);
        assert_eq!(metrics.waiting(), 10);
        metrics.invalid(2);
        metrics.counted(8);
        assert_eq!(metrics.waiting(), 8, "counted is not yet written");
        metrics.commit_succeeded(std::time::Duration::from_millis(3));
        metrics.committed_everywhere(8);
        assert_eq!(metrics.waiting(), 0);
        let text = metrics.render();
        for line in [
            "tlsrpt_collectd_datagrams_total{outcome=\"counted\"} 8",
            "tlsrpt_collectd_datagrams_total{outcome=\"invalid\"} 2",
            "tlsrpt_collectd_datagrams_waiting 0",
            "tlsrpt_collectd_commits_total 1",
            "tlsrpt_collectd_commit_failures_total 0",
            "tlsrpt_collectd_commit_duration_seconds_bucket{le=\"0.0025\"} 0",
            "tlsrpt_collectd_commit_duration_seconds_bucket{le=\"0.005\"} 1",
            "tlsrpt_collectd_commit_duration_seconds_count 1",
            "# TYPE tlsrpt_collectd_datagrams_total counter",
            "# TYPE tlsrpt_collectd_datagrams_waiting gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
