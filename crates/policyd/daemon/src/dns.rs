//! DNS through the configured name servers: the `_mta-sts` TXT record, MX
//! and TLSA records, and the policy host's addresses.
//!
//! Queries are built and read with hickory-proto and sent over UDP (TCP
//! when the answer is truncated), so that the AD flag of the answer is
//! seen: DANE applies only to records the validating resolver vouched for
//! (RFC 7672 section 2.1, RFC 6698 section 4.1). Each query sets the AD
//! bit, which asks the resolver to report AD without sending the DNSSEC
//! records themselves (RFC 6840 section 5.7). hickory-resolver 0.26 keeps
//! the answer's header (`Lookup::message()`) but sets neither AD nor DO in
//! its queries unless it validates by itself, so it would never see AD from
//! a validating resolver such as Unbound. As for glibc's `trust-ad`, the
//! AD flag is only as trustworthy as the path to the resolver: use one on
//! this host or on a trusted network.
//!
//! A timeout, SERVFAIL or another error is a [`DnsError`], never an empty
//! answer: the caller answers Postfix `TEMP` rather than "no policy".
//!
//! Answers are kept for their TTL (the least of the records', at most
//! [`MAX_TTL`]; an empty answer for the SOA's negative TTL, RFC 2308
//! section 5), so that a cached policy is answered without asking the
//! resolver three questions each time. Errors are not kept. The cache is
//! bounded ([`Expiring`]).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::expiring::Expiring;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::{Name, RData, RecordType};

/// The EDNS payload size announced (DNS flag day 2020).
const EDNS_PAYLOAD: u16 = 1232;

/// Why a lookup has no answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    #[error("no answer from {0} in time")]
    Timeout(SocketAddr),
    #[error("{server} answered {code}")]
    Rcode {
        server: SocketAddr,
        code: ResponseCode,
    },
    #[error("{server}: {error}")]
    Network {
        server: SocketAddr,
        error: std::io::Error,
    },
    #[error("{server} sent a malformed answer: {reason}")]
    Malformed { server: SocketAddr, reason: String },
    #[error("no name server configured")]
    NoServer,
}

/// The records of one type at a name (none for NXDOMAIN and NODATA), and
/// whether the resolver set the AD flag.
#[derive(Debug, Clone)]
pub struct Answer {
    pub records: Vec<RData>,
    pub authentic: bool,
}

/// The MX hosts of a domain (lowercase, no trailing dot, in preference
/// order) and whether the MX answer was DNSSEC-validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHosts {
    pub hosts: Vec<String>,
    pub authentic: bool,
}

/// The longest an answer is kept, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// How long an empty answer is kept without an SOA to say.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// A stub resolver asking the configured name servers in turn.
#[derive(Debug)]
pub struct Dns {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<Expiring<(String, RecordType), Answer>>,
}

impl Dns {
    /// `timeout` is per server and transport; at most `cache_entries`
    /// answers are kept.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, cache_entries: usize) -> Dns {
        Dns {
            servers,
            timeout,
            cache: Mutex::new(Expiring::new(cache_entries)),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Expiring<(String, RecordType), Answer>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// `_mta-sts.DOMAIN` TXT: each record's strings joined without
    /// separator (RFC 8461 section 3.1 reads a record as one text).
    pub fn sts_txt(&self, domain: &str) -> Result<Vec<String>, DnsError> {
        let answer = self.query(&format!("_mta-sts.{domain}"), RecordType::TXT)?;
        Ok(answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => {
                    Some(String::from_utf8_lossy(&txt.txt_data.concat()).into_owned())
                }
                _ => None,
            })
            .collect())
    }

    /// The MX hosts of `domain`; a null MX (RFC 7505, `.`) is left out.
    pub fn mx(&self, domain: &str) -> Result<MxHosts, DnsError> {
        let answer = self.query(domain, RecordType::MX)?;
        let mut mx: Vec<(u16, String)> = answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some((mx.preference, host_name(&mx.exchange))),
                _ => None,
            })
            .filter(|(_, host)| !host.is_empty())
            .collect();
        mx.sort();
        Ok(MxHosts {
            hosts: mx.into_iter().map(|(_, host)| host).collect(),
            authentic: answer.authentic,
        })
    }

    /// Whether `host` has a usable TLSA record at `_25._tcp.HOST` under
    /// DNSSEC: an answer with AD and a record of usage DANE-TA(2) or
    /// DANE-EE(3), selector 0 or 1, matching type 0, 1 or 2. PKIX-TA(0)
    /// and PKIX-EE(1) are unusable for SMTP (RFC 7672 section 3.1.3), as
    /// are unknown parameters (RFC 7671 section 4).
    pub fn has_usable_tlsa(&self, host: &str) -> Result<bool, DnsError> {
        let answer = self.query(&format!("_25._tcp.{host}"), RecordType::TLSA)?;
        Ok(answer.authentic
            && answer.records.iter().any(|r| match r {
                RData::TLSA(tlsa) => {
                    matches!(tlsa.cert_usage, CertUsage::DaneTa | CertUsage::DaneEe)
                        && matches!(tlsa.selector, Selector::Full | Selector::Spki)
                        && matches!(
                            tlsa.matching,
                            Matching::Raw | Matching::Sha256 | Matching::Sha512
                        )
                }
                _ => false,
            }))
    }

    /// The IPv4 and IPv6 addresses of `host`.
    pub fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let mut addresses = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            for record in self.query(host, rtype)?.records {
                match record {
                    RData::A(a) => addresses.push(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => addresses.push(IpAddr::V6(aaaa.0)),
                    _ => {}
                }
            }
        }
        Ok(addresses)
    }

    /// One question, asked of each name server in turn until one answers
    /// NOERROR or NXDOMAIN; the last server's error otherwise.
    pub fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, DnsError> {
        let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
            .map_err(|_| DnsError::BadName(name.to_string()))?;
        let key = (fqdn.to_ascii().to_ascii_lowercase(), rtype);
        let now = Instant::now();
        if let Some(answer) = self.cache().get(&key, now) {
            return Ok(answer);
        }
        let mut last = DnsError::NoServer;
        for &server in &self.servers {
            match self.ask(server, &fqdn, rtype) {
                Ok((answer, ttl)) => {
                    self.cache()
                        .insert(key, answer.clone(), now + ttl.min(MAX_TTL));
                    return Ok(answer);
                }
                Err(e) => {
                    log::debug!("DNS {name} {rtype}: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The answer and how long it may be kept.
    fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(Answer, Duration), DnsError> {
        let id: u16 = rand::random();
        let mut query = Message::query();
        query.metadata.id = id;
        query.metadata.recursion_desired = true;
        query.metadata.authentic_data = true;
        query.add_query(Query::query(name.clone(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        query.set_edns(edns);
        let wire = query.to_vec().map_err(|e| DnsError::Malformed {
            server,
            reason: format!("cannot encode the query: {e}"),
        })?;
        let net = |error: std::io::Error| match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                DnsError::Timeout(server)
            }
            _ => DnsError::Network { server, error },
        };
        let mut response = udp_exchange(server, &wire, id, self.timeout).map_err(net)?;
        if response.metadata.truncation {
            response = tcp_exchange(server, &wire, self.timeout).map_err(net)?;
        }
        let malformed = |reason: &str| DnsError::Malformed {
            server,
            reason: reason.to_string(),
        };
        if response.metadata.id != id || response.metadata.message_type != MessageType::Response {
            return Err(malformed("not the answer to the query"));
        }
        let asked = |q: &Query| q.query_type() == rtype && q.name() == name;
        if !response.queries.first().is_some_and(asked) {
            return Err(malformed("answers another question"));
        }
        let authentic = response.metadata.authentic_data;
        // RFC 2308 section 5: the SOA's TTL, at most its minimum field.
        let negative_ttl = response
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(Duration::from_secs(u64::from(r.ttl.min(soa.minimum)))),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL);
        match response.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => {
                let answer = Answer {
                    records: Vec::new(),
                    authentic,
                };
                return Ok((answer, negative_ttl));
            }
            code => return Err(DnsError::Rcode { server, code }),
        }
        let wanted: Vec<_> = response
            .answers
            .into_iter()
            .filter(|r| r.record_type() == rtype)
            .collect();
        let ttl = wanted
            .iter()
            .map(|r| Duration::from_secs(u64::from(r.ttl)))
            .min()
            .unwrap_or(negative_ttl);
        let records = wanted.into_iter().map(|r| r.data).collect();
        Ok((Answer { records, authentic }, ttl))
    }
}

/// A name as a host name: ASCII lowercase without the trailing dot (the
/// root, a null MX, becomes "").
fn host_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Sends `wire` and waits for the answer with id `id` (other datagrams,
/// such as late answers to an earlier query, are skipped).
fn udp_exchange(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    timeout: Duration,
) -> std::io::Result<Message> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.send(wire)?;
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0; 65_535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        let len = socket.recv(&mut buffer)?;
        if let Ok(message) = Message::from_vec(&buffer[..len]) {
            if message.metadata.id == id {
                return Ok(message);
            }
        }
    }
}

/// One query over TCP (RFC 1035 section 4.2.2: two-byte length prefix).
fn tcp_exchange(server: SocketAddr, wire: &[u8], timeout: Duration) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let len = u16::try_from(wire.len()).map_err(std::io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    stream.write_all(&framed)?;
    let mut len = [0; 2];
    stream.read_exact(&mut len)?;
    let mut buffer = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buffer)?;
    Message::from_vec(&buffer).map_err(std::io::Error::other)
}

/// The `nameservers` option: `IP` or `IP:PORT` (IPv6 as `[IP]:PORT`),
/// separated by commas or white space; port 53 by default.
pub fn parse_nameservers(list: &str) -> Result<Vec<SocketAddr>, String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
        })
        .collect()
}

/// The `nameserver` lines of a resolv.conf, port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lists() {
        assert_eq!(
            parse_nameservers("127.0.0.1, [::1]:5353 10.0.0.1:54").unwrap(),
            vec![
                "127.0.0.1:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap(),
                "10.0.0.1:54".parse().unwrap()
            ]
        );
        assert!(parse_nameservers("dns.example").is_err());
        assert_eq!(
            resolv_conf_nameservers(
                "# x\nsearch a\nnameserver 10.1.1.1\nnameserver ::1\noptions trust-ad\n"
            ),
            vec!["10.1.1.1:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
    }

    #[test]
    fn a_silent_server_is_a_timeout_not_an_empty_answer() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dns = Dns::new(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(200),
            10,
        );
        assert!(matches!(
            dns.query("example.com", RecordType::TXT),
            Err(DnsError::Timeout(_))
        ));
        assert!(matches!(
            Dns::new(Vec::new(), Duration::from_secs(1), 10).query("example.com", RecordType::MX),
            Err(DnsError::NoServer)
        ));
        // Errors are not kept.
        assert!(dns.cache().is_empty());
    }
}
