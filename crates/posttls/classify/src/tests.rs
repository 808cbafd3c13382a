use proptest::prelude::*;

use super::*;
use TlsFailureKind::*;

fn tls(kind: TlsFailureKind, host: Option<&str>) -> Classification {
    Classification::Tls(TlsFailure {
        kind,
        host: host.map(str::to_owned),
        throttled: false,
    })
}

/// One real text per kind, as Postfix writes it into the defer log (the
/// format strings of the crate documentation with realistic arguments;
/// the first is the one seen on this machine with Postfix 3.7 against
/// smtp-sink).
const TLS_TABLE: &[(&str, TlsFailureKind, Option<&str>)] = &[
    (
        "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]",
        NotOffered,
        Some("127.0.0.1[127.0.0.1]"),
    ),
    (
        "TLS is required, but was not offered by host mx.notls.example[2001:db8::25]",
        NotOffered,
        Some("mx.notls.example[2001:db8::25]"),
    ),
    (
        "TLS is required, but host mx.example.com[192.0.2.25] refused to start TLS: 454 4.7.0 TLS not available due to local problem",
        StartTlsRefused,
        Some("mx.example.com[192.0.2.25]"),
    ),
    ("Cannot start TLS: handshake failure", HandshakeFailure, None),
    ("Server certificate not verified", CertificateNotVerified, None),
    ("Server certificate not trusted", CertificateNotTrusted, None),
    (
        "TLS is required, but our TLS engine is unavailable",
        TlsUnavailable,
        None,
    ),
    ("TLS is required, but unavailable", TlsUnavailable, None),
    (
        "TLSA lookup error for mx.dane.example:25",
        Dane,
        Some("mx.dane.example:25"),
    ),
    ("no TLSA records found", Dane, None),
    ("non DNSSEC destination", Dane, None),
    ("TLSA records unusable", Dane, None),
    (
        "Verification not possible, MX RRset is insecure",
        Dane,
        None,
    ),
    ("client TLS configuration problem", PolicyLookup, None),
    (
        "REQUIRETLS Failure: sender requested REQUIRETLS, but host mx.example.com[192.0.2.25] refused to start TLS: 502 5.5.1 not implemented",
        RequireTls,
        Some("mx.example.com[192.0.2.25]"),
    ),
    (
        "REQUIRETLS Failure: sender requested REQUIRETLS, but TLS service was not offered by host mx.example.com[192.0.2.25]",
        RequireTls,
        Some("mx.example.com[192.0.2.25]"),
    ),
    (
        "REQUIRETLS Failure: sender requested REQUIRETLS, but no server was found that supports REQUIRETLS. The last attempted server was mx.example.com[192.0.2.25]",
        RequireTls,
        Some("mx.example.com[192.0.2.25]"),
    ),
    (
        "REQUIRETLS Failure: sender requested REQUIRETLS, but no trusted server certificate was found. The last attempted server was mx2.example.com[192.0.2.26]",
        RequireTls,
        Some("mx2.example.com[192.0.2.26]"),
    ),
    (
        "Sender requested REQUIRETLS, but the recipient domain does not support it",
        RequireTls,
        None,
    ),
];

#[test]
fn tls_failures_are_recognised() {
    for &(text, kind, host) in TLS_TABLE {
        assert_eq!(classify(text), tls(kind, host), "{text}");
    }
    // Every kind has at least one example.
    for kind in TlsFailureKind::ALL {
        assert!(TLS_TABLE.iter().any(|(_, k, _)| *k == kind), "{kind}");
    }
}

#[test]
fn throttled_texts_keep_their_kind() {
    for &(text, kind, host) in TLS_TABLE {
        let throttled = format!("delivery temporarily suspended: {text}");
        assert_eq!(
            classify(&throttled),
            Classification::Tls(TlsFailure {
                kind,
                host: host.map(str::to_owned),
                throttled: true,
            }),
            "{throttled}"
        );
    }
}

#[test]
fn not_tls_deferrals() {
    for text in [
        "connect to mx.example.com[192.0.2.25]:25: Connection refused",
        "connect to mx.example.com[192.0.2.25]:25: Connection timed out",
        "connect to mx.example.com[2001:db8::25]:25: Network is unreachable",
        "connect to 127.0.0.1[127.0.0.1]:2525: No route to host",
        "delivery temporarily suspended: connect to mx.example.com[192.0.2.25]:25: Connection refused",
        "host mx.example.com[192.0.2.25] said: 450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted (in reply to RCPT TO command)",
        "host mx.example.com[192.0.2.25] said: 421 4.7.0 Try again later (in reply to end of DATA command)",
        // About TLS, but said by the remote server: not our mandatory-TLS failure.
        "host mx.example.com[192.0.2.25] said: 530 5.7.0 Must issue a STARTTLS command first (in reply to MAIL FROM command)",
        "host mx.example.com[192.0.2.25] said: 451 4.7.4 TLS is required, but was not offered by host client (in reply to RCPT TO command)",
        "host mx.example.com[192.0.2.25] refused to talk to me: 554 5.7.1 Service unavailable; Client host blocked",
        "Host or domain name not found. Name service error for name=nosuchdomain.invalid type=MX: Host not found, try again",
        "Host or domain name not found",
        "Name service error for name=example.com type=A: Host not found, try again",
        "unable to look up host mx.example.com: Name or service not known",
        "lost connection with mx.example.com[192.0.2.25] while receiving the initial server greeting",
        "lost connection with mx.example.com[192.0.2.25] while sending end of data -- message may be sent more than once",
        "conversation with mx.example.com[192.0.2.25] timed out while receiving the initial server greeting",
        "mail for example.com loops back to myself",
    ] {
        assert_eq!(classify(text), Classification::NotTls, "{text}");
    }
}

#[test]
fn unrecognised_texts_are_unknown() {
    for text in [
        "",
        "   ",
        "alias database unavailable",
        "Temporary lookup error",
        "unknown mail transport error",
        "delivery temporarily suspended: unknown mail transport error",
        "delivery temporarily suspended: ",
        "Server configuration error",
        // Near misses of the TLS texts: not what Postfix writes.
        "TLS is required",
        "TLS is required, but host mx[192.0.2.1] said no",
        "Cannot start TLS: handshake failure and more",
        "Server certificate not verified by anyone, trust me",
        " TLS is required, but was not offered by host x[1.2.3.4]",
        // "host " without a reply marker.
        "host mx.example.com[192.0.2.25] is sad",
        "connect to",
    ] {
        assert_eq!(classify(text), Classification::Unknown, "{text:?}");
    }
}

#[test]
fn case_and_trailing_space_do_not_matter() {
    assert_eq!(
        classify("tls is required, but was not offered by host MX[192.0.2.1]"),
        tls(NotOffered, Some("MX[192.0.2.1]"))
    );
    assert_eq!(
        classify("SERVER CERTIFICATE NOT VERIFIED \n"),
        tls(CertificateNotVerified, None)
    );
    assert_eq!(
        classify("DELIVERY TEMPORARILY SUSPENDED: Cannot start TLS: handshake failure"),
        Classification::Tls(TlsFailure {
            kind: HandshakeFailure,
            host: None,
            throttled: true
        })
    );
}

#[test]
fn implausible_host_names_are_dropped_not_trusted() {
    assert_eq!(
        classify("TLS is required, but was not offered by host "),
        tls(NotOffered, None)
    );
    assert_eq!(
        classify("TLS is required, but was not offered by host evil[1.2.3.4] click http://x"),
        tls(NotOffered, None)
    );
    assert_eq!(
        classify("TLS is required, but host  refused to start TLS: 454 no"),
        tls(StartTlsRefused, None)
    );
}

#[test]
fn short_names_are_stable_unique_and_round_trip() {
    let names: Vec<_> = TlsFailureKind::ALL.iter().map(|k| k.short_name()).collect();
    assert_eq!(
        names,
        [
            "not_offered",
            "starttls_refused",
            "handshake_failure",
            "certificate_not_verified",
            "certificate_not_trusted",
            "tls_unavailable",
            "dane",
            "policy_lookup",
            "requiretls",
        ]
    );
    for kind in TlsFailureKind::ALL {
        assert_eq!(
            TlsFailureKind::from_short_name(kind.short_name()),
            Some(kind)
        );
        assert_eq!(kind.to_string(), kind.short_name());
    }
    assert_eq!(TlsFailureKind::from_short_name("NotOffered"), None);
}

#[test]
fn plain_words_are_plain_sentences() {
    let jargon = [
        "TLS",
        "STARTTLS",
        "DANE",
        "TLSA",
        "DNSSEC",
        "MX",
        "SMTP",
        "certificate",
        "handshake",
        "cipher",
        "MTA",
    ];
    for kind in TlsFailureKind::ALL {
        let words = kind.plain_words();
        assert!(words.ends_with('.'), "{kind}: {words}");
        assert!(words.len() < 160, "{kind}: {words}");
        for j in jargon {
            assert!(!words.contains(j), "{kind} uses {j:?}: {words}");
        }
    }
}

fn random_case(text: &str, flips: &[bool]) -> String {
    text.chars()
        .zip(flips.iter().cycle())
        .map(|(c, &up)| {
            if up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    /// Fuzz-like: classify never panics, on any text at all.
    #[test]
    fn never_panics(text in any::<String>()) {
        let _ = classify(&text);
    }

    /// Also not on texts that start like the recognised ones and then go
    /// astray (multi-byte characters right after an ASCII prefix, cut-off
    /// markers).
    #[test]
    fn never_panics_near_the_patterns(
        i in 0..TLS_TABLE.len(),
        cut in 0usize..200,
        tail in any::<String>(),
    ) {
        let text = TLS_TABLE[i].0;
        let cut = text.len().min(cut);
        let _ = classify(&format!("{}{tail}", &text[..cut]));
        let _ = classify(&format!("{THROTTLE_PREFIX}{}{tail}", &text[..cut]));
    }

    #[test]
    fn throttle_prefix_only_sets_throttled(text in any::<String>()) {
        let plain = classify(&text);
        let throttled = classify(&format!("{THROTTLE_PREFIX}{text}"));
        match (plain, throttled) {
            (Classification::Tls(a), Classification::Tls(b)) => {
                prop_assert!(!a.throttled || text.to_ascii_lowercase().starts_with(THROTTLE_PREFIX));
                prop_assert!(b.throttled);
                prop_assert_eq!(a.kind, b.kind);
                prop_assert_eq!(a.host, b.host);
            }
            (a, b) => prop_assert_eq!(a, b),
        }
    }

    #[test]
    fn hosts_come_back_as_written(
        name in "[a-z0-9][a-z0-9.-]{0,40}",
        addr in "[0-9a-f:.]{2,39}",
        reply in ".{0,80}",
    ) {
        let host = format!("{name}[{addr}]");
        prop_assert_eq!(
            classify(&format!("TLS is required, but was not offered by host {host}")),
            tls(NotOffered, Some(&host))
        );
        prop_assert_eq!(
            classify(&format!("TLS is required, but host {host} refused to start TLS: {reply}")),
            tls(StartTlsRefused, Some(&host))
        );
    }

    /// Whatever a remote server replies, it is never taken for our own TLS
    /// failure: the reply comes after "host H said: ".
    #[test]
    fn remote_replies_are_never_tls(host in "[a-z.]{1,20}\\[[0-9.]{7,15}\\]", i in 0..TLS_TABLE.len()) {
        let text = format!("host {host} said: 451 {}", TLS_TABLE[i].0);
        prop_assert_eq!(classify(&text), Classification::NotTls);
    }

    #[test]
    fn ascii_case_is_ignored(i in 0..TLS_TABLE.len(), flips in proptest::collection::vec(any::<bool>(), 1..16)) {
        let (text, kind, _) = TLS_TABLE[i];
        let shouted = random_case(text, &flips);
        match classify(&shouted) {
            Classification::Tls(f) => prop_assert_eq!(f.kind, kind),
            other => prop_assert!(false, "{shouted}: {other:?}"),
        }
    }
}
