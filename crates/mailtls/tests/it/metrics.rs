//! The Prometheus metrics of the running programs: the collector's,
//! the report daemon's and PostTLS's counters equal what was sent and what
//! their databases hold, every exposition passes `promtool check metrics`,
//! and only `GET /metrics` (on the web listener: only from a direct local
//! client) is answered.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::posttls::StandIn;
use crate::support::reportd::{collected_day, reportd_bin, Reportd};
use crate::support::{self, fetcher_bin, promtool_problems, wait_until, Collector};

/// One HTTP/1.0 exchange: the status code and the body.
fn http_get(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

/// The metrics at `addr`, checked to be a 200 answer.
fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body
}

/// Every sample of an exposition: `name{labels}` to its value.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `series`, which must be there.
fn value(exposition: &str, series: &str) -> f64 {
    *samples(exposition)
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

/// Where a program said it serves metrics (`metrics at http://ADDR/metrics`
/// in `log`), once it has.
fn metrics_address(what: &str, log: impl Fn() -> String) -> SocketAddr {
    let find = || {
        let text = log();
        let rest = text.split("metrics at http://").nth(1)?;
        rest.split("/metrics").next()?.parse().ok()
    };
    wait_until(20, &format!("{what} to serve metrics"), || find().is_some());
    find().expect("found above")
}

fn assert_promtool_accepts(what: &str, exposition: &str) {
    let problems = promtool_problems(exposition);
    assert_eq!(
        problems, "",
        "promtool on the {what} metrics:\n{exposition}"
    );
}

/// N valid and M invalid datagrams into the real collector: its counters
/// say N counted and M invalid, nothing waits once they are in the
/// database (which holds the N), and anything but `GET /metrics` is
/// refused.
#[test]
fn collector_counters_equal_what_was_sent_including_invalid_datagrams() {
    const VALID: usize = 25;
    let invalid: Vec<&[u8]> = vec![
        b"not json",
        b"{\"dpv\":\"1\"}",
        b"",
        b"{\"d\":\"x.example\",\"policies\":[{\"policy-type\":9}]}",
        b"\xff\xfe",
        b"not json",
        b"[1,2,3]",
    ];
    let mut c = Collector::start(&["--sockettimeout=1", "--metrics_listen=127.0.0.1:0"], &[]);
    let addr = metrics_address("the collector", || c.log_text());
    let before = scrape(addr);
    assert_eq!(
        value(
            &before,
            "tlsrpt_collectd_datagrams_total{outcome=\"counted\"}"
        ),
        0.0
    );
    for i in 0..VALID {
        // A few distinct datagrams, most of them repeated.
        let datagram = format!(
            r#"{{"dpv":"1","d":"d{}.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{{"policy-type":9,"t":1,"f":0}}]}}"#,
            i % 4
        );
        c.send(datagram.as_bytes());
    }
    for datagram in &invalid {
        c.send(datagram);
    }
    let counted = "tlsrpt_collectd_datagrams_total{outcome=\"counted\"}";
    let refused = "tlsrpt_collectd_datagrams_total{outcome=\"invalid\"}";
    wait_until(20, "every datagram counted and written", || {
        let text = scrape(addr);
        value(&text, counted) == VALID as f64
            && value(&text, refused) == invalid.len() as f64
            && value(&text, "tlsrpt_collectd_datagrams_waiting") == 0.0
    });
    let text = scrape(addr);
    assert_eq!(support::total_count(&c.db), VALID as i64);
    assert!(
        value(&text, "tlsrpt_collectd_commits_total") >= 1.0,
        "{text}"
    );
    assert_eq!(value(&text, "tlsrpt_collectd_commit_failures_total"), 0.0);
    assert_promtool_accepts("collector", &text);

    assert_eq!(http_get(addr, "GET", "/", "").0, 404);
    assert_eq!(http_get(addr, "GET", "/metrics/x", "").0, 404);
    assert_eq!(http_get(addr, "POST", "/metrics", "").0, 405);
    assert!(c.terminate().success(), "{}", c.log_text());
}

/// A `metrics_listen` that is not IP:PORT stops the collector at start
/// with a message naming the option.
#[test]
fn a_bad_metrics_listen_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["localhost:9150", "127.0.0.1", "9150"] {
        let out = Command::new(support::collectd_bin())
            .arg(format!(
                "--storage=sqlite://{}",
                dir.path().join("c.sqlite").display()
            ))
            .arg(format!("--socketname={}", dir.path().join("s").display()))
            .arg(format!("--metrics_listen={bad}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {said}");
        assert!(
            said.contains(&format!("metrics_listen = {bad:?} is not an address")),
            "{said}"
        );
        assert!(!dir.path().join("s").exists(), "started with {bad}");
    }
}

/// A day's reports into a directory, with a second destination that cannot
/// be written: the report daemon's counters equal its database's reports,
/// sent and retried deliveries, and its fetch runs.
#[test]
fn reportd_counters_equal_its_database() {
    let datagrams: Vec<Vec<u8>> = ["a.example", "b.example", "c.example"]
        .iter()
        .map(|domain| {
            format!(
                r#"{{"dpv":"1","d":"{domain}","pr":"v=TLSRPTv1;rua=mailto:r@{domain}","policies":[{{"policy-type":9,"t":2,"f":0}}]}}"#
            )
            .into_bytes()
        })
        .collect();
    let collector = collected_day(&datagrams, 3);
    let fetcher = format!(
        "{} --storage {}",
        fetcher_bin().display(),
        collector.storage_url()
    );
    let mut reportd = Reportd::prepare(
        &reportd_bin(),
        &fetcher,
        &[("metrics_listen", "127.0.0.1:0")],
    );
    // /dev/null is no directory: storing there fails and is retried.
    let map = reportd.write_file(
        "record.map",
        ". REPLACE directory:OUTDIR directory:/dev/null/reports\n",
    );
    let mut config = std::fs::read_to_string(&reportd.config).unwrap();
    config.push_str(&format!("tlsrpt_record_map = {}\n", map.display()));
    std::fs::write(&reportd.config, config).unwrap();
    reportd.start();
    let log = reportd.log.clone();
    let addr = metrics_address("the report daemon", || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    let count =
        |r: &Reportd, sql: &str| -> Option<f64> { r.try_query(sql).ok()?.first()?.parse().ok() };
    reportd.wait_for(60, "every report sent once and retried once", |r| {
        count(r, "SELECT count(*) FROM destinations WHERE status = 'sent'") == Some(3.0)
            && count(r, "SELECT count(*) FROM destinations WHERE retries >= 1") == Some(3.0)
    });
    let text = scrape(addr);
    let reports = count(&reportd, "SELECT count(*) FROM reports").unwrap();
    assert_eq!(reports, 3.0);
    assert_eq!(value(&text, "tlsrpt_reportd_reports_total"), reports);
    assert_eq!(
        value(&text, "tlsrpt_reportd_deliveries_total{outcome=\"sent\"}"),
        count(
            &reportd,
            "SELECT count(*) FROM destinations WHERE status = 'sent'"
        )
        .unwrap()
    );
    assert_eq!(
        value(&text, "tlsrpt_reportd_deliveries_total{outcome=\"retry\"}"),
        count(&reportd, "SELECT sum(retries) FROM destinations").unwrap()
    );
    assert_eq!(
        value(&text, "tlsrpt_reportd_deliveries_total{outcome=\"failed\"}"),
        0.0
    );
    // One bulk run answered the fetch job; no details runs were needed.
    assert_eq!(
        value(
            &text,
            "tlsrpt_reportd_fetch_runs_total{step=\"domainlist\"}"
        ),
        count(&reportd, "SELECT count(*) FROM fetchjobs").unwrap()
    );
    assert_eq!(
        value(
            &text,
            "tlsrpt_reportd_fetch_failures_total{step=\"domainlist\"}"
        ),
        0.0
    );
    assert_promtool_accepts("report daemon", &text);
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
}

/// `posttls_messages`, `posttls_notifications_total` and
/// `posttls_actions_total` as the database has them, grouped as the
/// metrics are.
fn posttls_database_counts(database: &Path) -> BTreeMap<String, f64> {
    let conn = rusqlite::Connection::open(database).unwrap();
    let mut counts = BTreeMap::new();
    for (sql, series) in [
        (
            "SELECT 'state=\"' || state || '\"', count(*) FROM messages GROUP BY state",
            "posttls_messages",
        ),
        (
            "SELECT 'kind=\"' || kind || '\",outcome=\"' || iif(outcome = 'sent', 'sent', 'failed') || '\"', \
             count(*) FROM notifications GROUP BY 1",
            "posttls_notifications_total",
        ),
        (
            "SELECT 'action=\"' || action || '\",outcome=\"' || state || '\"', count(*) FROM actions \
             WHERE state IN ('done', 'refused', 'failed') GROUP BY 1",
            "posttls_actions_total",
        ),
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))
            .unwrap();
        for row in rows {
            let (labels, n) = row.unwrap();
            counts.insert(format!("{series}{{{labels}}}"), n);
        }
    }
    counts
}

/// The non-zero PostTLS samples of the three database-backed metrics.
fn posttls_nonzero(exposition: &str) -> BTreeMap<String, f64> {
    samples(exposition)
        .into_iter()
        .filter(|(series, n)| {
            *n != 0.0
                && [
                    "posttls_messages{",
                    "posttls_notifications_total{",
                    "posttls_actions_total{",
                ]
                .iter()
                .any(|name| series.starts_with(name))
        })
        .collect()
}

/// A notified message and a request the worker carries out: the worker's
/// `metrics_listen` and the web listener's `/metrics` both give the
/// database's counts; the web listener refuses a request that came through
/// a proxy.
#[test]
fn posttls_counters_equal_the_database_on_the_worker_and_the_web_listener() {
    let lab = StandIn::new();
    lab.queue_one(chrono::Utc::now().timestamp() - 60);
    lab.scan(&[]);
    let database = lab.dir.path().join("posttls.sqlite");
    // A delete request for a message of this worker's instance (the host
    // name, by default) that PostTLS does not act on (as a forged row
    // would ask): the worker refuses it.
    let conn = rusqlite::Connection::open(&database).unwrap();
    conn.execute(
        "INSERT INTO messages(instance, queue_id, arrival_time, sender, own_sender, state, first_seen, last_seen) \
         VALUES(?, 'B0B0B0B0B0', 1, 'mallory@example.net', 0, 'ignored', 1, 1)",
        [mailtls_common::host_name()],
    )
    .unwrap();
    let foreign = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO actions(message_id, action, requested_by, requested_at, state) \
         VALUES(?, 'delete', 'sender', 0, 'queued')",
        [foreign],
    )
    .unwrap();
    drop(conn);
    let worker_log = lab.dir.path().join("worker.log");
    let mut worker = lab
        .command(
            "worker",
            &[
                "--scan_interval=1",
                "--metrics_listen=127.0.0.1:0",
                &format!("--logfilename={}", worker_log.display()),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    metrics_address("the worker", || {
        std::fs::read_to_string(&worker_log).unwrap_or_default()
    });
    let finished = || {
        let conn = rusqlite::Connection::open(&database).unwrap();
        conn.query_row(
            "SELECT count(*) FROM actions WHERE state IN ('done', 'refused', 'failed')",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    wait_until(20, "the worker to settle the request", finished);
    support::signal(&worker, libc::SIGTERM);
    assert!(worker.wait().unwrap().success());
    // The worker has stopped: the database no longer changes.
    let expected = posttls_database_counts(&database);
    assert_eq!(expected["posttls_messages{state=\"deferred\"}"], 1.0);
    assert_eq!(
        expected["posttls_notifications_total{kind=\"first\",outcome=\"sent\"}"],
        1.0
    );
    assert_eq!(
        expected
            .keys()
            .filter(|k| k.starts_with("posttls_actions_total"))
            .collect::<Vec<_>>(),
        ["posttls_actions_total{action=\"delete\",outcome=\"refused\"}"],
        "{expected:?}"
    );

    // Served by a worker again, and by the web listener.
    let worker_log = lab.dir.path().join("worker-again.log");
    let mut worker = lab
        .command(
            "worker",
            &[
                "--scan_interval=3600",
                "--metrics_listen=127.0.0.1:0",
                &format!("--logfilename={}", worker_log.display()),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let web_log = lab.dir.path().join("web.log");
    let mut web = lab
        .command(
            "web",
            &[
                "--listen=127.0.0.1:0",
                "--cookie_secure=0",
                &format!("--logfilename={}", web_log.display()),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let worker_addr = metrics_address("the restarted worker", || {
        std::fs::read_to_string(&worker_log).unwrap_or_default()
    });
    let web_addr: SocketAddr = {
        let find = || {
            let text = std::fs::read_to_string(&web_log).unwrap_or_default();
            let rest = text.split("PostTLS web pages on http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        };
        wait_until(20, "the web pages", || find().is_some());
        find().expect("found above")
    };
    for (what, addr) in [("worker", worker_addr), ("web", web_addr)] {
        let text = scrape(addr);
        assert_eq!(posttls_nonzero(&text), expected, "{what}:\n{text}");
        assert_eq!(
            value(
                &text,
                "posttls_actions_unfinished{action=\"delete\",state=\"queued\"}"
            ),
            0.0
        );
        assert_promtool_accepts(what, &text);
    }
    // Through a proxy (whoever the client is), the web listener has no
    // metrics; nor has the worker any other page.
    let (status, body) = http_get(
        web_addr,
        "GET",
        "/metrics",
        "X-Forwarded-For: 127.0.0.1\r\n",
    );
    assert_eq!(status, 404);
    assert!(!body.contains("posttls_messages"), "{body}");
    assert_eq!(http_get(worker_addr, "GET", "/admin", "").0, 404);
    for child in [&mut worker, &mut web] {
        support::signal(child, libc::SIGTERM);
        assert!(child.wait().unwrap().success());
    }
}

/// `mailtls run` is one process with the collector, the report daemon and
/// the web pages: its one `/metrics` (the web listener's) carries all of
/// their metrics, and the collector's counters equal what was sent.
#[test]
fn mailtls_run_serves_the_collectors_and_report_daemons_metrics_too() {
    const VALID: usize = 30;
    const INVALID: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut run = Command::new(support::mailtls_bin())
        .args(["run", "--dir"])
        .arg(dir.path())
        .arg(format!("--web=127.0.0.1:{port}"))
        .arg(format!("--policyd=127.0.0.1:{}", support::free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    /// Stops `mailtls run` if the test fails half-way.
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let run = Stop(&mut run);
    let socket = dir.path().join("tlsrpt-collectd.socket");
    wait_until(20, "the collector's socket", || socket.exists());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(20, "the web pages", || TcpStream::connect(addr).is_ok());
    for i in 0..VALID {
        let datagram = format!(
            r#"{{"dpv":"1","d":"d{}.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{{"policy-type":9,"t":1,"f":0}}]}}"#,
            i % 3
        );
        support::send(&socket, datagram.as_bytes());
    }
    for _ in 0..INVALID {
        support::send(&socket, b"not json");
    }
    let counted = "tlsrpt_collectd_datagrams_total{outcome=\"counted\"}";
    let refused = "tlsrpt_collectd_datagrams_total{outcome=\"invalid\"}";
    let has = |text: &str, series: &str| samples(text).contains_key(series);
    wait_until(30, "every datagram counted", || {
        let text = scrape(addr);
        has(&text, counted)
            && value(&text, counted) == VALID as f64
            && value(&text, refused) == INVALID as f64
    });
    let text = scrape(addr);
    for series in [
        "tlsrpt_collectd_datagrams_waiting",
        "tlsrpt_collectd_commits_total",
        "tlsrpt_reportd_reports_total",
        "tlsrpt_reportd_active",
        "posttls_messages{state=\"deferred\"}",
    ] {
        assert!(has(&text, series), "{series} in\n{text}");
    }
    assert_promtool_accepts("mailtls run", &text);
    support::signal(run.0, libc::SIGTERM);
    assert!(run.0.wait().unwrap().success());
}
