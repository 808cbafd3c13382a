//! A sender's `TLS-Required: No` (RFC 8689) on Debian 13's Postfix 3.10:
//! out of the box it sends the message in plaintext past
//! `smtp_tls_security_level = encrypt` and past a domain's
//! `smtp_tls_policy_maps` entry; `mailtls check posttls` says so, names the
//! paths, and once its printed fix is run the header is stripped on every
//! path and nothing is downgraded.

use std::time::Duration;

use serde_json::Value;

use super::check::{apply, check_part};
use super::{Domain, Lab, Mx, WAIT};
use crate::support::lab::Suite;
use crate::support::postfix::Postfix;
use crate::support::*;

/// The findings of `mailtls check posttls` that speak of the header.
fn tls_required_findings(lab: &Lab, postfix: &Postfix) -> Vec<Value> {
    let (_, findings) = check_part(
        &lab.root,
        postfix,
        "posttls",
        &["--posttls_config=/nonexistent/posttls.cfg"],
    );
    findings
        .into_iter()
        .filter(|f| {
            let message = f["message"].as_str().unwrap();
            message.contains("TLS-Required") || message.contains("header_checks")
        })
        .collect()
}

/// A message with `TLS-Required: No` from a local user (sendmail, through
/// pickup) and the same over SMTP (through smtpd), to both domains.
fn send_with_header(postfix: &Postfix, smtp_port: u16, recipients: &[String], subject: &str) {
    let message = format!(
        "From: alice@mailtls.test\nSubject: {subject} (local)\nTLS-Required: No\n\nplease\n"
    );
    let mut args = vec!["-f", "alice@mailtls.test", "--"];
    args.extend(recipients.iter().map(String::as_str));
    postfix.sendmail(&args, message.as_bytes());
    let rcpts: Vec<String> = recipients
        .iter()
        .map(|r| format!("RCPT TO:<{r}>"))
        .collect();
    crate::posttls::submit_smtp(
        smtp_port,
        "MAIL FROM:<alice@mailtls.test>",
        &rcpts.iter().map(String::as_str).collect::<Vec<_>>(),
        format!("From: alice@mailtls.test\r\nSubject: {subject} (smtp)\r\ntls-required: no\r\n\r\nplease\r\n").as_bytes(),
    );
}

#[test]
fn a_senders_tls_required_no_is_flagged_then_stripped_on_postfix_3_10() {
    // plain relies on the instance's `encrypt`; bank is a mandatory domain
    // with its own policy entry.
    let plain = Domain::new("plain", Mx::NoStarttls);
    let bank = Domain::new("bank", Mx::NoStarttls).policy("encrypt");
    let lab = Lab::start(Suite::Trixie, &[plain.clone(), bank.clone()]);
    let smtp_port = free_port();
    let postfix = Postfix::start(
        lab.postfix_options()
            .tls_security_level("encrypt")
            .main_cf("mynetworks = 127.0.0.0/8")
            .master_cf(&format!(
                "127.0.0.1:{smtp_port} inet n - n - - smtpd -o smtpd_recipient_restrictions=permit_mynetworks,reject"
            ))
            // PostTLS's own listener skips header checks: not a hole.
            .master_cf("posttls-reinject unix - - n - - smtpd -o receive_override_options=no_header_body_checks"),
    );
    let recipients = [
        format!("user@{}", plain.name()),
        format!("user@{}", bank.name()),
    ];

    // As installed: the hole, and check naming both entry paths.
    let findings = tls_required_findings(&lab, &postfix);
    let error = findings
        .iter()
        .find(|f| f["level"] == "error")
        .unwrap_or_else(|| panic!("no error about TLS-Required: {findings:#?}"));
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Postfix 3.10."), "{message}");
    assert!(
        message.contains("pickup/unix (no header_checks"),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{smtp_port}/inet")),
        "{message}"
    );
    assert!(!message.contains("posttls-reinject"), "{message}");
    send_with_header(&postfix, smtp_port, &recipients, "before");
    for domain in [&plain, &bank] {
        let got = lab.mxes[&domain.name()].wait_for(2, WAIT);
        assert!(
            got.iter().all(|m| !m.tls),
            "{}: sent in plaintext, as Postfix 3.10 does for the header",
            domain.name()
        );
    }

    // The fix as printed; then check is content and nothing is downgraded.
    apply(&lab.root, error);
    let findings = tls_required_findings(&lab, &postfix);
    assert!(findings.iter().all(|f| f["level"] == "ok"), "{findings:#?}");
    assert!(
        findings.iter().any(|f| f["message"]
            .as_str()
            .unwrap()
            .starts_with("every path mail enters by strips")),
        "{findings:#?}"
    );
    send_with_header(&postfix, smtp_port, &recipients, "after");
    let queue = postfix.wait_queue(WAIT, "both messages deferred for TLS", |queue| {
        queue.len() == 2
            && queue.iter().all(|m| {
                m["recipients"].as_array().unwrap().iter().all(|r| {
                    r["delay_reason"]
                        .as_str()
                        .is_some_and(|why| why.contains("TLS is required"))
                })
            })
    });
    assert_eq!(queue.len(), 2);
    std::thread::sleep(Duration::from_millis(500));
    for domain in [&plain, &bank] {
        assert_eq!(
            lab.mxes[&domain.name()].messages().len(),
            2,
            "{}: nothing more arrived",
            domain.name()
        );
    }
}

/// `mailtls check posttls` on 3.10: releases go with the header, so only
/// `posttls-reinject` is asked for (its lines alone printed), and a domain
/// whose policy entry requires TLS but is not a mandatory domain is named,
/// since a released copy skips `smtp_tls_policy_maps`.
#[test]
fn check_posttls_on_3_10_asks_for_the_3_10_listener_and_names_unprotected_policy_domains() {
    let bank = Domain::new("bank", Mx::NoStarttls).policy("encrypt");
    let lab = Lab::start(Suite::Trixie, std::slice::from_ref(&bank));
    let postfix = Postfix::start(lab.postfix_options().tls_security_level("encrypt"));
    let dir = lab.root.tempdir("posttls.");
    let inside = lab.root.inside_path(dir.path());
    let config = dir.path().join("posttls.cfg");
    let write_config = |mandatory: &str| {
        std::fs::write(
            &config,
            format!(
                "[posttls]\nown_domains = mailtls.test\nnotification_from = postmaster@mailtls.test\n\
                 base_url = https://posttls.mailtls.test\ndatabase = {0}/posttls.sqlite\n\
                 secret_key_file = {0}/secret.key\n{mandatory}",
                inside.display()
            ),
        )
        .unwrap();
    };
    write_config("");
    let config_option = format!("--posttls_config={}", inside.join("posttls.cfg").display());
    let findings = || {
        let (_, findings) = check_part(&lab.root, &postfix, "posttls", &[&config_option]);
        findings
    };
    let about = |findings: &[Value], text: &str| -> Value {
        findings
            .iter()
            .find(|f| f["message"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("nothing about {text:?} in {findings:#?}"))
            .clone()
    };

    let missing = about(
        &findings(),
        "listener: released messages cannot be re-injected",
    );
    assert_eq!(missing["level"], "error");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .starts_with("master.cf has no posttls-reinject listener"),
        "{missing}"
    );
    let fix = missing["fix"].as_str().unwrap();
    assert!(fix.contains("\nposttls-reinject  unix"), "{fix}");
    assert!(
        !fix.contains("posttls-release") && !fix.contains("smtp_may"),
        "{fix}"
    );
    // The printed lines appended as printed, and a reload.
    let lines: String = fix.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let master_cf = lab.root.host_path(&postfix.config_dir().join("master.cf"));
    let mut text = std::fs::read_to_string(&master_cf).unwrap();
    text.push_str(&lines);
    std::fs::write(&master_cf, text).unwrap();
    lab.root.run(
        "/usr/sbin/postfix",
        &["-c", postfix.config_dir().to_str().unwrap(), "reload"],
    );

    let after = findings();
    assert_eq!(
        about(&after, "master.cf has the posttls-reinject listener")["level"],
        "ok"
    );
    assert_eq!(
        about(
            &after,
            "released mail leaves through posttls-reinject with TLS-Required: No"
        )["level"],
        "ok"
    );
    let bypass = about(&after, "a released copy skips smtp_tls_policy_maps");
    assert_eq!(bypass["level"], "warning");
    assert!(
        bypass["message"]
            .as_str()
            .unwrap()
            .contains("bank.lab.test require TLS there"),
        "{bypass}"
    );
    write_config("mandatory_domains = bank.lab.test\n");
    assert!(
        findings().iter().all(|f| !f["message"]
            .as_str()
            .unwrap()
            .contains("skips smtp_tls_policy_maps")),
        "the warning went once bank.lab.test is mandatory"
    );
}
