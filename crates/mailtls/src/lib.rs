//! The programs of mailtls: the option tables and `main` functions behind the
//! `mailtls` subcommands and the upstream-compatible binaries
//! (`tlsrpt-collectd`, `tlsrpt-fetcher`). Each turns settings into the
//! validated configuration of a library crate and runs it; the work itself is
//! done in the crates named after the stages of the data flows.

pub mod programs;

/// mimalloc instead of glibc malloc: the collector's receiver allocates what
/// its committer thread frees, and glibc's per-thread arenas make such
/// cross-thread frees take a lock that the receiver then waits for.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
