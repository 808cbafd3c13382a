//! `tlsrpt-reportd`: the collector -> **fetcher -> reportd -> destinations**
//! part of the TLSRPT flow (RFC 8460), one module per stage.
//!
//! - [`config`]: the daemon's configuration and upstream's start-up checks.
//! - [`daemon`]: the main loop: new day, fetch jobs, details, reports,
//!   deliveries.
//! - [`reports`]: one domain's fetched details become its reports and
//!   their destinations.
//! - [`deliver`]: one report to one destination.
//! - [`db`]: the reportd SQLite database, file-compatible with upstream's
//!   tlsrpt-reportd 0.6.0 so that an installation keeps its state (and
//!   `tlsrptctl status` keeps working) when it switches implementation.
//!   Fetch jobs, the domain lists and details they produced, reports and
//!   their destinations with a delivery state recorded before and after
//!   every attempt.
//! - [`fetch`]: running one configured fetcher command (protocol v1) with a
//!   time limit and an output limit, and turning its answer into something
//!   the daemon can act on.
//! - [`metrics`]: the counters served on `metrics_listen`.
//! - [`pytime`]: timestamps as upstream's Python `sqlite3` stores them, so
//!   that both implementations' `nexttry < ?` comparisons agree.
//! - [`schedule`]: when to try again (fetch retries, delivery backoff) and
//!   how first deliveries are spread over the day.

pub mod config;
pub mod daemon;
pub mod db;
pub mod deliver;
pub mod fetch;
pub mod metrics;
pub mod pytime;
pub mod reports;
pub mod schedule;

/// The upstream's Python (scripts/setup-oracle installs it in .venv), for
/// tests that check our files against what upstream's sqlite3 reads and writes.
#[cfg(test)]
pub(crate) fn python(code: &str, args: &[&std::path::Path]) -> String {
    let out = std::process::Command::new(mailtls_test_support::venv_python())
        .args(["-c", code])
        .args(args)
        .output()
        .expect("the upstream oracle in .venv: run scripts/setup-oracle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
