//! The first stage of the TLSRPT flow: the datagram an MTA sends through
//! libtlsrpt for every delivery attempt, and what the collector counts of it.
//!
//! Everything here is pure: no sockets, no files, no clock.
//!
//! - [`delivery`]: what a datagram means, a validated [`Delivery`], or why it
//!   is [`Invalid`].
//! - [`parse`]: bytes from the socket to a [`Delivery`], or a reason why the
//!   datagram is unusable.
//!   The common case goes through a single-pass reader that writes the
//!   Python JSON texts while it reads; anything unusual through serde_json.
//! - [`aggregate`]: the counters of one day, keyed as the upstream collectd keys
//!   them (day, domain, TLSRPT record, policy JSON, failure-detail JSON).
//! - [`pyjson`]: JSON text exactly as Python's `json.dumps` writes it, because
//!   the policy and failure texts are database keys that the upstream fetcher
//!   and reportd compare as strings.
//! - [`client`]: datagrams written byte for byte like libtlsrpt, for Rust MTAs,
//!   tests and the load generator.

pub mod aggregate;
pub mod client;
pub mod delivery;
mod fast;
pub mod parse;
pub mod pyjson;

pub use aggregate::{Aggregate, PolicyCounts, PolicyKey};
pub use delivery::{check_dns_name, normalize_domain, Delivery, Invalid, PolicyResult};
pub use parse::parse;
