//! TLSRPT from the real Postfix 3.10: every result the lab can make, as
//! Postfix logs it, as its datagrams carry it, as our collector and the
//! upstream collector count it and as our report daemon reports it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{collector_socket, logged_events, Domain, Lab, LoggedEvent, Mx, Tlsa, WAIT};
use crate::support::lab::Suite;
use crate::support::postfix::Postfix;
use crate::support::*;

/// Binds the collector socket of an instance and keeps every datagram
/// Postfix sends to it, as sent.
pub(super) struct Recorder {
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    pub(super) fn start(postfix: &Postfix) -> Recorder {
        let path = collector_socket(postfix);
        let socket = UnixDatagram::bind(&path).unwrap();
        // Postfix's smtp runs as user postfix.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (datagrams, stop) = (datagrams.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        datagrams.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
        };
        Recorder {
            datagrams,
            stop,
            thread: Some(thread),
        }
    }

    pub(super) fn datagrams(&self) -> Vec<Vec<u8>> {
        self.datagrams.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An sts policy of the lab's policy table (as a policy server answers
/// for an `enforce` policy), with the 3.10 TLSRPT attributes; `extra`
/// such as `policy_failure=sts-webpki-invalid`.
fn sts_policy(domain: &str, extra: &str) -> String {
    format!(
        "secure match=mx.{domain} servername=hostname policy_type=sts policy_domain={domain} \
         mx_host_pattern=mx.{domain} {{ policy_string = version: STSv1 }} \
         {{ policy_string = mode: enforce }} {{ policy_string = mx: mx.{domain} }} \
         {{ policy_string = max_age: 86400 }} {extra}"
    )
}

/// The lab's domains, and the events Postfix must log for one delivery
/// attempt to each: (label, policy type the datagram carries, result
/// type or "" for success). The last domain, `daneonly` (`dane-only`
/// without TLSA records), has none: Postfix defers it before connecting
/// and sends no datagram.
fn scenarios() -> (Vec<Domain>, Vec<(&'static str, &'static str, &'static str)>) {
    let sts = |label: &'static str, extra: &str| sts_policy(&format!("{label}.lab.test"), extra);
    let domains = vec![
        Domain::new("ok", Mx::Trusted).policy("secure"),
        Domain::new("nostarttls", Mx::NoStarttls).policy("encrypt"),
        Domain::new("refuses", Mx::RefusesStarttls).policy("encrypt"),
        Domain::new("wrongname", Mx::WrongName).policy("secure"),
        Domain::new("expired", Mx::Expired).policy("secure"),
        Domain::new("untrusted", Mx::Untrusted).policy("secure"),
        Domain::new("sts", Mx::Trusted).policy(&sts("sts", "")),
        Domain::new("stswrongname", Mx::WrongName).policy(&sts("stswrongname", "")),
        Domain::new("stsfetch", Mx::Trusted)
            .policy(&sts("stsfetch", "policy_failure=sts-policy-fetch-error")),
        Domain::new("stsinvalid", Mx::Trusted)
            .policy(&sts("stsinvalid", "policy_failure=sts-policy-invalid")),
        Domain::new("stswebpki", Mx::Trusted)
            .policy(&sts("stswebpki", "policy_failure=sts-webpki-invalid")),
        Domain::new("validation", Mx::Trusted)
            .policy(&sts("validation", "policy_failure=validation-failure")),
        Domain::new("dane", Mx::Untrusted)
            .tlsa(Tlsa::Matching)
            .policy("dane"),
        Domain::new("danewrong", Mx::Trusted)
            .tlsa(Tlsa::Wrong)
            .policy("dane"),
        Domain::new("daneonly", Mx::Trusted).policy("dane-only"),
    ];
    let expected = vec![
        ("ok", "no-policy-found", ""),
        ("nostarttls", "no-policy-found", "starttls-not-supported"),
        ("refuses", "no-policy-found", "starttls-not-supported"),
        ("wrongname", "no-policy-found", "certificate-host-mismatch"),
        ("expired", "no-policy-found", "certificate-expired"),
        ("untrusted", "no-policy-found", "certificate-not-trusted"),
        ("sts", "sts", ""),
        ("stswrongname", "sts", "certificate-host-mismatch"),
        ("stsfetch", "sts", "sts-policy-fetch-error"),
        ("stsinvalid", "sts", "sts-policy-invalid"),
        ("stswebpki", "sts", "sts-webpki-invalid"),
        ("validation", "sts", "validation-failure"),
        ("dane", "tlsa", ""),
        // Postfix 3.10 reports a TLSA record that matches nothing as an
        // untrusted certificate (under the tlsa policy), not tlsa-invalid.
        ("danewrong", "tlsa", "certificate-not-trusted"),
    ];
    (domains, expected)
}

/// Counts of a domain: (successful sessions, failed sessions, result
/// types of the failures with their counts).
type Counts = (u64, u64, BTreeMap<String, u64>);

fn counts_of_log(events: &[LoggedEvent]) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for e in events {
        let c = out.entry(e.domain.clone()).or_default();
        if e.success {
            c.0 += 1;
        } else {
            c.1 += 1;
            *c.2.entry(e.result_type()).or_default() += 1;
        }
    }
    out
}

/// The counts of our report daemon's reports, and each report's policy.
fn counts_of_reports(reports: &BTreeMap<String, Value>) -> BTreeMap<String, Counts> {
    reports
        .iter()
        .map(|(domain, report)| {
            let mut c = Counts::default();
            for p in report["policies"].as_array().unwrap() {
                c.0 += p["summary"]["total-successful-session-count"]
                    .as_u64()
                    .unwrap();
                c.1 += p["summary"]["total-failure-session-count"]
                    .as_u64()
                    .unwrap();
                for f in p["failure-details"].as_array().into_iter().flatten() {
                    *c.2.entry(f["result-type"].as_str().unwrap().to_string())
                        .or_default() += f["failed-session-count"].as_u64().unwrap();
                }
            }
            (domain.clone(), c)
        })
        .collect()
}

/// Every result the lab can make, on Debian 13's Postfix 3.10: Postfix's
/// log lines, its datagrams, our collector's and upstream's counts, and
/// our report daemon's reports all say the same, domain by domain.
#[test]
fn every_tlsrpt_result_of_postfix_3_10_is_counted_and_reported_as_postfix_logged_it() {
    every_result_is_counted_and_reported_as_logged(Suite::Trixie);
}

/// The same on Debian unstable's Postfix 3.11.
#[test]
fn every_tlsrpt_result_of_postfix_3_11_is_counted_and_reported_as_postfix_logged_it() {
    every_result_is_counted_and_reported_as_logged(Suite::Sid);
}

fn every_result_is_counted_and_reported_as_logged(suite: Suite) {
    let (domains, expected) = scenarios();
    let lab = Lab::start(suite, &domains);
    let postfix = Postfix::start(lab.postfix_options());
    let recorder = Recorder::start(&postfix);

    // Two messages to "ok", one to every other domain: one delivery
    // attempt each, and a TLSRPT event for each but daneonly's.
    let mut attempts = 0;
    for d in &domains {
        let copies = if d.label == "ok" { 2 } else { 1 };
        for _ in 0..copies {
            postfix.sendmail(
                &[
                    "-f",
                    "sender@mta.mailtls.test",
                    "--",
                    &format!("user@{}", d.name()),
                ],
                format!("Subject: to {}\n\nbody\n", d.name()).as_bytes(),
            );
            if d.label != "daneonly" {
                attempts += 1;
            }
        }
    }
    let events = wait_for(|| {
        let events = logged_events(&postfix.maillog());
        (events.len() >= attempts).then_some(events)
    })
    .unwrap_or_else(|| {
        panic!(
            "Postfix logged {} of {attempts} TLSRPT events:\n{}\nDNS:\n{}",
            logged_events(&postfix.maillog()).len(),
            postfix.maillog(),
            lab.dns.logs()
        )
    });
    // Every successful delivery done, every failed one deferred (daneonly's
    // without a connection).
    let failing = expected.iter().filter(|(_, _, r)| !r.is_empty()).count() + 1;
    let queue = postfix.wait_queue(WAIT, "only the failed deliveries deferred", |queue| {
        queue.len() == failing
            && queue
                .iter()
                .all(|m| m["recipients"][0]["delay_reason"].is_string())
    });
    assert!(queue.iter().any(|m| {
        m["recipients"][0]["address"] == "user@daneonly.lab.test"
            && m["recipients"][0]["delay_reason"]
                .as_str()
                .is_some_and(|r| r.contains("no TLSA records found"))
    }));
    assert_eq!(events.len(), attempts, "{}", postfix.maillog());
    // Every datagram Postfix logged arrived (the kernel delivers them
    // before sendto returns).
    let datagrams = wait_for(|| {
        let d = recorder.datagrams();
        (d.len() >= attempts).then_some(d)
    })
    .unwrap_or_else(|| panic!("{} datagrams", recorder.datagrams().len()));
    assert_eq!(datagrams.len(), attempts);

    // Postfix's log says what the lab set up, domain by domain.
    let logged = counts_of_log(&events);
    for (label, _, result) in &expected {
        let domain = format!("{label}.lab.test");
        let c = logged
            .get(&domain)
            .unwrap_or_else(|| panic!("no TLSRPT line for {domain}:\n{}", postfix.maillog()));
        if result.is_empty() {
            assert_eq!(c.1, 0, "{domain}: {c:?}\n{}", postfix.maillog());
        } else {
            assert_eq!(
                c.2.keys().collect::<Vec<_>>(),
                [result],
                "{domain}\n{}",
                postfix.maillog()
            );
        }
    }
    assert_eq!(logged["ok.lab.test"].0, 2);
    // The MX of a successful session got the message over TLS; no failed
    // one got anything.
    assert!(!logged.contains_key("daneonly.lab.test"));
    assert_eq!(lab.mxes["daneonly.lab.test"].connections(), 0);
    for d in domains.iter().filter(|d| d.label != "daneonly") {
        let messages = lab.mxes[&d.name()].messages();
        let success = logged[&d.name()].1 == 0;
        assert_eq!(
            messages.len(),
            if success {
                logged[&d.name()].0 as usize
            } else {
                0
            },
            "{}",
            d.name()
        );
        assert!(messages.iter().all(|m| m.tls), "{}", d.name());
    }

    // Our collector and upstream's, fed the datagrams Postfix sent.
    let pair = crate::upstream::collect_in_both(&datagrams);
    crate::upstream::assert_same_rows(
        crate::upstream::rows(&pair.ours.yesterday(), crate::upstream::FINALRESULTS),
        crate::upstream::rows(&pair.theirs.yesterday(), crate::upstream::FINALRESULTS),
        "finalresults rows (left ours, right upstream)",
    );
    crate::upstream::assert_same_rows(
        crate::upstream::rows(&pair.ours.yesterday(), crate::upstream::FAILURES),
        crate::upstream::rows(&pair.theirs.yesterday(), crate::upstream::FAILURES),
        "failures rows (left ours, right upstream)",
    );

    // Our report daemon's report of each domain carries the policy and the
    // counts Postfix logged.
    let fetcher = format!(
        "{} --storage=sqlite://{}",
        fetcher_bin().display(),
        pair.ours.db.display()
    );
    let reports = crate::upstream::raw_reports_by(
        &crate::support::reportd::reportd_bin(),
        &fetcher,
        expected.len(),
    );
    let reported = counts_of_reports(&reports);
    assert_eq!(
        reported, logged,
        "report counts (left) against Postfix's log (right)"
    );
    let policies: BTreeSet<(String, String)> = reports
        .iter()
        .map(|(domain, r)| {
            let p = &r["policies"][0]["policy"];
            (
                domain.clone(),
                p["policy-type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let wanted: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(label, policy, _)| (format!("{label}.lab.test"), policy.to_string()))
        .collect();
    assert_eq!(policies, wanted);
    let sts = &reports["sts.lab.test"]["policies"][0]["policy"];
    assert_eq!(sts["policy-domain"], "sts.lab.test");
    assert_eq!(
        sts["policy-string"],
        serde_json::json!([
            "version: STSv1",
            "mode: enforce",
            "mx: mx.sts.lab.test",
            "max_age: 86400"
        ])
    );
    assert_eq!(sts["mx-host"], serde_json::json!(["mx.sts.lab.test"]));
    // DANE: Postfix names the TLSA records, policy domain the MX's name.
    let dane = &reports["dane.lab.test"]["policies"][0]["policy"];
    let tlsa = dane["policy-string"][0]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(tlsa.starts_with("3 1 1 "), "{dane}");
    assert_eq!(lab.mxes["dane.lab.test"].messages().len(), 1);
}

/// Polls `probe` for up to [`WAIT`].
fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
