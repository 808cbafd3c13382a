//! tlsrpt-collectd and tlsrpt-fetcher as programs: the shared vectors end to
//! end, midnight rollover, signals, crashes, bad input and a locked database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

const CLOCK: &str = "MAILTLS_TEST_CLOCK";

fn daystatus(db: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row("SELECT daycomplete FROM daystatus", [], |r| r.get(0))
        .ok()
}

/// Start just before midnight, send every vector, let midnight pass: the
/// fetcher then answers from the completed day exactly as upstream did.
#[test]
fn vectors_through_collector_and_fetcher_match_the_upstream_reference() {
    let mut c = Collector::start(&[], &[(CLOCK, "2026-11-21T23:59:59.2Z")]);
    for (_, bytes) in vectors() {
        c.send(&bytes);
    }
    wait_until(10, "the rollover of 2026-11-21", || {
        daystatus(&c.yesterday()).as_deref() == Some("2026-11-21")
    });

    let (code, list, err) = run_fetcher(&fetcher_bin(), &c.storage_url(), &["2026-11-21"]);
    assert_eq!(code, 0, "{err}");
    let expected = String::from_utf8(reference("fetcher-domain-list.txt")).unwrap();
    let (ours, theirs): (Vec<&str>, Vec<&str>) =
        (list.lines().collect(), expected.lines().collect());
    assert_eq!(ours.len(), theirs.len(), "{list}");
    assert_eq!(ours[0], theirs[0], "version line");
    assert!(
        chrono::NaiveDateTime::parse_from_str(ours[1], "%Y-%m-%d %H:%M:%S").is_ok(),
        "time line {:?}",
        ours[1]
    );
    assert_eq!(ours[2..], theirs[2..], "day, domains and the final dot");

    // The bulk answer carries the same details, one compact line per domain.
    let (code, bulk, err) =
        run_fetcher(&fetcher_bin(), &c.storage_url(), &["--bulk", "2026-11-21"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = bulk.lines().collect();
    assert_eq!(lines[0], "TLSRPT FETCHER v1devel-c bulk");
    assert_eq!(lines[2], "2026-11-21");
    assert_eq!(lines.last(), Some(&"."));
    assert_eq!(lines.len(), 3 + 2 + 1, "{bulk}");
    for line in &lines[3..5] {
        let bulk_details: serde_json::Value = serde_json::from_str(line).unwrap();
        let domain = bulk_details["d"].as_str().unwrap();
        let expected: serde_json::Value =
            serde_json::from_slice(&reference(&format!("fetcher-details-{domain}.json"))).unwrap();
        assert_eq!(bulk_details, expected, "bulk line of {domain}");
    }
    let (code, _, _) = run_fetcher(
        &fetcher_bin(),
        &c.storage_url(),
        &["--bulk", "2026-11-21", "example.com"],
    );
    assert_eq!(code, 2, "--bulk and DOMAIN exclude each other");

    for domain in ["example.com", "mixed.case.example"] {
        let (code, details, err) =
            run_fetcher(&fetcher_bin(), &c.storage_url(), &["2026-11-21", domain]);
        assert_eq!(code, 0, "{err}");
        let expected = reference(&format!("fetcher-details-{domain}.json"));
        assert_eq!(
            details,
            String::from_utf8(expected).unwrap(),
            "details of {domain}"
        );
    }
    assert!(c.terminate().success());
}

#[test]
fn midnight_splits_the_days_and_starts_the_rollover_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hook.sh");
    let args_file = dir.path().join("hook.args");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", args_file.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script_opt = format!("--daily_rollover_script={}", script.display());
    let mut c = Collector::start(&[&script_opt], &[(CLOCK, "2026-11-21T23:59:59.5Z")]);
    let one = br#"{"dpv": "1","d": "before.example","pr": "v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    let two = br#"{"dpv": "1","d": "after.example","pr": "v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    for _ in 0..50 {
        c.send(one);
    }
    wait_until(10, "midnight", || {
        daystatus(&c.yesterday()).as_deref() == Some("2026-11-21")
    });
    for _ in 0..30 {
        c.send(two);
    }
    assert!(c.terminate().success());

    let y = rusqlite::Connection::open(c.yesterday()).unwrap();
    let rows: Vec<(String, String, i64)> = y
        .prepare("SELECT day, domain, cntrtotal FROM finalresults")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![("2026-11-21".into(), "before.example".into(), 50)]
    );
    let t = rusqlite::Connection::open(&c.db).unwrap();
    let rows: Vec<(String, String, i64)> = t
        .prepare("SELECT day, domain, cntrtotal FROM finalresults")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![("2026-11-22".into(), "after.example".into(), 30)]
    );

    // The hook ran for the new installation (day 2026-11-20) and at midnight.
    wait_until(5, "the rollover script", || {
        std::fs::read_to_string(&args_file).is_ok_and(|s| s.lines().count() == 2)
    });
    let expected = format!("{} {}", c.storage_url(), c.yesterday().display());
    for line in std::fs::read_to_string(&args_file).unwrap().lines() {
        assert_eq!(line, expected);
    }
}

#[test]
fn a_new_installation_has_a_readable_yesterday_at_once() {
    let mut c = Collector::start(&[], &[(CLOCK, "2026-11-22T10:00:00Z")]);
    let (code, list, err) = run_fetcher(&fetcher_bin(), &c.storage_url(), &["2026-11-21"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "TLSRPT FETCHER v1devel-c domain list");
    assert_eq!(lines[2..], ["2026-11-21", "."]);
    assert!(c.terminate().success());
}

#[test]
fn restart_after_midnight_rolls_the_old_day_over() {
    let mut c = Collector::start(&[], &[(CLOCK, "2026-11-21T15:00:00Z")]);
    c.send(br#"{"d":"a.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#);
    assert!(c.terminate().success());
    assert_eq!(total_count(&c.db), 1);
    // Down over midnight: the next start finds 2026-11-21 in today's file.
    let db = c.db.clone();
    let mut cmd = std::process::Command::new(collectd_bin());
    cmd.arg(format!("--storage=sqlite://{}", db.display()))
        .arg(format!("--socketname={}", c.socket.display()))
        .env(CLOCK, "2026-11-22T08:00:00Z");
    let mut child = cmd.spawn().unwrap();
    wait_until(10, "the rollover at start", || {
        daystatus(&c.yesterday()).as_deref() == Some("2026-11-21")
    });
    signal(&child, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    assert_eq!(total_count(&c.yesterday()), 1);
    assert_eq!(total_count(&db), 0);
}

#[test]
fn sigterm_counts_everything_queued_and_removes_socket_and_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("collectd.pid");
    let pid_opt = format!("--pidfilename={}", pid.display());
    let mut c = Collector::start(
        &[
            &pid_opt,
            "--sockettimeout=3600",
            "--max_uncommited_datagrams=1000000",
        ],
        &[],
    );
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        c.child.id().to_string()
    );
    let d = br#"{"d":"a.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    for _ in 0..500 {
        c.send(d);
    }
    let status = c.terminate();
    assert!(status.success(), "{status}");
    assert!(!c.socket.exists(), "socket removed");
    assert!(!pid.exists(), "pid file removed");
    assert_eq!(
        total_count(&c.db),
        500,
        "everything counted although no commit was due"
    );
}

#[test]
fn sigusr2_moves_today_to_yesterday_for_development() {
    let mut c = Collector::start(&[], &[(CLOCK, "2026-11-22T10:00:00Z")]);
    let d = br#"{"d":"a.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    for _ in 0..7 {
        c.send(d);
    }
    wait_until(10, "the first commit", || total_count(&c.db) == 7);
    c.send(d);
    c.signal(libc::SIGUSR2);
    wait_until(10, "the development rollover", || {
        total_count(&c.yesterday()) == 8
    });
    let conn = rusqlite::Connection::open(c.yesterday()).unwrap();
    let day: String = conn
        .query_row("SELECT DISTINCT day FROM finalresults", [], |r| r.get(0))
        .unwrap();
    assert_eq!(day, "2026-11-21");
    assert_eq!(daystatus(&c.yesterday()).as_deref(), Some("2026-11-21"));
    assert!(c.terminate().success());
}

#[test]
fn sighup_reopens_the_log_file() {
    let mut c = Collector::start(&[], &[]);
    let rotated = c.dir.path().join("collectd.log.1");
    std::fs::rename(&c.log, &rotated).unwrap();
    c.signal(libc::SIGHUP);
    c.send(b"not json"); // wakes the receiver, and logs into the new file
    wait_until(10, "a new log file", || c.log_text().contains("reopened"));
    assert!(c.terminate().success());
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("CONFIG from cmd option socketname"));
}

#[test]
fn sigkill_after_a_timed_commit_loses_nothing_committed() {
    let mut c = Collector::start(&["--sockettimeout=1"], &[]);
    let d = br#"{"d":"a.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    for _ in 0..300 {
        c.send(d);
    }
    wait_until(10, "the timed commit", || total_count(&c.db) == 300);
    c.signal(libc::SIGKILL);
    c.wait(10);
    assert_eq!(total_count(&c.db), 300);
    // The database is consistent and a new collector carries on with it.
    let d2 = Collector::start_program(&collectd_bin(), &[], &[]);
    drop(d2);
}

/// Every kind of bad input, interleaved with good datagrams: the daemon
/// keeps running, every good datagram is counted, one log line per kind of
/// problem (no flood), and the last bad one is dumped.
#[test]
fn bad_input_is_refused_without_losing_good_datagrams_or_flooding_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("invalid.bin");
    let dump_opt = format!("--dump_path_for_invalid_datagram={}", dump.display());
    let mut c = Collector::start(&[&dump_opt, "--sockettimeout=1"], &[]);
    let good = br#"{"dpv": "1","d": "good.example","pr": "v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    let mut deep =
        b"{\"d\":\"a\",\"pr\":\"r\",\"policies\":[{\"policy-type\":9,\"f\":0,\"x\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 5000));
    deep.extend(std::iter::repeat_n(b']', 5000));
    deep.extend_from_slice(b"}]}");
    let huge = vec![b'x'; 200 * 1024];
    // Beyond the collector's maximum of 256 KiB: refused, not truncated.
    let too_long = vec![b' '; 300 * 1024];
    let bad: Vec<Vec<u8>> = vec![
        b"null".to_vec(),
        b"".to_vec(),
        b"{".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"d":"-a.example","pr":"r","policies":[]}"#.to_vec(),
        b"{\"d\":\"a\nb\",\"pr\":\"r\",\"policies\":[]}".to_vec(),
        br#"{"d":"a","pr":"r"}"#.to_vec(),
        br#"{"d":1,"pr":"r","policies":[]}"#.to_vec(),
        br#"{"d":"a","pr":"r","policies":[{"policy-type":"9","f":0}]}"#.to_vec(),
        br#"{"d":"a","pr":"r","policies":[{"policy-type":9,"f":7}]}"#.to_vec(),
        vec![0xff, 0x00, 0x13, 0x37, 0xfe],
        deep,
        huge,
        too_long,
    ];
    for _ in 0..20 {
        for b in &bad {
            c.send(b);
            c.send(good);
        }
    }
    // Invalid UTF-8 inside a string is counted, with U+FFFD.
    let mut helo = br#"{"d":"utf8.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"failure-details":[{"c":201,"h":"mx "#.to_vec();
    helo.extend_from_slice(&[0xc3, 0x28]);
    helo.extend_from_slice(br#""}],"t":1,"f":1}]}"#);
    c.send(&helo);
    wait_until(10, "every good datagram", || {
        total_count(&c.db) == 20 * bad.len() as i64 + 1
    });
    assert!(c.child.try_wait().unwrap().is_none(), "still running");
    assert!(c.terminate().success());

    let conn = rusqlite::Connection::open(&c.db).unwrap();
    let reason: String = conn
        .query_row(
            "SELECT reason FROM failures WHERE domain = 'utf8.example'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, r#"{"c": 201, "h": "mx \ufffd("}"#);
    assert!(dump.exists(), "an invalid datagram was dumped");

    let log = c.log_text();
    let refused_lines = log
        .lines()
        .filter(|l| l.contains("refused an invalid datagram"))
        .count();
    assert!(
        (5..=9).contains(&refused_lines),
        "one line per kind of problem, not per datagram: {refused_lines} lines"
    );
    assert!(
        log.contains(&format!("{} since start", 20 * bad.len())),
        "summary with the total: {log}"
    );
}

/// Another process holds the database locked: receiving goes on, nothing
/// is lost, and the counters arrive once the lock is gone.
#[test]
fn a_locked_database_does_not_stop_receiving() {
    let mut c = Collector::start(&["--sockettimeout=1"], &[]);
    let locker = rusqlite::Connection::open(&c.db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sender.set_nonblocking(true).unwrap();
    let d = br#"{"d":"a.example","pr":"v=TLSRPTv1;rua=mailto:r@x","policies":[{"policy-type":9,"t":0,"f":0}]}"#;
    let mut refused = 0;
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(4) {
        match sender.send_to(d, &c.socket) {
            Ok(_) => sent += 1,
            Err(_) => refused += 1,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        refused, 0,
        "the kernel refused datagrams while the database was locked"
    );
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    wait_until(30, "the retried write", || total_count(&c.db) == sent);
    assert!(
        c.log_text().contains("cannot write to"),
        "the failure was logged"
    );
    assert!(c.terminate().success());
}

#[test]
fn configuration_errors_stop_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collectd.cfg");
    std::fs::write(
        &cfg,
        "[tlsrpt_collectd]\nstorage = sqlite:///tmp/x.sqlite\nsocketnmae = /tmp/s\n",
    )
    .unwrap();
    let out = std::process::Command::new(collectd_bin())
        .arg(format!("--config_file={}", cfg.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key \"socketnmae\""), "{err}");

    let out = std::process::Command::new(collectd_bin())
        .env("TLSRPT_COLLECTD_STORAGE", "sqlite:///tmp/x.sqlite")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no socket configured"));
}

#[test]
fn settings_come_from_command_line_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collectd.cfg");
    let socket = dir.path().join("s");
    std::fs::write(
        &cfg,
        format!(
            "[DEFAULT]\nlog_level = info\n\n[tlsrpt_collectd]\n# comment\nsocketname = {}\nstorage = sqlite://%(socketname)s.sqlite\nsockettimeout = 7\nmax_uncommited_datagrams = 11\n",
            socket.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(collectd_bin())
        .arg(format!("--config_file={}", cfg.display()))
        .arg("--max_uncommited_datagrams=13")
        .env("TLSRPT_COLLECTD_SOCKETTIMEOUT", "9")
        .env("TLSRPT_COLLECTD_MAX_UNCOMMITED_DATAGRAMS", "12")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(10, "the socket from the config file", || socket.exists());
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    for line in [
        "CONFIG from cmd option max_uncommited_datagrams is 13",
        "CONFIG from env option sockettimeout is 9",
        "CONFIG from cfg option log_level is info",
        "CONFIG from def option socketmode is ",
    ] {
        assert!(log.contains(line), "missing {line:?} in {log}");
    }
    assert!(
        log.contains("net.unix.max_dgram_qlen"),
        "queue length is reported"
    );
    assert!(
        PathBuf::from(format!("{}.sqlite", socket.display())).exists(),
        "storage interpolated"
    );
}

#[test]
fn fetcher_exit_codes_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("sqlite://{}/none.sqlite", dir.path().display());
    let (code, out, err) = run_fetcher(&fetcher_bin(), &storage, &["2026-11-21"]);
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("does not exist"), "{err}");
    let (code, _, err) = run_fetcher(&fetcher_bin(), &storage, &["21.11.2026"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected YYYY-MM-DD"), "{err}");
    let other = dir.path().join("other.sqlite.yesterday");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE dbversion(version, installdate, purpose); INSERT INTO dbversion VALUES (1, 'x', 'something else')").unwrap();
    let storage = format!("sqlite://{}/other.sqlite", dir.path().display());
    let (code, _, err) = run_fetcher(&fetcher_bin(), &storage, &["2026-11-21"]);
    assert_eq!(code, 4, "{err}");
}

/// Scheduling policy of each thread of a process, by thread name.
fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        // Fields after the command name start at field 3; `policy` is field 41.
        let after_name = stat.rsplit_once(')').unwrap().1;
        let policy = after_name.split_whitespace().nth(41 - 3).unwrap();
        out.push((name.trim().to_string(), policy.parse().unwrap()));
    }
    out.sort();
    out
}

/// Whether this process may give a thread real-time priority (tried on a
/// thread of its own, which then ends).
fn realtime_permitted() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: changes the policy of this short-lived thread only.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    })
    .join()
    .unwrap()
}

#[test]
fn the_receiver_takes_real_time_priority_when_permitted_and_only_the_receiver() {
    let expect = |c: &Collector, receiver: i32| {
        let expected = [
            ("aggregator".to_string(), libc::SCHED_BATCH),
            ("committer".to_string(), libc::SCHED_BATCH),
            ("tlsrpt-collectd".to_string(), receiver),
        ];
        // The threads set their own policy as they start.
        let settled = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while thread_policies(c.child.id()) != expected && std::time::Instant::now() < settled {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(thread_policies(c.child.id()), expected);
    };
    let mut c = Collector::start(&[], &[]);
    let receiver = if realtime_permitted() {
        wait_until(10, "the real-time log line", || {
            c.log_text().contains("real-time priority (SCHED_FIFO 1)")
        });
        libc::SCHED_FIFO
    } else {
        wait_until(10, "the advice to permit real-time priority", || {
            c.log_text().contains("LimitRTPRIO=1")
        });
        libc::SCHED_OTHER
    };
    expect(&c, receiver);
    assert!(c.terminate().success());

    let mut c = Collector::start(&["--receiver_priority=normal"], &[]);
    expect(&c, libc::SCHED_OTHER);
    assert!(c.terminate().success());

    let out = std::process::Command::new(collectd_bin())
        .args(["--storage=sqlite:///tmp/x.sqlite", "--socketname=/tmp/s"])
        .arg("--receiver_priority=high")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("receiver_priority must be realtime or normal"),
        "{err}"
    );
}
