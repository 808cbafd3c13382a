//! Collectors of a fleet counting into one real PostgreSQL (a private
//! cluster): the fetcher's answers for the day, from PostgreSQL, are byte
//! for byte those of one SQLite collector that received every datagram;
//! the day is complete only when every collector has ended it; a
//! PostgreSQL restart in the middle of a load loses nothing.

use crate::support::reportd::{
    mail_datagram, process_ended, reportd_bin, HangingSendmail, Reportd,
};
use crate::support::{self, Collector};

use std::time::Duration;

use mailtls_test_support::postgres::PgCluster;

/// The libtlsrpt vectors our collector counts.
fn vectors() -> Vec<Vec<u8>> {
    support::vectors()
        .into_iter()
        .map(|(_, bytes)| bytes)
        .filter(|bytes| tlsrpt_datagram::parse(bytes).is_ok())
        .collect()
}

/// Sessions one round of `datagrams` counts (one per policy).
fn sessions_per_round(datagrams: &[Vec<u8>]) -> i64 {
    datagrams
        .iter()
        .map(|d| tlsrpt_datagram::parse(d).unwrap().policies.len() as i64)
        .sum()
}

/// Sessions counted in PostgreSQL (every collector, every day).
fn pg_total(cluster: &PgCluster) -> i64 {
    cluster
        .psql(
            "tlsrpt",
            "SELECT coalesce(sum(total), 0) FROM tlsrpt_results",
        )
        .parse()
        .unwrap()
}

/// One answer of the fetcher without its time line (the second line of a
/// list or bulk answer is the fetcher's clock).
fn fetch(storage: &str, args: &[&str]) -> String {
    // The test's day is the real yesterday, whose grace time is long over:
    // a day_end_grace of three days keeps the completeness rule visible.
    let grace = ["--day_end_grace=259200"];
    let args_with_grace: Vec<&str> = if storage.starts_with("postgresql:") {
        grace.iter().chain(args).copied().collect()
    } else {
        args.to_vec()
    };
    let (code, out, err) = support::run_fetcher(&support::fetcher_bin(), storage, &args_with_grace);
    assert_eq!(code, 0, "fetcher {args:?}: {err}");
    out.lines()
        .enumerate()
        .filter(|(i, _)| *i != 1 || args.len() > 1 && args[1] != "--bulk")
        .map(|(_, line)| format!("{line}\n"))
        .collect()
}

#[test]
fn a_fleet_of_collectors_in_postgresql_answers_as_one_collector_would() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let pg = cluster.url("tlsrpt");
    let datagrams = vectors();
    let policies_per_round = sessions_per_round(&datagrams);
    let mut mx1 =
        Collector::start_with_storage(&pg, &["--collector_name=mx1", "--sockettimeout=1"]);
    let mut mx2 =
        Collector::start_with_storage(&pg, &["--collector_name=mx2", "--sockettimeout=1"]);
    // The reference: one SQLite collector that gets everything.
    let mut all = Collector::start(&["--sockettimeout=1"], &[]);
    for round in 0..5 {
        for datagram in &datagrams {
            let (one, other) = if round % 2 == 0 {
                (&mx1, &mx2)
            } else {
                (&mx2, &mx1)
            };
            one.send(datagram);
            all.send(datagram);
            if round == 4 {
                other.send(datagram);
                all.send(datagram);
            }
        }
    }
    let expected = 6 * policies_per_round;
    support::wait_until(30, "both collectors' commits", || {
        pg_total(&cluster) == expected
    });
    support::wait_until(30, "the SQLite collector's commit", || {
        support::try_total(&all.db) == Some(expected)
    });
    // Today's counters become yesterday's (SIGUSR2), as at midnight.
    all.signal(libc::SIGUSR2);
    support::wait_until(30, "the SQLite rollover", || {
        support::try_total(&all.yesterday()) == Some(expected)
    });
    let day = chrono::Utc::now()
        .date_naive()
        .pred_opt()
        .unwrap()
        .to_string();
    for collector in [&mx1, &mx2] {
        collector.signal(libc::SIGUSR2);
    }
    support::wait_until(30, "both collectors' day ends", || {
        cluster.psql("tlsrpt", "SELECT count(*) FROM tlsrpt_day_ends") == "2"
    });
    // A third collector that counted on the day (nothing that changes a
    // sum) but has not ended it: the day is not complete (the header's
    // completed-day line is empty, "not ready"), the grace time not over.
    cluster.psql(
        "tlsrpt",
        "INSERT INTO tlsrpt_results SELECT day, domain, record, policy, 'mx3', 0, 0 FROM tlsrpt_results LIMIT 1",
    );
    let list = fetch(&pg, &[&day]);
    assert!(
        list.starts_with("TLSRPT FETCHER v1devel-c domain list\n\n"),
        "{list}"
    );
    // `mailtls check` on an MTA of the fleet names the collector that holds
    // the day up.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collectd.cfg");
    std::fs::write(
        &cfg,
        // configparser's interpolation: a % of the URL is written %%.
        format!(
            "[tlsrpt_collectd]\nstorage = {}\ncollector_name = mx1\nsocketname = /nonexistent/s\n",
            pg.replace('%', "%%")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(support::mailtls_bin())
        .args(["check", "tlsrpt", "--json"])
        .arg(format!("--collectd_config={}", cfg.display()))
        .arg(format!(
            "--reportd_config={}",
            dir.path().join("none.cfg").display()
        ))
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let messages: Vec<&str> = answer["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m
            .contains("PostgreSQL storage answers; collectors of the last 7 days: mx1, mx2, mx3")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with(&format!(
            "collector mx3 counted on {day} but has not ended that day"
        ))),
        "{messages:#?}"
    );
    assert!(
        !messages
            .iter()
            .any(|m| m.starts_with("collector mx1 counted")),
        "{messages:#?}"
    );
    cluster.psql(
        "tlsrpt",
        &format!("INSERT INTO tlsrpt_day_ends (collector, day) VALUES ('mx3', '{day}')"),
    );
    let sqlite = all.storage_url();
    let from_pg = fetch(&pg, &[&day]);
    assert_eq!(from_pg, fetch(&sqlite, &[&day]));
    assert!(
        from_pg.contains(&format!("\n{day}\n")),
        "complete now: {from_pg}"
    );
    let domains: Vec<&str> = from_pg.lines().skip(3).take_while(|l| *l != ".").collect();
    assert!(!domains.is_empty(), "{from_pg}");
    for domain in &domains {
        assert_eq!(
            fetch(&pg, &[&day, domain]),
            fetch(&sqlite, &[&day, domain]),
            "{domain}"
        );
    }
    assert_eq!(
        fetch(&pg, &[&day, "--bulk"]),
        fetch(&sqlite, &[&day, "--bulk"])
    );

    // The report daemon reading PostgreSQL in-process (a postgresql://
    // fetcher entry) makes the reports one fed by the SQLite collector's
    // fetcher makes.
    let reports = |fetchers: &str| {
        let mut reportd = Reportd::prepare(&reportd_bin(), fetchers, &[]);
        let map = reportd.write_file("record.map", ". REPLACE directory:OUTDIR\n");
        let mut config = std::fs::read_to_string(&reportd.config).unwrap();
        config.push_str(&format!("tlsrpt_record_map = {}\n", map.display()));
        std::fs::write(&reportd.config, config).unwrap();
        reportd.start();
        reportd.wait_for(60, "every destination recorded as sent", |r| {
            r.try_query("SELECT count(*) FROM destinations WHERE status = 'sent'")
                .is_ok_and(|n| n[0] != "0")
                && r.try_query("SELECT count(*) FROM destinations WHERE status IS NOT 'sent'")
                    .ok()
                    == Some(vec!["0".into()])
        });
        let log = reportd.log_text();
        assert!(reportd.terminate().success(), "{log}");
        (Reportd::reports_in(&reportd.out), log)
    };
    let (from_postgresql, log) =
        reports(&format!("{} --day_end_grace 259200", pg.replace('%', "%%")));
    assert!(log.contains("in one bulk answer"), "{log}");
    // The fetcher entry's URL carries the password: the log shows it
    // masked.
    let encoded = mailtls_test_support::postgres::PASSWORD.replace(' ', "%20");
    assert!(pg.contains(&encoded), "{pg}");
    assert!(
        !log.contains(&encoded) && log.contains(":***@127.0.0.1"),
        "{log}"
    );
    let (from_sqlite, _) = reports(&format!(
        "{} --storage {sqlite}",
        support::fetcher_bin().display()
    ));
    assert!(!from_sqlite.is_empty());
    assert_eq!(from_postgresql, from_sqlite);
    for collector in [&mut mx1, &mut mx2, &mut all] {
        assert!(collector.terminate().success(), "{}", collector.log_text());
    }
}

#[test]
fn a_postgresql_restart_in_the_middle_of_a_load_loses_nothing() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let datagrams = vectors();
    let per_round = sessions_per_round(&datagrams);
    let mut collector = Collector::start_with_storage(
        &cluster.url("tlsrpt"),
        &[
            "--collector_name=mx1",
            "--sockettimeout=1",
            "--max_uncommited_datagrams=20",
        ],
    );
    let send_rounds = |n: usize| {
        for _ in 0..n {
            for datagram in &datagrams {
                collector.send(datagram);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    send_rounds(50);
    support::wait_until(30, "the first commits", || pg_total(&cluster) > 0);
    cluster.stop_server();
    // The database is gone: receiving goes on, counted in memory.
    send_rounds(100);
    std::thread::sleep(Duration::from_millis(1500));
    cluster.start_server();
    send_rounds(50);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pg_total(&cluster) != 200 * per_round {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} sessions written after the restart: {}",
            pg_total(&cluster),
            200 * per_round,
            collector.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(collector.terminate().success(), "{}", collector.log_text());
    assert_eq!(
        pg_total(&cluster),
        200 * per_round,
        "nothing doubled either"
    );
    let log = collector.log_text();
    assert!(
        log.contains("cannot write to postgresql://postgres:***@127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("writable again"), "{log}");
    let encoded = mailtls_test_support::postgres::PASSWORD.replace(' ', "%20");
    assert!(
        !log.contains(mailtls_test_support::postgres::PASSWORD) && !log.contains(&encoded),
        "the password is not logged: {log}"
    );
}

#[test]
fn the_upstream_report_daemon_reads_a_fleet_through_our_fetcher() {
    // Upstream's tlsrpt-reportd, unchanged, fed by our fetcher from
    // PostgreSQL where two collectors counted the datagrams, makes the
    // reports it makes from one SQLite collector that got them all.
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let pg = cluster.url("tlsrpt");
    let datagrams = crate::upstream::all_datagrams();
    let total: i64 = datagrams
        .iter()
        .map(|d| crate::upstream::policy_count(d))
        .sum();
    let mut mx1 =
        Collector::start_with_storage(&pg, &["--collector_name=mx1", "--sockettimeout=1"]);
    let mut mx2 =
        Collector::start_with_storage(&pg, &["--collector_name=mx2", "--sockettimeout=1"]);
    let mut all = Collector::start(&["--sockettimeout=1"], &[]);
    for (i, datagram) in datagrams.iter().enumerate() {
        if i % 2 == 0 { &mx1 } else { &mx2 }.send(datagram);
        all.send(datagram);
    }
    support::wait_until(30, "both collectors' commits", || {
        pg_total(&cluster) == total
    });
    support::wait_until(30, "the SQLite collector's commit", || {
        support::try_total(&all.db) == Some(total)
    });
    for collector in [&mx1, &mx2, &all] {
        collector.signal(libc::SIGUSR2);
    }
    support::wait_until(30, "the day ends", || {
        cluster.psql("tlsrpt", "SELECT count(*) FROM tlsrpt_day_ends") == "2"
            && support::try_total(&all.yesterday()) == Some(total)
    });
    let reports_expected: usize = rusqlite::Connection::open_with_flags(
        all.yesterday(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
    .query_row(
        "SELECT count(*) FROM (SELECT DISTINCT domain, tlsrptrecord FROM finalresults)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize;
    let upstream_reportd = support::upstream("tlsrpt-reportd");
    let from_pg = format!(
        "{} --storage={} --day_end_grace=259200",
        support::fetcher_bin().display(),
        pg.replace('%', "%%")
    );
    let from_sqlite = format!(
        "{} --storage={}",
        support::fetcher_bin().display(),
        all.storage_url()
    );
    let (fleet, _) = crate::upstream::reports_by(&upstream_reportd, &from_pg, reports_expected);
    let (single, _) =
        crate::upstream::reports_by(&upstream_reportd, &from_sqlite, reports_expected);
    assert!(!fleet.is_empty());
    assert_eq!(fleet, single);
    for collector in [&mut mx1, &mut mx2, &mut all] {
        assert!(collector.terminate().success(), "{}", collector.log_text());
    }
}

#[test]
fn a_collector_killed_and_restarted_keeps_what_it_wrote_and_ends_the_days_it_left_open() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let pg = cluster.url("tlsrpt");
    let datagrams = vectors();
    let per_round = sessions_per_round(&datagrams);
    let args = ["--collector_name=mx1", "--sockettimeout=1"];
    let mut collector = Collector::start_with_storage(&pg, &args);
    for datagram in &datagrams {
        collector.send(datagram);
    }
    support::wait_until(30, "the first commit", || pg_total(&cluster) == per_round);
    // Killed outright; and a day two days back that it counted on but
    // never ended (it was down at that midnight).
    collector.signal(libc::SIGKILL);
    collector.wait(10);
    let old_day = (chrono::Utc::now().date_naive() - chrono::Days::new(2)).to_string();
    cluster.psql(
        "tlsrpt",
        &format!(
            "INSERT INTO tlsrpt_results SELECT '{old_day}', domain, record, policy, collector, 1, 0
               FROM tlsrpt_results LIMIT 1"
        ),
    );
    let mut restarted = Collector::start_with_storage(&pg, &args);
    support::wait_until(30, "the old day ended at start", || {
        cluster.psql(
            "tlsrpt",
            &format!("SELECT count(*) FROM tlsrpt_day_ends WHERE collector = 'mx1' AND day = '{old_day}'"),
        ) == "1"
    });
    for datagram in &datagrams {
        restarted.send(datagram);
    }
    // What the killed collector wrote is there once; the new counts add.
    support::wait_until(30, "the restarted collector's commit", || {
        pg_total(&cluster) == 2 * per_round + 1
    });
    assert!(restarted.terminate().success(), "{}", restarted.log_text());
    assert!(
        restarted
            .log_text()
            .contains(&format!("never ended {old_day}")),
        "{}",
        restarted.log_text()
    );
}

/// The report daemons' state in PostgreSQL: one works, the other stands
/// by. The active one is killed with SIGKILL while a report mail is being
/// handed over; the standby takes over within interval_main_loop, repeats
/// the cut-off attempt once its time limit has passed, and every
/// destination gets exactly one mail. tlsrptctl reads the same state, and
/// `mailtls check` shows which daemon works.
#[test]
fn a_standby_report_daemon_takes_over_from_one_killed_mid_delivery_and_sends_each_report_once() {
    let cluster = PgCluster::start();
    // The set-up of docs/fleets.md (step 4), as a superuser.
    let readme = include_str!("../../../../docs/fleets.md");
    for sql in [
        "CREATE ROLE tlsrpt_reportd LOGIN PASSWORD 'reportd secret';",
        "CREATE DATABASE tlsrpt_reportd OWNER tlsrpt_reportd;",
    ] {
        assert!(readme.contains(sql), "{sql} is not in docs/fleets.md");
        cluster.psql("postgres", sql);
    }
    let shared = tempfile::tempdir().unwrap();
    let password_file = shared.path().join("reportd.pgpass");
    std::fs::write(&password_file, "reportd secret\n").unwrap();
    let password_file = password_file.display().to_string();
    let dbname = format!(
        "postgresql://tlsrpt_reportd@127.0.0.1:{}/tlsrpt_reportd",
        cluster.port
    );
    let domains: Vec<String> = (1..=5).map(|i| format!("d{i}.example")).collect();
    let datagrams: Vec<Vec<u8>> = domains.iter().map(|d| mail_datagram(d)).collect();
    let collector = support::reportd::collected_day(&datagrams, domains.len() as i64);
    let fetcher = format!(
        "{} --storage {}",
        support::fetcher_bin().display(),
        collector.storage_url()
    );
    let sendmail = HangingSendmail::new(shared.path());
    let command = sendmail.command();
    let settings = [
        ("dbname", dbname.as_str()),
        ("password_file", password_file.as_str()),
        ("sendmail_script", command.as_str()),
        // The attempt time limit: a takeover repeats the cut-off attempt
        // this long after it started.
        ("sendmail_timeout", "4"),
        ("http_timeout", "4"),
    ];
    let mut first = Reportd::prepare(&reportd_bin(), &fetcher, &settings);
    let mut second = Reportd::prepare(&reportd_bin(), &fetcher, &settings);
    let sent = || -> usize {
        cluster
            .psql(
                "tlsrpt_reportd",
                "SELECT count(*) FROM reportd_destinations WHERE status = 'sent'",
            )
            .parse()
            .unwrap()
    };

    // A daemon started while the server is away waits for it.
    cluster.stop_server();
    first.start();
    first.wait_for(30, "the first daemon to wait for the server", |r| {
        r.log_text().contains("trying again every 1 s")
    });
    cluster.start_server();
    first.wait_for(30, "the first daemon to lead", |r| {
        r.log_text().contains("this is the active report daemon")
    });
    second.start();
    second.wait_for(30, "the second daemon to stand by", |r| {
        r.log_text().contains("standing by: tlsrpt-reportd on ")
    });
    // `mailtls check` shows who works and who stands by.
    let daemons = |reportd: &Reportd| -> String {
        check_messages(&reportd.config)
            .into_iter()
            .find(|m| m.contains("report daemon"))
            .unwrap_or_default()
    };
    let shown = daemons(&second);
    assert!(
        shown.starts_with("report daemons on the PostgreSQL state: tlsrpt-reportd on ")
            && shown.contains(" (active), tlsrpt-reportd on ")
            && shown.ends_with(" (standing by)"),
        "{shown}"
    );
    // A standby stops at once.
    assert!(second.terminate().success(), "{}", second.log_text());
    second.start();
    first.wait_for(60, "the hanging second delivery", |_| {
        sendmail.hanging().is_some()
            && cluster.psql(
                "tlsrpt_reportd",
                "SELECT count(*) FROM reportd_destinations WHERE status = 'sending'",
            ) == "1"
    });
    assert_eq!(sent(), 1);
    assert!(
        !second
            .log_text()
            .contains("this is the active report daemon"),
        "two active daemons: {}",
        second.log_text()
    );
    let hanging = sendmail.hanging().unwrap();
    let killed = std::time::Instant::now();
    first.kill9();
    second.wait_for(10, "the standby to take over", |r| {
        r.log_text().contains("this is the active report daemon")
    });
    let took_over = killed.elapsed();
    // interval_main_loop = 1 s.
    assert!(took_over < Duration::from_secs(4), "{took_over:?}");
    // The cut-off attempt died with the killed daemon.
    support::wait_until(10, "the cut-off attempt to end", || process_ended(hanging));
    second.wait_for(60, "every destination sent", |_| sent() == domains.len());
    let log = second.log_text();
    assert!(
        log.contains("it is made again at") && log.contains("when that attempt has surely ended"),
        "{log}"
    );

    // tlsrptctl reads the PostgreSQL state through the same config.
    let out = std::process::Command::new(support::reportd::tlsrptctl_bin())
        .args(["status", "--json"])
        .arg(format!("--config_file={}", second.config.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status.to_string().contains("\"sent\""), "{status}");
    assert!(second.terminate().success(), "{}", second.log_text());
    assert!(
        daemons(&second).starts_with("no report daemon is active on the PostgreSQL state"),
        "{}",
        daemons(&second)
    );

    let expected: Vec<String> = domains.iter().map(|d| format!("<r@{d}>")).collect();
    assert_eq!(sendmail.recipients(), expected, "one mail per destination");
    // Six attempts for five mails: the one cut off was made again.
    assert_eq!(sendmail.attempts(), 6);
}

/// The messages of `mailtls check tlsrpt` for a report daemon configured
/// by `reportd_config` (and no collector here).
fn check_messages(reportd_config: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new(support::mailtls_bin())
        .args(["check", "tlsrpt", "--json"])
        .arg(format!("--reportd_config={}", reportd_config.display()))
        .arg("--collectd_config=/nonexistent/collectd.cfg")
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    answer["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect()
}

/// SIGUSR2 (the development rollover) after the server restarted while the
/// collector was idle: its connection is dead, and the day must not be
/// ended without the collector's rows (the fetcher would serve it short).
#[test]
fn a_development_rollover_after_a_postgresql_restart_moves_every_row() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let pg = cluster.url("tlsrpt");
    let datagrams = vectors();
    let expected = 3 * sessions_per_round(&datagrams);
    let mut collector =
        Collector::start_with_storage(&pg, &["--collector_name=mx1", "--sockettimeout=1"]);
    for _ in 0..3 {
        for datagram in &datagrams {
            collector.send(datagram);
        }
    }
    support::wait_until(30, "the commit", || pg_total(&cluster) == expected);
    // The collector is idle; its connection dies with the server.
    cluster.stop_server();
    cluster.start_server();
    collector.signal(libc::SIGUSR2);
    support::wait_until(30, "the day end", || {
        cluster.psql("tlsrpt", "SELECT count(*) FROM tlsrpt_day_ends") == "1"
    });
    let yesterday = chrono::Utc::now().date_naive().pred_opt().unwrap();
    let on = |day: chrono::NaiveDate| {
        cluster.psql(
            "tlsrpt",
            &format!("SELECT coalesce(sum(total), 0) FROM tlsrpt_results WHERE day = '{day}'"),
        )
    };
    assert_eq!(
        on(yesterday),
        expected.to_string(),
        "every row moved to the ended day: {}",
        collector.log_text()
    );
    assert_eq!(on(yesterday.succ_opt().unwrap()), "0");
    let bulk = fetch(&pg, &[&yesterday.to_string(), "--bulk"]);
    assert!(
        bulk.lines().count() > 3,
        "the fetcher serves the day: {bulk}"
    );
    assert!(collector.terminate().success(), "{}", collector.log_text());
}
