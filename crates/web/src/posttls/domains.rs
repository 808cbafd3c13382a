//! `GET`/`POST /admin/domains`: the mandatory-TLS domains managed in the UI.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use posttls_policy::DomainSet;
use posttls_store::AuditEvent;
use serde::Deserialize;
use std::collections::HashMap;

use crate::admin::{admin_post, require_admin, Admin, WithCsrf, FORM_LOGOUT};
use crate::pages::internal;
use crate::{now, AppState, ClientIp};

/// The CSRF form name of the domains page.
const FORM_DOMAINS: &str = "admin-domains";

/// What an admin asked to do with a domain (`op=add` or `op=remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomainOp {
    Add,
    Remove,
}

impl DomainOp {
    fn parse(text: &str) -> Option<DomainOp> {
        match text {
            "add" => Some(DomainOp::Add),
            "remove" => Some(DomainOp::Remove),
            _ => None,
        }
    }
}

/// What a change did, carried to the page after the redirect as `done=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomainChange {
    Added,
    Removed,
    AlreadyListed,
    Configured,
    NotListed,
}

impl DomainChange {
    const ALL: [DomainChange; 5] = [
        DomainChange::Added,
        DomainChange::Removed,
        DomainChange::AlreadyListed,
        DomainChange::Configured,
        DomainChange::NotListed,
    ];

    /// The word in the redirect's query.
    fn code(self) -> &'static str {
        match self {
            DomainChange::Added => "added",
            DomainChange::Removed => "removed",
            DomainChange::AlreadyListed => "exists",
            DomainChange::Configured => "configured",
            DomainChange::NotListed => "unknown",
        }
    }

    fn notice(self) -> &'static str {
        match self {
            DomainChange::Added => {
                "Domain added: its recipients are never sent unencrypted from now on."
            }
            DomainChange::Removed => "Domain removed.",
            DomainChange::AlreadyListed => "That domain is already on the list.",
            DomainChange::Configured => {
                "That domain is in the configuration file already; it cannot be changed here."
            }
            DomainChange::NotListed => "That domain was not on the list.",
        }
    }
}

/// The notice for a `done=` code; none for a code this page never sends.
fn domains_notice(code: &str) -> Option<&'static str> {
    DomainChange::ALL
        .into_iter()
        .find(|change| change.code() == code)
        .map(DomainChange::notice)
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
    let Some(op) = DomainOp::parse(&form.op) else {
        return render_domains(
            &app,
            &admin,
            StatusCode::BAD_REQUEST,
            None,
            Some("Unknown operation."),
        )
        .await;
    };
    let entry = match op {
        DomainOp::Add => {
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
        DomainOp::Remove => form.domain.clone(),
    };
    let configured = app.config().mandatory_domains.entries().contains(&entry);
    let actor = admin.actor();
    let ip = ip.text();
    let result = app
        .with_store(move |s| {
            if configured {
                return Ok(DomainChange::Configured);
            }
            let t = now();
            if op == DomainOp::Add {
                if !s.add_mandatory_domain(&entry, &actor, t)? {
                    return Ok(DomainChange::AlreadyListed);
                }
                s.audit(
                    &actor,
                    ip.as_deref(),
                    None,
                    AuditEvent::MandatoryDomainAdded,
                    &entry,
                    t,
                )?;
                Ok(DomainChange::Added)
            } else {
                if !s.remove_mandatory_domain(&entry)? {
                    return Ok(DomainChange::NotListed);
                }
                s.audit(
                    &actor,
                    ip.as_deref(),
                    None,
                    AuditEvent::MandatoryDomainRemoved,
                    &entry,
                    t,
                )?;
                Ok(DomainChange::Removed)
            }
        })
        .await;
    match result {
        Ok(change) => Redirect::to(&format!(
            "{}/admin/domains?done={}",
            app.prefix(),
            change.code()
        ))
        .into_response(),
        Err(err) => internal(&app, &err),
    }
}

impl WithCsrf for DomainForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}
