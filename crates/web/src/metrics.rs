//! `/metrics` on the web listener, to local clients only (see
//! [`may_read_metrics`]): PostTLS's metrics ([`posttls_metrics`]) and those
//! of [`MoreMetrics`](crate::MoreMetrics) (`mailtls run` adds its daemons').

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::AppState;

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
            let mut text = posttls_metrics::render(&counts);
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
}
