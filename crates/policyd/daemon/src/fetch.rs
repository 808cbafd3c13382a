//! The MTA-STS policy fetch: `GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt`
//! (RFC 8461 section 3.3).
//!
//! - The certificate is checked against the configured trust anchors
//!   (WebPKI, section 3.3), with the policy host name as reference.
//! - Only `200` is a policy; redirects are not followed (section 3.3: "HTTP
//!   3xx redirects MUST NOT be followed"); nothing is cached by HTTP.
//! - The media type must be `text/plain` (section 3.2).
//! - At most [`MAX_POLICY_LEN`] bytes are read (section 3.3 suggests 64
//!   KiB); a longer body is refused, not cut.
//! - The policy host is resolved through the daemon's name servers, and
//!   unless `allow_private_addresses` only global addresses are connected
//!   to: the host is named by a stranger's DNS (the same agent as report
//!   uploads, [`tlsrpt_delivery::https_agent`]).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use policyd_policy::policy::MAX_POLICY_LEN;
use policyd_policy::{PolicyError, StsPolicy};
use tlsrpt_delivery::TrustAnchors;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;
use ureq::Agent;

use crate::dns::Dns;

/// Why no policy came back; each is logged, none is sent to Postfix (RFC
/// 8461 section 3.3: without a valid cached policy, deliver as if the
/// domain had none).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {error}")]
    Transport { url: String, error: ureq::Error },
    #[error("{url} answered {status}, not 200 (redirects are not followed, RFC 8461 section 3.3)")]
    Status { url: String, status: u16 },
    #[error("{url} has Content-Type {content_type:?}, not text/plain (RFC 8461 section 3.2)")]
    ContentType { url: String, content_type: String },
    #[error("{url}: policy of more than {MAX_POLICY_LEN} bytes")]
    TooLarge { url: String },
    #[error("{url}: reading the body: {error}")]
    Body { url: String, error: std::io::Error },
    #[error("{url}: invalid policy: {error}")]
    Invalid { url: String, error: PolicyError },
}

/// Fetches policies; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Fetcher {
    agent: Agent,
}

impl Fetcher {
    /// `timeout` bounds a whole fetch: resolving, connecting, TLS, answer.
    pub fn new(
        timeout: Duration,
        trust: &TrustAnchors,
        dns: Arc<Dns>,
        allow_private_addresses: bool,
    ) -> Fetcher {
        let config = Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("mailtls-policyd/", env!("CARGO_PKG_VERSION")));
        let agent = tlsrpt_delivery::https_agent(
            config,
            trust,
            NameServers { dns },
            allow_private_addresses,
        );
        Fetcher { agent }
    }

    /// The policy of `domain` (an A-label host name).
    pub fn fetch(&self, domain: &str) -> Result<StsPolicy, FetchError> {
        let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
        let mut response = self
            .agent
            .get(&url)
            .call()
            .map_err(|error| FetchError::Transport {
                url: url.clone(),
                error,
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status { url, status });
        }
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if !is_text_plain(&content_type) {
            return Err(FetchError::ContentType { url, content_type });
        }
        let mut body = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(MAX_POLICY_LEN as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|error| FetchError::Body {
                url: url.clone(),
                error,
            })?;
        if body.len() > MAX_POLICY_LEN {
            return Err(FetchError::TooLarge { url });
        }
        StsPolicy::parse(&body).map_err(|error| FetchError::Invalid { url, error })
    }
}

/// `text/plain`, with or without parameters (`; charset=utf-8`), in any case.
fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/plain"))
}

/// The policy host's addresses from the daemon's own name servers, so that
/// a fetch sees the DNS that the lookups see.
#[derive(Debug)]
struct NameServers {
    dns: Arc<Dns>,
}

impl Resolver for NameServers {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri.port_u16().unwrap_or(443);
        let addresses = self
            .dns
            .addresses(host)
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e.to_string())))?;
        let mut resolved = self.empty();
        // ureq keeps at most 16 addresses.
        for ip in addresses {
            if resolved.try_push((ip, port).into()).is_err() {
                break;
            }
        }
        if resolved.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain(""));
        assert!(!is_text_plain("text/plainx"));
    }
}
