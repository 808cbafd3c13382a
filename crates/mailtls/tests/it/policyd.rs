//! `mailtls policyd` end to end on the host: the real binary, the lab's
//! signed DNS (Knot) behind a validating Unbound, and MTA-STS policy hosts
//! on lab addresses, port 443, with certificates of a test CA. Requests go
//! over TCP in the socketmap protocol, as Postfix sends them. Run them with
//! `cargo test -p mailtls --test it policyd::`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::https_sink::{Answer, HttpsSink};
use crate::support::lab::{LabDns, Net, ZONE};
use crate::support::tls::{TestCa, Validity};

const WAIT: Duration = Duration::from_secs(30);

const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx.enf.lab.test\nmx: *.enf.lab.test\nmax_age: 86400\n";
const TESTING: &str = "version: STSv1\nmode: testing\nmx: mx.tst.lab.test\nmax_age: 86400\n";
const NONE: &str = "version: STSv1\nmode: none\nmax_age: 86400\n";
/// `mode: enforce` without any `mx`: invalid (RFC 8461 section 3.2).
const NO_MX: &str = "version: STSv1\nmode: enforce\nmax_age: 86400\n";
/// Valid (an extension value may hold a brace), but Postfix cannot carry
/// the line in `{ policy_string = ... }`.
const BRACE: &str =
    "version: STSv1\nmode: enforce\nmx: mx.brace.lab.test\nmax_age: 86400\nx_note: a{b\n";
/// Expires 6 seconds after the fetch.
const SHORT: &str = "version: STSv1\nmode: enforce\nmx: mx.short.lab.test\nmax_age: 6\n";

/// The `OK` answer for [`ENFORCE`] in map `postfix`.
const ENFORCE_ANSWER: &str = "OK secure match=mx.enf.lab.test:.enf.lab.test servername=hostname \
policy_type=sts policy_domain=enf.lab.test mx_host_pattern=mx.enf.lab.test \
mx_host_pattern=*.enf.lab.test { policy_string = version: STSv1 } \
{ policy_string = mode: enforce } { policy_string = mx: mx.enf.lab.test } \
{ policy_string = mx: *.enf.lab.test } { policy_string = max_age: 86400 }";

/// A lab: DNS, a CA, and one policy host per domain that has one.
pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) net: Net,
    pub(crate) ca: TestCa,
    pub(crate) dns: Option<LabDns>,
    pub(crate) records: Vec<String>,
}

impl Lab {
    pub(crate) fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        Lab {
            dir,
            net: Net::new(),
            ca,
            dns: None,
            records: Vec::new(),
        }
    }

    /// `LABEL.lab.test` with an MX and, unless `id` is `None`, an
    /// `_mta-sts` record with that id. Returns the address of
    /// `mta-sts.LABEL.lab.test` (in DNS whether or not a host listens).
    pub(crate) fn domain(&mut self, label: &str, id: Option<&str>) -> std::net::Ipv4Addr {
        let mx = self.net.host();
        let policy_host = self.net.host();
        self.records.extend([
            format!("{label} MX 10 mx.{label}"),
            format!("mx.{label} A {mx}"),
            format!("mta-sts.{label} A {policy_host}"),
        ]);
        if let Some(id) = id {
            self.records
                .push(format!("_mta-sts.{label} TXT \"v=STSv1; id={id}\""));
        }
        policy_host
    }

    /// A policy host for `LABEL` at `address`:443 answering every request
    /// with `answer`.
    pub(crate) fn policy_host(
        &self,
        label: &str,
        address: std::net::Ipv4Addr,
        answer: Answer,
    ) -> HttpsSink {
        self.policy_host_with(label, address, Validity::Current, answer)
    }

    /// [`Lab::policy_host`] with a certificate of this `validity`.
    pub(crate) fn policy_host_with(
        &self,
        label: &str,
        address: std::net::Ipv4Addr,
        validity: Validity,
        answer: Answer,
    ) -> HttpsSink {
        let name = format!("mta-sts.{label}.{ZONE}");
        let cert = self.ca.server_cert(&[&name], validity);
        HttpsSink::start_at(
            SocketAddr::from((address, 443)),
            cert.server_config,
            move |_| answer,
        )
    }

    pub(crate) fn start_dns(&mut self) {
        self.dns = Some(LabDns::start(&self.net, &self.records));
    }

    /// `mailtls policyd` on this lab's resolver, trusting its CA, with
    /// `allow_private_addresses = 1` (the lab is on loopback) unless
    /// `extra` sets it.
    pub(crate) fn policyd(&self, extra: &[&str]) -> Policyd {
        let resolver = self.dns.as_ref().expect("start_dns first").resolver();
        let mut args = vec![
            "--nameservers".to_string(),
            resolver.to_string(),
            "--sts_ca_file".to_string(),
            self.ca.ca_file.display().to_string(),
            "--dns_timeout".to_string(),
            "2".to_string(),
        ];
        if !extra.contains(&"--allow_private_addresses") {
            args.extend(["--allow_private_addresses".to_string(), "1".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Policyd::start(self.dir.path(), &args)
    }
}

const TEXT: &str = "text/plain";

pub(crate) fn policy(body: &'static str) -> Answer {
    Answer::Text {
        status: 200,
        content_type: TEXT,
        body,
    }
}

/// A running `mailtls policyd`, killed when dropped.
pub(crate) struct Policyd {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl Policyd {
    /// Started with its log and, unless `args` name another, its
    /// database in `dir`, listening on a free TCP port of 127.0.0.1.
    pub(crate) fn start(dir: &Path, args: &[String]) -> Policyd {
        let port = crate::support::free_port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join(format!("policyd-{port}.log"));
        let mut command = Command::new(crate::support::mailtls_bin());
        command
            .arg("policyd")
            .args(["--listen", &format!("inet:{address}")])
            .args(["--log_level", "debug"]);
        if !args.iter().any(|a| a == "--database") {
            command
                .arg("--database")
                .arg(dir.join(format!("policyd-{port}.sqlite")));
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut policyd = Policyd {
            child,
            address,
            log,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(address).is_err() {
            if let Ok(Some(status)) = policyd.child.try_wait() {
                panic!("policyd exited with {status}:\n{}", policyd.log());
            }
            assert!(
                Instant::now() < deadline,
                "policyd does not listen:\n{}",
                policyd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        policyd
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
    }

    /// One lookup on a connection of its own: the answer's payload.
    pub(crate) fn ask(&self, map: &str, key: &str) -> String {
        let mut stream = self.connect();
        stream
            .write_all(&netstring(&format!("{map} {key}")))
            .unwrap();
        read_answer(&mut stream).unwrap_or_else(|e| panic!("{map} {key}: {e}\n{}", self.log()))
    }

    /// Where it listens.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Policyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn netstring(payload: &str) -> Vec<u8> {
    format!("{}:{payload},", payload.len()).into_bytes()
}

/// Reads one netstring answer; `Err` at end of stream or on bad framing.
pub(crate) fn read_answer(stream: &mut TcpStream) -> Result<String, String> {
    let mut length = String::new();
    let mut byte = [0];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("end of stream after {length:?}")),
            Ok(_) if byte[0] == b':' => break,
            Ok(_) => length.push(byte[0] as char),
            Err(e) => return Err(e.to_string()),
        }
    }
    let length: usize = length.parse().map_err(|_| format!("length {length:?}"))?;
    let mut payload = vec![0; length + 1];
    stream.read_exact(&mut payload).map_err(|e| e.to_string())?;
    if payload.pop() != Some(b',') {
        return Err("no comma".into());
    }
    String::from_utf8(payload).map_err(|e| e.to_string())
}

#[test]
fn answers_per_policy() {
    let mut lab = Lab::new();
    let enf = lab.domain("enf", Some("enf1"));
    let tst = lab.domain("tst", Some("tst1"));
    let non = lab.domain("non", Some("non1"));
    lab.domain("norec", None);
    let inv = lab.domain("inv", Some("inv1"));
    let html = lab.domain("html", Some("html1"));
    let moved = lab.domain("moved", Some("moved1"));
    let oldcert = lab.domain("oldcert", Some("old1"));
    let brace = lab.domain("brace", Some("brace1"));
    let big = lab.domain("big", Some("big1"));
    // A policy host address where nothing listens.
    lab.domain("down", Some("down1"));
    // DANE: the MX of "dane" has a TLSA record, one of the two of
    // "danep" has; "dane" also publishes an MTA-STS record, which DANE
    // takes precedence over (RFC 8461 section 2).
    let key = lab.ca.server_cert(&["mx.dane.lab.test"], Validity::Current);
    lab.domain("dane", Some("dane1"));
    lab.records.extend([
        format!("_25._tcp.mx.dane TLSA 3 1 1 {}", key.spki_sha256),
        "danep MX 10 mx1.danep".to_string(),
        "danep MX 20 mx2.danep".to_string(),
        format!("mx1.danep A {}", lab.net.host()),
        format!("mx2.danep A {}", lab.net.host()),
        format!("_25._tcp.mx1.danep TLSA 3 1 1 {}", key.spki_sha256),
    ]);
    lab.start_dns();
    let _hosts = [
        lab.policy_host("enf", enf, policy(ENFORCE)),
        lab.policy_host("tst", tst, policy(TESTING)),
        lab.policy_host("non", non, policy(NONE)),
        lab.policy_host("inv", inv, policy(NO_MX)),
        lab.policy_host(
            "html",
            html,
            Answer::Text {
                status: 200,
                content_type: "text/html",
                body: ENFORCE,
            },
        ),
        lab.policy_host(
            "moved",
            moved,
            Answer::Text {
                status: 301,
                content_type: TEXT,
                body: ENFORCE,
            },
        ),
    ];
    // Over 64 KiB (RFC 8461 section 3.3), valid but for its length.
    let long_policy = format!("{ENFORCE}{}", "x: y\n".repeat(16 * 1024)).leak();
    let _more_hosts = [
        lab.policy_host_with("oldcert", oldcert, Validity::Expired, policy(ENFORCE)),
        lab.policy_host("big", big, policy(long_policy)),
        lab.policy_host("brace", brace, policy(BRACE)),
    ];
    let policyd = lab.policyd(&[]);
    let log = || policyd.log();

    // Enforce: the exact answer; the key is normalized first.
    assert_eq!(
        policyd.ask("postfix", "Enf.Lab.Test."),
        ENFORCE_ANSWER,
        "{}",
        log()
    );
    assert_eq!(
        policyd.ask("postfix-notlsrpt", "enf.lab.test"),
        "OK secure match=mx.enf.lab.test:.enf.lab.test servername=hostname"
    );
    // A policy line Postfix cannot carry: the policy applies, without the
    // TLSRPT attributes.
    assert_eq!(
        policyd.ask("postfix", "brace.lab.test"),
        "OK secure match=mx.brace.lab.test servername=hostname",
        "{}",
        log()
    );
    // Testing (notfound by default), none, no record: NOTFOUND.
    for domain in ["tst", "non", "norec"] {
        assert_eq!(
            policyd.ask("postfix", &format!("{domain}.lab.test")),
            "NOTFOUND ",
            "{domain}\n{}",
            log()
        );
    }
    // An invalid policy, a wrong media type, a redirect and a host that
    // does not answer: no policy (RFC 8461 section 3.3), and logged.
    for domain in ["inv", "html", "moved", "oldcert", "big", "down"] {
        assert_eq!(
            policyd.ask("postfix", &format!("{domain}.lab.test")),
            "NOTFOUND ",
            "{domain}\n{}",
            log()
        );
        assert!(
            log().contains(&format!("{domain}.lab.test: MTA-STS policy fetch failed")),
            "{domain}\n{}",
            log()
        );
    }
    assert!(log().contains("not text/plain"), "{}", log());
    assert!(log().contains("answered 301"), "{}", log());
    assert!(log().contains("without any mx field"), "{}", log());
    assert!(
        log().contains("policy of more than 65536 bytes"),
        "{}",
        log()
    );
    assert!(
        log().lines().any(
            |l| l.contains("oldcert.lab.test: MTA-STS policy fetch failed")
                && l.to_lowercase().contains("expired")
        ),
        "{}",
        log()
    );
    // DANE before MTA-STS.
    assert_eq!(policyd.ask("postfix", "dane.lab.test"), "OK dane-only");
    assert_eq!(policyd.ask("postfix", "danep.lab.test"), "OK dane");
    assert!(!log().contains("https://mta-sts.dane"), "{}", log());
    // Keys that are not a domain; an unknown map.
    for key in [
        ".enf.lab.test",
        "[mx.enf.lab.test]:25",
        "192.0.2.1",
        "[192.0.2.1]",
    ] {
        assert_eq!(policyd.ask("postfix", key), "NOTFOUND ", "{key}");
    }
    assert_eq!(
        policyd.ask("nosuchmap", "enf.lab.test"),
        "PERM unknown map nosuchmap"
    );

    // testing_answer: enforce answers a testing policy as an enforced one,
    // may with opportunistic TLS and the TLSRPT attributes.
    let strict = lab.policyd(&["--testing_answer", "enforce"]);
    assert_eq!(
        strict.ask("postfix-notlsrpt", "tst.lab.test"),
        "OK secure match=mx.tst.lab.test servername=hostname",
        "{}",
        strict.log()
    );
    let may = lab.policyd(&["--testing_answer", "may"]);
    assert_eq!(
        may.ask("postfix", "tst.lab.test"),
        "OK may policy_type=sts policy_domain=tst.lab.test mx_host_pattern=mx.tst.lab.test \
         { policy_string = version: STSv1 } { policy_string = mode: testing } \
         { policy_string = mx: mx.tst.lab.test } { policy_string = max_age: 86400 }",
        "{}",
        may.log()
    );
}

#[test]
fn policy_hosts_at_private_addresses_are_refused_by_default() {
    let mut lab = Lab::new();
    let address = lab.domain("enf", Some("enf1"));
    lab.start_dns();
    let host = lab.policy_host("enf", address, policy(ENFORCE));
    // The lab's addresses are loopback: not global.
    let policyd = lab.policyd(&["--allow_private_addresses", "0"]);
    assert_eq!(
        policyd.ask("postfix", "enf.lab.test"),
        "NOTFOUND ",
        "{}",
        policyd.log()
    );
    assert!(policyd.log().contains("not global"), "{}", policyd.log());
    assert!(host.requests().is_empty());
}

#[test]
fn a_cached_policy_outlives_its_host_until_it_expires() {
    let mut lab = Lab::new();
    let address = lab.domain("short", Some("s1"));
    lab.start_dns();
    let host = lab.policy_host("short", address, policy(SHORT));
    let policyd = lab.policyd(&[]);
    let secure = "OK secure match=mx.short.lab.test servername=hostname";

    assert_eq!(
        policyd.ask("postfix-notlsrpt", "short.lab.test"),
        secure,
        "{}",
        policyd.log()
    );
    let fetched = Instant::now();
    assert_eq!(policyd.ask("postfix-notlsrpt", "short.lab.test"), secure);
    assert_eq!(host.requests().len(), 1, "the second lookup used the cache");
    let request = &host.requests()[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("GET", "/.well-known/mta-sts.txt")
    );
    drop(host);

    // The host is gone: the cached policy still applies...
    assert_eq!(
        policyd.ask("postfix-notlsrpt", "short.lab.test"),
        secure,
        "{}",
        policyd.log()
    );
    // ... until max_age has passed.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(fetched.elapsed()));
    assert_eq!(
        policyd.ask("postfix-notlsrpt", "short.lab.test"),
        "NOTFOUND ",
        "{}",
        policyd.log()
    );
}

/// A policy host that accepts and then says nothing is given up after
/// `fetch_timeout` (no policy: RFC 8461 section 3.3), and lookups of other
/// domains are answered meanwhile.
#[test]
fn a_silent_policy_host_costs_fetch_timeout_and_blocks_no_one() {
    let mut lab = Lab::new();
    let slow = lab.domain("slow", Some("slow1"));
    let enf = lab.domain("enf", Some("enf1"));
    lab.start_dns();
    let _slow_host = lab.policy_host("slow", slow, Answer::Silence(Duration::from_secs(60)));
    let _enf_host = lab.policy_host("enf", enf, policy(ENFORCE));
    let policyd = lab.policyd(&["--fetch_timeout", "2"]);
    let started = Instant::now();
    let slow_lookup = std::thread::scope(|scope| {
        let slow_lookup = scope.spawn(|| {
            let answer = policyd.ask("postfix", "slow.lab.test");
            (answer, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(policyd.ask("postfix", "enf.lab.test"), ENFORCE_ANSWER);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the other lookup waited {:?}",
            started.elapsed()
        );
        slow_lookup.join().unwrap()
    });
    assert_eq!(slow_lookup.0, "NOTFOUND ", "{}", policyd.log());
    assert!(
        slow_lookup.1 >= Duration::from_secs(2) && slow_lookup.1 < Duration::from_secs(6),
        "{:?}",
        slow_lookup.1
    );
    assert!(policyd
        .log()
        .contains("slow.lab.test: MTA-STS policy fetch failed"));
}

/// The `database` option: a restarted server keeps applying a policy
/// whose host is now down (RFC 8461 section 3.3), from a SQLite file and
/// from PostgreSQL, and a second server of a fleet sharing the PostgreSQL
/// database applies it without ever reaching the host.
#[test]
fn a_stored_policy_survives_a_restart_and_is_shared_by_a_fleet() {
    let mut lab = Lab::new();
    let address = lab.domain("enf", Some("e1"));
    lab.start_dns();
    let host = lab.policy_host("enf", address, policy(ENFORCE));
    let cluster = crate::support::postgres::PgCluster::start();
    cluster.create_database("policyd");
    let shared = cluster.url("policyd");
    let file = lab.dir.path().join("kept.sqlite");
    let file = file.to_str().unwrap();

    let first_on_file = lab.policyd(&["--database", file]);
    let first_on_postgres = lab.policyd(&["--database", &shared]);
    for policyd in [&first_on_file, &first_on_postgres] {
        assert_eq!(
            policyd.ask("postfix", "enf.lab.test"),
            ENFORCE_ANSWER,
            "{}",
            policyd.log()
        );
    }
    assert_eq!(host.requests().len(), 2);
    drop((first_on_file, first_on_postgres, host));

    let again_on_file = lab.policyd(&["--database", file]);
    let again_on_postgres = lab.policyd(&["--database", &shared]);
    let another_of_the_fleet = lab.policyd(&["--database", &shared]);
    for policyd in [&again_on_file, &again_on_postgres, &another_of_the_fleet] {
        assert_eq!(
            policyd.ask("postfix", "enf.lab.test"),
            ENFORCE_ANSWER,
            "{}",
            policyd.log()
        );
        assert!(
            policyd.log().contains("loaded 1 cached policies"),
            "{}",
            policyd.log()
        );
        assert!(!policyd.log().contains("fetch failed"), "{}", policyd.log());
    }
    // Without the database, the restarted server has nothing to apply.
    let forgetful = lab.policyd(&["--database", ""]);
    assert_eq!(forgetful.ask("postfix", "enf.lab.test"), "NOTFOUND ");
}

#[test]
fn pipelining_framing_errors_and_sigterm() {
    let mut lab = Lab::new();
    let address = lab.domain("enf", Some("enf1"));
    lab.start_dns();
    let _host = lab.policy_host("enf", address, policy(ENFORCE));
    let mut policyd = lab.policyd(&[]);

    // Three requests in one write, one of them bad: three answers, in order.
    let mut stream = policyd.connect();
    let mut requests = netstring("postfix enf.lab.test");
    requests.extend(netstring("postfixnokey"));
    requests.extend(netstring("postfix-notlsrpt enf.lab.test"));
    stream.write_all(&requests).unwrap();
    assert_eq!(
        read_answer(&mut stream).unwrap(),
        ENFORCE_ANSWER,
        "{}",
        policyd.log()
    );
    assert!(read_answer(&mut stream).unwrap().starts_with("PERM "));
    assert_eq!(
        read_answer(&mut stream).unwrap(),
        "OK secure match=mx.enf.lab.test:.enf.lab.test servername=hostname"
    );

    // A framing error closes that connection, and only that one.
    let mut other = policyd.connect();
    stream.write_all(b"01:x,").unwrap();
    assert!(read_answer(&mut stream).is_err(), "connection not closed");
    other
        .write_all(&netstring("postfix norec.lab.test"))
        .unwrap();
    assert_eq!(read_answer(&mut other).unwrap(), "NOTFOUND ");
    assert_eq!(policyd.ask("postfix", "enf.lab.test"), ENFORCE_ANSWER);

    // SIGTERM: a clean stop.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(policyd.child.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = policyd.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", policyd.log());
}

#[test]
fn a_dns_failure_is_temp_not_no_policy() {
    // A name server that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policyd = Policyd::start(
        dir.path(),
        &[
            "--nameservers".to_string(),
            silent.local_addr().unwrap().to_string(),
            "--dns_timeout".to_string(),
            "1".to_string(),
        ],
    );
    let answer = policyd.ask("postfix", "example.com");
    assert!(answer.starts_with("TEMP "), "{answer}\n{}", policyd.log());
}

/// `max_connections`: idle clients beyond it wait in the kernel's backlog
/// instead of each holding a task; a place freed is taken at once.
#[test]
fn connections_beyond_max_connections_wait_for_a_place() {
    let mut lab = Lab::new();
    lab.domain("norec", None);
    lab.start_dns();
    let policyd = lab.policyd(&["--max_connections", "2"]);
    let mut first = policyd.connect();
    let _second = policyd.connect();
    first
        .write_all(&netstring("postfix norec.lab.test"))
        .unwrap();
    assert_eq!(read_answer(&mut first).unwrap(), "NOTFOUND ");
    // The third is accepted by the kernel, not served.
    let mut third = policyd.connect();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    third
        .write_all(&netstring("postfix norec.lab.test"))
        .unwrap();
    assert!(
        read_answer(&mut third).is_err(),
        "a third connection was served beside two"
    );
    // One leaves: the third is served.
    drop(first);
    third.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        read_answer(&mut third).unwrap(),
        "NOTFOUND ",
        "{}",
        policyd.log()
    );
}

/// `metrics_listen`: the answers of each kind, the fetches and the cached
/// domains, counted as they happened; promtool accepts the exposition.
#[test]
fn metrics_count_answers_fetches_and_cached_domains() {
    let mut lab = Lab::new();
    let address = lab.domain("enf", Some("enf1"));
    lab.domain("norec", None);
    lab.start_dns();
    let _host = lab.policy_host("enf", address, policy(ENFORCE));
    let metrics_port = crate::support::free_port();
    let policyd = lab.policyd(&["--metrics_listen", &format!("127.0.0.1:{metrics_port}")]);
    let mut stream = policyd.connect();
    let mut requests = netstring("postfix enf.lab.test");
    requests.extend(netstring("postfix enf.lab.test"));
    requests.extend(netstring("postfix norec.lab.test"));
    requests.extend(netstring("postfixnokey"));
    stream.write_all(&requests).unwrap();
    for _ in 0..4 {
        read_answer(&mut stream).unwrap();
    }
    let mut http = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    for series in [
        "policyd_answers_total{answer=\"ok\"} 2",
        "policyd_answers_total{answer=\"notfound\"} 1",
        "policyd_answers_total{answer=\"perm\"} 1",
        "policyd_answers_total{answer=\"temp\"} 0",
        "policyd_policy_fetches_total{result=\"ok\"} 1",
        "policyd_cached_domains 1",
    ] {
        assert!(body.contains(series), "{series} in\n{body}");
    }
    assert_eq!(crate::support::promtool_problems(body), "");
}

/// A flood of lookups for domains that do not exist (an attacker who can
/// make Postfix look up any domain, e.g. by sending mail to them) costs
/// bounded memory: past `cache_size` the daemon's caches (policies,
/// answers, DNS answers) drop the oldest, so its resident memory after
/// 36 000 such domains is what it was after 6 000, and a real policy is
/// still answered.
#[test]
fn a_flood_of_random_domains_does_not_grow_memory() {
    let mut lab = Lab::new();
    let address = lab.domain("enf", Some("enf1"));
    lab.start_dns();
    let _host = lab.policy_host("enf", address, policy(ENFORCE));
    let policyd = lab.policyd(&["--cache_size", "500"]);
    let flood = |from: usize, to: usize| {
        std::thread::scope(|scope| {
            for lane in 0..8 {
                let policyd = &policyd;
                scope.spawn(move || {
                    let mut stream = policyd.connect();
                    let names: Vec<usize> = (from..to).filter(|n| n % 8 == lane).collect();
                    for batch in names.chunks(200) {
                        let mut requests = Vec::new();
                        for n in batch {
                            requests.extend(netstring(&format!("postfix flood{n}.lab.test")));
                        }
                        stream.write_all(&requests).unwrap();
                        for n in batch {
                            let answer = read_answer(&mut stream)
                                .unwrap_or_else(|e| panic!("flood{n}: {e}\n{}", policyd.log()));
                            assert_eq!(answer, "NOTFOUND ", "flood{n}");
                        }
                    }
                });
            }
        });
    };
    let rss_kib = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", policyd.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .expect("VmRSS")
    };
    flood(0, 6_000);
    let warm = rss_kib();
    let started = Instant::now();
    flood(6_000, 36_000);
    let flooded = rss_kib();
    eprintln!(
        "policyd RSS after 6 000 random domains {warm} KiB, after 36 000 {flooded} KiB; 30 000 lookups in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        flooded < warm + 4 * 1024,
        "RSS grew from {warm} KiB to {flooded} KiB over 30 000 random domains"
    );
    assert_eq!(
        policyd.ask("postfix", "enf.lab.test"),
        ENFORCE_ANSWER,
        "{}",
        policyd.log()
    );
}
