//! The web pages in process (`tower::ServiceExt::oneshot` on the router),
//! against a real SQLite store: the confirmation flow, the refusals (forged,
//! expired, reused and cross-message tokens, CSRF), GETs that change
//! nothing, escaping of hostile input, the admin login with its throttle
//! and cookie flags, admin actions and mandatory domains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use mailtls_web::{router, AppState, WebConfig};
use posttls_auth::{hash_password_with, Params};
use posttls_classify::TlsFailureKind;
use posttls_policy::DomainSet;
use posttls_store::{
    ActionKind, AuditEvent, MessageState, NotificationKind, NotificationOutcome, SeenMessage,
    SeenRecipient, Store,
};
use posttls_token::{csrf_token, Action, ActionToken, SecretKey};
use tower::ServiceExt;

use mailtls_test_support::posttls::{deferred_message, ARRIVAL, INSTANCE, QUEUE_ID, SENDER};

const ADMIN: &str = "root";
const PASSWORD: &str = "correct horse battery staple";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn tls(address: &str, mandatory: bool) -> SeenRecipient {
    SeenRecipient {
        address: address.into(),
        delay_reason: Some(
            "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]".into(),
        ),
        tls_kind: Some(TlsFailureKind::NotOffered),
        mandatory,
    }
}

fn other(address: &str) -> SeenRecipient {
    SeenRecipient {
        address: address.into(),
        delay_reason: Some("connect to 127.0.0.1[127.0.0.1]:25: Connection refused".into()),
        tls_kind: None,
        mandatory: false,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers[header::LOCATION].to_str().unwrap()
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The `NAME=VALUE` part of the Set-Cookie for `name`.
    fn cookie(&self, name: &str) -> String {
        self.cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(|c| c.split(';').next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no cookie {name}: {:?}", self.cookies()))
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        self.csrf_after("")
    }

    /// The value of the first hidden `csrf` field after `marker`.
    fn csrf_after(&self, marker: &str) -> String {
        let body = &self.body[self.body.find(marker).expect("the marker")..];
        let start = body.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        let end = body[start..].find('"').unwrap();
        body[start..start + end].to_owned()
    }
}

struct Lab {
    _dir: tempfile::TempDir,
    db: PathBuf,
    key: SecretKey,
    router: Router,
    /// A connection of the test's own, for setting up and inspecting.
    store: Store,
    message_id: i64,
    peer: SocketAddr,
}

fn lab() -> Lab {
    lab_with(|_| {})
}

fn lab_with(edit: impl FnOnce(&mut WebConfig)) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posttls.sqlite");
    let key_file = dir.path().join("secret.key");
    let store = Store::open(&db).unwrap();
    let (message_id, _) = store
        .saw_message(&deferred_message("Quarterly figures"), ARRIVAL + 60)
        .unwrap();
    store
        .set_pending_recipients(
            message_id,
            &[
                tls("bob@notls.example", false),
                tls("carol@bank.example", true),
                other("dave@slow.example"),
            ],
        )
        .unwrap();
    let hash = hash_password_with(PASSWORD, &Params::new(8, 1, 1, None).unwrap());
    store.set_admin(ADMIN, &hash, 1).unwrap();
    let mut config = WebConfig {
        listen: "127.0.0.1:0".into(),
        instance: Some(INSTANCE.into()),
        base_url: "https://posttls.example.org".into(),
        organization: "Example Org".into(),
        secure_cookies: false,
        mandatory_domains: DomainSet::parse_list("bank.example").unwrap(),
        trusted_proxies: Vec::new(),
        tlsrpt: Default::default(),
        policyd: None,
        limits: Default::default(),
        more_metrics: Default::default(),
    };
    edit(&mut config);
    let state = AppState::new(
        config,
        Store::open(&db).unwrap(),
        SecretKey::load_or_create(&key_file).unwrap(),
    )
    .unwrap();
    Lab {
        key: SecretKey::load_or_create(&key_file).unwrap(),
        _dir: dir,
        db,
        router: router(state),
        store,
        message_id,
        peer: "192.0.2.10:40000".parse().unwrap(),
    }
}

impl Lab {
    fn token_for(
        &self,
        queue_id: &str,
        arrival: i64,
        sender: &str,
        recipients: &[&str],
        action: Action,
        expires: i64,
    ) -> String {
        ActionToken::new(
            INSTANCE, queue_id, arrival, sender, recipients, action, expires,
        )
        .sign(&self.key)
        .unwrap()
    }

    /// A genuine token for the lab's message, as the scanner makes it:
    /// bound to the releasable recipient.
    fn token(&self, action: Action) -> String {
        self.token_for(
            QUEUE_ID,
            ARRIVAL,
            SENDER,
            &["bob@notls.example"],
            action,
            now() + 3600,
        )
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let mut request = request;
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Reply {
        let mut request = Request::get(uri);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, uri: &str, form: &str, cookie: Option<&str>) -> Reply {
        let mut request =
            Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Opens the confirmation page of `token` and presses its button:
    /// the page and the answer to the POST.
    async fn confirm(&self, token: &str) -> (Reply, Reply) {
        let page = self.get(&format!("/confirm/{token}"), None).await;
        let reply = self.press(token, &page).await;
        (page, reply)
    }

    /// Presses the button of `page`, the confirmation page of `token`.
    async fn press(&self, token: &str, page: &Reply) -> Reply {
        self.post(
            &format!("/confirm/{token}"),
            &format!("csrf={}", page.csrf()),
            None,
        )
        .await
    }

    /// Posts the confirmation form of `token` with the CSRF token its page
    /// would carry for `form`, without opening the page.
    async fn post_with_csrf(&self, token: &str, form: &str) -> Reply {
        let id = ActionToken::verify(&self.key, token, now()).unwrap().id();
        let csrf = csrf_token(&self.key, &id, form);
        self.post(&format!("/confirm/{token}"), &format!("csrf={csrf}"), None)
            .await
    }

    /// Logs in; returns the session cookie (`NAME=VALUE`).
    async fn login(&self) -> String {
        let reply = self.try_login(ADMIN, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        reply.cookie("posttls-session")
    }

    /// From client address `peer` (`ADDRESS:PORT`), logs in as `name`
    /// with `password`, which must be answered with `status`.
    async fn login_from(&mut self, peer: &str, name: &str, password: &str, status: StatusCode) {
        self.peer = peer.parse().unwrap();
        self.expect_login(name, password, status).await;
    }

    /// Logs in as `name` with `password`, which must be answered with
    /// `status`.
    async fn expect_login(&self, name: &str, password: &str, status: StatusCode) {
        let reply = self.try_login(name, password).await;
        assert_eq!(reply.status, status, "login as {name:?}: {}", reply.body);
    }

    async fn try_login(&self, name: &str, password: &str) -> Reply {
        let page = self.get("/admin/login", None).await;
        let cookie = page.cookie("posttls-login");
        let form = format!(
            "name={}&password={}&csrf={}",
            enc(name),
            enc(password),
            page.csrf()
        );
        self.post("/admin/login", &form, Some(&cookie)).await
    }

    /// What the worker does with the next queued action: takes it and
    /// records how it ended.
    fn worker_finishes_next(&self, state: &str, result: &str) {
        let taken = self.store.take_action(INSTANCE, now()).unwrap().unwrap();
        self.store
            .finish_action(taken.id, state.parse().unwrap(), result, None, now())
            .unwrap();
    }

    fn actions(&self) -> Vec<(String, String, String)> {
        self.store
            .actions_of(self.message_id)
            .unwrap()
            .into_iter()
            .map(|a| (a.action.to_string(), a.requested_by, a.state.to_string()))
            .collect()
    }

    /// Every row of every table, as text.
    fn snapshot(&self) -> String {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let mut out = String::new();
        for table in [
            "meta",
            "messages",
            "recipients",
            "notifications",
            "tokens_used",
            "actions",
            "audit",
            "admins",
            "sessions",
            "mandatory_domains",
        ] {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
            let columns = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..columns)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for row in rows {
                out += &format!("{table}: {}\n", row.unwrap().join(" | "));
            }
        }
        out
    }
}

/// Form encoding of a value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_security_headers(reply: &Reply) {
    let h = &reply.headers;
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn a_release_link_shows_the_message_and_only_the_post_requests_the_release() {
    let lab = lab();
    let token = lab.token(Action::Release);
    let before = lab.snapshot();
    let page = lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_security_headers(&page);
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    for text in [
        "Send your message unencrypted?",
        "Quarterly figures",
        "alice@example.org",
        "bob@notls.example",
        "does not support encryption",
        "Never sent unencrypted",
        "carol@bank.example",
        "requires encryption",
        "Waiting for other reasons",
        "dave@slow.example",
        "Send unencrypted to 1 recipient",
        "Nothing happens until you press the button",
        QUEUE_ID,
    ] {
        assert!(page.body.contains(text), "{text:?} missing:\n{}", page.body);
    }
    assert_eq!(page.body.matches("<form").count(), 1, "one form");
    assert!(!page.body.contains("<script"));
    assert_eq!(
        page.csrf(),
        csrf_token(
            &lab.key,
            &ActionToken::verify(&lab.key, &token, now()).unwrap().id(),
            "release"
        )
    );
    // Opening the page (twice, as a scanner and then the sender) changes nothing.
    lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(lab.snapshot(), before);

    let reply = lab.press(&token, &page).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(reply.location(), format!("/confirm/{token}"));
    assert_eq!(
        lab.actions(),
        [(
            "release".into(),
            "sender alice@example.org".into(),
            "queued".into()
        )]
    );
    let action = &lab.store.actions_of(lab.message_id).unwrap()[0];
    assert_eq!(action.ip.as_deref(), Some("192.0.2.10"));
    let audit = lab.store.audit_log(10).unwrap();
    assert_eq!(audit[0].event, AuditEvent::Requested(ActionKind::Release));
    assert_eq!(audit[0].actor, "sender alice@example.org");
    assert!(
        audit[0].detail.contains("bob@notls.example"),
        "{}",
        audit[0].detail
    );
    assert!(!audit[0].detail.contains("carol"), "{}", audit[0].detail);

    // The page now shows the request's state and refreshes itself.
    let status = lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(status.status, StatusCode::OK);
    assert!(
        status.body.contains("Your request is queued"),
        "{}",
        status.body
    );
    assert!(
        status.body.contains("Waiting for the mail server"),
        "{}",
        status.body
    );
    assert!(
        status.body.contains("http-equiv=\"refresh\""),
        "{}",
        status.body
    );
    assert!(!status.body.contains("<form"));

    // A second POST of the same form: refused, says what happened.
    let again = lab.press(&token, &page).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(
        again.body.contains("This link was already used"),
        "{}",
        again.body
    );
    assert_eq!(lab.actions().len(), 1);

    // The delete link of the same mail: the decision is made already.
    let delete = lab.token(Action::Delete);
    let page = lab.get(&format!("/confirm/{delete}"), None).await;
    assert!(
        page.body.contains("Your request is queued"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<form"));
    let reply = lab.post_with_csrf(&delete, "delete").await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(lab.actions().len(), 1);

    // The worker carries it out: the page shows the result and new queue id.
    let taken = lab.store.take_action(INSTANCE, now()).unwrap().unwrap();
    let running = lab.get(&format!("/confirm/{token}"), None).await;
    assert!(
        running.body.contains("Being carried out now"),
        "{}",
        running.body
    );
    lab.store
        .finish_action(
            taken.id,
            posttls_store::ActionState::Done,
            "sent to bob@notls.example without TLS",
            Some("B7C1D2E3F4"),
            now(),
        )
        .unwrap();
    lab.store
        .set_message_state(lab.message_id, MessageState::Released)
        .unwrap();
    let done = lab.get(&format!("/confirm/{token}"), None).await;
    assert!(
        done.body.contains("sent to bob@notls.example without TLS"),
        "{}",
        done.body
    );
    assert!(done.body.contains("B7C1D2E3F4"), "{}", done.body);
    assert!(!done.body.contains("http-equiv=\"refresh\""));
}

#[tokio::test]
async fn a_delete_link_requests_the_deletion() {
    let lab = lab();
    let token = lab.token(Action::Delete);
    let page = lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Delete your message?"), "{}", page.body);
    assert!(page
        .body
        .contains("nobody who still waits for it receives it"));
    assert!(page.body.contains("(3 recipients)"), "{}", page.body);
    assert!(page.body.contains(">Delete message</button>"));
    let reply = lab.press(&token, &page).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        lab.actions(),
        [(
            "delete".into(),
            "sender alice@example.org".into(),
            "queued".into()
        )]
    );
    // The release link now says a decision is under way.
    let release = lab.token(Action::Release);
    let page = lab.get(&format!("/confirm/{release}"), None).await;
    assert!(
        page.body.contains("Your request is queued"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn a_view_link_offers_both_choices_and_cannot_act_itself() {
    let lab = lab();
    let view = lab.token(Action::View);
    let page = lab.get(&format!("/confirm/{view}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body.matches("<form").count(), 2, "{}", page.body);
    assert!(page.body.contains("Send unencrypted to 1 recipient"));
    assert!(page.body.contains("Delete message"));
    let reply = lab.press(&view, &page).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(lab.actions().is_empty());
    // The first form posts to a derived release token, which works.
    let start = page.body.find("action=\"/confirm/").unwrap() + 8;
    let url = &page.body[start..start + page.body[start..].find('"').unwrap()];
    let reply = lab.post(url, &format!("csrf={}", page.csrf()), None).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(lab.actions().len(), 1);
}

#[tokio::test]
async fn forged_tokens_are_refused_and_change_nothing() {
    let lab = lab();
    let token = lab.token(Action::Release);
    let other_key = SecretKey::generate();
    let foreign = mailtls_test_support::posttls::token(Action::Release, now() + 3600)
        .sign(&other_key)
        .unwrap();
    // A changed character in the middle (the signature no longer matches)
    // and a cut-off link.
    let mut altered = token.clone().into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let before = lab.snapshot();
    for (forged, status) in [
        (foreign.as_str(), StatusCode::FORBIDDEN),
        (altered.as_str(), StatusCode::FORBIDDEN),
        (&token[..token.len() - 10], StatusCode::BAD_REQUEST),
        ("4A0AF98C232", StatusCode::BAD_REQUEST),
        ("%00%0A--help", StatusCode::BAD_REQUEST),
    ] {
        let page = lab.get(&format!("/confirm/{forged}"), None).await;
        assert_eq!(page.status, status, "{forged}: {}", page.body);
        assert!(page.body.contains("Nothing was done"), "{}", page.body);
        assert_security_headers(&page);
        // Even with the CSRF token an attacker could compute for it (he
        // cannot: he lacks the key), the POST is refused before anything.
        let reply = lab
            .post(
                &format!("/confirm/{forged}"),
                "csrf=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                None,
            )
            .await;
        assert_eq!(reply.status, status, "{forged}");
    }
    let page = lab.get(&format!("/confirm/{foreign}"), None).await;
    assert!(
        page.body.contains("not issued by this server"),
        "{}",
        page.body
    );
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let lab = lab();
    let expired = lab.token_for(
        QUEUE_ID,
        ARRIVAL,
        SENDER,
        &["bob@notls.example"],
        Action::Release,
        now() - 1,
    );
    let page = lab.get(&format!("/confirm/{expired}"), None).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("expired"), "{}", page.body);
    let csrf = csrf_token(
        &lab.key,
        &ActionToken::verify(&lab.key, &expired, i64::MIN)
            .unwrap()
            .id(),
        "release",
    );
    let reply = lab
        .post(
            &format!("/confirm/{expired}"),
            &format!("csrf={csrf}"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert!(lab.actions().is_empty());
}

#[tokio::test]
async fn tokens_for_other_messages_are_refused() {
    let lab = lab();
    // Another message with the same queue id, arrived later (Postfix reuses ids).
    let (second, _) = lab
        .store
        .saw_message(
            &SeenMessage {
                instance: INSTANCE,
                queue_id: QUEUE_ID,
                arrival_time: ARRIVAL + 7200,
                sender: "mallory@example.org",
                subject: Some("other"),
                own_sender: true,
                requiretls: false,
                state: MessageState::Deferred,
            },
            ARRIVAL + 7300,
        )
        .unwrap();
    lab.store
        .set_pending_recipients(second, &[tls("eve@notls.example", false)])
        .unwrap();
    let before = lab.snapshot();
    let rcpt = ["bob@notls.example"];
    let cases: [(&str, String, StatusCode, &str); 6] = [
        (
            "arrival time of no message",
            lab.token_for(
                QUEUE_ID,
                ARRIVAL + 1,
                SENDER,
                &rcpt,
                Action::Release,
                now() + 60,
            ),
            StatusCode::GONE,
            "Message not found",
        ),
        (
            "another queue id",
            lab.token_for(
                "B00000000000",
                ARRIVAL,
                SENDER,
                &rcpt,
                Action::Delete,
                now() + 60,
            ),
            StatusCode::GONE,
            "Message not found",
        ),
        (
            "the reused queue id's other message, with the first sender",
            lab.token_for(
                QUEUE_ID,
                ARRIVAL + 7200,
                SENDER,
                &rcpt,
                Action::Delete,
                now() + 60,
            ),
            StatusCode::CONFLICT,
            "does not belong to this message",
        ),
        (
            "a sender that is not the message's",
            lab.token_for(
                QUEUE_ID,
                ARRIVAL,
                "mallory@example.org",
                &rcpt,
                Action::Release,
                now() + 60,
            ),
            StatusCode::CONFLICT,
            "does not belong to this message",
        ),
        (
            "a mandatory recipient added to the binding",
            lab.token_for(
                QUEUE_ID,
                ARRIVAL,
                SENDER,
                &["bob@notls.example", "carol@bank.example"],
                Action::Release,
                now() + 60,
            ),
            StatusCode::CONFLICT,
            "has changed since the notification",
        ),
        (
            "the other pending recipient added",
            lab.token_for(
                QUEUE_ID,
                ARRIVAL,
                SENDER,
                &["bob@notls.example", "dave@slow.example"],
                Action::Release,
                now() + 60,
            ),
            StatusCode::CONFLICT,
            "has changed since the notification",
        ),
    ];
    for (what, token, status, text) in &cases {
        let page = lab.get(&format!("/confirm/{token}"), None).await;
        assert_eq!(page.status, *status, "{what}: {}", page.body);
        assert!(page.body.contains(text), "{what}: {}", page.body);
        assert!(!page.body.contains("<form"), "{what}");
        let action = ActionToken::verify(&lab.key, token, now()).unwrap();
        let csrf = csrf_token(&lab.key, &action.id(), action.action.as_str());
        let reply = lab
            .post(&format!("/confirm/{token}"), &format!("csrf={csrf}"), None)
            .await;
        assert_eq!(reply.status, *status, "{what}: {}", reply.body);
    }
    // Another instance's token, signed with the same key.
    let elsewhere = ActionToken::new(
        "mx2",
        QUEUE_ID,
        ARRIVAL,
        SENDER,
        &rcpt,
        Action::Release,
        now() + 60,
    )
    .sign(&lab.key)
    .unwrap();
    let page = lab.get(&format!("/confirm/{elsewhere}"), None).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("another mail server"));
    assert_eq!(lab.snapshot(), before, "nothing recorded");

    // A domain made mandatory after the mail: the release link no longer fits.
    lab.store
        .add_mandatory_domain("notls.example", "root", 1)
        .unwrap();
    let token = lab.token(Action::Release);
    let page = lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(
        page.body.contains("Nothing to send unencrypted"),
        "{}",
        page.body
    );
    assert!(lab.actions().is_empty());
}

#[tokio::test]
async fn posts_without_the_pages_csrf_token_are_refused() {
    let lab = lab();
    let release = lab.token(Action::Release);
    let delete = lab.token(Action::Delete);
    let id = |t: &str| ActionToken::verify(&lab.key, t, now()).unwrap().id();
    let cases = [
        ("no form", String::new()),
        ("empty", "csrf=".to_owned()),
        ("garbage", "csrf=%3Cscript%3E".to_owned()),
        (
            "the delete form's token",
            format!("csrf={}", csrf_token(&lab.key, &id(&delete), "delete")),
        ),
        (
            "another release link's token",
            format!(
                "csrf={}",
                csrf_token(&lab.key, &id(&lab.token(Action::Release)), "release")
            ),
        ),
        (
            "another key",
            format!(
                "csrf={}",
                csrf_token(&SecretKey::generate(), &id(&release), "release")
            ),
        ),
    ];
    let before = lab.snapshot();
    for (what, form) in cases {
        let reply = lab.post(&format!("/confirm/{release}"), &form, None).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            reply.body
        );
        assert!(reply.body.contains("Nothing was done"), "{what}");
    }
    // A JSON body instead of a form.
    let json = Request::post(format!("/confirm/{release}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            "{{\"csrf\":\"{}\"}}",
            csrf_token(&lab.key, &id(&release), "release")
        )))
        .unwrap();
    assert_eq!(lab.send(json).await.status, StatusCode::FORBIDDEN);
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn hostile_strings_are_only_shown_escaped() {
    let lab = lab();
    let evil_sender = "-<b>x</b>$(id)\n--help@example.org";
    let evil_queue = "<script>alert(1)</script>";
    let (id, _) = lab
        .store
        .saw_message(
            &SeenMessage {
                instance: INSTANCE,
                queue_id: evil_queue,
                arrival_time: 5,
                sender: evil_sender,
                subject: Some("<img src=x onerror=alert(1)> \"quoted\" & 'single'"),
                own_sender: true,
                requiretls: false,
                state: MessageState::Deferred,
            },
            10,
        )
        .unwrap();
    lab.store
        .set_pending_recipients(
            id,
            &[
                tls("--help@evil.example", false),
                tls("$(rm -rf /)@evil.example", false),
                tls("\"a\nb<i>\"@evil.example", false),
                SeenRecipient {
                    address: "-@evil.example".into(),
                    delay_reason: Some("<script>alert('reason')</script>".into()),
                    tls_kind: Some(TlsFailureKind::HandshakeFailure),
                    mandatory: false,
                },
            ],
        )
        .unwrap();
    let recipients = [
        "--help@evil.example",
        "$(rm -rf /)@evil.example",
        "\"a\nb<i>\"@evil.example",
        "-@evil.example",
    ];
    let token = lab.token_for(
        evil_queue,
        5,
        evil_sender,
        &recipients,
        Action::Release,
        now() + 60,
    );
    let page = lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let session = lab.login().await;
    let dashboard = lab.get("/admin", Some(&session)).await;
    assert_eq!(dashboard.status, StatusCode::OK);
    for body in [&page.body, &dashboard.body] {
        for raw in ["<script", "<img", "<b>x", "<i>", "onerror=alert(1)>"] {
            assert!(!body.contains(raw), "{raw} unescaped:\n{body}");
        }
        for escaped in [
            "&lt;script&gt;alert(1)&lt;&#x2f;script&gt;",
            "&lt;img src=x onerror=alert(1)&gt; &quot;quoted&quot; &amp; &#x27;single&#x27;",
            "-&lt;b&gt;x&lt;&#x2f;b&gt;$(id)\n--help@example.org",
            "--help@evil.example",
            "$(rm -rf &#x2f;)@evil.example",
        ] {
            assert!(body.contains(escaped), "{escaped} missing:\n{body}");
        }
    }
    assert!(page.body.contains("Send unencrypted to 4 recipients"));
    // And the release of it is recorded like any other, by message id.
    let reply = lab.press(&token, &page).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(lab.store.actions_of(id).unwrap().len(), 1);
}

#[tokio::test]
async fn no_get_changes_anything() {
    let lab = lab();
    let session = lab.login().await;
    // Some state to show: a queued action, a notification, a UI domain.
    lab.store
        .record_notification(
            lab.message_id,
            NotificationKind::First,
            SENDER,
            &NotificationOutcome::Sent,
            ARRIVAL + 60,
        )
        .unwrap();
    lab.store
        .add_mandatory_domain("ui.example", "root", 2)
        .unwrap();
    let release = lab.token(Action::Release);
    let (_, reply) = lab.confirm(&release).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let before = lab.snapshot();
    let expired = lab.token_for(
        QUEUE_ID,
        ARRIVAL,
        SENDER,
        &["bob@notls.example"],
        Action::Delete,
        1,
    );
    let uris = [
        "/".to_owned(),
        "/static/style.css".to_owned(),
        "/nowhere".to_owned(),
        format!("/confirm/{release}"),
        format!("/confirm/{}", lab.token(Action::Delete)),
        format!("/confirm/{}", lab.token(Action::View)),
        format!("/confirm/{expired}"),
        "/confirm/garbage".to_owned(),
        "/admin".to_owned(),
        "/admin/login".to_owned(),
        "/admin/domains".to_owned(),
        "/admin/domains?done=added".to_owned(),
        "/admin/logout".to_owned(),
        format!("/admin/messages/{}/delete", lab.message_id),
    ];
    for uri in &uris {
        for cookie in [None, Some(session.as_str())] {
            let reply = lab.get(uri, cookie).await;
            assert_security_headers(&reply);
            assert!(reply.status != StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
            let head = lab
                .send(Request::head(uri).body(Body::empty()).unwrap())
                .await;
            assert!(head.status != StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        }
    }
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn every_response_has_the_security_headers() {
    let lab = lab();
    for (method, uri) in [
        ("GET", "/"),
        ("GET", "/nowhere"),
        ("GET", "/static/style.css"),
        ("PUT", "/admin"),
        ("POST", "/admin"),
        ("GET", "/admin"),
        ("DELETE", "/confirm/x"),
    ] {
        let reply = lab
            .send(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_security_headers(&reply);
    }
    let css = lab.get("/static/style.css", None).await;
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
}

#[tokio::test]
async fn request_bodies_are_limited() {
    let lab = lab();
    let token = lab.token(Action::Release);
    let big = format!("csrf={}", "A".repeat(100_000));
    let reply = lab.post(&format!("/confirm/{token}"), &big, None).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let big_login = format!("name=root&password={}", "A".repeat(100_000));
    let reply = lab.post("/admin/login", &big_login, None).await;
    assert!(reply.status.is_client_error(), "{}", reply.status);
    assert!(lab.actions().is_empty());
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_logout_ends_the_session() {
    let lab = lab();
    let page = lab.get("/admin/login", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("type=\"password\""));
    let login_cookie = page.cookies().join("\n");
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));

    let reply = lab.try_login(ADMIN, PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/admin");
    let set = reply
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("posttls-session="))
        .unwrap();
    assert!(set.contains("; HttpOnly"), "{set}");
    assert!(set.contains("; SameSite=Strict"), "{set}");
    assert!(set.contains("; Path=/"), "{set}");
    assert!(set.contains("; Max-Age=28800"), "{set}");
    assert!(!set.contains("Secure"), "secure_cookies is off: {set}");
    // The store keeps the digest of the session id, not the id.
    let session = reply.cookie("posttls-session");
    let id = session.split_once('=').unwrap().1;
    let conn = rusqlite::Connection::open(&lab.db).unwrap();
    let stored: String = conn
        .query_row("SELECT id FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_ne!(stored, id);
    assert_eq!(stored, posttls_auth::SessionId::parse(id).unwrap().digest());

    let dashboard = lab.get("/admin", Some(&session)).await;
    assert_eq!(dashboard.status, StatusCode::OK);
    assert!(
        dashboard.body.contains("Waiting for a decision"),
        "{}",
        dashboard.body
    );
    assert!(dashboard.body.contains("Sign out root"));
    assert_eq!(lab.store.audit_log(1).unwrap()[0].event, AuditEvent::Login);

    // Logout needs its CSRF token.
    let reply = lab.post("/admin/logout", "csrf=x", Some(&session)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let start = dashboard.body.find("/admin/logout").unwrap();
    let tail = &dashboard.body[start..];
    let csrf_start = tail.find("value=\"").unwrap() + 7;
    let csrf = &tail[csrf_start..csrf_start + 43];
    let reply = lab
        .post("/admin/logout", &format!("csrf={csrf}"), Some(&session))
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(reply.cookies()[0].starts_with("posttls-session=; Path=/; Max-Age=0"));
    let after = lab.get("/admin", Some(&session)).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location(), "/admin/login");
}

#[tokio::test]
async fn secure_cookies_are_secure_host_cookies() {
    let lab = lab_with(|c| c.secure_cookies = true);
    let page = lab.get("/admin/login", None).await;
    let login = page.cookie("__Host-posttls-login");
    let form = format!(
        "name={ADMIN}&password={}&csrf={}",
        enc(PASSWORD),
        page.csrf()
    );
    let reply = lab.post("/admin/login", &form, Some(&login)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let set = reply
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-posttls-session="))
        .unwrap();
    assert!(
        set.ends_with("; HttpOnly; SameSite=Strict; Secure"),
        "{set}"
    );
    assert!(set.contains("; Path=/"));
}

#[tokio::test]
async fn the_login_form_needs_its_cookie_and_csrf_token() {
    let lab = lab();
    let page = lab.get("/admin/login", None).await;
    let cookie = page.cookie("posttls-login");
    let form = format!(
        "name={ADMIN}&password={}&csrf={}",
        enc(PASSWORD),
        page.csrf()
    );
    // Without the cookie (another site's form), or with another token.
    let reply = lab.post("/admin/login", &form, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let other = lab.get("/admin/login", None).await.cookie("posttls-login");
    let reply = lab.post("/admin/login", &form, Some(&other)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let conn = rusqlite::Connection::open(&lab.db).unwrap();
    let sessions: i64 = conn
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 0);
    let reply = lab.post("/admin/login", &form, Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn password_guessing_is_slowed_down() {
    let lab = lab();
    // Three free failures, then the fourth sets a delay of one second.
    for attempt in 1..=4 {
        let reply = lab.try_login(ADMIN, &format!("guess {attempt}")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert!(reply.body.contains("Wrong name or password"));
    }
    // During the delay even the right password is refused, unchecked.
    let reply = lab.try_login(ADMIN, PASSWORD).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("Too many failed logins"),
        "{}",
        reply.body
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    assert!(reply
        .cookies()
        .iter()
        .all(|c| !c.starts_with("posttls-session")));
    let failures: Vec<String> = lab
        .store
        .audit_log(20)
        .unwrap()
        .into_iter()
        .map(|a| format!("{} {} {}", a.event, a.ip.unwrap_or_default(), a.detail))
        .collect();
    assert_eq!(
        failures.len(),
        4,
        "refusals while throttled are not checked: {failures:?}"
    );
    assert!(failures
        .iter()
        .all(|f| f == "login_failed 192.0.2.10 name \"root\": wrong password"));

    // The address is throttled too: another (unknown) name from there is refused.
    lab.expect_login("admin2", "x", StatusCode::TOO_MANY_REQUESTS)
        .await;

    // After the delay the right password works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lab.expect_login(ADMIN, PASSWORD, StatusCode::SEE_OTHER)
        .await;
}

#[tokio::test]
async fn guessing_from_many_addresses_is_slowed_down_per_user() {
    let mut lab = lab();
    for i in 1..=4 {
        lab.login_from(
            &format!("198.51.100.{i}:1000"),
            ADMIN,
            "wrong",
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    lab.login_from(
        "198.51.100.99:1000",
        ADMIN,
        PASSWORD,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    // Hostile names are refused like unknown ones and audited escaped.
    lab.login_from(
        "203.0.113.1:1000",
        "$(id) \"--help",
        "x",
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let last = &lab.store.audit_log(1).unwrap()[0];
    assert_eq!(last.detail, "name \"$(id) \\\"--help\": no such admin");
}

#[tokio::test]
async fn names_no_admin_can_have_are_refused_unchecked_but_counted() {
    let mut lab = lab();
    let before = lab.snapshot();
    // Over 64 bytes or with control characters: the page of a wrong
    // password, and nothing looked up or written (no audit entry).
    let names = [
        "x".repeat(65),
        "y".repeat(15_000),
        format!("{ADMIN}\n"),
        "ro\0ot".into(),
    ];
    for (i, name) in names.iter().enumerate() {
        let reply = lab.try_login(name, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "name {i}");
        assert!(reply.body.contains("Wrong name or password."), "name {i}");
    }
    assert_eq!(lab.snapshot(), before);
    // They count as failures of the address: the fourth set a delay.
    lab.expect_login(ADMIN, PASSWORD, StatusCode::TOO_MANY_REQUESTS)
        .await;
    // Not of the admin's name: from elsewhere it logs in.
    lab.login_from("198.51.100.1:1000", ADMIN, PASSWORD, StatusCode::SEE_OTHER)
        .await;
}

#[tokio::test]
async fn failed_logins_count_per_ipv6_network() {
    let mut lab = lab();
    // Four hosts of one /64 share the count (names no admin can have are
    // refused without a password check, which keeps this quick).
    for host in 1..=4 {
        lab.login_from(
            &format!("[2001:db8:1:2::{host}]:1000"),
            &"x".repeat(65),
            "x",
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    lab.login_from(
        "[2001:db8:1:2:ffff::9]:1000",
        ADMIN,
        PASSWORD,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    // The next /64 is someone else.
    lab.login_from(
        "[2001:db8:1:3::1]:1000",
        ADMIN,
        PASSWORD,
        StatusCode::SEE_OTHER,
    )
    .await;

    // An IPv4-mapped address is its IPv4 address. (Another name: the one
    // above must wait now.)
    lab.peer = "[::ffff:192.0.2.77]:1000".parse().unwrap();
    for _ in 1..=4 {
        lab.expect_login(&"y".repeat(65), "x", StatusCode::UNAUTHORIZED)
            .await;
    }
    lab.login_from(
        "192.0.2.77:1000",
        ADMIN,
        PASSWORD,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
}

/// The flood of the outside test, over HTTP in process: an admin is locked
/// out (9 wrong passwords, each after the previous delay: 32 s to wait),
/// then 50 000 failures of names no admin can have, each from an address
/// of its own in 127/8, more than fill the throttle's table of 100 000
/// entries. The lockout holds: the right password is still refused.
/// (`posttls_auth`'s own tests replay the outside test's figures: 11
/// failures, 78 000 names from 26 000 addresses.)
#[tokio::test]
async fn a_flood_of_impossible_names_does_not_end_an_admins_lockout() {
    let mut lab = lab();
    for i in 1..=9u8 {
        let reply = loop {
            lab.peer = SocketAddr::from(([198, 51, 100, i], 1000));
            let reply = lab.try_login(ADMIN, "wrong").await;
            if reply.status != StatusCode::TOO_MANY_REQUESTS {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    let locked_at = std::time::Instant::now();
    lab.login_from(
        "203.0.113.1:1000",
        ADMIN,
        PASSWORD,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    // One login form (its cookie and CSRF token) serves every POST.
    let page = lab.get("/admin/login", None).await;
    let cookie = page.cookie("posttls-login");
    let csrf = page.csrf();
    for n in 0..50_000u32 {
        let [_, a, b, c] = (n + 1).to_be_bytes();
        lab.peer = SocketAddr::from(([127, a, b, c], 1000));
        let reply = lab
            .post(
                "/admin/login",
                &format!("name={n:0>70}&password=x&csrf={csrf}"),
                Some(&cookie),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    let flood = locked_at.elapsed();
    eprintln!("50 000 failures of impossible names {flood:?} into a 32 s lockout");
    assert!(
        flood < Duration::from_secs(30),
        "the flood took {flood:?}, longer than the lockout"
    );
    lab.peer = "203.0.113.2:1000".parse().unwrap();
    let reply = lab.try_login(ADMIN, PASSWORD).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the lockout holds after the flood ({flood:?}): {}",
        reply.body
    );
}

/// Password checks of names that are no admin's (each an argon2 check
/// against a dummy hash, the default cost) sent in parallel from many
/// addresses do not queue up in front of an admin's login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_login_does_not_wait_behind_a_queue_of_password_checks() {
    let lab = lab();
    // What one such check takes here.
    let started = std::time::Instant::now();
    lab.expect_login("nobody", "x", StatusCode::UNAUTHORIZED)
        .await;
    let one = started.elapsed();
    let mut flood = Vec::new();
    for i in 0..24u8 {
        let page = lab.get("/admin/login", None).await;
        let form = format!("name=guess{i}&password=x&csrf={}", page.csrf());
        let mut request = Request::post("/admin/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, page.cookie("posttls-login"))
            .body(Body::from(form))
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([198, 18, 0, i], 1000))));
        let router = lab.router.clone();
        flood.push(tokio::spawn(async move {
            router.oneshot(request).await.unwrap().status()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    lab.expect_login(ADMIN, PASSWORD, StatusCode::SEE_OTHER)
        .await;
    let admin = started.elapsed();
    for task in flood {
        let status = task.await.unwrap();
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&status),
            "{status}"
        );
    }
    eprintln!("one check {one:?}, the admin's login during the flood {admin:?}");
    assert!(
        admin < one * 3 + Duration::from_secs(1),
        "the admin waited {admin:?}, one check takes {one:?}"
    );
}

#[tokio::test]
async fn admin_pages_need_a_session() {
    let lab = lab();
    let before = lab.snapshot();
    for uri in ["/admin", "/admin/domains"] {
        let reply = lab.get(uri, None).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(reply.location(), "/admin/login");
        let forged = lab
            .get(
                uri,
                Some("posttls-session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            )
            .await;
        assert_eq!(forged.status, StatusCode::SEE_OTHER, "{uri}");
    }
    for (uri, form) in [
        (
            format!("/admin/messages/{}/release", lab.message_id),
            "csrf=x".to_owned(),
        ),
        (
            format!("/admin/messages/{}/delete", lab.message_id),
            String::new(),
        ),
        (
            "/admin/domains".to_owned(),
            "op=add&domain=x.example".to_owned(),
        ),
        ("/admin/logout".to_owned(), String::new()),
    ] {
        let reply = lab.post(&uri, &form, None).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(reply.location(), "/admin/login");
    }
    assert_eq!(lab.snapshot(), before);
}

#[tokio::test]
async fn admins_release_and_delete_with_the_sessions_csrf_token() {
    let lab = lab();
    let session = lab.login().await;
    let dashboard = lab.get("/admin", Some(&session)).await;
    assert!(
        dashboard.body.contains("Send unencrypted to 1 recipient"),
        "{}",
        dashboard.body
    );
    let start = dashboard.body.find("/release\"").unwrap();
    let tail = &dashboard.body[start..];
    let csrf_start = tail.find("value=\"").unwrap() + 7;
    let csrf = tail[csrf_start..csrf_start + 43].to_owned();
    let release = format!("/admin/messages/{}/release", lab.message_id);

    // Another session's token does not do.
    let other = lab.login().await;
    let other_page = lab.get("/admin", Some(&other)).await;
    let other_start = other_page.body.find("/release\"").unwrap();
    let other_tail = &other_page.body[other_start..];
    let other_csrf = &other_tail[other_tail.find("value=\"").unwrap() + 7..][..43];
    assert_ne!(other_csrf, csrf);
    for form in [String::new(), "csrf=".into(), format!("csrf={other_csrf}")] {
        let reply = lab.post(&release, &form, Some(&session)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{form}");
    }
    assert!(lab.actions().is_empty());

    let reply = lab
        .post(&release, &format!("csrf={csrf}"), Some(&session))
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(
        reply.location(),
        format!("/admin#message-{}", lab.message_id)
    );
    assert_eq!(
        lab.actions(),
        [("release".into(), "admin root".into(), "queued".into())]
    );
    // A second request while the first is queued: refused.
    let delete = format!("/admin/messages/{}/delete", lab.message_id);
    let reply = lab
        .post(&delete, &format!("csrf={csrf}"), Some(&session))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(reply.body.contains("still queued"), "{}", reply.body);
    // The dashboard shows who, from where, and the state; no buttons now.
    let dashboard = lab.get("/admin", Some(&session)).await;
    assert!(dashboard.body.contains("admin root"));
    assert!(dashboard.body.contains("192.0.2.10"));
    assert!(dashboard.body.contains("release_requested"));
    assert!(!dashboard
        .body
        .contains(&format!("/admin/messages/{}/release", lab.message_id)));
    assert!(dashboard.body.contains("http-equiv=\"refresh\""));

    // After the worker failed it, the admin may delete.
    lab.worker_finishes_next("failed", "the release listener refused the message");
    let reply = lab
        .post(&delete, &format!("csrf={csrf}"), Some(&session))
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(lab.actions().len(), 2);
    assert_eq!(lab.actions()[1].0, "delete");
    // Unknown messages and actions.
    let reply = lab
        .post(
            "/admin/messages/999/delete",
            &format!("csrf={csrf}"),
            Some(&session),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = lab
        .post(
            &format!("/admin/messages/{}/--help", lab.message_id),
            &format!("csrf={csrf}"),
            Some(&session),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = lab
        .post(
            "/admin/messages/$(id)/delete",
            &format!("csrf={csrf}"),
            Some(&session),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(lab.actions().len(), 2);
}

#[tokio::test]
async fn mandatory_domains_are_managed_in_the_ui() {
    let lab = lab();
    let session = lab.login().await;
    let page = lab.get("/admin/domains", Some(&session)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("<code>bank.example</code>"),
        "{}",
        page.body
    );
    let csrf = page.csrf_after("<form method=\"post\" action=\"/admin/domains\"");
    let post = |form: String| {
        let session = session.clone();
        let lab = &lab;
        async move { lab.post("/admin/domains", &form, Some(&session)).await }
    };
    let reply = post(format!("csrf={csrf}&op=add&domain=NoTLS.Example.")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/admin/domains?done=added");
    assert_eq!(lab.store.mandatory_domains().unwrap(), ["notls.example"]);
    let audit = &lab.store.audit_log(1).unwrap()[0];
    assert_eq!(
        (audit.actor.as_str(), audit.event, audit.detail.as_str()),
        (
            "admin root",
            AuditEvent::MandatoryDomainAdded,
            "notls.example"
        )
    );
    let reply = post(format!("csrf={csrf}&op=add&domain=notls.example")).await;
    assert_eq!(reply.location(), "/admin/domains?done=exists");
    let reply = post(format!("csrf={csrf}&op=add&domain=bank.example")).await;
    assert_eq!(reply.location(), "/admin/domains?done=configured");
    let reply = post(format!("csrf={csrf}&op=remove&domain=bank.example")).await;
    assert_eq!(reply.location(), "/admin/domains?done=configured");
    let reply = post(format!("csrf={csrf}&op=add&domain={}", enc("<b>x y</b>"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body.contains("&lt;b&gt;x y&lt;&#x2f;b&gt;"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("<b>x"));
    let reply = post("op=add&domain=other.example".to_owned()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // The new domain counts at once: bob is now never released.
    let token = lab.token(Action::Delete);
    let page = lab.get(&format!("/confirm/{token}"), None).await;
    let mandatory = &page.body[page.body.find("id=\"mandatory-recipients\"").unwrap()..];
    assert!(mandatory.contains("bob@notls.example"), "{}", page.body);
    let shown = lab.get("/admin/domains?done=added", Some(&session)).await;
    assert!(shown.body.contains("Domain added"));
    assert!(shown.body.contains("<code>notls.example</code>"));

    let reply = post(format!("csrf={csrf}&op=remove&domain=notls.example")).await;
    assert_eq!(reply.location(), "/admin/domains?done=removed");
    assert!(lab.store.mandatory_domains().unwrap().is_empty());
    let reply = post(format!("csrf={csrf}&op=remove&domain=notls.example")).await;
    assert_eq!(reply.location(), "/admin/domains?done=unknown");
}

#[tokio::test]
async fn routes_live_under_the_path_of_base_url() {
    let lab = lab_with(|c| c.base_url = "https://mail.example.org/posttls/".into());
    let token = lab.token(Action::Release);
    let page = lab.get(&format!("/posttls/confirm/{token}"), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("href=\"/posttls/static/style.css\""));
    assert!(page
        .body
        .contains(&format!("action=\"/posttls/confirm/{token}\"")));
    assert_eq!(
        lab.get(&format!("/confirm/{token}"), None).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = lab
        .post(
            &format!("/posttls/confirm/{token}"),
            &format!("csrf={}", page.csrf()),
            None,
        )
        .await;
    assert_eq!(reply.location(), format!("/posttls/confirm/{token}"));
    let admin = lab.get("/posttls/admin", None).await;
    assert_eq!(admin.location(), "/posttls/admin/login");
}

#[tokio::test]
async fn a_message_that_left_the_queue_says_so() {
    let lab = lab();
    lab.store
        .set_message_state(lab.message_id, MessageState::Gone)
        .unwrap();
    let token = lab.token(Action::Release);
    let page = lab.get(&format!("/confirm/{token}"), None).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(
        page.body.contains("no longer in the queue"),
        "{}",
        page.body
    );
    let reply = lab.post_with_csrf(&token, "release").await;
    assert_eq!(reply.status, StatusCode::GONE);
    assert!(lab.actions().is_empty());
}

#[tokio::test]
async fn a_request_the_worker_refused_is_shown_and_other_links_still_work() {
    let lab = lab();
    let release = lab.token(Action::Release);
    let (_, reply) = lab.confirm(&release).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    lab.worker_finishes_next("refused", "the message is <not> in the queue as it was");
    let page = lab.get(&format!("/confirm/{release}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("Your request was not carried out"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("the message is &lt;not&gt; in the queue as it was"));
    assert!(!page.body.contains("<form"), "the used link offers nothing");
    // The delete link of the same mail still works, and mentions the refusal.
    let delete = lab.token(Action::Delete);
    let page = lab.get(&format!("/confirm/{delete}"), None).await;
    assert!(page.body.contains("was not carried out"), "{}", page.body);
    let reply = lab.press(&delete, &page).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(lab.actions().len(), 2);
}

#[tokio::test]
async fn a_link_whose_request_failed_can_be_used_again() {
    let lab = lab();
    let release = lab.token(Action::Release);
    let path = format!("/confirm/{release}");
    let page = lab.get(&path, None).await;
    let reply = lab
        .post(&path, &format!("csrf={}", page.csrf()), None)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    lab.worker_finishes_next(
        "failed",
        "the release listener refused the message; the message is back in the queue as it was",
    );
    // The page says what happened and offers the button again.
    let page = lab.get(&path, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("the release listener refused"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<form"), "{}", page.body);
    let reply = lab
        .post(&path, &format!("csrf={}", page.csrf()), None)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(lab.actions().len(), 2);
    assert_eq!(lab.actions()[1].2, "queued");
    // Used again, it is spent again while its request stands.
    let reply = lab
        .post(&path, &format!("csrf={}", page.csrf()), None)
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(lab.actions().len(), 2);
}

/// A report daemon database with one report for `domain` on `day`, its one
/// destination already sent.
fn reportd_with_a_sent_report(path: &std::path::Path, day: &str, domain: &str) {
    drop(
        tlsrpt_reportd_db::ReportdDb::open(&tlsrpt_reportd_db::DbName::Sqlite(path.to_path_buf()))
            .unwrap(),
    );
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO reports (r_id, day, domain, uniqid, tlsrptrecord, report) VALUES (7, ?1, ?2, 1, 'v=TLSRPTv1;rua=mailto:tlsrpt@example.net', ?3)",
        rusqlite::params![day, domain, format!(r#"{{"report-id": "{day}_{domain}_1"}}"#)],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO destinations (destination, d_r_id, retries, status, nexttry) VALUES ('mailto:tlsrpt@example.net', 7, 1, 'sent', NULL)",
        [],
    )
    .unwrap();
}

/// A collector database holding `domain` (any text: another process
/// writes it) on `day`.
fn collector_with(path: &std::path::Path, day: &str, domain: &str) {
    drop(tlsrpt_store::CollectorDb::open(path).unwrap());
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO finalresults (day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure) VALUES (?1, ?2, 'v=TLSRPTv1;rua=mailto:a@b.example', '{\"policy-type\": 9}', 5, 2)",
        rusqlite::params![day, domain],
    )
    .unwrap();
}

#[tokio::test]
async fn an_admin_sees_outbound_tls_and_resends_a_report_which_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let reportd = dir.path().join("reportd.sqlite");
    let collector = dir.path().join("collectd.sqlite");
    let day = "2026-11-30";
    let hostile = "<b>x</b>\".example";
    reportd_with_a_sent_report(&reportd, day, "a.example");
    collector_with(&collector, day, hostile);
    let lab = lab_with(|config| {
        config.tlsrpt = tlsrpt_stats::Sources {
            collector: Some(tlsrpt_stats::CollectorSource::Sqlite(collector.clone())),
            reportd: Some(tlsrpt_reportd_db::DbName::Sqlite(reportd.clone())),
        }
    });
    // Without a session: the pages send to the login, the JSON refuses.
    let reply = lab.get(&format!("/admin/tls?day={day}"), None).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let reply = lab.get(&format!("/admin/tls.json?day={day}"), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let session = lab.login().await;
    // A domain name with markup, from the database, is shown as text and
    // linked percent-encoded.
    let page = lab
        .get(&format!("/admin/tls?day={day}"), Some(&session))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(!page.body.contains("<b>x</b>"), "{}", page.body);
    assert!(
        page.body.contains("&lt;b&gt;x&lt;&#x2f;b&gt;"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("tls&#x2f;%3Cb%3Ex%3C%2Fb%3E%22%2Eexample\""),
        "{}",
        page.body
    );
    let json = lab
        .get(&format!("/admin/tls.json?day={day}"), Some(&session))
        .await;
    assert_eq!(json.headers[header::CONTENT_TYPE], "application/json");
    assert!(
        json.body.contains(r#""successful":3,"failed":2"#),
        "{}",
        json.body
    );
    // Unknown sorts and days that are no days are refused.
    for query in ["sort=worst", "day=2026-13-01", "page=0"] {
        let reply = lab
            .get(&format!("/admin/tls?{query}"), Some(&session))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
    }

    let reports = lab
        .get(&format!("/admin/reports?day={day}"), Some(&session))
        .await;
    assert!(
        reports.body.contains(&format!("{day}_a.example_1")),
        "{}",
        reports.body
    );
    let start = reports.body.find("/admin/reports/7/resend\"").unwrap();
    let tail = &reports.body[start..];
    let csrf = &tail[tail.find("value=\"").unwrap() + 7..][..43];
    let resend = "/admin/reports/7/resend";
    assert_eq!(
        lab.post(resend, "csrf=", Some(&session)).await.status,
        StatusCode::FORBIDDEN
    );
    let status = || -> Option<String> {
        rusqlite::Connection::open(&reportd)
            .unwrap()
            .query_row(
                "SELECT status FROM destinations WHERE d_r_id = 7",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(status().as_deref(), Some("sent"));
    let reply = lab
        .post(resend, &format!("csrf={csrf}"), Some(&session))
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(
        reply.location(),
        format!("/admin/reports?day={day}#report-7")
    );
    // Queued again for the report daemon, and in the audit log.
    assert_eq!(status(), None);
    let audit = lab.store.audit_log(1).unwrap();
    assert_eq!(audit[0].event, AuditEvent::ReportResent);
    assert_eq!(audit[0].actor, "admin root");
    assert!(
        audit[0].detail.contains("mailto:tlsrpt@example.net"),
        "{}",
        audit[0].detail
    );
    let unknown = lab
        .post(
            "/admin/reports/99/resend",
            &format!("csrf={csrf}"),
            Some(&session),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// The day page shows the site's own trend, sessions and failure rate per
/// day kept, beside the chosen day; the TLS pages name the suite in their
/// header.
#[tokio::test]
async fn the_day_page_shows_the_sites_trend_and_names_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let collector = dir.path().join("collectd.sqlite");
    collector_with(&collector, "2026-11-29", "a.example");
    let conn = rusqlite::Connection::open(&collector).unwrap();
    for (day, domain, total, failed) in [
        ("2026-11-29", "b.example", 15, 0),
        ("2026-11-30", "c.example", 8, 6),
    ] {
        conn.execute(
            "INSERT INTO finalresults (day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure) VALUES (?1, ?2, 'v=TLSRPTv1;rua=mailto:a@b.example', '{\"policy-type\": 9}', ?3, ?4)",
            rusqlite::params![day, domain, total, failed],
        )
        .unwrap();
    }
    let lab = lab_with(|config| {
        config.tlsrpt = tlsrpt_stats::Sources {
            collector: Some(tlsrpt_stats::CollectorSource::Sqlite(collector.clone())),
            reportd: None,
        }
    });
    let session = lab.login().await;
    let page = lab.get("/admin/tls?day=2026-11-30", Some(&session)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let trend = &page.body[page
        .body
        .find("id=\"site-trend\"")
        .expect("the trend table")..];
    let trend = &trend[..trend.find("</table>").unwrap()];
    // 2026-11-29: 5 + 15 sessions, 2 failed (10.0 %); 2026-11-30: 8, 6 failed.
    for row in [
        "<td>20</td><td>2</td><td>10.0 %</td>",
        "<td>8</td><td>6</td><td>75.0 %</td>",
    ] {
        assert!(trend.contains(row), "{row} in {trend}");
    }
    assert!(page.body.contains("id=\"site-chart\""), "{}", page.body);
    for uri in ["/admin/tls?day=2026-11-30", "/admin/tls/c.example"] {
        let page = lab.get(uri, Some(&session)).await;
        let header =
            &page.body[page.body.find("<header>").unwrap()..page.body.find("</header>").unwrap()];
        assert!(header.contains("mailtls"), "{uri}: {header}");
        assert!(!header.contains("(PostTLS)"), "{uri}: {header}");
    }
}
