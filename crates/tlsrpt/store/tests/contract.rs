//! The collectors' stores' contract: the same counters, counted and ended
//! as a collector does it, read back through [`DayReader`] give the same
//! answers from one collector's SQLite file and from a fleet's PostgreSQL
//! database (a private cluster per test).

mod support;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mailtls_common::day::Day;
use mailtls_test_support::postgres::PgCluster;
use support::aggregate;
use tlsrpt_datagram::Aggregate;
use tlsrpt_store::postgres::{PgCollectorStore, PgUrl};
use tlsrpt_store::{CollectorDb, FailureRow, PolicyRow, Storage, StorageUrl, VisitError};

/// A collector counting into one store, as tlsrpt-collectd does.
trait Collector {
    /// Writes counters (one committed batch).
    fn count(&mut self, agg: &Aggregate);
    /// Ends `day`, as the collector does at UTC midnight.
    fn end_day(&mut self, day: Day);
    /// The store as the fetcher opens it.
    fn storage(&self) -> Storage;
}

struct SqliteCollector {
    _dir: tempfile::TempDir,
    url: StorageUrl,
    db: Option<CollectorDb>,
}

impl Collector for SqliteCollector {
    fn count(&mut self, agg: &Aggregate) {
        self.db.as_mut().unwrap().write(agg).unwrap();
    }

    fn end_day(&mut self, day: Day) {
        let (fresh, _) = self.db.take().unwrap().rollover(day).unwrap();
        self.db = Some(fresh);
    }

    fn storage(&self) -> Storage {
        Storage::Sqlite(self.url.clone())
    }
}

struct PgCollector {
    _cluster: PgCluster,
    url: PgUrl,
    store: PgCollectorStore,
    batches: i64,
}

impl Collector for PgCollector {
    fn count(&mut self, agg: &Aggregate) {
        self.batches += 1;
        assert!(self.store.write(self.batches, agg).unwrap());
    }

    fn end_day(&mut self, day: Day) {
        self.store.end_day(day).unwrap();
    }

    fn storage(&self) -> Storage {
        Storage::Postgres(Box::new(self.url.clone()))
    }
}

fn sqlite_collector() -> SqliteCollector {
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!(
        "sqlite://{}/collectd.sqlite",
        dir.path().display()
    ))
    .unwrap();
    let (db, _) = CollectorDb::open(&url.path).unwrap();
    SqliteCollector {
        _dir: dir,
        url,
        db: Some(db),
    }
}

fn postgres_collector() -> PgCollector {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let url = PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap();
    let store = PgCollectorStore::connect(&url, "mx1").unwrap();
    PgCollector {
        _cluster: cluster,
        url,
        store,
        batches: 0,
    }
}

/// Runs each named behaviour once on a new SQLite collector file and once
/// on a new PostgreSQL database.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut super::sqlite_collector());
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut super::postgres_collector());
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

fn domains_and_rows_come_sorted_as_counted(collector: &mut dyn Collector) {
    let d = day("2026-11-30");
    collector.count(&aggregate(d, 2));
    collector.count(&aggregate(d, 3));
    collector.end_day(d);
    let expected = aggregate(d, 5);
    let mut reader = collector.storage().open_day_reader().unwrap();
    assert_eq!(reader.domains(d).unwrap(), domains_of(&expected));
    for domain in domains_of(&expected) {
        assert_eq!(
            reader.details(d, &domain).unwrap(),
            rows_of(&expected, &domain),
            "{domain}"
        );
    }
}

fn every_domain_is_visited_once_with_the_rows_of_details(collector: &mut dyn Collector) {
    let d = day("2026-11-30");
    collector.count(&aggregate(d, 1));
    collector.count(&aggregate(day("2026-11-29"), 4));
    collector.end_day(d);
    let mut reader = collector.storage().open_day_reader().unwrap();
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

fn the_completed_day_is_the_one_the_collector_ended(collector: &mut dyn Collector) {
    let d = day("2026-11-30");
    collector.count(&aggregate(d, 1));
    collector.end_day(d);
    let mut reader = collector.storage().open_day_reader().unwrap();
    assert_eq!(
        reader
            .completed_day(morning_after(d), Duration::from_secs(7200))
            .unwrap(),
        Some(d)
    );
}

fn days_are_listed_newest_first(collector: &mut dyn Collector) {
    let (older, newer) = (day("2026-11-29"), day("2026-11-30"));
    collector.count(&aggregate(older, 1));
    collector.count(&aggregate(newer, 1));
    collector.end_day(newer);
    let mut reader = collector.storage().open_day_reader().unwrap();
    assert_eq!(reader.days().unwrap(), [newer, older]);
}

fn a_visitors_error_ends_the_walk_and_is_returned(collector: &mut dyn Collector) {
    let d = day("2026-11-30");
    collector.count(&aggregate(d, 1));
    collector.end_day(d);
    let mut reader = collector.storage().open_day_reader().unwrap();
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

fn a_day_without_counters_has_no_domains_and_no_rows(collector: &mut dyn Collector) {
    let d = day("2026-11-30");
    collector.count(&aggregate(d, 1));
    collector.end_day(d);
    let other = day("2026-11-28");
    let mut reader = collector.storage().open_day_reader().unwrap();
    assert!(reader.domains(other).unwrap().is_empty());
    assert_eq!(
        reader.details(other, "a.example").unwrap(),
        (Vec::new(), Vec::new())
    );
    reader
        .for_each_domain(other, |domain, _, _| Err(domain.to_string()))
        .unwrap();
}
