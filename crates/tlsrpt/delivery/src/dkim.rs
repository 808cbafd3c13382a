//! DKIM signing of report mail. RFC 8460 section 3: report mail MUST carry a
//! valid DKIM signature of the reporting domain, and receivers MUST ignore
//! reports without one. The upstream leaves this to the MTA; we sign
//! ourselves so that reports are valid whatever the MTA is set up to do.
//!
//! # The DNS record an operator publishes
//!
//! A TXT record at `SELECTOR._domainkey.DOMAIN` ([`DkimSigner::dns_name`]),
//! with the value [`DkimSigner::dns_record`] prints:
//!
//! ```text
//! v=DKIM1; k=rsa; s=tlsrpt; p=MIIBIjANBgkqhkiG9w0BAQEFAAOC...   (RSA: SubjectPublicKeyInfo, base64)
//! v=DKIM1; k=ed25519; s=tlsrpt; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=   (RFC 8463: the raw key)
//! ```
//!
//! `s=tlsrpt` (RFC 8460 section 3, RFC 6376 section 3.6.1) restricts the key
//! to TLS reports: a verifier will not accept it for ordinary mail, which is
//! what a key kept only for reports wants. `s=*` (or no `s=` tag) allows every
//! use; `s=email:tlsrpt` lists both, but some verifiers (dkimpy 1.1) only
//! understand a single service type. The signing domain should be the
//! report's submitter domain, the domain of `contact_info`.

use std::fmt;
use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner as Signer, Done};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::Error;

/// The headers signed (`h=`): everything a receiver reads to tell whose
/// report this is and what it covers (RFC 8460 section 5.3), and the MIME
/// headers that give the body its meaning.
const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "TLS-Report-Domain",
    "TLS-Report-Submitter",
    "TLS-Required",
    "MIME-Version",
    "Content-Type",
];

/// RFC 8301 section 3.2: verifiers MUST NOT accept RSA keys below 1024 bits.
const MIN_RSA_BITS: usize = 1024;

/// The signature algorithm, chosen by the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimAlgorithm {
    /// `rsa-sha256` (RFC 6376).
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        })
    }
}

enum Key {
    Rsa(Signer<RsaKey<Sha256>, Done>),
    Ed25519(Signer<Ed25519Key, Done>),
}

/// Signs report mail with one key: relaxed/relaxed canonicalization, no
/// body length limit (RFC 8460 section 3 forbids `l=`), the signature
/// prepended as the first header.
pub struct DkimSigner {
    key: Key,
    selector: String,
    domain: String,
    /// The `p=` value of the key record, base64.
    public_key: String,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("DkimSigner")
            .field("algorithm", &self.algorithm())
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .finish()
    }
}

impl DkimSigner {
    /// Loads a PEM private key: RSA as PKCS#1 (`BEGIN RSA PRIVATE KEY`, as
    /// `opendkim-genkey` writes it) or PKCS#8 (`BEGIN PRIVATE KEY`), Ed25519
    /// as PKCS#8 (`openssl genpkey -algorithm ed25519`). The algorithm
    /// follows from the key.
    pub fn from_key_file(path: &Path, selector: &str, domain: &str) -> Result<Self, Error> {
        let pem = std::fs::read(path).map_err(|source| Error::ReadFile {
            what: "DKIM key file",
            path: path.to_owned(),
            source,
        })?;
        let bad_key = |reason: String| Error::BadDkimKey {
            path: path.to_owned(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|err| bad_key(format!("no unencrypted PEM private key found ({err})")))?;
        let (key, public_key) = match der {
            PrivateKeyDer::Pkcs1(_) => load_rsa(der).map_err(bad_key)?,
            PrivateKeyDer::Pkcs8(_) => match load_rsa(der.clone_key()) {
                Ok(loaded) => loaded,
                Err(rsa_err) => load_ed25519(der.secret_der()).map_err(|ed_err| {
                    bad_key(format!(
                        "neither an RSA key ({rsa_err}) nor an Ed25519 key ({ed_err})"
                    ))
                })?,
            },
            _ => {
                return Err(bad_key(
                    "an EC (SEC1) key; DKIM signs with RSA or Ed25519 only".into(),
                ))
            }
        };
        Ok(DkimSigner {
            key: configure(key, selector, domain),
            selector: selector.to_owned(),
            domain: domain.to_owned(),
            public_key,
        })
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        match self.key {
            Key::Rsa(_) => DkimAlgorithm::RsaSha256,
            Key::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// Where the key record lives: `SELECTOR._domainkey.DOMAIN`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record value to publish at [`dns_name`](Self::dns_name),
    /// restricted to TLS reports (`s=tlsrpt`; see the module documentation).
    pub fn dns_record(&self) -> String {
        let k = match self.algorithm() {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        format!("v=DKIM1; k={k}; s=tlsrpt; p={}", self.public_key)
    }

    /// Returns the message with a `DKIM-Signature` header in front. The
    /// message must have CRLF line ends, as [`ReportMail::render`] gives.
    ///
    /// [`ReportMail::render`]: crate::ReportMail::render
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let signature = match &self.key {
            Key::Rsa(signer) => signer.sign(message),
            Key::Ed25519(signer) => signer.sign(message),
        }
        .map_err(|err| Error::DkimSign(err.to_string()))?;
        let header = fold_after_tags(&signature.to_header());
        let mut signed = Vec::with_capacity(header.len() + message.len());
        signed.extend_from_slice(header.as_bytes());
        signed.extend_from_slice(message);
        Ok(signed)
    }
}

/// The longest header line RFC 5322 section 2.1.1 recommends.
const MAX_LINE: usize = 78;

/// mail-auth writes the first tags of the signature on one line, which can
/// pass 78 columns: fold such lines after a `"; "` tag separator. Relaxed
/// header canonicalization (RFC 6376 section 3.4.2) turns the fold back
/// into the single space it replaces, so the signature stays valid.
fn fold_after_tags(header: &str) -> String {
    let mut folded = String::with_capacity(header.len() + 16);
    for line in header.split_inclusive("\r\n") {
        let mut rest = line;
        while rest.trim_end_matches("\r\n").len() > MAX_LINE {
            let window = &rest.as_bytes()[..=MAX_LINE];
            let Some(semicolon) = window.windows(2).rposition(|pair| pair == b"; ") else {
                break;
            };
            folded.push_str(&rest[..=semicolon]);
            folded.push_str("\r\n\t");
            rest = &rest[semicolon + 2..];
        }
        folded.push_str(rest);
    }
    folded
}

enum LoadedKey {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// An RSA key and its `p=`: the SubjectPublicKeyInfo, which every verifier
/// reads (OpenDKIM reads nothing else), rather than the bare PKCS#1 key.
fn load_rsa(der: PrivateKeyDer<'_>) -> Result<(LoadedKey, String), String> {
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|err| err.to_string())?;
    let public =
        rsa::RsaPublicKey::from_pkcs1_der(&key.public_key()).map_err(|err| err.to_string())?;
    let bits = public.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits; verifiers refuse keys under {MIN_RSA_BITS} bits, use 2048"
        ));
    }
    let spki = public.to_public_key_der().map_err(|err| err.to_string())?;
    Ok((LoadedKey::Rsa(key), base64(spki.as_bytes())))
}

/// An Ed25519 key and its `p=`: the raw 32-byte public key (RFC 8463
/// section 4.2).
fn load_ed25519(pkcs8: &[u8]) -> Result<(LoadedKey, String), String> {
    let key = Ed25519Key::from_pkcs8_der(pkcs8).map_err(|err| err.to_string())?;
    let public_key = base64(&key.public_key());
    Ok((LoadedKey::Ed25519(key), public_key))
}

fn configure(key: LoadedKey, selector: &str, domain: &str) -> Key {
    fn finish<T: SigningKey>(key: T, selector: &str, domain: &str) -> Signer<T, Done> {
        Signer::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
    }
    match key {
        LoadedKey::Rsa(key) => Key::Rsa(finish(key, selector, domain)),
        LoadedKey::Ed25519(key) => Key::Ed25519(finish(key, selector, domain)),
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_fold_after_a_tag_and_short_ones_stay() {
        let header = format!(
            "DKIM-Signature: v=1; a=rsa-sha256; s=selector; d={}; c=relaxed/relaxed;\r\n\th=From:To;\r\n",
            "d".repeat(40)
        );
        let folded = fold_after_tags(&header);
        assert_eq!(
            folded,
            format!(
                "DKIM-Signature: v=1; a=rsa-sha256; s=selector;\r\n\td={}; c=relaxed/relaxed;\r\n\th=From:To;\r\n",
                "d".repeat(40)
            )
        );
        assert_eq!(
            fold_after_tags("DKIM-Signature: v=1;\r\n"),
            "DKIM-Signature: v=1;\r\n"
        );
    }
}
