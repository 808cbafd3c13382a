//! tlsrpt-reportd delivering a real collector's day for real: DKIM-signed
//! report mail through a private Postfix, read by Python's `email`,
//! dkimpy and parsedmarc; native HTTPS uploads to a local TLS server that
//! fails, hangs, then accepts; and SMTP submission to a relay that defers,
//! then accepts.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::https_sink::{Answer, HttpsSink, TestCa};
use crate::support::postfix::{Options, Postfix};
use crate::support::reportd::{collected_day, reportd_bin, Reportd};
use crate::support::smtp_sink::{Mode, SmtpSink};
use crate::support::{fetcher_bin, Collector};
use serde_json::Value;

/// What [`Reportd::prepare`] configures.
const SENDER: &str = "tlsrpt-noreply@reporter.example";
const SUBMITTER: &str = "reporter.example";
const ORGANIZATION: &str = "Test Org";

/// How long after the last expected delivery the tests keep watching for
/// a second one: more than two main loops and the longest retry wait.
const SETTLE: Duration = Duration::from_secs(3);

/// A datagram for `domain` with `record` as its TLSRPT record: one
/// session under an STS policy, failed (with one failure detail) or not.
fn datagram(domain: &str, record: &str, failed: bool) -> Vec<u8> {
    let (details, f, t) = if failed {
        (
            format!(
                r#","failure-details":[{{"c":204,"s":"192.0.2.1","n":"mx1.mail.{domain}","h":"mta.reporter.example","r":"198.51.100.7","f":"certificate expired"}}]"#
            ),
            1,
            1,
        )
    } else {
        (String::new(), 0, 0)
    };
    format!(
        r#"{{"dpv":"1","d":"{domain}","pr":"{record}","policies":[{{"policy-type":2,"policy-domain":"{domain}","policy-string":["version: STSv1","mode: testing","mx: *.mail.{domain}","max_age: 86400"],"mx-host":["*.mail.{domain}"]{details},"t":{t},"f":{f}}}]}}"#
    )
    .into_bytes()
}

/// Our collector holding yesterday's datagrams for these (domain, record)
/// pairs: one successful session each, and a failed one for each domain's
/// first.
fn collected(records: &[(&str, &str)]) -> Collector {
    let mut datagrams: Vec<Vec<u8>> = records.iter().map(|(d, r)| datagram(d, r, false)).collect();
    let mut seen = BTreeSet::new();
    for (domain, record) in records {
        if seen.insert(*domain) {
            datagrams.push(datagram(domain, record, true));
        }
    }
    collected_day(&datagrams, datagrams.len() as i64)
}

fn fetchers(collector: &Collector) -> String {
    format!(
        "{} --storage {}",
        fetcher_bin().display(),
        collector.storage_url()
    )
}

/// One row of the reportd's `destinations` table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    destination: String,
    domain: String,
    status: String,
    retries: i64,
}

fn destinations_in(db: &Path) -> rusqlite::Result<Vec<Destination>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT destination, domain, coalesce(status, 'NULL'), retries \
         FROM destinations JOIN reports ON d_r_id = r_id ORDER BY destination",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Destination {
            destination: row.get(0)?,
            domain: row.get(1)?,
            status: row.get(2)?,
            retries: row.get(3)?,
        })
    })?;
    rows.collect()
}

fn destinations(reportd: &Reportd) -> Vec<Destination> {
    destinations_in(&reportd.db).unwrap_or_default()
}

/// The log lines that mention `needle`.
fn log_lines(reportd: &Reportd, needle: &str) -> Vec<String> {
    reportd
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// What Python makes of each report mail (paths in argv[3:]): the `email`
/// package's view, the DKIM signature's h= tag, dkimpy's verdict on the
/// mail and on a copy with TLS-Report-Domain changed, and parsedmarc's
/// result. The DKIM key record is built here from the raw Ed25519 public
/// key (argv[1], hex, from openssl) and served for argv[2] only.
const PYTHON_CHECK: &str = r#"
import base64, email, email.utils, gzip, json, re, sys
from email import policy
import dkim, dkim.util, parsedmarc

record = b"v=DKIM1; k=ed25519; s=tlsrpt; p=" + base64.b64encode(bytes.fromhex(sys.argv[1]))
name = sys.argv[2].encode()
def dnsfunc(qname, timeout=5):
    return record if qname.rstrip(b".") == name else None

results = []
for path in sys.argv[3:]:
    raw = open(path, "rb").read()
    msg = email.message_from_bytes(raw, policy=policy.default)
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    attachments = [p for p in parts if p.get_content_type() == "application/tlsrpt+gzip"]
    report = None
    filename = None
    if len(attachments) == 1:
        report = json.loads(gzip.decompress(attachments[0].get_content()).decode())
        filename = attachments[0].get_filename()
    headers, _ = dkim.rfc822_parse(raw)
    signatures = [v for n, v in headers if n.lower() == b"dkim-signature"]
    signed = []
    if len(signatures) == 1:
        tags = dkim.util.parse_tag_value(signatures[0])
        signed = [h.lower() for h in re.sub(rb"\s+", b"", tags[b"h"]).decode().split(":")]
    tampered = re.sub(rb"(?m)^TLS-Report-Domain: ", b"TLS-Report-Domain: x", raw, count=1)
    try:
        parsed = parsedmarc.parse_report_email(raw, offline=True)
    except Exception as e:
        parsed = {"error": repr(e)}
    results.append({
        "path": path,
        "defects": [str(d) for part in msg.walk() for d in part.defects],
        "headers": {n: str(v) for n, v in msg.items()},
        "date": email.utils.parsedate_to_datetime(msg["Date"]).timestamp() if msg["Date"] else None,
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "parts": [p.get_content_type() for p in parts],
        "filename": filename,
        "report": report,
        "signatures": len(signatures),
        "signed_headers": signed,
        "dkim": dkim.verify(raw, dnsfunc=dnsfunc, tlsrpt="strict"),
        "dkim_tampered": tampered != raw and dkim.verify(tampered, dnsfunc=dnsfunc, tlsrpt="strict"),
        "parsedmarc": parsed,
    })
print(json.dumps({"record": record.decode(), "messages": results}, default=str))
"#;

/// An Ed25519 key made by openssl, and its raw public key as hex.
fn ed25519_key(dir: &Path) -> (PathBuf, String) {
    let key = support::openssl_key(dir, "dkim-ed25519.pem", &["-algorithm", "ed25519"]);
    let der = support::run(
        "openssl",
        &[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ],
        b"",
    );
    assert_eq!(der.len(), 44, "an Ed25519 SubjectPublicKeyInfo");
    let hex: String = der[12..].iter().map(|b| format!("{b:02x}")).collect();
    (key, hex)
}

#[test]
fn report_mail_through_postfix_is_dkim_signed_and_read_by_receivers() {
    let started = std::time::Instant::now();
    let keys = tempfile::tempdir().unwrap();
    let (key, public_hex) = ed25519_key(keys.path());
    let sink = SmtpSink::start();
    let postfix = Postfix::start(Options::new(sink.port()));

    // Two report domains, three rua addresses at two domains.
    let alpha = "v=TLSRPTv1;rua=mailto:tlsrpt@rcpt-one.example";
    let beta =
        "v=TLSRPTv1; rua=mailto:reports@rcpt-two.example,mailto:beta-reports@rcpt-one.example";
    let collector = collected(&[
        ("alpha.example", alpha),
        ("alpha.example", alpha),
        ("beta.example", beta),
    ]);
    let expected: BTreeMap<&str, &str> = [
        ("tlsrpt@rcpt-one.example", "alpha.example"),
        ("reports@rcpt-two.example", "beta.example"),
        ("beta-reports@rcpt-one.example", "beta.example"),
    ]
    .into();

    let sendmail = postfix.sendmail_command();
    let key_file = key.display().to_string();
    let mut reportd = Reportd::prepare(
        &reportd_bin(),
        &fetchers(&collector),
        &[
            ("sendmail_script", &sendmail),
            ("dkim_key_file", &key_file),
            ("dkim_selector", "mailtls-test"),
            ("dkim_domain", "dkim.reporter.example"),
        ],
    );
    reportd.start();
    reportd.wait_for(30, "every mail destination recorded as sent", |r| {
        let d = destinations(r);
        d.len() == expected.len() && d.iter().all(|d| d.status == "sent")
    });
    let messages = sink.wait_for(expected.len(), Duration::from_secs(20));
    std::thread::sleep(SETTLE);
    postfix.wait_queue_empty(Duration::from_secs(10));
    reportd.assert_running();

    // One mail per destination, none twice.
    let messages_now = sink.messages();
    assert_eq!(
        messages_now.len(),
        expected.len(),
        "{messages_now:#?}\n{}",
        postfix.maillog()
    );
    assert_eq!(messages, messages_now[..messages.len()]);
    let mut per_recipient: BTreeMap<String, usize> = BTreeMap::new();
    for m in &messages_now {
        assert_eq!(m.recipients.len(), 1, "{m:?}");
        *per_recipient.entry(m.recipients[0].clone()).or_default() += 1;
    }
    assert_eq!(
        per_recipient,
        expected
            .keys()
            .map(|a| (a.to_string(), 1))
            .collect::<BTreeMap<_, _>>()
    );
    for d in destinations(&reportd) {
        assert_eq!((d.status.as_str(), d.retries), ("sent", 0), "{d:?}");
        let address = d.destination.strip_prefix("mailto:").unwrap();
        assert_eq!(expected.get(address), Some(&d.domain.as_str()), "{d:?}");
    }
    // The key record the daemon tells the operator to publish is the one
    // derived from the key by openssl (checked against the Python output
    // below).
    let publish = log_lines(
        &reportd,
        "publish: mailtls-test._domainkey.dkim.reporter.example TXT \"",
    );
    assert_eq!(publish.len(), 1, "{}", reportd.log_text());

    // What receivers make of them.
    let mut paths = Vec::new();
    for (i, m) in messages_now.iter().enumerate() {
        let path = reportd.dir.path().join(format!("mail-{i}.eml"));
        std::fs::write(&path, &m.data).unwrap();
        paths.push(path.display().to_string());
    }
    let mut args = vec![
        "-c",
        PYTHON_CHECK,
        &public_hex,
        "mailtls-test._domainkey.dkim.reporter.example",
    ];
    args.extend(paths.iter().map(String::as_str));
    let out: Value =
        serde_json::from_slice(&support::run(support::venv_python(), &args, b"")).unwrap();
    let record = out["record"].as_str().unwrap();
    assert!(
        publish[0].ends_with(&format!("TXT \"{record}\"")),
        "the daemon publishes {} but the key's record is {record}",
        publish[0]
    );
    let now = chrono::Utc::now().timestamp() as f64;
    let mut report_ids = BTreeSet::new();
    for (m, parsed) in messages_now.iter().zip(out["messages"].as_array().unwrap()) {
        let recipient = m.recipients[0].as_str();
        let domain = expected[recipient];
        let context = format!("{recipient}: {parsed:#}\n{}", m.text());
        assert_eq!(parsed["defects"], serde_json::json!([]), "{context}");
        let headers = &parsed["headers"];
        assert_eq!(headers["From"], SENDER, "{context}");
        assert_eq!(headers["To"], recipient, "{context}");
        assert_eq!(headers["TLS-Report-Domain"], domain, "{context}");
        assert_eq!(headers["TLS-Report-Submitter"], SUBMITTER, "{context}");
        assert_eq!(headers["MIME-Version"], "1.0", "{context}");
        let message_id = headers["Message-ID"].as_str().unwrap_or_default();
        assert!(
            message_id.starts_with('<') && message_id.ends_with('>') && message_id.contains('@'),
            "{context}"
        );
        let date = parsed["date"].as_f64().expect("a Date header");
        assert!(
            (now - date).abs() < 120.0,
            "Date {date} vs now {now}: {context}"
        );

        assert_eq!(parsed["content_type"], "multipart/report", "{context}");
        assert_eq!(parsed["report_type"], "tlsrpt", "{context}");
        assert_eq!(
            parsed["parts"],
            serde_json::json!(["text/plain", "application/tlsrpt+gzip"]),
            "{context}"
        );
        let report = &parsed["report"];
        let report_id = report["report-id"].as_str().expect("a report-id");
        assert!(report_id.ends_with(&format!("_{domain}")), "{context}");
        assert_eq!(
            headers["Subject"],
            format!(
                "Report Domain: {domain} Submitter: {SUBMITTER} Report-ID: <{report_id}@{SUBMITTER}>"
            ),
            "{context}"
        );
        assert_eq!(report["organization-name"], ORGANIZATION, "{context}");
        assert_eq!(
            report["policies"][0]["policy"]["policy-domain"], domain,
            "{context}"
        );
        let filename = parsed["filename"].as_str().unwrap_or_default();
        assert!(
            filename.starts_with(&format!("{SUBMITTER}!{domain}!"))
                && filename.ends_with(".json.gz"),
            "{context}"
        );
        report_ids.insert((recipient, report_id.to_owned()));

        // DKIM: one signature, verified with the key from "DNS", covering
        // the TLSRPT headers (a changed TLS-Report-Domain fails).
        assert_eq!(parsed["signatures"], 1, "{context}");
        let signed: Vec<&str> = parsed["signed_headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        for header in support::DKIM_SIGNED_HEADERS {
            assert!(signed.contains(&header), "{header} not in h=: {context}");
        }
        assert_eq!(parsed["dkim"], true, "dkimpy: {context}");
        assert_eq!(parsed["dkim_tampered"], false, "{context}");

        // parsedmarc takes it for an SMTP TLS report.
        let parsedmarc = &parsed["parsedmarc"];
        assert_eq!(parsedmarc["report_type"], "smtp_tls", "{context}");
        assert_eq!(parsedmarc["report"]["report_id"], report_id, "{context}");
        assert_eq!(
            parsedmarc["report"]["organization_name"], ORGANIZATION,
            "{context}"
        );
        let policies = parsedmarc["report"]["policies"].as_array().unwrap();
        assert_eq!(policies.len(), 1, "{context}");
        assert_eq!(policies[0]["policy_domain"], domain, "{context}");
        // alpha.example: two good sessions and a failed one; beta.example:
        // one of each.
        let good = if domain == "alpha.example" { 2 } else { 1 };
        assert_eq!(policies[0]["successful_session_count"], good, "{context}");
        assert_eq!(policies[0]["failed_session_count"], 1, "{context}");
        assert_eq!(
            policies[0]["failure_details"][0]["result_type"], "certificate-expired",
            "{context}"
        );
    }
    // The two beta.example destinations got the same report.
    let beta_ids: BTreeSet<&String> = report_ids
        .iter()
        .filter(|(r, _)| expected[r] == "beta.example")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(beta_ids.len(), 1, "{report_ids:?}");
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
    eprintln!("took {:?}", started.elapsed());
}

/// A TCP port on 127.0.0.1 where nothing listens (bound, then let go).
/// A report daemon on `collector` that uploads to local HTTPS servers with
/// certificates of `ca` and retries at once, with `extra` options.
fn uploading_reportd(collector: &Collector, ca: &TestCa, extra: &[(&str, &str)]) -> Reportd {
    let ca_file = ca.ca_file.display().to_string();
    let mut settings = vec![
        ("http_ca_file", ca_file.as_str()),
        ("http_allow_private_addresses", "1"),
        ("min_wait_delivery", "0"),
        ("max_wait_delivery", "1"),
    ];
    settings.extend_from_slice(extra);
    Reportd::prepare(&reportd_bin(), &fetchers(collector), &settings)
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn https_upload_is_sent_only_after_a_2xx_and_failures_are_retried() {
    let started = std::time::Instant::now();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(ca_dir.path());

    // The server's plan: 500, then silence past http_timeout, then 200.
    // Before each answer it notes the report's delivery state in the
    // reportd's database (the daemon's path is known only later).
    let db_path: Arc<OnceLock<PathBuf>> = Arc::default();
    let states: Arc<Mutex<Vec<Vec<Destination>>>> = Arc::default();
    let server = {
        let (db_path, states) = (db_path.clone(), states.clone());
        HttpsSink::start(&ca, move |request| {
            let state = db_path
                .get()
                .map(|db| destinations_in(db).unwrap_or_default())
                .unwrap_or_default();
            states.lock().unwrap().push(state);
            match request.index {
                0 => Answer::Status(500),
                1 => Answer::Silence(Duration::from_secs(3)),
                _ => Answer::Status(200),
            }
        })
    };
    let upload = format!("https://localhost:{}/tlsrpt/upload", server.port());
    let refused = format!("https://localhost:{}/nobody-listens", closed_port());
    let collector = collected(&[
        ("https.example", &format!("v=TLSRPTv1;rua={upload}")),
        ("refused.example", &format!("v=TLSRPTv1;rua={refused}")),
    ]);
    let mut reportd = uploading_reportd(
        &collector,
        &ca,
        &[("http_timeout", "2"), ("max_retries_delivery", "5")],
    );
    db_path.set(reportd.db.clone()).unwrap();
    reportd.start();
    let find = |r: &Reportd, destination: &str| {
        destinations(r)
            .into_iter()
            .find(|d| d.destination == destination)
    };
    reportd.wait_for(30, "the upload recorded as sent", |r| {
        find(r, &upload).is_some_and(|d| d.status == "sent")
    });
    // The refused destination: retried (5 retries: 6 attempts), never
    // sent, then given up.
    reportd.wait_for(30, "the refused destination given up", |r| {
        let d = find(r, &refused).expect("the refused destination is stored");
        assert_ne!(d.status, "sent", "{d:?}");
        d.status == "timedout"
    });
    std::thread::sleep(SETTLE);
    reportd.assert_running();

    // The server: three requests, the same report each time; one 2xx.
    let requests = server.requests();
    assert!(server.broken().is_empty(), "{:?}", server.broken());
    let answers: Vec<Answer> = requests.iter().map(|r| r.answer).collect();
    assert_eq!(
        answers,
        [
            Answer::Status(500),
            Answer::Silence(Duration::from_secs(3)),
            Answer::Status(200)
        ],
        "{}",
        reportd.log_text()
    );
    let mut bodies = BTreeSet::new();
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/tlsrpt/upload");
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/tlsrpt+gzip")
        );
        let json: Value = serde_json::from_str(
            &request
                .gunzipped()
                .unwrap_or_else(|e| panic!("request {}: {e}", request.index)),
        )
        .unwrap();
        assert!(
            json["report-id"]
                .as_str()
                .unwrap()
                .ends_with("_https.example"),
            "{json}"
        );
        assert_eq!(
            json["policies"][0]["policy"]["policy-domain"],
            "https.example"
        );
        bodies.insert(json.to_string());
    }
    assert_eq!(bodies.len(), 1, "every attempt sends the same report");
    let answered_2xx = requests
        .iter()
        .filter(|r| matches!(r.answer, Answer::Status(200..=299)))
        .count();
    assert_eq!(answered_2xx, 1);
    // The client gave up on the silent server after http_timeout.
    let silence = requests[2].received - requests[1].received;
    assert!(silence >= Duration::from_secs(2), "{silence:?}");

    // The database at each request, and after: never sent before the 200.
    let states = states.lock().unwrap().clone();
    let upload_state: Vec<(String, i64)> = states
        .iter()
        .map(|s| {
            let d = s.iter().find(|d| d.destination == upload).unwrap();
            (d.status.clone(), d.retries)
        })
        .collect();
    assert_eq!(
        upload_state,
        [
            ("sending".to_string(), 0),
            ("sending".to_string(), 1),
            ("sending".to_string(), 2)
        ]
    );
    let d = find(&reportd, &upload).unwrap();
    assert_eq!((d.status.as_str(), d.retries), ("sent", 2));

    // The log says what happened to each attempt.
    let upload_log = log_lines(&reportd, &format!("to {upload}: "));
    let attempt = |text: &str| {
        upload_log
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} in {upload_log:#?}"))
            .clone()
    };
    assert!(attempt("attempt 1 failed").contains("answered 500"));
    assert!(
        attempt("attempt 2 failed")
            .to_lowercase()
            .contains("timeout"),
        "{upload_log:#?}"
    );
    assert!(attempt("delivered").contains("answered 200"));
    assert!(!upload_log.iter().any(|l| l.contains("attempt 3 failed")));

    let d = find(&reportd, &refused).unwrap();
    assert_eq!((d.status.as_str(), d.retries), ("timedout", 5));
    // Attempts 1 to 5 are retried, the 6th is the last; each line says
    // why.
    let refused_log = log_lines(&reportd, &format!("to {refused}: "));
    assert_eq!(refused_log.len(), 6, "{refused_log:#?}");
    for (i, line) in refused_log.iter().enumerate() {
        let attempt = i + 1;
        let expected = if attempt <= 5 {
            format!(": attempt {attempt} failed, next try at ")
        } else {
            format!(": attempt {attempt} failed, giving up: ")
        };
        assert!(line.contains(&expected), "{expected:?} in {line}");
        assert!(line.contains("Connection refused"), "{line}");
    }
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn smtp_relay_gets_the_right_envelope_and_deferrals_are_retried_until_accepted() {
    let started = std::time::Instant::now();
    let sink = SmtpSink::start_with(Mode::DeferRcpt);
    let collector = collected(&[
        (
            "gamma.example",
            "v=TLSRPTv1;rua=mailto:tlsrpt@rcpt-three.example",
        ),
        (
            "delta.example",
            "v=TLSRPTv1;rua=mailto:tls-reports@rcpt-four.example",
        ),
    ]);
    let expected: BTreeMap<&str, &str> = [
        ("tlsrpt@rcpt-three.example", "gamma.example"),
        ("tls-reports@rcpt-four.example", "delta.example"),
    ]
    .into();
    let relay = sink.addr();
    let mut reportd = Reportd::prepare(
        &reportd_bin(),
        &fetchers(&collector),
        &[
            ("smtp_relay", &relay),
            ("smtp_security", "plain"),
            // Waits of 0 or 1 s: a destination may be tried many times
            // in a second, and must not give up before the sink accepts.
            ("max_retries_delivery", "100"),
            ("min_wait_delivery", "0"),
            ("max_wait_delivery", "1"),
        ],
    );
    reportd.start();

    // Deferred: retried, not sent, nothing accepted.
    reportd.wait_for(30, "two deferred attempts per destination", |r| {
        let d = destinations(r);
        d.len() == expected.len() && d.iter().all(|d| d.retries >= 2)
    });
    for d in destinations(&reportd) {
        assert_ne!(d.status, "sent", "{d:?}");
        assert_ne!(d.status, "timedout", "{d:?}");
        assert_ne!(d.status, "failed", "{d:?}");
    }
    assert!(sink.messages().is_empty(), "{:#?}", sink.messages());
    assert!(sink.rejections() >= 2 * expected.len());
    for address in expected.keys() {
        let lines = log_lines(&reportd, &format!("to mailto:{address}: attempt 1 failed"));
        assert_eq!(lines.len(), 1, "{}", reportd.log_text());
        assert!(lines[0].contains("451"), "{}", lines[0]);
    }

    // Accepted: each destination delivered once.
    sink.set_mode(Mode::Accept);
    reportd.wait_for(30, "every destination recorded as sent", |r| {
        destinations(r).iter().all(|d| d.status == "sent")
    });
    let deferred = sink.rejections();
    std::thread::sleep(SETTLE);
    reportd.assert_running();
    assert_eq!(sink.rejections(), deferred);
    let messages = sink.messages();
    assert_eq!(messages.len(), expected.len(), "{messages:#?}");
    let mut recipients = BTreeSet::new();
    for m in &messages {
        assert_eq!(m.sender, SENDER, "{m:?}");
        assert_eq!(m.recipients.len(), 1, "{m:?}");
        let recipient = m.recipients[0].as_str();
        let domain = expected
            .get(recipient)
            .unwrap_or_else(|| panic!("unexpected recipient {recipient}"));
        let text = m.text();
        assert!(
            text.lines()
                .any(|l| l.starts_with("To: ") && l.contains(recipient)),
            "{text}"
        );
        assert!(
            text.contains(&format!("\r\nTLS-Report-Domain: {domain}\r\n")),
            "{text}"
        );
        assert!(recipients.insert(recipient), "{recipient} got two mails");
    }
    for d in destinations(&reportd) {
        assert_eq!(d.status, "sent", "{d:?}");
        assert!(d.retries >= 2, "{d:?}");
        let address = d.destination.strip_prefix("mailto:").unwrap();
        assert_eq!(expected.get(address), Some(&d.domain.as_str()), "{d:?}");
        let delivered = log_lines(&reportd, &format!("to {}: delivered: ", d.destination));
        assert_eq!(delivered.len(), 1, "{}", reportd.log_text());
        assert!(
            delivered[0].contains(&format!("{relay} answered 250")),
            "{}",
            delivered[0]
        );
    }
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
    eprintln!("took {:?}", started.elapsed());
}

/// A domain whose record changes all day, each version naming the same
/// victim and six more upload URLs: at most four records' destinations are
/// used, at most four of each record's, and the victim gets one upload.
/// What was cut is stored, shown by tlsrptctl and never sent.
#[test]
fn a_hostile_domain_gets_at_most_four_uploads_per_record_and_four_records() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(ca_dir.path());
    let server = HttpsSink::start(&ca, |_| Answer::Status(200));
    let url = |path: &str| format!("https://localhost:{}/{path}", server.port());
    let records: Vec<String> = (0..6)
        .map(|version| {
            let mut rua = vec![url("victim")];
            rua.extend((0..6).map(|n| url(&format!("r{version}/d{n}"))));
            format!("v=TLSRPTv1;rua={}", rua.join(","))
        })
        .collect();
    let pairs: Vec<(&str, &str)> = records
        .iter()
        .map(|r| ("cannon.example", r.as_str()))
        .collect();
    let collector = collected(&pairs);
    let mut reportd = uploading_reportd(&collector, &ca, &[]);
    reportd.start();
    // 4 records: the first sends to the victim and 3 more, the next three
    // to 3 more each (the victim already has its report).
    let expected_uploads = 4 + 3 * 3;
    reportd.wait_for(60, "the uploads recorded as sent", |r| {
        destinations(r)
            .iter()
            .filter(|d| d.status == "sent")
            .count()
            == expected_uploads
    });
    std::thread::sleep(SETTLE);
    reportd.assert_running();
    let requests = server.requests();
    let paths: BTreeSet<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(requests.len(), expected_uploads, "{paths:?}");
    assert_eq!(paths.len(), expected_uploads, "no destination twice");
    assert!(paths.contains("/victim"));
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("/d3") || p.ends_with("/d4")),
        "{paths:?}"
    );
    let stored = destinations(&reportd);
    let count = |status: &str| stored.iter().filter(|d| d.status == status).count();
    assert_eq!(count("withheld:max_destinations_per_record"), 4 * 3);
    assert_eq!(count("withheld:already_reported"), 3);
    assert_eq!(count("withheld:max_records_per_domain"), 2 * 7);
    assert_eq!(stored.len(), expected_uploads + 12 + 3 + 14, "{stored:#?}");
    let warnings = log_lines(&reportd, "distinct TLSRPT records (max_records_per_domain)");
    assert_eq!(warnings.len(), 2, "{}", reportd.log_text());

    // tlsrptctl says what was withheld and why, and resends only by name.
    let ctl = |args: &[&str]| {
        let out = Command::new(support::reportd::tlsrptctl_bin())
            .args(args)
            .arg(format!("--config_file={}", reportd.config.display()))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = ctl(&["list", "--domain", "cannon.example"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        text.matches("beyond max_destinations_per_record of its record")
            .count(),
        12,
        "{text}"
    );
    assert_eq!(
        text.matches("already gets a report of this domain and day")
            .count(),
        3,
        "{text}"
    );
    let (code, listed, err) = ctl(&["list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let all_withheld = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["destinations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "withheld")
        })
        .expect("a report whose record is beyond max_records_per_domain");
    let id = all_withheld["id"].to_string();
    let (code, _, err) = ctl(&["resend", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("withheld all its destinations"), "{err}");
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
    assert_eq!(server.requests().len(), expected_uploads);
}
