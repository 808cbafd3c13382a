//! The MTA side: datagrams written byte for byte as libtlsrpt 0.5 writes them,
//! and sent the way it sends them (non-blocking; a full queue loses the
//! datagram and the caller only learns an error).
//!
//! libtlsrpt's spacing is irregular (`"d": "x"` but `"policy-type":2`); the
//! collector must not rely on it, but a client that claims to be identical
//! must reproduce it. Checked against `tests/fixtures/datagrams/`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// RFC 8460 section 4.3 policy types with libtlsrpt's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    Tlsa = 1,
    Sts = 2,
    NoPolicyFound = 9,
}

/// RFC 8460 section 4.3 result types with libtlsrpt's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultType {
    StarttlsNotSupported = 201,
    CertificateHostMismatch = 202,
    CertificateNotTrusted = 203,
    CertificateExpired = 204,
    ValidationFailure = 205,
    StsPolicyFetchError = 301,
    StsPolicyInvalid = 302,
    StsWebpkiInvalid = 303,
    TlsaInvalid = 304,
    DnssecInvalid = 305,
    DaneRequired = 306,
}

impl ResultType {
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateNotTrusted,
        ResultType::CertificateExpired,
        ResultType::ValidationFailure,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
    ];
}

/// One failure detail (RFC 8460 section 4.4); absent fields are omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDetail {
    pub result_type: ResultType,
    pub sending_mta_ip: Option<String>,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_mx_helo: Option<String>,
    pub receiving_ip: Option<String>,
    pub additional_information: Option<String>,
    pub failure_reason_code: Option<String>,
}

impl FailureDetail {
    pub fn new(result_type: ResultType) -> FailureDetail {
        FailureDetail {
            result_type,
            sending_mta_ip: None,
            receiving_mx_hostname: None,
            receiving_mx_helo: None,
            receiving_ip: None,
            additional_information: None,
            failure_reason_code: None,
        }
    }
}

/// One evaluated policy of a delivery attempt and its final result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub policy_type: PolicyType,
    /// `None` when the MTA has no policy domain (typical for no-policy-found).
    pub policy_domain: Option<String>,
    pub policy_strings: Vec<String>,
    pub mx_hosts: Vec<String>,
    pub failures: Vec<FailureDetail>,
    /// Final result of the session: true for failure.
    pub failed: bool,
}

impl Policy {
    pub fn new(policy_type: PolicyType) -> Policy {
        Policy {
            policy_type,
            policy_domain: None,
            policy_strings: Vec::new(),
            mx_hosts: Vec::new(),
            failures: Vec::new(),
            failed: false,
        }
    }
}

/// One delivery attempt: what libtlsrpt sends as one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The recipient domain as the MTA saw it.
    pub domain: String,
    /// The TLSRPT record found for it.
    pub record: String,
    pub policies: Vec<Policy>,
}

impl DeliveryAttempt {
    /// The datagram bytes, identical to libtlsrpt's.
    pub fn to_datagram(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"dpv\": \"1\",\"d\": ");
        quote(&mut out, &self.domain);
        out.extend_from_slice(b",\"pr\": ");
        quote(&mut out, &self.record);
        out.extend_from_slice(b",\"policies\":[");
        for (i, policy) in self.policies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_policy(&mut out, policy);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

fn write_policy(out: &mut Vec<u8>, p: &Policy) {
    out.extend_from_slice(format!("{{\"policy-type\":{}", p.policy_type as i32).as_bytes());
    if let Some(domain) = &p.policy_domain {
        out.extend_from_slice(b",\"policy-domain\": ");
        quote(out, domain);
    }
    string_array(out, "policy-string", &p.policy_strings);
    string_array(out, "mx-host", &p.mx_hosts);
    if !p.failures.is_empty() {
        out.extend_from_slice(b",\"failure-details\":[");
        for (i, f) in p.failures.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("{{\"c\":{}", f.result_type as i32).as_bytes());
            for (key, value) in [
                ("s", &f.sending_mta_ip),
                ("n", &f.receiving_mx_hostname),
                ("h", &f.receiving_mx_helo),
                ("r", &f.receiving_ip),
                ("a", &f.additional_information),
                ("f", &f.failure_reason_code),
            ] {
                if let Some(v) = value {
                    out.extend_from_slice(format!(",\"{key}\": ").as_bytes());
                    quote(out, v);
                }
            }
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(
        format!(",\"t\":{},\"f\":{}}}", p.failures.len(), u8::from(p.failed)).as_bytes(),
    );
}

fn string_array(out: &mut Vec<u8>, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    out.extend_from_slice(format!(",\"{key}\":[").as_bytes());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        quote(out, item);
    }
    out.push(b']');
}

/// libtlsrpt's string escaping: the seven short escapes, `\u00xx` for the
/// other control bytes and DEL, every other byte copied through.
pub fn quote(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Sends datagrams to a collector socket without ever blocking, like
/// libtlsrpt: when the collector's queue is full the datagram is lost and
/// `send` returns `ErrorKind::WouldBlock`.
pub struct Sender {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Sender {
    pub fn new(path: impl AsRef<Path>) -> io::Result<Sender> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Sender {
            socket,
            path: path.as_ref().to_path_buf(),
        })
    }

    pub fn send(&self, attempt: &DeliveryAttempt) -> io::Result<()> {
        self.send_raw(&attempt.to_datagram())
    }

    /// Send arbitrary bytes (tests use it for malformed datagrams).
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, &self.path).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_1_matches_libtlsrpt() {
        let attempt = DeliveryAttempt {
            domain: "example.com".into(),
            record: "v=TLSRPTv1;rua=mailto:tlsrpt@example.com".into(),
            policies: vec![Policy::new(PolicyType::NoPolicyFound)],
        };
        assert_eq!(
            String::from_utf8(attempt.to_datagram()).unwrap(),
            r#"{"dpv": "1","d": "example.com","pr": "v=TLSRPTv1;rua=mailto:tlsrpt@example.com","policies":[{"policy-type":9,"t":0,"f":0}]}"#
        );
    }

    #[test]
    fn control_bytes_are_escaped_and_utf8_copied() {
        let mut out = Vec::new();
        quote(&mut out, "a\"\\\u{8}\u{c}\n\r\t\u{1}\u{7f}ä");
        assert_eq!(out, b"\"a\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u007f\xc3\xa4\"");
    }
}
