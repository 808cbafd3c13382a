//! The suite's web pages: PostTLS's page behind each link of a notification
//! mail and its admin dashboard, the Outbound TLS view of the TLSRPT data
//! (with report resends), behind one admin login, and `/metrics`. It sits
//! beside the PostTLS and TLSRPT crates, not in either half, so that
//! neither half depends on the other.
//!
//! ```text
//! notification link --GET--> /confirm/{token}: verify token, find the message,
//!                            show details + one POST form (CSRF)      (changes nothing)
//!                   --POST-> verify token + CSRF, re-check binding, single use,
//!                            store.request_action(...) + audit  --303--> GET: the action's state
//! privileged worker (not here) takes the queued action, re-checks, runs Postfix,
//!                            sets queued -> running -> done/refused/failed
//! admin --> /admin/login (argon2, throttled) --> /admin (messages, actions, audit)
//!       --> /admin/messages/{id}/release|delete, /admin/domains (CSRF bound to the session)
//! ```
//!
//! This process never runs a Postfix command and needs no privileges: it
//! verifies requests and records them in the store ([`posttls_store`]),
//! where the worker picks them up; it reads the TLSRPT data through
//! `tlsrpt-stats` and writes to the report daemon's state
//! (`tlsrpt-reportd-db`) only to resend a report. Every GET only reads: mail scanners
//! that open every link in a mail must not release or delete anything.
//!
//! Modules follow the request path: [`posttls`] (the sender's page, the
//! dashboard, actions, domains), [`tls`] (the Outbound TLS view, its
//! charts and report resends), [`admin`] (the one login both use),
//! [`pages`] (one set of templates, embedded at build time, auto-escaped,
//! and the security headers of every response); beside them [`metrics`]
//! (`/metrics` for Prometheus, to local clients only) and [`listener`]
//! (the accept loop).

pub mod admin;
pub mod listener;
pub mod metrics;
pub mod pages;
pub mod posttls;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
pub use listener::ConnectionLimits;
use mailtls_common::day::Day;
use posttls_auth::LoginThrottle;
use posttls_policy::DomainSet;
use posttls_store::{Access, Database, Store, StoreError};
use posttls_token::SecretKey;
use tlsrpt_stats::summary::{DaySummary, DomainPoint};

/// The largest request body accepted: the forms have a few short fields.
pub const MAX_BODY: usize = 16 * 1024;

/// How long an admin session lasts.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(8 * 3600);

/// Failed-login records kept at most (see [`LoginThrottle::new`]).
const THROTTLE_ENTRIES: usize = 100_000;

/// What the web process needs to know.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// `ADDRESS:PORT` to listen on (plain HTTP; a TLS-terminating proxy goes
    /// in front).
    pub listen: String,
    /// The Postfix instance whose links this process accepts (its name is
    /// bound into each token); `None`: every instance in the database, for
    /// one web process serving a fleet's workers on PostgreSQL.
    pub instance: Option<String>,
    /// Where senders reach the pages, e.g. `https://posttls.example.org` or
    /// `https://mail.example.org/posttls`. Its path, if any, is where the
    /// routes are served (the proxy passes the path on unchanged).
    pub base_url: String,
    /// Named on the pages.
    pub organization: String,
    /// Mark cookies `Secure` (and name them `__Host-...`); off only for
    /// plain-HTTP tests.
    pub secure_cookies: bool,
    /// The configured mandatory-TLS domains; the ones added in the UI are in
    /// the store.
    pub mandatory_domains: DomainSet,
    /// Peers whose `X-Forwarded-For` is believed (the reverse proxy). The
    /// client address of a request from anyone else is the peer address.
    pub trusted_proxies: Vec<IpAddr>,
    /// The TLSRPT databases the outbound-TLS pages read.
    pub tlsrpt: tlsrpt_stats::Sources,
    /// The policy cache of `mailtls policyd` the outbound-TLS pages show
    /// (read only); `None`: not shown.
    pub policyd: Option<policyd_store::Database>,
    /// Connections taken at once and how long each may take.
    pub limits: ConnectionLimits,
    /// Further metrics served after PostTLS's on `/metrics`: those of the
    /// other programs that run in the same process (`mailtls run`).
    pub more_metrics: MoreMetrics,
}

/// Renderers of Prometheus text expositions (distinct metric families).
#[derive(Clone, Default)]
pub struct MoreMetrics(pub Vec<Arc<dyn Fn() -> String + Send + Sync>>);

impl std::fmt::Debug for MoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MoreMetrics({} renderers)", self.0.len())
    }
}

/// Problems that stop the web process or a request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("base_url {0:?} is not an http(s) address such as https://posttls.example.org")]
    BaseUrl(String),
    #[error("page template: {0}")]
    Template(#[from] minijinja::Error),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("TLSRPT data: {0}")]
    Stats(#[from] tlsrpt_stats::StatsError),
    #[error("TLSRPT data: report daemon database {name}: {source}")]
    Resend {
        name: String,
        source: tlsrpt_reportd_db::DbError,
    },
}

/// The shared state of all requests.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: WebConfig,
    /// The path part of `base_url`, without a trailing slash ("" for none).
    prefix: String,
    store: Mutex<Store>,
    key: SecretKey,
    pages: pages::Pages,
    throttle: Mutex<LoginThrottle>,
    /// The password checks' two lanes (see `admin::login`).
    check_lanes: CheckLanes,
    /// A hash to verify against for unknown user names, so that the answer
    /// takes as long as for a known one.
    dummy_hash: OnceLock<String>,
    /// Day summaries recently read, newest use last (see
    /// [`AppState::day_summary`]).
    summaries: Mutex<Vec<CachedSummary>>,
    /// The site's sessions on the days not shown, each as read (see
    /// [`AppState::site_trend`]).
    trend: Mutex<Vec<CachedPoint>>,
}

struct CachedPoint {
    source: tlsrpt_stats::DaySource,
    read_at: Instant,
    point: DomainPoint,
}

struct CachedSummary {
    day: Day,
    read_at: Instant,
    summary: Option<Arc<DaySummary>>,
}

/// Day summaries kept at most.
const CACHED_DAYS: usize = 4;

/// How long a day summary is used before it is read again: the live day
/// changes with every commit of the collector (and a fleet's day with any
/// collector's); a completed day only while the report daemon is still
/// fetching it.
fn summary_lifetime(source: Option<tlsrpt_stats::DaySource>) -> Duration {
    match source {
        Some(tlsrpt_stats::DaySource::Collector | tlsrpt_stats::DaySource::Fleet) | None => {
            Duration::from_secs(30)
        }
        Some(_) => Duration::from_secs(600),
    }
}

impl AppState {
    /// The state for `config`, with an open store and the token key.
    ///
    /// # Errors
    /// [`WebError::BaseUrl`] for a `base_url` that is not an http(s)
    /// address, [`WebError::Template`] if a built-in template is broken.
    pub fn new(config: WebConfig, store: Store, key: SecretKey) -> Result<AppState, WebError> {
        let prefix = url_path_prefix(&config.base_url)?;
        Ok(AppState(Arc::new(Inner {
            pages: pages::Pages::new(&prefix, &config.organization)?,
            prefix,
            config,
            store: Mutex::new(store),
            key,
            throttle: Mutex::new(LoginThrottle::new(THROTTLE_ENTRIES)),
            check_lanes: CheckLanes::new(),
            dummy_hash: OnceLock::new(),
            summaries: Mutex::new(Vec::new()),
            trend: Mutex::new(Vec::new()),
        })))
    }

    pub fn config(&self) -> &WebConfig {
        &self.0.config
    }

    pub(crate) fn key(&self) -> &SecretKey {
        &self.0.key
    }

    pub(crate) fn pages(&self) -> &pages::Pages {
        &self.0.pages
    }

    /// The path prefix of every route ("" or "/something").
    pub(crate) fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// Runs `work` with the store on a blocking thread (SQLite may wait up
    /// to its busy timeout for the worker's writes).
    pub(crate) async fn with_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, WebError> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner.store.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut store)
        })
        .await
        .map_err(|e| WebError::Task(e.to_string()))?
        .map_err(WebError::from)
    }

    /// The summary of `day` (`None` when no TLSRPT database has it), read
    /// on a blocking thread, or the one read recently: a 100 000-domain day
    /// takes a second or so to read, its pages then milliseconds.
    pub(crate) async fn day_summary(&self, day: Day) -> Result<Option<Arc<DaySummary>>, WebError> {
        {
            let cache = self.0.summaries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.iter().find(|c| {
                c.day == day
                    && c.read_at.elapsed() < summary_lifetime(c.summary.as_ref().map(|s| s.source))
            }) {
                return Ok(hit.summary.clone());
            }
        }
        let sources = self.0.config.tlsrpt.clone();
        let summary = tokio::task::spawn_blocking(move || sources.day(day))
            .await
            .map_err(|e| WebError::Task(e.to_string()))??
            .map(Arc::new);
        let mut cache = self.0.summaries.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|c| c.day != day);
        if cache.len() >= CACHED_DAYS {
            cache.remove(0);
        }
        cache.push(CachedSummary {
            day,
            read_at: Instant::now(),
            summary: summary.clone(),
        });
        Ok(summary)
    }

    /// The site's sessions on each of `days` (as [`AppState::tls_days`]
    /// lists them), oldest first: the shown day's from its summary
    /// `shown`, another day's kept as long as its summary would be (30 s
    /// for the live day, 10 minutes for completed ones). So a day page
    /// reads its day once and the days before it seldom (each is about a
    /// second for 100 000 domains).
    pub(crate) async fn site_trend(
        &self,
        days: &[(Day, tlsrpt_stats::DaySource)],
        shown: Option<&DaySummary>,
    ) -> Result<Vec<DomainPoint>, WebError> {
        let mut known: HashMap<Day, DomainPoint> = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.0.trend.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|c| days.iter().any(|(day, _)| *day == c.point.day));
            for &(day, source) in days {
                if let Some(summary) = shown.filter(|s| s.day == day && s.source == source) {
                    let point = DomainPoint {
                        day,
                        successful: summary.successful,
                        failed: summary.failed,
                    };
                    known.insert(day, point);
                } else if let Some(cached) = cache.iter().find(|c| {
                    c.point.day == day
                        && c.source == source
                        && c.read_at.elapsed() < summary_lifetime(Some(source))
                }) {
                    known.insert(day, cached.point.clone());
                } else {
                    missing.push((day, source));
                }
            }
        }
        if !missing.is_empty() {
            let sources = self.0.config.tlsrpt.clone();
            let read = tokio::task::spawn_blocking(move || {
                missing
                    .into_iter()
                    .map(|(day, source)| Ok((source, sources.day_point(day, source)?)))
                    .collect::<Result<Vec<_>, tlsrpt_stats::StatsError>>()
            })
            .await
            .map_err(|e| WebError::Task(e.to_string()))??;
            let mut cache = self.0.trend.lock().unwrap_or_else(|e| e.into_inner());
            for (source, point) in read {
                cache.retain(|c| c.point.day != point.day);
                cache.push(CachedPoint {
                    source,
                    read_at: Instant::now(),
                    point: point.clone(),
                });
                known.insert(point.day, point);
            }
        }
        Ok(days
            .iter()
            .rev()
            .filter_map(|(day, _)| known.remove(day))
            .collect())
    }

    /// The days the TLSRPT databases have, newest first.
    pub(crate) async fn tls_days(&self) -> Result<Vec<(Day, tlsrpt_stats::DaySource)>, WebError> {
        let sources = self.0.config.tlsrpt.clone();
        Ok(tokio::task::spawn_blocking(move || sources.days())
            .await
            .map_err(|e| WebError::Task(e.to_string()))??)
    }

    pub(crate) fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.0.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_lanes(&self) -> &CheckLanes {
        &self.0.check_lanes
    }

    /// A hash of nothing anybody types, made once on first use.
    pub(crate) fn dummy_hash(&self) -> &str {
        self.0
            .dummy_hash
            .get_or_init(|| posttls_auth::hash_password("posttls: no such admin"))
    }

    /// The configured mandatory domains plus the ones in the store. An entry
    /// in the store that is not a domain (only possible by editing the
    /// database) is skipped.
    pub(crate) fn mandatory_with(&self, stored: &[String]) -> DomainSet {
        let mut set = self.0.config.mandatory_domains.clone();
        for entry in stored {
            let _ = set.insert(entry);
        }
        set
    }
}

/// Password checks of unknown names that may wait for their lane; more are
/// answered unchecked.
pub const MAX_WAITING_CHECKS: usize = 4;

/// Password checks run one at a time for admins' names and one at a time
/// for other names, so that the second kind (which anybody can send in any
/// number) never delays the first.
pub(crate) struct CheckLanes {
    pub(crate) admins: tokio::sync::Semaphore,
    pub(crate) others: tokio::sync::Semaphore,
    others_waiting: std::sync::atomic::AtomicUsize,
}

/// A place in the queue of the unknown names' lane, given up when dropped.
pub(crate) struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl CheckLanes {
    fn new() -> CheckLanes {
        CheckLanes {
            admins: tokio::sync::Semaphore::new(1),
            others: tokio::sync::Semaphore::new(1),
            others_waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A place in the unknown names' queue (the one being checked
    /// included), unless [`MAX_WAITING_CHECKS`] and one are taken.
    pub(crate) fn enqueue_other(&self) -> Option<Waiting<'_>> {
        use std::sync::atomic::Ordering;
        self.others_waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n <= MAX_WAITING_CHECKS).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(&self.others_waiting))
    }
}

/// The path of `base_url` (`https://host/posttls/` gives `/posttls`).
fn url_path_prefix(base_url: &str) -> Result<String, WebError> {
    if base_url.is_empty() {
        return Ok(String::new());
    }
    let bad = || WebError::BaseUrl(base_url.to_owned());
    let rest = base_url
        .strip_prefix("https://")
        .or_else(|| base_url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.trim_end_matches('/');
    let path_char = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
    // `/metrics` is served at the listener's root whatever the prefix.
    if !path.chars().all(path_char) || path.contains("//") || path == "/metrics" {
        return Err(bad());
    }
    Ok(path.to_owned())
}

/// All routes, with the security headers and the body limit; under the path
/// of `base_url`, but for `/metrics`, which Prometheus reads from the
/// listener itself.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route(
            "/confirm/{token}",
            get(posttls::confirm::show).post(posttls::confirm::submit),
        )
        .route("/admin", get(posttls::dashboard))
        .route("/admin/login", get(admin::login_page).post(admin::login))
        .route("/admin/logout", post(admin::logout))
        .route(
            "/admin/messages/{id}/{action}",
            post(posttls::message_action),
        )
        .route(
            "/admin/domains",
            get(posttls::domains_page).post(posttls::domains_change),
        )
        .route("/admin/tls", get(tls::tls_day))
        .route("/admin/tls.json", get(tls::tls_day_json))
        .route("/admin/tls/{domain}", get(tls::tls_domain))
        .route("/admin/policies", get(tls::policies::policies_page))
        .route("/admin/policies.json", get(tls::policies::policies_json))
        .route("/admin/reports", get(tls::reports_page))
        .route("/admin/reports/{id}/resend", post(tls::report_resend))
        .route("/static/style.css", get(pages::stylesheet))
        .route("/static/favicon.svg", get(pages::favicon))
        .route("/", get(pages::home));
    let prefix = state.prefix().to_owned();
    let routes = if prefix.is_empty() {
        routes
    } else {
        Router::new().nest(&prefix, routes)
    };
    routes
        .route("/metrics", get(metrics::serve))
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(pages::security_headers))
        .with_state(state)
}

/// Serves `router` on `listener`, within the configured
/// [`ConnectionLimits`], until `shutdown` completes, then finishes the
/// requests in progress.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config().limits;
    let proxies = state
        .config()
        .trusted_proxies
        .iter()
        .map(|ip| ip.to_canonical())
        .collect();
    listener::serve(listener, router(state), limits, proxies, shutdown).await
}

/// The web process: opens the store and serves `config.listen` on a
/// runtime with two worker threads until SIGTERM or SIGINT; requests in
/// progress are finished before it returns.
///
/// # Errors
/// A store that cannot be opened, an address that cannot be bound, or a bad
/// `base_url`.
pub fn serve(config: WebConfig, database: &Database, key: SecretKey) -> Result<(), WebError> {
    let store = Store::connect(database, Access::Web)?;
    let listen = config.listen.clone();
    let state = AppState::new(config, store, key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|source| WebError::Listen {
                listen: listen.clone(),
                source,
            })?;
        log::info!(
            "PostTLS web pages on http://{}{}/ (admin: {}/admin)",
            listener.local_addr()?,
            state.prefix(),
            state.prefix()
        );
        serve_on(listener, state, shutdown_signal()).await?;
        log::info!("PostTLS web pages stopped");
        Ok(())
    })
}

/// Completes at the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot handle SIGTERM/SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = int.recv() => log::info!("SIGINT: stopping"),
    }
}

/// The current time, Unix seconds.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The client's address: the peer, or for a trusted proxy the last
/// `X-Forwarded-For` entry (the one the proxy added). `None` when the
/// server was not started with connection info (in-process tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// The address as recorded in the store and the audit log.
    pub fn text(&self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }

    /// The throttle key: the address, or its /64 network for IPv6 (one host
    /// has many addresses).
    pub fn throttle_key(&self) -> String {
        match self.0 {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Some(IpAddr::V6(v6)) => format!("ip:{}", v6.to_ipv4_mapped().expect("mapped")),
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".into(),
        }
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // On a dual-stack listener (`[::]:PORT`) an IPv4 peer arrives as
        // `::ffff:a.b.c.d`: compared and recorded as the IPv4 address.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical());
        let trusted = |ip: &IpAddr| {
            state
                .config()
                .trusted_proxies
                .iter()
                .any(|proxy| proxy.to_canonical() == *ip)
        };
        Ok(ClientIp(match peer {
            Some(ip) if trusted(&ip) => forwarded_for(&parts.headers)
                .map(|client| client.to_canonical())
                .or(Some(ip)),
            other => other,
        }))
    }
}

/// The last address of the last `X-Forwarded-For` header.
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_paths() {
        assert_eq!(url_path_prefix("").unwrap(), "");
        assert_eq!(url_path_prefix("https://p.example").unwrap(), "");
        assert_eq!(url_path_prefix("https://p.example/").unwrap(), "");
        assert_eq!(
            url_path_prefix("http://127.0.0.1:8025/posttls/").unwrap(),
            "/posttls"
        );
        for bad in [
            "p.example",
            "ftp://p.example",
            "https://p.example/a b",
            "https://p.example/?x",
            "https://p.example//x",
            // Would hide the root /metrics route.
            "https://p.example/metrics/",
        ] {
            assert!(url_path_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn throttle_keys_group_ipv6_networks() {
        let key = |s: &str| ClientIp(Some(s.parse().unwrap())).throttle_key();
        assert_eq!(key("192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::9"), key("2001:db8:1:2:ffff::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(ClientIp(None).throttle_key(), "ip:unknown");
    }

    #[test]
    fn forwarded_for_takes_the_proxys_entry() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.2".parse().unwrap(),
        );
        assert_eq!(
            forwarded_for(&headers),
            Some("198.51.100.2".parse().unwrap())
        );
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(forwarded_for(&headers), None);
    }
}
