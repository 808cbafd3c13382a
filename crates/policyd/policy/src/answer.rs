//! The `smtp_tls_policy_maps` answer: a Postfix TLS security level with its
//! options (`postconf(5)`, `smtp_tls_policy_maps`) and, for Postfix 3.10+,
//! the TLSRPT attributes of the applied policy (Postfix `TLSRPT_README`).
//!
//! An enforced MTA-STS policy becomes
//!
//! ```text
//! secure match=mx.example.com:.example.net servername=hostname
//!   policy_type=sts policy_domain=example.com
//!   mx_host_pattern=mx.example.com mx_host_pattern=*.example.net
//!   { policy_string = version: STSv1 } { policy_string = mode: enforce } ...
//! ```
//!
//! (one line), the shape both postfix-mta-sts-resolver (`tlsrpt: true`) and
//! postfix-tlspol send; Postfix <= 3.9 rejects the TLSRPT attributes, hence
//! [`AnswerOptions::tlsrpt`].
//!
//! - `match=`: MTA-STS `*.example.net` matches exactly one label (RFC 8461
//!   section 4.1); Postfix's `.example.net` matches any depth of subdomain
//!   and there is no way to say "one label" in `match=`. Both anchors write
//!   `*.example.net` as `.example.net` (postfix-mta-sts-resolver strips the
//!   `*`, postfix-tlspol drops it); so do we. `mx_host_pattern` keeps the
//!   policy's `*.example.net`, and since Postfix 3.10.5
//!   `smtp_tls_enforce_sts_mx_patterns = yes` makes Postfix itself connect
//!   only to MX hosts matching those patterns exactly.
//! - `servername=hostname`: SNI with the MX host name (RFC 8461 section
//!   4.2 has the certificate checked against it); both anchors send it.
//! - Everything that goes into the answer is checked, never escaped:
//!   Postfix splits the value at white space and commas, and `{ }` group an
//!   attribute whose value has spaces, so a policy line holding `{`, `}` or
//!   a control character (tab included) cannot be carried. Such a policy
//!   gets [`AnswerError::UnsafeForPostfix`] and the caller decides (e.g.
//!   answer without TLSRPT attributes, or treat the policy as invalid).
//!   MX patterns and domains are host names by type, so they are safe.

use std::fmt;

use crate::names::normalize_host;
use crate::netstring::{Answer, MAX_ANSWER_LEN};
use crate::policy::{Mode, MxPattern, StsPolicy};

/// RFC 8460 section 4.3 policy types, as Postfix's `policy_type=` spells
/// them. Only [`PolicyType::Sts`] is ever sent: Postfix fills in `tlsa`
/// itself for DANE and `no-policy-found` when the map says `NOTFOUND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy failures a policy server may hand Postfix in
/// `policy_failure=` (RFC 8460 section 4.3 result types; the set Postfix
/// 3.10 accepts there). Postfix then fails certificate verification, so
/// the delivery is deferred, and reports this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The policy could not be fetched (RFC 8460: `sts-policy-fetch-error`).
    StsPolicyFetchError,
    /// The policy was fetched but is not valid (`sts-policy-invalid`).
    StsPolicyInvalid,
    /// The HTTPS certificate of the policy host did not validate
    /// (`sts-webpki-invalid`).
    StsWebpkiInvalid,
    /// Any other validation failure (`validation-failure`).
    ValidationFailure,
}

impl FailureKind {
    /// The RFC 8460 name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::StsPolicyFetchError => "sts-policy-fetch-error",
            FailureKind::StsPolicyInvalid => "sts-policy-invalid",
            FailureKind::StsWebpkiInvalid => "sts-webpki-invalid",
            FailureKind::ValidationFailure => "validation-failure",
        }
    }

    /// Parses an RFC 8460 name; anything else is `None`.
    pub fn parse(name: &str) -> Option<FailureKind> {
        [
            FailureKind::StsPolicyFetchError,
            FailureKind::StsPolicyInvalid,
            FailureKind::StsWebpkiInvalid,
            FailureKind::ValidationFailure,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Postfix level for a domain with DANE (RFC 7672). DANE takes
/// precedence over MTA-STS (RFC 8461 section 2), so the daemon checks it
/// first. The answer is the level alone: Postfix looks up the TLSA records
/// itself and reports them as `policy_type=tlsa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaneLevel {
    /// `dane`: Postfix uses DANE where it finds usable TLSA records and
    /// falls back to opportunistic TLS where it does not. postfix-tlspol
    /// answers this when only some MX hosts have usable TLSA records.
    Dane,
    /// `dane-only`: DANE or no delivery. postfix-tlspol answers this when
    /// every MX host has usable TLSA records (DNSSEC-validated).
    DaneOnly,
}

impl DaneLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            DaneLevel::Dane => "dane",
            DaneLevel::DaneOnly => "dane-only",
        }
    }
}

/// What to answer for an MTA-STS policy in `mode: testing`. Postfix has no
/// level for "verify, report, but deliver anyway", so each choice gives up
/// something; the daemon picks one after measuring on a real Postfix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestingAnswer {
    /// `NOTFOUND `: Postfix applies `smtp_tls_security_level` and reports
    /// `no-policy-found`. What both anchors do by default
    /// (postfix-mta-sts-resolver: `strict_testing: false`; postfix-tlspol
    /// always). TLSRPT never sees the testing policy.
    NotFound,
    /// `may` with the TLSRPT attributes: Postfix reports `policy_type=sts`
    /// with the policy strings and delivers over opportunistic TLS. Costs:
    /// no certificate is verified, so certificate failures are not
    /// reported; and `may` replaces `smtp_tls_security_level` for the
    /// domain, lowering a site-wide `encrypt` or `dane`. Without TLSRPT
    /// attributes it would only lower the level, so it answers `NOTFOUND `.
    May,
    /// Treat `testing` as `enforce` (postfix-mta-sts-resolver's
    /// `strict_testing: true`): reports and verifies, but defers mail the
    /// domain asked to be delivered anyway.
    Enforce,
}

/// How answers are built; the daemon's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Add the TLSRPT attributes (Postfix 3.10+ only: older versions refuse
    /// the whole answer as "invalid attribute name").
    pub tlsrpt: bool,
    /// The answer for `mode: testing`.
    pub testing: TestingAnswer,
}

/// What the daemon decided for one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The domain has DANE: the level alone.
    Dane(DaneLevel),
    /// An MTA-STS policy in `mode: enforce` for `domain` (the recipient
    /// domain, a host name).
    Sts { domain: String, policy: StsPolicy },
    /// An MTA-STS policy in `mode: testing`; answered per
    /// [`AnswerOptions::testing`].
    StsTesting { domain: String, policy: StsPolicy },
    /// No policy (no record, `mode: none`, or a failed first fetch, RFC
    /// 8461 section 3.3): `NOTFOUND `, so Postfix applies its default level
    /// and reports `no-policy-found` itself. An `OK may` would override a
    /// stricter site-wide level.
    NoPolicy,
    /// Deliberately defer the delivery for a failure of a valid `enforce`
    /// policy and report it: `secure` with the policy's attributes and
    /// `policy_failure=` (Postfix fails verification), or `TEMP` without
    /// TLSRPT attributes. RFC 8461 section 3.3 says a policy that cannot be
    /// fetched, with no valid cached one, means "deliver as if no policy":
    /// that is [`Decision::NoPolicy`], not this.
    Failure {
        domain: String,
        kind: FailureKind,
        policy: StsPolicy,
    },
    /// The lookup failed for now (e.g. DNSSEC lookup timed out): `TEMP`,
    /// Postfix defers and asks again.
    TempFail { reason: String },
}

impl Decision {
    /// The decision for a valid policy of `domain`, by its mode: `enforce`
    /// -> [`Decision::Sts`], `testing` -> [`Decision::StsTesting`], `none`
    /// -> [`Decision::NoPolicy`].
    pub fn from_policy(domain: impl Into<String>, policy: StsPolicy) -> Decision {
        let domain = domain.into();
        match policy.mode() {
            Mode::Enforce => Decision::Sts { domain, policy },
            Mode::Testing => Decision::StsTesting { domain, policy },
            Mode::None => Decision::NoPolicy,
        }
    }

    /// [`Decision::from_policy`] for a domain whose MX hosts are `mx_hosts`
    /// (the domain itself when it has no MX record, RFC 5321 section 5.1):
    /// an `enforce` policy that none of them matches is a
    /// [`FailureKind::ValidationFailure`]. RFC 8461 section 5 forbids
    /// delivery to an MX host that fails MX matching (section 4.1), so
    /// every host fails; Postfix would check only the certificate against
    /// `match=`, which such a host may still pass. `testing` stays as it
    /// is: there the failure is only to be reported, which Postfix cannot
    /// do while delivering.
    pub fn with_mx_hosts(
        domain: impl Into<String>,
        policy: StsPolicy,
        mx_hosts: &[String],
    ) -> Decision {
        let domain = domain.into();
        let any_matches = if mx_hosts.is_empty() {
            policy.matches_mx(&domain)
        } else {
            mx_hosts.iter().any(|host| policy.matches_mx(host))
        };
        match Decision::from_policy(domain, policy) {
            Decision::Sts { domain, policy } if !any_matches => Decision::Failure {
                domain,
                kind: FailureKind::ValidationFailure,
                policy,
            },
            decision => decision,
        }
    }
}

/// Why no answer could be built; the caller decides what to send (usually
/// [`Decision::NoPolicy`] or `TEMP`), never a guess from here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("a {variant} decision holds a policy in mode {mode}")]
    ModeMismatch { variant: &'static str, mode: Mode },
    #[error("policy domain {0:?} is not a host name")]
    BadDomain(String),
    #[error("policy line {line} holds a brace or control character Postfix cannot carry")]
    UnsafeForPostfix { line: usize },
    #[error("answer of {len} bytes is over Postfix's limit of {MAX_ANSWER_LEN}")]
    TooLong { len: usize },
}

/// The answer to Postfix for `decision`.
pub fn postfix_answer(decision: &Decision, options: &AnswerOptions) -> Result<Answer, AnswerError> {
    let value = match decision {
        Decision::Dane(level) => level.as_str().to_string(),
        Decision::NoPolicy => return Ok(Answer::NotFound),
        Decision::TempFail { reason } => return Ok(Answer::Temp(reason.clone())),
        Decision::Sts { domain, policy } => {
            expect_mode("Sts", policy, Mode::Enforce)?;
            secure(domain, policy, options.tlsrpt)?
        }
        Decision::StsTesting { domain, policy } => {
            expect_mode("StsTesting", policy, Mode::Testing)?;
            match options.testing {
                TestingAnswer::NotFound => return Ok(Answer::NotFound),
                TestingAnswer::May if !options.tlsrpt => return Ok(Answer::NotFound),
                TestingAnswer::May => format!(
                    "may {}",
                    tlsrpt_attributes(domain, policy, MxHostPatterns::Send)?
                ),
                TestingAnswer::Enforce => secure(domain, policy, options.tlsrpt)?,
            }
        }
        Decision::Failure {
            domain,
            kind,
            policy,
        } => {
            expect_mode("Failure", policy, Mode::Enforce)?;
            if !options.tlsrpt {
                let domain = checked_domain(domain)?;
                return Ok(Answer::Temp(format!("MTA-STS policy of {domain}: {kind}")));
            }
            // Without `mx_host_pattern`: Postfix 3.10.5+ would skip every
            // host that fails them (`smtp_tls_enforce_sts_mx_patterns`,
            // default yes) and defer without a TLSRPT event; so it
            // connects, fails verification on `policy_failure` before any
            // mail is sent, and reports the failure.
            format!(
                "{} {} policy_failure={kind}",
                secure(domain, policy, false)?,
                tlsrpt_attributes(domain, policy, MxHostPatterns::Leave)?
            )
        }
    };
    let len = value.len() + "OK ".len();
    if len > MAX_ANSWER_LEN {
        return Err(AnswerError::TooLong { len });
    }
    Ok(Answer::Ok(value))
}

fn expect_mode(variant: &'static str, policy: &StsPolicy, want: Mode) -> Result<(), AnswerError> {
    if policy.mode() == want {
        Ok(())
    } else {
        Err(AnswerError::ModeMismatch {
            variant,
            mode: policy.mode(),
        })
    }
}

fn checked_domain(domain: &str) -> Result<String, AnswerError> {
    normalize_host(domain).ok_or_else(|| AnswerError::BadDomain(domain.to_string()))
}

/// The Postfix `match=` form of an MX pattern: `*.example.com` becomes
/// `.example.com` (any depth in Postfix; see the module notes).
pub fn postfix_match(pattern: &MxPattern) -> String {
    if pattern.is_wildcard() {
        format!(".{}", pattern.base())
    } else {
        pattern.base().to_string()
    }
}

/// `secure match=... servername=hostname`, plus the TLSRPT attributes.
fn secure(domain: &str, policy: &StsPolicy, tlsrpt: bool) -> Result<String, AnswerError> {
    let mut matches: Vec<String> = Vec::new();
    for pattern in policy.mx() {
        let m = postfix_match(pattern);
        if !matches.contains(&m) {
            matches.push(m);
        }
    }
    let mut value = format!("secure match={} servername=hostname", matches.join(":"));
    if tlsrpt {
        value.push(' ');
        value.push_str(&tlsrpt_attributes(domain, policy, MxHostPatterns::Send)?);
    }
    Ok(value)
}

/// Whether the TLSRPT attributes carry the policy's MX patterns, which
/// Postfix 3.10.5+ also enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MxHostPatterns {
    Send,
    Leave,
}

/// `policy_type=sts policy_domain=D mx_host_pattern=P... { policy_string = L }...`
fn tlsrpt_attributes(
    domain: &str,
    policy: &StsPolicy,
    mx_host_patterns: MxHostPatterns,
) -> Result<String, AnswerError> {
    let domain = checked_domain(domain)?;
    let mut out = format!(
        "policy_type={} policy_domain={domain}",
        PolicyType::Sts.as_str()
    );
    if mx_host_patterns == MxHostPatterns::Send {
        for pattern in policy.mx() {
            out.push_str(" mx_host_pattern=");
            out.push_str(&pattern.to_string());
        }
    }
    for (index, line) in policy.lines().iter().enumerate() {
        if !is_safe_brace_value(line) {
            return Err(AnswerError::UnsafeForPostfix { line: index + 1 });
        }
        out.push_str(" { policy_string = ");
        out.push_str(line);
        out.push_str(" }");
    }
    Ok(out)
}

/// True when `value` survives `{ name = value }` in a Postfix policy
/// answer unchanged: not empty, no braces, no control characters, no white
/// space at either end (Postfix would strip it).
fn is_safe_brace_value(value: &str) -> bool {
    !value.is_empty()
        && !value.contains(['{', '}'])
        && !value.chars().any(char::is_control)
        && value.trim() == value
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: AnswerOptions = AnswerOptions {
        tlsrpt: true,
        testing: TestingAnswer::NotFound,
    };

    fn policy(body: &str) -> StsPolicy {
        StsPolicy::parse(body.as_bytes()).unwrap()
    }

    fn ok(answer: Result<Answer, AnswerError>) -> String {
        match answer {
            Ok(Answer::Ok(v)) => v,
            other => panic!("not OK: {other:?}"),
        }
    }

    const ENFORCE: &str =
        "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.Example.NET\nmax_age: 86400\n";

    #[test]
    fn enforce_with_tlsrpt() {
        let d = Decision::from_policy("Example.com", policy(ENFORCE));
        assert_eq!(
            ok(postfix_answer(&d, &OPTIONS)),
            "secure match=mx.example.com:.example.net servername=hostname \
             policy_type=sts policy_domain=example.com \
             mx_host_pattern=mx.example.com mx_host_pattern=*.example.net \
             { policy_string = version: STSv1 } { policy_string = mode: enforce } \
             { policy_string = mx: mx.example.com } { policy_string = mx: *.Example.NET } \
             { policy_string = max_age: 86400 }"
        );
    }

    #[test]
    fn enforce_without_tlsrpt() {
        let d = Decision::from_policy("example.com", policy(ENFORCE));
        let options = AnswerOptions {
            tlsrpt: false,
            ..OPTIONS
        };
        assert_eq!(
            ok(postfix_answer(&d, &options)),
            "secure match=mx.example.com:.example.net servername=hostname"
        );
    }

    #[test]
    fn enforce_fails_only_when_no_mx_host_matches() {
        let hosts = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let decide = |mx: &[String]| Decision::with_mx_hosts("example.com", policy(ENFORCE), mx);
        // One host of several matching is enough (RFC 8461 section 4.1).
        assert!(matches!(
            decide(&hosts(&["mx.other.example", "a.example.net"])),
            Decision::Sts { .. }
        ));
        // The wildcard covers one label only.
        assert!(matches!(
            decide(&hosts(&["a.b.example.net"])),
            Decision::Failure {
                kind: FailureKind::ValidationFailure,
                ..
            }
        ));
        // No MX record: the domain is its own MX (RFC 5321 section 5.1).
        assert!(matches!(decide(&[]), Decision::Failure { .. }));
        let own = policy("version: STSv1\nmode: enforce\nmx: example.com\nmax_age: 1\n");
        assert!(matches!(
            Decision::with_mx_hosts("example.com", own, &[]),
            Decision::Sts { .. }
        ));
        // testing and none are never failures.
        let testing = policy("version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 1\n");
        assert!(matches!(
            Decision::with_mx_hosts("example.com", testing, &hosts(&["other.example"])),
            Decision::StsTesting { .. }
        ));
    }

    #[test]
    fn match_list_has_no_duplicates() {
        let p =
            policy("version: STSv1\nmode: enforce\nmx: a.example\nmx: A.example.\nmax_age: 1\n");
        let d = Decision::from_policy("example", p);
        let v = ok(postfix_answer(&d, &OPTIONS));
        assert!(
            v.starts_with("secure match=a.example servername=hostname "),
            "{v}"
        );
        assert_eq!(v.matches("mx_host_pattern=a.example").count(), 2);
    }

    #[test]
    fn testing_mode_choices() {
        let p = policy("version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n");
        let d = Decision::from_policy("example.com", p);
        assert!(matches!(d, Decision::StsTesting { .. }));
        let with = |tlsrpt, testing| postfix_answer(&d, &AnswerOptions { tlsrpt, testing });
        assert_eq!(with(true, TestingAnswer::NotFound), Ok(Answer::NotFound));
        assert_eq!(with(false, TestingAnswer::May), Ok(Answer::NotFound));
        assert_eq!(
            ok(with(true, TestingAnswer::May)),
            "may policy_type=sts policy_domain=example.com mx_host_pattern=mx.example.com \
             { policy_string = version: STSv1 } { policy_string = mode: testing } \
             { policy_string = mx: mx.example.com } { policy_string = max_age: 86400 }"
        );
        assert!(ok(with(true, TestingAnswer::Enforce))
            .starts_with("secure match=mx.example.com servername=hostname policy_type=sts "));
        assert_eq!(
            ok(with(false, TestingAnswer::Enforce)),
            "secure match=mx.example.com servername=hostname"
        );
    }

    #[test]
    fn mode_none_is_no_policy() {
        let d = Decision::from_policy(
            "example.com",
            policy("version: STSv1\nmode: none\nmax_age: 1\n"),
        );
        assert_eq!(d, Decision::NoPolicy);
        assert_eq!(postfix_answer(&d, &OPTIONS), Ok(Answer::NotFound));
    }

    #[test]
    fn mode_mismatch_is_an_error() {
        let p = policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 1\n");
        let d = Decision::Sts {
            domain: "b".into(),
            policy: p,
        };
        assert_eq!(
            postfix_answer(&d, &OPTIONS),
            Err(AnswerError::ModeMismatch {
                variant: "Sts",
                mode: Mode::Testing
            })
        );
    }

    #[test]
    fn dane_failure_temp() {
        assert_eq!(
            ok(postfix_answer(
                &Decision::Dane(DaneLevel::DaneOnly),
                &OPTIONS
            )),
            "dane-only"
        );
        assert_eq!(
            ok(postfix_answer(&Decision::Dane(DaneLevel::Dane), &OPTIONS)),
            "dane"
        );
        let no_match = ["mx.elsewhere.example".to_string()];
        let f = Decision::with_mx_hosts("example.com", policy(ENFORCE), &no_match);
        assert_eq!(
            ok(postfix_answer(&f, &OPTIONS)),
            "secure match=mx.example.com:.example.net servername=hostname \
             policy_type=sts policy_domain=example.com \
             { policy_string = version: STSv1 } { policy_string = mode: enforce } \
             { policy_string = mx: mx.example.com } { policy_string = mx: *.Example.NET } \
             { policy_string = max_age: 86400 } policy_failure=validation-failure"
        );
        let no_tlsrpt = AnswerOptions {
            tlsrpt: false,
            ..OPTIONS
        };
        assert_eq!(
            postfix_answer(&f, &no_tlsrpt),
            Ok(Answer::Temp(
                "MTA-STS policy of example.com: validation-failure".into()
            ))
        );
        let t = Decision::TempFail {
            reason: "DNS timeout".into(),
        };
        assert_eq!(
            postfix_answer(&t, &OPTIONS),
            Ok(Answer::Temp("DNS timeout".into()))
        );
    }

    #[test]
    fn unsafe_content_is_refused() {
        let p = policy("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\nx: {evil} }\n");
        let d = Decision::from_policy("b", p.clone());
        assert_eq!(
            postfix_answer(&d, &OPTIONS),
            Err(AnswerError::UnsafeForPostfix { line: 5 })
        );
        // Without TLSRPT the lines are not sent, so the policy is usable.
        let no_tlsrpt = AnswerOptions {
            tlsrpt: false,
            ..OPTIONS
        };
        assert_eq!(
            ok(postfix_answer(&d, &no_tlsrpt)),
            "secure match=a.b servername=hostname"
        );
        let p = policy("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\nx: a\tb\n");
        let d = Decision::from_policy("b", p.clone());
        assert_eq!(
            postfix_answer(&d, &OPTIONS),
            Err(AnswerError::UnsafeForPostfix { line: 5 })
        );
        for bad in ["b c", "b{", "", "b,c", "*.b"] {
            let d = Decision::from_policy(bad, p.clone());
            assert_eq!(
                postfix_answer(&d, &OPTIONS),
                Err(AnswerError::BadDomain(bad.into()))
            );
        }
    }

    #[test]
    fn failure_kinds_round_trip() {
        for k in [
            FailureKind::StsPolicyFetchError,
            FailureKind::StsPolicyInvalid,
            FailureKind::StsWebpkiInvalid,
            FailureKind::ValidationFailure,
        ] {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FailureKind::parse("certificate-expired"), None);
    }

    /// Every `{` opens `{ policy_string = ` and the next `}` closes it with
    /// no brace between; no `}` elsewhere; no control characters.
    fn assert_postfix_safe(value: &str) {
        assert!(!value.chars().any(char::is_control), "{value:?}");
        let mut rest = value;
        while let Some(open) = rest.find(['{', '}']) {
            assert_eq!(&rest[open..=open], "{", "{value:?}");
            let inner = &rest[open + 1..];
            assert!(inner.starts_with(" policy_string = "), "{value:?}");
            let close = inner.find('}').expect("closed");
            assert!(!inner[..close].contains('{'), "{value:?}");
            rest = &inner[close + 1..];
        }
    }

    proptest::proptest! {
        #[test]
        fn rendered_policies_are_safe_or_refused(
            extra in proptest::collection::vec("[a-z]{1,5}:[ -~\\t\u{80}-\u{3000}]{0,20}", 0..5),
            mode in "enforce|testing|none",
            mx in proptest::collection::vec("(\\*\\.)?[a-z]{1,5}\\.[a-z]{2,3}", 1..4),
        ) {
            let mut body = format!("version: STSv1\nmode: {mode}\nmax_age: 100\n");
            for m in &mx {
                body.push_str(&format!("mx: {m}\n"));
            }
            for e in &extra {
                body.push_str(e);
                body.push('\n');
            }
            let Ok(p) = StsPolicy::parse(body.as_bytes()) else { return Ok(()) };
            let d = Decision::from_policy("example.com", p);
            for tlsrpt in [false, true] {
                for testing in [TestingAnswer::NotFound, TestingAnswer::May, TestingAnswer::Enforce] {
                    match postfix_answer(&d, &AnswerOptions { tlsrpt, testing }) {
                        Ok(Answer::Ok(v)) => assert_postfix_safe(&v),
                        Ok(_) | Err(AnswerError::UnsafeForPostfix { .. }) => {}
                        Err(e) => proptest::prop_assert!(false, "{e}"),
                    }
                }
            }
        }
    }

    #[test]
    fn too_long_is_an_error() {
        let mut body = String::from("version: STSv1\nmode: enforce\nmax_age: 1\n");
        let mx = format!("mx: {}.example\n", "a".repeat(60));
        while body.len() + mx.len() <= crate::policy::MAX_POLICY_LEN {
            body.push_str(&mx);
        }
        let d = Decision::from_policy("example", policy(&body));
        assert!(matches!(
            postfix_answer(&d, &OPTIONS),
            Err(AnswerError::TooLong { .. })
        ));
    }
}
