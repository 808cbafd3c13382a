//! `GET`/`POST /admin/login` and `POST /admin/logout`.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use minijinja::context;
use posttls_auth::{expired_session_cookie, session_cookie, verify_password, SessionId};
use posttls_store::AuditEvent;
use posttls_token::{csrf_token, verify_csrf};
use serde::Deserialize;
use std::time::Instant;

use super::*;
use crate::pages::internal;
use crate::{now, AppState, ClientIp, SESSION_LIFETIME};

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
fn count_failure(app: &AppState, keys: &ThrottleKeys) {
    let mut throttle = app.throttle();
    let at = Instant::now();
    throttle.record_failure(&keys.user, at);
    throttle.record_failure(&keys.ip, at);
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

/// `POST /admin/login`: the form checked, the throttle asked, the
/// password verified, then a session started or the failure counted.
pub async fn login(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match checked_form(&app, &headers, form) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    // One attempt at a time, so that parallel guesses cannot all pass the
    // throttle before the first of them is counted. The throttle cuts long
    // keys (posttls_auth::MAX_KEY_LEN).
    let _gate = app.login_gate().lock().await;
    let keys = ThrottleKeys {
        user: format!("user:{}", form.name),
        ip: ip.throttle_key(),
    };
    if let Some(page) = throttled(&app, &keys, &form.name, &ip) {
        return page;
    }
    if !bounded_name(&form.name) {
        count_failure(&app, &keys);
        log::warn!(
            "login failed from {}: name {}: no admin has such a name (not audited)",
            ip.text().as_deref().unwrap_or("?"),
            name_for_log(&form.name)
        );
        return wrong_name_or_password(&app);
    }
    let check = match check_password(&app, &form.name, form.password).await {
        Ok(check) => check,
        Err(err) => return internal(&app, &err),
    };
    let result = if check == PasswordCheck::Matched {
        app.throttle().record_success(&keys.user);
        start_session(&app, &form.name, ip.text()).await
    } else {
        count_failure(&app, &keys);
        refuse(&app, &form.name, check, ip.text()).await
    };
    result.unwrap_or_else(|err| internal(&app, &err))
}

/// The login form, if it came whole and with the CSRF token of the
/// pre-login cookie; otherwise the page that says what to do.
fn checked_form(
    app: &AppState,
    headers: &HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<LoginForm, Box<Response>> {
    if let Err(rejection) = &form {
        if let Some(page) = crate::pages::body_too_large(app, rejection) {
            return Err(Box::new(page));
        }
    }
    let Ok(Form(form)) = form else {
        return Err(Box::new(login_form(
            app,
            StatusCode::BAD_REQUEST,
            Some("Enter your name and password."),
            Vec::new(),
        )));
    };
    let secure = app.config().secure_cookies;
    let nonce = cookie(headers, login_cookie_name(secure)).and_then(|v| SessionId::parse(&v));
    if !nonce.is_some_and(|n| verify_csrf(app.key(), n.as_str(), FORM_LOGIN, &form.csrf)) {
        return Err(Box::new(login_form(
            app,
            StatusCode::FORBIDDEN,
            Some("The login form had expired (or cookies are blocked for this site). Please try again."),
            Vec::new(),
        )));
    }
    Ok(form)
}

/// What failed logins are counted against.
struct ThrottleKeys {
    user: String,
    ip: String,
}

/// The refusal while the name or the address must wait, if either must.
fn throttled(app: &AppState, keys: &ThrottleKeys, name: &str, ip: &ClientIp) -> Option<Response> {
    let wait = {
        let throttle = app.throttle();
        let t = Instant::now();
        throttle
            .delay_for(&keys.user, t)
            .max(throttle.delay_for(&keys.ip, t))
    };
    if wait.is_zero() {
        return None;
    }
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    log::warn!(
        "login of name {} from {} refused: throttled for {seconds} s",
        name_for_log(name),
        ip.text().unwrap_or_default()
    );
    Some(login_form(
        app,
        StatusCode::TOO_MANY_REQUESTS,
        Some(&format!(
            "Too many failed logins. Try again in {seconds} seconds."
        )),
        vec![(RETRY_AFTER, seconds.to_string())],
    ))
}

/// How a password check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordCheck {
    Matched,
    WrongPassword,
    NoSuchAdmin,
}

/// Verifies `password` for admin `name`. An unknown name is checked
/// against a dummy hash, so that it takes as long as a known one.
async fn check_password(
    app: &AppState,
    name: &str,
    password: String,
) -> Result<PasswordCheck, WebError> {
    let hash = if plausible_name(name) {
        let name = name.to_string();
        app.with_store(move |s| s.admin_password_hash(&name))
            .await?
    } else {
        None
    };
    let known = hash.is_some();
    let checker = app.clone();
    let matched = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| checker.dummy_hash().to_owned());
        verify_password(&hash, &password)
    })
    .await
    .unwrap_or(false);
    Ok(match (known, matched) {
        (true, true) => PasswordCheck::Matched,
        (true, false) => PasswordCheck::WrongPassword,
        (false, _) => PasswordCheck::NoSuchAdmin,
    })
}

/// A failed login: logged, audited, answered like every other failure.
async fn refuse(
    app: &AppState,
    name: &str,
    check: PasswordCheck,
    ip_text: Option<String>,
) -> Result<Response, WebError> {
    let why = if check == PasswordCheck::WrongPassword {
        "wrong password"
    } else {
        "no such admin"
    };
    let detail = format!("name {name:?}: {why}");
    log::warn!(
        "login failed from {}: {detail}",
        ip_text.as_deref().unwrap_or("?")
    );
    let t = now();
    app.with_store(move |s| {
        s.audit(
            "login",
            ip_text.as_deref(),
            None,
            AuditEvent::LoginFailed,
            &detail,
            t,
        )
    })
    .await?;
    Ok(wrong_name_or_password(app))
}

/// A new session for admin `name`: stored (only its digest), audited, and
/// its cookie set in place of the pre-login one.
async fn start_session(
    app: &AppState,
    name: &str,
    ip_text: Option<String>,
) -> Result<Response, WebError> {
    let session = SessionId::generate();
    let digest = session.digest();
    let owned = name.to_string();
    let t = now();
    app.with_store(move |s| {
        s.create_session(&digest, &owned, t, t + SESSION_LIFETIME.as_secs() as i64)?;
        s.audit(
            &format!("admin {owned}"),
            ip_text.as_deref(),
            None,
            AuditEvent::Login,
            "session started",
            t,
        )
    })
    .await?;
    log::info!("admin {name:?} logged in");
    let secure = app.config().secure_cookies;
    Ok((
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
        .into_response())
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

#[cfg(test)]
mod tests {
    use super::*;

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
