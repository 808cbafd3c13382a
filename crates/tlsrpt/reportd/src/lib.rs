//! The report daemon's state and its fetch jobs (`tlsrpt-reportd`, the
//! collector -> **fetcher -> reportd** part of the TLSRPT flow, RFC 8460).
//!
//! - [`db`]: the reportd SQLite database, file-compatible with upstream's
//!   tlsrpt-reportd 0.6.0 so that an installation keeps its state (and
//!   `tlsrptctl status` keeps working) when it switches implementation.
//!   Fetch jobs, the domain lists and details they produced, reports and
//!   their destinations with a delivery state recorded before and after
//!   every attempt.
//! - [`fetch`]: running one configured fetcher command (protocol v1) with a
//!   time limit and an output limit, and turning its answer into something
//!   the daemon can act on.
//! - [`pytime`]: timestamps as upstream's Python `sqlite3` stores them, so
//!   that both implementations' `nexttry < ?` comparisons agree.
//! - [`schedule`]: when to try again (fetch retries, delivery backoff) and
//!   how first deliveries are spread over the day.

pub mod db;
pub mod fetch;
pub mod pytime;
pub mod schedule;
