//! tlsrpt-reportd and tlsrptctl end to end: a real collector's completed
//! day, real fetcher processes, reports in a `directory:` destination, by
//! mail through a real Postfix, and by HTTPS.

use crate::support;

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::reportd::{
    collected_day, mail_datagram, process_ended, reportd_bin, tlsrptctl_bin, HangingSendmail,
    Reportd,
};
use crate::support::{fetcher_bin, vectors, wait_until};
use serde_json::Value;

/// The libtlsrpt vectors plus a domain with two records and one with a
/// record that names no usable destination, and the number of policies
/// the collector counts from them.
fn vector_datagrams() -> (Vec<Vec<u8>>, i64) {
    let mut datagrams: Vec<Vec<u8>> = vectors().into_iter().map(|(_, bytes)| bytes).collect();
    for (domain, record) in [
        ("two.example", "v=TLSRPTv1;rua=mailto:a@two.example"),
        ("two.example", "v=TLSRPTv1;rua=https://two.example/tlsrpt"),
        (
            "badrecord.example",
            "v=TLSRPTv2;rua=mailto:r@badrecord.example",
        ),
    ] {
        datagrams.push(
            format!(r#"{{"dpv":"1","d":"{domain}","pr":"{record}","policies":[{{"policy-type":9,"t":0,"f":0}}]}}"#)
                .into_bytes(),
        );
    }
    let policies = datagrams
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_slice(String::from_utf8_lossy(d).as_bytes()).unwrap();
            v["policies"].as_array().map_or(0, |p| p.len() as i64)
        })
        .sum();
    (datagrams, policies)
}

fn our_fetcher(storage: &str) -> String {
    format!("{} --storage {storage}", fetcher_bin().display())
}

fn ctl(reportd: &Reportd, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tlsrptctl_bin())
        .args(args)
        .arg(format!("--config_file={}", reportd.config.display()))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn domains_of(reports: &[Value]) -> BTreeSet<String> {
    reports
        .iter()
        .map(|r| {
            let id = r["report-id"].as_str().unwrap();
            id.splitn(3, '_').nth(2).unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_collected_day_becomes_reports_in_a_directory_and_tlsrptctl_shows_them() {
    let (datagrams, policies) = vector_datagrams();
    let collector = collected_day(&datagrams, policies);
    let mut reportd = Reportd::prepare(&reportd_bin(), &our_fetcher(&collector.storage_url()), &[]);
    let map = reportd.write_file("record.map", ". REPLACE directory:OUTDIR\n");
    let mut config = std::fs::read_to_string(&reportd.config).unwrap();
    config.push_str(&format!("tlsrpt_record_map = {}\n", map.display()));
    std::fs::write(&reportd.config, config).unwrap();
    reportd.start();
    let expected_domains: BTreeSet<String> = support::run_fetcher(
        &fetcher_bin(),
        &collector.storage_url(),
        &[&chrono::Utc::now()
            .date_naive()
            .pred_opt()
            .unwrap()
            .to_string()],
    )
    .1
    .lines()
    .skip(3)
    .filter(|l| *l != ".")
    .map(str::to_owned)
    .collect();
    assert!(expected_domains.len() >= 4, "{expected_domains:?}");
    // A record without a usable rua gets its report, sent nowhere.
    let mut expected_domains = expected_domains;
    assert!(expected_domains.remove("badrecord.example"));
    let out = reportd.out.clone();
    reportd.wait_for(60, "every domain's report in the directory", |_| {
        domains_of(&Reportd::reports_in(&out)) == expected_domains
    });
    reportd.wait_for(20, "every destination recorded as sent", |r| {
        r.try_query("SELECT count(*) FROM destinations WHERE status IS NOT 'sent'")
            .ok()
            == Some(vec!["0".into()])
    });
    assert!(
        reportd.log_text().contains("bad TLSRPT record on day"),
        "{}",
        reportd.log_text()
    );
    assert_eq!(
        reportd.query("SELECT count(*) FROM reports LEFT JOIN destinations ON r_id=d_r_id WHERE domain='badrecord.example' AND destination IS NULL"),
        ["1"]
    );
    let reports = Reportd::reports_in(&out);
    // Two records, two reports.
    assert_eq!(reports.len(), expected_domains.len() + 1);
    for report in &reports {
        for policy in report["policies"].as_array().unwrap() {
            assert!(policy["policy"]["policy-domain"].is_string(), "{report}");
        }
        assert!(!report.to_string().contains("null"), "{report}");
    }
    // The bulk extension of our fetcher was used: one run for the list.
    assert!(
        reportd.log_text().contains("in one bulk answer"),
        "{}",
        reportd.log_text()
    );

    let (code, text, err) = ctl(&reportd, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("###  Destinations  ###"), "{text}");
    assert!(
        text.contains(&format!("   sent   {}", reports.len())),
        "{text}"
    );
    let (code, text, err) = ctl(&reportd, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["destinations"][0]["status"], "sent");
    assert_eq!(status["destinations"][0]["count"], reports.len());

    let (code, text, err) = ctl(&reportd, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        reports.len() + 1,
        "badrecord.example has a report too"
    );
    let first_id = listed[0]["report_id"].as_str().unwrap().to_string();
    let (code, text, err) = ctl(&reportd, &["show", &first_id, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["report"]["report-id"], first_id.as_str());

    // Re-send one report: it is delivered again (the same file).
    let (code, _, err) = ctl(&reportd, &["resend", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("report 1 has no destinations"), "{err}");
    let (code, text, err) = ctl(&reportd, &["resend", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("queued report 2"), "{text}");
    reportd.wait_for(20, "the re-sent report", |r| {
        r.log_text().matches("report 2 for ").count() >= 2
            && r.try_query("SELECT status FROM destinations WHERE d_r_id=2")
                .ok()
                == Some(vec!["sent".into()])
    });
    assert!(reportd.terminate().success(), "{}", reportd.log_text());

    // Dry run: the same reports, rendered without the daemon.
    let dry = reportd.dir.path().join("dry");
    let day = chrono::Utc::now()
        .date_naive()
        .pred_opt()
        .unwrap()
        .to_string();
    let (code, text, err) = ctl(&reportd, &["render", &day, dry.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("nothing was sent"), "{text}");
    let rendered = Reportd::reports_in(&dry);
    assert_eq!(
        rendered.len(),
        reports.len() + 1,
        "badrecord.example's report too"
    );
    let mut a: Vec<String> = rendered
        .iter()
        .filter(|r| {
            !r["report-id"]
                .as_str()
                .unwrap()
                .ends_with("_badrecord.example")
        })
        .map(Value::to_string)
        .collect();
    let mut b: Vec<String> = reports.iter().map(Value::to_string).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// SIGKILL while a report mail is being handed over, restart: every
/// destination ends up with exactly one mail. The cut-off attempt dies
/// with the daemon (its process does not outlive it), its delivery is
/// recorded as started, and the restarted daemon makes it again; the
/// deliveries that were recorded as done are not repeated.
#[test]
fn kill_9_during_delivery_neither_loses_nor_duplicates_a_report() {
    let domains: Vec<String> = (1..=5).map(|i| format!("d{i}.example")).collect();
    let datagrams: Vec<Vec<u8>> = domains.iter().map(|d| mail_datagram(d)).collect();
    let collector = collected_day(&datagrams, domains.len() as i64);
    let shared = tempfile::tempdir().unwrap();
    let sendmail = HangingSendmail::new(shared.path());
    let command = sendmail.command();
    let mut reportd = Reportd::prepare(
        &reportd_bin(),
        &our_fetcher(&collector.storage_url()),
        &[
            ("sendmail_script", command.as_str()),
            ("sendmail_timeout", "300"),
        ],
    );
    reportd.start();
    reportd.wait_for(30, "the hanging second delivery", |r| {
        sendmail.hanging().is_some()
            && r.try_query("SELECT count(*) FROM destinations WHERE status='sending'")
                .ok()
                == Some(vec!["1".into()])
    });
    assert_eq!(sendmail.delivered_count(), 1);
    let pid = sendmail.hanging().unwrap();
    assert!(!process_ended(pid), "the hanging delivery runs");
    reportd.kill9();
    // The cut-off attempt dies with the daemon.
    wait_until(10, "the cut-off attempt to end with the daemon", || {
        process_ended(pid)
    });
    assert_eq!(
        reportd.query("SELECT count(*) FROM destinations WHERE status='sent'"),
        ["1"]
    );

    reportd.start();
    reportd.wait_for(30, "every destination sent", |r| {
        r.try_query("SELECT count(*) FROM destinations WHERE status='sent'")
            .ok()
            == Some(vec![domains.len().to_string()])
    });
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
    assert!(
        reportd
            .log_text()
            .contains("the previous run stopped during this delivery"),
        "{}",
        reportd.log_text()
    );
    let expected: Vec<String> = domains.iter().map(|d| format!("<r@{d}>")).collect();
    assert_eq!(sendmail.recipients(), expected, "one mail per destination");
    // Six attempts for five mails: the one cut off was made again.
    assert_eq!(sendmail.attempts(), 6);
}

/// Two fetchers, one of which hangs: each of its runs is killed at the
/// time limit, retried, and given up after max_retries_domainlist; the
/// other fetcher's data makes the reports meanwhile, and the start-up
/// probe does not hold the daemon up.
#[test]
fn a_hung_fetcher_is_killed_retried_and_given_up_without_blocking_the_others() {
    let datagrams = vec![mail_datagram("alive.example")];
    let collector = collected_day(&datagrams, 1);
    let mut reportd = Reportd::prepare(&reportd_bin(), "", &[]);
    let hang = reportd.write_file("hang.sh", "exec sleep 60\n");
    let mut config = std::fs::read_to_string(&reportd.config).unwrap().replace(
        "fetchers = \n",
        &format!(
            "fetchers = {}, sh {}\n",
            our_fetcher(&collector.storage_url()),
            hang.display()
        ),
    );
    config.push_str(
        "max_collectd_timeout = 1\nmax_retries_domainlist = 1\nmin_wait_domainlist = 0\nmax_wait_domainlist = 1\n",
    );
    let map = reportd.write_file("record.map", ". REPLACE directory:OUTDIR\n");
    config.push_str(&format!("tlsrpt_record_map = {}\n", map.display()));
    std::fs::write(&reportd.config, config).unwrap();
    let started = std::time::Instant::now();
    reportd.start();
    let out = reportd.out.clone();
    reportd.wait_for(25, "the report from the live fetcher", |_| {
        Reportd::reports_in(&out).len() == 1
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(
        reportd.query("SELECT fetcherindex || ' ' || status || ' ' || retries FROM fetchjobs ORDER BY fetcherindex"),
        ["1 ok 0", "2 timedout 1"]
    );
    let log = reportd.log_text();
    assert!(
        log.contains("did not finish within 1 s and was killed"),
        "{log}"
    );
    assert!(
        log.contains("giving up after max_retries_domainlist = 1"),
        "{log}"
    );
    assert!(reportd.terminate().success(), "{log}");
}

/// `tlsrptctl maptest` gives the same destinations as upstream's for
/// every match type and action.
#[test]
fn maptest_agrees_with_upstream() {
    let reportd = Reportd::prepare(&reportd_bin(), "unused", &[]);
    let record_map = reportd.write_file(
        "record.map",
        "# record map\nreplaced.example REPLACE mailto:new@replaced.example\n.appended.example APPEND https://extra.example/r\ndropped.example DISCARD\n",
    );
    let mail_map = reportd.write_file(
        "mail.map",
        "regexp:^mailto:(.*)@old\\.example$ REGEXP ^mailto:(.*)@old\\.example$ mailto:\\1@new.example\nspam.example DISCARD\n",
    );
    let http_map = reportd.write_file(
        "http.map",
        "insecure.example REPLACE https://secure.example/upload\n",
    );
    let cases = [
        (
            "replaced.example",
            "v=TLSRPTv1;rua=mailto:a@replaced.example",
        ),
        (
            "sub.appended.example",
            "v=TLSRPTv1;rua=mailto:a@x.example,https://y.example/r",
        ),
        ("dropped.example", "v=TLSRPTv1;rua=mailto:a@dropped.example"),
        (
            "other.example",
            "v=TLSRPTv1; rua=mailto:someone@old.example,mailto:x@spam.example",
        ),
        (
            "web.example",
            "v=TLSRPTv1;rua=https://insecure.example/r,mailto:tlsrpt@web.example",
        ),
    ];
    let result_line = |out: &str| -> String {
        out.lines()
            .find(|l| l.starts_with("Resulting recipients after mapping"))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    for (domain, record) in cases {
        let maps = [
            format!("--tlsrpt_record_map={}", record_map.display()),
            format!("--mail_destination_map={}", mail_map.display()),
            format!("--http_upload_map={}", http_map.display()),
        ];
        let ours = Command::new(tlsrptctl_bin())
            .args(["maptest", domain, record])
            .args(&maps)
            .output()
            .unwrap();
        let theirs = Command::new(support::upstream("tlsrptctl"))
            .args(["maptest", domain, record])
            .args(&maps)
            .output()
            .unwrap();
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        assert!(
            theirs.status.success(),
            "{}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        assert_eq!(
            result_line(&String::from_utf8_lossy(&ours.stdout)),
            result_line(&String::from_utf8_lossy(&theirs.stdout)),
            "{domain} {record}"
        );
    }
    // A documented fix: a percent-encoded mailto address is decoded
    // (RFC 8460 section 3: the rua URIs are URIs); upstream keeps "%2B".
    let ours = Command::new(tlsrptctl_bin())
        .args([
            "maptest",
            "x.example",
            "v=TLSRPTv1;rua=mailto:tls%2Brpt@x.example",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ours.stdout);
    assert!(text.contains("['mailto:tls+rpt@x.example']"), "{text}");
}

/// The README's first command: `mailtls run` starts the collector, the
/// report daemon, the web pages and the policy server in a local
/// directory, says where everything is, and stops cleanly on SIGTERM.
#[test]
fn mailtls_run_starts_everything_and_stops_cleanly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let web_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policyd_port = support::free_port();
    let mut child = Command::new(support::mailtls_bin())
        .args(["run", "--dir"])
        .arg(dir.path())
        .arg(format!("--web=127.0.0.1:{web_port}"))
        .arg(format!("--policyd=127.0.0.1:{policyd_port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("tlsrpt-collectd.socket");
    support::wait_until(20, "the collector's socket", || socket.exists());
    support::send(&socket, &mail_datagram("run.example"));
    let db = dir.path().join("reportd.sqlite");
    support::wait_until(20, "the report daemon's fetch job", || {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM fetchjobs WHERE status='ok'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n == 1)
    });
    // The PostTLS web pages answer; the dashboard wants a login.
    support::wait_until(20, "the web pages", || {
        std::net::TcpStream::connect(("127.0.0.1", web_port)).is_ok()
    });
    let mut web = std::net::TcpStream::connect(("127.0.0.1", web_port)).unwrap();
    std::io::Write::write_all(
        &mut web,
        b"GET /admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    web.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(
        answer.to_lowercase().contains("location: /admin/login"),
        "{answer}"
    );
    // The policy server answers a socketmap lookup (an IP next hop: no
    // DNS asked, NOTFOUND).
    let mut policyd = std::net::TcpStream::connect(("127.0.0.1", policyd_port)).unwrap();
    policyd
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(
        &mut policyd,
        &crate::policyd::netstring("postfix [192.0.2.1]"),
    )
    .unwrap();
    assert_eq!(
        crate::policyd::read_answer(&mut policyd).unwrap(),
        "NOTFOUND "
    );
    assert!(dir.path().join("policyd.sqlite").exists());
    support::signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut banner = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut banner)
        .unwrap();
    assert!(
        banner.contains(&format!("TLSRPT collector socket   {}", socket.display())),
        "{banner}"
    );
    assert!(banner.contains("(written there, not sent)"), "{banner}");
    assert!(
        banner.contains(&format!(
            "web UI (PostTLS)          http://127.0.0.1:{web_port}/admin"
        )),
        "{banner}"
    );
    assert!(banner.contains("smtp_tlsrpt_socket_name"), "{banner}");
    assert!(
        banner.contains(&format!(
            "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:{policyd_port}:postfix"
        )),
        "{banner}"
    );
    assert!(!socket.exists(), "the socket is removed at exit");
    assert_eq!(support::total_count(&dir.path().join("collectd.sqlite")), 1);
}
