//! Report upload over HTTPS (RFC 8460 section 5.4), natively or through the
//! upstream's `http_script`.

use std::io::Read;
use std::time::Duration;

use ureq::config::ConfigBuilder;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::typestate::AgentScope;
use ureq::unversioned::resolver::{DefaultResolver, Resolver};
use ureq::unversioned::transport::DefaultConnector;
use ureq::Agent;

use crate::command::CommandLine;
use crate::destination_address::GlobalOnly;
use crate::{Error, Outcome, TrustAnchors};

/// The media type of section 5.4 (and of the section 6.4 registration).
const CONTENT_TYPE: &str = "application/tlsrpt+gzip";

/// How much of an error response goes into the outcome's text.
const RESPONSE_EXCERPT_BYTES: u64 = 300;

/// POSTs the gzip-compressed report to an `https:` destination.
///
/// Only a 2xx answer counts as delivered: section 5.4 has the receiver
/// answer a successful upload with a 2xx code and leaves other codes to the
/// sender's retry policy. The upstream's default `http_script` is curl without
/// `--fail`, which exits 0 on any answer, so the upstream counts 4xx and 5xx
/// answers as delivered too; we do not.
#[derive(Debug, Clone)]
pub struct HttpsPost {
    agent: Agent,
}

impl HttpsPost {
    /// `timeout` bounds a whole attempt: resolving, connecting, TLS,
    /// sending and the answer. Unless `allow_private_addresses`, only
    /// global unicast addresses are connected to (see
    /// [`is_global`](crate::is_global)).
    pub fn new(timeout: Duration, trust: &TrustAnchors, allow_private_addresses: bool) -> Self {
        let config = Agent::config_builder()
            .timeout_global(Some(timeout))
            // Every status is an answer to classify, not an error.
            .http_status_as_error(false)
            // A redirect is classified like any other non-2xx answer.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("mailtls-tlsrpt/", env!("CARGO_PKG_VERSION")));
        let agent = https_agent(
            config,
            trust,
            DefaultResolver::default(),
            allow_private_addresses,
        );
        HttpsPost { agent }
    }

    /// One POST. Which answers mean what:
    ///
    /// - 2xx: [`Outcome::Delivered`].
    /// - 5xx, 408 Request Timeout, 429 Too Many Requests, and failures to
    ///   get an answer at all (time limit, refused connection, DNS, TLS):
    ///   [`Outcome::RetryLater`]; the server or the path to it may recover.
    /// - Other 4xx, 3xx and 1xx, an `http:` or malformed URL:
    ///   [`Outcome::Permanent`]. RFC 8460 leaves this to the sender; a
    ///   receiver that refuses this request (or moved) will answer the same
    ///   way again, and retrying for a day only adds load. Redirects are not
    ///   followed: they would need the POST repeated elsewhere.
    pub fn post(&self, url: &str, gzip_report: &[u8]) -> Outcome {
        let response = self
            .agent
            .post(url)
            .header("Content-Type", CONTENT_TYPE)
            .send(gzip_report);
        let mut response = match response {
            Ok(response) => response,
            Err(err) => return classify_error(url, err),
        };
        let status = response.status();
        let code = status.as_u16();
        let answer = format!("{url} answered {status}");
        if status.is_success() {
            return Outcome::Delivered(answer);
        }
        let mut excerpt = String::new();
        let _ = response
            .body_mut()
            .as_reader()
            .take(RESPONSE_EXCERPT_BYTES)
            .read_to_string(&mut excerpt);
        let excerpt = excerpt.split_whitespace().collect::<Vec<_>>().join(" ");
        let answer = if excerpt.is_empty() {
            answer
        } else {
            format!("{answer}: {excerpt}")
        };
        if status.is_server_error() || code == 408 || code == 429 {
            Outcome::RetryLater(answer)
        } else {
            Outcome::Permanent(answer)
        }
    }
}

/// An HTTPS-only agent made of `config` that verifies servers against
/// `trust`, resolves host names with `resolver` and, unless
/// `allow_private_addresses`, connects only to global unicast addresses
/// ([`is_global`](crate::is_global)). Shared by report uploads (the
/// system's resolver) and `mailtls policyd`'s MTA-STS policy fetches (its
/// configured name servers): both connect to hosts that a stranger's DNS
/// names.
pub fn https_agent(
    config: ConfigBuilder<AgentScope>,
    trust: &TrustAnchors,
    resolver: impl Resolver,
    allow_private_addresses: bool,
) -> Agent {
    let roots: Vec<Certificate<'static>> = trust
        .all()
        .map(|der| Certificate::from_der(der).to_owned())
        .collect();
    let config = config
        .https_only(true)
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&roots))
                .build(),
        )
        .build();
    let connector = DefaultConnector::default();
    if allow_private_addresses {
        Agent::with_parts(config, connector, resolver)
    } else {
        Agent::with_parts(config, connector, GlobalOnly::new(resolver))
    }
}

fn classify_error(url: &str, err: ureq::Error) -> Outcome {
    match err {
        ureq::Error::RequireHttpsOnly(_) => {
            Outcome::Permanent(format!("{url}: not an https: URL (RFC 8460 section 5.4)"))
        }
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            Outcome::Permanent(format!("{url}: malformed URL: {err}"))
        }
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            Outcome::Permanent(format!("{url}: {io}"))
        }
        _ => Outcome::RetryLater(format!("{url}: {err}")),
    }
}

/// The upstream's `http_script`: a command (by default curl) that gets the
/// URL as its last argument and the gzip-compressed report on its standard
/// input. Exit status 0 is delivered, anything else is retried, as
/// upstream; whether an HTTP error answer counts is up to the command
/// (curl needs `--fail` for that, which the upstream default lacks).
#[derive(Debug, Clone)]
pub struct HttpScript {
    command: CommandLine,
    timeout: Duration,
}

impl HttpScript {
    /// The upstream default `http_script`.
    pub const DEFAULT_COMMAND: &'static str =
        "curl --silent --header 'Content-Type: application/tlsrpt+gzip' --data-binary @-";

    /// `command` as configured, split like [`Sendmail`](crate::Sendmail)'s.
    pub fn new(command: &str, timeout: Duration) -> Result<Self, Error> {
        Ok(HttpScript {
            command: CommandLine::parse(command)?,
            timeout,
        })
    }

    /// Runs the command once for `url`. The upstream quotes the URL into a
    /// shell command line; here it is one argument as it stands.
    pub fn post(&self, url: &str, gzip_report: &[u8]) -> Outcome {
        self.command.run(&[url], gzip_report, self.timeout)
    }
}

/// How reports reach `https:` destinations: natively, or through the
/// upstream's `http_script` when one is configured.
#[derive(Debug, Clone)]
pub enum HttpTransport {
    Native(HttpsPost),
    Script(HttpScript),
}

impl HttpTransport {
    pub fn post(&self, url: &str, gzip_report: &[u8]) -> Outcome {
        match self {
            HttpTransport::Native(https) => https.post(url, gzip_report),
            HttpTransport::Script(script) => script.post(url, gzip_report),
        }
    }
}
