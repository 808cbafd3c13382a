//! The certificate authorities that HTTPS uploads and SMTP submission trust.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::Error;

/// Root certificates for verifying servers: the system's store (as curl,
/// the upstream's `http_script`, uses it) plus, optionally, a PEM file of
/// extra CAs, e.g. a private CA of a receiver or a test server. Certificate
/// verification is never switched off.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    /// The system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override where
    /// they are read from, as for OpenSSL).
    system: Vec<CertificateDer<'static>>,
    extra: Vec<CertificateDer<'static>>,
}

impl TrustAnchors {
    /// The system's roots and the certificates in `extra_ca_file`. Fails
    /// when the file cannot be read or holds no certificate, or when there
    /// is no root at all.
    pub fn load(extra_ca_file: Option<&Path>) -> Result<Self, Error> {
        // Unreadable entries in the system store are skipped, as curl does.
        let system = rustls_native_certs::load_native_certs().certs;
        let extra = match extra_ca_file {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| Error::ReadFile {
                    what: "CA file",
                    path: path.to_owned(),
                    source,
                })?;
                let bad = |reason: String| Error::BadCaFile {
                    path: path.to_owned(),
                    reason,
                };
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| bad(err.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no PEM certificate in it".into()));
                }
                certs
            }
        };
        if system.is_empty() && extra.is_empty() {
            return Err(Error::NoTrustAnchors);
        }
        Ok(TrustAnchors { system, extra })
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.system.iter().chain(&self.extra)
    }

    /// Only the extra CAs: lettre loads the system's roots itself.
    pub(crate) fn extra(&self) -> &[CertificateDer<'static>] {
        &self.extra
    }
}
