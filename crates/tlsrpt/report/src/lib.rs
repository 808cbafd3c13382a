//! The reports stage of the TLSRPT flow (RFC 8460):
//! fetcher data -> **reports -> destinations** -> delivery.
//!
//! Pure functions over data, no I/O apart from [`maps::DestinationMaps::from_files`]:
//!
//! - [`details`]: the per-domain answers of one or several fetchers (fetcher
//!   protocol v1) and their sum, keyed by the policy and failure texts as
//!   upstream sums them.
//! - [`report`]: one RFC 8460 section 4 report per domain and TLSRPT record,
//!   its JSON text, its report-id, and the mail naming conventions (subject,
//!   attachment file name, submitter).
//! - [`record`]: the TLSRPT TXT record (RFC 8460 section 3) to the list of
//!   `mailto:`/`https:` destinations it asks for.
//! - [`maps`]: the three destination maps of upstream's reportd
//!   (`tlsrpt_record_map`, `mail_destination_map`, `http_upload_map`) that
//!   rewrite, add or drop destinations, with a trace for `tlsrptctl maptest`.
//!
//! Bad input is never a panic: a malformed record, an unknown policy type or
//! result type comes back as an error value that says what was skipped, for
//! the daemon to log.

pub mod details;
pub mod maps;
mod pyregex;
pub mod record;
pub mod report;
