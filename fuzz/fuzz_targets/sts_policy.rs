//! The MTA-STS policy parser (RFC 8461 section 3.2) and the MX pattern
//! matcher (section 4.1) on any bytes: never panic, and a policy that
//! parses is either refused by `postfix_answer` or rendered without a
//! brace inside a value or a control character anywhere.
#![no_main]
use libfuzzer_sys::fuzz_target;
use policyd_policy::answer::{postfix_answer, AnswerOptions, Decision, TestingAnswer};
use policyd_policy::netstring::Answer;
use policyd_policy::policy::{mx_matches, MxPattern, StsPolicy};

fuzz_target!(|data: &[u8]| {
    // Pattern matching: the first line is a pattern, the second a host.
    if let Ok(text) = std::str::from_utf8(data) {
        let mut parts = text.splitn(3, '\n');
        let pattern = parts.next().unwrap_or("");
        let host = parts.next().unwrap_or("");
        if mx_matches(pattern, host) {
            let p = MxPattern::parse(pattern).expect("a matching pattern parses");
            let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
            assert!(host == p.base() || host.ends_with(&format!(".{}", p.base())));
        }
    }

    let Ok(policy) = StsPolicy::parse(data) else {
        return;
    };
    for line in policy.lines() {
        assert!(!line.contains(['\r', '\n']));
    }
    let decision = Decision::from_policy("example.com", policy);
    for tlsrpt in [false, true] {
        for testing in [TestingAnswer::NotFound, TestingAnswer::May, TestingAnswer::Enforce] {
            let options = AnswerOptions { tlsrpt, testing };
            if let Ok(answer) = postfix_answer(&decision, &options) {
                if let Answer::Ok(value) = &answer {
                    check_postfix_value(value);
                }
                if let Ok(wire) = answer.encode() {
                    assert!(wire.len() <= policyd_policy::netstring::MAX_ANSWER_LEN + 8);
                }
            }
        }
    }
});

/// Every `{` opens `{ policy_string = ` and is closed by the next ` }`
/// with no brace between; no `}` elsewhere; no control characters.
fn check_postfix_value(value: &str) {
    assert!(!value.chars().any(char::is_control), "{value:?}");
    let mut rest = value;
    while let Some(open) = rest.find(['{', '}']) {
        assert_eq!(&rest[open..open + 1], "{", "stray closing brace in {value:?}");
        let inner = &rest[open + 1..];
        assert!(inner.starts_with(" policy_string = "), "{value:?}");
        let close = inner.find('}').expect("unclosed brace");
        assert!(!inner[..close].contains('{'), "nested brace in {value:?}");
        assert!(inner[..close].ends_with(' '));
        rest = &inner[close + 1..];
    }
}
