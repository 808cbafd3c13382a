//! `GET /admin`: the messages by state, and `POST /admin/messages/ID/ACTION`.

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use posttls_store::{ActionKind, AuditEvent, MessageState};
use serde::Serialize;

use super::view::{self, ActionView, AuditView, MessageView, NotificationView, RecipientView};
use crate::admin::{admin_post, require_admin, CsrfForm, FORM_LOGOUT};
use crate::pages::internal;
use crate::{now, AppState, ClientIp};

/// Messages shown per state on the dashboard.
const MESSAGES_PER_STATE: i64 = 200;

/// Audit entries shown on the dashboard.
const AUDIT_ENTRIES: i64 = 200;

/// The CSRF form name of the actions on messages.
const FORM_MESSAGE: &str = "admin-message";

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
