//! What every mailtls program shares.
//!
//! - [`ini`]: a reader for INI files with the semantics of Python's
//!   `configparser`, because the upstream tlsrpt-reporter configuration files
//!   are read by it and must keep working unchanged.
//! - [`config`]: one option table per program, resolved from the command line,
//!   then the environment (`TLSRPT_<PROGRAM>_<NAME>`), then the INI section, then
//!   the default — the upstream order.
//! - [`logging`]: the log format and level names of the upstream programs, with
//!   a log file that can be reopened on SIGHUP.
//! - [`pidfile`]: a pid file removed again on exit.
//! - [`clock`]: the injectable UTC clock that decides days and deadlines.
//! - [`process`]: child processes that die with the daemon.

pub mod clock;
pub mod config;
pub mod ini;
pub mod logging;
pub mod pidfile;
pub mod process;
