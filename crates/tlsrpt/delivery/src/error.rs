use std::io;
use std::path::PathBuf;

/// A transport or signer that cannot be set up, worded for the operator who
/// has to fix the configuration. Delivery attempts themselves never fail
/// with an error; they end in an [`Outcome`](crate::Outcome).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("command {command:?}: {reason}")]
    BadCommand { command: String, reason: String },
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("DKIM key file {path}: {reason}")]
    BadDkimKey { path: PathBuf, reason: String },
    #[error("DKIM signing failed: {0}")]
    DkimSign(String),
    #[error("CA file {path}: {reason}")]
    BadCaFile { path: PathBuf, reason: String },
    #[error("no trusted root certificates: install the system's CA certificates (ca-certificates) or name a CA file")]
    NoTrustAnchors,
    #[error("SMTP relay {host}: {reason}")]
    BadSmtpRelay { host: String, reason: String },
    #[error("report mail: the {field} {value:?} could break the headers or add recipients")]
    UnsafeMailField { field: &'static str, value: String },
    #[error("compression level {0} is not one of -1 (default) and 0 to 9")]
    BadCompressionLevel(i32),
}
