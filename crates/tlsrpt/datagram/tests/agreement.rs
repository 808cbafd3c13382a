//! Property tests of the datagram readers: the single-pass reader used on the
//! hot path and the serde_json reference reader must decide every input the
//! same way, for libtlsrpt-like datagrams, random JSON, and byte-level
//! corruption of both. And no input may panic either of them.

use proptest::prelude::*;
use serde_json::{Map, Value};
use tlsrpt_datagram::client::{DeliveryAttempt, FailureDetail, Policy, PolicyType, ResultType};
use tlsrpt_datagram::parse;
use tlsrpt_datagram::parse::parse_reference;

/// Strings with everything libtlsrpt has to escape, plus non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('\t'),
            Just('\u{1}'),
            Just('\u{1c}'),
            Just('\u{7f}'),
            Just('ä'),
            Just('😀'),
            Just('/'),
            Just(' '),
            proptest::char::range('a', 'z'),
            any::<char>(),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn detail() -> impl Strategy<Value = FailureDetail> {
    (
        0..ResultType::ALL.len(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(r, s, n, h, ip, a, f)| FailureDetail {
            result_type: ResultType::ALL[r],
            sending_mta_ip: s,
            receiving_mx_hostname: n,
            receiving_mx_helo: h,
            receiving_ip: ip,
            additional_information: a,
            failure_reason_code: f,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(PolicyType::Tlsa),
            Just(PolicyType::Sts),
            Just(PolicyType::NoPolicyFound)
        ],
        proptest::option::of(domain()),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(detail(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(policy_type, policy_domain, policy_strings, mx_hosts, failures, failed)| Policy {
                policy_type,
                policy_domain,
                policy_strings,
                mx_hosts,
                failures,
                failed,
            },
        )
}

/// Domains as MTAs report them: any case, A-labels, service labels, a
/// trailing dot (RFC 8460 section 4.4: IDNs as A-labels).
fn domain() -> impl Strategy<Value = String> {
    "(xn--)?[a-zA-Z0-9_][a-zA-Z0-9_-]{0,20}(\\.[a-zA-Z0-9_][a-zA-Z0-9_-]{0,20}){0,3}\\.?"
}

fn attempt() -> impl Strategy<Value = DeliveryAttempt> {
    (domain(), text(), prop::collection::vec(policy(), 0..3)).prop_map(
        |(domain, record, policies)| DeliveryAttempt {
            domain,
            record,
            policies,
        },
    )
}

/// Random JSON with the protocol's key names, so that it often gets far.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("d"),
        Just("pr"),
        Just("dpv"),
        Just("policies"),
        Just("policy-type"),
        Just("policy-domain"),
        Just("policy-string"),
        Just("mx-host"),
        Just("failure-details"),
        Just("t"),
        Just("f"),
        Just("c"),
        Just("s"),
        Just("x"),
    ]
    .prop_map(str::to_string);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(2),
            Just(9),
            Just(201),
            Just(-1),
            any::<i64>()
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::from),
        Just(Value::from("1")),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn agree(bytes: &[u8]) {
    assert_eq!(
        parse(bytes),
        parse_reference(bytes),
        "input: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn libtlsrpt_datagrams_are_read_alike_and_accepted(a in attempt()) {
        let bytes = a.to_datagram();
        let fast = parse(&bytes);
        prop_assert!(fast.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&bytes), fast);
        prop_assert_eq!(fast, parse_reference(&bytes));
    }

    #[test]
    fn corrupted_datagrams_are_read_alike(a in attempt(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4)) {
        let mut bytes = a.to_datagram();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        agree(&bytes);
    }

    #[test]
    fn random_json_is_read_alike(v in json(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        agree(text.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        agree(&bytes);
    }
}

#[test]
fn edge_cases_are_read_alike() {
    for text in [
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"x":-0}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"x":1E400}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"x":18446744073709551615}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"x":1e-7,"y":12345678901234567890.5}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"t":0,"policy-type":2}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"failure-details":[{"c":201,"c":202}],"t":1}]}"#,
        r#"{"d":"a","pr":"r","policies":[],"policies":[{"policy-type":9,"f":1}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"x":"\ud83d\ude00\u00e4\/"}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"x":"\ud800"}]}"#,
        r#" {"d" : "a" , "pr":"r","policies":[ {"policy-type" : 9 , "f" : 0 } ] } "#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0}]} x"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":true}]}"#,
        r#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":0,"t":18446744073709551615}]}"#,
    ] {
        agree(text.as_bytes());
    }
}
