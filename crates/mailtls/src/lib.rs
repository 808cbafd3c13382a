//! The programs of mailtls: the option tables and `main` functions behind the
//! `mailtls` subcommands and the upstream-compatible binaries
//! (`tlsrpt-collectd`, `tlsrpt-fetcher`). Each turns settings into the
//! validated configuration of a library crate and runs it; the work itself is
//! done in the crates named after the stages of the data flows.

pub mod programs;
