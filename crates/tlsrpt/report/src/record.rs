//! The TLSRPT policy record (RFC 8460 section 3) to the destinations that
//! should receive the report.
//!
//! ```text
//! tlsrpt-record = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//! field-delim   = *WSP ";" *WSP
//! tlsrpt-rua    = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//! ```
//!
//! Every record upstream's `parse_tlsrpt_record` (plus its pre-flight check
//! of the schemes) accepts is accepted here with the same destinations,
//! except where upstream passes on something no mail system could deliver
//! to. The differences, all on the lenient side unless noted:
//!
//! - Whitespace around `;` and `,` is allowed, as the grammar says; upstream
//!   keeps a space after a comma in the URI and then rejects the whole record.
//! - `rua` may be any field after the version, not only the first, and other
//!   fields are ignored whatever they contain (section 3: unknown fields SHALL
//!   be ignored). Several `rua` fields are read in order.
//! - One unusable URI costs only that URI ([`TlsrptRecord::skipped`]);
//!   upstream drops all destinations when one has another scheme. Section 3
//!   lets the sender deliver to each supported destination.
//! - The URI scheme is matched case-insensitively (RFC 3986 section 3.1).
//! - `mailto:` URIs are decoded as RFC 6068 says: percent-encoding is undone
//!   (RFC 8460 requires `,`, `;` and `!` to be encoded), a decoded comma
//!   separates several addresses, and header fields after `?` are dropped.
//!   Upstream uses the encoded text as the address.
//! - Stricter: an address without `@`, with an empty local part or domain, or
//!   with whitespace or control characters (header injection) is skipped, as
//!   is an `https:` URI without a host. Upstream accepts them and fails later.
//! - Duplicate destinations are listed once, so that nobody gets a report twice.
//!
//! `https:` URIs are kept as written: percent-encoded reserved characters
//! are not equivalent to the decoded ones in a URL (RFC 3986 section 2.2).

use std::fmt;

use thiserror::Error;

/// A destination taken from a record: `mailto:ADDRESS` with the plain
/// (decoded) address, or an `https:` URL as written. Only [`parse_record`]
/// makes them, so a destination map never sees anything else from DNS (no
/// `directory:` smuggled in through a record).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination(String);

impl Destination {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a usable record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsrptRecord {
    /// In record order, each once.
    pub destinations: Vec<Destination>,
    /// URIs of the `rua` list that were left out, for the log.
    pub skipped: Vec<SkippedUri>,
}

/// One `rua` URI that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{uri:?} ({reason})")]
pub struct SkippedUri {
    pub uri: String,
    pub reason: String,
}

/// A record that gives no destination at all: log it and send nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("not a TLSRPT version 1 record: it must begin with \"v=TLSRPTv1\" and \";\"")]
    NotVersion1,
    #[error("the record has no \"rua=\" field")]
    MissingRua,
    #[error("the record has no usable rua destination: {}", join_skipped(.skipped))]
    NoUsableDestination { skipped: Vec<SkippedUri> },
}

fn join_skipped(skipped: &[SkippedUri]) -> String {
    let parts: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

/// RFC 5234 WSP.
fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Read a TLSRPT record as found in DNS (strings of the TXT record already
/// concatenated).
pub fn parse_record(text: &str) -> Result<TlsrptRecord, RecordError> {
    let mut fields = text.split(';');
    let version = fields.next().unwrap_or_default();
    if version.trim_end_matches(is_wsp) != "v=TLSRPTv1" || !text.contains(';') {
        return Err(RecordError::NotVersion1);
    }
    let mut rua_seen = false;
    let mut destinations: Vec<Destination> = Vec::new();
    let mut skipped = Vec::new();
    for field in fields {
        let Some(uris) = field.trim_matches(is_wsp).strip_prefix("rua=") else {
            continue;
        };
        rua_seen = true;
        for uri in uris.split(',').map(|uri| uri.trim_matches(is_wsp)) {
            match parse_uri(uri) {
                Ok(found) => {
                    for destination in found {
                        if !destinations.contains(&destination) {
                            destinations.push(destination);
                        }
                    }
                }
                Err(reason) => skipped.push(SkippedUri {
                    uri: uri.to_string(),
                    reason,
                }),
            }
        }
    }
    if !rua_seen {
        return Err(RecordError::MissingRua);
    }
    if destinations.is_empty() {
        return Err(RecordError::NoUsableDestination { skipped });
    }
    Ok(TlsrptRecord {
        destinations,
        skipped,
    })
}

fn parse_uri(uri: &str) -> Result<Vec<Destination>, String> {
    if uri.is_empty() {
        return Err("empty URI".into());
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("not a URI: no scheme".into());
    };
    match scheme.to_ascii_lowercase().as_str() {
        "mailto" => mailto_destinations(rest),
        "https" => https_destination(rest).map(|d| vec![d]),
        "http" => Err("plain http is not allowed, only https".into()),
        other => Err(format!(
            "scheme {other:?} is not supported, only mailto and https"
        )),
    }
}

/// RFC 6068: `mailto:to[?hfields]` where `to` is a comma-separated list of
/// percent-encoded addresses.
fn mailto_destinations(rest: &str) -> Result<Vec<Destination>, String> {
    let to = rest.split_once('?').map_or(rest, |(to, _hfields)| to);
    let decoded = percent_decode(to)?;
    let mut out = Vec::new();
    for address in decoded.split(',') {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Err(format!("{address:?} is not a mail address"));
        };
        if local.is_empty() || domain.is_empty() {
            return Err(format!("{address:?} is not a mail address"));
        }
        if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{address:?} contains whitespace or control characters"
            ));
        }
        out.push(Destination(format!("mailto:{address}")));
    }
    Ok(out)
}

fn https_destination(rest: &str) -> Result<Destination, String> {
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("whitespace or control characters in the URL".into());
    }
    if !matches!(url_host(rest), Some(host) if !host.is_empty()) {
        return Err("no host in the URL".into());
    }
    Ok(Destination(format!("https:{rest}")))
}

/// The host of a URL after its scheme (`//[userinfo@]host[:port]/...`),
/// percent-decoded and lower-cased; `None` without an authority.
pub(crate) fn url_host(after_scheme: &str) -> Option<String> {
    let authority = after_scheme.strip_prefix("//")?;
    let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_userinfo, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let host = percent_decode(host).unwrap_or_else(|_| host.to_string());
    Some(host.to_lowercase())
}

/// RFC 3986 section 2.1 percent-decoding to UTF-8 text.
pub(crate) fn percent_decode(text: &str) -> Result<String, String> {
    mailtls_common::percent::decode(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destinations(text: &str) -> Vec<String> {
        parse_record(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .destinations
            .iter()
            .map(|d| d.as_str().to_string())
            .collect()
    }

    #[test]
    fn upstream_forms_give_upstream_destinations() {
        assert_eq!(
            destinations("v=TLSRPTv1;rua=mailto:tlsrpt@example.com"),
            ["mailto:tlsrpt@example.com"]
        );
        assert_eq!(
            destinations("v=TLSRPTv1; rua=mailto:a@x.example,https://reports.x.example/tlsrpt"),
            ["mailto:a@x.example", "https://reports.x.example/tlsrpt"]
        );
        assert_eq!(
            destinations("v=TLSRPTv1;rua=https://r.example/p?a=1;ext=1"),
            ["https://r.example/p?a=1"]
        );
    }

    #[test]
    fn grammar_whitespace_order_and_unknown_fields() {
        assert_eq!(
            destinations("v=TLSRPTv1 ;\text=x; rua=mailto:a@x.example ,\thttps://r.example/ ;"),
            ["mailto:a@x.example", "https://r.example/"]
        );
        assert_eq!(
            destinations(
                "v=TLSRPTv1;rua=mailto:a@x.example;rua=mailto:b@x.example,mailto:a@x.example"
            ),
            ["mailto:a@x.example", "mailto:b@x.example"]
        );
        assert_eq!(
            destinations("v=TLSRPTv1;foo;rua=MAILTO:a@x.example;;"),
            ["mailto:a@x.example"]
        );
    }

    #[test]
    fn mailto_is_percent_decoded_and_may_list_several_addresses() {
        assert_eq!(
            destinations("v=TLSRPTv1;rua=mailto:a%2Bb@x.example%2Cc@y.example?subject=x"),
            ["mailto:a+b@x.example", "mailto:c@y.example"]
        );
        assert_eq!(
            destinations("v=TLSRPTv1;rua=https://r.example/a%2Cb%3Bc"),
            ["https://r.example/a%2Cb%3Bc"]
        );
    }

    #[test]
    fn bad_uris_are_skipped_with_a_reason() {
        let record = parse_record(
            "v=TLSRPTv1;rua=http://r.example/,mailto:ok@x.example,directory:/tmp,mailto:no-at,mailto:a@x%0D%0ABcc:b@y,https:nohost,,mailto:%zz@x",
        )
        .unwrap();
        assert_eq!(
            record.destinations,
            [Destination("mailto:ok@x.example".into())]
        );
        let reasons: Vec<(&str, &str)> = record
            .skipped
            .iter()
            .map(|s| (s.uri.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 7, "{reasons:?}");
        assert!(reasons[0].1.contains("only https"));
        assert!(
            reasons[1].1.contains("not supported"),
            "directory: from DNS"
        );
        assert!(reasons[2].1.contains("not a mail address"));
        assert!(reasons[3].1.contains("control"));
        assert!(reasons[4].1.contains("no host"));
        assert_eq!(reasons[5], ("", "empty URI"));
        assert!(reasons[6].1.contains("percent-encoding"));
    }

    #[test]
    fn malformed_records_are_error_values() {
        for (text, expected) in [
            ("", RecordError::NotVersion1),
            ("v=TLSRPTv1", RecordError::NotVersion1),
            ("v=TLSRPTv2;rua=mailto:a@b", RecordError::NotVersion1),
            ("v=TLSRPTv10;rua=mailto:a@b", RecordError::NotVersion1),
            (" v=TLSRPTv1;rua=mailto:a@b", RecordError::NotVersion1),
            ("v=spf1 -all", RecordError::NotVersion1),
            ("v=TLSRPTv1;", RecordError::MissingRua),
            ("v=TLSRPTv1;RUA=mailto:a@b", RecordError::MissingRua),
            ("v=TLSRPTv1;ruaa=mailto:a@b", RecordError::MissingRua),
        ] {
            assert_eq!(parse_record(text), Err(expected), "{text:?}");
        }
        let err = parse_record("v=TLSRPTv1;rua=").unwrap_err();
        assert!(matches!(err, RecordError::NoUsableDestination { .. }));
        let err = parse_record("v=TLSRPTv1;rua=ftp://x.example/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the record has no usable rua destination: \"ftp://x.example/\" (scheme \"ftp\" is not supported, only mailto and https)"
        );
    }

    #[test]
    fn url_host_handles_userinfo_ports_ipv6_and_encoding() {
        assert_eq!(url_host("//R.Example:8443/x").as_deref(), Some("r.example"));
        assert_eq!(url_host("//u:p@r.example/").as_deref(), Some("r.example"));
        assert_eq!(
            url_host("//[2001:db8::1]:443/").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(url_host("//r%2Eexample?q").as_deref(), Some("r.example"));
        assert_eq!(url_host("r.example/x"), None);
    }
}
