//! The daemon of `mailtls policyd`: the I/O around [`policyd_policy`].
//!
//! - [`dns`]: TXT, MX, TLSA and address lookups through the configured
//!   name servers, with the AD flag that DANE needs, kept for their TTL.
//! - [`expiring`]: the bounded map of values that expire those caches use.
//! - [`fetch`]: the MTA-STS policy over HTTPS (RFC 8461 section 3.3).
//! - [`store`]: the bounded in-memory policy cache that
//!   [`policyd_policy::plan`] drives, in front of the persistent one
//!   ([`policyd_store`]).
//! - [`lookup`]: one request to one answer (map names, keys, DANE before
//!   MTA-STS).
//! - [`server`]: the socketmap server on a TCP or unix socket.
//! - [`metrics`]: its counters for Prometheus.

pub mod dns;
pub mod expiring;
pub mod fetch;
pub mod lookup;
pub mod metrics;
pub mod server;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use mailtls_common::clock::Clock;
use policyd_policy::TestingAnswer;
use tlsrpt_delivery::TrustAnchors;

pub use lookup::Engine;
pub use server::Listen;

/// The most DNS answers kept (about 300 bytes each).
const DNS_CACHE_ENTRIES: usize = 30_000;

/// How often stale rows leave the persistent cache.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The daemon's validated settings.
pub struct Config {
    pub listen: Listen,
    /// Permissions of a unix socket.
    pub listen_mode: u32,
    pub nameservers: Vec<std::net::SocketAddr>,
    /// Per name server and transport.
    pub dns_timeout: Duration,
    pub trust: TrustAnchors,
    pub allow_private_addresses: bool,
    pub fetch_timeout: Duration,
    pub testing: TestingAnswer,
    pub cache_size: usize,
    /// The persistent cache (`database`); none: memory only.
    pub database: Option<policyd_store::Database>,
    pub limits: server::Limits,
    /// `metrics_listen`, and its listener's limits.
    pub metrics: Option<(std::net::SocketAddr, mailtls_common::metrics::Limits)>,
}

/// Why the daemon could not serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for metrics on {listen} (metrics_listen): {error}")]
    Metrics {
        listen: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("database {database}: {error}")]
    Database {
        database: String,
        error: policyd_store::StoreError,
    },
    #[error("cannot listen on {listen}: {error}")]
    Listen {
        listen: Listen,
        error: std::io::Error,
    },
}

/// Serves until `stop` completes (the program passes SIGTERM and SIGINT).
pub fn run(
    config: Config,
    clock: Box<dyn Clock>,
    stop: impl std::future::Future + Send + 'static,
) -> Result<(), Error> {
    // MX, TLSA and TXT answers of the domains mail is going to now: a
    // working set, not every cached policy's (those need no DNS until the
    // answer is worked out again).
    let dns_cache_entries = config.cache_size.saturating_mul(3).min(DNS_CACHE_ENTRIES);
    let dns = Arc::new(dns::Dns::new(
        config.nameservers,
        config.dns_timeout,
        dns_cache_entries,
    ));
    let fetcher = fetch::Fetcher::new(
        config.fetch_timeout,
        &config.trust,
        dns.clone(),
        config.allow_private_addresses,
    );
    let db = match &config.database {
        Some(database) => Some(
            policyd_store::PolicyDb::open(database, policyd_store::Access::Writer).map_err(
                |error| Error::Database {
                    database: database.to_string(),
                    error,
                },
            )?,
        ),
        None => None,
    };
    let engine = Arc::new(Engine::new(
        dns,
        fetcher,
        config.cache_size,
        db,
        config.testing,
        clock,
    ));
    if config.database.is_some() {
        let engine = engine.clone();
        std::thread::spawn(move || loop {
            engine.prune();
            std::thread::sleep(PRUNE_EVERY);
        });
    }
    if let Some((listen, limits)) = config.metrics {
        let engine = engine.clone();
        mailtls_common::metrics::spawn(listen, limits, move || Ok(engine.metrics().render()))
            .map_err(|error| Error::Metrics { listen, error })?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let listen = config.listen;
    let result = runtime.block_on(async {
        let listener = server::Listener::bind(&listen, config.listen_mode)
            .await
            .map_err(|error| Error::Listen {
                listen: listen.clone(),
                error,
            })?;
        log::info!("serving socketmap on {listen}");
        server::serve(listener, engine, config.limits, stop).await;
        Ok(())
    });
    // Lookups still running (a slow fetch) are not waited for long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
