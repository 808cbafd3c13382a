//! PostTLS's Prometheus metrics, counted from the database: served at
//! `/metrics` on the web listener (to local clients only, see
//! [`may_read_metrics`]) and by `posttls worker` on `metrics_listen`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use posttls_store::{ActionKind, ActionState, Counts, MessageState, NotificationKind, SendResult};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::AppState;

/// The states of an action that has ended; the others are still open.
const FINISHED: [ActionState; 3] = [ActionState::Done, ActionState::Refused, ActionState::Failed];
const UNFINISHED: [ActionState; 2] = [ActionState::Queued, ActionState::Running];

/// The text exposition of `counts`. Every label combination is written,
/// zeros included, so that a series exists before its first event.
pub fn render(counts: &Counts) -> String {
    let messages = IntGaugeVec::new(
        Opts::new(
            "posttls_messages",
            "Messages PostTLS has seen, by state: deferred (waiting for TLS; the sender is told), \
             ignored (not ours or not TLS), released, deleted, returned, gone (left the queue)",
        ),
        &["state"],
    )
    .expect("valid metric");
    for &state in MessageState::ALL {
        let n = counts.messages.get(&state).copied().unwrap_or(0);
        messages
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let notifications = IntCounterVec::new(
        Opts::new(
            "posttls_notifications_total",
            "Notifications to senders, by kind (first, reminder, expired, mandatory) and outcome \
             (sent, or failed and tried again)",
        ),
        &["kind", "outcome"],
    )
    .expect("valid metric");
    for &kind in NotificationKind::ALL {
        for &result in SendResult::ALL {
            let n = counts.notifications.get(&(kind, result)).copied();
            notifications
                .with_label_values(&[kind.as_str(), result.as_str()])
                .inc_by(n.unwrap_or(0));
        }
    }
    let actions = IntCounterVec::new(
        Opts::new(
            "posttls_actions_total",
            "Finished release and delete requests, by action and outcome: done, refused (the \
             queue or the policy did not allow it) or failed (the queue is as it was)",
        ),
        &["action", "outcome"],
    )
    .expect("valid metric");
    let unfinished = IntGaugeVec::new(
        Opts::new(
            "posttls_actions_unfinished",
            "Release and delete requests the worker has not finished, by action and state \
             (queued, running)",
        ),
        &["action", "state"],
    )
    .expect("valid metric");
    for &kind in ActionKind::ALL {
        for state in FINISHED {
            let n = counts.actions.get(&(kind, state)).copied();
            actions
                .with_label_values(&[kind.as_str(), state.as_str()])
                .inc_by(n.unwrap_or(0));
        }
        for state in UNFINISHED {
            let n = counts.actions.get(&(kind, state)).copied().unwrap_or(0);
            unfinished
                .with_label_values(&[kind.as_str(), state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    let registry = Registry::new();
    for metric in [
        Box::new(messages) as Box<dyn prometheus::core::Collector>,
        Box::new(notifications),
        Box::new(actions),
        Box::new(unfinished),
    ] {
        registry.register(metric).expect("distinct names");
    }
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("the text format of valid metrics")
}

/// Headers by which a reverse proxy names the client it forwards.
const FORWARDING_HEADERS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// Who may read `/metrics` on the web listener, which is public behind a
/// reverse proxy: a client on this host that connects directly, i.e. from
/// a loopback address and without a forwarding header. A request a proxy
/// forwards is refused whoever sent it (a proxy on this host would
/// otherwise make every client local). Without the connection's address
/// (in-process tests) nobody may.
pub fn may_read_metrics(peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
    let forwarded = FORWARDING_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name));
    peer.is_some_and(|ip| ip.to_canonical().is_loopback()) && !forwarded
}

/// `GET /metrics`: the metrics for local clients, the "not found" page for
/// everybody else (nothing tells a stranger that there is something here).
pub async fn serve(State(app): State<AppState>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if !may_read_metrics(peer, request.headers()) {
        return crate::pages::not_found(State(app)).await;
    }
    match app.with_store(|store| store.counts()).await {
        Ok(counts) => {
            let mut text = render(&counts);
            for more in &app.config().more_metrics.0 {
                text.push_str(&more());
            }
            ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
        }
        Err(e) => {
            log::error!("metrics: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_local_clients_may_read_metrics() {
        let none = HeaderMap::new();
        for local in ["127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"] {
            assert!(
                may_read_metrics(Some(local.parse().unwrap()), &none),
                "{local}"
            );
        }
        for remote in ["192.0.2.7", "2001:db8::1", "0.0.0.0"] {
            assert!(
                !may_read_metrics(Some(remote.parse().unwrap()), &none),
                "{remote}"
            );
        }
        assert!(!may_read_metrics(None, &none));
        for name in FORWARDING_HEADERS {
            let mut headers = HeaderMap::new();
            headers.insert(name, "127.0.0.1".parse().unwrap());
            assert!(
                !may_read_metrics(Some("127.0.0.1".parse().unwrap()), &headers),
                "{name}"
            );
        }
    }

    #[test]
    fn every_series_is_written_with_the_counts() {
        let mut counts = Counts::default();
        counts.messages.insert(MessageState::Deferred, 3);
        counts
            .notifications
            .insert((NotificationKind::First, SendResult::Sent), 2);
        counts
            .actions
            .insert((ActionKind::Release, ActionState::Done), 1);
        counts
            .actions
            .insert((ActionKind::Delete, ActionState::Queued), 4);
        let text = render(&counts);
        for line in [
            "posttls_messages{state=\"deferred\"} 3",
            "posttls_messages{state=\"gone\"} 0",
            "posttls_notifications_total{kind=\"first\",outcome=\"sent\"} 2",
            "posttls_notifications_total{kind=\"reminder\",outcome=\"failed\"} 0",
            "posttls_actions_total{action=\"release\",outcome=\"done\"} 1",
            "posttls_actions_total{action=\"delete\",outcome=\"refused\"} 0",
            "posttls_actions_unfinished{action=\"delete\",state=\"queued\"} 4",
            "# TYPE posttls_messages gauge",
            "# TYPE posttls_actions_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            series,
            MessageState::ALL.len()
                + NotificationKind::ALL.len() * SendResult::ALL.len()
                + ActionKind::ALL.len() * (FINISHED.len() + UNFINISHED.len())
        );
    }
}
