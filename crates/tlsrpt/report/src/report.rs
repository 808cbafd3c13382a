//! The aggregate report (RFC 8460 section 4): one per report domain, TLSRPT
//! record and UTC day, built from the summed fetcher details, and the names
//! a report travels under (RFC 8460 section 5.3).
//!
//! Differences from upstream's reportd, all deliberate:
//! - `policy-domain` is always present: the report domain when the MTA gave
//!   none (upstream leaves it out for no-policy-found, and receivers such as
//!   parsedmarc reject the report).
//! - Optional fields are left out, never `null`; an empty `policy-string` or
//!   `mx-host` list is left out; only the fields RFC 8460 defines are copied
//!   from the MTA's policy and failure objects.
//! - A policy with an unknown policy-type, or a failure detail with a missing
//!   or unknown result-type code, is skipped and returned as [`SkippedData`]
//!   for the log (upstream crashes on the first and writes a failure detail
//!   without `result-type` for the second). A skipped failure detail's
//!   sessions stay in the policy's `total-failure-session-count`: they did
//!   fail, only the reason cannot be named.
//! - Policies (and their failure details) whose JSON texts differ but mean the
//!   same are merged, e.g. a no-policy-found policy with and without the
//!   report domain as `policy-domain`; upstream lists them twice.
//! - The report-id is a pure function of day, domain and record, see
//!   [`ReportId`]; upstream numbers the reports of a day in its database.
//! - The attachment's unique-id is the record hash of the report-id instead
//!   of upstream's running number.
//! - Keys are written in the order of the RFC's example; the JSON text is
//!   otherwise Python's `json.dumps` text, as upstream sends it.

use mailtls_common::day::Day;
use std::fmt;

use chrono::NaiveTime;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use tlsrpt_datagram::{normalize_domain, pyjson};

use crate::details::DomainDetails;

/// RFC 8460 section 4.3 `policy-type`, with libtlsrpt's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Tlsa,
    Sts,
    NoPolicyFound,
}

impl PolicyType {
    pub fn from_code(code: u64) -> Option<PolicyType> {
        match code {
            1 => Some(PolicyType::Tlsa),
            2 => Some(PolicyType::Sts),
            9 => Some(PolicyType::NoPolicyFound),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyType::Tlsa => "tlsa",
            PolicyType::Sts => "sts",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// RFC 8460 section 4.3 `result-type`, with libtlsrpt's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateNotTrusted,
    CertificateExpired,
    ValidationFailure,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
}

impl ResultType {
    pub fn from_code(code: u64) -> Option<ResultType> {
        Some(match code {
            201 => ResultType::StarttlsNotSupported,
            202 => ResultType::CertificateHostMismatch,
            203 => ResultType::CertificateNotTrusted,
            204 => ResultType::CertificateExpired,
            205 => ResultType::ValidationFailure,
            301 => ResultType::StsPolicyFetchError,
            302 => ResultType::StsPolicyInvalid,
            303 => ResultType::StsWebpkiInvalid,
            304 => ResultType::TlsaInvalid,
            305 => ResultType::DnssecInvalid,
            306 => ResultType::DaneRequired,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
        }
    }
}

/// The organization that sends the reports (reportd options
/// `organization_name` and `contact_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportingOrganization {
    pub name: String,
    pub contact_info: String,
}

/// RFC 8460 section 4.4 report; the JSON fields plus the report domain and
/// record it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The domain the report is about (`TLS-Report-Domain`).
    pub domain: String,
    /// The TLSRPT record whose `rua` receives the report.
    pub record: String,
    pub day: Day,
    pub organization_name: String,
    pub contact_info: String,
    pub report_id: ReportId,
    pub policies: Vec<PolicyReport>,
}

/// One entry of `policies` (RFC 8460 section 4.4); fields in the RFC's
/// order, which is the order they are written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: Policy,
    pub summary: Summary,
    #[serde(default)]
    pub failure_details: Vec<FailureDetail>,
}

/// RFC 8460 section 4.4 `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    pub policy_type: PolicyType,
    /// Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    pub policy_domain: String,
    /// Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

/// RFC 8460 section 4.4 `summary`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total_successful_session_count: u64,
    pub total_failure_session_count: u64,
}

/// One entry of `failure-details` (RFC 8460 section 4.4); `None` fields
/// are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    pub result_type: ResultType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_helo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    pub failed_session_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_information: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

/// RFC 8460 section 4.4 `date-range`: the UTC day's first and last second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    pub start_datetime: String,
    pub end_datetime: String,
}

impl DateRange {
    pub fn of(day: Day) -> DateRange {
        DateRange {
            start_datetime: format!("{day}T00:00:00Z"),
            end_datetime: format!("{day}T23:59:59Z"),
        }
    }
}

/// The report as it is sent (RFC 8460 section 4.4), fields in the order of
/// the RFC's example; also what a received report is read into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReportJson {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

/// The reports of one domain and day, and what had to be left out of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainReports {
    /// One per TLSRPT record that has at least one usable policy.
    pub reports: Vec<Report>,
    pub skipped: Vec<SkippedData>,
}

/// A policy or failure-detail text that could not go into a report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("record {record:?}: {} skipped: {reason}", self.what())]
pub struct SkippedData {
    pub record: String,
    pub policy: String,
    /// `None` when the whole policy was skipped.
    pub failure: Option<String>,
    pub reason: SkipReason,
}

impl SkippedData {
    fn what(&self) -> String {
        match &self.failure {
            Some(failure) => format!("failure detail {failure} of policy {}", self.policy),
            None => format!("policy {}", self.policy),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SkipReason {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("unknown policy-type {0}")]
    UnknownPolicyType(String),
    #[error("unknown result-type code {0}")]
    UnknownResultType(String),
    #[error("{key:?} is not {expected}")]
    BadField {
        key: &'static str,
        expected: &'static str,
    },
}

/// Build the reports of `details` for `day`.
pub fn build_reports(
    day: Day,
    details: &DomainDetails,
    organization: &ReportingOrganization,
) -> DomainReports {
    let domain = details.domain();
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    for (record, policies) in details.records() {
        // Policies (and their failure details) in first-seen order, merged
        // by their decoded content.
        let mut merged: IndexMap<Policy, MergedPolicy> = IndexMap::new();
        for (policy_text, counters) in policies.iter() {
            let skip = |failure: Option<&str>, reason| SkippedData {
                record: record.to_string(),
                policy: policy_text.to_string(),
                failure: failure.map(str::to_string),
                reason,
            };
            let policy = match decode_policy(policy_text, domain) {
                Ok(policy) => policy,
                Err(reason) => {
                    skipped.push(skip(None, reason));
                    continue;
                }
            };
            let entry = merged.entry(policy).or_default();
            let summary = &mut entry.summary;
            summary.total_successful_session_count = summary
                .total_successful_session_count
                .saturating_add(counters.total.saturating_sub(counters.failed));
            summary.total_failure_session_count = summary
                .total_failure_session_count
                .saturating_add(counters.failed);
            for (failure_text, &count) in counters.failures.iter() {
                match decode_failure(failure_text) {
                    Ok(detail) => {
                        let total = entry.failures.entry(detail).or_insert(0);
                        *total = total.saturating_add(count);
                    }
                    Err(reason) => skipped.push(skip(Some(failure_text), reason)),
                }
            }
        }
        if merged.is_empty() {
            continue;
        }
        reports.push(Report {
            domain: domain.to_string(),
            record: record.to_string(),
            day,
            organization_name: organization.name.clone(),
            contact_info: organization.contact_info.clone(),
            report_id: ReportId::new(day, domain, record),
            policies: merged
                .into_iter()
                .map(|(policy, merged)| merged.into_report(policy))
                .collect(),
        });
    }
    DomainReports { reports, skipped }
}

/// The sums of one policy while a report is built.
#[derive(Default)]
struct MergedPolicy {
    summary: Summary,
    /// Failure details by content (with a zero count) to their count.
    failures: IndexMap<FailureDetail, u64>,
}

impl MergedPolicy {
    fn into_report(self, policy: Policy) -> PolicyReport {
        PolicyReport {
            policy,
            summary: self.summary,
            failure_details: self
                .failures
                .into_iter()
                .map(|(detail, count)| FailureDetail {
                    failed_session_count: count,
                    ..detail
                })
                .collect(),
        }
    }
}

/// The MTA's policy object (interfaces spec section 1: `policy-type`,
/// `policy-domain`, `policy-string`, `mx-host`; other keys are not RFC 8460
/// fields and are not copied).
fn decode_policy(text: &str, report_domain: &str) -> Result<Policy, SkipReason> {
    let value: Value = serde_json::from_str(text).map_err(|_| SkipReason::NotAnObject)?;
    let object = value.as_object().ok_or(SkipReason::NotAnObject)?;
    let type_value = object.get("policy-type");
    let policy_type = type_value
        .and_then(Value::as_u64)
        .and_then(PolicyType::from_code)
        .ok_or_else(|| SkipReason::UnknownPolicyType(describe(type_value)))?;
    let policy_domain = optional_string(object, "policy-domain")?
        .filter(|domain| !domain.is_empty())
        .unwrap_or_else(|| report_domain.to_string());
    Ok(Policy {
        policy_type,
        policy_string: string_list(object, "policy-string")?,
        policy_domain,
        mx_host: string_list(object, "mx-host")?,
    })
}

/// The MTA's failure-detail object with libtlsrpt's one-letter keys.
fn decode_failure(text: &str) -> Result<FailureDetail, SkipReason> {
    let value: Value = serde_json::from_str(text).map_err(|_| SkipReason::NotAnObject)?;
    let object = value.as_object().ok_or(SkipReason::NotAnObject)?;
    let code = object.get("c");
    let result_type = code
        .and_then(Value::as_u64)
        .and_then(ResultType::from_code)
        .ok_or_else(|| SkipReason::UnknownResultType(describe(code)))?;
    Ok(FailureDetail {
        result_type,
        sending_mta_ip: optional_string(object, "s")?,
        receiving_mx_hostname: optional_string(object, "n")?,
        receiving_mx_helo: optional_string(object, "h")?,
        receiving_ip: optional_string(object, "r")?,
        failed_session_count: 0,
        additional_information: optional_string(object, "a")?,
        failure_reason_code: optional_string(object, "f")?,
    })
}

fn describe(value: Option<&Value>) -> String {
    value.map_or_else(|| "(missing)".to_string(), pyjson::dumps)
}

/// A string, or `None` for a missing or `null` value.
fn optional_string(
    object: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, SkipReason> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(SkipReason::BadField {
            key,
            expected: "a string",
        }),
    }
}

/// A list of strings; missing or `null` is empty.
fn string_list(object: &Map<String, Value>, key: &'static str) -> Result<Vec<String>, SkipReason> {
    let bad = SkipReason::BadField {
        key,
        expected: "a list of strings",
    };
    match object.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or(bad.clone()))
            .collect(),
        Some(_) => Err(bad),
    }
}

/// RFC 8460 section 4.4 `report-id`: "a unique identifier chosen by the
/// sender". Ours is `DAY_HASH_DOMAIN`, e.g.
/// `2026-11-21_8c5c3d2a7b1e9f04_example.com`, where HASH is the 64-bit
/// FNV-1a hash of the TLSRPT record text in 16 hex digits.
///
/// - A pure function of what defines a report (day, domain, record): a
///   restarted daemon that builds the report again gives it the same id, so
///   receivers can recognise a re-sent report. Upstream's `_idxN_` counts
///   rows in its database and changes when the database does.
/// - Unique: day and domain are written out; two records of one domain on
///   one day differ in the hash (a collision needs two such records whose
///   64-bit hashes agree).
/// - Only characters that RFC 5322 allows in the left part of the subject's
///   `Report-ID: <id@submitter>` (section 5.3: `id-left`, a dot-atom-text for
///   the usual domain names); upstream's `T00:00:00Z` puts colons there.
/// - The hash alone is the attachment file name's unique-id (RFC 8460
///   section 5.3: letters and digits only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportId {
    text: String,
    unique_id: String,
}

impl ReportId {
    pub fn new(day: Day, domain: &str, record: &str) -> ReportId {
        let unique_id = format!("{:016x}", fnv1a_64(record.as_bytes()));
        ReportId {
            text: format!("{}_{unique_id}_{domain}", day),
            unique_id,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The record hash: unique among the reports of one domain and day.
    pub fn unique_id(&self) -> &str {
        &self.unique_id
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// FNV-1a, 64 bit: fixed forever (unlike std's hasher), tiny, and good
/// enough to tell a domain's few records apart.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Report {
    /// The report as it is sent.
    pub fn to_json_report(&self) -> ReportJson {
        ReportJson {
            organization_name: self.organization_name.clone(),
            date_range: DateRange::of(self.day),
            contact_info: self.contact_info.clone(),
            report_id: self.report_id.as_str().to_string(),
            policies: self.policies.clone(),
        }
    }

    /// The report as a JSON value, keys in the order of RFC 8460 section 4.4.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_json_report()).expect("a report is plain data")
    }

    /// The JSON text to compress and send: Python `json.dumps` spelling
    /// (`", "`/`": "` separators, non-ASCII as `\uXXXX`), as upstream sends.
    pub fn to_json_text(&self) -> String {
        pyjson::dumps(&self.to_json())
    }

    /// [`to_json_text`](Self::to_json_text) as the bytes to gzip.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        self.to_json_text().into_bytes()
    }

    /// Unix time of the report's first second (`DAYT00:00:00Z`).
    pub fn begin_timestamp(&self) -> i64 {
        self.day
            .date()
            .and_time(NaiveTime::MIN)
            .and_utc()
            .timestamp()
    }

    /// Unix time of the report's last second (`DAYT23:59:59Z`).
    pub fn end_timestamp(&self) -> i64 {
        self.begin_timestamp() + 24 * 3600 - 1
    }

    /// The attachment's file name (RFC 8460 section 5.3):
    /// `submitter!domain!begin!end!unique-id.json.gz`.
    pub fn attachment_filename(&self, submitter: &str) -> String {
        format!(
            "{submitter}!{}!{}!{}!{}.json.gz",
            self.domain,
            self.begin_timestamp(),
            self.end_timestamp(),
            self.report_id.unique_id()
        )
    }

    /// The mail subject (RFC 8460 section 5.3):
    /// `Report Domain: D Submitter: S Report-ID: <ID@S>`.
    pub fn email_subject(&self, submitter: &str) -> String {
        format!(
            "Report Domain: {} Submitter: {submitter} Report-ID: <{}@{submitter}>",
            self.domain, self.report_id
        )
    }
}

/// `contact_info` has no `@`, so the submitter domain cannot be derived.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("contact_info {0:?} is not a mail address: the submitter domain is its domain part")]
pub struct NoSubmitterDomain(pub String);

/// The submitter (RFC 8460 section 5.3 `TLS-Report-Submitter`) as upstream
/// derives it: the domain part of `contact_info`, lower case, one trailing
/// dot removed. Upstream accepts an empty domain part; we do not.
pub fn submitter_domain(contact_info: &str) -> Result<String, NoSubmitterDomain> {
    match contact_info.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => Ok(normalize_domain(domain)),
        _ => Err(NoSubmitterDomain(contact_info.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RECORD: &str = "v=TLSRPTv1;rua=mailto:tlsrpt@example.com";

    fn day() -> Day {
        Day::from_ymd(2026, 11, 21)
    }

    fn organization() -> ReportingOrganization {
        ReportingOrganization {
            name: "Example Org".into(),
            contact_info: "tlsrpt-noreply@example.net".into(),
        }
    }

    /// (policy text, total, failed, [(failure text, count)])
    type PolicyInput<'a> = (&'a str, u64, u64, &'a [(&'a str, u64)]);

    /// One fetcher answer for example.com.
    fn answer(record: &str, policies: &[PolicyInput]) -> DomainDetails {
        let mut by_policy = Map::new();
        for (policy, total, failed, failures) in policies {
            let failures: Map<String, Value> = failures
                .iter()
                .map(|(f, n)| (f.to_string(), json!(n)))
                .collect();
            by_policy.insert(
                policy.to_string(),
                json!({"cntrtotal": total, "cntrfailure": failed, "failures": failures}),
            );
        }
        let text = json!({"d": "example.com", "policies": {record: by_policy}}).to_string();
        DomainDetails::from_fetcher_json(&text).unwrap()
    }

    fn build(details: &DomainDetails) -> DomainReports {
        build_reports(day(), details, &organization())
    }

    fn only_report(details: &DomainDetails) -> Value {
        let built = build(details);
        assert_eq!(built.reports.len(), 1, "{built:?}");
        built.reports[0].to_json()
    }

    #[test]
    fn json_text_has_rfc_key_order_and_python_spelling() {
        let details = answer(
            RECORD,
            &[(
                r#"{"policy-type": 2, "policy-domain": "example.com", "policy-string": ["version: STSv1", "mode: enforce"], "mx-host": ["mx.example.com"]}"#,
                3,
                1,
                &[(
                    r#"{"f": "x", "a": "\u00e4", "r": "192.0.2.2", "c": 202, "s": "192.0.2.1"}"#,
                    1,
                )],
            )],
        );
        let report = &build(&details).reports[0];
        let id = report.report_id.as_str();
        assert_eq!(
            report.to_json_text(),
            format!(
                "{{\"organization-name\": \"Example Org\", \"date-range\": {{\"start-datetime\": \"2026-11-21T00:00:00Z\", \
                 \"end-datetime\": \"2026-11-21T23:59:59Z\"}}, \"contact-info\": \"tlsrpt-noreply@example.net\", \
                 \"report-id\": \"{id}\", \"policies\": [{{\"policy\": {{\"policy-type\": \"sts\", \
                 \"policy-string\": [\"version: STSv1\", \"mode: enforce\"], \"policy-domain\": \"example.com\", \
                 \"mx-host\": [\"mx.example.com\"]}}, \"summary\": {{\"total-successful-session-count\": 2, \
                 \"total-failure-session-count\": 1}}, \"failure-details\": [{{\"result-type\": \"certificate-host-mismatch\", \
                 \"sending-mta-ip\": \"192.0.2.1\", \"receiving-ip\": \"192.0.2.2\", \"failed-session-count\": 1, \
                 \"additional-information\": \"\\u00e4\", \"failure-reason-code\": \"x\"}}]}}]}}"
            )
        );
        assert_eq!(report.to_json_bytes(), report.to_json_text().into_bytes());
        // What is sent reads back into the same plain types.
        let read: ReportJson = serde_json::from_str(&report.to_json_text()).unwrap();
        assert_eq!(read, report.to_json_report());
        assert_eq!(
            read.policies[0].failure_details[0].result_type,
            ResultType::CertificateHostMismatch
        );
    }

    #[test]
    fn two_fetchers_are_summed_into_one_report() {
        let sts = r#"{"policy-type": 2, "policy-domain": "example.com"}"#;
        let expired = r#"{"c": 204, "n": "mx.example.com"}"#;
        let host = r#"{"c": 202, "n": "mx.example.com"}"#;
        let mut details = answer(RECORD, &[(sts, 10, 2, &[(expired, 2)])]);
        details
            .merge(answer(RECORD, &[(sts, 5, 4, &[(expired, 1), (host, 3)])]))
            .unwrap();
        let report = only_report(&details);
        assert_eq!(
            report["policies"],
            json!([{
                "policy": {"policy-type": "sts", "policy-domain": "example.com"},
                "summary": {"total-successful-session-count": 9, "total-failure-session-count": 6},
                "failure-details": [
                    {"result-type": "certificate-expired", "receiving-mx-hostname": "mx.example.com", "failed-session-count": 3},
                    {"result-type": "certificate-host-mismatch", "receiving-mx-hostname": "mx.example.com", "failed-session-count": 3}
                ]
            }])
        );
    }

    #[test]
    fn one_report_per_record() {
        let none = r#"{"policy-type": 9}"#;
        let mut details = answer(RECORD, &[(none, 1, 0, &[])]);
        details
            .merge(answer(
                "v=TLSRPTv1;rua=https://r.example/",
                &[(none, 2, 0, &[])],
            ))
            .unwrap();
        let built = build(&details);
        let records: Vec<&str> = built.reports.iter().map(|r| r.record.as_str()).collect();
        assert_eq!(records, [RECORD, "v=TLSRPTv1;rua=https://r.example/"]);
        assert_ne!(built.reports[0].report_id, built.reports[1].report_id);
    }

    #[test]
    fn policy_domain_falls_back_to_the_report_domain_and_equal_policies_merge() {
        let details = answer(
            RECORD,
            &[
                (r#"{"policy-type": 9}"#, 2, 1, &[(r#"{"c": 201}"#, 1)]),
                (r#"{"policy-type": 9, "policy-domain": null}"#, 1, 0, &[]),
                (r#"{"policy-type": 9, "policy-domain": ""}"#, 1, 0, &[]),
                (
                    r#"{"policy-domain": "example.com", "policy-type": 9}"#,
                    1,
                    1,
                    &[(r#"{"c": 201}"#, 1)],
                ),
                (
                    r#"{"policy-type": 1, "policy-domain": "other.example"}"#,
                    1,
                    0,
                    &[],
                ),
            ],
        );
        let report = only_report(&details);
        assert_eq!(
            report["policies"],
            json!([
                {
                    "policy": {"policy-type": "no-policy-found", "policy-domain": "example.com"},
                    "summary": {"total-successful-session-count": 3, "total-failure-session-count": 2},
                    "failure-details": [{"result-type": "starttls-not-supported", "failed-session-count": 2}]
                },
                {
                    "policy": {"policy-type": "tlsa", "policy-domain": "other.example"},
                    "summary": {"total-successful-session-count": 1, "total-failure-session-count": 0},
                    "failure-details": []
                }
            ])
        );
    }

    #[test]
    fn optional_fields_are_left_out_never_null() {
        let details = answer(
            RECORD,
            &[(
                r#"{"policy-type": 2, "policy-domain": "example.com", "policy-string": [], "mx-host": null, "t": 1, "f": 1}"#,
                1,
                1,
                &[(
                    r#"{"c": 205, "s": null, "n": null, "h": null, "r": null, "a": null, "f": null, "x": "y"}"#,
                    1,
                )],
            )],
        );
        let report = &build(&details).reports[0];
        assert!(
            !report.to_json_text().contains("null"),
            "{}",
            report.to_json_text()
        );
        assert_eq!(
            report.to_json()["policies"][0]["policy"],
            json!({"policy-type": "sts", "policy-domain": "example.com"})
        );
        assert_eq!(
            report.to_json()["policies"][0]["failure-details"],
            json!([{"result-type": "validation-failure", "failed-session-count": 1}])
        );
    }

    #[test]
    fn result_and_policy_type_names() {
        let names = [
            (201, "starttls-not-supported"),
            (202, "certificate-host-mismatch"),
            (203, "certificate-not-trusted"),
            (204, "certificate-expired"),
            (205, "validation-failure"),
            (301, "sts-policy-fetch-error"),
            (302, "sts-policy-invalid"),
            (303, "sts-webpki-invalid"),
            (304, "tlsa-invalid"),
            (305, "dnssec-invalid"),
            (306, "dane-required"),
        ];
        for (code, name) in names {
            assert_eq!(
                ResultType::from_code(code).map(ResultType::name),
                Some(name)
            );
        }
        for code in [0, 200, 206, 300, 307, 999] {
            assert_eq!(ResultType::from_code(code), None, "{code}");
        }
        let policy_names: Vec<_> = [1, 2, 9, 0, 3]
            .into_iter()
            .map(|c| PolicyType::from_code(c).map(PolicyType::name))
            .collect();
        assert_eq!(
            policy_names,
            [
                Some("tlsa"),
                Some("sts"),
                Some("no-policy-found"),
                None,
                None
            ]
        );
    }

    #[test]
    fn unknown_result_type_skips_the_detail_but_keeps_the_sessions_counted() {
        let policy = r#"{"policy-type": 2, "policy-domain": "example.com"}"#;
        let details = answer(
            RECORD,
            &[(
                policy,
                4,
                4,
                &[
                    (r#"{"c": 999, "s": "192.0.2.1"}"#, 1),
                    (r#"{"s": "192.0.2.1"}"#, 1),
                    (r#"{"c": 204}"#, 2),
                ],
            )],
        );
        let built = build(&details);
        let report = built.reports[0].to_json();
        assert_eq!(
            report["policies"][0]["summary"]["total-failure-session-count"],
            4
        );
        assert_eq!(
            report["policies"][0]["failure-details"],
            json!([{"result-type": "certificate-expired", "failed-session-count": 2}])
        );
        let reasons: Vec<String> = built.skipped.iter().map(|s| s.reason.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "unknown result-type code 999",
                "unknown result-type code (missing)"
            ]
        );
        assert_eq!(
            built.skipped[0].to_string(),
            format!(
                "record {RECORD:?}: failure detail {{\"c\": 999, \"s\": \"192.0.2.1\"}} of policy {policy} skipped: unknown result-type code 999"
            )
        );
    }

    #[test]
    fn unusable_policies_are_skipped_and_a_record_without_policies_gets_no_report() {
        let details = answer(
            RECORD,
            &[
                (r#"{"policy-type": 3}"#, 1, 0, &[]),
                ("[1]", 1, 0, &[]),
                ("not json", 1, 0, &[]),
                (
                    r#"{"policy-type": 2, "mx-host": "mx.example.com"}"#,
                    1,
                    0,
                    &[],
                ),
                (r#"{"policy-type": 2, "policy-domain": 7}"#, 1, 0, &[]),
            ],
        );
        let built = build(&details);
        assert!(built.reports.is_empty());
        let reasons: Vec<String> = built.skipped.iter().map(|s| s.reason.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "unknown policy-type 3",
                "not a JSON object",
                "not a JSON object",
                "\"mx-host\" is not a list of strings",
                "\"policy-domain\" is not a string",
            ]
        );
        assert!(built.skipped.iter().all(|s| s.failure.is_none()));
    }

    #[test]
    fn report_id_is_a_stable_function_of_day_domain_and_record() {
        let id = ReportId::new(day(), "example.com", RECORD);
        assert_eq!(id, ReportId::new(day(), "example.com", RECORD));
        assert_eq!(
            id.as_str(),
            format!("2026-11-21_{}_example.com", id.unique_id())
        );
        assert_eq!(id.unique_id().len(), 16);
        assert!(id.unique_id().bytes().all(|b| b.is_ascii_hexdigit()));
        // FNV-1a 64 reference values: the id must never change between versions.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_ne!(
            id,
            ReportId::new(
                day(),
                "example.com",
                "v=TLSRPTv1; rua=mailto:tlsrpt@example.com"
            )
        );
        assert_ne!(id, ReportId::new(day(), "example.org", RECORD));
        assert_ne!(id, ReportId::new(day().succ(), "example.com", RECORD));
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
        assert!(
            id.as_str().chars().all(atext),
            "dot-atom-text for the subject's id-left"
        );
    }

    #[test]
    fn mail_names_follow_the_upstream_conventions() {
        let details = answer(RECORD, &[(r#"{"policy-type": 9}"#, 1, 0, &[])]);
        let report = &build(&details).reports[0];
        // The upstream sample mail of the same day: 1795219200!1795305599.
        assert_eq!(
            (report.begin_timestamp(), report.end_timestamp()),
            (1795219200, 1795305599)
        );
        let unique = report.report_id.unique_id();
        assert_eq!(
            report.attachment_filename("example.net"),
            format!("example.net!example.com!1795219200!1795305599!{unique}.json.gz")
        );
        assert_eq!(
            report.email_subject("example.net"),
            format!("Report Domain: example.com Submitter: example.net Report-ID: <2026-11-21_{unique}_example.com@example.net>")
        );
    }

    #[test]
    fn submitter_is_the_normalised_domain_of_contact_info() {
        assert_eq!(
            submitter_domain("tlsrpt-noreply@example.net").unwrap(),
            "example.net"
        );
        assert_eq!(submitter_domain("a@b@Example.NET.").unwrap(), "example.net");
        assert!(submitter_domain("no-at-sign").is_err());
        assert!(submitter_domain("trailing@").is_err());
    }
}
