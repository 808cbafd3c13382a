//! The MTA-STS policy file served at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (RFC 8461 section 3.2)
//! and its MX patterns (section 4.1).
//!
//! ```text
//! version: STSv1
//! mode: enforce
//! mx: mail.example.com
//! mx: *.example.net
//! max_age: 604800
//! ```
//!
//! Lines of `key: value`, ended by LF or CRLF. `version: STSv1`, `mode` and
//! `max_age` are required, `mx` once per pattern (at least one unless
//! `mode: none`); unknown keys are ignored but must be well-formed
//! (`sts-policy-extension`). The fetcher caps the body at
//! [`MAX_POLICY_LEN`] on the wire (RFC 8461 section 3.3 suggests 64 KiB);
//! [`StsPolicy::parse`] refuses more too, so its work is bounded whatever
//! it is given.

use std::fmt;

use crate::names::normalize_host;
use crate::txt::is_ext_name;

/// Largest policy body accepted, in bytes (RFC 8461 section 3.3: "a
/// maximum size of 64 KB").
pub const MAX_POLICY_LEN: usize = 64 * 1024;

/// Largest `max_age` honoured, in seconds: about one year (RFC 8461
/// section 3.2: "a maximum value of 31557600"). Larger values are capped
/// (see [`StsPolicy::max_age`]).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// The policy mode (RFC 8461 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deliver only to MX hosts that match a pattern and present a valid
    /// certificate (section 5.1).
    Enforce,
    /// Report failures (TLSRPT) but deliver anyway.
    Testing,
    /// No MTA-STS policy is in effect: how a domain retires one (section 8.3).
    None,
}

impl Mode {
    /// The value as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }

    /// Parses a mode; case-sensitive (`%s"enforce"`, section 3.2), and
    /// anything else is an error.
    pub fn parse(value: &str) -> Option<Mode> {
        match value {
            "enforce" => Some(Mode::Enforce),
            "testing" => Some(Mode::Testing),
            "none" => Some(Mode::None),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An MX pattern from an `mx:` line (RFC 8461 section 4.1): a host name
/// (`mail.example.com`), or `*.` and a host name, which matches exactly one
/// more label on the left (`*.example.com` matches `a.example.com`, not
/// `example.com` nor `a.b.example.com`). Kept lowercase without the
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxPattern {
    wildcard: bool,
    /// The host name, or for a wildcard the part after `*.`.
    base: String,
}

/// Why an `mx:` value is not a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("'*' is allowed only as the entire leftmost label")]
    MisplacedWildcard,
    #[error("not a host name")]
    NotAHostName,
}

impl MxPattern {
    /// Parses a pattern: case-insensitive, one trailing dot tolerated, `*`
    /// only as the whole leftmost label (`*x.example` and `a.*.example`
    /// are refused).
    pub fn parse(text: &str) -> Result<MxPattern, PatternError> {
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.contains('*') || (!wildcard && text == "*") {
            return Err(PatternError::MisplacedWildcard);
        }
        let base = normalize_host(rest).ok_or(PatternError::NotAHostName)?;
        if wildcard && base.len() + 2 > crate::names::MAX_NAME_LEN {
            return Err(PatternError::NotAHostName);
        }
        Ok(MxPattern { wildcard, base })
    }

    /// True for `*.` patterns.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The host name, or for a wildcard the domain after `*.`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `host` (an MX host name, ASCII, any case, trailing dot
    /// tolerated) matches this pattern. A host that is not a host name
    /// matches nothing.
    pub fn matches(&self, host: &str) -> bool {
        let Some(host) = normalize_host(host) else {
            return false;
        };
        if !self.wildcard {
            return host == self.base;
        }
        match host.split_once('.') {
            Some((_first, rest)) => rest == self.base,
            None => false,
        }
    }
}

impl fmt::Display for MxPattern {
    /// The canonical pattern: `*.example.com` or `mx.example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.base)
        } else {
            f.write_str(&self.base)
        }
    }
}

/// Whether `host` matches the MX `pattern` (RFC 8461 section 4.1); an
/// invalid pattern matches nothing.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    MxPattern::parse(pattern).is_ok_and(|p| p.matches(host))
}

/// A valid MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsPolicy {
    mode: Mode,
    max_age: u32,
    declared_max_age: u64,
    mx: Vec<MxPattern>,
    extensions: Vec<(String, String)>,
    lines: Vec<String>,
}

/// Why a policy body is refused; each is an `sts-policy-invalid` for
/// TLSRPT (RFC 8460 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy of {len} bytes is over the limit of {MAX_POLICY_LEN}")]
    TooLarge { len: usize },
    #[error("policy is not UTF-8")]
    NotUtf8,
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineProblem },
    #[error("no {0} field")]
    Missing(&'static str),
    #[error("mode {0} without any mx field")]
    NoMx(Mode),
}

/// What is wrong with one line of a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("no ':' between key and value")]
    NoColon,
    #[error("malformed key")]
    BadKey,
    #[error("control character")]
    ControlCharacter,
    #[error("empty value")]
    EmptyValue,
    #[error("version is not STSv1")]
    BadVersion,
    #[error("mode is not enforce, testing or none")]
    BadMode,
    #[error("max_age is not 1 to 10 digits")]
    BadMaxAge,
    #[error("mx: {0}")]
    BadMx(PatternError),
}

impl StsPolicy {
    /// Parses a policy body as fetched.
    ///
    /// - Lines end in LF or CRLF; a final line without one counts. Lines
    ///   that are empty or only white space are skipped (the grammar has no
    ///   empty lines, but they carry nothing; postfix-mta-sts-resolver also
    ///   skips them).
    /// - `key: value` with optional white space after the colon and at the
    ///   end; the key itself has none. Control characters (other than tab
    ///   as white space) make the policy invalid, as does a CR anywhere but
    ///   before LF.
    /// - A known key given more than once keeps its first value (as
    ///   postfix-tlspol), but every occurrence must be valid; `mx` repeats
    ///   by design.
    /// - `max_age` over [`MAX_AGE_LIMIT`] is capped, and the declared value
    ///   kept ([`declared_max_age`](StsPolicy::declared_max_age)).
    /// - Values are ASCII for the known keys; extension values may be
    ///   UTF-8 (`sts-policy-ext-value`).
    pub fn parse(body: &[u8]) -> Result<StsPolicy, PolicyError> {
        if body.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge { len: body.len() });
        }
        let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotUtf8)?;
        let mut version = false;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        let mut extensions = Vec::new();
        let mut lines = Vec::new();
        // A body ending in a terminator has an empty last piece; skipped below.
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let err = |problem| PolicyError::Line {
                line: line_no,
                problem,
            };
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let line = line.trim_end_matches([' ', '\t']);
            if line.chars().any(|c| c.is_control() && c != '\t') {
                return Err(err(LineProblem::ControlCharacter));
            }
            if line.trim_start_matches([' ', '\t']).is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(err(LineProblem::NoColon))?;
            let value = value.trim_start_matches([' ', '\t']);
            match key {
                "version" => {
                    if value != "STSv1" {
                        return Err(err(LineProblem::BadVersion));
                    }
                    version = true;
                }
                "mode" => {
                    let parsed = Mode::parse(value).ok_or(err(LineProblem::BadMode))?;
                    mode.get_or_insert(parsed);
                }
                "max_age" => {
                    if value.is_empty()
                        || value.len() > 10
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(err(LineProblem::BadMaxAge));
                    }
                    // At most 10 digits: fits u64.
                    let declared: u64 = value.parse().map_err(|_| err(LineProblem::BadMaxAge))?;
                    max_age.get_or_insert(declared);
                }
                "mx" => {
                    let pattern =
                        MxPattern::parse(value).map_err(|e| err(LineProblem::BadMx(e)))?;
                    mx.push(pattern);
                }
                _ => {
                    if !is_ext_name(key) {
                        return Err(err(LineProblem::BadKey));
                    }
                    if value.is_empty() {
                        return Err(err(LineProblem::EmptyValue));
                    }
                    extensions.push((key.to_string(), value.to_string()));
                }
            }
            lines.push(line.to_string());
        }
        if !version {
            return Err(PolicyError::Missing("version"));
        }
        let mode = mode.ok_or(PolicyError::Missing("mode"))?;
        let declared_max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
        if mode != Mode::None && mx.is_empty() {
            return Err(PolicyError::NoMx(mode));
        }
        let max_age = u32::try_from(declared_max_age)
            .unwrap_or(u32::MAX)
            .min(MAX_AGE_LIMIT);
        Ok(StsPolicy {
            mode,
            max_age,
            declared_max_age,
            mx,
            extensions,
            lines,
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How long the policy may be cached, in seconds, capped at
    /// [`MAX_AGE_LIMIT`] (RFC 8461 section 3.2 sets that maximum;
    /// postfix-tlspol caps the same way, postfix-mta-sts-resolver refuses
    /// the policy instead).
    pub fn max_age(&self) -> u32 {
        self.max_age
    }

    /// The `max_age` as written, before the cap.
    pub fn declared_max_age(&self) -> u64 {
        self.declared_max_age
    }

    /// True when the declared `max_age` was over the limit and capped.
    pub fn max_age_capped(&self) -> bool {
        self.declared_max_age > u64::from(MAX_AGE_LIMIT)
    }

    /// The MX patterns in policy order (duplicates kept).
    pub fn mx(&self) -> &[MxPattern] {
        &self.mx
    }

    /// Extension fields (`key`, `value`) in policy order; ignored.
    pub fn extensions(&self) -> &[(String, String)] {
        &self.extensions
    }

    /// The policy's lines as fetched, in order, without line terminators,
    /// trailing white space and blank lines: the TLSRPT `policy-string`
    /// (RFC 8460 section 4.3, one string per line).
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether `host` matches one of the MX patterns (RFC 8461 section 4.1).
    pub fn matches_mx(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENFORCE: &str =
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n";

    #[test]
    fn parses_the_rfc_example() {
        let p = StsPolicy::parse(ENFORCE.as_bytes()).unwrap();
        assert_eq!(p.mode(), Mode::Enforce);
        assert_eq!(p.max_age(), 604800);
        assert!(!p.max_age_capped());
        let mx: Vec<String> = p.mx().iter().map(|m| m.to_string()).collect();
        assert_eq!(mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(
            p.lines(),
            [
                "version: STSv1",
                "mode: enforce",
                "mx: mail.example.com",
                "mx: *.Example.NET.",
                "max_age: 604800"
            ]
        );
        assert!(p.matches_mx("MAIL.example.com."));
        assert!(p.matches_mx("a.example.net"));
        assert!(!p.matches_mx("example.net"));
    }

    #[test]
    fn lf_tabs_blank_lines_extensions() {
        let body = "version:STSv1\n\nmode:\ttesting \nmx: a.example\n  \nfoo_bar: some value é\nmax_age: 0";
        let p = StsPolicy::parse(body.as_bytes()).unwrap();
        assert_eq!(p.mode(), Mode::Testing);
        assert_eq!(p.max_age(), 0);
        assert_eq!(
            p.extensions(),
            [("foo_bar".to_string(), "some value é".to_string())]
        );
        assert_eq!(
            p.lines(),
            [
                "version:STSv1",
                "mode:\ttesting",
                "mx: a.example",
                "foo_bar: some value é",
                "max_age: 0"
            ]
        );
    }

    #[test]
    fn mode_none_needs_no_mx() {
        let p = StsPolicy::parse(b"version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!(p.mode(), Mode::None);
        assert!(p.mx().is_empty());
    }

    #[test]
    fn max_age_is_capped() {
        let p = StsPolicy::parse(b"version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age(), MAX_AGE_LIMIT);
        assert_eq!(p.declared_max_age(), 9_999_999_999);
        assert!(p.max_age_capped());
        let p = StsPolicy::parse(b"version: STSv1\nmode: none\nmax_age: 31557600\n").unwrap();
        assert!(!p.max_age_capped());
        assert_eq!(p.max_age(), MAX_AGE_LIMIT);
    }

    #[test]
    fn first_value_wins() {
        let p = StsPolicy::parse(
            b"version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 5\nmax_age: 6\n",
        )
        .unwrap();
        assert_eq!((p.mode(), p.max_age()), (Mode::Enforce, 5));
        assert_eq!(p.lines().len(), 6);
    }

    #[test]
    fn refused() {
        let base = "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n";
        let cases: Vec<(String, PolicyError)> = vec![
            (
                "mode: enforce\nmx: a.b\nmax_age: 1".into(),
                PolicyError::Missing("version"),
            ),
            (
                "version: STSv1\nmx: a.b\nmax_age: 1".into(),
                PolicyError::Missing("mode"),
            ),
            (
                "version: STSv1\nmode: none".into(),
                PolicyError::Missing("max_age"),
            ),
            (
                "version: STSv1\nmode: testing\nmax_age: 1".into(),
                PolicyError::NoMx(Mode::Testing),
            ),
            (
                format!("{base}version: STSv2\n"),
                line(5, LineProblem::BadVersion),
            ),
            (
                format!("{base}mode: Enforce\n"),
                line(5, LineProblem::BadMode),
            ),
            (
                format!("{base}mode: report\n"),
                line(5, LineProblem::BadMode),
            ),
            (
                format!("{base}max_age: -1\n"),
                line(5, LineProblem::BadMaxAge),
            ),
            (
                format!("{base}max_age: 12345678901\n"),
                line(5, LineProblem::BadMaxAge),
            ),
            (format!("{base}max_age:\n"), line(5, LineProblem::BadMaxAge)),
            (
                format!("{base}mx: *x.example\n"),
                line(5, LineProblem::BadMx(PatternError::MisplacedWildcard)),
            ),
            (
                format!("{base}mx: a.*.example\n"),
                line(5, LineProblem::BadMx(PatternError::MisplacedWildcard)),
            ),
            (
                format!("{base}mx: *\n"),
                line(5, LineProblem::BadMx(PatternError::MisplacedWildcard)),
            ),
            (
                format!("{base}mx: a{{b}}.example\n"),
                line(5, LineProblem::BadMx(PatternError::NotAHostName)),
            ),
            (
                format!("{base}mx: a.example, b.example\n"),
                line(5, LineProblem::BadMx(PatternError::NotAHostName)),
            ),
            (
                format!("{base}mx:\n"),
                line(5, LineProblem::BadMx(PatternError::NotAHostName)),
            ),
            (format!("{base}just text\n"), line(5, LineProblem::NoColon)),
            (format!("{base} mode: none\n"), line(5, LineProblem::BadKey)),
            (format!("{base}mode : none\n"), line(5, LineProblem::BadKey)),
            (format!("{base}ext:\n"), line(5, LineProblem::EmptyValue)),
            (
                format!("{base}ext: a\rb\n"),
                line(5, LineProblem::ControlCharacter),
            ),
            (
                format!("{base}ext: a\u{0}b\n"),
                line(5, LineProblem::ControlCharacter),
            ),
            (
                format!("{base}ext: a\u{85}b\n"),
                line(5, LineProblem::ControlCharacter),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(StsPolicy::parse(body.as_bytes()), Err(want), "{body:?}");
        }
        assert_eq!(
            StsPolicy::parse(b"version: STSv1\n\xff"),
            Err(PolicyError::NotUtf8)
        );
        let big = format!("{base}{}", "x: y\n".repeat(MAX_POLICY_LEN / 5));
        assert_eq!(
            StsPolicy::parse(big.as_bytes()),
            Err(PolicyError::TooLarge { len: big.len() })
        );
    }

    fn line(line: usize, problem: LineProblem) -> PolicyError {
        PolicyError::Line { line, problem }
    }

    #[test]
    fn pattern_matching() {
        assert!(mx_matches("mx.example.com", "mx.example.com"));
        assert!(mx_matches("MX.example.com.", "mx.EXAMPLE.com"));
        assert!(mx_matches("mx.example.com", "mx.example.com."));
        assert!(!mx_matches("mx.example.com", "mx2.example.com"));
        assert!(!mx_matches("mx.example.com", "a.mx.example.com"));
        assert!(mx_matches("*.example.com", "a.example.com"));
        assert!(mx_matches("*.example.com", "A.Example.Com."));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_matches("*.example.com", ".example.com"));
        assert!(!mx_matches("*.example.com", "*.example.com"));
        assert!(!mx_matches("*.example.com", "aexample.com"));
        assert!(!mx_matches("*x.example.com", "ax.example.com"));
        assert!(!mx_matches("a.*.com", "a.b.com"));
        assert!(!mx_matches("*", "a"));
        assert!(!mx_matches("", ""));
        assert!(!mx_matches("mx.example.com", ""));
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StsPolicy::parse(&body);
        }

        #[test]
        fn never_panics_on_policy_like_text(lines in proptest::collection::vec(
            "(version|mode|mx|max_age|x-y)[: \t]{0,3}[ -~\u{80}-\u{10ffff}\t\r]{0,20}", 0..8)) {
            let body = lines.join("\n");
            if let Ok(p) = StsPolicy::parse(body.as_bytes()) {
                prop_assert!(p.max_age() <= MAX_AGE_LIMIT);
                for l in p.lines() {
                    prop_assert!(!l.contains(['\r', '\n']));
                }
            }
        }

        #[test]
        fn wildcard_matches_exactly_one_label(label in "[a-z0-9-]{1,20}", extra in "[a-z0-9]{1,5}", base in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let pattern = format!("*.{base}");
            let one_label = format!("{label}.{base}");
            let two_labels = format!("{extra}.{label}.{base}");
            prop_assert!(mx_matches(&pattern, &one_label));
            prop_assert!(!mx_matches(&pattern, &two_labels));
            prop_assert!(!mx_matches(&pattern, &base));
        }
    }
}
