//! Pure summaries: one domain's counters of one day ([`DomainDay`]), a
//! whole day ([`DaySummary`]) and one domain over the days ([`DomainHistory`]).

use std::collections::BTreeMap;
use std::str::FromStr;

use mailtls_common::day::Day;
use serde::Serialize;
use tlsrpt_report::details::DomainDetails;
use tlsrpt_report::report::{
    build_reports, PolicyReport, PolicyType, ReportingOrganization, ResultType,
};

/// One recipient domain on one day: RFC 8460 section 4.4 summaries summed
/// over its policies, the policy types seen and the failures by result type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainDay {
    pub domain: String,
    pub successful: u64,
    pub failed: u64,
    /// Sorted, without repeats.
    pub policy_types: Vec<PolicyType>,
    /// Failed sessions by `result-type`, most first.
    pub result_types: Vec<ResultCount>,
    /// Policies and failure texts that could not be decoded (hostile or
    /// damaged rows); their sessions are not in the counts.
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResultCount {
    pub result_type: ResultType,
    pub sessions: u64,
}

impl DomainDay {
    pub fn sessions(&self) -> u64 {
        self.successful.saturating_add(self.failed)
    }

    /// Failed sessions per session, 0 for none.
    pub fn failure_rate(&self) -> f64 {
        failure_rate(self.failed, self.sessions())
    }
}

/// `failed` of `sessions`, 0 for no sessions.
pub fn failure_rate(failed: u64, sessions: u64) -> f64 {
    match sessions {
        0 => 0.0,
        n => failed as f64 / n as f64,
    }
}

/// The policies of one domain on one day, decoded as for its reports.
pub fn policies_of(day: Day, details: &DomainDetails) -> (Vec<PolicyReport>, usize) {
    // The organization only goes into the report's header, not needed here.
    let organization = ReportingOrganization {
        name: String::new(),
        contact_info: String::new(),
    };
    let built = build_reports(day, details, &organization);
    let policies = built
        .reports
        .into_iter()
        .flat_map(|report| report.policies)
        .collect();
    (policies, built.skipped.len())
}

/// What a person reads of one domain's counters of one day.
pub fn domain_day(day: Day, details: &DomainDetails) -> DomainDay {
    let (policies, skipped) = policies_of(day, details);
    let mut successful = 0u64;
    let mut failed = 0u64;
    let mut types = Vec::new();
    let mut results: BTreeMap<&'static str, (ResultType, u64)> = BTreeMap::new();
    for policy in &policies {
        successful = successful.saturating_add(policy.summary.total_successful_session_count);
        failed = failed.saturating_add(policy.summary.total_failure_session_count);
        if !types.contains(&policy.policy.policy_type) {
            types.push(policy.policy.policy_type);
        }
        for detail in &policy.failure_details {
            let entry = results
                .entry(detail.result_type.name())
                .or_insert((detail.result_type, 0));
            entry.1 = entry.1.saturating_add(detail.failed_session_count);
        }
    }
    types.sort_by_key(|t| t.name());
    let mut result_types: Vec<ResultCount> = results
        .into_values()
        .map(|(result_type, sessions)| ResultCount {
            result_type,
            sessions,
        })
        .collect();
    result_types.sort_by_key(|r| std::cmp::Reverse(r.sessions));
    DomainDay {
        domain: details.domain().to_string(),
        successful,
        failed,
        policy_types: types,
        result_types,
        skipped,
    }
}

/// Sessions of one policy type on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTypeCount {
    pub policy_type: PolicyType,
    pub successful: u64,
    pub failed: u64,
}

/// One UTC day of outbound TLS.
#[derive(Debug, Clone, Serialize)]
pub struct DaySummary {
    pub day: Day,
    pub source: crate::DaySource,
    pub successful: u64,
    pub failed: u64,
    /// Sessions by the policy type of their policy, in the order DANE
    /// (tlsa), MTA-STS (sts), no policy.
    pub policy_types: Vec<PolicyTypeCount>,
    /// Every recipient domain, in the order of [`Sort::Failed`].
    pub domains: Vec<DomainDay>,
    /// Undecodable policy and failure texts, over all domains.
    pub skipped: usize,
}

impl DaySummary {
    /// The summary of `domains` (each already a [`domain_day`]).
    pub fn new(
        day: Day,
        source: crate::DaySource,
        mut domains: Vec<DomainDay>,
        by_type: Vec<PolicyTypeCount>,
    ) -> DaySummary {
        Sort::Failed.apply(&mut domains);
        DaySummary {
            day,
            source,
            successful: domains
                .iter()
                .fold(0, |sum, d| sum.saturating_add(d.successful)),
            failed: domains
                .iter()
                .fold(0, |sum, d| sum.saturating_add(d.failed)),
            policy_types: by_type,
            skipped: domains.iter().map(|d| d.skipped).sum(),
            domains,
        }
    }

    pub fn sessions(&self) -> u64 {
        self.successful.saturating_add(self.failed)
    }

    pub fn failure_rate(&self) -> f64 {
        failure_rate(self.failed, self.sessions())
    }
}

/// Sessions by policy type of one domain's policies, added to `totals`.
pub fn add_policy_types(totals: &mut Vec<PolicyTypeCount>, policies: &[PolicyReport]) {
    for policy in policies {
        let policy_type = policy.policy.policy_type;
        let index = match totals.iter().position(|t| t.policy_type == policy_type) {
            Some(index) => index,
            None => {
                totals.push(PolicyTypeCount {
                    policy_type,
                    successful: 0,
                    failed: 0,
                });
                totals.sort_by_key(|t| policy_type_order(t.policy_type));
                totals
                    .iter()
                    .position(|t| t.policy_type == policy_type)
                    .expect("just added")
            }
        };
        let total = &mut totals[index];
        total.successful = total
            .successful
            .saturating_add(policy.summary.total_successful_session_count);
        total.failed = total
            .failed
            .saturating_add(policy.summary.total_failure_session_count);
    }
}

fn policy_type_order(policy_type: PolicyType) -> u8 {
    match policy_type {
        PolicyType::Tlsa => 0,
        PolicyType::Sts => 1,
        PolicyType::NoPolicyFound => 2,
    }
}

/// The orders the day's domain list can be shown in; each puts the worst
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Most failed sessions first.
    #[default]
    Failed,
    /// Highest failure rate first (ties: more failed sessions first).
    Rate,
    /// Most sessions first.
    Sessions,
    /// Alphabetical.
    Domain,
}

impl Sort {
    pub const ALL: [Sort; 4] = [Sort::Failed, Sort::Rate, Sort::Sessions, Sort::Domain];

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Failed => "failed",
            Sort::Rate => "rate",
            Sort::Sessions => "sessions",
            Sort::Domain => "domain",
        }
    }

    pub fn apply(self, domains: &mut [DomainDay]) {
        domains.sort_by(|a, b| self.compare(a, b));
    }

    /// The order of two domains: the worse first, ties by name.
    pub fn compare(self, a: &DomainDay, b: &DomainDay) -> std::cmp::Ordering {
        let by_name = || a.domain.cmp(&b.domain);
        match self {
            Sort::Failed => b
                .failed
                .cmp(&a.failed)
                .then(b.failure_rate().total_cmp(&a.failure_rate()))
                .then_with(by_name),
            Sort::Rate => b
                .failure_rate()
                .total_cmp(&a.failure_rate())
                .then(b.failed.cmp(&a.failed))
                .then_with(by_name),
            Sort::Sessions => b.sessions().cmp(&a.sessions()).then_with(by_name),
            Sort::Domain => by_name(),
        }
    }
}

/// An order that is not one of [`Sort::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown sort order {0:?}: one of failed, rate, sessions, domain")]
pub struct UnknownSort(String);

impl FromStr for Sort {
    type Err = UnknownSort;
    fn from_str(text: &str) -> Result<Sort, UnknownSort> {
        Sort::ALL
            .into_iter()
            .find(|sort| sort.as_str() == text)
            .ok_or_else(|| UnknownSort(text.to_string()))
    }
}

/// One day of one domain's chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainPoint {
    pub day: Day,
    pub successful: u64,
    pub failed: u64,
}

/// One domain over the days kept: the chart's points (oldest first, one per
/// day with sessions), and the policies of one day.
#[derive(Debug, Clone, Serialize)]
pub struct DomainHistory {
    pub domain: String,
    pub days: Vec<DomainPoint>,
    /// The day `policies` are of: the one asked for, else the newest.
    pub day: Option<Day>,
    /// Policies with their summaries and failure details (RFC 8460 section
    /// 4.4), as in the reports.
    pub policies: Vec<PolicyReport>,
    pub skipped: usize,
}
