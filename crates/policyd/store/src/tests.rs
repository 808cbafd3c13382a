//! The same behaviour on SQLite and on PostgreSQL (a private cluster).

use super::*;
use mailtls_test_support::postgres::PgCluster;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn cached(body: &str, fetched: i64) -> CachedPolicy {
    CachedPolicy::new(
        "id1",
        StsPolicy::parse(body.as_bytes()).unwrap(),
        t(fetched),
    )
}

const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 3600\n";

fn entry(fetched: i64) -> Entry {
    Entry {
        policy: Some(cached(ENFORCE, fetched)),
        last_failed_fetch: None,
        last_error: None,
    }
}

fn a_policy_survives_a_round_trip_and_is_replaced(db: &mut PolicyDb) {
    assert_eq!(db.get("example.com", t(0)).unwrap(), None);
    db.put("example.com", &entry(0), t(0)).unwrap();
    assert_eq!(db.get("example.com", t(10)).unwrap(), Some(entry(0)));
    // A failed refresh keeps the policy and says why.
    let failed = Entry {
        last_failed_fetch: Some(t(20)),
        last_error: Some("HTTP status 404".into()),
        ..entry(0)
    };
    db.put("example.com", &failed, t(20)).unwrap();
    assert_eq!(db.get("example.com", t(30)).unwrap(), Some(failed));
    // A failure with no policy ever fetched is kept too (the retry wait).
    let only_failed = Entry {
        policy: None,
        last_failed_fetch: Some(t(40)),
        last_error: Some("timed out".into()),
    };
    db.put("other.example", &only_failed, t(40)).unwrap();
    assert_eq!(db.get("other.example", t(50)).unwrap(), Some(only_failed));
}

fn recent_lists_the_most_recently_updated_first(db: &mut PolicyDb) {
    for (i, domain) in ["a.example", "b.example", "c.example"].iter().enumerate() {
        db.put(domain, &entry(i as i64), t(i as i64)).unwrap();
    }
    let names = |list: Vec<(String, Entry)>| list.into_iter().map(|(d, _)| d).collect::<Vec<_>>();
    assert_eq!(
        names(db.recent(2, t(10)).unwrap()),
        ["c.example", "b.example"]
    );
    db.put("a.example", &entry(5), t(5)).unwrap();
    assert_eq!(
        names(db.recent(10, t(10)).unwrap()),
        ["a.example", "c.example", "b.example"]
    );
}

fn prune_keeps_valid_policies_and_recent_failures(db: &mut PolicyDb) {
    // max_age 3600: valid until t(3600).
    db.put("valid.example", &entry(0), t(0)).unwrap();
    db.put("expired.example", &entry(-4000), t(-4000)).unwrap();
    let failure = |at| Entry {
        policy: None,
        last_failed_fetch: Some(t(at)),
        last_error: Some("refused".into()),
    };
    db.put("failed-now.example", &failure(-100), t(-100))
        .unwrap();
    db.put("failed-long-ago.example", &failure(-1000), t(-1000))
        .unwrap();
    let expired_but_failed_now = Entry {
        last_failed_fetch: Some(t(-10)),
        ..entry(-4000)
    };
    db.put("retrying.example", &expired_but_failed_now, t(-10))
        .unwrap();
    assert_eq!(db.prune(t(0)).unwrap(), 2);
    let mut left: Vec<String> = db
        .recent(10, t(0))
        .unwrap()
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["failed-now.example", "retrying.example", "valid.example"]
    );
}

fn rows_of_another_writer_are_checked(db: &mut PolicyDb, raw: &mut dyn Backend) {
    let row = |domain: &str, policy: Option<&str>, fetched_at: Option<i64>| Row {
        domain: domain.into(),
        policy_id: policy.map(|_| "x".into()),
        policy: policy.map(str::to_string),
        fetched_at,
        expires_at: None,
        last_failed_fetch: None,
        last_error: None,
        updated_at: t(0).timestamp(),
    };
    // Not a policy.
    raw.put(&row(
        "bad.example",
        Some("mode: enforce\n"),
        Some(t(0).timestamp()),
    ))
    .unwrap();
    // Fetched a day from now.
    raw.put(&row(
        "future.example",
        Some(ENFORCE),
        Some(t(86_400).timestamp()),
    ))
    .unwrap();
    // A policy without its fetch time.
    raw.put(&row("half.example", Some(ENFORCE), None)).unwrap();
    // Nothing at all.
    raw.put(&row("empty.example", None, None)).unwrap();
    for domain in [
        "bad.example",
        "future.example",
        "half.example",
        "empty.example",
    ] {
        assert_eq!(db.get(domain, t(0)).unwrap(), None, "{domain}");
    }
    assert_eq!(db.recent(10, t(0)).unwrap(), Vec::new());
    // A good one written the same way is read.
    raw.put(&row("good.example", Some(ENFORCE), Some(t(0).timestamp())))
        .unwrap();
    let good = db.get("good.example", t(0)).unwrap().unwrap();
    assert_eq!(good.policy.unwrap().policy.mx().len(), 2);
}

#[test]
fn a_reader_needs_the_writers_schema_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policyd.sqlite");
    let missing = PolicyDb::open(&Database::Sqlite(path.clone()), Access::Reader);
    assert!(missing.is_err());
    PolicyDb::open(&Database::Sqlite(path.clone()), Access::Writer)
        .unwrap()
        .put("example.com", &entry(0), t(0))
        .unwrap();
    let mut reader = PolicyDb::open(&Database::Sqlite(path.clone()), Access::Reader).unwrap();
    assert_eq!(reader.get("example.com", t(0)).unwrap(), Some(entry(0)));
    assert!(reader.put("example.com", &entry(1), t(1)).is_err());

    let other = dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE policyd_policies (domain TEXT)")
        .unwrap();
    assert!(matches!(
        PolicyDb::open(&Database::Sqlite(other), Access::Writer),
        Err(StoreError::NotOurs(_))
    ));

    let cluster = PgCluster::start();
    cluster.create_database("policyd");
    let url = PgUrl::parse(&cluster.url("policyd"), None).unwrap();
    let database = Database::Postgres(Box::new(url));
    let error = PolicyDb::open(&database, Access::Reader).err().unwrap();
    assert!(error.to_string().contains("mailtls policyd"), "{error}");
    PolicyDb::open(&database, Access::Writer).unwrap();
    PolicyDb::open(&database, Access::Reader).unwrap();
}

#[test]
fn database_option() {
    assert!(matches!(
        Database::parse("/var/lib/x.sqlite", None).unwrap(),
        Database::Sqlite(_)
    ));
    assert!(matches!(
        Database::parse("postgresql://u@db.example/policyd", None).unwrap(),
        Database::Postgres(_)
    ));
    assert!(matches!(
        Database::parse("/x.sqlite", Some(Path::new("/pw"))),
        Err(StoreError::PasswordForSqlite(_))
    ));
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let database = Database::Sqlite(dir.path().join("policyd.sqlite"));
                    super::$name(&mut PolicyDb::open(&database, Access::Writer).unwrap());
                }
            )*
            #[test]
            fn rows_of_another_writer_are_checked() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("policyd.sqlite");
                let mut db = PolicyDb::open(&Database::Sqlite(path.clone()), Access::Writer).unwrap();
                let mut raw = sqlite::SqliteBackend::open(&path, Access::Writer).unwrap();
                super::rows_of_another_writer_are_checked(&mut db, &mut raw);
            }
        }
        mod on_postgres {
            use super::*;
            fn database(cluster: &PgCluster) -> Database {
                cluster.create_database("policyd");
                Database::Postgres(Box::new(PgUrl::parse(&cluster.url("policyd"), None).unwrap()))
            }
            $(
                #[test]
                fn $name() {
                    let cluster = PgCluster::start();
                    let database = database(&cluster);
                    super::$name(&mut PolicyDb::open(&database, Access::Writer).unwrap());
                }
            )*
            #[test]
            fn rows_of_another_writer_are_checked() {
                let cluster = PgCluster::start();
                let Database::Postgres(url) = database(&cluster) else { unreachable!() };
                let mut db = PolicyDb::open(&Database::Postgres(url.clone()), Access::Writer).unwrap();
                let mut raw = postgres::PgBackend::open(&url, Access::Writer).unwrap();
                super::rows_of_another_writer_are_checked(&mut db, &mut raw);
            }
        }
    };
}

on_both_backends!(
    a_policy_survives_a_round_trip_and_is_replaced,
    recent_lists_the_most_recently_updated_first,
    prune_keeps_valid_policies_and_recent_failures,
);
