//! The integration tests of the programs, in one test binary (one build of
//! the shared helpers, one link): the collector, the fetcher and the
//! report daemon against upstream and real Postfix, PostTLS end to end and
//! in a real browser. Run one part with `cargo test -p mailtls --test it
//! reportd::`.

mod support;

mod check;
mod collectd;
mod fleet;
mod metrics;
mod package;
mod policyd;
mod postfix_harness;
mod posttls;
mod posttls_browser;
mod real_postfix;
mod reportd;
mod reportd_delivery;
mod slowloris;
mod tls_dashboard;
mod upstream;
