//! The sender's confirmation flow in a real browser: Debian's headless
//! Chromium, driven by playwright-core (tests/browser/confirm_flow.js),
//! against the PostTLS web pages served on 127.0.0.1 with a store that
//! holds one TLS-deferred message. The link is opened (screenshot), the
//! button pressed (screenshot); the store then holds exactly one queued
//! release; an admin signs in and sees it on the dashboard (screenshot).
//! Screenshots are kept in target/test-artifacts/posttls/.
//!
//! scripts/test installs Chromium (apt) and playwright-core (npm, into
//! .browser/); a missing one fails this test, it is never skipped.

use crate::support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailtls_test_support::posttls::{deferred_message, ARRIVAL, INSTANCE, SENDER};
use mailtls_web::{AppState, WebConfig};
use posttls_classify::TlsFailureKind;
use posttls_policy::DomainSet;
use posttls_store::{MessageState, NotificationKind, NotificationOutcome, SeenRecipient, Store};
use posttls_token::{Action, ActionToken, SecretKey};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN: &str = "postmaster";
const PASSWORD: &str = "a password for the browser test";

/// How long the browser run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn playwright_core() -> PathBuf {
    let dir = support::repo().join(".browser/node_modules/playwright-core");
    assert!(
        dir.join("package.json").exists(),
        "playwright-core is missing in {}: run scripts/test (it installs it with npm)",
        dir.display()
    );
    dir
}

pub(crate) fn artifacts(part: &str) -> PathBuf {
    let dir = support::repo().join("target/test-artifacts").join(part);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A store with one message deferred for missing STARTTLS: one recipient
/// that may be released, one in a mandatory-TLS domain.
fn prepare_store(path: &Path) -> i64 {
    let store = Store::open(path).unwrap();
    let (id, _) = store
        .saw_message(&deferred_message("Quarterly figures — Grüße"), ARRIVAL + 60)
        .unwrap();
    let reason = "TLS is required, but was not offered by host mx.notls.example[192.0.2.25]";
    store
        .set_pending_recipients(
            id,
            &[
                SeenRecipient {
                    address: "bob@notls.example".into(),
                    delay_reason: Some(reason.into()),
                    tls_kind: Some(TlsFailureKind::NotOffered),
                    mandatory: false,
                },
                SeenRecipient {
                    address: "carol@bank.example".into(),
                    delay_reason: Some(reason.into()),
                    tls_kind: Some(TlsFailureKind::NotOffered),
                    mandatory: true,
                },
            ],
        )
        .unwrap();
    store
        .record_notification(
            id,
            NotificationKind::First,
            SENDER,
            &NotificationOutcome::Sent,
            ARRIVAL + 60,
        )
        .unwrap();
    let cheap = posttls_auth::Params::new(8, 1, 1, None).unwrap();
    store
        .set_admin(
            ADMIN,
            &posttls_auth::hash_password_with(PASSWORD, &cheap),
            1,
        )
        .unwrap();
    id
}

/// Runs the browser script; its JSON result.
fn run_browser(url: &str, shots: &Path) -> Value {
    run_browser_script(
        "confirm_flow.js",
        url,
        shots,
        &[("ADMIN_NAME", ADMIN), ("ADMIN_PASSWORD", PASSWORD)],
    )
}

/// Runs `tests/browser/SCRIPT URL SHOTS PROFILE` in node with Chromium
/// and playwright-core, `env` added; its JSON result (one line).
pub(crate) fn run_browser_script(
    script: &str,
    url: &str,
    shots: &Path,
    env: &[(&str, &str)],
) -> Value {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/test (it installs Debian's chromium)"
    );
    let profile = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(script);
    let mut child = Command::new("node")
        .arg(script)
        .arg(url)
        .arg(shots)
        .arg(profile.path())
        .env("PLAYWRIGHT_CORE", playwright_core())
        .env("CHROMIUM", CHROMIUM)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (it is on the machine image; scripts/test installs it otherwise)");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser run took more than {BROWSER_TIMEOUT:?}:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "browser run failed ({status}):\n{err}\n{out}"
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

pub(crate) fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} is nearly empty ({} bytes)",
        path.display(),
        bytes.len()
    );
}

#[test]
fn the_sender_confirms_a_release_in_chromium() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posttls.sqlite");
    let key_file = dir.path().join("secret.key");
    let message_id = prepare_store(&db);
    let key = SecretKey::load_or_create(&key_file).unwrap();
    let token = mailtls_test_support::posttls::token(
        Action::Release,
        chrono::Utc::now().timestamp() + 3600,
    )
    .sign(&key)
    .unwrap();

    // The web pages on a loopback port, in process.
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
            instance: Some(INSTANCE.into()),
            base_url: base_url.clone(),
            organization: "Example Org".into(),
            secure_cookies: false,
            mandatory_domains: DomainSet::parse_list("bank.example").unwrap(),
            trusted_proxies: Vec::new(),
            tlsrpt: Default::default(),
            policyd: None,
            limits: Default::default(),
            more_metrics: Default::default(),
        },
        Store::open(&db).unwrap(),
        SecretKey::load_or_create(&key_file).unwrap(),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(mailtls_web::serve_on(listener, state, async {
        let _ = stopped.await;
    }));

    let shots = artifacts("posttls");
    for old in ["1-confirm.png", "2-requested.png", "3-dashboard.png"] {
        let _ = std::fs::remove_file(shots.join(old));
    }
    let url = format!("{base_url}/confirm/{token}");
    let result = run_browser(&url, &shots);

    let _ = stop.send(());
    runtime.block_on(server).unwrap().unwrap();

    // The confirmation page.
    assert_eq!(result["confirm_status"], 200, "{result:#}");
    let confirm = result["confirm_text"].as_str().unwrap();
    for text in [
        "Send your message unencrypted?",
        "Quarterly figures — Grüße",
        SENDER,
        "bob@notls.example",
        "The recipient's mail server does not support encryption.",
        "Never sent unencrypted",
        "carol@bank.example",
        "Nothing happens until you press the button",
    ] {
        assert!(
            confirm.contains(text),
            "{text:?} not on the page:\n{confirm}"
        );
    }
    assert_eq!(result["button"], "Send unencrypted to 1 recipient");
    let headers = &result["confirm_headers"];
    assert!(headers["content-security-policy"]
        .as_str()
        .unwrap()
        .starts_with("default-src 'self'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(
        result["stylesheet_applied"], "rgb(35, 57, 93)",
        "the stylesheet loads under the CSP"
    );

    // After the button: the POST redirected to the page of the link, which
    // now shows the queued request and refreshes itself.
    assert_eq!(result["after_status"], 200, "{result:#}");
    assert_eq!(result["after_url"], url.as_str());
    let after = result["after_text"].as_str().unwrap();
    for text in [
        "Your request is queued",
        "Request to send unencrypted",
        "Waiting for the mail server to carry it out",
        "sender alice@example.org",
    ] {
        assert!(after.contains(text), "{text:?} not on the page:\n{after}");
    }
    assert_eq!(result["after_refresh"], "3");
    assert_eq!(result["forms_after"], 0, "no second button");
    assert_eq!(
        result["console"].as_array().unwrap().len(),
        0,
        "no errors or CSP violations in the browser: {:#}",
        result["console"]
    );
    let requests: Vec<&str> = result["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.starts_with("POST /confirm/"))
            .count(),
        1,
        "{requests:?}"
    );

    // The store: one queued release, requested by the sender from the
    // browser's address; the token is used up.
    let store = Store::open(&db).unwrap();
    let actions = store.actions_of(message_id).unwrap();
    assert_eq!(actions.len(), 1, "{actions:?}");
    let action = &actions[0];
    assert_eq!(
        (
            action.action.as_str(),
            action.state.as_str(),
            action.requested_by.as_str(),
            action.ip.as_deref()
        ),
        (
            "release",
            "queued",
            "sender alice@example.org",
            Some("127.0.0.1")
        )
    );
    let token_id = ActionToken::verify(&key, &token, chrono::Utc::now().timestamp())
        .unwrap()
        .id();
    assert!(store.token_use(&token_id).unwrap().is_some());
    let events: Vec<String> = store
        .audit_log(10)
        .unwrap()
        .into_iter()
        .rev()
        .map(|a| a.event.to_string())
        .collect();
    assert_eq!(events, ["release_requested", "login"]);
    assert_eq!(
        store.message(message_id).unwrap().unwrap().state,
        MessageState::Deferred,
        "the web process only records; the worker acts"
    );

    // The admin signed in (the browser kept the session cookie, which
    // scripts cannot see) and sees the request on the dashboard.
    assert_eq!(
        result["login_url"],
        format!("{base_url}/admin/login").as_str()
    );
    assert_eq!(
        result["dashboard_url"],
        format!("{base_url}/admin").as_str()
    );
    assert_eq!(result["session_cookie_visible_to_scripts"], "");
    let dashboard = result["dashboard_text"].as_str().unwrap();
    for text in [
        "Waiting for a decision (TLS failed) (1)",
        "Quarterly figures — Grüße",
        "sender alice@example.org",
        "127.0.0.1",
        "queued",
        "release_requested",
        "first to alice@example.org",
    ] {
        assert!(
            dashboard.contains(text),
            "{text:?} not on the dashboard:\n{dashboard}"
        );
    }

    assert_png(&shots.join("1-confirm.png"));
    assert_png(&shots.join("2-requested.png"));
    assert_png(&shots.join("3-dashboard.png"));
    eprintln!(
        "browser flow in {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
