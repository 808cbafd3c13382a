//! The delivery stage of TLSRPT reporting (RFC 8460 section 5): getting one
//! finished report to one destination.
//!
//! The report itself (its JSON, its id, its file name) is made upstream of
//! here; this crate only knows the wire formats and the transports:
//!
//! - [`ReportMail`] renders the report mail of RFC 8460 section 5.3 and
//!   [`DkimSigner`] signs it (section 3 makes a valid DKIM signature a MUST);
//!   [`Sendmail`] or [`Smtp`] hand it to an MTA ([`MailTransport`] picks one).
//! - [`HttpsPost`] uploads the gzip body as section 5.4 asks, natively;
//!   [`HttpScript`] runs the upstream's `http_script` instead
//!   ([`HttpTransport`] picks one).
//! - [`Directory`] stores the uncompressed report as a file (the upstream's
//!   `directory:` destinations).
//!
//! Every transport answers with an [`Outcome`] and never with an error: the
//! caller only has to decide between "done", "try again later" and "give up",
//! and log the reason. [`Error`]s come from setting things up (a command, a
//! key file, a CA file, a relay), where the operator can fix the
//! configuration, and from report mail fields that would be unsafe to send.

mod command;
mod compress;
mod destination_address;
mod directory;
mod dkim;
mod error;
mod http;
mod mail;
mod sendmail;
mod smtp;
mod trust;

pub use compress::gzip;
pub use destination_address::is_global;
pub use directory::Directory;
pub use dkim::{DkimAlgorithm, DkimSigner};
pub use error::Error;
pub use http::{https_agent, HttpScript, HttpTransport, HttpsPost};
pub use mail::{MailTransport, ReportMail};
pub use sendmail::Sendmail;
pub use smtp::{Smtp, SmtpCredentials, SmtpSecurity};
pub use trust::TrustAnchors;

/// What became of one delivery attempt. Each variant carries a one-line
/// text for the log: the server's answer, the exit status and output of a
/// command, or the file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination (or the MTA that took the mail) accepted the report.
    Delivered(String),
    /// A failure that may go away: try again later (RFC 8460 section 5.5
    /// asks for retries over up to 24 hours).
    RetryLater(String),
    /// The destination refused the report for good; retrying cannot help.
    Permanent(String),
}

impl Outcome {
    /// Whether the report reached its destination.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered(_))
    }
}
