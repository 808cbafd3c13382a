//! The report daemon's counters for Prometheus (`metrics_listen`), counted
//! by the main loop as it records each step in the database.

use mailtls_common::metrics::{registry, text};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Which fetch step a fetcher run served; the words of the options that
/// limit its retries (`max_retries_domainlist`, `max_retries_domaindetails`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStep {
    /// A fetch job: the day's domain list, or every domain's details in one
    /// bulk answer.
    DomainList,
    /// One domain's details.
    DomainDetails,
}

impl FetchStep {
    const ALL: [FetchStep; 2] = [FetchStep::DomainList, FetchStep::DomainDetails];

    fn label(self) -> &'static str {
        match self {
            FetchStep::DomainList => "domainlist",
            FetchStep::DomainDetails => "domaindetails",
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    Sent,
    /// Failed, tried again later.
    Retry,
    /// Failed for good, or retried for too long.
    Failed,
}

impl DeliveryResult {
    const ALL: [DeliveryResult; 3] = [
        DeliveryResult::Sent,
        DeliveryResult::Retry,
        DeliveryResult::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            DeliveryResult::Sent => "sent",
            DeliveryResult::Retry => "retry",
            DeliveryResult::Failed => "failed",
        }
    }
}

/// Every metric of the report daemon, registered once.
pub struct ReportdMetrics {
    registry: Registry,
    reports: IntCounter,
    deliveries: IntCounterVec,
    fetch_runs: IntCounterVec,
    fetch_failures: IntCounterVec,
    active: IntGauge,
}

impl Default for ReportdMetrics {
    fn default() -> Self {
        ReportdMetrics::new()
    }
}

impl ReportdMetrics {
    pub fn new() -> ReportdMetrics {
        let reports = IntCounter::new(
            "tlsrpt_reportd_reports_total",
            "Reports made since start (one per domain, day and TLSRPT record)",
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new(
                "tlsrpt_reportd_deliveries_total",
                "Delivery attempts of a report to one destination since start, by outcome: sent, \
                 retry (failed, tried again later) or failed (for good)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let fetch_runs = IntCounterVec::new(
            Opts::new(
                "tlsrpt_reportd_fetch_runs_total",
                "Fetcher runs whose answer was recorded since start, by step: domainlist (a \
                 fetch job: the domain list or a bulk answer) or domaindetails (one domain)",
            ),
            &["step"],
        )
        .expect("valid metric");
        let fetch_failures = IntCounterVec::new(
            Opts::new(
                "tlsrpt_reportd_fetch_failures_total",
                "Fetcher runs that gave no data (failed, timed out, or the day was not complete \
                 yet), by step; each is retried or given up",
            ),
            &["step"],
        )
        .expect("valid metric");
        let active = IntGauge::new(
            "tlsrpt_reportd_active",
            "1 while this daemon does the work, 0 while it stands by (another report daemon on \
             the same PostgreSQL dbname is active, or the database is out of reach)",
        )
        .expect("valid metric");
        // Every series from the start, so that a rate is defined before the
        // first event of its kind.
        for result in DeliveryResult::ALL {
            deliveries.with_label_values(&[result.label()]);
        }
        for step in FetchStep::ALL {
            fetch_runs.with_label_values(&[step.label()]);
            fetch_failures.with_label_values(&[step.label()]);
        }
        ReportdMetrics {
            registry: registry(vec![
                Box::new(reports.clone()),
                Box::new(deliveries.clone()),
                Box::new(fetch_runs.clone()),
                Box::new(fetch_failures.clone()),
                Box::new(active.clone()),
            ]),
            reports,
            deliveries,
            fetch_runs,
            fetch_failures,
            active,
        }
    }

    /// Whether this daemon is the one that works.
    pub fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    /// `n` reports were made and recorded.
    pub fn reports_made(&self, n: usize) {
        self.reports.inc_by(n as u64);
    }

    pub fn delivery(&self, result: DeliveryResult) {
        self.deliveries.with_label_values(&[result.label()]).inc();
    }

    /// A fetcher run's answer for `step` was recorded; `failed` when it
    /// gave no data.
    pub fn fetch_run(&self, step: FetchStep, failed: bool) {
        self.fetch_runs.with_label_values(&[step.label()]).inc();
        if failed {
            self.fetch_failures.with_label_values(&[step.label()]).inc();
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        text(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start_and_counts() {
        let metrics = ReportdMetrics::new();
        let text = metrics.render();
        for line in [
            "tlsrpt_reportd_reports_total 0",
            "tlsrpt_reportd_deliveries_total{outcome=\"retry\"} 0",
            "tlsrpt_reportd_fetch_failures_total{step=\"domaindetails\"} 0",
            "tlsrpt_reportd_active 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        metrics.reports_made(3);
        metrics.delivery(DeliveryResult::Sent);
        metrics.delivery(DeliveryResult::Sent);
        metrics.delivery(DeliveryResult::Failed);
        metrics.fetch_run(FetchStep::DomainList, false);
        metrics.fetch_run(FetchStep::DomainDetails, true);
        metrics.set_active(true);
        let text = metrics.render();
        for line in [
            "tlsrpt_reportd_reports_total 3",
            "tlsrpt_reportd_deliveries_total{outcome=\"sent\"} 2",
            "tlsrpt_reportd_deliveries_total{outcome=\"failed\"} 1",
            "tlsrpt_reportd_deliveries_total{outcome=\"retry\"} 0",
            "tlsrpt_reportd_fetch_runs_total{step=\"domainlist\"} 1",
            "tlsrpt_reportd_fetch_runs_total{step=\"domaindetails\"} 1",
            "tlsrpt_reportd_fetch_failures_total{step=\"domainlist\"} 0",
            "tlsrpt_reportd_fetch_failures_total{step=\"domaindetails\"} 1",
            "tlsrpt_reportd_active 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
