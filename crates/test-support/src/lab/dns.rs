//! The lab's DNS: one signed zone served by Knot DNS and a validating
//! Unbound in front of it, both on loopback addresses of the test's own
//! [`Net`], both stopped when the [`LabDns`] is dropped.
//!
//! Every name is DNSSEC-secure (the zone's key-signing key is Unbound's
//! trust anchor), so a Postfix at `smtp_tls_security_level = dane` with
//! `smtp_dns_support_level = dnssec` finds TLSA records usable (RFC 7672
//! section 2.2), and the `ad` flag reaches it through a resolv.conf with
//! `options trust-ad` ([`LabDns::resolv_conf`]).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The zone every lab serves; test domains are names under it.
pub const ZONE: &str = "lab.test";

/// A test's own /24 of 127.0.0.0/8: `127.53.N.0`. `.1` is Knot, `.2`
/// Unbound, [`Net::host`] hands out the rest (the lab's MX servers).
#[derive(Debug)]
pub struct Net {
    third: u8,
    next_host: AtomicU8,
}

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

impl Net {
    /// A /24 no other lab of this process uses (a process takes them in
    /// turn from a start that depends on its pid, so that a lab left by a
    /// killed run is unlikely to be in the way).
    pub fn new() -> Net {
        let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let base = (std::process::id() % 50) as u8 * 5;
        Net {
            third: base.wrapping_add(n) % 250 + 1,
            next_host: AtomicU8::new(10),
        }
    }

    pub fn knot(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 53, self.third, 1)
    }

    pub fn resolver(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 53, self.third, 2)
    }

    /// A fresh address of this net for a server of the test's.
    pub fn host(&self) -> Ipv4Addr {
        let n = self.next_host.fetch_add(1, Ordering::SeqCst);
        assert!(n < 255, "the lab net ran out of addresses");
        Ipv4Addr::new(127, 53, self.third, n)
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

/// A running lab DNS.
pub struct LabDns {
    dir: tempfile::TempDir,
    resolver: Ipv4Addr,
    knot: Child,
    /// None until Knot has signed the zone.
    unbound: Option<Child>,
}

impl LabDns {
    /// Serve `records` (zone-file lines relative to [`ZONE`], such as
    /// `"ok MX 10 mx-ok"` or `"_smtp._tls.ok TXT \"v=TLSRPTv1; rua=mailto:r@lab.test\""`)
    /// signed, and a validating resolver for them. Waits until the
    /// resolver answers with the `ad` flag; panics with both logs if not.
    /// The resolver caches nothing, so that every answer is the zone's.
    pub fn start(net: &Net, records: &[String]) -> LabDns {
        LabDns::start_with_cache(net, records, false)
    }

    /// [`LabDns::start`] with a resolver that caches answers for their
    /// TTL (60 s), as the resolver of a production host does: for
    /// benchmarks, where the zone does not change.
    pub fn start_caching(net: &Net, records: &[String]) -> LabDns {
        LabDns::start_with_cache(net, records, true)
    }

    fn start_with_cache(net: &Net, records: &[String], cache: bool) -> LabDns {
        let dir = tempfile::Builder::new()
            .prefix("mailtls-dns.")
            .tempdir()
            .unwrap();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        let mut zone = format!(
            "$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A {}\n",
            net.knot()
        );
        for r in records {
            zone.push_str(r);
            zone.push('\n');
        }
        std::fs::write(d.join("lab.zone"), zone).unwrap();
        std::fs::create_dir(d.join("knot")).unwrap();
        std::fs::write(
            d.join("knot.conf"),
            format!(
                "server:\n  rundir: \"{dir}/knot\"\n  listen: {addr}@53\n\
                 log:\n  - target: stderr\n    any: info\n\
                 database:\n  storage: \"{dir}/knot\"\n\
                 policy:\n  - id: lab\n    algorithm: ecdsap256sha256\n    nsec3: off\n\
                 zone:\n  - domain: {ZONE}\n    file: \"{dir}/lab.zone\"\n    storage: \"{dir}/knot\"\n    \
                 dnssec-signing: on\n    dnssec-policy: lab\n    zonefile-sync: -1\n    journal-content: none\n",
                dir = d.display(),
                addr = net.knot(),
            ),
        )
        .unwrap();
        let knot = Command::new("knotd")
            .arg("-c")
            .arg(d.join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("knot.log")).unwrap())
            .stderr(std::fs::File::create(d.join("knot.err")).unwrap())
            .spawn()
            .expect("run knotd (Debian's knot; scripts/test installs it)");
        let mut dns = LabDns {
            resolver: net.resolver(),
            unbound: None,
            knot,
            dir,
        };
        // The signed zone's key-signing key (flags 257) is the trust anchor.
        let ksk = dns.wait_for("Knot to sign the zone", || {
            dig(net.knot(), &["+short", "DNSKEY", ZONE])
                .lines()
                .find(|l| l.starts_with("257 "))
                .map(str::to_string)
        });
        std::fs::write(
            d.join("unbound.conf"),
            format!(
                "server:\n  interface: {resolver}\n  port: 53\n  do-ip6: no\n  \
                 do-not-query-localhost: no\n  username: \"\"\n  chroot: \"\"\n  \
                 directory: \"{dir}\"\n  pidfile: \"{dir}/unbound.pid\"\n  use-syslog: no\n  \
                 logfile: \"{dir}/unbound.log\"\n  verbosity: 1\n  val-log-level: 2\n  \
                 module-config: \"validator iterator\"\n  local-zone: \"test.\" nodefault\n  \
                 access-control: 127.0.0.0/8 allow\n{cache}  \
                 trust-anchor: \"{ZONE}. DNSKEY {ksk}\"\n\
                 stub-zone:\n  name: \"{ZONE}\"\n  stub-addr: {knot}\n",
                cache = if cache {
                    ""
                } else {
                    "  cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n"
                },
                resolver = net.resolver(),
                dir = d.display(),
                knot = net.knot(),
            ),
        )
        .unwrap();
        dns.unbound = Some(
            Command::new("unbound")
                .arg("-d")
                .arg("-c")
                .arg(d.join("unbound.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("unbound.err")).unwrap())
                .spawn()
                .expect("run unbound (Debian's unbound; scripts/test installs it)"),
        );
        dns.wait_for("Unbound to answer with the ad flag", || {
            let answer = dig(net.resolver(), &["+dnssec", "SOA", ZONE]);
            answer
                .lines()
                .any(|l| l.contains(";; flags:") && l.contains(" ad"))
                .then_some(())
        });
        dns
    }

    /// The resolv.conf that sends a resolver (glibc's, in Postfix's smtp
    /// chroot) to this lab: `trust-ad` keeps the `ad` flag (glibc drops it
    /// otherwise).
    pub fn resolv_conf(&self) -> String {
        format!("nameserver {}\noptions trust-ad\n", self.resolver)
    }

    pub fn resolver(&self) -> Ipv4Addr {
        self.resolver
    }

    /// Where the zone file and the servers' logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The servers' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        ["knot.err", "unbound.err", "unbound.log", "lab.zone"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}:\n{}",
                    std::fs::read_to_string(self.dir().join(f)).unwrap_or_default()
                )
            })
            .collect()
    }

    fn wait_for<T>(&mut self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(value) = probe() {
                return value;
            }
            let exited = [
                self.knot.try_wait(),
                self.unbound.as_mut().map_or(Ok(None), Child::try_wait),
            ];
            if Instant::now() > deadline
                || exited
                    .iter()
                    .any(|e| matches!(e, Ok(Some(status)) if !status.success()))
            {
                panic!("lab DNS: no {what}: {exited:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LabDns {
    fn drop(&mut self) {
        for child in self.unbound.iter_mut().chain([&mut self.knot]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `dig @server ARGS`, its output ("" when dig fails).
pub fn dig(server: Ipv4Addr, args: &[&str]) -> String {
    Command::new("dig")
        .arg(format!("@{server}"))
        .args(["+time=1", "+tries=1"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
