//! Our reports against the upstream reportd's reports for the same fetcher
//! answers (`tests/fixtures/reference/`): semantically equal, apart from the
//! documented differences (report-id, `policy-domain` for no-policy-found).

use std::path::PathBuf;

use mailtls_common::day::Day;
use serde_json::{Map, Value};
use tlsrpt_report::details::DomainDetails;
use tlsrpt_report::report::{build_reports, Report, ReportId, ReportingOrganization};

fn reference(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../tests/fixtures/reference")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Objects with sorted keys and lists in a fixed order, so that equal means
/// "the same report" whatever order keys, policies and details come in.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let sorted: Map<String, Value> = keys
                .into_iter()
                .map(|k| (k.clone(), canonical(&map[k])))
                .collect();
            Value::Object(sorted)
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(canonical).collect();
            items.sort_by_key(|item| item.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

/// The upstream report with our documented fixes applied.
fn upstream_with_fixes(mut upstream: Value, domain: &str, our_id: &ReportId) -> Value {
    assert!(upstream["report-id"]
        .as_str()
        .unwrap()
        .ends_with(&format!("_{domain}")));
    upstream["report-id"] = Value::from(our_id.as_str());
    for entry in upstream["policies"].as_array_mut().unwrap() {
        let policy = entry["policy"].as_object_mut().unwrap();
        if !policy.contains_key("policy-domain") {
            assert_eq!(policy["policy-type"], "no-policy-found");
            policy.insert("policy-domain".into(), Value::from(domain));
        }
    }
    upstream
}

fn our_report(domain: &str) -> Report {
    let details =
        DomainDetails::from_fetcher_json(&reference(&format!("fetcher-details-{domain}.json")))
            .unwrap();
    let organization = ReportingOrganization {
        name: "Example Org".into(),
        contact_info: "tlsrpt-noreply@example.net".into(),
    };
    let day = Day::from_ymd(2026, 11, 21);
    let built = build_reports(day, &details, &organization);
    assert!(built.skipped.is_empty(), "{:?}", built.skipped);
    assert_eq!(built.reports.len(), 1);
    built.reports.into_iter().next().unwrap()
}

fn check(domain: &str) {
    let ours = our_report(domain);
    let upstream: Value =
        serde_json::from_str(&reference(&format!("report-{domain}.json"))).unwrap();
    let expected = upstream_with_fixes(upstream, domain, &ours.report_id);
    // Through the text we send, not just the model.
    let sent: Value = serde_json::from_slice(&ours.to_json_bytes()).unwrap();
    assert_eq!(
        canonical(&sent),
        canonical(&expected),
        "ours:\n{}\nupstream (fixed):\n{}",
        serde_json::to_string_pretty(&sent).unwrap(),
        serde_json::to_string_pretty(&expected).unwrap()
    );
}

#[test]
fn example_com_matches_the_upstream_report() {
    check("example.com");
}

#[test]
fn mixed_case_example_matches_the_upstream_report() {
    check("mixed.case.example");
    // Escapes, non-ASCII and control characters are written as Python does.
    let text = our_report("mixed.case.example").to_json_text();
    assert!(text.contains(r#""additional-information": "Umlaut \u00e4\u00f6\u00fc \u001ctl""#));
    assert!(text.contains(r#""receiving-mx-helo": "mx.x.example ESMTP \"quoted\"\ttab\\back""#));
}

#[test]
fn the_comparison_notices_a_wrong_count() {
    let ours = our_report("example.com");
    let upstream: Value = serde_json::from_str(&reference("report-example.com.json")).unwrap();
    let mut expected = upstream_with_fixes(upstream, "example.com", &ours.report_id);
    expected["policies"][0]["summary"]["total-successful-session-count"] = Value::from(3);
    assert_ne!(canonical(&ours.to_json()), canonical(&expected));
}
