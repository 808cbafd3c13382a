//! The client writes every datagram captured from real libtlsrpt byte for
//! byte, and both readers accept all of them.

use std::path::PathBuf;

use serde_json::Value;
use tlsrpt_datagram::client::{DeliveryAttempt, FailureDetail, Policy, PolicyType, ResultType};
use tlsrpt_datagram::parse::parse_reference;

/// The captured datagrams (`tests/fixtures/README.md`).
fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/datagrams")
}

/// Rebuild the delivery attempt that a vector describes, through the
/// client's own types (not through its bytes).
fn attempt_from(v: &Value) -> DeliveryAttempt {
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let strings = |v: Option<&Value>| {
        v.map(|a| a.as_array().unwrap().iter().map(s).collect())
            .unwrap_or_default()
    };
    let policies = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Policy {
            policy_type: match p["policy-type"].as_i64().unwrap() {
                1 => PolicyType::Tlsa,
                2 => PolicyType::Sts,
                _ => PolicyType::NoPolicyFound,
            },
            policy_domain: p.get("policy-domain").map(s),
            policy_strings: strings(p.get("policy-string")),
            mx_hosts: strings(p.get("mx-host")),
            failures: p
                .get("failure-details")
                .map(|f| {
                    f.as_array()
                        .unwrap()
                        .iter()
                        .map(|d| FailureDetail {
                            result_type: *ResultType::ALL
                                .iter()
                                .find(|r| **r as i64 == d["c"].as_i64().unwrap())
                                .unwrap(),
                            sending_mta_ip: d.get("s").map(s),
                            receiving_mx_hostname: d.get("n").map(s),
                            receiving_mx_helo: d.get("h").map(s),
                            receiving_ip: d.get("r").map(s),
                            additional_information: d.get("a").map(s),
                            failure_reason_code: d.get("f").map(s),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            failed: p["f"].as_i64() == Some(1),
        })
        .collect();
    DeliveryAttempt {
        domain: s(&v["d"]),
        record: s(&v["pr"]),
        policies,
    }
}

#[test]
fn client_writes_every_libtlsrpt_vector_byte_for_byte() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(vector_dir())
        .expect("tests/fixtures/datagrams in the repository")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 9, "the nine libtlsrpt vectors");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let ours = attempt_from(&value).to_datagram();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&bytes),
            "{}",
            file.display()
        );
        assert_eq!(
            tlsrpt_datagram::parse(&bytes),
            parse_reference(&bytes),
            "{}",
            file.display()
        );
        assert!(tlsrpt_datagram::parse(&bytes).is_ok());
    }
}
