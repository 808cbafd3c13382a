//! The admin pages: login, the dashboard, actions on messages, and the
//! mandatory-TLS domains managed in the UI.
//!
//! - Login checks an argon2id hash ([`posttls_auth::verify_password`]),
//!   after asking the [`posttls_auth::LoginThrottle`] for the user name and
//!   the client address: while either must wait, the attempt is refused
//!   without looking at the password. Attempts are checked one at a time.
//!   Failures are audited, except for names no admin can have (over 64
//!   bytes or with control characters), which are only logged.
//! - The session cookie is `HttpOnly; SameSite=Strict` (and `Secure` with
//!   `secure_cookies`); the store keeps only the SHA-256 of the session id.
//! - Every POST carries a CSRF token bound to the session (for the login
//!   form: to a random pre-login cookie). Requests without a live session
//!   are sent to the login page.
//! - Admin actions are recorded for the worker like the senders' ones,
//!   with `requested_by = "admin NAME"`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{COOKIE, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use minijinja::context;
use posttls_auth::{expired_session_cookie, session_cookie, verify_password, SessionId};
use posttls_policy::DomainSet;
use posttls_store::{ActionKind, AuditEvent, MessageState};
use posttls_token::{csrf_token, verify_csrf};
use serde::{Deserialize, Serialize};

use crate::pages::internal;
use crate::view::{self, ActionView, AuditView, MessageView, NotificationView, RecipientView};
use crate::{now, AppState, ClientIp, WebError, SESSION_LIFETIME};

/// Messages shown per state on the dashboard.
const MESSAGES_PER_STATE: i64 = 200;

/// Audit entries shown on the dashboard.
const AUDIT_ENTRIES: i64 = 200;

/// How long the login form's pre-session cookie lives.
const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(3600);

/// CSRF form names.
const FORM_LOGIN: &str = "admin-login";
const FORM_LOGOUT: &str = "admin-logout";
const FORM_MESSAGE: &str = "admin-message";
const FORM_DOMAINS: &str = "admin-domains";

/// The session cookie's name: `__Host-` (no Domain, Path=/, Secure) when
/// the cookie is Secure.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-posttls-session"
    } else {
        "posttls-session"
    }
}

/// The login form's cookie (the "session" its CSRF token is bound to).
pub fn login_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-posttls-login"
    } else {
        "posttls-login"
    }
}

/// The value of cookie `name` in the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// A logged-in admin.
struct Admin {
    name: String,
    session: SessionId,
}

impl Admin {
    fn csrf(&self, app: &AppState, form: &str) -> String {
        csrf_token(app.key(), self.session.as_str(), form)
    }

    fn csrf_ok(&self, app: &AppState, form: &str, token: &str) -> bool {
        verify_csrf(app.key(), self.session.as_str(), form, token)
    }

    fn actor(&self) -> String {
        format!("admin {}", self.name)
    }
}

async fn current_admin(app: &AppState, headers: &HeaderMap) -> Result<Option<Admin>, WebError> {
    let secure = app.config().secure_cookies;
    let Some(session) =
        cookie(headers, session_cookie_name(secure)).and_then(|v| SessionId::parse(&v))
    else {
        return Ok(None);
    };
    let digest = session.digest();
    let name = app
        .with_store(move |s| s.session_admin(&digest, now()))
        .await?;
    Ok(name.map(|name| Admin { name, session }))
}

/// The admin of the request, or the response to send instead: the login
/// page for anyone else.
async fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<Admin, Response> {
    match current_admin(app, headers).await {
        Ok(Some(admin)) => Ok(admin),
        Ok(None) => Err(Redirect::to(&format!("{}/admin/login", app.prefix())).into_response()),
        Err(err) => Err(internal(app, &err)),
    }
}

fn csrf_refused(app: &AppState) -> Response {
    app.pages().error(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This request did not come from a current PostTLS page (a missing or outdated form token). Nothing was changed. Go back, reload the page and try again.",
    )
}

// ---------------------------------------------------------------------------
// Login and logout
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub csrf: String,
}

/// The login page with a fresh pre-login cookie and its CSRF token.
fn login_form(
    app: &AppState,
    status: StatusCode,
    error: Option<&str>,
    extra: Vec<(axum::http::HeaderName, String)>,
) -> Response {
    let secure = app.config().secure_cookies;
    let nonce = SessionId::generate();
    let csrf = csrf_token(app.key(), nonce.as_str(), FORM_LOGIN);
    let page = app.pages().page(
        status,
        "login.html",
        context! { title => "Admin login", csrf, error },
    );
    let mut headers = vec![(
        SET_COOKIE,
        session_cookie(
            login_cookie_name(secure),
            &nonce,
            secure,
            LOGIN_FORM_LIFETIME,
        ),
    )];
    headers.extend(extra);
    (AppendHeaders(headers), page).into_response()
}

/// `GET /admin/login`.
pub async fn login_page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match current_admin(&app, &headers).await {
        Ok(Some(_)) => Redirect::to(&format!("{}/admin", app.prefix())).into_response(),
        Ok(None) => login_form(&app, StatusCode::OK, None, Vec::new()),
        Err(err) => internal(&app, &err),
    }
}

/// The longest admin name `adduser` accepts, in bytes.
const MAX_NAME_LEN: usize = 64;

/// Whether a submitted user name could be one (`adduser` allows letters,
/// digits and `._@-`); anything else is not looked up.
fn plausible_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// Whether a submitted name is worth a password check and an audit entry:
/// not longer than any admin name and without control characters. Others
/// are refused at once; no admin can have them, so answering faster than
/// for an unknown name gives nothing away.
fn bounded_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// A submitted name for the log: quoted and escaped, or only its length
/// when it is longer than any admin name.
fn name_for_log(name: &str) -> String {
    if name.len() <= MAX_NAME_LEN {
        format!("{name:?}")
    } else {
        format!("of {} bytes", name.len())
    }
}

/// Counts a failed login against the name and the address.
fn count_failure(app: &AppState, user_key: &str, ip_key: &str) {
    let mut throttle = app.throttle();
    let at = Instant::now();
    throttle.record_failure(user_key, at);
    throttle.record_failure(ip_key, at);
}

/// The answer to every failed login, whatever failed.
fn wrong_name_or_password(app: &AppState) -> Response {
    login_form(
        app,
        StatusCode::UNAUTHORIZED,
        Some("Wrong name or password."),
        Vec::new(),
    )
}

/// `POST /admin/login`.
pub async fn login(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if let Err(rejection) = &form {
        if let Some(page) = crate::pages::body_too_large(&app, rejection) {
            return page;
        }
    }
    let secure = app.config().secure_cookies;
    let Ok(Form(form)) = form else {
        return login_form(
            &app,
            StatusCode::BAD_REQUEST,
            Some("Enter your name and password."),
            Vec::new(),
        );
    };
    let nonce = cookie(&headers, login_cookie_name(secure)).and_then(|v| SessionId::parse(&v));
    if !nonce.is_some_and(|n| verify_csrf(app.key(), n.as_str(), FORM_LOGIN, &form.csrf)) {
        return login_form(
            &app,
            StatusCode::FORBIDDEN,
            Some("The login form had expired (or cookies are blocked for this site). Please try again."),
            Vec::new(),
        );
    }

    // One attempt at a time, so that parallel guesses cannot all pass the
    // throttle before the first of them is counted. The throttle cuts long
    // keys (posttls_auth::MAX_KEY_LEN).
    let _gate = app.login_gate().lock().await;
    let user_key = format!("user:{}", form.name);
    let ip_key = ip.throttle_key();
    let wait = {
        let throttle = app.throttle();
        let t = Instant::now();
        throttle
            .delay_for(&user_key, t)
            .max(throttle.delay_for(&ip_key, t))
    };
    if !wait.is_zero() {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        log::warn!(
            "login of name {} from {} refused: throttled for {seconds} s",
            name_for_log(&form.name),
            ip.text().unwrap_or_default()
        );
        return login_form(
            &app,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed logins. Try again in {seconds} seconds."
            )),
            vec![(RETRY_AFTER, seconds.to_string())],
        );
    }

    if !bounded_name(&form.name) {
        count_failure(&app, &user_key, &ip_key);
        log::warn!(
            "login failed from {}: name {}: no admin has such a name (not audited)",
            ip.text().as_deref().unwrap_or("?"),
            name_for_log(&form.name)
        );
        return wrong_name_or_password(&app);
    }

    let name = form.name.clone();
    let hash = if plausible_name(&name) {
        match app.with_store(move |s| s.admin_password_hash(&name)).await {
            Ok(hash) => hash,
            Err(err) => return internal(&app, &err),
        }
    } else {
        None
    };
    let known = hash.is_some();
    let checker = app.clone();
    let password = form.password;
    let matched = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| checker.dummy_hash().to_owned());
        verify_password(&hash, &password)
    })
    .await
    .unwrap_or(false)
        && known;

    let ip_text = ip.text();
    let t = now();
    if !matched {
        count_failure(&app, &user_key, &ip_key);
        let detail = format!(
            "name {:?}: {}",
            form.name,
            if known {
                "wrong password"
            } else {
                "no such admin"
            }
        );
        log::warn!(
            "login failed from {}: {detail}",
            ip_text.as_deref().unwrap_or("?")
        );
        if let Err(err) = app
            .with_store(move |s| {
                s.audit(
                    "login",
                    ip_text.as_deref(),
                    None,
                    AuditEvent::LoginFailed,
                    &detail,
                    t,
                )
            })
            .await
        {
            return internal(&app, &err);
        }
        return wrong_name_or_password(&app);
    }

    app.throttle().record_success(&user_key);
    let session = SessionId::generate();
    let digest = session.digest();
    let name = form.name.clone();
    let stored = app
        .with_store(move |s| {
            s.create_session(&digest, &name, t, t + SESSION_LIFETIME.as_secs() as i64)?;
            s.audit(
                &format!("admin {name}"),
                ip_text.as_deref(),
                None,
                AuditEvent::Login,
                "session started",
                t,
            )
        })
        .await;
    if let Err(err) = stored {
        return internal(&app, &err);
    }
    log::info!("admin {:?} logged in", form.name);
    (
        AppendHeaders([
            (
                SET_COOKIE,
                session_cookie(
                    session_cookie_name(secure),
                    &session,
                    secure,
                    SESSION_LIFETIME,
                ),
            ),
            (
                SET_COOKIE,
                expired_session_cookie(login_cookie_name(secure), secure),
            ),
        ]),
        Redirect::to(&format!("{}/admin", app.prefix())),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// A form that carries a CSRF token.
trait WithCsrf {
    fn csrf(&self) -> &str;
}

impl WithCsrf for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl WithCsrf for DomainForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The checks before any admin form is acted on, in this order: a body too
/// large gets its own page, no valid session the login page, a missing or
/// wrong CSRF token the refusal. Returns the admin and the form.
async fn admin_post<F: WithCsrf>(
    app: &AppState,
    headers: &HeaderMap,
    form: Result<Form<F>, FormRejection>,
    form_name: &str,
) -> Result<(Admin, F), Response> {
    if let Err(rejection) = &form {
        if let Some(page) = crate::pages::body_too_large(app, rejection) {
            return Err(page);
        }
    }
    let admin = require_admin(app, headers).await?;
    match form {
        Ok(Form(f)) if admin.csrf_ok(app, form_name, f.csrf()) => Ok((admin, f)),
        _ => Err(csrf_refused(app)),
    }
}

/// `POST /admin/logout`.
pub async fn logout(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let admin = match admin_post(&app, &headers, form, FORM_LOGOUT).await {
        Ok((admin, _)) => admin,
        Err(page) => return page,
    };
    let digest = admin.session.digest();
    let actor = admin.actor();
    let ip = ip.text();
    let done = app
        .with_store(move |s| {
            s.end_session(&digest)?;
            s.audit(
                &actor,
                ip.as_deref(),
                None,
                AuditEvent::Logout,
                "session ended",
                now(),
            )
        })
        .await;
    if let Err(err) = done {
        return internal(&app, &err);
    }
    let secure = app.config().secure_cookies;
    (
        AppendHeaders([(
            SET_COOKIE,
            expired_session_cookie(session_cookie_name(secure), secure),
        )]),
        Redirect::to(&format!("{}/admin/login", app.prefix())),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct MessageEntry {
    message: MessageView,
    recipients: Vec<RecipientView>,
    notifications: Vec<NotificationView>,
    actions: Vec<ActionView>,
    releasable: usize,
    can_release: bool,
    can_delete: bool,
}

#[derive(Debug, Serialize)]
struct Section {
    state: &'static str,
    title: &'static str,
    /// Shown unfolded.
    open: bool,
    messages: Vec<MessageEntry>,
}

/// `GET /admin`.
pub async fn dashboard(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let admin = match require_admin(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reader = app.clone();
    let data = app
        .with_store(move |store| {
            let mandatory = reader.mandatory_with(&store.mandatory_domains()?);
            let mut sections = Vec::new();
            for (state, title, open) in [
                (
                    MessageState::Deferred,
                    "Waiting for a decision (TLS failed)",
                    true,
                ),
                (MessageState::Released, "Sent unencrypted", true),
                (MessageState::Deleted, "Deleted", true),
                (
                    MessageState::Returned,
                    "Returned to the sender (mandatory-TLS recipients)",
                    true,
                ),
                (MessageState::Gone, "Left the queue", false),
                (
                    MessageState::Ignored,
                    "Ignored (not our sender, on hold, or not a TLS problem)",
                    false,
                ),
            ] {
                let mut messages = Vec::new();
                for m in store.messages_in(state, MESSAGES_PER_STATE)? {
                    let recipients = store.recipients(m.id)?;
                    let actions = store.actions_of(m.id)?;
                    let releasable = view::releasable(&recipients, &mandatory).len();
                    let idle =
                        state == MessageState::Deferred && !actions.iter().any(view::is_active);
                    messages.push(MessageEntry {
                        message: MessageView::new(&m),
                        recipients: recipients
                            .iter()
                            .map(|r| RecipientView::new(r, &mandatory))
                            .collect(),
                        notifications: store
                            .notifications(m.id)?
                            .iter()
                            .map(NotificationView::new)
                            .collect(),
                        actions: actions.iter().map(ActionView::new).collect(),
                        releasable,
                        can_release: idle && releasable > 0,
                        can_delete: idle,
                    });
                }
                sections.push(Section {
                    state: state.as_str(),
                    title,
                    open,
                    messages,
                });
            }
            let audit: Vec<AuditView> = store
                .audit_log(AUDIT_ENTRIES)?
                .iter()
                .map(AuditView::new)
                .collect();
            Ok((sections, audit))
        })
        .await;
    let (sections, audit) = match data {
        Ok(d) => d,
        Err(err) => return internal(&app, &err),
    };
    let refresh = sections
        .iter()
        .flat_map(|s| &s.messages)
        .flat_map(|m| &m.actions)
        .any(|a| a.active);
    app.pages().page(
        StatusCode::OK,
        "dashboard.html",
        context! {
            title => "PostTLS dashboard",
            admin => admin.name.clone(),
            sections,
            audit,
            csrf_message => admin.csrf(&app, FORM_MESSAGE),
            csrf_logout => admin.csrf(&app, FORM_LOGOUT),
            refresh => if refresh { 5 } else { 0 },
        },
    )
}

/// `POST /admin/messages/{id}/{release|delete}`.
pub async fn message_action(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    path: Result<Path<(i64, String)>, PathRejection>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let admin = match admin_post(&app, &headers, form, FORM_MESSAGE).await {
        Ok((admin, _)) => admin,
        Err(page) => return page,
    };
    let (id, action) = match path {
        Ok(Path((id, action))) => match action.parse::<ActionKind>() {
            Ok(action) => (id, action),
            Err(_) => return crate::pages::not_found(State(app)).await,
        },
        _ => return crate::pages::not_found(State(app)).await,
    };
    let reader = app.clone();
    let actor = admin.actor();
    let ip = ip.text();
    let result = app
        .with_store(move |store| {
            store.in_transaction(|store| {
                let Some(m) = store.message(id)? else {
                    return Ok(Err((StatusCode::NOT_FOUND, "No such message.".to_owned())));
                };
                if m.state != MessageState::Deferred {
                    return Ok(Err((
                        StatusCode::CONFLICT,
                        format!(
                            "Nothing was done: the message is {}.",
                            view::message_state_words(m.state)
                        ),
                    )));
                }
                if let Some(a) = store.actions_of(id)?.iter().find(|a| view::is_active(a)) {
                    return Ok(Err((
                        StatusCode::CONFLICT,
                        format!(
                            "Nothing was done: a {} requested by {} is still {}.",
                            a.action, a.requested_by, a.state
                        ),
                    )));
                }
                let mandatory = reader.mandatory_with(&store.mandatory_domains()?);
                let releasable = view::releasable(&store.recipients(id)?, &mandatory);
                if action == ActionKind::Release && releasable.is_empty() {
                    return Ok(Err((
                        StatusCode::CONFLICT,
                        "Nothing was done: no recipient of this message may be sent unencrypted."
                            .to_owned(),
                    )));
                }
                let t = now();
                let action_id =
                    store.request_action(id, action, &actor, ip.as_deref(), &releasable, t)?;
                let detail = if action == ActionKind::Release {
                    format!("action {action_id}, recipients: {}", releasable.join(", "))
                } else {
                    format!("action {action_id}")
                };
                store.audit(
                    &actor,
                    ip.as_deref(),
                    Some(id),
                    AuditEvent::Requested(action),
                    &detail,
                    t,
                )?;
                log::info!(
                    "{action} of message {id} ({}) requested by {actor:?}",
                    m.queue_id
                );
                Ok(Ok(()))
            })
        })
        .await;
    match result {
        Ok(Ok(())) => Redirect::to(&format!("{}/admin#message-{id}", app.prefix())).into_response(),
        Ok(Err((status, text))) => app.pages().error(status, "Not done", &text),
        Err(err) => internal(&app, &err),
    }
}

// ---------------------------------------------------------------------------
// Mandatory domains
// ---------------------------------------------------------------------------

fn domains_notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "added" => "Domain added: its recipients are never sent unencrypted from now on.",
        "removed" => "Domain removed.",
        "exists" => "That domain is already on the list.",
        "configured" => {
            "That domain is in the configuration file already; it cannot be changed here."
        }
        "unknown" => "That domain was not on the list.",
        _ => return None,
    })
}

/// `GET /admin/domains`.
pub async fn domains_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let admin = match require_admin(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let notice = query
        .ok()
        .and_then(|Query(q)| q.get("done").and_then(|c| domains_notice(c)));
    render_domains(&app, &admin, StatusCode::OK, notice, None).await
}

async fn render_domains(
    app: &AppState,
    admin: &Admin,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let stored = match app.with_store(|s| s.mandatory_domains()).await {
        Ok(d) => d,
        Err(err) => return internal(app, &err),
    };
    app.pages().page(
        status,
        "domains.html",
        context! {
            title => "Mandatory-TLS domains",
            admin => admin.name.clone(),
            configured => app.config().mandatory_domains.entries(),
            stored,
            notice,
            error,
            csrf => admin.csrf(app, FORM_DOMAINS),
            csrf_logout => admin.csrf(app, FORM_LOGOUT),
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct DomainForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub domain: String,
}

/// `POST /admin/domains`: `op=add` or `op=remove` one `domain`.
pub async fn domains_change(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    form: Result<Form<DomainForm>, FormRejection>,
) -> Response {
    let (admin, form) = match admin_post(&app, &headers, form, FORM_DOMAINS).await {
        Ok(posted) => posted,
        Err(page) => return page,
    };
    let entry = match form.op.as_str() {
        "add" => {
            let mut set = DomainSet::new();
            match set.insert(&form.domain) {
                Ok(_) if form.domain.len() <= 254 => set.entries().remove(0),
                Ok(_) => {
                    return render_domains(
                        &app,
                        &admin,
                        StatusCode::BAD_REQUEST,
                        None,
                        Some("A domain has at most 253 characters."),
                    )
                    .await
                }
                Err(err) => {
                    let text = format!("Not added: {err}.");
                    return render_domains(
                        &app,
                        &admin,
                        StatusCode::BAD_REQUEST,
                        None,
                        Some(&text),
                    )
                    .await;
                }
            }
        }
        "remove" => form.domain.clone(),
        _ => {
            return render_domains(
                &app,
                &admin,
                StatusCode::BAD_REQUEST,
                None,
                Some("Unknown operation."),
            )
            .await
        }
    };
    let configured = app.config().mandatory_domains.entries().contains(&entry);
    let actor = admin.actor();
    let ip = ip.text();
    let op = form.op.clone();
    let result = app
        .with_store(move |s| {
            if configured {
                return Ok("configured");
            }
            let t = now();
            if op == "add" {
                if !s.add_mandatory_domain(&entry, &actor, t)? {
                    return Ok("exists");
                }
                s.audit(
                    &actor,
                    ip.as_deref(),
                    None,
                    AuditEvent::MandatoryDomainAdded,
                    &entry,
                    t,
                )?;
                Ok("added")
            } else {
                if !s.remove_mandatory_domain(&entry)? {
                    return Ok("unknown");
                }
                s.audit(
                    &actor,
                    ip.as_deref(),
                    None,
                    AuditEvent::MandatoryDomainRemoved,
                    &entry,
                    t,
                )?;
                Ok("removed")
            }
        })
        .await;
    match result {
        Ok(code) => {
            Redirect::to(&format!("{}/admin/domains?done={code}", app.prefix())).into_response()
        }
        Err(err) => internal(&app, &err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            "a=1; posttls-session=xyz; posttls-session2=no"
                .parse()
                .unwrap(),
        );
        headers.append(COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&headers, "posttls-session").as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&headers, "posttls"), None);
    }

    #[test]
    fn names() {
        assert!(plausible_name("root") && plausible_name("a.b-c_d@example.org"));
        for bad in ["", "a b", "$(id)", "a\nb", "<b>", &"x".repeat(65)] {
            assert!(!plausible_name(bad), "{bad:?}");
        }
        for bounded in ["", "root", "a b", "$(id)", "<b>", "Jürgen", &"x".repeat(64)] {
            assert!(bounded_name(bounded), "{bounded:?}");
        }
        let long = "x".repeat(65);
        for unbounded in [&long, "a\nb", "a\0", "\u{7f}", "a\u{85}b", &"ü".repeat(33)] {
            assert!(!bounded_name(unbounded), "{unbounded:?}");
        }
        assert_eq!(name_for_log("a\nb"), "\"a\\nb\"");
        assert_eq!(name_for_log(&long), "of 65 bytes");
    }
}
