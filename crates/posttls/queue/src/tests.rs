use std::io::{self, BufRead, BufReader, Read};

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// The example of `shared/spec/postfix.md`, as Postfix 3.7 printed it.
const SPEC_LINE: &str = r#"{"queue_name": "deferred", "queue_id": "4A0AF98C232", "arrival_time": 1795308412, "message_size": 324, "forced_expire": false, "sender": "alice@example.test", "recipients": [{"address": "bob@notls.example", "delay_reason": "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]"}]}"#;

#[test]
fn parses_the_postfix_example() {
    let m = parse_line(SPEC_LINE).unwrap();
    assert_eq!(m.queue_name, "deferred");
    assert_eq!(m.queue_id.as_str(), "4A0AF98C232");
    assert_eq!(m.arrival_time, 1795308412);
    assert_eq!(m.message_size, 324);
    assert!(!m.forced_expire);
    assert_eq!(m.sender, "alice@example.test");
    assert!(!m.is_null_sender());
    assert_eq!(
        m.recipients,
        vec![QueuedRecipient {
            address: "bob@notls.example".into(),
            delay_reason: Some(
                "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]".into()
            ),
            orig_address: None,
            bounce_reason: None,
        }]
    );
    assert_eq!(m.pending_recipients().count(), 1);
}

#[test]
fn missing_optional_members_are_fine() {
    // Postfix < 3.5 (no forced_expire), a recipient in delivery (no
    // delay_reason), a message without recipients listed.
    let m = parse_line(
        r#"{"queue_name": "active", "queue_id": "C800B104BA4", "arrival_time": 1, "message_size": 2, "sender": "a@b", "recipients": [{"address": "c@d"}]}"#,
    )
    .unwrap();
    assert!(!m.forced_expire);
    assert_eq!(m.recipients[0].delay_reason, None);
    let m = parse_line(
        r#"{"queue_name": "incoming", "queue_id": "C800B104BA4", "arrival_time": 1, "message_size": 2, "sender": "a@b", "recipients": []}"#,
    )
    .unwrap();
    assert!(m.recipients.is_empty());
}

#[test]
fn unknown_members_are_ignored() {
    let m = parse_line(
        r#"{"future": {"nested": [1, 2, {"x": null}]}, "queue_name": "deferred", "queue_id": "AB12", "arrival_time": 5, "message_size": 6, "forced_expire": true, "sender": "s@x", "recipients": [{"address": "r@y", "dsn_notify": 14, "delay_reason": "later"}], "another": 1.5e300}"#,
    )
    .unwrap();
    assert!(m.forced_expire);
    assert_eq!(m.recipients[0].delay_reason.as_deref(), Some("later"));
}

#[test]
fn early_3_5_member_name_force_expired_is_understood() {
    let m = parse_line(
        r#"{"queue_name": "deferred", "queue_id": "AB12", "arrival_time": 5, "message_size": 6, "force_expired": true, "sender": "s@x", "recipients": []}"#,
    )
    .unwrap();
    assert!(m.forced_expire);
}

#[test]
fn postfix_3_11_members_and_empty_texts() {
    let m = parse_line(
        r#"{"queue_name": "deferred", "queue_id": "4hxKf66gyVz187c", "arrival_time": 1790971838, "message_size": 522, "forced_expire": false, "sender": "editor@example.test", "recipients": [{"orig_address": "", "address": "a@x.example", "delay_reason": "Host or domain name not found"}, {"orig_address": "alias@example.test", "address": "b@y.example", "bounce_reason": "host y said: 550 5.1.1 no such user"}, {"address": "c@z.example", "delay_reason": ""}]}"#,
    )
    .unwrap();
    let [a, b, c] = &m.recipients[..] else {
        panic!("three recipients expected: {m:?}")
    };
    assert_eq!(a.orig_address, None, "empty orig_address means none");
    assert!(a.is_pending());
    assert_eq!(b.orig_address.as_deref(), Some("alias@example.test"));
    assert!(!b.is_pending(), "a bounced recipient is done");
    assert_eq!(c.delay_reason, None);
    let pending: Vec<_> = m.pending_recipients().map(|r| r.address.as_str()).collect();
    assert_eq!(pending, ["a@x.example", "c@z.example"]);
}

#[test]
fn null_sender_is_kept_as_shown() {
    let m = parse_line(
        r#"{"queue_name": "deferred", "queue_id": "BBBBBBBBBBB", "arrival_time": 1785318106, "message_size": 2552, "forced_expire": false, "sender": "MAILER-DAEMON", "recipients": [{"orig_address": "", "address": "deferred@example.invalid", "delay_reason": "alias database unavailable"}]}"#,
    )
    .unwrap();
    assert_eq!(m.sender, "MAILER-DAEMON");
    assert!(m.is_null_sender());
    let mut m = m;
    m.sender = String::new();
    assert!(m.is_null_sender());
    m.sender = "mailer-daemon@example.test".into();
    assert!(!m.is_null_sender());
}

#[test]
fn escapes_are_decoded() {
    // showq_json.c escapes control characters and quotes; unprintable
    // bytes are already '?'.
    let m = parse_line(
        r#"{"queue_name": "deferred", "queue_id": "AB12", "arrival_time": 5, "message_size": 6, "sender": "\"john doe\"@example.test", "recipients": [{"address": "r@y", "delay_reason": "host y[1.2.3.4] said: 451 4.3.0 line1\nline2\u007F ?"}]}"#,
    )
    .unwrap();
    assert_eq!(m.sender, "\"john doe\"@example.test");
    assert_eq!(
        m.recipients[0].delay_reason.as_deref(),
        Some("host y[1.2.3.4] said: 451 4.3.0 line1\nline2\u{7f} ?")
    );
}

/// The security boundary at the parser: hostile ids in otherwise valid
/// entries are refused, with the reason, and never reach a QueuedMessage.
#[test]
fn hostile_queue_ids_are_refused() {
    for id in [
        "-",
        "--help",
        "$(reboot)",
        "AB12\nCD34",
        "AB12 CD34",
        "",
        "ALL",
    ] {
        let line = json!({
            "queue_name": "deferred", "queue_id": id, "arrival_time": 5,
            "message_size": 6, "sender": "s@x", "recipients": [],
        })
        .to_string();
        match parse_line(&line) {
            Err(QueueParseError::QueueId(_)) => {}
            other => panic!("{id:?}: {other:?}"),
        }
    }
}

#[test]
fn malformed_lines_are_errors() {
    let bad = [
        "",
        "not json",
        "[]",
        "{}",
        r#"{"queue_name": "deferred", "queue_id": "AB12", "arrival_time": "5", "message_size": 6, "sender": "s", "recipients": []}"#,
        r#"{"queue_name": "deferred", "queue_id": "AB12", "arrival_time": 5, "message_size": -6, "sender": "s", "recipients": []}"#,
        r#"{"queue_name": "deferred", "queue_id": "AB12", "arrival_time": 5, "message_size": 6, "sender": "s", "recipients": [{}]}"#,
        r#"{"queue_name": "deferred", "queue_id": "AB12", "arrival_time": 5, "message_size": 6, "sender": "s", "recipients": []"#,
        r#"{"queue_name": "deferred", "queue_id": 12, "arrival_time": 5, "message_size": 6, "sender": "s", "recipients": []}"#,
    ];
    for line in bad {
        assert!(
            matches!(parse_line(line), Err(QueueParseError::Json(_))),
            "{line}"
        );
    }
}

#[test]
fn one_bad_line_never_costs_the_others() {
    let mut input = Vec::new();
    input.extend_from_slice(SPEC_LINE.as_bytes());
    input.extend_from_slice(b"\n\n   \ngarbage\n");
    input.extend_from_slice(b"{\"queue_name\": \"\xff\"}\n");
    input.extend_from_slice(SPEC_LINE.replace("4A0AF98C232", "--help").as_bytes());
    input.push(b'\n');
    input.extend_from_slice(SPEC_LINE.replace("4A0AF98C232", "C800B104BA4").as_bytes());
    input.extend_from_slice(b"\r\n");
    // A truncated last line (postqueue killed mid-write), no line end.
    input.extend_from_slice(&SPEC_LINE.as_bytes()[..40]);

    let scan = parse_queue(&input[..]);
    let ids: Vec<_> = scan.messages.iter().map(|m| m.queue_id.as_str()).collect();
    assert_eq!(ids, ["4A0AF98C232", "C800B104BA4"]);
    let lines: Vec<_> = scan.errors.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [4, 5, 6, 8]);
    assert!(matches!(scan.errors[0].1, QueueParseError::Json(_)));
    assert!(matches!(scan.errors[1].1, QueueParseError::NotUtf8));
    assert!(matches!(scan.errors[2].1, QueueParseError::QueueId(_)));
    assert!(matches!(scan.errors[3].1, QueueParseError::Json(_)));
    assert!(scan.is_complete());
}

#[test]
fn empty_listing_is_an_empty_queue() {
    let scan = parse_queue(&b""[..]);
    assert!(scan.messages.is_empty() && scan.errors.is_empty() && scan.is_complete());
}

/// A reader that fails after its data: the pipe from postqueue broke.
struct FailingAfter<'a>(&'a [u8]);

impl Read for FailingAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::Error::other("pipe broke"));
        }
        let n = self.0.len().min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn read_error_ends_the_listing_and_marks_it_incomplete() {
    let data = format!("{SPEC_LINE}\n");
    let reader: Box<dyn BufRead> = Box::new(BufReader::new(FailingAfter(data.as_bytes())));
    let scan = parse_queue(reader);
    assert_eq!(scan.messages.len(), 1);
    assert_eq!(scan.errors.len(), 1);
    assert_eq!(scan.errors[0].0, 2);
    assert!(matches!(scan.errors[0].1, QueueParseError::Read(_)));
    assert!(!scan.is_complete());
}

fn recipient() -> impl Strategy<Value = QueuedRecipient> {
    (
        ".{0,40}",
        proptest::option::of(".{1,80}"),
        proptest::option::of(".{1,40}"),
        proptest::option::of(".{1,40}"),
    )
        .prop_map(
            |(address, delay_reason, orig_address, bounce_reason)| QueuedRecipient {
                address,
                delay_reason,
                orig_address,
                bounce_reason,
            },
        )
}

fn message() -> impl Strategy<Value = QueuedMessage> {
    (
        "(incoming|active|deferred|hold|maildrop)",
        "[A-Za-z0-9_]{1,32}".prop_filter("not ALL", |s| !s.eq_ignore_ascii_case("ALL")),
        any::<i64>(),
        any::<u64>(),
        any::<bool>(),
        ".{0,40}",
        proptest::collection::vec(recipient(), 0..5),
    )
        .prop_map(
            |(queue_name, id, arrival_time, message_size, forced_expire, sender, recipients)| {
                QueuedMessage {
                    queue_name,
                    queue_id: QueueId::new(&id).unwrap(),
                    arrival_time,
                    message_size,
                    forced_expire,
                    sender,
                    recipients,
                }
            },
        )
}

/// The line postqueue would print for `m` (member order and spacing as in
/// showq_json.c; the 3.11 members only when set).
fn postqueue_line(m: &QueuedMessage) -> String {
    let recipients: Vec<_> = m
        .recipients
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            if let Some(v) = &r.orig_address {
                o.insert("orig_address".into(), json!(v));
            }
            o.insert("address".into(), json!(r.address));
            if let Some(v) = &r.delay_reason {
                o.insert("delay_reason".into(), json!(v));
            }
            if let Some(v) = &r.bounce_reason {
                o.insert("bounce_reason".into(), json!(v));
            }
            serde_json::Value::Object(o)
        })
        .collect();
    json!({
        "queue_name": m.queue_name, "queue_id": m.queue_id.as_str(),
        "arrival_time": m.arrival_time, "message_size": m.message_size,
        "forced_expire": m.forced_expire, "sender": m.sender, "recipients": recipients,
    })
    .to_string()
}

proptest! {
    #[test]
    fn printed_messages_parse_back(m in message()) {
        prop_assert_eq!(parse_line(&postqueue_line(&m)).unwrap(), m);
    }

    #[test]
    fn listings_parse_back_whatever_the_noise(
        messages in proptest::collection::vec(message(), 0..8),
        noise in proptest::collection::vec(proptest::option::of("[^\n]{0,30}"), 0..8),
    ) {
        let mut text = String::new();
        let mut expected_errors = 0;
        for (i, m) in messages.iter().enumerate() {
            text.push_str(&postqueue_line(m));
            text.push('\n');
            if let Some(Some(junk)) = noise.get(i) {
                // Junk that is not blank and not a message is one error.
                if !junk.trim().is_empty() && parse_line(junk).is_err() {
                    expected_errors += 1;
                    text.push_str(junk);
                    text.push('\n');
                }
            }
        }
        let scan = parse_queue(text.as_bytes());
        prop_assert_eq!(&scan.messages, &messages);
        prop_assert_eq!(scan.errors.len(), expected_errors);
    }

    /// Arbitrary input never panics the parser and never yields an unsafe id.
    #[test]
    fn arbitrary_lines_never_panic(line in any::<String>()) {
        if let Ok(m) = parse_line(&line) {
            prop_assert!(m.queue_id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let scan = parse_queue(&bytes[..]);
        prop_assert!(scan.is_complete());
    }
}
