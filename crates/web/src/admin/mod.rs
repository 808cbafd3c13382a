//! The one admin login of every admin page (PostTLS's in [`crate::posttls`],
//! the Outbound TLS view in [`crate::tls`]), and what they all share: the
//! session, [`admin_post`]'s checks and the CSRF tokens of their forms.
//!
//! - Login checks an argon2id hash ([`posttls_auth::verify_password`]),
//!   after asking the [`posttls_auth::LoginThrottle`] for the user name and
//!   the client address: while either must wait, the attempt is refused
//!   without looking at the password. One attempt of a name and of an
//!   address is checked at a time; admins' names and other names have a
//!   password-check lane each.
//!   Failures are audited, except for names no admin can have (over 64
//!   bytes or with control characters), which are only logged.
//! - The session cookie is `HttpOnly; SameSite=Strict` (and `Secure` with
//!   `secure_cookies`); the store keeps only the SHA-256 of the session id.
//! - Every POST carries a CSRF token bound to the session (for the login
//!   form: to a random pre-login cookie). Requests without a live session
//!   are sent to the login page.
//! - Admin actions are recorded for the worker like the senders' ones,
//!   with `requested_by = "admin NAME"`.
//!
//! [`login`] has the login and logout pages; this module the rest.

mod login;

pub use login::{login, login_page, logout, LoginForm};

use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::Form;
use axum::http::header::COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use posttls_auth::SessionId;
use posttls_token::{csrf_token, verify_csrf};
use serde::Deserialize;

use crate::pages::internal;
use crate::{now, AppState, WebError};

/// How long the login form's pre-session cookie lives.
const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(3600);

/// CSRF form names.
const FORM_LOGIN: &str = "admin-login";
/// The logout form every admin page carries.
pub(crate) const FORM_LOGOUT: &str = "admin-logout";

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
pub(crate) struct Admin {
    pub(crate) name: String,
    session: SessionId,
}

impl Admin {
    /// The CSRF token of form `form` on this admin's pages.
    pub(crate) fn csrf(&self, app: &AppState, form: &str) -> String {
        csrf_token(app.key(), self.session.as_str(), form)
    }

    fn csrf_ok(&self, app: &AppState, form: &str, token: &str) -> bool {
        verify_csrf(app.key(), self.session.as_str(), form, token)
    }

    /// Who did it, as the audit log and the actions name an admin.
    pub(crate) fn actor(&self) -> String {
        format!("admin {}", self.name)
    }
}

/// The admin whose session the request carries, if any.
pub(crate) async fn current_admin(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Admin>, WebError> {
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
pub(crate) async fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<Admin, Response> {
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

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// A form that carries a CSRF token.
pub(crate) trait WithCsrf {
    fn csrf(&self) -> &str;
}

impl WithCsrf for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The checks before any admin form is acted on, in this order: a body too
/// large gets its own page, no valid session the login page, a missing or
/// wrong CSRF token the refusal. Returns the admin and the form.
pub(crate) async fn admin_post<F: WithCsrf>(
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
}
