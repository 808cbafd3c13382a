//! The second stage of the PostTLS flow: is a deferred recipient waiting
//! because TLS failed?
//!
//! Postfix keeps, per deferred recipient, the text of the last failure (the
//! `delay_reason` of `postqueue -j`). With mandatory TLS
//! (`smtp_tls_security_level = encrypt` or higher, a `smtp_tls_policy_maps`
//! entry, DANE, MTA-STS through a policy service, or REQUIRETLS) the SMTP
//! client writes a fixed set of texts when it refuses to send. [`classify`]
//! recognises exactly those and sorts everything else into "clearly not TLS"
//! (connection refused, timeouts, DNS failures, replies of the remote
//! server) and "unknown".
//!
//! The texts were taken from the Postfix source (3.x up to the 3.11
//! development line) and `shared/spec/postfix.md`:
//!
//! | kind | text | where |
//! | --- | --- | --- |
//! | [`NotOffered`](TlsFailureKind::NotOffered) | `TLS is required, but was not offered by host HOST[ADDR]` | `src/smtp/smtp_proto.c`, `smtp_helo()` |
//! | [`StartTlsRefused`](TlsFailureKind::StartTlsRefused) | `TLS is required, but host HOST[ADDR] refused to start TLS: REPLY` | `smtp_proto.c`, `smtp_helo()` |
//! | [`TlsUnavailable`](TlsFailureKind::TlsUnavailable) | `TLS is required, but our TLS engine is unavailable`, `TLS is required, but unavailable` | `smtp_proto.c`, `smtp_helo()` |
//! | [`HandshakeFailure`](TlsFailureKind::HandshakeFailure) | `Cannot start TLS: handshake failure` | `smtp_proto.c`, `smtp_start_tls()` |
//! | [`CertificateNotVerified`](TlsFailureKind::CertificateNotVerified) | `Server certificate not verified` | `smtp_proto.c`, `smtp_start_tls()` |
//! | [`CertificateNotTrusted`](TlsFailureKind::CertificateNotTrusted) | `Server certificate not trusted` | `smtp_proto.c` up to Postfix 3.5 (per the spec; current sources only say "not verified") |
//! | [`Dane`](TlsFailureKind::Dane) | `TLSA lookup error for HOST:PORT`, `no TLSA records found`, `non DNSSEC destination`, `TLSA records unusable`, `Verification not possible, MX RRset is insecure` | `src/smtp/smtp_tls_policy.c`, `dane_init()`; `smtp_connect.c` |
//! | [`PolicyLookup`](TlsFailureKind::PolicyLookup) | `client TLS configuration problem` | `smtp_tls_policy.c`, `MARK_INVALID` (policy table lookup error, e.g. an MTA-STS resolver that does not answer, or an invalid policy entry) |
//! | [`RequireTls`](TlsFailureKind::RequireTls) | `REQUIRETLS Failure: sender requested REQUIRETLS, but ...` (3.11: `host H refused to start TLS: R`, `TLS service was not offered by host H`, `no server was found that supports REQUIRETLS. The last attempted server was H`, `no matching/trusted server certificate was found. ...`); `Sender requested REQUIRETLS, but ...` as the spec words it | `smtp_proto.c`, `smtp_helo()`, `smtp_start_tls()` |
//!
//! The queue manager prefixes `delivery temporarily suspended: ` when it
//! stops trying a destination for a while after repeated failures
//! (`src/qmgr/qmgr_defer.c`, `qmgr_defer_recipient()`); the text after it
//! is classified as usual.
//!
//! Matching is anchored at the start of the text and ignores ASCII case:
//! these texts are written by our own SMTP client, so a remote server can
//! never put them at the start (its replies always come as
//! `host HOST said: ...`). Texts that are merely *about* TLS but come from
//! the remote side (`host X said: 530 5.7.0 Must issue a STARTTLS command
//! first`) are not our mandatory-TLS failures and are classified
//! [`Classification::NotTls`].
//!
//! `Temporary lookup error` (`smtp_tls_policy.c`, obsolete
//! `smtp_tls_per_site` table) is deliberately left [`Classification::Unknown`]:
//! the same words come from other lookups, and a wrong "TLS" verdict could
//! offer an unencrypted send for a problem encryption has nothing to do with.

use std::fmt;

/// The text the queue manager puts before the reason of a destination it
/// has stopped trying for a while (`src/qmgr/qmgr_defer.c`,
/// `qmgr_defer_recipient()`).
pub const THROTTLE_PREFIX: &str = "delivery temporarily suspended: ";

/// What a delay reason says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// Delivery was refused because the required TLS could not be had.
    Tls(TlsFailure),
    /// A deferral that has nothing to do with TLS: network, DNS, the remote
    /// server's own replies, ...
    NotTls,
    /// Not recognised. Callers must leave such recipients alone: guessing
    /// "TLS" could offer an unencrypted send for a reason that has nothing to
    /// do with encryption.
    Unknown,
}

/// One TLS failure as read from a delay reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub kind: TlsFailureKind,
    /// The server as Postfix names it, `name[address]` (or `name:port` for a
    /// TLSA lookup error), when the text names one.
    pub host: Option<String>,
    /// The text came with [`THROTTLE_PREFIX`]: Postfix has suspended
    /// deliveries to this destination for a while, so the failure is older
    /// than the last scan may suggest.
    pub throttled: bool,
}

/// The kinds of mandatory-TLS failure Postfix reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsFailureKind {
    /// The server does not offer STARTTLS (RFC 3207).
    NotOffered,
    /// The server offered STARTTLS but answered the command with an error.
    StartTlsRefused,
    /// The TLS handshake failed (protocol versions, ciphers, a broken
    /// server, or a middlebox).
    HandshakeFailure,
    /// The certificate did not match the name, the DANE TLSA records, the
    /// MTA-STS policy or the fingerprint required for the destination.
    CertificateNotVerified,
    /// The certificate chain was not trusted (Postfix <= 3.5 wording).
    CertificateNotTrusted,
    /// Our own TLS engine could not be used: a problem on our side.
    TlsUnavailable,
    /// DANE (RFC 7672) could not be used with a `dane-only` policy: TLSA
    /// lookup failure, no or unusable TLSA records, no DNSSEC.
    Dane,
    /// The TLS policy for the destination could not be determined: a policy
    /// table or MTA-STS (RFC 8461) resolver lookup failed, or the policy
    /// entry is invalid. A problem on our side.
    PolicyLookup,
    /// The sender asked for REQUIRETLS (RFC 8689) and no server could give
    /// verified TLS.
    RequireTls,
}

impl TlsFailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [TlsFailureKind; 9] = [
        TlsFailureKind::NotOffered,
        TlsFailureKind::StartTlsRefused,
        TlsFailureKind::HandshakeFailure,
        TlsFailureKind::CertificateNotVerified,
        TlsFailureKind::CertificateNotTrusted,
        TlsFailureKind::TlsUnavailable,
        TlsFailureKind::Dane,
        TlsFailureKind::PolicyLookup,
        TlsFailureKind::RequireTls,
    ];

    /// A stable snake_case name for databases, JSON and logs. Never change
    /// one: stored rows refer to it.
    pub fn short_name(self) -> &'static str {
        match self {
            TlsFailureKind::NotOffered => "not_offered",
            TlsFailureKind::StartTlsRefused => "starttls_refused",
            TlsFailureKind::HandshakeFailure => "handshake_failure",
            TlsFailureKind::CertificateNotVerified => "certificate_not_verified",
            TlsFailureKind::CertificateNotTrusted => "certificate_not_trusted",
            TlsFailureKind::TlsUnavailable => "tls_unavailable",
            TlsFailureKind::Dane => "dane",
            TlsFailureKind::PolicyLookup => "policy_lookup",
            TlsFailureKind::RequireTls => "requiretls",
        }
    }

    /// The kind of a [`short_name`](TlsFailureKind::short_name), for reading
    /// stored rows back.
    pub fn from_short_name(name: &str) -> Option<TlsFailureKind> {
        TlsFailureKind::ALL
            .into_iter()
            .find(|k| k.short_name() == name)
    }

    /// One sentence a sender without technical background understands: what
    /// went wrong, without jargon. Used in notifications and on the
    /// confirmation page.
    pub fn plain_words(self) -> &'static str {
        match self {
            TlsFailureKind::NotOffered => {
                "The recipient's mail server does not support encryption."
            }
            TlsFailureKind::StartTlsRefused => {
                "The recipient's mail server offers encryption but refused to use it for this message."
            }
            TlsFailureKind::HandshakeFailure => {
                "Our mail server and the recipient's mail server could not agree on a way to encrypt the message."
            }
            TlsFailureKind::CertificateNotVerified => {
                "The recipient's mail server could not prove that it is the right server for this address."
            }
            TlsFailureKind::CertificateNotTrusted => {
                "The recipient's mail server could not show a trustworthy proof of its identity."
            }
            TlsFailureKind::TlsUnavailable => {
                "Encryption is not working on our own mail server at the moment."
            }
            TlsFailureKind::Dane => {
                "The security records that the recipient's domain publishes for encrypted mail are missing or could not be checked."
            }
            TlsFailureKind::PolicyLookup => {
                "Our mail server could not find out which encryption rules apply to the recipient's domain."
            }
            TlsFailureKind::RequireTls => {
                "The message was marked \"encrypted delivery required\", and no server of the recipient could guarantee that."
            }
        }
    }
}

impl fmt::Display for TlsFailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// How a TLS failure text is laid out.
enum Shape {
    /// The whole reason is this text.
    Exact(&'static str),
    /// The text, then the server.
    HostAfter(&'static str),
    /// The text, the server, the second text, then anything (the reply).
    HostBetween(&'static str, &'static str),
    /// The text, then a REQUIRETLS explanation that may name the server.
    RequireTls(&'static str),
}

/// The mandatory-TLS failure texts of the Postfix SMTP client (see the
/// crate documentation for where each one comes from).
const TLS_RULES: &[(Shape, TlsFailureKind)] = &[
    (
        Shape::HostAfter("TLS is required, but was not offered by host "),
        TlsFailureKind::NotOffered,
    ),
    (
        Shape::HostBetween("TLS is required, but host ", " refused to start TLS: "),
        TlsFailureKind::StartTlsRefused,
    ),
    (
        Shape::Exact("TLS is required, but our TLS engine is unavailable"),
        TlsFailureKind::TlsUnavailable,
    ),
    (
        Shape::Exact("TLS is required, but unavailable"),
        TlsFailureKind::TlsUnavailable,
    ),
    (
        Shape::Exact("Cannot start TLS: handshake failure"),
        TlsFailureKind::HandshakeFailure,
    ),
    (
        Shape::Exact("Server certificate not verified"),
        TlsFailureKind::CertificateNotVerified,
    ),
    (
        Shape::Exact("Server certificate not trusted"),
        TlsFailureKind::CertificateNotTrusted,
    ),
    (
        Shape::HostAfter("TLSA lookup error for "),
        TlsFailureKind::Dane,
    ),
    (Shape::Exact("no TLSA records found"), TlsFailureKind::Dane),
    (Shape::Exact("non DNSSEC destination"), TlsFailureKind::Dane),
    (Shape::Exact("TLSA records unusable"), TlsFailureKind::Dane),
    (
        Shape::Exact("Verification not possible, MX RRset is insecure"),
        TlsFailureKind::Dane,
    ),
    (
        Shape::Exact("client TLS configuration problem"),
        TlsFailureKind::PolicyLookup,
    ),
    (
        Shape::RequireTls("REQUIRETLS Failure: sender requested REQUIRETLS, but "),
        TlsFailureKind::RequireTls,
    ),
    (
        Shape::RequireTls("Sender requested REQUIRETLS, but "),
        TlsFailureKind::RequireTls,
    ),
];

/// Deferrals that are certainly not TLS failures, by their opening words
/// (Postfix `src/smtp/smtp_connect.c`, `smtp_addr.c`, `smtp_trouble.c`,
/// `src/dns/dns_lookup.c`), each with a text that must also appear later.
const NOT_TLS_RULES: &[(&str, &str)] = &[
    // connect to HOST[ADDR]:PORT: Connection refused / timed out / ...
    ("connect to ", ""),
    // host HOST[ADDR] said: 450 4.2.0 ... (the remote server's reply)
    ("host ", " said: "),
    // host HOST[ADDR] refused to talk to me: 554 ... (greeting rejected)
    ("host ", " refused to talk to me"),
    ("lost connection with ", " while "),
    ("conversation with ", " timed out while "),
    ("Host or domain name not found", ""),
    ("Name service error for ", ""),
    ("unable to look up host ", ""),
    ("mail for ", " loops back to myself"),
];

/// Classify one delay reason.
pub fn classify(delay_reason: &str) -> Classification {
    let mut text = delay_reason;
    let mut throttled = false;
    // Postfix writes the prefix once; stripping every repetition keeps the
    // verdict on the reason itself whatever wrote the text.
    while let Some(rest) = strip_prefix_ignore_case(text, THROTTLE_PREFIX) {
        text = rest;
        throttled = true;
    }
    for (shape, kind) in TLS_RULES {
        if let Some(host) = match_shape(shape, text) {
            return Classification::Tls(TlsFailure {
                kind: *kind,
                host,
                throttled,
            });
        }
    }
    let not_tls = NOT_TLS_RULES.iter().any(|(start, later)| {
        strip_prefix_ignore_case(text, start)
            .is_some_and(|rest| find_ignore_case(rest, later).is_some())
    });
    if not_tls {
        Classification::NotTls
    } else {
        Classification::Unknown
    }
}

/// `None`: the text has another shape. `Some(host)`: it has this one, and
/// `host` is the server it names, if it names one plausibly.
fn match_shape(shape: &Shape, text: &str) -> Option<Option<String>> {
    match *shape {
        Shape::Exact(whole) => text.trim_end().eq_ignore_ascii_case(whole).then_some(None),
        Shape::HostAfter(start) => strip_prefix_ignore_case(text, start).map(host_name),
        Shape::HostBetween(start, middle) => {
            let rest = strip_prefix_ignore_case(text, start)?;
            let end = find_ignore_case(rest, middle)?;
            Some(host_name(&rest[..end]))
        }
        Shape::RequireTls(start) => strip_prefix_ignore_case(text, start).map(require_tls_host),
    }
}

/// The server named in the rest of a REQUIRETLS text:
/// `but host H refused to start TLS: ...`,
/// `but TLS service was not offered by host H`,
/// `... The last attempted server was H`.
fn require_tls_host(rest: &str) -> Option<String> {
    if let Some(after) = strip_prefix_ignore_case(rest, "host ") {
        let end = find_ignore_case(after, " refused to start TLS")?;
        return host_name(&after[..end]);
    }
    for marker in [" offered by host ", "The last attempted server was "] {
        if let Some(at) = find_ignore_case(rest, marker) {
            return host_name(&rest[at + marker.len()..]);
        }
    }
    None
}

/// A server name as Postfix prints it: one word. Anything else is not
/// trusted as a name (it would end up in a mail to the sender).
fn host_name(text: &str) -> Option<String> {
    let name = text.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| name.to_owned())
}

/// `text` without `prefix`, comparing ASCII case-insensitively. The prefixes
/// are ASCII, so the match ends on a character boundary.
fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.as_bytes().get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &text[prefix.len()..])
}

/// The byte position of the ASCII `needle` in `haystack`, ignoring ASCII
/// case. A match starts with an ASCII byte, hence on a character boundary.
fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests;
