//! The web pages' accept loop: HTTP/1.1 (hyper) with the limits that keep
//! the pages answering while a client holds connections open
//! ("slowloris"), which `axum::serve` lacks.
//!
//! - A request head (request line and headers) must be complete within
//!   [`ConnectionLimits::head_timeout`], also on a kept-alive connection
//!   between requests; otherwise the connection is closed.
//! - A request, its body and the answer included, gets
//!   [`ConnectionLimits::request_timeout`] (408 after it): a body sent a
//!   byte a minute cannot hold a connection either.
//! - At most [`ConnectionLimits::max_connections`] connections at once
//!   (further ones wait in the kernel's queue, so the process never runs
//!   out of file descriptors), and at most
//!   [`ConnectionLimits::max_per_client`] of one client (an IPv4 address,
//!   an IPv6 /64): more are closed at once. A trusted proxy, which carries
//!   everybody's requests, has no per-client limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// How many connections the pages take, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once (`max_connections`).
    pub max_connections: usize,
    /// Connections of one client at once (`max_connections_per_client`).
    pub max_per_client: usize,
    /// Time for a complete request head (`request_head_timeout`).
    pub head_timeout: Duration,
    /// Time for a whole request and its answer (`request_timeout`).
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 512 connections (half of systemd's default soft limit of 1 024 file
    /// descriptors), 16 per client (a browser opens 6), 5 s for a head (a
    /// browser sends it at once), 60 s for a request (the longest page, a
    /// day of 100 000 domains, takes about a second).
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 512,
            max_per_client: 16,
            head_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The largest request head read, in bytes (hyper's buffer; 431 beyond).
const MAX_HEAD: usize = 64 * 1024;

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then finishes the requests in progress. `proxies` (the
/// trusted proxies, canonical) have no per-client limit.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    proxies: Vec<IpAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let total = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = Clients::default();
    let (closing, close) = watch::channel(());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = accept(&listener, &total) => accepted,
        };
        let (permit, stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                log::warn!("web listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let slot = if proxies.contains(&peer.ip()) {
            None
        } else {
            match clients.take(peer.ip(), limits.max_per_client) {
                Some(slot) => Some(slot),
                None => {
                    log::debug!(
                        "connection from {peer} closed: {} connections of that client open",
                        limits.max_per_client
                    );
                    continue;
                }
            }
        };
        let router = router.clone();
        let mut close = close.clone();
        connections.spawn(async move {
            let _held = (permit, slot);
            let conn = connection(stream, peer, router, limits);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        log::debug!("connection from {peer}: {e}");
                    }
                }
                _ = close.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(closing);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The next connection, once a place is free.
async fn accept(
    listener: &TcpListener,
    total: &Arc<Semaphore>,
) -> std::io::Result<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let permit = Arc::clone(total)
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, peer) = listener.accept().await?;
    Ok((permit, stream, peer))
}

/// One connection served by hyper, each request given its peer (as
/// [`ConnectInfo`]) and its time limit.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
) -> hyper::server::conn::http1::UpgradeableConnection<
    TokioIo<TcpStream>,
    impl hyper::service::Service<
            Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
        > + Send,
> {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let answer = router.oneshot(request.map(Body::new));
            Ok(
                match tokio::time::timeout(limits.request_timeout, answer).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        log::info!(
                            "request from {peer} took over {:?}: closed",
                            limits.request_timeout
                        );
                        (
                            StatusCode::REQUEST_TIMEOUT,
                            [(header::CONNECTION, "close")],
                            "request timeout\n",
                        )
                            .into_response()
                    }
                },
            )
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
}

/// Open connections per client.
#[derive(Default, Clone)]
struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open connection of a client, given back when dropped.
struct Slot {
    clients: Clients,
    client: IpAddr,
}

impl Clients {
    /// A slot for `ip`'s client, unless it has `max` already.
    fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let client = client_of(ip);
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(Slot {
            clients: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The client an address belongs to: itself, or for IPv6 its /64 (one
/// host has many addresses).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_and_ipv6_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        let clients = Clients::default();
        let a: Vec<_> = (0..3)
            .filter_map(|_| clients.take(ip("192.0.2.7"), 2))
            .collect();
        assert_eq!(a.len(), 2);
        assert!(clients.take(ip("192.0.2.8"), 2).is_some());
        drop(a);
        assert!(clients.take(ip("192.0.2.7"), 2).is_some());
        assert!(
            clients.0.lock().unwrap().len() <= 1,
            "no empty entries left"
        );
    }
}
