//! The input of the reports stage: what the fetchers answer for one domain
//! and one day (fetcher protocol v1, `tlsrpt-fetcher DAY DOMAIN`; interfaces
//! spec section 3), summed over all fetchers.
//!
//! ```text
//! {"d": DOMAIN, "policies": {RECORD: {POLICYJSON: {"cntrtotal": n, "cntrfailure": n, "failures": {FAILUREJSON: n}}}}}
//! ```
//!
//! Like upstream's reportd, the sum is keyed by the TLSRPT record, the policy
//! JSON text and the failure JSON text as plain strings: the texts are only
//! decoded when the report is built ([`crate::report`]), so one bad policy
//! text costs that policy, not the whole domain.

use serde_json::{Map, Value};
use thiserror::Error;

use indexmap::IndexMap;

/// The counters of one domain for one day, from one fetcher or summed over
/// several. Records, policies and failures keep the order in which they were
/// first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDetails {
    domain: String,
    records: IndexMap<String, IndexMap<String, PolicyCounters>>,
}

/// Sessions counted for one policy text under one record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PolicyCounters {
    pub(crate) total: u64,
    pub(crate) failed: u64,
    pub(crate) failures: IndexMap<String, u64>,
}

/// A fetcher answer that cannot be used. The caller should treat the fetch
/// as failed (retry or give up) rather than report partial numbers.
#[derive(Debug, Error)]
pub enum DetailsError {
    #[error("the fetcher's answer is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the fetcher's answer has an unexpected shape: {at} {problem}")]
    Shape { at: String, problem: &'static str },
    #[error("the fetcher answered for domain {got:?} instead of {expected:?}")]
    DomainMismatch { expected: String, got: String },
}

impl DomainDetails {
    /// Empty counters for `domain`, to [`merge`](Self::merge) answers into.
    pub fn new(domain: &str) -> DomainDetails {
        DomainDetails {
            domain: domain.to_string(),
            records: IndexMap::new(),
        }
    }

    /// Read one fetcher's answer. Counters must be non-negative integers and
    /// a policy cannot have more failed than total sessions (upstream takes
    /// whatever it gets and may report negative success counts).
    pub fn from_fetcher_json(text: &str) -> Result<DomainDetails, DetailsError> {
        let answer: Value = serde_json::from_str(text)?;
        let answer = answer
            .as_object()
            .ok_or_else(|| shape("the answer", "is not an object"))?;
        let domain = answer
            .get("d")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("\"d\"", "is missing or not a string"))?;
        let records = answer
            .get("policies")
            .and_then(Value::as_object)
            .ok_or_else(|| shape("\"policies\"", "is missing or not an object"))?;
        let mut details = DomainDetails::new(domain);
        for (record, policies) in records {
            let policies = policies
                .as_object()
                .ok_or_else(|| shape(format!("record {record:?}"), "is not an object"))?;
            let per_record = details.records.entry(record.clone()).or_default();
            for (policy, counters) in policies {
                let counters = PolicyCounters::from_json(counters).map_err(|problem| {
                    shape(format!("record {record:?}, policy {policy:?}:"), problem)
                })?;
                per_record.entry(policy.clone()).or_default().add(counters);
            }
        }
        Ok(details)
    }

    /// The domain these counters are for.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Add another fetcher's answer for the same domain.
    pub fn merge(&mut self, other: DomainDetails) -> Result<(), DetailsError> {
        if other.domain != self.domain {
            return Err(DetailsError::DomainMismatch {
                expected: self.domain.clone(),
                got: other.domain,
            });
        }
        for (record, policies) in other.records {
            let per_record = self.records.entry(record).or_default();
            for (policy, counters) in policies {
                per_record.entry(policy).or_default().add(counters);
            }
        }
        Ok(())
    }

    /// Add one collector `finalresults` row: `total` sessions, `failed` of
    /// them failed, under `record` and `policy` (texts as stored).
    pub fn add_sessions(&mut self, record: &str, policy: &str, total: u64, failed: u64) {
        let counters = self.counters(record, policy);
        counters.total = counters.total.saturating_add(total);
        counters.failed = counters.failed.saturating_add(failed.min(total));
    }

    /// Add one collector `failures` row: `count` sessions failed with the
    /// failure text `failure`.
    pub fn add_failure(&mut self, record: &str, policy: &str, failure: &str, count: u64) {
        let sum = self
            .counters(record, policy)
            .failures
            .entry(failure.to_string())
            .or_insert(0);
        *sum = sum.saturating_add(count);
    }

    fn counters(&mut self, record: &str, policy: &str) -> &mut PolicyCounters {
        self.records
            .entry(record.to_string())
            .or_default()
            .entry(policy.to_string())
            .or_default()
    }

    /// Each TLSRPT record with its policy texts and their counters.
    pub(crate) fn records(
        &self,
    ) -> impl Iterator<Item = (&str, &IndexMap<String, PolicyCounters>)> {
        self.records
            .iter()
            .map(|(record, policies)| (record.as_str(), policies))
    }
}

impl PolicyCounters {
    fn from_json(value: &Value) -> Result<PolicyCounters, &'static str> {
        let object = value.as_object().ok_or("is not an object")?;
        let total = count(object, "cntrtotal")?;
        let failed = count(object, "cntrfailure")?;
        if failed > total {
            return Err("counts more failed (cntrfailure) than total (cntrtotal) sessions");
        }
        let mut failures: IndexMap<String, u64> = IndexMap::new();
        let listed = object
            .get("failures")
            .and_then(Value::as_object)
            .ok_or("has no \"failures\" object")?;
        for (failure, n) in listed {
            let n = n
                .as_u64()
                .ok_or("has a failure count that is not a non-negative integer")?;
            let sum = failures.entry(failure.clone()).or_insert(0);
            *sum = sum.saturating_add(n);
        }
        Ok(PolicyCounters {
            total,
            failed,
            failures,
        })
    }

    fn add(&mut self, other: PolicyCounters) {
        self.total = self.total.saturating_add(other.total);
        self.failed = self.failed.saturating_add(other.failed);
        for (failure, n) in other.failures {
            let sum = self.failures.entry(failure).or_insert(0);
            *sum = sum.saturating_add(n);
        }
    }
}

fn count(object: &Map<String, Value>, key: &str) -> Result<u64, &'static str> {
    object
        .get(key)
        .and_then(Value::as_u64)
        .ok_or("has a cntrtotal or cntrfailure that is missing or not a non-negative integer")
}

fn shape(at: impl Into<String>, problem: &'static str) -> DetailsError {
    DetailsError::Shape {
        at: at.into(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (record, policy, total, failed, [(failure, count)])
    type Row = (String, String, u64, u64, Vec<(String, u64)>);

    fn counters_of(details: &DomainDetails) -> Vec<Row> {
        let mut out = Vec::new();
        for (record, policies) in details.records() {
            for (policy, c) in policies.iter() {
                let failures = c
                    .failures
                    .iter()
                    .map(|(f, n)| (f.to_string(), *n))
                    .collect();
                out.push((
                    record.to_string(),
                    policy.to_string(),
                    c.total,
                    c.failed,
                    failures,
                ));
            }
        }
        out
    }

    const RECORD: &str = "v=TLSRPTv1;rua=mailto:r@example.com";

    fn answer(
        domain: &str,
        policy: &str,
        total: u64,
        failed: u64,
        failures: &[(&str, u64)],
    ) -> String {
        let failures: Map<String, Value> = failures
            .iter()
            .map(|(f, n)| (f.to_string(), Value::from(*n)))
            .collect();
        serde_json::json!({"d": domain, "policies": {RECORD: {policy: {
            "cntrtotal": total, "cntrfailure": failed, "failures": failures}}}})
        .to_string()
    }

    #[test]
    fn two_fetchers_are_summed_by_record_policy_and_failure_text() {
        let sts = r#"{"policy-type": 2, "policy-domain": "example.com"}"#;
        let none = r#"{"policy-type": 9}"#;
        let f1 = r#"{"c": 201, "s": "10.0.0.1"}"#;
        let f2 = r#"{"c": 202, "s": "10.0.0.2"}"#;
        let mut sum =
            DomainDetails::from_fetcher_json(&answer("example.com", sts, 5, 2, &[(f1, 2)]))
                .unwrap();
        sum.merge(
            DomainDetails::from_fetcher_json(&answer(
                "example.com",
                sts,
                3,
                3,
                &[(f1, 1), (f2, 2)],
            ))
            .unwrap(),
        )
        .unwrap();
        sum.merge(
            DomainDetails::from_fetcher_json(&answer("example.com", none, 1, 0, &[])).unwrap(),
        )
        .unwrap();
        assert_eq!(
            counters_of(&sum),
            [
                (
                    RECORD.to_string(),
                    sts.to_string(),
                    8,
                    5,
                    vec![(f1.to_string(), 3), (f2.to_string(), 2)]
                ),
                (RECORD.to_string(), none.to_string(), 1, 0, vec![]),
            ]
        );
    }

    #[test]
    fn merging_another_domain_is_refused() {
        let mut a = DomainDetails::new("a.example");
        let b = DomainDetails::from_fetcher_json(&answer("b.example", "{}", 1, 0, &[])).unwrap();
        let err = a.merge(b).unwrap_err();
        assert!(matches!(err, DetailsError::DomainMismatch { .. }), "{err}");
    }

    #[test]
    fn unusable_answers_are_errors() {
        for (text, expected) in [
            ("not json", "not JSON"),
            ("[]", "not an object"),
            (r#"{"policies": {}}"#, "\"d\""),
            (r#"{"d": "x"}"#, "\"policies\""),
            (r#"{"d": "x", "policies": {"r": 1}}"#, "record \"r\""),
            (
                r#"{"d": "x", "policies": {"r": {"p": {"cntrtotal": -1, "cntrfailure": 0, "failures": {}}}}}"#,
                "non-negative",
            ),
            (
                r#"{"d": "x", "policies": {"r": {"p": {"cntrtotal": 1.5, "cntrfailure": 0, "failures": {}}}}}"#,
                "non-negative",
            ),
            (
                r#"{"d": "x", "policies": {"r": {"p": {"cntrtotal": 1, "cntrfailure": 2, "failures": {}}}}}"#,
                "more failed",
            ),
            (
                r#"{"d": "x", "policies": {"r": {"p": {"cntrtotal": 1, "cntrfailure": 0}}}}"#,
                "\"failures\"",
            ),
            (
                r#"{"d": "x", "policies": {"r": {"p": {"cntrtotal": 1, "cntrfailure": 1, "failures": {"f": "1"}}}}}"#,
                "failure count",
            ),
        ] {
            let err = DomainDetails::from_fetcher_json(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
