//! `mailtls policyd` as Debian 13's Postfix 3.10 uses it: the instance's
//! `smtp_tls_policy_maps = socketmap:inet:...:postfix`, the lab's signed
//! DNS with `_mta-sts` records, MTA-STS policy hosts on lab addresses with
//! lab CA certificates. What Postfix does with each answer (delivered or
//! deferred) and the TLSRPT datagrams it sends (policy type, domain,
//! strings, MX patterns, result) are checked domain by domain.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::tlsrpt::Recorder;
use super::{logged_events, Domain, Lab, Mx, Tlsa, WAIT};
use crate::policyd::Policyd;
use crate::support::lab::Suite;
use crate::support::postfix::Postfix;

/// RFC 8461 section 3.2 policies for the lab's MX names.
fn policy(label: &str, mode: &str) -> String {
    format!("version: STSv1\nmode: {mode}\nmx: mx.{label}.lab.test\nmax_age: 86400\n")
}

/// The datagram Postfix sent for `domain` (one per delivery attempt here).
fn datagram_of(datagrams: &[Vec<u8>], domain: &str) -> Value {
    datagrams
        .iter()
        .map(|d| serde_json::from_slice::<Value>(d).unwrap())
        .find(|d| d["d"] == domain)
        .unwrap_or_else(|| panic!("no datagram for {domain}"))
}

/// End to end to the report: our collector (and upstream's, which must
/// agree) counts the datagrams, our report daemon reports each domain;
/// the reports by domain.
fn reports_of(datagrams: &[Vec<u8>]) -> BTreeMap<String, Value> {
    let pair = crate::upstream::collect_in_both(datagrams);
    crate::upstream::assert_same_rows(
        crate::upstream::rows(&pair.ours.yesterday(), crate::upstream::FINALRESULTS),
        crate::upstream::rows(&pair.theirs.yesterday(), crate::upstream::FINALRESULTS),
        "finalresults rows (left ours, right upstream)",
    );
    let domains: BTreeSet<String> = datagrams
        .iter()
        .map(|d| {
            serde_json::from_slice::<Value>(d).unwrap()["d"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let fetcher = format!(
        "{} --storage=sqlite://{}",
        crate::support::fetcher_bin().display(),
        pair.ours.db.display()
    );
    crate::upstream::raw_reports_by(
        &crate::support::reportd::reportd_bin(),
        &fetcher,
        domains.len(),
    )
}

/// The policy block and first failure's result type of `domain`'s report.
fn reported(reports: &BTreeMap<String, Value>, domain: &str) -> (Value, Option<String>) {
    let report = reports
        .get(domain)
        .unwrap_or_else(|| panic!("no report for {domain}: {reports:#?}"));
    let p = &report["policies"][0];
    (
        p["policy"].clone(),
        p["failure-details"][0]["result-type"]
            .as_str()
            .map(str::to_string),
    )
}

/// The lab's policy server and an instance whose `smtp_tls_policy_maps`
/// asks it (in place of the lab's own table), with a recorder on its
/// collector socket; `extra` options for policyd.
struct PolicydLab {
    policyd: Policyd,
    postfix: Postfix,
    recorder: Recorder,
    _dir: tempfile::TempDir,
}

impl PolicydLab {
    fn start(lab: &Lab, extra: &[&str]) -> PolicydLab {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "--nameservers".into(),
            lab.dns.resolver().to_string(),
            "--sts_ca_file".into(),
            lab.ca.ca_file.display().to_string(),
            "--allow_private_addresses".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let policyd = Policyd::start(dir.path(), &args);
        let postfix = Postfix::start(lab.postfix_options().main_cf(&format!(
            "smtp_tls_policy_maps = socketmap:inet:{}:postfix",
            policyd.address()
        )));
        let recorder = Recorder::start(&postfix);
        PolicydLab {
            policyd,
            postfix,
            recorder,
            _dir: dir,
        }
    }

    /// One message to each domain; waits until Postfix logged a TLSRPT
    /// event for each, and returns the datagrams.
    fn send_to_each(&self, domains: &[Domain]) -> Vec<Vec<u8>> {
        for d in domains {
            self.postfix.sendmail(
                &[
                    "-f",
                    "sender@mta.mailtls.test",
                    "--",
                    &format!("user@{}", d.name()),
                ],
                format!("Subject: to {}\n\nbody\n", d.name()).as_bytes(),
            );
        }
        let deadline = std::time::Instant::now() + WAIT;
        while logged_events(&self.postfix.maillog()).len() < domains.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "Postfix logged {} TLSRPT events:\n{}\npolicyd:\n{}",
                logged_events(&self.postfix.maillog()).len(),
                self.postfix.maillog(),
                self.policyd.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.recorder.datagrams()
    }
}

#[test]
fn postfix_3_10_enforces_and_reports_the_sts_policies_policyd_answers() {
    let domains = [
        Domain::new("stsok", Mx::Trusted).sts(&policy("stsok", "enforce")),
        Domain::new("stsbad", Mx::WrongName).sts(&policy("stsbad", "enforce")),
        // enforce, but the policy names another MX than the domain has.
        Domain::new("stsmx", Mx::Trusted).sts(&policy("other", "enforce")),
        Domain::new("ststest", Mx::WrongName).sts(&policy("ststest", "testing")),
        Domain::new("nosts", Mx::WrongName),
        // DANE first (RFC 8461 section 2): an MTA-STS record too, and an MX
        // certificate no CA vouches for.
        Domain::new("dane", Mx::Untrusted)
            .tlsa(Tlsa::Matching)
            .sts(&policy("dane", "enforce")),
        Domain::new("danewrong", Mx::Trusted).tlsa(Tlsa::Wrong),
    ];
    let lab = Lab::start(Suite::Trixie, &domains);
    let set_up = PolicydLab::start(&lab, &[]);
    let (policyd, postfix) = (&set_up.policyd, &set_up.postfix);
    // mailtls check, inside the root, finds the set-up right; another
    // address, which Postfix does not ask and where nothing answers, is a
    // policy server not in use.
    let check = |listen: &str| -> Vec<Value> {
        let dir = lab.root.tempdir("policyd.");
        std::fs::write(
            dir.path().join("policyd.cfg"),
            format!("[policyd]\nlisten = inet:{listen}\n"),
        )
        .unwrap();
        let config = lab.root.inside_path(&dir.path().join("policyd.cfg"));
        let (_, findings) = super::check::check_part(
            &lab.root,
            postfix,
            "policyd",
            &[&format!("--policyd_config={}", config.display())],
        );
        findings
    };
    let findings = check(&policyd.address().to_string());
    assert!(
        findings.iter().all(|f| f["level"] == "ok")
            && findings.iter().any(|f| f["message"]
                .as_str()
                .unwrap()
                .starts_with("mailtls policyd answers at")),
        "{findings:#?}"
    );
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap();
    drop(silent);
    let findings = check(&silent_address.to_string());
    assert!(
        findings.iter().all(|f| f["message"]
            .as_str()
            .unwrap()
            .starts_with("mailtls policyd is not in use")),
        "{findings:#?}"
    );
    let datagrams = set_up.send_to_each(&domains);

    // enforce, right certificate: delivered over TLS, reported under the
    // sts policy with its lines and MX pattern.
    assert_eq!(
        lab.mxes["stsok.lab.test"].messages().len(),
        1,
        "{}",
        postfix.maillog()
    );
    let ok = datagram_of(&datagrams, "stsok.lab.test");
    let p = &ok["policies"][0];
    assert_eq!(p["policy-type"], 2, "sts: {ok}");
    assert_eq!(p["policy-domain"], "stsok.lab.test", "{ok}");
    assert_eq!(
        p["policy-string"],
        serde_json::json!([
            "version: STSv1",
            "mode: enforce",
            "mx: mx.stsok.lab.test",
            "max_age: 86400"
        ]),
        "{ok}"
    );
    assert_eq!(
        p["mx-host"],
        serde_json::json!(["mx.stsok.lab.test"]),
        "{ok}"
    );
    assert_eq!(p["f"], 0, "success: {ok}");

    // enforce, a certificate for another name: deferred, reported as a
    // certificate-host-mismatch under the sts policy.
    assert!(lab.mxes["stsbad.lab.test"].messages().is_empty());
    let bad = datagram_of(&datagrams, "stsbad.lab.test");
    let p = &bad["policies"][0];
    assert_eq!(p["policy-type"], 2, "{bad}");
    assert_eq!(p["f"], 1, "{bad}");
    assert_eq!(
        p["failure-details"][0]["c"], 202,
        "certificate-host-mismatch: {bad}"
    );
    let queue = postfix.postqueue_json();
    assert!(
        queue
            .iter()
            .any(|m| m["recipients"][0]["address"] == "user@stsbad.lab.test"),
        "{queue:?}"
    );

    // enforce, no MX host matches the policy (RFC 8461 section 4.1):
    // policyd answers policy_failure, so Postfix defers though the MX's
    // certificate is good, and reports validation-failure (205) under the
    // sts policy, with its lines.
    assert!(lab.mxes["stsmx.lab.test"].messages().is_empty());
    let mx = datagram_of(&datagrams, "stsmx.lab.test");
    let p = &mx["policies"][0];
    assert_eq!(p["policy-type"], 2, "{mx}");
    assert_eq!(p["policy-string"][2], "mx: mx.other.lab.test", "{mx}");
    assert_eq!(p["f"], 1, "{mx}");
    assert_eq!(p["failure-details"][0]["c"], 205, "{mx}");
    assert!(
        postfix
            .postqueue_json()
            .iter()
            .any(|m| m["recipients"][0]["address"] == "user@stsmx.lab.test"),
        "{}",
        postfix.maillog()
    );

    // DANE: delivered on the TLSA match though no CA vouches for the
    // certificate, reported under the tlsa policy; a TLSA record that
    // matches nothing: deferred, reported under tlsa.
    assert_eq!(
        lab.mxes["dane.lab.test"].messages().len(),
        1,
        "{}",
        postfix.maillog()
    );
    let dane = datagram_of(&datagrams, "dane.lab.test");
    assert_eq!(dane["policies"][0]["policy-type"], 1, "tlsa: {dane}");
    assert_eq!(dane["policies"][0]["f"], 0, "{dane}");
    assert!(lab.mxes["danewrong.lab.test"].messages().is_empty());
    let wrong = datagram_of(&datagrams, "danewrong.lab.test");
    assert_eq!(wrong["policies"][0]["policy-type"], 1, "{wrong}");
    assert_eq!(wrong["policies"][0]["f"], 1, "{wrong}");
    // Those came from policyd's answer: the instance's own level is `may`,
    // at which Postfix does no DANE.
    for domain in ["dane.lab.test", "danewrong.lab.test"] {
        let mut stream = std::net::TcpStream::connect(policyd.address()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        std::io::Write::write_all(
            &mut stream,
            &crate::policyd::netstring(&format!("postfix {domain}")),
        )
        .unwrap();
        assert_eq!(
            crate::policyd::read_answer(&mut stream).unwrap(),
            "OK dane-only",
            "{domain}"
        );
    }

    // testing (answered NOTFOUND, as both anchors do) and no policy: the
    // instance's own level (may) delivers, reported as no-policy-found.
    for domain in ["ststest.lab.test", "nosts.lab.test"] {
        assert_eq!(lab.mxes[domain].messages().len(), 1, "{domain}");
        let d = datagram_of(&datagrams, domain);
        assert_eq!(d["policies"][0]["policy-type"], 9, "{d}");
    }

    // The reports (RFC 8460 section 4) name what policyd answered.
    let reports = reports_of(&datagrams);
    let (policy, failure) = reported(&reports, "stsok.lab.test");
    assert_eq!(policy["policy-type"], "sts", "{policy}");
    assert_eq!(policy["mx-host"], serde_json::json!(["mx.stsok.lab.test"]));
    assert_eq!(policy["policy-string"][1], "mode: enforce");
    assert_eq!(failure, None);
    let (policy, failure) = reported(&reports, "stsbad.lab.test");
    assert_eq!(policy["policy-type"], "sts", "{policy}");
    assert_eq!(failure.as_deref(), Some("certificate-host-mismatch"));
    let (policy, failure) = reported(&reports, "stsmx.lab.test");
    assert_eq!(policy["policy-type"], "sts", "{policy}");
    assert_eq!(policy["policy-string"][2], "mx: mx.other.lab.test");
    assert_eq!(failure.as_deref(), Some("validation-failure"));
    let (policy, _) = reported(&reports, "dane.lab.test");
    assert_eq!(policy["policy-type"], "tlsa", "{policy}");
    let (policy, failure) = reported(&reports, "danewrong.lab.test");
    assert_eq!(policy["policy-type"], "tlsa", "{policy}");
    assert!(failure.is_some(), "{:?}", reports["danewrong.lab.test"]);
    for domain in ["ststest.lab.test", "nosts.lab.test"] {
        let (policy, failure) = reported(&reports, domain);
        assert_eq!(policy["policy-type"], "no-policy-found", "{policy}");
        assert_eq!(failure, None);
    }
}

/// What RFC 8461 section 3.3 says of policies that cannot be had, on
/// Postfix 3.10: `mode: none`, an invalid policy and a policy host that
/// is down with no cached policy are "no policy" (delivered at the
/// instance's level, reported no-policy-found), while a policy cached in
/// `database` before its host went down is still enforced after a restart
/// of policyd (the MX presents another name: deferred, reported under
/// sts).
#[test]
fn postfix_3_10_with_policies_none_invalid_down_and_cached() {
    let domains = [
        Domain::new("stsnone", Mx::WrongName).sts("version: STSv1\nmode: none\nmax_age: 86400\n"),
        // enforce without an mx line: invalid (RFC 8461 section 3.2).
        Domain::new("stsinvalid", Mx::WrongName)
            .sts("version: STSv1\nmode: enforce\nmax_age: 86400\n"),
        Domain::new("stsdown", Mx::WrongName).sts(&policy("stsdown", "enforce")),
        Domain::new("stscached", Mx::WrongName).sts(&policy("stscached", "enforce")),
    ];
    let mut lab = Lab::start(Suite::Trixie, &domains);
    lab.stop_policy_host("stsdown.lab.test");
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("policyd.sqlite");
    let database = database.to_str().unwrap();
    // A first policyd caches the policy of stscached; then its host goes.
    let first = PolicydLab::start(&lab, &["--database", database]);
    let ask = |policyd: &Policyd, domain: &str| {
        let mut stream = std::net::TcpStream::connect(policyd.address()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        std::io::Write::write_all(
            &mut stream,
            &crate::policyd::netstring(&format!("postfix-notlsrpt {domain}")),
        )
        .unwrap();
        crate::policyd::read_answer(&mut stream).unwrap()
    };
    assert_eq!(
        ask(&first.policyd, "stscached.lab.test"),
        "OK secure match=mx.stscached.lab.test servername=hostname",
        "{}",
        first.policyd.log()
    );
    drop(first);
    lab.stop_policy_host("stscached.lab.test");

    let set_up = PolicydLab::start(&lab, &["--database", database]);
    let datagrams = set_up.send_to_each(&domains);
    let log = set_up.policyd.log();
    for domain in ["stsnone", "stsinvalid", "stsdown"] {
        let name = format!("{domain}.lab.test");
        assert_eq!(lab.mxes[&name].messages().len(), 1, "{name}\n{log}");
        let d = datagram_of(&datagrams, &name);
        assert_eq!(d["policies"][0]["policy-type"], 9, "{d}");
    }
    assert!(
        log.contains("stsinvalid.lab.test: MTA-STS policy fetch failed"),
        "{log}"
    );
    assert!(
        log.contains("stsdown.lab.test: MTA-STS policy fetch failed"),
        "{log}"
    );
    assert!(lab.mxes["stscached.lab.test"].messages().is_empty());
    let cached = datagram_of(&datagrams, "stscached.lab.test");
    assert_eq!(cached["policies"][0]["policy-type"], 2, "{cached}");
    assert_eq!(
        cached["policies"][0]["failure-details"][0]["c"], 202,
        "{cached}"
    );

    let reports = reports_of(&datagrams);
    for domain in ["stsnone", "stsinvalid", "stsdown"] {
        let (policy, failure) = reported(&reports, &format!("{domain}.lab.test"));
        assert_eq!(
            policy["policy-type"], "no-policy-found",
            "{domain}: {policy}"
        );
        assert_eq!(failure, None);
    }
    let (policy, failure) = reported(&reports, "stscached.lab.test");
    assert_eq!(policy["policy-type"], "sts", "{policy}");
    assert_eq!(failure.as_deref(), Some("certificate-host-mismatch"));
}

/// `mode: testing` answered `may` with the TLSRPT attributes
/// (`testing_answer = may`), measured on Postfix 3.10: what it delivers
/// and what it reports for an MX with the right certificate and for one
/// that presents another name (docs/policyd.md's choice of default rests on
/// it).
#[test]
fn postfix_3_10_with_testing_answered_may() {
    let domains = [
        Domain::new("testok", Mx::Trusted).sts(&policy("testok", "testing")),
        Domain::new("testbad", Mx::WrongName).sts(&policy("testbad", "testing")),
    ];
    let lab = Lab::start(Suite::Trixie, &domains);
    let set_up = PolicydLab::start(&lab, &["--testing_answer", "may"]);
    let datagrams = set_up.send_to_each(&domains);
    for d in &domains {
        lab.mxes[&d.name()].wait_for(1, WAIT);
        let datagram = datagram_of(&datagrams, &d.name());
        let p = &datagram["policies"][0];
        assert_eq!(p["policy-type"], 2, "{datagram}");
        assert_eq!(p["policy-string"][1], "mode: testing", "{datagram}");
        assert_eq!(p["f"], 0, "{datagram}");
    }
}
