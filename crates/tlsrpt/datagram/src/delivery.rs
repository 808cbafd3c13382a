//! What a datagram means once read: the [`Delivery`] both readers (the
//! single-pass one in [`crate::fast`] and the reference one in
//! [`crate::parse`]) produce, why one is [`Invalid`], and the rules for
//! domains they both apply.

use serde_json::Value;

use crate::pyjson;

/// The datagram protocol version this collector understands.
pub const PROTOCOL_VERSION: &str = "1";

/// Policy types of the datagram protocol and their RFC 8460 names.
pub const POLICY_TYPES: [(i64, &str); 3] = [(1, "tlsa"), (2, "sts"), (9, "no-policy-found")];

/// One delivery attempt as the collector counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The policy domain, normalised: lower case, one trailing dot removed.
    pub domain: String,
    /// The TLSRPT TXT record the MTA found, verbatim.
    pub record: String,
    pub policies: Vec<PolicyResult>,
    /// Bytes that were not UTF-8 were replaced by U+FFFD (a remote server's
    /// EHLO text can bring them in; libtlsrpt copies them through unchecked).
    pub replaced_invalid_utf8: bool,
    /// A policy whose `t` differs from the number of failure details it carries;
    /// counted anyway, as upstream does, but worth a log line.
    pub failure_count_mismatch: bool,
    /// A `dpv` other than `"1"` (as JSON text): counted anyway, as upstream
    /// does, since a newer libtlsrpt may only have added keys.
    pub unexpected_version: Option<String>,
}

impl Delivery {
    /// What was odd about this counted datagram, as short names for the log.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.replaced_invalid_utf8 {
            out.push("invalid UTF-8 replaced");
        }
        if self.failure_count_mismatch {
            out.push("failure count t differs from the failure details");
        }
        if self.unexpected_version.is_some() {
            out.push("unknown protocol version dpv");
        }
        out
    }
}

/// The result of one evaluated policy within a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// Python `json.dumps` text of the policy without `t`, `f`, `failure-details`.
    pub policy_json: String,
    /// The final result `f`: true when the session failed.
    pub failed: bool,
    /// Python `json.dumps` text of each failure detail, in received order.
    pub failures: Vec<String>,
}

/// Why a datagram cannot be counted. The variant names are the categories in
/// which the collector counts and reports refused datagrams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a JSON object but {0}")]
    NotAnObject(&'static str),
    #[error("missing key {0}")]
    MissingKey(String),
    #[error("key {key} has the wrong type: expected {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("key {key} has an invalid value: {value}")]
    BadValue { key: String, value: String },
}

impl Invalid {
    /// A short, stable category name for counting refused datagrams.
    pub fn category(&self) -> &'static str {
        match self {
            Invalid::Json(_) => "invalid JSON",
            Invalid::NotAnObject(_) => "not an object",
            Invalid::MissingKey(_) => "missing key",
            Invalid::WrongType { .. } => "wrong type",
            Invalid::BadValue { .. } => "invalid value",
        }
    }
}

/// Normalise a domain as upstream does: lower case, and one single trailing
/// dot removed (but not from `..`-endings or the root `.`).
pub fn normalize_domain(domain: &str) -> String {
    let lower = domain.to_lowercase();
    if lower.ends_with('.') && !lower.ends_with("..") && lower != "." {
        lower[..lower.len() - 1].to_string()
    } else {
        lower
    }
}

/// Why `name` is not a DNS name as TLSRPT reports need one (RFC 1035
/// section 2.3.4 lengths; RFC 5890 A-labels for internationalised names):
/// only ASCII letters, digits, `-` and `_` (service labels such as
/// `_smtp._tls`), labels separated by single dots, each of 1 to 63 octets,
/// at most 253 octets in all, not starting with `-`.
///
/// Domains from datagrams and fetchers are strings strangers chose; they end
/// up as fetcher arguments (a fetcher reached through `ssh` runs them through
/// a remote shell), file names and mail addresses, so nothing else passes.
pub fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 octets");
    }
    if name.starts_with('-') {
        return Err("starts with '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("a character other than letters, digits, '-', '_' and '.' (internationalised names as A-labels)");
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > 63)
    {
        return Err("an empty label or one longer than 63 octets");
    }
    Ok(())
}

/// Refuses a datagram's `d` (or a policy's `policy-domain`, `key`) that is
/// not a DNS name (see [`check_dns_name`]). Upstream stores anything.
pub fn check_domain_of(key: &str, domain: &str) -> Result<(), Invalid> {
    check_dns_name(domain).map_err(|_| Invalid::BadValue {
        key: key.into(),
        value: pyjson::dumps(&Value::from(domain)),
    })
}

/// [`check_domain_of`] for the datagram's `d`.
pub fn check_domain(domain: &str) -> Result<(), Invalid> {
    check_domain_of("d", domain)
}
