//! The collectors' stores' contract: the same counters, written and ended
//! through `CounterStore` as a collector does it, read back through
//! `DayReader`, give the same answers from one collector's SQLite file and
//! from a fleet's PostgreSQL database (a private cluster per test).

mod support;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mailtls_common::day::Day;
use mailtls_test_support::postgres::PgCluster;
use support::aggregate;
use tlsrpt_datagram::Aggregate;
use tlsrpt_store::postgres::PgUrl;
use tlsrpt_store::{FailureRow, PolicyRow, Storage, StorageUrl, VisitError};

/// A new store of one backend, and what keeps it while the test runs (the
/// directory of the file, the private cluster).
struct Fixture {
    storage: Storage,
    _kept: Box<dyn std::any::Any>,
}

fn sqlite_store() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!(
        "sqlite://{}/collectd.sqlite",
        dir.path().display()
    ))
    .unwrap();
    Fixture {
        storage: Storage::Sqlite(url),
        _kept: Box::new(dir),
    }
}

fn postgres_store() -> Fixture {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let url = PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap();
    Fixture {
        storage: Storage::Postgres(Box::new(url)),
        _kept: Box::new(cluster),
    }
}

/// Writes each of `aggs` as a batch of its own and ends `day`, as
/// collector `mx1` does.
fn count_and_end(storage: &Storage, aggs: &[Aggregate], day: Day) {
    let mut collector = storage.open_counter_store("mx1").unwrap();
    for (batch, agg) in (1..).zip(aggs) {
        assert!(collector.write(batch, agg).unwrap());
    }
    collector.end_day(day).unwrap();
}

/// Runs each named behaviour once on a new SQLite collector file and once
/// on a new PostgreSQL database.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::sqlite_store().storage);
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::postgres_store().storage);
                }
            )*
        }
    };
}

on_both_stores!(
    domains_and_rows_come_sorted_as_counted,
    every_domain_is_visited_once_with_the_rows_of_details,
    the_completed_day_is_the_one_the_collector_ended,
    days_are_listed_newest_first,
    a_visitors_error_ends_the_walk_and_is_returned,
    a_day_without_counters_has_no_domains_and_no_rows,
    relabelled_counters_are_the_other_days,
);

fn day(text: &str) -> Day {
    Day::parse(text).unwrap()
}

/// The next morning of `day`, 00:10 UTC.
fn morning_after(day: Day) -> DateTime<Utc> {
    let next = day.succ().date();
    Utc.from_utc_datetime(&next.and_hms_opt(0, 10, 0).unwrap())
}

/// What `agg` holds of `domain`, as rows in key order (byte order).
fn rows_of(agg: &Aggregate, domain: &str) -> (Vec<PolicyRow>, Vec<FailureRow>) {
    let mut policies = Vec::new();
    let mut failures = Vec::new();
    for (key, counts) in agg.iter().filter(|(key, _)| key.domain == domain) {
        policies.push(PolicyRow {
            record: key.record.clone(),
            policy: key.policy.clone(),
            total: counts.total as i64,
            failed: counts.failed as i64,
        });
        for (reason, n) in &counts.failures {
            failures.push(FailureRow {
                record: key.record.clone(),
                policy: key.policy.clone(),
                reason: reason.clone(),
                count: *n as i64,
            });
        }
    }
    policies.sort_by(|a, b| (&a.record, &a.policy).cmp(&(&b.record, &b.policy)));
    failures
        .sort_by(|a, b| (&a.record, &a.policy, &a.reason).cmp(&(&b.record, &b.policy, &b.reason)));
    (policies, failures)
}

/// The domains of `agg`, sorted, once each.
fn domains_of(agg: &Aggregate) -> Vec<String> {
    let mut domains: Vec<String> = agg.iter().map(|(key, _)| key.domain.clone()).collect();
    domains.sort();
    domains.dedup();
    domains
}

fn domains_and_rows_come_sorted_as_counted(storage: &Storage) {
    let d = day("2026-11-30");
    count_and_end(storage, &[aggregate(d, 2), aggregate(d, 3)], d);
    let expected = aggregate(d, 5);
    let mut reader = storage.open_day_reader().unwrap();
    assert_eq!(reader.domains(d).unwrap(), domains_of(&expected));
    for domain in domains_of(&expected) {
        assert_eq!(
            reader.details(d, &domain).unwrap(),
            rows_of(&expected, &domain),
            "{domain}"
        );
    }
}

fn every_domain_is_visited_once_with_the_rows_of_details(storage: &Storage) {
    let d = day("2026-11-30");
    count_and_end(
        storage,
        &[aggregate(d, 1), aggregate(day("2026-11-29"), 4)],
        d,
    );
    let mut reader = storage.open_day_reader().unwrap();
    let mut visited = Vec::new();
    reader
        .for_each_domain(d, |domain, policies, failures| {
            visited.push((domain.to_string(), policies.to_vec(), failures.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap();
    let domains: Vec<String> = visited.iter().map(|(d, _, _)| d.clone()).collect();
    assert_eq!(domains, reader.domains(d).unwrap());
    for (domain, policies, failures) in visited {
        assert_eq!(
            (policies, failures),
            reader.details(d, &domain).unwrap(),
            "{domain}"
        );
    }
}

fn the_completed_day_is_the_one_the_collector_ended(storage: &Storage) {
    let d = day("2026-11-30");
    count_and_end(storage, &[aggregate(d, 1)], d);
    let mut reader = storage.open_day_reader().unwrap();
    assert_eq!(
        reader
            .completed_day(morning_after(d), Duration::from_secs(7200))
            .unwrap(),
        Some(d)
    );
}

fn days_are_listed_newest_first(storage: &Storage) {
    let (older, newer) = (day("2026-11-29"), day("2026-11-30"));
    count_and_end(storage, &[aggregate(older, 1), aggregate(newer, 1)], newer);
    let mut reader = storage.open_day_reader().unwrap();
    assert_eq!(reader.days().unwrap(), [newer, older]);
}

fn a_visitors_error_ends_the_walk_and_is_returned(storage: &Storage) {
    let d = day("2026-11-30");
    count_and_end(storage, &[aggregate(d, 1)], d);
    let mut reader = storage.open_day_reader().unwrap();
    assert!(reader.domains(d).unwrap().len() > 1);
    let mut visits = 0;
    let walked = reader.for_each_domain(d, |domain, _, _| {
        visits += 1;
        Err(domain.to_string())
    });
    let first = reader.domains(d).unwrap().remove(0);
    assert!(matches!(walked, Err(VisitError::Visitor(domain)) if domain == first));
    assert_eq!(visits, 1);
}

fn a_day_without_counters_has_no_domains_and_no_rows(storage: &Storage) {
    let d = day("2026-11-30");
    count_and_end(storage, &[aggregate(d, 1)], d);
    let other = day("2026-11-28");
    let mut reader = storage.open_day_reader().unwrap();
    assert!(reader.domains(other).unwrap().is_empty());
    assert_eq!(
        reader.details(other, "a.example").unwrap(),
        (Vec::new(), Vec::new())
    );
    reader
        .for_each_domain(other, |domain, _, _| Err(domain.to_string()))
        .unwrap();
}

fn relabelled_counters_are_the_other_days(storage: &Storage) {
    let (yesterday, today) = (day("2026-11-29"), day("2026-11-30"));
    let mut collector = storage.open_counter_store("mx1").unwrap();
    assert!(collector.write(1, &aggregate(today, 1)).unwrap());
    collector.relabel_day(today, yesterday).unwrap();
    collector.end_day(yesterday).unwrap();
    let mut reader = storage.open_day_reader().unwrap();
    assert_eq!(reader.days().unwrap(), [yesterday]);
    assert_eq!(
        reader.domains(yesterday).unwrap(),
        domains_of(&aggregate(today, 1))
    );
}
