//! The PostgreSQL store against a real private cluster: two collectors
//! write into one database, the fetcher's view is their sum; a retried
//! batch counts once; a day is complete when every collector that wrote to
//! it ended it, or after the grace time; the schema is made once and a
//! newer one refused.

mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use mailtls_common::day::Day;
use mailtls_test_support::postgres::PgCluster;
use support::aggregate;
use tlsrpt_datagram::Aggregate;
use tlsrpt_store::postgres::{PgCollectorStore, PgDayReader, PgError, PgUrl};

/// The same counters in one SQLite collector database, as the reference.
fn sqlite_rows(
    day: Day,
    agg: &Aggregate,
) -> Vec<(
    String,
    Vec<tlsrpt_store::PolicyRow>,
    Vec<tlsrpt_store::FailureRow>,
)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collectd.sqlite");
    let (mut db, _) = tlsrpt_store::CollectorDb::open(&path).unwrap();
    db.write(agg).unwrap();
    drop(db);
    let reader = tlsrpt_store::FetcherDb::open(&path).unwrap();
    reader
        .domains(day)
        .unwrap()
        .into_iter()
        .map(|domain| {
            let (p, f) = reader.details(day, &domain).unwrap();
            (domain, p, f)
        })
        .collect()
}

#[test]
fn two_collectors_sum_into_the_fetchers_view_and_a_day_completes_when_both_ended_it() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let url = PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap();
    assert!(
        !url.shown().contains("mailtls test password"),
        "{}",
        url.shown()
    );
    let day = Day::parse("2026-11-30").unwrap();
    let mut mx1 = PgCollectorStore::connect(&url, "mx1").unwrap();
    let mut mx2 = PgCollectorStore::connect(&url, "mx2").unwrap();
    assert!(mx1.write(1, &aggregate(day, 2)).unwrap());
    assert!(mx2.write(1, &aggregate(day, 3)).unwrap());
    // mx1's second batch: its commit reached the server, the answer was
    // lost; the retry of the same batch adds nothing.
    assert!(mx1.write(2, &aggregate(day, 5)).unwrap());
    assert!(!mx1.write(2, &aggregate(day, 5)).unwrap());

    // 2 + 3 + 5 = 10 times every vector: what one SQLite collector that
    // got all of it would hold, row for row and in the same order.
    let mut reader = PgDayReader::connect(&url).unwrap();
    let expected = sqlite_rows(day, &aggregate(day, 10));
    let domains = reader.domains(day).unwrap();
    assert_eq!(
        domains,
        expected
            .iter()
            .map(|(d, _, _)| d.clone())
            .collect::<Vec<_>>()
    );
    for (domain, policies, failures) in &expected {
        assert_eq!(
            &reader.details(day, domain).unwrap(),
            &(policies.clone(), failures.clone()),
            "{domain}"
        );
    }
    assert_eq!(reader.collectors(day).unwrap(), ["mx1", "mx2"]);

    // Complete when both ended it; before that, only after the grace time.
    let next_morning = Utc.with_ymd_and_hms(2026, 12, 1, 0, 10, 0).unwrap();
    let grace = Duration::from_secs(3600);
    assert_eq!(reader.completed_day(next_morning, grace).unwrap(), None);
    mx1.end_day(day).unwrap();
    mx1.end_day(day).unwrap();
    assert_eq!(reader.completed_day(next_morning, grace).unwrap(), None);
    let late = Utc.with_ymd_and_hms(2026, 12, 1, 1, 10, 0).unwrap();
    let given_up = reader.completed_day(late, grace).unwrap().unwrap();
    assert_eq!(
        (given_up.day, given_up.given_up),
        (day, vec!["mx2".to_string()])
    );
    mx2.end_day(day).unwrap();
    let complete = reader.completed_day(next_morning, grace).unwrap().unwrap();
    assert_eq!((complete.day, complete.given_up.len()), (day, 0));
    // Not before the day is over.
    let same_day = Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap();
    assert_eq!(reader.completed_day(same_day, grace).unwrap(), None);
}

#[test]
fn the_schema_is_made_once_and_a_newer_one_is_refused() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let url = PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap();
    // Several programs starting at once against an empty database.
    let starts: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                PgCollectorStore::connect(&url, &format!("mx{i}")).map(|_| ())
            })
        })
        .collect();
    for start in starts {
        start.join().unwrap().unwrap();
    }
    assert_eq!(
        cluster.psql("tlsrpt", "SELECT component, version FROM mailtls_schema"),
        "tlsrpt|1"
    );
    cluster.psql("tlsrpt", "UPDATE mailtls_schema SET version = 99");
    match PgDayReader::connect(&url) {
        Err(PgError::NewerSchema {
            found: 99,
            known: 1,
            ..
        }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a newer schema was used"),
    }
    for bad in ["", "a\nb", &"x".repeat(256)] {
        assert!(matches!(
            PgCollectorStore::connect(&url, bad),
            Err(PgError::Refused { .. })
        ));
    }
}

#[test]
fn collectors_and_the_fetcher_use_roles_of_their_own_as_the_readme_sets_them_up() {
    let cluster = PgCluster::start();
    // The set-up of docs/fleets.md, as a superuser.
    for sql in [
        "CREATE ROLE tlsrpt_collector LOGIN PASSWORD 'collector secret'",
        "CREATE ROLE tlsrpt_fetcher LOGIN PASSWORD 'fetcher secret'",
        "CREATE DATABASE tlsrpt OWNER tlsrpt_collector",
    ] {
        cluster.psql("postgres", sql);
    }
    cluster.psql(
        "tlsrpt",
        "ALTER DEFAULT PRIVILEGES FOR ROLE tlsrpt_collector IN SCHEMA public GRANT SELECT ON TABLES TO tlsrpt_fetcher",
    );
    let url = |role: &str, password: &str| {
        PgUrl::parse(
            &format!(
                "postgresql://{role}:{}@127.0.0.1:{}/tlsrpt",
                password.replace(' ', "%20"),
                cluster.port
            ),
            None,
        )
        .unwrap()
    };
    let fetcher = url("tlsrpt_fetcher", "fetcher secret");
    // Before any collector made the tables, the fetcher says what to do.
    match PgDayReader::connect(&fetcher) {
        Err(PgError::Refused { what, .. }) => assert!(what.contains("start a collector"), "{what}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("read tables that do not exist"),
    }
    let day = Day::parse("2026-11-30").unwrap();
    let mut mx1 =
        PgCollectorStore::connect(&url("tlsrpt_collector", "collector secret"), "mx1").unwrap();
    mx1.write(1, &aggregate(day, 1)).unwrap();
    let mut reader = PgDayReader::connect(&fetcher).unwrap();
    assert!(!reader.domains(day).unwrap().is_empty());
    // The fetcher's role cannot change what it reads.
    assert!(PgCollectorStore::connect(&fetcher, "intruder")
        .and_then(|mut store| store.write(9, &aggregate(day, 1)))
        .is_err());
}

#[test]
fn the_password_comes_from_password_file_and_bad_urls_are_refused() {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg.password");
    std::fs::write(
        &file,
        format!("{}\n", mailtls_test_support::postgres::PASSWORD),
    )
    .unwrap();
    let bare = format!("postgresql://postgres@127.0.0.1:{}/tlsrpt", cluster.port);
    PgCollectorStore::connect(&PgUrl::parse(&bare, Some(&file)).unwrap(), "mx1").unwrap();
    PgDayReader::connect(&PgUrl::parse(&bare, Some(&file)).unwrap()).unwrap();
    // Without it the server refuses.
    assert!(PgDayReader::connect(&PgUrl::parse(&bare, None).unwrap()).is_err());
    // Over the Unix socket (host=DIR), as a local deployment would.
    let socket = format!(
        "postgresql://postgres@/tlsrpt?host={}&port={}",
        cluster.socket_dir().display(),
        cluster.port
    );
    PgDayReader::connect(&PgUrl::parse(&socket, None).unwrap()).unwrap();
    for bad in [
        "sqlite:///x",
        "postgresql://127.0.0.1",
        "postgresql://h/db?sslmode=bogus",
    ] {
        assert!(
            matches!(PgUrl::parse(bad, None), Err(PgError::BadUrl { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        PgUrl::parse(&bare, Some(&dir.path().join("missing"))),
        Err(PgError::PasswordFile { .. })
    ));
}

#[test]
fn tls_is_used_when_offered_and_the_server_is_always_verified() {
    let (cluster, ca) = PgCluster::start_tls();
    cluster.create_database("tlsrpt");
    let base = format!(
        "postgresql://postgres:{}@127.0.0.1:{}/tlsrpt",
        mailtls_test_support::postgres::PASSWORD.replace(' ', "%20"),
        cluster.port
    );
    let tls_sessions = || {
        cluster.psql(
            "tlsrpt",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.application_name = 'mailtls' AND s.ssl",
        )
    };
    // Required, and verified against the CA the URL names.
    let url = PgUrl::parse(
        &format!("{base}?sslmode=require&sslrootcert={}", ca.display()),
        None,
    )
    .unwrap();
    let store = PgCollectorStore::connect(&url, "mx1").unwrap();
    assert_eq!(tls_sessions(), "1");
    drop(store);
    // Offered by the server and used by default (prefer), verified too.
    let url = PgUrl::parse(&format!("{base}?sslrootcert={}", ca.display()), None).unwrap();
    let _reader = PgDayReader::connect(&url).unwrap();
    // A server whose certificate no trusted CA signed is refused, required
    // or preferred (libpq's require would take it).
    for mode in ["require", "prefer"] {
        let url = PgUrl::parse(&format!("{base}?sslmode={mode}"), None).unwrap();
        match PgDayReader::connect(&url) {
            Err(e) => assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}"),
            Ok(_) => panic!("sslmode={mode}: an unverified server was accepted"),
        }
    }
    // Without TLS when told so.
    let url = PgUrl::parse(&format!("{base}?sslmode=disable"), None).unwrap();
    PgDayReader::connect(&url).unwrap();
    // A CA file that is not there is said so.
    let url = PgUrl::parse(
        &format!("{base}?sslmode=require&sslrootcert=/nonexistent/ca.pem"),
        None,
    )
    .unwrap();
    match PgDayReader::connect(&url) {
        Err(PgError::Refused { what, .. }) => {
            assert!(what.contains("/nonexistent/ca.pem"), "{what}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected without its CA file"),
    }
}
