//! The visibility stage of the TLSRPT flow: the outbound TLS of one UTC day
//! per recipient domain, and of one domain over the days kept.
//!
//! ```text
//! collectd.sqlite (today, live) ─┐
//! collectd.sqlite.yesterday ─────┼─ sources ──> DomainDetails ──> summary ──> DaySummary / DomainHistory
//! reportd.sqlite reportdata ─────┘   (I/O)        (per domain)      (pure)     (pages, JSON)
//! reportd.sqlite reports ──────────────────────────────────────────────────> the reports sent and their deliveries
//! ```
//!
//! [`summary`] turns one domain's counters into what a person reads (the
//! same decoding the reports use, so the dashboard and the reports agree);
//! [`sources`] reads the databases, which other processes write and which
//! are treated as hostile: a row that cannot be decoded is counted as
//! skipped, never guessed at.

pub mod sources;
pub mod summary;

pub use sources::{CollectorSource, DaySource, Sources, StatsError};
pub use summary::{DaySummary, DomainDay, DomainHistory, DomainPoint, Sort};
