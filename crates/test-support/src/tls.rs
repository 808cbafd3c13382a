//! A throwaway certificate authority made at test time and the server side
//! of TLS for the local test servers: a certificate for 127.0.0.1 and
//! localhost signed by it, and the CA written to a PEM file that the client
//! under test is told to trust (as an operator's `http_ca_file` or
//! `tls_ca_file` would).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// A CA and a server certificate for 127.0.0.1 and localhost.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_file: PathBuf,
    /// The server's certificate and key, PEM, for servers that read files
    /// (PostgreSQL's `ssl_cert_file`, `ssl_key_file`).
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
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

        let ca_file = directory.join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let server_cert_file = directory.join("test-server.pem");
        std::fs::write(&server_cert_file, server_cert.pem()).unwrap();
        let server_key_file = directory.join("test-server.key");
        std::fs::write(&server_key_file, server_key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server_key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        TestCa {
            ca_file,
            server_cert_file,
            server_key_file,
            server_config: Arc::new(server_config),
        }
    }
}
