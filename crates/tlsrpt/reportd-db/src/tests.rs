//! The behaviour every store shares, run on SQLite and on PostgreSQL.

use super::*;
use chrono::TimeZone;
use mailtls_test_support::postgres::PgCluster;

pub fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
}

pub fn day(d: u32) -> Day {
    Day::from_ymd(2026, 11, d)
}

pub fn fetchers() -> Vec<String> {
    vec!["fetch-a".into(), "ssh b tlsrpt-fetcher".into()]
}

pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A day whose fetch jobs both delivered their domain lists.
/// The two fetchers' jobs of day 21, the first one's domain list in.
pub fn with_first_domain_list(db: &mut ReportdDb) -> Vec<FetchJob> {
    db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap();
    let jobs = db.due_fetch_jobs(t(0, 1)).unwrap();
    db.store_domain_list(&jobs[0], &strings(&["a.example", "b.example"]), t(0, 1))
        .unwrap();
    jobs
}

pub fn with_domain_lists(db: &mut ReportdDb) -> Vec<FetchJob> {
    let jobs = with_first_domain_list(db);
    db.store_domain_list(&jobs[1], &strings(&["b.example"]), t(0, 1))
        .unwrap();
    jobs
}

pub fn fetch_jobs_are_created_once_per_day_and_end_ok_retried_or_timed_out(db: &mut ReportdDb) {
    assert!(db.create_fetch_jobs(day(21), &fetchers(), t(0, 0)).unwrap());
    assert!(!db.create_fetch_jobs(day(21), &fetchers(), t(0, 5)).unwrap());
    // Due strictly after their creation time.
    assert!(db.due_fetch_jobs(t(0, 0)).unwrap().is_empty());
    let jobs = db.due_fetch_jobs(t(0, 1)).unwrap();
    assert_eq!(
        jobs,
        [
            FetchJob {
                day: day(21),
                fetcher_index: 1,
                fetcher: "fetch-a".into(),
                retries: 0
            },
            FetchJob {
                day: day(21),
                fetcher_index: 2,
                fetcher: "ssh b tlsrpt-fetcher".into(),
                retries: 0
            },
        ]
    );
    assert_eq!(
        db.store_domain_list(&jobs[0], &strings(&["a.example"]), t(0, 1))
            .unwrap(),
        1
    );
    db.fetch_job_retry_at(&jobs[1], t(0, 10)).unwrap();
    assert!(db.due_fetch_jobs(t(0, 10)).unwrap().is_empty());
    let again = db.due_fetch_jobs(t(0, 11)).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].retries, 1);
    db.fetch_job_timed_out(&again[0]).unwrap();
    assert!(db.due_fetch_jobs(t(23, 0)).unwrap().is_empty());
    let status = db.status().unwrap();
    assert_eq!(
        status.fetchjobs,
        [
            StatusCount {
                day: Some("2026-11-21".into()),
                status: Some("ok".into()),
                count: 1
            },
            StatusCount {
                day: Some("2026-11-21".into()),
                status: Some("timedout".into()),
                count: 1
            },
        ]
    );
}

pub fn details_are_due_once_all_domain_lists_are_in_and_retried_or_given_up(db: &mut ReportdDb) {
    let jobs = with_first_domain_list(db);
    assert!(
        db.due_details(t(0, 2)).unwrap().is_empty(),
        "fetcher 2 is still open"
    );
    db.store_domain_list(&jobs[1], &strings(&["b.example"]), t(0, 1))
        .unwrap();
    let due = db.due_details(t(0, 2)).unwrap();
    let keys: Vec<_> = due
        .iter()
        .map(|d| (d.domain.as_str(), d.fetcher_index))
        .collect();
    assert_eq!(keys, [("a.example", 1), ("b.example", 1), ("b.example", 2)]);

    db.store_details(&due[0], r#"{"v=TLSRPTv1; rua=mailto:r@a.example": {}}"#)
        .unwrap();
    db.store_details(&due[1], r#"{"rec": 1}"#).unwrap();
    db.details_retry_at(&due[2], t(1, 0)).unwrap();
    assert!(db.due_details(t(0, 59)).unwrap().is_empty());
    assert_eq!(
        db.ready_for_report().unwrap(),
        [(day(21), "a.example".to_string())]
    );

    let retried = db.due_details(t(1, 1)).unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].retries, 1);
    db.details_timed_out(&retried[0]).unwrap();
    assert!(db.due_details(t(23, 0)).unwrap().is_empty());
    assert_eq!(
        db.ready_for_report().unwrap(),
        [
            (day(21), "a.example".to_string()),
            (day(21), "b.example".to_string())
        ]
    );
    assert_eq!(
        db.details_of(day(21), "b.example").unwrap(),
        [r#"{"rec": 1}"#]
    );
    assert!(db.details_of(day(20), "b.example").unwrap().is_empty());
    let each = db
        .details_of_each(&[
            (day(21), "b.example".into()),
            (day(20), "b.example".into()),
            (day(21), "a.example".into()),
            (day(21), "b.example".into()),
        ])
        .unwrap();
    assert_eq!(
        each,
        [
            vec![r#"{"rec": 1}"#.to_string()],
            vec![],
            vec![r#"{"v=TLSRPTv1; rua=mailto:r@a.example": {}}"#.to_string()],
            vec![r#"{"rec": 1}"#.to_string()],
        ]
    );
}

pub fn reports_are_numbered_per_day_and_domain_and_no_longer_ready(db: &mut ReportdDb) {
    let jobs = with_domain_lists(db);
    for job in db.due_details(t(0, 2)).unwrap() {
        db.store_details(&job, "{}").unwrap();
    }
    assert_eq!(jobs.len(), 2);
    let first = db
        .insert_report(NewReport {
            day: day(21),
            domain: "b.example",
            tlsrptrecord: "v=TLSRPTv1; rua=mailto:x@b.example",
            report: "a report",
            destinations: &[("mailto:x@b.example".into(), t(3, 0))],
            withheld: &[],
        })
        .unwrap();
    let second = db
        .insert_report(NewReport {
            day: day(21),
            domain: "b.example",
            tlsrptrecord: "v=TLSRPTv1; rua=https://b.example/r",
            report: "a report",
            destinations: &[("https://b.example/r".into(), t(4, 0))],
            withheld: &[],
        })
        .unwrap();
    assert_ne!(first, second);
    let numbers: Vec<i64> = db
        .reports(Some(day(21)), Some("b.example"))
        .unwrap()
        .iter()
        .map(|r| r.uniqid)
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(
        db.ready_for_report().unwrap(),
        [(day(21), "a.example".to_string())]
    );
    let stored = db.report(second).unwrap().unwrap();
    assert_eq!(
        stored.tlsrptrecord.as_deref(),
        Some("v=TLSRPTv1; rua=https://b.example/r")
    );
    assert_eq!((stored.uniqid, stored.report.as_str()), (2, "a report"));
}

/// A report of `domain` on day 21 ("report of DOMAIN"), for one destination
/// first tried at 03:00, with `withheld` ones.
pub fn report_to(
    db: &mut ReportdDb,
    domain: &str,
    destination: &str,
    withheld: &[Withheld],
) -> i64 {
    db.insert_report(NewReport {
        day: day(21),
        domain,
        tlsrptrecord: "rec",
        report: &format!("report of {domain}"),
        destinations: &[(destination.into(), t(3, 0))],
        withheld,
    })
    .unwrap()
}

pub fn one_delivery(db: &mut ReportdDb) -> Delivery {
    let r_id = report_to(db, "a.example", "mailto:r@a.example", &[]);
    assert!(db.due_deliveries(t(3, 0)).unwrap().is_empty());
    let due = db.due_deliveries(t(3, 1)).unwrap();
    let created = due[0].created.expect("its is set");
    assert!((Utc::now() - created).num_seconds().abs() < 60, "{created}");
    assert_eq!(
        due,
        [Delivery {
            destination: "mailto:r@a.example".into(),
            r_id,
            uniqid: 1,
            report: "report of a.example".into(),
            domain: "a.example".into(),
            day: day(21),
            retries: 0,
            created: Some(created),
        }]
    );
    due.into_iter().next().unwrap()
}

pub fn withheld_destinations_are_shown_never_delivered_and_resent_only_by_name(db: &mut ReportdDb) {
    let withheld = Withheld {
        destination: "mailto:v5@evil.example".into(),
        reason: WithheldReason::DestinationsPerRecord,
    };
    let r_id = report_to(
        db,
        "evil.example",
        "mailto:v1@evil.example",
        std::slice::from_ref(&withheld),
    );
    let due = db.due_deliveries(t(23, 0)).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].destination, "mailto:v1@evil.example");
    let stored = db.report(r_id).unwrap().unwrap().destinations;
    assert_eq!(stored[1].destination, "mailto:v5@evil.example");
    assert_eq!(
        stored[1].status.as_deref(),
        Some("withheld:max_destinations_per_record")
    );
    assert_eq!(
        db.resend(r_id, None, t(4, 0)).unwrap(),
        ["mailto:v1@evil.example"]
    );
    assert_eq!(
        db.resend(r_id, Some("mailto:v5@evil.example"), t(4, 0))
            .unwrap(),
        ["mailto:v5@evil.example"]
    );
    assert_eq!(db.due_deliveries(t(23, 0)).unwrap().len(), 2);
}

pub fn a_delivery_is_recorded_before_and_after_each_attempt(db: &mut ReportdDb) {
    let delivery = one_delivery(db);
    assert!(matches!(
        db.delivery_finished(&delivery, DeliveryOutcome::Sent),
        Err(DbError::NotSending { .. })
    ));
    db.delivery_started(&delivery, t(3, 1)).unwrap();
    assert!(
        db.due_deliveries(t(23, 0)).unwrap().is_empty(),
        "not sent twice"
    );
    assert_eq!(
        db.interrupted_deliveries().unwrap(),
        [(delivery.clone(), Some(t(3, 1)))]
    );

    db.delivery_finished(&delivery, DeliveryOutcome::RetryAt(t(4, 0)))
        .unwrap();
    assert!(db.interrupted_deliveries().unwrap().is_empty());
    assert!(db.due_deliveries(t(4, 0)).unwrap().is_empty());
    let again = db.due_deliveries(t(4, 1)).unwrap().remove(0);
    assert_eq!(again.retries, 1);

    for (outcome, status) in [
        (DeliveryOutcome::Sent, "sent"),
        (DeliveryOutcome::TimedOut, "timedout"),
        (DeliveryOutcome::Failed, "failed"),
    ] {
        assert_eq!(
            db.resend(again.r_id, None, t(4, 1)).unwrap(),
            std::slice::from_ref(&again.destination)
        );
        db.delivery_started(&again, t(4, 1)).unwrap();
        db.delivery_finished(&again, outcome).unwrap();
        assert!(db.due_deliveries(t(23, 0)).unwrap().is_empty());
        assert_eq!(
            db.status().unwrap().destinations,
            [StatusCount {
                day: Some("2026-11-21".into()),
                status: Some(status.into()),
                count: 1
            }]
        );
    }
}

pub fn clean_up_keeps_days_until_more_than_keep_days_old(db: &mut ReportdDb) {
    with_domain_lists(db);
    one_delivery(db);
    // Day 21 is 10 days old at midnight of day 31 (2026-12-01): kept;
    // a second later it is more than 10 days old.
    let midnight = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    assert_eq!(db.clean_up(midnight, 10).unwrap(), CleanedUp::default());
    assert_eq!(
        db.clean_up(midnight + chrono::Duration::seconds(1), 10)
            .unwrap(),
        CleanedUp {
            fetchjobs: 2,
            reportdata: 3,
            destinations: 1,
            reports: 1
        }
    );
    let status = db.status().unwrap();
    assert!(
        status.fetchjobs.is_empty()
            && status.reportdata.is_empty()
            && status.destinations.is_empty()
    );
}

pub fn a_batch_of_deliveries_is_recorded_as_each_one_is(db: &mut ReportdDb) {
    let withheld = Withheld {
        destination: "mailto:held@b.example".into(),
        reason: WithheldReason::DestinationsPerRecord,
    };
    report_to(db, "a.example", "directory:/a", &[]);
    report_to(
        db,
        "b.example",
        "directory:/b",
        std::slice::from_ref(&withheld),
    );
    let due = db.due_deliveries(t(3, 1)).unwrap();
    assert_eq!(due.len(), 2, "the withheld destination is not due");
    db.deliveries_started(&due, t(3, 1)).unwrap();
    let interrupted: Vec<_> = db
        .interrupted_deliveries()
        .unwrap()
        .into_iter()
        .map(|(d, started)| (d.destination, started))
        .collect();
    assert_eq!(
        interrupted,
        [
            ("directory:/a".to_string(), Some(t(3, 1))),
            ("directory:/b".to_string(), Some(t(3, 1)))
        ]
    );
    db.deliveries_finished(&[
        (&due[0], DeliveryOutcome::Sent),
        (&due[1], DeliveryOutcome::RetryAt(t(5, 0))),
    ])
    .unwrap();
    assert!(db.interrupted_deliveries().unwrap().is_empty());
    let again = db.due_deliveries(t(5, 1)).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].destination.as_str(), again[0].retries),
        ("directory:/b", 1)
    );
    let states: Vec<Option<String>> = db
        .reports(None, None)
        .unwrap()
        .into_iter()
        .flat_map(|r| r.destinations)
        .map(|d| d.status)
        .collect();
    assert_eq!(
        states,
        [
            Some("sent".to_string()),
            None,
            Some("withheld:max_destinations_per_record".to_string())
        ]
    );
    // An attempt that was not started cannot be finished.
    match db.deliveries_finished(&[(&due[0], DeliveryOutcome::Failed)]) {
        Err(DbError::NotSending { destination, .. }) => assert_eq!(destination, "directory:/a"),
        other => panic!("{other:?}"),
    }
}

pub fn a_batch_of_reports_is_stored_and_numbered_as_one_by_one(db: &mut ReportdDb) {
    let before = report_to(db, "a.example", "mailto:r@a.example", &[]);
    let held = [Withheld {
        destination: "mailto:r@a.example".into(),
        reason: WithheldReason::DestinationsPerRecord,
    }];
    fn report<'a>(
        domain: &'a str,
        text: &'a str,
        destinations: &'a [(String, DateTime<Utc>)],
        withheld: &'a [Withheld],
    ) -> NewReport<'a> {
        NewReport {
            day: day(21),
            domain,
            tlsrptrecord: "rec",
            report: text,
            destinations,
            withheld,
        }
    }
    let to_a = [("mailto:r@a.example".to_string(), t(3, 0))];
    let to_b = [("https://b.example/r".to_string(), t(4, 0))];
    let ids = db
        .insert_reports(&[
            report("a.example", "a2", &to_a, &held),
            report("b.example", "b1", &to_b, &[]),
            report("a.example", "a3", &[], &held),
        ])
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| *id > before));
    // Each as "domain uniqid text: destination=status ...", in order.
    let stored: Vec<String> = ids
        .iter()
        .map(|id| {
            let r = db.report(*id).unwrap().unwrap();
            let destinations: Vec<String> = r
                .destinations
                .iter()
                .map(|d| format!("{}={}", d.destination, d.status.as_deref().unwrap_or("due")))
                .collect();
            format!(
                "{} {} {}: {}",
                r.domain,
                r.uniqid,
                r.report,
                destinations.join(" ")
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            "a.example 2 a2: mailto:r@a.example=due",
            "b.example 1 b1: https://b.example/r=due",
            "a.example 3 a3: mailto:r@a.example=withheld:max_destinations_per_record",
        ],
        "a destination both delivered and withheld is delivered"
    );
    assert!(db.insert_reports(&[]).unwrap().is_empty());
}

pub fn a_failed_transaction_leaves_nothing(db: &mut ReportdDb) {
    let outcome: Result<()> = db.in_transaction(|db| {
        db.create_fetch_jobs(day(21), &fetchers(), t(0, 0))?;
        report_to(db, "a.example", "mailto:r@a.example", &[]);
        Err(DbError::ReadOnly)
    });
    assert!(outcome.is_err());
    assert!(db.due_fetch_jobs(t(0, 1)).unwrap().is_empty());
    assert!(db.reports(None, None).unwrap().is_empty());
    // A step that is atomic by itself nests inside a transaction.
    db.in_transaction(|db| {
        with_domain_lists(db);
        Ok(())
    })
    .unwrap();
    assert_eq!(db.fetched_domains(day(21)).unwrap(), Vec::<String>::new());
    assert_eq!(db.due_details(t(0, 2)).unwrap().len(), 3);
}

/// A fresh PostgreSQL store in a private cluster (kept running while
/// the returned guard lives).
pub fn postgres_store() -> (PgCluster, ReportdDb) {
    let cluster = PgCluster::start();
    cluster.create_database("tlsrpt");
    let db = ReportdDb::open(&DbName::Postgres(Box::new(postgres_url(&cluster)))).unwrap();
    (cluster, db)
}

pub fn postgres_url(cluster: &PgCluster) -> PgUrl {
    PgUrl::parse(&cluster.url("tlsrpt"), None).unwrap()
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let name = crate::DbName::Sqlite(dir.path().join("reportd.sqlite"));
                    super::$name(&mut crate::ReportdDb::open(&name).unwrap());
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    let (_cluster, mut db) = super::postgres_store();
                    super::$name(&mut db);
                }
            )*
        }
    };
}

on_both_stores!(
    fetch_jobs_are_created_once_per_day_and_end_ok_retried_or_timed_out,
    details_are_due_once_all_domain_lists_are_in_and_retried_or_given_up,
    reports_are_numbered_per_day_and_domain_and_no_longer_ready,
    withheld_destinations_are_shown_never_delivered_and_resent_only_by_name,
    a_delivery_is_recorded_before_and_after_each_attempt,
    clean_up_keeps_days_until_more_than_keep_days_old,
    a_failed_transaction_leaves_nothing,
    a_batch_of_deliveries_is_recorded_as_each_one_is,
    a_batch_of_reports_is_stored_and_numbered_as_one_by_one,
);
