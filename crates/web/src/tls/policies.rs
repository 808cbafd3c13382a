//! The MTA-STS policies `mailtls policyd` has cached (its `database`, read
//! only): `GET /admin/policies` lists every domain, the most recently
//! updated first, and `/admin/policies.json` gives the same to scripts;
//! the domain page (`/admin/tls/DOMAIN`) shows its own.
//!
//! Each shows what Postfix is told and why: the mode, the MX patterns, the
//! policy's age and expiry, and the last failed fetch with its error (RFC
//! 8461 section 3.3: a policy host that fails keeps the cached policy in
//! force until it expires).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use minijinja::context;
use policyd_store::{Access, Entry, PolicyDb};
use serde::Serialize;

use super::{domain_href, json, json_refused, SUITE};
use crate::admin::{current_admin, require_admin, FORM_LOGOUT};
use crate::pages::internal;
use crate::{AppState, WebError};

/// Domains listed at most (the most recently updated).
pub const POLICIES_SHOWN: usize = 1000;

/// One domain's cached policy as shown.
#[derive(Debug, Serialize)]
pub struct PolicyRow {
    domain: String,
    href: String,
    /// `enforce`, `testing`, `none`; `None` when no policy was ever fetched.
    mode: Option<&'static str>,
    id: Option<String>,
    mx: Vec<String>,
    fetched: Option<String>,
    age: Option<String>,
    expires: Option<String>,
    expired: bool,
    last_failed_fetch: Option<String>,
    last_error: Option<String>,
}

impl PolicyRow {
    pub fn new(domain: &str, entry: &Entry, now: DateTime<Utc>, prefix: &str) -> PolicyRow {
        let policy = entry.policy.as_ref();
        PolicyRow {
            domain: domain.to_string(),
            href: domain_href(prefix, domain),
            mode: policy.map(|p| p.policy.mode().as_str()),
            id: policy.map(|p| p.id.clone()),
            mx: policy
                .map(|p| p.policy.mx().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            fetched: policy.map(|p| time(p.fetched_at)),
            age: policy.map(|p| age_words(now - p.fetched_at)),
            expires: policy.map(|p| time(p.expires_at)),
            expired: policy.is_some_and(|p| !p.is_valid(now)),
            last_failed_fetch: entry.last_failed_fetch.map(time),
            last_error: entry.last_error.clone(),
        }
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// "3 d 4 h", "2 h 5 min", "42 s": the two largest units.
fn age_words(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// What the cache holds: `None` when no `policyd_database` is configured,
/// the error's words when it cannot be read (the policy server may not
/// run here: not a failure of the page).
pub async fn cached(
    app: &AppState,
    domain: Option<String>,
) -> Result<Option<Result<Vec<(String, Entry)>, String>>, WebError> {
    let Some(database) = app.config().policyd.clone() else {
        return Ok(None);
    };
    let now = Utc::now();
    let read =
        tokio::task::spawn_blocking(move || -> policyd_store::Result<Vec<(String, Entry)>> {
            let mut db = PolicyDb::open(&database, Access::Reader)?;
            match domain {
                Some(domain) => Ok(db
                    .get(&domain, now)?
                    .map(|entry| vec![(domain, entry)])
                    .unwrap_or_default()),
                None => db.recent(POLICIES_SHOWN, now),
            }
        })
        .await
        .map_err(|e| WebError::Task(e.to_string()))?;
    Ok(Some(read.map_err(|e| e.to_string())))
}

/// `GET /admin/policies`.
pub async fn policies_page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let admin = match require_admin(&app, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let found = match cached(&app, None).await {
        Ok(found) => found,
        Err(err) => return internal(&app, &err),
    };
    let now = Utc::now();
    let prefix = app.prefix().to_owned();
    let (rows, error) = match &found {
        Some(Ok(entries)) => (
            entries
                .iter()
                .map(|(d, e)| PolicyRow::new(d, e, now, &prefix))
                .collect(),
            None,
        ),
        Some(Err(e)) => (Vec::new(), Some(e.clone())),
        None => (Vec::new(), None),
    };
    app.pages().page(
        StatusCode::OK,
        "policies.html",
        context! {
            title => "MTA-STS policies",
            brand => SUITE,
            admin => admin.name.clone(),
            csrf_logout => admin.csrf(&app, FORM_LOGOUT),
            configured => found.is_some(),
            error,
            rows,
            shown => POLICIES_SHOWN,
        },
    )
}

/// `GET /admin/policies.json`.
pub async fn policies_json(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match current_admin(&app, &headers).await {
        Ok(Some(_)) => {}
        Ok(None) => return json_refused(),
        Err(err) => return internal(&app, &err),
    }
    let now = Utc::now();
    let prefix = app.prefix().to_owned();
    match cached(&app, None).await {
        Ok(None) => json(
            StatusCode::OK,
            &serde_json::json!({"configured": false, "policies": []}),
        ),
        Ok(Some(Ok(entries))) => json(
            StatusCode::OK,
            &serde_json::json!({
                "configured": true,
                "policies": entries.iter().map(|(d, e)| PolicyRow::new(d, e, now, &prefix)).collect::<Vec<_>>(),
            }),
        ),
        Ok(Some(Err(error))) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"configured": true, "error": error}),
        ),
        Err(err) => internal(&app, &err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        let s = chrono::Duration::seconds;
        assert_eq!(age_words(s(42)), "42 s");
        assert_eq!(age_words(s(125)), "2 min");
        assert_eq!(age_words(s(2 * 3600 + 300)), "2 h 5 min");
        assert_eq!(age_words(s(3 * 86_400 + 4 * 3600 + 59)), "3 d 4 h");
        assert_eq!(age_words(s(-5)), "0 s");
    }
}
