//! The outbound-TLS pages against a day the real collector counted: the
//! totals on the page and every domain in the JSON equal what the
//! collector's database holds; JSON without a session is refused; a real
//! browser signs in, opens the day and a domain and takes screenshots
//! (target/test-artifacts/tls/, light and dark).

use crate::posttls_browser::{artifacts, assert_png, run_browser_script};
use crate::support::{self, Collector};

use std::collections::BTreeMap;

use serde_json::Value;
use std::process::Command;

use mailtls_web::{AppState, WebConfig};
use posttls_policy::DomainSet;
use posttls_store::Store;
use posttls_token::SecretKey;

const ADMIN: &str = "postmaster";
const PASSWORD: &str = "a password for the dashboard test";
const DATAGRAMS: u64 = 3000;

/// (successful, failed) per domain and the day, from the database itself.
fn database_counts(db: &std::path::Path) -> (String, BTreeMap<String, (u64, u64)>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let day: String = conn
        .query_row("SELECT DISTINCT day FROM finalresults", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT domain, sum(cntrtotal) - sum(cntrfailure), sum(cntrfailure) FROM finalresults GROUP BY domain")
        .unwrap();
    let counts = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (day, counts)
}

#[test]
fn the_pages_show_what_the_collector_counted_to_a_signed_in_admin() {
    let mut collector = Collector::start(&["--sockettimeout=1"], &[]);
    let sent = Command::new(support::mailtls_bin())
        .args(["loadgen", "--socket"])
        .arg(&collector.socket)
        .args([
            "--count",
            &DATAGRAMS.to_string(),
            "--domains",
            "400",
            "--rate",
            "5000",
        ])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    support::wait_until(30, "the collector's commit", || {
        support::try_total(&collector.db) == Some(DATAGRAMS as i64)
    });
    assert!(collector.terminate().success(), "{}", collector.log_text());
    let (day, expected) = database_counts(&collector.db);
    let (worst, (_, worst_failed)) = expected
        .iter()
        .max_by(|a, b| a.1 .1.cmp(&b.1 .1).then(b.0.cmp(a.0)))
        .map(|(d, c)| (d.clone(), *c))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posttls.sqlite");
    {
        let store = Store::open(&db).unwrap();
        let cheap = posttls_auth::Params::new(8, 1, 1, None).unwrap();
        store
            .set_admin(
                ADMIN,
                &posttls_auth::hash_password_with(PASSWORD, &cheap),
                1,
            )
            .unwrap();
    }
    // The policy server's cache: the worst domain's enforce policy, fetched
    // an hour ago, whose host failed since; a domain whose first fetch failed.
    let policy_cache = policyd_store::Database::Sqlite(dir.path().join("policyd.sqlite"));
    {
        use chrono::{Duration, Utc};
        use policyd_policy::{CachedPolicy, StsPolicy};
        let mut cache =
            policyd_store::PolicyDb::open(&policy_cache, policyd_store::Access::Writer).unwrap();
        let now = Utc::now();
        let body = format!(
            "version: STSv1\nmode: enforce\nmx: mx.{worst}\nmx: *.backup.example\nmax_age: 86400\n"
        );
        let enforced = policyd_store::Entry {
            policy: Some(CachedPolicy::new(
                "20261207",
                StsPolicy::parse(body.as_bytes()).unwrap(),
                now - Duration::hours(1),
            )),
            last_failed_fetch: Some(now - Duration::minutes(5)),
            last_error: Some("HTTP status 503".into()),
        };
        let failed = policyd_store::Entry {
            policy: None,
            last_failed_fetch: Some(now - Duration::minutes(2)),
            last_error: Some("no policy host answers".into()),
        };
        cache
            .put("failing.example", &failed, now - Duration::minutes(2))
            .unwrap();
        cache.put(&worst, &enforced, now).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(
        WebConfig {
            listen: "127.0.0.1:0".into(),
            instance: Some("mx1".into()),
            base_url: base_url.clone(),
            organization: "Example Org".into(),
            secure_cookies: false,
            mandatory_domains: DomainSet::new(),
            trusted_proxies: Vec::new(),
            tlsrpt: tlsrpt_stats::Sources {
                collector: Some(tlsrpt_stats::CollectorSource::Sqlite(collector.db.clone())),
                reportd: None,
            },
            policyd: Some(policy_cache.clone()),
            limits: Default::default(),
            more_metrics: Default::default(),
        },
        Store::open(&db).unwrap(),
        SecretKey::load_or_create(&dir.path().join("key")).unwrap(),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(mailtls_web::serve_on(listener, state, async {
        let _ = stopped.await;
    }));
    let shots = artifacts("tls");
    let result = run_browser_script(
        "tls_dashboard.js",
        &base_url,
        &shots,
        &[
            ("DAY", &day),
            ("DOMAIN", &worst),
            ("ADMIN_NAME", ADMIN),
            ("ADMIN_PASSWORD", PASSWORD),
        ],
    );
    let _ = stop.send(());
    runtime.block_on(server).unwrap().unwrap();

    assert_eq!(result["json_without_session"], 401, "{result:#}");
    assert!(
        result["after_login"]
            .as_str()
            .unwrap()
            .contains("Outbound TLS"),
        "{result:#}"
    );
    assert!(
        result["default_url"]
            .as_str()
            .unwrap()
            .ends_with("/admin/tls"),
        "{result:#}"
    );
    // The totals on the page.
    let successful: u64 = expected.values().map(|c| c.0).sum();
    let failed: u64 = expected.values().map(|c| c.1).sum();
    assert_eq!(
        result["totals"]["sessions"],
        (successful + failed).to_string()
    );
    assert_eq!(result["totals"]["successful"], successful.to_string());
    assert!(
        result["totals"]["failed"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{failed} (")),
        "{result:#}"
    );
    assert_eq!(result["totals"]["domains"], expected.len().to_string());
    // The first page: 100 rows, the worst domain first, each row's counts
    // the database's.
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        mailtls_web::tls::DOMAINS_PER_PAGE.min(expected.len())
    );
    assert_eq!(rows[0][0], worst.as_str());
    assert_eq!(rows[0][2], worst_failed.to_string());
    for row in rows {
        let (ok, bad) = expected[row[0].as_str().unwrap()];
        assert_eq!(
            (row[1].as_str().unwrap(), row[2].as_str().unwrap()),
            (ok.to_string().as_str(), bad.to_string().as_str())
        );
    }
    // Every domain in the JSON.
    assert_eq!(result["json_status"], 200);
    let json = &result["json"];
    assert_eq!(json["day"], day.as_str());
    let listed: BTreeMap<String, (u64, u64)> = json["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["domain"].as_str().unwrap().to_string(),
                (
                    d["successful"].as_u64().unwrap(),
                    d["failed"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    // The domain page: its chart and failures.
    let text = result["domain_text"].as_str().unwrap();
    assert!(text.contains(&format!("Outbound TLS to {worst}")), "{text}");
    assert!(text.contains("Receiving MX"), "{text}");
    assert_eq!(result["chart_bars"], 1);
    assert_ne!(
        result["chart_fill"], result["chart_fill_dark"],
        "the chart has dark-mode colours"
    );
    assert!(
        result["console"].as_array().unwrap().is_empty(),
        "CSP or script errors: {result:#}"
    );
    // The policies page: newest first, each with mode, patterns and the
    // last failed fetch; the domain page shows its own.
    let policies = result["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2, "{result:#}");
    assert_eq!(policies[0][0], worst.as_str());
    assert_eq!(policies[0][1], "enforce");
    assert_eq!(
        policies[0][2],
        format!("mx.{worst}, *.backup.example").as_str()
    );
    assert_eq!(policies[0][3], "1 h 0 min ago");
    assert!(
        policies[0][5]
            .as_str()
            .unwrap()
            .ends_with(": HTTP status 503"),
        "{result:#}"
    );
    assert_eq!(policies[1][0], "failing.example");
    assert_eq!(policies[1][1], "none fetched");
    assert_eq!(result["sts"]["mode"], "enforce");
    assert_eq!(
        result["sts"]["mx"],
        format!("mx.{worst}, *.backup.example").as_str()
    );
    assert!(result["sts"]["last_error"]
        .as_str()
        .unwrap()
        .ends_with(": HTTP status 503"));
    assert_eq!(result["policies_json"]["configured"], true);
    assert_eq!(result["policies_json"]["policies"][0]["mode"], "enforce");
    assert_eq!(result["policies_json"]["policies"][1]["mode"], Value::Null);
    for shot in [
        "tls-day.png",
        "tls-domain.png",
        "tls-domain-dark.png",
        "policies.png",
    ] {
        assert_png(&shots.join(shot));
    }
}
