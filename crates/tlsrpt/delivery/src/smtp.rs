//! Report mail by SMTP submission to a relay (new; the upstream only knows
//! `sendmail_script`). Useful where the report host runs no MTA of its own.

use std::fmt;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::Error as SmtpError;
use lettre::{SmtpTransport, Transport};

use crate::{Error, Outcome, TrustAnchors};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded by STARTTLS (RFC 3207), which the relay
    /// must offer: submission on port 587.
    StartTls,
    /// TLS from the first byte (RFC 8314): submission on port 465.
    ImplicitTls,
    /// No TLS, for a relay on the same host or network (port 25). AUTH is
    /// refused on such a connection.
    Plaintext,
}

impl SmtpSecurity {
    /// The port that goes with each kind of connection.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::ImplicitTls => 465,
            SmtpSecurity::Plaintext => 25,
        }
    }
}

/// AUTH user name and password (PLAIN or LOGIN, whichever the relay offers).
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for SmtpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Submits report mail to one relay, one connection per mail. Certificates
/// are verified against [`TrustAnchors`], always.
#[derive(Debug, Clone)]
pub struct Smtp {
    transport: SmtpTransport,
    relay: String,
}

impl Smtp {
    /// `timeout` bounds connecting and each read or write on the
    /// connection, not the whole session.
    pub fn new(
        host: &str,
        port: u16,
        security: SmtpSecurity,
        credentials: Option<SmtpCredentials>,
        timeout: Duration,
        trust: &TrustAnchors,
    ) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadSmtpRelay {
            host: host.to_owned(),
            reason,
        };
        let tls_parameters = || -> Result<TlsParameters, Error> {
            let mut builder = TlsParameters::builder(host.to_owned());
            for der in trust.extra() {
                let certificate =
                    Certificate::from_der(der.to_vec()).map_err(|err| bad(err.to_string()))?;
                builder = builder.add_root_certificate(certificate);
            }
            builder.build_rustls().map_err(|err| bad(err.to_string()))
        };
        let tls = match security {
            SmtpSecurity::StartTls => Tls::Required(tls_parameters()?),
            SmtpSecurity::ImplicitTls => Tls::Wrapper(tls_parameters()?),
            SmtpSecurity::Plaintext if credentials.is_some() => {
                return Err(bad(
                    "AUTH would send the password in the clear: use STARTTLS or implicit TLS"
                        .into(),
                ))
            }
            SmtpSecurity::Plaintext => Tls::None,
        };
        let mut builder = SmtpTransport::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(SmtpCredentials { user, password }) = credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Smtp {
            transport: builder.build(),
            relay: format!("{host}:{port}"),
        })
    }

    /// One SMTP transaction: `MAIL FROM:<sender>`, `RCPT TO:<recipient>`,
    /// `DATA`. The relay's answer decides:
    ///
    /// - 2xx after the data: [`Outcome::Delivered`].
    /// - 4xx, and every failure to get an answer (connection, TLS, time
    ///   limit): [`Outcome::RetryLater`].
    /// - 5xx: [`Outcome::Permanent`] (RFC 5321 section 4.2.1), except the
    ///   AUTH refusals 530, 534, 535 and 538: those mean our configuration
    ///   is wrong, not the report, so they are retried until it is fixed.
    pub fn send(&self, sender: &str, recipient: &str, message: &[u8]) -> Outcome {
        let envelope = match (sender.parse(), recipient.parse()) {
            (Ok(sender), Ok(recipient)) => Envelope::new(Some(sender), vec![recipient]),
            (Err(err), _) | (_, Err(err)) => {
                return Outcome::Permanent(format!(
                    "{sender} -> {recipient}: not an address SMTP can carry: {err}"
                ))
            }
        };
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(err) => return Outcome::Permanent(format!("{sender} -> {recipient}: {err}")),
        };
        // lettre ends the data with CRLF "." CRLF itself: without the
        // message's own last CRLF the relay gets the message unchanged.
        let message = message.strip_suffix(b"\r\n").unwrap_or(message);
        match self.transport.send_raw(&envelope, message) {
            Ok(response) => Outcome::Delivered(format!(
                "{} answered {} {}",
                self.relay,
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(err) => self.classify(err),
        }
    }

    fn classify(&self, err: SmtpError) -> Outcome {
        let text = format!("{}: {err}", self.relay);
        let code = err.status().map(u16::from);
        match code {
            Some(530 | 534 | 535 | 538) => {
                Outcome::RetryLater(format!("{text} (check the AUTH settings)"))
            }
            _ if err.is_permanent() => Outcome::Permanent(text),
            _ => Outcome::RetryLater(text),
        }
    }
}
