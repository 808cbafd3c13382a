use posttls_classify::classify;
use posttls_queue::{parse_line, QueueId};
use proptest::prelude::*;
use serde_json::json;

use super::*;

const NOT_OFFERED: &str =
    "TLS is required, but was not offered by host mx.notls.example[192.0.2.1]";
const REFUSED: &str = "connect to mx.down.example[192.0.2.2]:25: Connection refused";
const REQUIRETLS: &str = "REQUIRETLS Failure: sender requested REQUIRETLS, but TLS service was not offered by host mx.notls.example[192.0.2.1]";

fn recipient(address: &str, reason: Option<&str>) -> QueuedRecipient {
    QueuedRecipient {
        address: address.into(),
        delay_reason: reason.map(Into::into),
        orig_address: None,
        bounce_reason: None,
    }
}

fn message(sender: &str, recipients: Vec<QueuedRecipient>) -> QueuedMessage {
    QueuedMessage {
        queue_name: "deferred".into(),
        queue_id: QueueId::new("4A0AF98C232").unwrap(),
        arrival_time: 1795308412,
        message_size: 324,
        forced_expire: false,
        sender: sender.into(),
        recipients,
    }
}

fn mandatory() -> DomainSet {
    DomainSet::parse_list("bank.example .gov.example").unwrap()
}

fn addresses(list: &[&QueuedRecipient]) -> Vec<String> {
    list.iter().map(|r| r.address.clone()).collect()
}

#[test]
fn own_sender_needs_our_domain_and_submission_evidence() {
    let own = OwnSenders {
        domains: DomainSet::parse_list("example.com .example.com").unwrap(),
    };
    let local = SubmissionEvidence {
        local_submission: true,
        sasl_username: None,
    };
    let authenticated = SubmissionEvidence {
        local_submission: false,
        sasl_username: Some("alice".into()),
    };
    let relayed = SubmissionEvidence::default();
    let empty_login = SubmissionEvidence {
        local_submission: false,
        sasl_username: Some(String::new()),
    };

    assert!(own.is_own("alice@example.com", &local));
    assert!(own.is_own("alice@Sales.Example.COM", &authenticated));
    // Our domain in the envelope of relayed mail: forged or not, never ours.
    assert!(!own.is_own("alice@example.com", &relayed));
    assert!(!own.is_own("alice@example.com", &empty_login));
    // Our user with a foreign envelope domain.
    assert!(!own.is_own("alice@gmail.example", &authenticated));
    // The null sender and local names without a domain.
    assert!(!own.is_own("MAILER-DAEMON", &local));
    assert!(!own.is_own("", &local));
    assert!(!own.is_own("root", &local));
}

#[test]
fn single_not_offered_recipient_is_releasable() {
    let m = message(
        "alice@example.com",
        vec![recipient("bob@notls.example", Some(NOT_OFFERED))],
    );
    let Decision::Notify(notice) = decide(&m, classify, true, false, &mandatory()) else {
        panic!()
    };
    assert_eq!(notice.tls_failed.len(), 1);
    assert_eq!(notice.tls_failed[0].1.kind, TlsFailureKind::NotOffered);
    assert_eq!(
        notice.tls_failed[0].1.host.as_deref(),
        Some("mx.notls.example[192.0.2.1]")
    );
    assert_eq!(addresses(&notice.releasable), ["bob@notls.example"]);
    assert!(notice.mandatory.is_empty() && notice.other_pending.is_empty());
}

#[test]
fn a_queue_file_that_asked_for_requiretls_binds_every_recipient() {
    let m = message(
        "alice@example.com",
        vec![
            recipient("bob@notls.example", Some(NOT_OFFERED)),
            recipient("carl@notls.example", Some(NOT_OFFERED)),
        ],
    );
    let Decision::Notify(notice) = decide(&m, classify, true, true, &mandatory()) else {
        panic!()
    };
    assert!(notice.releasable.is_empty());
    assert_eq!(
        addresses(&notice.mandatory),
        ["bob@notls.example", "carl@notls.example"]
    );
}

#[test]
fn multi_recipient_message_splits_per_recipient() {
    let mut done = recipient("done@notls.example", Some(NOT_OFFERED));
    done.bounce_reason = Some("host x said: 550 5.1.1 unknown user".into());
    let mut aliased = recipient("clerk@elsewhere.example", Some(NOT_OFFERED));
    aliased.orig_address = Some("payments@bank.example".into());
    let m = message(
        "alice@example.com",
        vec![
            recipient("bob@notls.example", Some(NOT_OFFERED)),
            recipient("carol@down.example", Some(REFUSED)),
            recipient("dave@bank.example", Some("Server certificate not verified")),
            recipient(
                "erin@branch.gov.example",
                Some("Cannot start TLS: handshake failure"),
            ),
            recipient("frank@odd.example", Some("something Postfix never says")),
            recipient("grace@busy.example", None),
            done,
            aliased,
        ],
    );
    let Decision::Notify(notice) = decide(&m, classify, true, false, &mandatory()) else {
        panic!()
    };
    assert_eq!(
        addresses(
            &notice
                .tls_failed
                .iter()
                .map(|(r, _)| *r)
                .collect::<Vec<_>>()
        ),
        [
            "bob@notls.example",
            "dave@bank.example",
            "erin@branch.gov.example",
            "clerk@elsewhere.example"
        ]
    );
    assert_eq!(addresses(&notice.releasable), ["bob@notls.example"]);
    assert_eq!(
        addresses(&notice.mandatory),
        [
            "dave@bank.example",
            "erin@branch.gov.example",
            "clerk@elsewhere.example"
        ]
    );
    assert_eq!(
        addresses(&notice.other_pending),
        [
            "carol@down.example",
            "frank@odd.example",
            "grace@busy.example"
        ]
    );
}

#[test]
fn mandatory_domains_hold_in_either_idna_form() {
    let mandatory = DomainSet::parse_list("bücher.example .xn--strae-oqa.example").unwrap();
    let mut aliased = recipient("clerk@elsewhere.example", Some(NOT_OFFERED));
    aliased.orig_address = Some("info@BÜCHER.example".into());
    let m = message(
        "alice@example.com",
        vec![
            recipient("bob@xn--bcher-kva.example", Some(NOT_OFFERED)),
            recipient("carol@amt.straße.example", Some(NOT_OFFERED)),
            recipient("dave@bucher.example", Some(NOT_OFFERED)),
            aliased,
        ],
    );
    let Decision::Notify(notice) = decide(&m, classify, true, false, &mandatory) else {
        panic!()
    };
    assert_eq!(
        addresses(&notice.mandatory),
        [
            "bob@xn--bcher-kva.example",
            "carol@amt.straße.example",
            "clerk@elsewhere.example"
        ]
    );
    assert_eq!(addresses(&notice.releasable), ["dave@bucher.example"]);
}

#[test]
fn requiretls_messages_are_never_releasable() {
    let m = message(
        "alice@example.com",
        vec![
            recipient("bob@notls.example", Some(REQUIRETLS)),
            recipient("carol@other.example", Some(NOT_OFFERED)),
        ],
    );
    let Decision::Notify(notice) = decide(&m, classify, true, false, &DomainSet::new()) else {
        panic!()
    };
    assert!(notice.releasable.is_empty());
    assert_eq!(notice.mandatory.len(), 2);
}

#[test]
fn ignore_reasons_in_order() {
    let tls_failed = vec![recipient("bob@notls.example", Some(NOT_OFFERED))];
    let none = DomainSet::new();

    let bounce = message("MAILER-DAEMON", tls_failed.clone());
    // The null sender wins even when the caller thinks it is ours.
    assert_eq!(
        decide(&bounce, classify, true, false, &none),
        Decision::Ignore(IgnoreReason::NullSender)
    );

    let m = message("alice@example.com", tls_failed.clone());
    assert_eq!(
        decide(&m, classify, false, false, &none),
        Decision::Ignore(IgnoreReason::NotOwnSender)
    );

    let mut expiring = m.clone();
    expiring.forced_expire = true;
    assert_eq!(
        decide(&expiring, classify, true, false, &none),
        Decision::Ignore(IgnoreReason::ForcedExpire)
    );

    let mut held = m.clone();
    held.queue_name = "hold".into();
    assert_eq!(
        decide(&held, classify, true, false, &none),
        Decision::Ignore(IgnoreReason::OnHold)
    );

    let other = message(
        "alice@example.com",
        vec![
            recipient("carol@down.example", Some(REFUSED)),
            recipient("frank@odd.example", Some("unrecognised")),
            recipient("grace@busy.example", None),
        ],
    );
    assert_eq!(
        decide(&other, classify, true, false, &none),
        Decision::Ignore(IgnoreReason::NoTlsFailure)
    );

    let mut only_done = message("alice@example.com", tls_failed);
    only_done.recipients[0].bounce_reason = Some("bounced".into());
    assert_eq!(
        decide(&only_done, classify, true, false, &none),
        Decision::Ignore(IgnoreReason::NoTlsFailure)
    );

    let names: Vec<_> = [
        IgnoreReason::NullSender,
        IgnoreReason::NotOwnSender,
        IgnoreReason::ForcedExpire,
        IgnoreReason::OnHold,
        IgnoreReason::NoTlsFailure,
    ]
    .map(IgnoreReason::short_name)
    .into();
    assert_eq!(
        names,
        [
            "null_sender",
            "not_own_sender",
            "forced_expire",
            "on_hold",
            "no_tls_failure"
        ]
    );
}

#[test]
fn throttled_failures_count_as_tls() {
    let m = message(
        "alice@example.com",
        vec![recipient(
            "bob@notls.example",
            Some(&format!("delivery temporarily suspended: {NOT_OFFERED}")),
        )],
    );
    let Decision::Notify(notice) = decide(&m, classify, true, false, &DomainSet::new()) else {
        panic!()
    };
    assert!(notice.tls_failed[0].1.throttled);
    assert_eq!(notice.releasable.len(), 1);
}

#[test]
fn from_a_postqueue_line_to_a_decision() {
    let line = json!({
        "queue_name": "deferred", "queue_id": "4A0AF98C232", "arrival_time": 1795308412,
        "message_size": 324, "forced_expire": false, "sender": "alice@example.test",
        "recipients": [{"address": "bob@notls.example", "delay_reason": "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]"}],
    })
    .to_string();
    let m = parse_line(&line).unwrap();
    let own = OwnSenders {
        domains: DomainSet::parse_list("example.test").unwrap(),
    };
    let evidence = SubmissionEvidence {
        local_submission: true,
        sasl_username: None,
    };
    let decision = decide(
        &m,
        classify,
        own.is_own(&m.sender, &evidence),
        false,
        &DomainSet::new(),
    );
    let Decision::Notify(notice) = decision else {
        panic!("{decision:?}")
    };
    assert_eq!(addresses(&notice.releasable), ["bob@notls.example"]);
}

const REASONS: &[&str] = &[
    NOT_OFFERED,
    REFUSED,
    REQUIRETLS,
    "Server certificate not verified",
    "Cannot start TLS: handshake failure",
    "host mx.example[192.0.2.3] said: 450 4.2.0 greylisted",
    "delivery temporarily suspended: TLS is required, but was not offered by host a[192.0.2.4]",
    "no TLSA records found",
    "unrecognised text",
];

fn any_recipient() -> impl Strategy<Value = QueuedRecipient> {
    (
        "[a-z]{1,5}@(notls|bank|x\\.gov|down|plain)\\.example",
        proptest::option::of(0..REASONS.len()),
        proptest::option::of("[a-z]{1,5}@(bank|plain)\\.example"),
        any::<bool>(),
    )
        .prop_map(|(address, reason, orig, bounced)| QueuedRecipient {
            address,
            delay_reason: reason.map(|i| REASONS[i].to_owned()),
            orig_address: orig,
            bounce_reason: bounced.then(|| "bounced".to_owned()),
        })
}

fn any_message() -> impl Strategy<Value = QueuedMessage> {
    (
        "(alice@example\\.com|MAILER-DAEMON)",
        "(deferred|active|hold|incoming)",
        any::<bool>(),
        proptest::collection::vec(any_recipient(), 0..8),
    )
        .prop_map(|(sender, queue_name, forced_expire, recipients)| {
            let mut m = message(&sender, recipients);
            m.queue_name = queue_name;
            m.forced_expire = forced_expire;
            m
        })
}

proptest! {
    /// The bookkeeping invariants of a notice, and the safety rules.
    #[test]
    fn decisions_are_consistent_and_safe(m in any_message(), own in any::<bool>()) {
        let mandatory = mandatory();
        match decide(&m, classify, own, false, &mandatory) {
            Decision::Ignore(reason) => {
                let pending_tls = m.pending_recipients().any(|r| {
                    matches!(r.delay_reason.as_deref().map(classify), Some(Classification::Tls(_)))
                });
                let expected = if m.is_null_sender() {
                    IgnoreReason::NullSender
                } else if !own {
                    IgnoreReason::NotOwnSender
                } else if m.forced_expire {
                    IgnoreReason::ForcedExpire
                } else if m.queue_name == "hold" {
                    IgnoreReason::OnHold
                } else {
                    prop_assert!(!pending_tls);
                    IgnoreReason::NoTlsFailure
                };
                prop_assert_eq!(reason, expected);
            }
            Decision::Notify(n) => {
                prop_assert!(own && !m.is_null_sender() && !m.forced_expire && m.queue_name != "hold");
                prop_assert!(!n.tls_failed.is_empty());
                // Every pending recipient exactly once in tls_failed or
                // other_pending, in queue order; done recipients nowhere.
                let failed: Vec<_> = n.tls_failed.iter().map(|(r, _)| *r).collect();
                let mut seen: Vec<_> = failed.iter().chain(&n.other_pending).map(|r| *r as *const QueuedRecipient).collect();
                let mut pending: Vec<_> = m.pending_recipients().map(|r| r as *const QueuedRecipient).collect();
                seen.sort();
                pending.sort();
                prop_assert_eq!(seen, pending);
                // mandatory + releasable == tls_failed, disjoint.
                prop_assert_eq!(n.mandatory.len() + n.releasable.len(), failed.len());
                for r in &n.releasable {
                    prop_assert!(failed.iter().any(|f| std::ptr::eq(*f, *r)));
                    prop_assert!(!n.mandatory.iter().any(|x| std::ptr::eq(*x, *r)));
                    // Never release into a mandatory domain, never a
                    // REQUIRETLS message, never an unknown reason.
                    prop_assert!(!mandatory.contains_address(&r.address));
                    prop_assert!(!r.orig_address.as_deref().is_some_and(|a| mandatory.contains_address(a)));
                    prop_assert!(matches!(r.delay_reason.as_deref().map(classify), Some(Classification::Tls(_))));
                    prop_assert!(r.is_pending());
                }
                if n.tls_failed.iter().any(|(_, f)| f.kind == TlsFailureKind::RequireTls) {
                    prop_assert!(n.releasable.is_empty());
                }
            }
        }
    }
}
