//! The sender's page behind a notification link: `/confirm/{token}`.
//!
//! - GET verifies the token and shows either the message with one form
//!   (its CSRF token is bound to the link's token id and action), or what
//!   already happened to the message, or an honest error. It only reads.
//! - POST verifies the token and the CSRF token again, re-checks in one
//!   store transaction that the token still fits the message (same sender;
//!   for a release, exactly the recipients that may be released now), uses
//!   the token up, records the request for the worker and an audit entry,
//!   and redirects to the GET, which then shows the request's state.
//!
//! A token names its message by instance, queue id, arrival time and
//! sender, so a link cannot act on another message, even one that got the
//! same queue id later.

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use posttls_store::{
    ActionKind, ActionRow, ActionState, AuditEvent, MessageRow, MessageState, RecipientRow, Store,
    StoreError, TokenUseRow,
};
use posttls_token::{csrf_token, verify_csrf, Action, ActionToken, TokenError};
use serde::{Deserialize, Serialize};

use super::view::{self, ActionView, MessageView, RecipientGroups};
use crate::pages::internal;
use crate::{now, AppState, ClientIp};

/// The form of the confirmation page.
#[derive(Debug, Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    pub csrf: String,
}

/// Everything the store knows that matters for one token.
struct Lookup {
    message: Option<MessageRow>,
    recipients: Vec<RecipientRow>,
    actions: Vec<ActionRow>,
    stored_domains: Vec<String>,
    used: Option<TokenUseRow>,
}

fn lookup(store: &Store, token: &ActionToken) -> Result<Lookup, StoreError> {
    let message = store.find_message(&token.instance, &token.queue_id, token.arrival_time)?;
    let (recipients, actions) = match &message {
        Some(m) => (store.recipients(m.id)?, store.actions_of(m.id)?),
        None => (Vec::new(), Vec::new()),
    };
    Ok(Lookup {
        message,
        recipients,
        actions,
        stored_domains: store.mandatory_domains()?,
        used: store.token_use(&token.id())?,
    })
}

/// Where a token stands against the store.
#[derive(Debug, PartialEq, Eq)]
enum Situation {
    /// No such message.
    Unknown,
    /// The message does not match the token any more (or never did).
    NotBound(&'static str),
    /// This token was used before.
    Used,
    /// Something was decided or is being carried out, or the message is not
    /// waiting for a decision.
    Settled,
    /// A release with no recipient left to release.
    NothingToRelease,
    /// The sender may decide.
    Open,
}

const CHANGED: &str = "The message has changed since the notification was sent: the recipients \
     that wait because of encryption are not the same any more (some were delivered, or a \
     recipient's domain now requires encryption). Nothing was done. A reminder mail about the \
     message brings links that fit it, or ask the mail administrator.";

const OTHER_SENDER: &str = "This link does not belong to this message. Nothing was done. Use the \
     links from the notification mail about your message.";

fn situation(app: &AppState, token: &ActionToken, l: &Lookup) -> Situation {
    let Some(message) = &l.message else {
        return Situation::Unknown;
    };
    if message.sender != token.sender || l.used.as_ref().is_some_and(|u| u.message_id != message.id)
    {
        return Situation::NotBound(OTHER_SENDER);
    }
    if l.used.is_some() {
        return Situation::Used;
    }
    let decided = l
        .actions
        .iter()
        .any(|a| view::is_active(a) || a.state == ActionState::Done);
    if decided || message.state != MessageState::Deferred {
        return Situation::Settled;
    }
    let mandatory = app.mandatory_with(&l.stored_domains);
    let releasable = view::releasable(&l.recipients, &mandatory);
    let bound = token.bound_to(
        &message.instance,
        &message.queue_id,
        message.arrival_time,
        &message.sender,
        &releasable,
    );
    match token.action {
        // Deleting removes the whole message: the message must be the
        // token's, whatever became of its recipients since.
        Action::Delete => Situation::Open,
        Action::Release | Action::View if releasable.is_empty() => Situation::NothingToRelease,
        Action::Release | Action::View if !bound => Situation::NotBound(CHANGED),
        Action::Release | Action::View => Situation::Open,
    }
}

/// A verified token, or the page that says why not (boxed: a response is
/// large next to the token).
fn verified(
    app: &AppState,
    text: Result<Path<String>, PathRejection>,
) -> Result<(ActionToken, String), Box<Response>> {
    let pages = app.pages();
    let Ok(Path(text)) = text else {
        return Err(Box::new(token_error(app, TokenError::Malformed)));
    };
    let token =
        ActionToken::verify(app.key(), &text, now()).map_err(|e| Box::new(token_error(app, e)))?;
    if app
        .config()
        .instance
        .as_ref()
        .is_some_and(|instance| token.instance != *instance)
    {
        return Err(Box::new(pages.error(
            StatusCode::FORBIDDEN,
            "Link for another mail server",
            "This link was issued for another mail server than this one. Nothing was done. Open the link exactly as it is in the notification mail.",
        )));
    }
    Ok((token, text))
}

fn token_error(app: &AppState, err: TokenError) -> Response {
    let (status, title) = match err {
        TokenError::Expired => (StatusCode::GONE, "This link has expired"),
        TokenError::BadSignature => (StatusCode::FORBIDDEN, "This link is not valid"),
        TokenError::Malformed | TokenError::TooLarge { .. } => (
            StatusCode::BAD_REQUEST,
            "This link is incomplete or damaged",
        ),
    };
    let text = format!("{} Nothing was done.", capitalized(&err.to_string()));
    app.pages().error(status, title, &text)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect::<String>() + "."
    })
}

/// One form on the confirmation page.
#[derive(Serialize)]
struct FormView {
    url: String,
    csrf: String,
    action: &'static str,
    button: String,
}

fn form_for(app: &AppState, token: &ActionToken, text: &str, releasable: usize) -> FormView {
    let button = match token.action {
        Action::Release if releasable == 1 => "Send unencrypted to 1 recipient".to_owned(),
        Action::Release => format!("Send unencrypted to {releasable} recipients"),
        _ => "Delete message".to_owned(),
    };
    FormView {
        // Shown unescaped: the prefix holds only URL path characters, and
        // `text` is a verified or freshly signed token (base64url).
        url: format!("{}/confirm/{text}", app.prefix()),
        csrf: csrf_token(app.key(), &token.id(), token.action.as_str()),
        action: token.action.as_str(),
        button,
    }
}

/// `GET /confirm/{token}`: show, never change.
pub async fn show(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let (token, text) = match verified(&app, path) {
        Ok(v) => v,
        Err(page) => return *page,
    };
    let looked_up = {
        let token = token.clone();
        app.with_store(move |store| lookup(store, &token)).await
    };
    let l = match looked_up {
        Ok(l) => l,
        Err(err) => return internal(&app, &err),
    };
    match situation(&app, &token, &l) {
        Situation::Open => confirmation_page(&app, &token, &text, &l),
        other => situation_page(&app, other, &l, false),
    }
}

/// The page for everything but [`Situation::Open`].
fn situation_page(app: &AppState, situation: Situation, l: &Lookup, after_post: bool) -> Response {
    let pages = app.pages();
    let conflict = if after_post {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    match (situation, &l.message) {
        (Situation::Unknown, _) | (_, None) => pages.error(
            StatusCode::GONE,
            "Message not found",
            "This message is not known here (any more): it left the queue a while ago, or the link belongs to another installation. Nothing was done.",
        ),
        (Situation::NotBound(why), _) => pages.error(StatusCode::CONFLICT, "This link no longer fits the message", why),
        (Situation::NothingToRelease, Some(m)) => status_page(
            app,
            StatusCode::CONFLICT,
            "Nothing to send unencrypted",
            "No recipient of this message waits because of encryption any more, or those that do may never receive it unencrypted. Nothing was done.",
            m,
            l,
        ),
        // A second POST of a used link says so; the GET after the first
        // POST shows the request like any other decision.
        (Situation::Used, Some(m)) if after_post => status_page(
            app,
            conflict,
            "This link was already used",
            "Each link works once. Here is what happened with your message:",
            m,
            l,
        ),
        (Situation::Used | Situation::Settled | Situation::Open, Some(m)) => {
            let (headline, text) = settled_words(m, &l.actions);
            let status = if m.state == MessageState::Gone && l.actions.is_empty() {
                StatusCode::GONE
            } else {
                conflict
            };
            status_page(app, status, headline, text, m, l)
        }
    }
}

/// Headline and text for a message whose fate is decided or under way.
fn settled_words(m: &MessageRow, actions: &[ActionRow]) -> (&'static str, &'static str) {
    let latest = actions
        .iter()
        .rev()
        .find(|a| view::is_active(a) || a.state == ActionState::Done);
    match latest.map(|a| (a.action, a.state)) {
        Some((_, ActionState::Queued)) => ("Your request is queued", "The mail server carries it out within a minute or so; this page updates itself."),
        Some((_, ActionState::Running)) => ("Your request is being carried out", "This page updates itself."),
        Some((ActionKind::Release, _)) => ("Your message was sent unencrypted", "The recipients below that could not get it encrypted were sent the message without mandatory encryption."),
        Some((ActionKind::Delete, _)) => ("Your message was deleted", "The message was removed from the queue; nobody who was still waiting for it receives it."),
        _ if !actions.is_empty() && m.state == MessageState::Deferred => (
            "Your request was not carried out",
            "The reason is below. Your message is still in the queue as it was; a reminder mail brings new links, or ask the mail administrator.",
        ),
        _ => match m.state {
            MessageState::Released => ("Your message was sent unencrypted", "A decision was already made for this message."),
            MessageState::Deleted => ("Your message was deleted", "A decision was already made for this message."),
            MessageState::Returned => ("Your message was returned to you", "Its recipients require encryption, so it is never sent to them unencrypted; it was returned to you as undeliverable. Nothing was done."),
            MessageState::Gone => ("Your message is no longer in the queue", "It was delivered, expired and returned to you as undeliverable, or removed by an administrator. Nothing was done."),
            _ => ("No decision needed", "This message does not wait for a decision. Nothing was done."),
        },
    }
}

fn status_page(
    app: &AppState,
    status: StatusCode,
    headline: &str,
    text: &str,
    m: &MessageRow,
    l: &Lookup,
) -> Response {
    let mandatory = app.mandatory_with(&l.stored_domains);
    let actions: Vec<ActionView> = l.actions.iter().rev().map(ActionView::new).collect();
    let refresh = actions.iter().any(|a| a.active);
    app.pages().page(
        status,
        "status.html",
        context! {
            title => headline,
            headline,
            text,
            message => MessageView::new(m),
            recipients => RecipientGroups::new(&l.recipients, &mandatory),
            actions,
            refresh => if refresh { 3 } else { 0 },
        },
    )
}

fn confirmation_page(app: &AppState, token: &ActionToken, text: &str, l: &Lookup) -> Response {
    let Some(m) = &l.message else {
        return situation_page(app, Situation::Unknown, l, false);
    };
    let mandatory = app.mandatory_with(&l.stored_domains);
    let groups = RecipientGroups::new(&l.recipients, &mandatory);
    let forms: Vec<FormView> = match token.action {
        Action::View => [Action::Release, Action::Delete]
            .into_iter()
            .filter(|a| *a == Action::Delete || !groups.release.is_empty())
            .filter_map(|a| {
                let derived = token.with_action(a);
                let signed = derived.sign(app.key()).ok()?;
                Some(form_for(app, &derived, &signed, groups.release.len()))
            })
            .collect(),
        _ => vec![form_for(app, token, text, groups.release.len())],
    };
    let failed_before: Vec<ActionView> = l
        .actions
        .iter()
        .filter(|a| matches!(a.state, ActionState::Failed | ActionState::Refused))
        .map(ActionView::new)
        .collect();
    let title = match token.action {
        Action::Release => "Send your message unencrypted?",
        Action::Delete => "Delete your message?",
        Action::View => "Your message waits for encryption",
    };
    app.pages().page(
        StatusCode::OK,
        "confirm.html",
        context! {
            title,
            action => token.action.as_str(),
            message => MessageView::new(m),
            recipients => groups,
            forms,
            failed_before,
            expires => view::time(token.expires_at),
        },
    )
}

/// `POST /confirm/{token}`: the sender's decision.
pub async fn submit(
    State(app): State<AppState>,
    ip: ClientIp,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<ConfirmForm>, FormRejection>,
) -> Response {
    if let Err(rejection) = &form {
        if let Some(page) = crate::pages::body_too_large(&app, rejection) {
            return page;
        }
    }
    let (token, text) = match verified(&app, path) {
        Ok(v) => v,
        Err(page) => return *page,
    };
    if token.action == Action::View {
        return app.pages().error(
            StatusCode::BAD_REQUEST,
            "Use the buttons on the page",
            "This link only shows the message. Nothing was done. Open it and press one of the buttons.",
        );
    }
    let csrf_ok = form
        .is_ok_and(|Form(f)| verify_csrf(app.key(), &token.id(), token.action.as_str(), &f.csrf));
    if !csrf_ok {
        return app.pages().error(
            StatusCode::FORBIDDEN,
            "Please confirm on the page",
            "This request did not come from the confirmation page. Nothing was done. Open the link from the notification mail and press the button there.",
        );
    }
    let outcome = {
        let app2 = app.clone();
        let token = token.clone();
        let ip = ip.text();
        app.with_store(move |store| {
            store.in_transaction(|store| {
                let l = lookup(store, &token)?;
                let situation = situation(&app2, &token, &l);
                if situation != Situation::Open {
                    return Ok((situation, l));
                }
                let message = l.message.as_ref().expect("Open has a message");
                let t = now();
                if !store.use_token(
                    &token.id(),
                    message.id,
                    token.action.as_str(),
                    ip.as_deref(),
                    t,
                )? {
                    return Ok((Situation::Used, l));
                }
                let who = format!("sender {}", message.sender);
                let action = token.action.as_str();
                let kind = match token.action {
                    Action::Release => ActionKind::Release,
                    _ => ActionKind::Delete,
                };
                let id = store.request_action(
                    message.id,
                    kind,
                    &who,
                    ip.as_deref(),
                    &token.recipients,
                    t,
                )?;
                let detail = match token.action {
                    Action::Release => format!(
                        "action {id}, token {}, recipients: {}",
                        token.id(),
                        token.recipients.join(", ")
                    ),
                    _ => format!("action {id}, token {}", token.id()),
                };
                store.audit(
                    &who,
                    ip.as_deref(),
                    Some(message.id),
                    AuditEvent::Requested(kind),
                    &detail,
                    t,
                )?;
                log::info!(
                    "{action} of message {} ({}) requested by {who:?} from {}",
                    message.id,
                    message.queue_id,
                    ip.as_deref().unwrap_or("?")
                );
                Ok((Situation::Open, l))
            })
        })
        .await
    };
    match outcome {
        Ok((Situation::Open, _)) => {
            Redirect::to(&format!("{}/confirm/{text}", app.prefix())).into_response()
        }
        Ok((situation, l)) => situation_page(&app, situation, &l, true),
        Err(err) => internal(&app, &err),
    }
}
