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

use super::*;
use crate::pages::internal;
use crate::{now, AppState, ClientIp};

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

impl WithCsrf for DomainForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}
