//! What every mailtls program shares.
//!
//! - [`ini`]: a reader for INI files with the semantics of Python's
//!   `configparser`, because the upstream tlsrpt-reporter configuration files
//!   are read by it and must keep working unchanged.
//! - [`config`]: each program's options declared once ([`options!`]), resolved
//!   from the command line, then the environment (`TLSRPT_<PROGRAM>_<NAME>`),
//!   then the INI section, then the default — the upstream order.
//! - [`logging`]: the log format and level names of the upstream programs, with
//!   a log file that can be reopened on SIGHUP.
//! - [`percent`]: strict RFC 3986 percent-decoding.
//! - [`pidfile`]: a pid file removed again on exit.
//! - [`clock`]: the injectable UTC clock that decides days and deadlines.
//! - [`day`]: the UTC day, with the one `YYYY-MM-DD` parser and formatter.
//! - [`process`]: child processes that die with the daemon.
//! - [`metrics`]: the small HTTP endpoint of `metrics_listen`, and the
//!   registry and text exposition every program's metrics use.

pub mod clock;
pub mod config;
pub mod day;
pub mod ini;
pub mod logging;
pub mod metrics;
pub mod ownership;
pub mod percent;
pub mod pidfile;
pub mod process;
pub mod redact;

/// This host's name (`gethostname(2)`), or `localhost` when it has none:
/// the default PostTLS instance name and the `mailtls run` organisation.
pub fn host_name() -> String {
    let name = gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_string();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
