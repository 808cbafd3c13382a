//! PostgreSQL for fleets: the connection every mailtls program makes from
//! a `postgres://` URL (TLS verified, password from a file) and the
//! versioned migrations each component keeps in `mailtls_schema`.
//!
//! `mailtls_schema(component, version, migrated_at)` holds one row per
//! component (`tlsrpt` for the collectors' tables, `tlsrpt_reportd`,
//! `posttls`): writers migrate their component on start, serialised by an
//! advisory lock; readers only check it, so that their roles need not
//! create anything. A database newer than the program is refused.

use std::path::Path;
use std::time::Duration;

pub use postgres;
use postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL {url}: {}", with_causes(source))]
    Postgres {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("invalid PostgreSQL URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("password_file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL {url}: the {component} tables are at schema version {found}, newer than this program's {known}; upgrade mailtls")]
    NewerSchema {
        url: String,
        component: &'static str,
        found: i32,
        known: i32,
    },
    #[error("PostgreSQL {url}: {what}")]
    Refused { url: String, what: String },
}

type Result<T> = std::result::Result<T, PgError>;

/// A `postgresql://` URL (libpq's URI syntax: user, password, host, port,
/// database, `?sslmode=`, `?sslrootcert=FILE`, `?host=/socket/dir`) and, if
/// configured, the file holding the password, so that it need not be in
/// the configuration.
///
/// TLS: with `sslmode=prefer` (the default) TLS is used when the server
/// offers it, with `require` it must be; either way the server's
/// certificate is verified, against `sslrootcert` or the system's roots,
/// and must name the host (stricter than libpq, whose `require` checks
/// nothing). `disable` never uses TLS (a Unix socket, a private network).
#[derive(Clone)]
pub struct PgUrl {
    /// The URL without its password, for messages.
    shown: String,
    config: postgres::Config,
    /// `sslrootcert`: the CA to verify the server with instead of the
    /// system's.
    root_cert: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgUrl {
    /// `url` as configured, with the password from `password_file` (its
    /// first line) when one is given.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<PgUrl> {
        let shown = mailtls_common::redact::passwords_in(url);
        let bad = |reason: String| PgError::BadUrl {
            url: shown.clone(),
            reason,
        };
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(bad("not a postgresql:// URL".into()));
        }
        let (url, root_cert) = take_query_parameter(url, "sslrootcert");
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| bad(e.to_string()))?;
        if config.get_dbname().is_none() {
            return Err(bad(
                "no database name (postgresql://USER@HOST/DATABASE)".into()
            ));
        }
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path).map_err(|source| PgError::PasswordFile {
                path: path.display().to_string(),
                source,
            })?;
            config.password(text.lines().next().unwrap_or_default());
        }
        config.application_name("mailtls");
        config.connect_timeout(Duration::from_secs(10));
        // A server that vanished (a cut network, not a closed connection)
        // is noticed within about a minute instead of the kernel's two
        // hours.
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        let root_cert = root_cert
            .map(|file| mailtls_common::percent::decode(&file).map_err(|e| bad(e.to_string())))
            .transpose()?
            .map(std::path::PathBuf::from);
        Ok(PgUrl {
            shown,
            config,
            root_cert,
        })
    }

    /// The same URL, with each statement of its connections limited to
    /// `limit` (the report daemon's fetch time limit for in-process reads).
    pub fn with_statement_timeout(&self, limit: Duration) -> PgUrl {
        let mut url = self.clone();
        url.config
            .options(&format!("-c statement_timeout={}", limit.as_millis()));
        url.config
            .connect_timeout(limit.min(Duration::from_secs(10)));
        url
    }

    /// The same URL, its connections named `name` in the server's
    /// `pg_stat_activity` (what a standby report daemon shows of the active
    /// one).
    pub fn with_application_name(&self, name: &str) -> PgUrl {
        let mut url = self.clone();
        url.config.application_name(name);
        url
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A new connection: over TLS unless it goes to a Unix socket or
    /// `sslmode=disable`.
    pub fn connect(&self) -> Result<Client> {
        // A Unix socket never carries TLS (and its path is no name to
        // verify a certificate for).
        let unix_socket = self
            .config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, postgres::config::Host::Unix(_)));
        if unix_socket || self.config.get_ssl_mode() == postgres::config::SslMode::Disable {
            return self
                .config
                .connect(NoTls)
                .map_err(|source| self.error(source));
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?);
        self.config
            .connect(tls)
            .map_err(|source| self.error(source))
    }

    /// The TLS client: the server verified against `sslrootcert` or the
    /// system's roots.
    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let refused = |what: String| PgError::Refused {
            url: self.shown.clone(),
            what,
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(file) => {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
                    .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| refused(format!("sslrootcert {}: {e}", file.display())))?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| refused(format!("sslrootcert {}: {e}", file.display())))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// `source`, naming this URL (without its password).
    pub fn error(&self, source: postgres::Error) -> PgError {
        PgError::Postgres {
            url: self.shown.clone(),
            source,
        }
    }
}

/// `url` without the query parameter `name`, and its value: for the
/// parameters libpq knows and the client library does not.
fn take_query_parameter(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

/// The client's error with what caused it: its own text is only the
/// kind ("db error", "error connecting to server"), the server's message
/// or the I/O error is its source.
fn with_causes(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// One component's schema: its name in `mailtls_schema` and its versions,
/// oldest first, each applied once in one transaction with its record.
pub struct Migrations {
    pub component: &'static str,
    pub steps: &'static [(i32, &'static str)],
}

impl Migrations {
    /// The newest version this program knows.
    pub fn newest(&self) -> i32 {
        self.steps.last().map_or(0, |(v, _)| *v)
    }

    /// Creates the component's tables or brings them to the newest
    /// version. Concurrent programs starting against a new database wait
    /// for each other (an advisory lock held for the transaction).
    pub fn apply(&self, client: &mut Client, url: &PgUrl) -> Result<()> {
        let err = |e| url.error(e);
        let mut tx = client.transaction().map_err(err)?;
        // The lock comes first: CREATE TABLE IF NOT EXISTS is not safe
        // against itself (two sessions both insert the row type and one
        // fails on pg_type's unique index).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('mailtls_schema'))",
            &[],
        )
        .map_err(err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS mailtls_schema (
                 component text PRIMARY KEY, version integer NOT NULL,
                 migrated_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(err)?;
        let current: i32 = tx
            .query_opt(
                "SELECT version FROM mailtls_schema WHERE component = $1",
                &[&self.component],
            )
            .map_err(err)?
            .map_or(0, |row| row.get(0));
        let known = self.newest();
        if current > known {
            return Err(PgError::NewerSchema {
                url: url.shown.clone(),
                component: self.component,
                found: current,
                known,
            });
        }
        for (version, sql) in self.steps.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).map_err(err)?;
            tx.execute(
                "INSERT INTO mailtls_schema (component, version) VALUES ($1, $2)
                 ON CONFLICT (component) DO UPDATE SET version = excluded.version, migrated_at = now()",
                &[&self.component, version],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// For readers, which may not create anything: the tables must be
    /// there at the version this program knows. `creator` says which
    /// program creates them ("start a collector with this storage").
    pub fn check(&self, client: &mut Client, url: &PgUrl, creator: &str) -> Result<()> {
        let known = self.newest();
        let exists: bool = client
            .query_one("SELECT to_regclass('mailtls_schema') IS NOT NULL", &[])
            .map_err(|e| url.error(e))?
            .get(0);
        let version: i32 = if exists {
            client
                .query_opt(
                    "SELECT version FROM mailtls_schema WHERE component = $1",
                    &[&self.component],
                )
                .map_err(|e| url.error(e))?
                .map_or(0, |row| row.get(0))
        } else {
            0
        };
        let component = self.component;
        match version {
            0 => Err(PgError::Refused {
                url: url.shown.clone(),
                what: format!("the {component} tables do not exist yet: {creator} first (it creates them)"),
            }),
            v if v > known => Err(PgError::NewerSchema {
                url: url.shown.clone(),
                component,
                found: v,
                known,
            }),
            v if v < known => Err(PgError::Refused {
                url: url.shown.clone(),
                what: format!("the {component} tables are at version {v}, older than this program's {known}: {creator} first (it migrates them)"),
            }),
            _ => Ok(()),
        }
    }
}
