//! Tests on the Postfix our users run: Debian 13's Postfix 3.10 with
//! libtlsrpt (and unstable's 3.11) in the lab's debootstrap roots
//! (`mailtls_test_support::lab`), delivering by a signed lab DNS to lab MX
//! servers on loopback. Run them alone with `cargo test -p mailtls --test
//! it real_postfix::`.

mod check;
mod collector;
mod lab;
mod package;
mod policyd;
mod policyd_oracle;
mod posttls;
mod tls_required;
mod tlsrpt;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::https_sink::{Answer, HttpsSink};
use crate::support::lab::{LabDns, Net, Root, Suite, ZONE};
use crate::support::postfix::{Options, Postfix};
use crate::support::smtp_sink::{SmtpSink, Starttls};
use crate::support::tls::{TestCa, Validity};

pub const WAIT: Duration = Duration::from_secs(30);

/// What a lab domain's MX does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mx {
    /// STARTTLS with a certificate for its name from the lab CA.
    Trusted,
    /// No STARTTLS in its EHLO reply.
    NoStarttls,
    /// STARTTLS with a lab CA certificate for another name.
    WrongName,
    /// STARTTLS with an expired lab CA certificate for its name.
    Expired,
    /// STARTTLS with a certificate for its name from a CA Postfix does not
    /// trust.
    Untrusted,
    /// STARTTLS offered, the command answered 454.
    RefusesStarttls,
}

/// A DANE TLSA record at `_25._tcp.` of the MX (RFC 7672 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tlsa {
    None,
    /// `3 1 1` of the MX's own key.
    Matching,
    /// `3 1 1` of some other key.
    Wrong,
}

/// One recipient domain of the lab: `LABEL.lab.test`, its MX
/// `mx.LABEL.lab.test`, and a TLSRPT record unless `tlsrpt` is false.
#[derive(Debug, Clone)]
pub struct Domain {
    pub label: &'static str,
    pub mx: Mx,
    pub tlsa: Tlsa,
    /// The `smtp_tls_policy_maps` entry of the domain, if any (the lab's
    /// stand-in for a policy server: the 3.10 TLSRPT attributes).
    pub policy: Option<String>,
    /// Where its TLSRPT record sends reports: `tlsrpt@` the domain unless
    /// set.
    pub rua: Option<String>,
    /// An MTA-STS policy: `_mta-sts` record and this body at
    /// `https://mta-sts.LABEL.lab.test/.well-known/mta-sts.txt` (RFC 8461
    /// section 3), served by a lab host with a lab CA certificate.
    pub sts: Option<String>,
}

impl Domain {
    pub fn new(label: &'static str, mx: Mx) -> Domain {
        Domain {
            label,
            mx,
            tlsa: Tlsa::None,
            policy: None,
            rua: None,
            sts: None,
        }
    }

    /// Publish the MTA-STS policy `body`.
    pub fn sts(mut self, body: &str) -> Domain {
        self.sts = Some(body.to_string());
        self
    }

    /// Reports to the mailbox `address` (in a domain mail can reach).
    pub fn rua(mut self, address: &str) -> Domain {
        self.rua = Some(address.to_string());
        self
    }

    pub fn tlsa(mut self, tlsa: Tlsa) -> Domain {
        self.tlsa = tlsa;
        self
    }

    pub fn policy(mut self, policy: &str) -> Domain {
        self.policy = Some(policy.to_string());
        self
    }

    pub fn name(&self) -> String {
        format!("{}.{ZONE}", self.label)
    }

    pub fn mx_name(&self) -> String {
        format!("mx.{}.{ZONE}", self.label)
    }

    /// The TLSRPT record of the domain (RFC 8460 section 3).
    pub fn tlsrpt_record(&self) -> String {
        match &self.rua {
            Some(address) => format!("v=TLSRPTv1; rua=mailto:{address}"),
            None => format!("v=TLSRPTv1; rua=mailto:tlsrpt@{}", self.name()),
        }
    }
}

/// A Debian root, a lab DNS serving the domains, their MX servers and the
/// lab CA, and files inside the root for a Postfix instance to read.
pub struct Lab {
    pub root: Arc<Root>,
    /// Inside the root: the lab CA and the policy table.
    _dir: tempfile::TempDir,
    pub ca: TestCa,
    pub mxes: BTreeMap<String, SmtpSink>,
    pub dns: LabDns,
    /// `smtp_tls_policy_maps` as the instance reads it.
    pub policy_map: String,
    /// The MTA-STS policy hosts by domain, serving while the lab lives
    /// (or until [`Lab::stop_policy_host`]).
    policy_hosts: BTreeMap<String, HttpsSink>,
}

impl Lab {
    pub fn start(suite: Suite, domains: &[Domain]) -> Lab {
        Lab::start_in(Root::enter(suite), domains)
    }

    /// The same in `root` (a scratch root, say).
    pub fn start_in(root: Arc<Root>, domains: &[Domain]) -> Lab {
        let dir = root.tempdir("lab.");
        let ca = TestCa::new(dir.path());
        let other_dir = tempfile::tempdir().unwrap();
        let other_ca = TestCa::new(other_dir.path());
        let net = Net::new();
        let mut records = Vec::new();
        let mut mxes = BTreeMap::new();
        let mut policies = String::new();
        let mut policy_hosts = BTreeMap::new();
        for d in domains {
            let ip = net.host();
            let label = d.label;
            let mx = d.mx_name();
            let cert = match d.mx {
                Mx::WrongName => ca.server_cert(&["another-name.lab.test"], Validity::Current),
                Mx::Expired => ca.server_cert(&[&mx], Validity::Expired),
                Mx::Untrusted => other_ca.server_cert(&[&mx], Validity::Current),
                _ => ca.server_cert(&[&mx], Validity::Current),
            };
            let starttls = match d.mx {
                Mx::NoStarttls => Starttls::NotOffered,
                Mx::RefusesStarttls => Starttls::Refused,
                _ => Starttls::Offered(cert.server_config.clone()),
            };
            records.push(format!("{label} MX 10 mx.{label}"));
            records.push(format!("mx.{label} A {ip}"));
            records.push(format!("_smtp._tls.{label} TXT \"{}\"", d.tlsrpt_record()));
            match d.tlsa {
                Tlsa::None => {}
                Tlsa::Matching => records.push(format!(
                    "_25._tcp.mx.{label} TLSA 3 1 1 {}",
                    cert.spki_sha256
                )),
                Tlsa::Wrong => records.push(format!(
                    "_25._tcp.mx.{label} TLSA 3 1 1 {}",
                    ca.server_cert(&[&mx], Validity::Current).spki_sha256
                )),
            }
            if let Some(policy) = &d.policy {
                policies.push_str(&format!("{} {policy}\n", d.name()));
            }
            if let Some(body) = &d.sts {
                let host = net.host();
                records.push(format!("mta-sts.{label} A {host}"));
                records.push(format!("_mta-sts.{label} TXT \"v=STSv1; id=1\""));
                let cert = ca.server_cert(&[&format!("mta-sts.{label}.{ZONE}")], Validity::Current);
                let body: &'static str = body.clone().leak();
                policy_hosts.insert(
                    d.name(),
                    HttpsSink::start_at(
                        std::net::SocketAddr::from((host, 443)),
                        cert.server_config,
                        move |_| Answer::Text {
                            status: 200,
                            content_type: "text/plain",
                            body,
                        },
                    ),
                );
            }
            mxes.insert(d.name(), SmtpSink::start_mx(ip, starttls));
        }
        let policy_file = dir.path().join("tls_policy");
        std::fs::write(&policy_file, policies).unwrap();
        let policy_map = format!("texthash:{}", root.inside_path(&policy_file).display());
        let dns = LabDns::start(&net, &records);
        Lab {
            root,
            _dir: dir,
            ca,
            mxes,
            dns,
            policy_map,
            policy_hosts,
        }
    }

    /// Stops the MTA-STS policy host of `domain`: its name still resolves,
    /// nothing answers there.
    pub fn stop_policy_host(&mut self, domain: &str) {
        self.policy_hosts
            .remove(domain)
            .unwrap_or_else(|| panic!("{domain} has no policy host"));
    }

    /// The lab CA's file as Postfix in the root reads it.
    pub fn ca_file(&self) -> String {
        self.root
            .inside_path(&self.ca.ca_file)
            .display()
            .to_string()
    }

    /// Postfix options for an instance of this lab with TLSRPT on: the lab
    /// CA trusted, the lab's policy table, DNSSEC lookups (for DANE), the
    /// datagrams to `run/tlsrpt/tlsrpt-collectd.socket` of its queue.
    pub fn postfix_options(&self) -> Options {
        Options::lab(&self.root, &self.dns)
            .main_cf(&format!("smtp_tls_CAfile = {}", self.ca_file()))
            .main_cf(&format!("smtp_tls_policy_maps = {}", self.policy_map))
            .main_cf("smtp_dns_support_level = dnssec")
            .main_cf("smtp_tlsrpt_enable = yes")
            .main_cf("smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt-collectd.socket")
    }
}

/// The collector socket of an instance, on the host: Postfix's smtp runs
/// chrooted into the queue directory and sends to
/// `run/tlsrpt/tlsrpt-collectd.socket` there. The directory is made
/// (postfix cannot write the queue's top).
pub fn collector_socket(postfix: &Postfix) -> std::path::PathBuf {
    let dir = postfix.dir().join("queue/run/tlsrpt");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("tlsrpt-collectd.socket");
    // sun_path holds 108 bytes with the final NUL.
    assert!(
        socket.as_os_str().len() < 108,
        "{} is too long for a unix socket: set MAILTLS_LAB_DIR to a shorter directory for the lab's roots",
        socket.display()
    );
    socket
}

/// Postfix's own account of one TLSRPT event: its `TLSRPT: status=...`
/// log line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LoggedEvent {
    pub domain: String,
    pub success: bool,
    /// Postfix's name, such as `starttls_not_supported`; empty for success.
    pub failure_type: String,
    pub receiving_mx: String,
}

impl LoggedEvent {
    /// The RFC 8460 section 4.3 result type of the failure
    /// (`starttls-not-supported`).
    pub fn result_type(&self) -> String {
        self.failure_type.replace('_', "-")
    }
}

/// Every `TLSRPT: status=` line of a maillog.
pub fn logged_events(maillog: &str) -> Vec<LoggedEvent> {
    maillog
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("TLSRPT: status=")? + "TLSRPT: ".len()..];
            let field = |name: &str| -> String {
                rest.split(", ")
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap_or("")
                    .to_string()
            };
            Some(LoggedEvent {
                domain: field("domain"),
                success: field("status") == "success",
                failure_type: field("failure_type"),
                receiving_mx: field("receiving_mx"),
            })
        })
        .collect()
}
