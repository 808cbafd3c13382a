//! The pure decision of a release: from what the request approved, what
//! the queue listing said before the hold and what the held queue file
//! says now, which recipients get the opportunistic-TLS copy, which keep
//! their normal path, and why. No I/O, so every rule is tested directly.

use posttls_classify::classify;
use posttls_policy::{decide, Decision, DomainSet, OwnSenders, SubmissionEvidence};
use posttls_postfix::{Envelope, EnvelopeRecipient};
use posttls_queue::QueuedMessage;
use posttls_store::RecipientOutcome;

/// What a release does with the held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlan {
    /// Approved, TLS-failed, releasable now: the opportunistic-TLS copy.
    pub release: Vec<EnvelopeRecipient>,
    /// Every other pending recipient: a copy on the normal path.
    pub keep: Vec<EnvelopeRecipient>,
    /// What happens to each recipient, and why when it is not released.
    pub outcomes: Vec<(String, RecipientOutcome, Option<String>)>,
}

/// Why nothing may be done to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Checks that the held file is the message the request is about and that
/// it is a message of ours waiting for TLS (the same rule as the scanner's),
/// whatever the database says.
pub fn check_message(
    queued: &QueuedMessage,
    envelope: &Envelope,
    own: &OwnSenders,
    mandatory: &DomainSet,
) -> Result<(), Refusal> {
    if internal_form(&queued.sender) != envelope.sender
        && !(queued.is_null_sender() && envelope.sender.is_empty())
    {
        return Err(Refusal(
            "the queue file's sender is not the message's sender".into(),
        ));
    }
    let evidence = SubmissionEvidence {
        local_submission: envelope.local_submission,
        sasl_username: envelope.sasl_username.clone(),
    };
    let is_own = own.is_own(&envelope.sender, &evidence);
    match decide(
        queued,
        classify,
        is_own,
        envelope.has_unknown_sendopts(),
        mandatory,
    ) {
        Decision::Notify(_) => Ok(()),
        Decision::Ignore(reason) => Err(Refusal(format!(
            "the message is not one PostTLS may act on ({})",
            reason.short_name()
        ))),
    }
}

/// Decides a release. `approved`: the recipients the request approved;
/// `queued`: the listing taken just before the hold (delay reasons);
/// `envelope`: the held queue file (who is still pending, and how).
pub fn release(
    approved: &[String],
    queued: &QueuedMessage,
    envelope: &Envelope,
    own: &OwnSenders,
    mandatory: &DomainSet,
) -> Result<ReleasePlan, Refusal> {
    check_message(queued, envelope, own, mandatory)?;
    let Decision::Notify(notice) = decide(
        queued,
        classify,
        true,
        envelope.has_unknown_sendopts(),
        mandatory,
    ) else {
        unreachable!("check_message accepted it");
    };
    let approved: Vec<String> = approved.iter().map(|a| internal_form(a)).collect();
    let in_list = |list: &[&posttls_queue::QueuedRecipient], address: &str| {
        list.iter().any(|r| internal_form(&r.address) == address)
    };
    let requiretls = envelope.has_unknown_sendopts();
    let mut plan = ReleasePlan {
        release: Vec::new(),
        keep: Vec::new(),
        outcomes: Vec::new(),
    };
    for recipient in &envelope.recipients {
        let address = recipient.address.as_str();
        let why = if requiretls {
            Some("the message requires TLS itself (REQUIRETLS)".to_string())
        } else if in_list(&notice.mandatory, address) {
            Some("its domain requires encryption".to_string())
        } else if !in_list(&notice.releasable, address) {
            let reason = queued
                .recipients
                .iter()
                .find(|r| internal_form(&r.address) == address)
                .and_then(|r| r.delay_reason.clone())
                .unwrap_or_else(|| "no reason known yet".into());
            Some(format!("it waits for another reason than TLS ({reason})"))
        } else if !approved.iter().any(|a| a == address) {
            Some("the request did not approve this recipient".to_string())
        } else {
            None
        };
        match why {
            None => {
                plan.release.push(recipient.clone());
                plan.outcomes
                    .push((address.to_string(), RecipientOutcome::Released, None));
            }
            Some(why) => {
                plan.keep.push(recipient.clone());
                plan.outcomes
                    .push((address.to_string(), RecipientOutcome::Kept, Some(why)));
            }
        }
    }
    for address in &approved {
        if !envelope.recipients.iter().any(|r| &r.address == address) {
            plan.outcomes.push((
                address.clone(),
                RecipientOutcome::Gone,
                Some("it was no longer waiting (delivered or returned meanwhile)".into()),
            ));
        }
    }
    if plan.release.is_empty() {
        let reasons: Vec<String> = plan
            .outcomes
            .iter()
            .map(|(a, _, why)| format!("{a}: {}", why.as_deref().unwrap_or("")))
            .collect();
        return Err(Refusal(format!(
            "no recipient may be sent unencrypted now ({})",
            reasons.join("; ")
        )));
    }
    Ok(plan)
}

/// An address as Postfix keeps it internally: `postqueue -j` shows a local
/// part that needs it RFC 5322-quoted (`"john doe"@x`), `postcat -e`
/// unquoted (`john doe@x`).
pub fn internal_form(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_string();
    };
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(quoted) => {
            let mut out = String::with_capacity(address.len());
            let mut escaped = false;
            for c in quoted.chars() {
                if c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(c);
            }
            format!("{out}@{domain}")
        }
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posttls_queue::parse_queue;

    const NOT_OFFERED: &str = "TLS is required, but was not offered by host mx[192.0.2.1]";

    fn queued(recipients: &[(&str, &str)]) -> QueuedMessage {
        let recipients: Vec<String> = recipients
            .iter()
            .map(|(a, r)| {
                format!(
                    r#"{{"address":"{}","delay_reason":"{r}"}}"#,
                    a.replace('"', "\\\"")
                )
            })
            .collect();
        let line = format!(
            r#"{{"queue_name":"deferred","queue_id":"4A0AF98C232","arrival_time":1,"message_size":3,"forced_expire":false,"sender":"alice@example.org","recipients":[{}]}}"#,
            recipients.join(",")
        );
        parse_queue(line.as_bytes()).messages.remove(0)
    }

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            sender: "alice@example.org".into(),
            local_submission: true,
            recipients: recipients
                .iter()
                .map(|a| EnvelopeRecipient {
                    address: a.to_string(),
                    ..EnvelopeRecipient::default()
                })
                .collect(),
            ..Envelope::default()
        }
    }

    fn own() -> OwnSenders {
        OwnSenders {
            domains: DomainSet::parse_list("example.org").unwrap(),
        }
    }

    fn addresses(list: &[EnvelopeRecipient]) -> Vec<&str> {
        list.iter().map(|r| r.address.as_str()).collect()
    }

    #[test]
    fn only_approved_tls_failed_pending_recipients_are_released() {
        let queue = queued(&[
            ("a@x.example", NOT_OFFERED),
            ("b@x.example", NOT_OFFERED),
            (
                "c@y.example",
                "connect to y[192.0.2.2]:25: Connection refused",
            ),
            ("d@bank.example", NOT_OFFERED),
        ]);
        let approved = [
            "a@x.example",
            "c@y.example",
            "d@bank.example",
            "e@gone.example",
        ]
        .map(String::from);
        let plan = release(
            &approved,
            &queue,
            &envelope(&[
                "a@x.example",
                "b@x.example",
                "c@y.example",
                "d@bank.example",
            ]),
            &own(),
            &DomainSet::parse_list("bank.example").unwrap(),
        )
        .unwrap();
        assert_eq!(addresses(&plan.release), ["a@x.example"]);
        assert_eq!(
            addresses(&plan.keep),
            ["b@x.example", "c@y.example", "d@bank.example"]
        );
        let why = |a: &str| {
            plan.outcomes
                .iter()
                .find(|(address, _, _)| address == a)
                .unwrap()
                .2
                .clone()
                .unwrap_or_default()
        };
        assert!(why("b@x.example").contains("did not approve"));
        assert!(why("c@y.example").contains("Connection refused"));
        assert!(why("d@bank.example").contains("requires encryption"));
        assert!(why("e@gone.example").contains("no longer waiting"));
    }

    #[test]
    fn the_held_file_decides_who_is_still_pending() {
        // b was delivered between the listing and the hold.
        let queue = queued(&[("a@x.example", NOT_OFFERED), ("b@x.example", NOT_OFFERED)]);
        let approved = ["a@x.example", "b@x.example"].map(String::from);
        let plan = release(
            &approved,
            &queue,
            &envelope(&["a@x.example"]),
            &own(),
            &DomainSet::new(),
        )
        .unwrap();
        assert_eq!(addresses(&plan.release), ["a@x.example"]);
        assert!(plan.keep.is_empty());
    }

    #[test]
    fn relayed_mail_requiretls_and_foreign_files_are_refused() {
        let queue = queued(&[("a@x.example", NOT_OFFERED)]);
        let approved = ["a@x.example".to_string()];
        let mut relayed = envelope(&["a@x.example"]);
        relayed.local_submission = false;
        assert!(
            release(&approved, &queue, &relayed, &own(), &DomainSet::new())
                .unwrap_err()
                .0
                .contains("not_own_sender")
        );
        let mut requiretls = envelope(&["a@x.example"]);
        requiretls.sendopts = 1 << 5;
        assert!(
            release(&approved, &queue, &requiretls, &own(), &DomainSet::new())
                .unwrap_err()
                .0
                .contains("REQUIRETLS")
        );
        let mut other = envelope(&["a@x.example"]);
        other.sender = "mallory@example.org".into();
        assert!(release(&approved, &queue, &other, &own(), &DomainSet::new()).is_err());
    }

    #[test]
    fn quoted_local_parts_compare_with_the_internal_form() {
        assert_eq!(internal_form("\"john doe\"@x"), "john doe@x");
        assert_eq!(internal_form("\"a\\\"b\"@x"), "a\"b@x");
        assert_eq!(internal_form("bob@x"), "bob@x");
    }
}
