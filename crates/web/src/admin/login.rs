//! `GET`/`POST /admin/login` and `POST /admin/logout`.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use minijinja::context;
use posttls_auth::{expired_session_cookie, session_cookie, verify_password, Name, SessionId};
use posttls_store::AuditEvent;
use posttls_token::{csrf_token, verify_csrf};
use serde::Deserialize;
use std::time::Instant;

use super::*;
use crate::pages::internal;
use crate::{now, AppState, ClientIp, MAX_WAITING_CHECKS, SESSION_LIFETIME};

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

/// A login attempt the throttle let through, until it is counted: one of
/// a name and of an address is checked at a time. Dropped without an
/// outcome (an internal error), it is ended uncounted.
struct Attempt<'a> {
    app: &'a AppState,
    name: &'a str,
    address: String,
    ended: bool,
}

impl<'a> Attempt<'a> {
    /// The attempt of `name` from `ip`, or the page that refuses it.
    fn begin(
        app: &'a AppState,
        name: &'a str,
        ip: &ClientIp,
    ) -> Result<Attempt<'a>, Box<Response>> {
        let address = ip.throttle_key();
        match app.throttle().begin(name, &address, Instant::now()) {
            Ok(()) => Ok(Attempt {
                app,
                name,
                address,
                ended: false,
            }),
            Err(wait) => Err(Box::new(throttled(app, wait, name, ip))),
        }
    }

    /// Counts the failure against the name and the address.
    fn failed(mut self, name: Name) {
        self.ended = true;
        self.app
            .throttle()
            .failed(self.name, name, &self.address, Instant::now());
    }

    fn succeeded(mut self) {
        self.ended = true;
        self.app.throttle().succeeded(self.name, &self.address);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.app.throttle().abandoned(self.name, &self.address);
        }
    }
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
    // One attempt of a name and of an address at a time, so that parallel
    // guesses cannot all pass the throttle before the first of them is
    // counted. The throttle cuts long keys (posttls_auth::MAX_KEY_LEN).
    let attempt = match Attempt::begin(&app, &form.name, &ip) {
        Ok(attempt) => attempt,
        Err(page) => return *page,
    };
    if !bounded_name(&form.name) {
        attempt.failed(Name::Unknown);
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
    let result = match check {
        PasswordCheck::Matched => {
            attempt.succeeded();
            start_session(&app, &form.name, ip.text()).await
        }
        PasswordCheck::WrongPassword => {
            attempt.failed(Name::Admin);
            refuse(&app, &form.name, check, ip.text()).await
        }
        PasswordCheck::NoSuchAdmin => {
            attempt.failed(Name::Unknown);
            refuse(&app, &form.name, check, ip.text()).await
        }
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

/// The refusal of an attempt that must wait `wait`.
fn throttled(app: &AppState, wait: std::time::Duration, name: &str, ip: &ClientIp) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    log::warn!(
        "login of name {} from {} refused: throttled for {seconds} s",
        name_for_log(name),
        ip.text().unwrap_or_default()
    );
    login_form(
        app,
        StatusCode::TOO_MANY_REQUESTS,
        Some(&format!(
            "Too many failed logins. Try again in {seconds} seconds."
        )),
        vec![(RETRY_AFTER, seconds.to_string())],
    )
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
///
/// The checks of existing admins' names and of other names take turns on
/// two lanes of one check each, so that a flood of guessed names (each an
/// argon2 check, tens of milliseconds of CPU) never queues in front of an
/// admin's login: the admins' lane holds at most one attempt per admin
/// name. When [`MAX_WAITING_CHECKS`] checks of unknown names already wait,
/// a further one is answered at once, unchecked (under such a flood the
/// answer's speed can tell that a name is no admin's; names are not the
/// secret, passwords are).
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
    let lanes = app.check_lanes();
    // Held until the check is over: the place in the queue, then the lane.
    let waiting = if known {
        None
    } else {
        let Some(waiting) = lanes.enqueue_other() else {
            log::warn!(
                "more than {MAX_WAITING_CHECKS} password checks of unknown names waiting: \
                 answered unchecked"
            );
            return Ok(PasswordCheck::NoSuchAdmin);
        };
        Some(waiting)
    };
    let lane = if known { &lanes.admins } else { &lanes.others };
    let permit = lane
        .acquire()
        .await
        .map_err(|e| WebError::Task(e.to_string()))?;
    let checker = app.clone();
    let matched = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| checker.dummy_hash().to_owned());
        verify_password(&hash, &password)
    })
    .await
    .unwrap_or(false);
    drop((permit, waiting));
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
