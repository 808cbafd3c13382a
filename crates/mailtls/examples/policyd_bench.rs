//! The fast half of `bench/run policyd` (bench/policyd.py drives it): the
//! lab that serves any number of MTA-STS domains cheaply, and a socketmap
//! load generator that does not make itself the bottleneck.
//!
//! ```text
//! policyd_bench lab [--uncached-dns]
//!     signed lab DNS (Knot and a validating Unbound that caches for the
//!     records' TTL, as a production resolver; --uncached-dns: nothing,
//!     as the tests' lab) where every dN.bench.lab.test has an MX, an
//!     `_mta-sts` record and a policy host (wildcards), and that policy
//!     host: one address, port
//!     443, a lab CA certificate made for whatever name the client asks
//!     for (SNI). Prints one JSON line (resolver, ca_file, resolv_conf,
//!     suffix), serves until its standard input closes. Needs root
//!     (port 53 and 443 on 127.53.x.x).
//! policyd_bench load --address HOST:PORT --domains N [--connections C]
//!     [--pipeline P] [--seconds S | --once]
//!     C connections, each sending P lookups `postfix dI.bench.lab.test`
//!     at a time and reading their P answers; for S seconds, or (--once)
//!     each of the N domains exactly once (to fill a cache). Prints one
//!     JSON line: answers, seconds, answers per second, latency p50 and
//!     p99 (from a batch's write to each answer), answers that were not
//!     `OK secure` and the first of them.
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailtls_test_support::https_sink::{Answer, HttpsSink};
use mailtls_test_support::lab::{LabDns, Net, ZONE};
use mailtls_test_support::tls::{TestCa, Validity};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Every domain of the benchmark is `dN.` this.
const SUFFIX: &str = "bench.lab.test";

/// The one policy every domain publishes.
const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.bench.lab.test\nmax_age: 604800\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("lab") => lab(args.iter().any(|a| a == "--uncached-dns")),
        Some("load") => load(&args[1..]),
        _ => {
            eprintln!("usage: policyd_bench lab [--uncached-dns] | load --address HOST:PORT --domains N [--connections C] [--pipeline P] [--seconds S | --once]");
            std::process::exit(2);
        }
    }
}

/// A certificate of the lab CA for the name each client asks for: one
/// policy host serves every `mta-sts.dN.bench.lab.test` (a wildcard
/// certificate cannot: it covers one label).
struct CertificatePerName {
    ca: TestCa,
}

impl std::fmt::Debug for CertificatePerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificatePerName")
    }
}

impl ResolvesServerCert for CertificatePerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_string();
        let config = self
            .ca
            .server_cert(&[&name], Validity::Current)
            .server_config;
        config.cert_resolver.resolve(hello)
    }
}

fn lab(uncached_dns: bool) {
    let dir = tempfile::Builder::new()
        .prefix("mailtls-policyd-bench.")
        .tempdir()
        .unwrap();
    let net = Net::new();
    let policy_host = net.host();
    let mx = net.host();
    let records = [
        "*.bench MX 10 mx.bench".to_string(),
        "*.bench TXT \"v=STSv1; id=bench1\"".to_string(),
        format!("*.bench A {policy_host}"),
        format!("mx.bench A {mx}"),
    ];
    let dns = if uncached_dns {
        LabDns::start(&net, &records)
    } else {
        LabDns::start_caching(&net, &records)
    };
    let ca = TestCa::new(dir.path());
    let ca_file = ca.ca_file.clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertificatePerName { ca }));
    let _host = HttpsSink::start_at(
        SocketAddr::from((policy_host, 443)),
        Arc::new(config),
        |_| Answer::Text {
            status: 200,
            content_type: "text/plain",
            body: POLICY,
        },
    );
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, dns.resolv_conf()).unwrap();
    println!(
        "{}",
        serde_json::json!({
            "resolver": dns.resolver().to_string(),
            "ca_file": ca_file,
            "resolv_conf": resolv_conf,
            "suffix": SUFFIX,
            "zone": ZONE,
        })
    );
    std::io::stdout().flush().unwrap();
    // Serve until the driver closes our standard input.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    not_ok: u64,
    first_not_ok: Option<String>,
}

fn load(args: &[String]) {
    let option = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).map(String::as_str).expect(name))
    };
    let number = |name: &str, default: u64| -> u64 {
        option(name).map_or(default, |v| v.parse().expect(name))
    };
    let address: SocketAddr = option("--address").expect("--address").parse().unwrap();
    let domains = number("--domains", 1000) as usize;
    let connections = number("--connections", 1) as usize;
    let pipeline = number("--pipeline", 1) as usize;
    let once = args.iter().any(|a| a == "--once");
    let seconds = number("--seconds", 5);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|c| {
                scope.spawn(move || {
                    // --once: this connection's share of the domains; else
                    // all of them, from a start of its own, round and round.
                    let keys: Vec<usize> = if once {
                        (c..domains).step_by(connections).collect()
                    } else {
                        (0..domains)
                            .map(|i| (i + c * domains / connections) % domains)
                            .collect()
                    };
                    run_connection(address, &keys, pipeline, (!once).then_some(deadline))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "{}",
        serde_json::json!({
            "connections": connections,
            "pipeline": pipeline,
            "answers": latencies.len(),
            "seconds": elapsed,
            "per_second": latencies.len() as f64 / elapsed,
            "p50_us": percentile(0.50),
            "p99_us": percentile(0.99),
            "not_ok": tallies.iter().map(|t| t.not_ok).sum::<u64>(),
            "first_not_ok": tallies.iter().find_map(|t| t.first_not_ok.clone()),
        })
    );
}

/// Lookups of `keys` (domain numbers) on one connection, `pipeline` at a
/// time: once through them, or round and round until `deadline`.
fn run_connection(
    address: SocketAddr,
    keys: &[usize],
    pipeline: usize,
    deadline: Option<Instant>,
) -> Tally {
    let mut tally = Tally::default();
    if keys.is_empty() {
        return tally;
    }
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut next = 0;
    let mut batch = Vec::new();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d)
            || (deadline.is_none() && next >= keys.len())
        {
            return tally;
        }
        batch.clear();
        let mut count = 0;
        while count < pipeline && (deadline.is_some() || next < keys.len()) {
            let payload = format!("postfix d{}.{SUFFIX}", keys[next % keys.len()]);
            batch.extend_from_slice(format!("{}:{payload},", payload.len()).as_bytes());
            next += 1;
            count += 1;
        }
        let sent = Instant::now();
        stream.write_all(&batch).unwrap();
        for _ in 0..count {
            let answer = read_netstring(&mut reader);
            tally
                .latencies_us
                .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if !answer.starts_with("OK secure ") {
                tally.not_ok += 1;
                tally.first_not_ok.get_or_insert(answer);
            }
        }
    }
}

fn read_netstring(reader: &mut BufReader<TcpStream>) -> String {
    let mut length = Vec::new();
    reader.read_until(b':', &mut length).unwrap();
    let length: usize = std::str::from_utf8(&length[..length.len().saturating_sub(1)])
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("not a netstring length: {length:?}"));
    let mut payload = vec![0; length + 1];
    reader.read_exact(&mut payload).unwrap();
    assert_eq!(payload.pop(), Some(b','), "a netstring ends with a comma");
    String::from_utf8(payload).unwrap()
}
