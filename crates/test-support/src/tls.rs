//! A throwaway certificate authority made at test time and the server side
//! of TLS for the local test servers: a certificate for 127.0.0.1 and
//! localhost signed by it, and the CA written to a PEM file that the client
//! under test is told to trust (as an operator's `http_ca_file` or
//! `tls_ca_file` would).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

/// A CA and a server certificate for 127.0.0.1 and localhost.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_file: PathBuf,
    /// The server's certificate and key, PEM, for servers that read files
    /// (PostgreSQL's `ssl_cert_file`, `ssl_key_file`).
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub server_config: Arc<ServerConfig>,
    issuer: Issuer<'static, KeyPair>,
}

/// How long a [`ServerCert`] is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday until well after the test (rcgen's default period).
    Current,
    /// Ended in 2020: an expired certificate.
    Expired,
}

/// A server certificate signed by a [`TestCa`], for the lab's MX servers.
pub struct ServerCert {
    /// The certificate, PEM (for a DANE-EE TLSA record or a file).
    pub cert_pem: String,
    /// The SHA-256 of its SubjectPublicKeyInfo, lower-case hex: the data
    /// of a `TLSA 3 1 1` record (RFC 6698 section 2.1).
    pub spki_sha256: String,
    pub server_config: Arc<ServerConfig>,
}

impl TestCa {
    /// Writes the CA to `directory/test-ca.pem`.
    pub fn new(directory: &Path) -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailtls test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        let server_config = server_config(&server_cert, &server_key);

        let ca_file = directory.join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let server_cert_file = directory.join("test-server.pem");
        std::fs::write(&server_cert_file, server_cert.pem()).unwrap();
        let server_key_file = directory.join("test-server.key");
        std::fs::write(&server_key_file, server_key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server_key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        TestCa {
            ca_file,
            server_cert_file,
            server_key_file,
            server_config,
            issuer,
        }
    }

    /// A certificate for the DNS `names`, signed by this CA.
    pub fn server_cert(&self, names: &[&str], validity: Validity) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(name) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *name);
        }
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let spki_sha256 = Sha256::digest(key.subject_public_key_info())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ServerCert {
            cert_pem: cert.pem(),
            spki_sha256,
            server_config: server_config(&cert, &key),
        }
    }
}

fn server_config(cert: &rcgen::Certificate, key: &KeyPair) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    Arc::new(config)
}
