//! `tlsrpt-reportd`: the collector -> **fetcher -> reportd -> destinations**
//! part of the TLSRPT flow (RFC 8460), one module per stage. Its state
//! (fetch jobs, details, reports, deliveries) is the crate
//! `tlsrpt-reportd-db`, which `tlsrptctl` and the web pages read too.
//!
//! - [`config`]: the daemon's configuration and upstream's start-up checks.
//! - [`daemon`]: the main loop: new day, fetch jobs, details, reports,
//!   deliveries.
//! - [`reports`]: one domain's fetched details become its reports and
//!   their destinations.
//! - [`deliver`]: one report to one destination.
//! - [`fetch`]: running one configured fetcher command (protocol v1) with a
//!   time limit and an output limit, and turning its answer into something
//!   the daemon can act on.
//! - [`metrics`]: the counters served on `metrics_listen`.
//! - [`schedule`]: when to try again (fetch retries, delivery backoff) and
//!   how first deliveries are spread over the day.

pub mod config;
pub mod daemon;
pub mod deliver;
pub mod fetch;
pub mod metrics;
pub mod reports;
pub mod schedule;
