//! The policy server's counters for Prometheus (`metrics_listen`): what
//! Postfix was answered, how policy fetches went, how full the cache is.

use mailtls_common::metrics::{registry, text};
use policyd_policy::Answer;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// The answer kinds of the socketmap protocol, as labels.
const ANSWERS: [&str; 4] = ["ok", "notfound", "temp", "perm"];

/// Every metric of the policy server, registered once.
pub struct Metrics {
    registry: Registry,
    answers: IntCounterVec,
    fetches: IntCounterVec,
    cached: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let answers = IntCounterVec::new(
            Opts::new(
                "policyd_answers_total",
                "Socketmap answers sent to Postfix, by kind: ok (a policy), notfound (Postfix's \
                 own level), temp (lookup failed: the delivery waits), perm (a bad request)",
            ),
            &["answer"],
        )
        .expect("valid metric");
        let fetches = IntCounterVec::new(
            Opts::new(
                "policyd_policy_fetches_total",
                "MTA-STS policy fetches over HTTPS (RFC 8461 section 3.3), by result: ok or failed",
            ),
            &["result"],
        )
        .expect("valid metric");
        let cached = IntGauge::new(
            "policyd_cached_domains",
            "Domains whose policy (or recent fetch failure) is kept in memory",
        )
        .expect("valid metric");
        // Every series from the start, so that a rate is defined at once.
        for answer in ANSWERS {
            answers.with_label_values(&[answer]);
        }
        for result in ["ok", "failed"] {
            fetches.with_label_values(&[result]);
        }
        Metrics {
            registry: registry(vec![
                Box::new(answers.clone()),
                Box::new(fetches.clone()),
                Box::new(cached.clone()),
            ]),
            answers,
            fetches,
            cached,
        }
    }

    pub fn answered(&self, answer: &Answer) {
        let kind = match answer {
            Answer::Ok(_) => "ok",
            Answer::NotFound => "notfound",
            Answer::Temp(_) => "temp",
            Answer::Perm(_) => "perm",
        };
        self.answers.with_label_values(&[kind]).inc();
    }

    pub fn fetched(&self, ok: bool) {
        self.fetches
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn set_cached(&self, domains: usize) {
        self.cached.set(i64::try_from(domains).unwrap_or(i64::MAX));
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
        let metrics = Metrics::new();
        let text = metrics.render();
        for series in [
            "policyd_answers_total{answer=\"ok\"} 0",
            "policyd_answers_total{answer=\"perm\"} 0",
            "policyd_policy_fetches_total{result=\"failed\"} 0",
            "policyd_cached_domains 0",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        metrics.answered(&Answer::NotFound);
        metrics.answered(&Answer::Ok("secure".into()));
        metrics.answered(&Answer::Ok("dane-only".into()));
        metrics.fetched(false);
        metrics.set_cached(3);
        let text = metrics.render();
        for series in [
            "policyd_answers_total{answer=\"ok\"} 2",
            "policyd_answers_total{answer=\"notfound\"} 1",
            "policyd_policy_fetches_total{result=\"failed\"} 1",
            "policyd_cached_domains 3",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
