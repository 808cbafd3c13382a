//! postfix-mta-sts-resolver 1.5.1 (from PyPI, in `.venv` by
//! scripts/setup-oracle) as an oracle for `mailtls policyd`: both run on
//! the same lab (signed DNS with `_mta-sts` records, HTTPS policy hosts
//! with lab CA certificates) and are asked the same socketmap lookups for
//! MTA-STS-only domains. Their answers are the same but for the
//! differences below, each deliberate on our side.
//!
//! The resolver runs on the host (the lab roots have no full Python), in a
//! mount namespace of its own where the lab's resolv.conf is bind-mounted
//! over /etc/resolv.conf (it has no name server option: c-ares and glibc
//! read that file) and with `SSL_CERT_FILE` naming the lab CA (aiohttp's
//! default context reads it).
//!
//! Compared as sets, not in order (their order means nothing to Postfix):
//! the `match=` patterns (the resolver takes them from a Python set, so
//! their order changes from run to run) and the `{ policy_string = ... }`
//! lines (the resolver sends the `mx` lines first, we send the policy's
//! lines in the policy's order, as RFC 8460 section 4.4 reports them).
//!
//! | lookup (policy) | ours | resolver | why ours |
//! |---|---|---|---|
//! | `max_age: 99999999` | `OK secure ...`, kept 31557600 s, the line reported as published | `NOTFOUND` | RFC 8461 section 3.2: the ABNF allows 10 digits and names 31557600 the maximum; we cap it (issue 23) rather than drop the domain's policy |
//! | `mx: mx.*.midwild...` | `NOTFOUND`: invalid policy | `OK secure match=mx.*.midwild...`: Postfix compares it literally, no MX matches, every mail deferred | RFC 8461 section 3.2: a wildcard is only the whole leftmost label |
//! | `mx: MX.Upper.lab.test.`, `mx: *.UPPER.lab.test` | patterns lower-cased, the final dot dropped (`match=`, `mx_host_pattern=`); `policy_string` as published | patterns as written (a final dot that no certificate name has) | RFC 8461 section 4.1: MX names compare as DNS names, without regard to case |
//! | an extension line `x_note: a{b` | `OK secure match=... servername=hostname`, no TLSRPT attributes | the line inside `{ policy_string = ... }`, whose braces Postfix's attribute syntax cannot hold (not measured on Postfix here) | the policy still enforced; the report loses that domain's strings rather than Postfix getting a malformed answer |
//! | `_mta-sts` `id=not-an-id!` | `NOTFOUND` | `OK secure ...` | RFC 8461 section 3.1: `id` is 1 to 32 letters and digits; a record that does not parse means no policy |
//! | key `bücher.lab.test` (U-label) | both look up the A-label; `policy_domain=xn--bcher-kva.lab.test` | `policy_domain=bücher.lab.test` | RFC 8460 section 4.4: the policy domain in A-labels |
//! | map `nosuchmap` | `PERM unknown map nosuchmap` | its default zone's answer | our map names are fixed (`postfix`, `postfix-notlsrpt`: docs/policyd.md); an unknown one is a configuration error |
//!
//! Everything else asked here gets the same answer: enforce with one and
//! with several patterns (a wildcard among them), CRLF with an extension
//! field and a charset, the key in capitals with a final dot, map
//! `postfix-notlsrpt`; `NOTFOUND` for testing, none, no record, two
//! records, an enforce policy without mx, an unknown mode, no version, a
//! bad max_age, text/html, 404, 301, a host that is down, an expired
//! certificate, and keys that are not a domain.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::policyd::{netstring, policy, read_answer, Lab};
use crate::support::https_sink::Answer;
use crate::support::tls::Validity;

const WAIT: Duration = Duration::from_secs(30);

/// postfix-mta-sts-resolver's `mta-sts-daemon` on a free port of
/// 127.0.0.1, with the TLSRPT attributes on (`default_zone`), and a zone
/// `postfix-notlsrpt` without them as our map of that name; killed when
/// dropped.
struct Resolver {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl Resolver {
    fn start(lab: &Lab) -> Resolver {
        let dir = lab.dir.path();
        let port = crate::support::free_port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join("mta-sts-daemon.yml");
        std::fs::write(
            &config,
            format!(
                "host: 127.0.0.1\nport: {port}\ncache:\n  type: internal\n\
                 default_zone:\n  tlsrpt: true\nzones:\n  postfix-notlsrpt:\n    tlsrpt: false\n"
            ),
        )
        .unwrap();
        let resolv_conf = dir.join("resolv.conf");
        let dns = lab.dns.as_ref().expect("start_dns first");
        std::fs::write(&resolv_conf, dns.resolv_conf()).unwrap();
        let log = dir.join("mta-sts-daemon.log");
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--",
                "sh",
                "-c",
                "mount --bind \"$1\" /etc/resolv.conf && exec \"$2\" -v debug -l \"$3\" -c \"$4\"",
                "sh",
            ])
            .arg(&resolv_conf)
            .arg(crate::support::upstream("mta-sts-daemon"))
            .arg(&log)
            .arg(&config)
            .env("SSL_CERT_FILE", &lab.ca.ca_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mta-sts-daemon.err")).unwrap())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut resolver = Resolver {
            child,
            address,
            log,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(address).is_err() {
            if let Ok(Some(status)) = resolver.child.try_wait() {
                panic!(
                    "mta-sts-daemon exited with {status}:\n{}{}",
                    std::fs::read_to_string(dir.join("mta-sts-daemon.err")).unwrap_or_default(),
                    resolver.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mta-sts-daemon does not listen:\n{}",
                resolver.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        resolver
    }

    fn ask(&self, map: &str, key: &str) -> String {
        let mut stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
            .write_all(&netstring(&format!("{map} {key}")))
            .unwrap();
        read_answer(&mut stream).unwrap_or_else(|e| panic!("{map} {key}: {e}\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer with the parts whose order means nothing sorted: the
/// `match=` patterns and the `{ ... }` attributes.
fn normalized(answer: &str) -> String {
    let mut words = Vec::new();
    let mut braced = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('{') {
        words.extend(rest[..open].split_whitespace().map(str::to_string));
        let close = open + rest[open..].find('}').expect("a closing brace");
        braced.push(rest[open..=close].to_string());
        rest = &rest[close + 1..];
    }
    words.extend(rest.split_whitespace().map(str::to_string));
    for word in &mut words {
        if let Some(patterns) = word.strip_prefix("match=") {
            let mut patterns: Vec<&str> = patterns.split(':').collect();
            patterns.sort_unstable();
            *word = format!("match={}", patterns.join(":"));
        }
    }
    braced.sort_unstable();
    words.extend(braced);
    words.join(" ")
}

/// What the two servers answer to one lookup.
enum Expect {
    /// The same answer once [`normalized`], starting with this (`OK secure`
    /// or `NOTFOUND`: both failing alike is not agreement).
    Same(&'static str),
    /// A difference of the table above: each answer as given (once
    /// [`normalized`]).
    Differ {
        ours: &'static str,
        theirs: &'static str,
    },
}

/// A policy body with these fields, leaked for the policy host.
fn body(text: String) -> &'static str {
    text.leak()
}

#[test]
fn policyd_answers_as_postfix_mta_sts_resolver_but_for_the_documented_differences() {
    let enforce = |label: &str| {
        format!("version: STSv1\nmode: enforce\nmx: mx.{label}.lab.test\nmax_age: 86400\n")
    };
    let mut lab = Lab::new();
    // (label, _mta-sts record id or none, the policy host's answer or none
    // for an address where nothing listens, its certificate).
    let text = |body: &'static str, content_type: &'static str, status: u16| Answer::Text {
        status,
        content_type,
        body,
    };
    let domains: Vec<(&str, Option<&str>, Option<Answer>, Validity)> = vec![
        ("one", Some("one1"), Some(policy(body(enforce("one")))), Validity::Current),
        (
            "many",
            Some("many1"),
            Some(policy(
                "version: STSv1\nmode: enforce\nmx: mx1.many.lab.test\nmx: *.many.lab.test\n\
                 mx: mx.elsewhere.test\nmax_age: 604800\n",
            )),
            Validity::Current,
        ),
        (
            "crlf",
            Some("crlf1"),
            Some(text(
                "version: STSv1\r\nmode: enforce\r\nmx: mx.crlf.lab.test\r\nmax_age: 86400\r\nx_contact: postmaster\r\n",
                "text/plain; charset=utf-8",
                200,
            )),
            Validity::Current,
        ),
        (
            "tst",
            Some("tst1"),
            Some(policy(
                "version: STSv1\nmode: testing\nmx: mx.tst.lab.test\nmax_age: 86400\n",
            )),
            Validity::Current,
        ),
        (
            "non",
            Some("non1"),
            Some(policy("version: STSv1\nmode: none\nmax_age: 86400\n")),
            Validity::Current,
        ),
        ("norec", None, None, Validity::Current),
        (
            "nomx",
            Some("nomx1"),
            Some(policy("version: STSv1\nmode: enforce\nmax_age: 86400\n")),
            Validity::Current,
        ),
        (
            "badmode",
            Some("badmode1"),
            Some(policy(
                "version: STSv1\nmode: strict\nmx: mx.badmode.lab.test\nmax_age: 86400\n",
            )),
            Validity::Current,
        ),
        (
            "nover",
            Some("nover1"),
            Some(policy(
                "mode: enforce\nmx: mx.nover.lab.test\nmax_age: 86400\n",
            )),
            Validity::Current,
        ),
        (
            "badage",
            Some("badage1"),
            Some(policy(
                "version: STSv1\nmode: enforce\nmx: mx.badage.lab.test\nmax_age: soon\n",
            )),
            Validity::Current,
        ),
        (
            "longage",
            Some("longage1"),
            Some(policy(
                "version: STSv1\nmode: enforce\nmx: mx.longage.lab.test\nmax_age: 99999999\n",
            )),
            Validity::Current,
        ),
        (
            "midwild",
            Some("midwild1"),
            Some(policy(
                "version: STSv1\nmode: enforce\nmx: mx.*.midwild.lab.test\nmax_age: 86400\n",
            )),
            Validity::Current,
        ),
        (
            "upper",
            Some("upper1"),
            Some(policy(
                "version: STSv1\nmode: enforce\nmx: MX.Upper.lab.test.\nmx: *.UPPER.lab.test\nmax_age: 86400\n",
            )),
            Validity::Current,
        ),
        (
            "brace",
            Some("brace1"),
            Some(policy(
                "version: STSv1\nmode: enforce\nmx: mx.brace.lab.test\nmax_age: 86400\nx_note: a{b\n",
            )),
            Validity::Current,
        ),
        (
            "html",
            Some("html1"),
            Some(text(body(enforce("html")), "text/html", 200)),
            Validity::Current,
        ),
        (
            "gone",
            Some("gone1"),
            Some(text(body(enforce("gone")), "text/plain", 404)),
            Validity::Current,
        ),
        (
            "moved",
            Some("moved1"),
            Some(text(body(enforce("moved")), "text/plain", 301)),
            Validity::Current,
        ),
        ("down", Some("down1"), None, Validity::Current),
        (
            "oldcert",
            Some("old1"),
            Some(policy(body(enforce("oldcert")))),
            Validity::Expired,
        ),
        (
            "badid",
            Some("not-an-id!"),
            Some(policy(body(enforce("badid")))),
            Validity::Current,
        ),
        (
            "xn--bcher-kva",
            Some("idn1"),
            Some(policy(body(enforce("xn--bcher-kva")))),
            Validity::Current,
        ),
    ];
    let mut hosts = Vec::new();
    let mut planned = Vec::new();
    for (label, id, answer, validity) in domains {
        let address = lab.domain(label, id);
        if let Some(answer) = answer {
            planned.push((label, address, answer, validity));
        }
    }
    lab.records.extend([
        // Two STSv1 records: no policy (RFC 8461 section 3.1).
        "two MX 10 mx.two".to_string(),
        "_mta-sts.two TXT \"v=STSv1; id=a\"".to_string(),
        "_mta-sts.two TXT \"v=STSv1; id=b\"".to_string(),
    ]);
    lab.start_dns();
    for (label, address, answer, validity) in planned {
        hosts.push(lab.policy_host_with(label, address, validity, answer));
    }
    let ours = lab.policyd(&[]);
    let theirs = Resolver::start(&lab);

    let cases: Vec<(&str, &str, Expect)> = vec![
        ("postfix", "one.lab.test", Expect::Same("OK secure")),
        ("postfix", "One.Lab.Test.", Expect::Same("OK secure")),
        ("postfix-notlsrpt", "one.lab.test", Expect::Same("OK secure")),
        ("postfix", "many.lab.test", Expect::Same("OK secure")),
        ("postfix", "crlf.lab.test", Expect::Same("OK secure")),
        ("postfix", "tst.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "non.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "norec.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "two.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "nomx.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "badmode.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "nover.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "badage.lab.test", Expect::Same("NOTFOUND")),
        (
            "postfix",
            "longage.lab.test",
            Expect::Differ {
                ours: "OK secure match=mx.longage.lab.test servername=hostname policy_type=sts \
                       policy_domain=longage.lab.test mx_host_pattern=mx.longage.lab.test \
                       { policy_string = version: STSv1 } { policy_string = mode: enforce } \
                       { policy_string = mx: mx.longage.lab.test } { policy_string = max_age: 99999999 }",
                theirs: "NOTFOUND ",
            },
        ),
        (
            "postfix",
            "midwild.lab.test",
            Expect::Differ {
                ours: "NOTFOUND ",
                theirs: "OK secure match=mx.*.midwild.lab.test servername=hostname policy_type=sts \
                         policy_domain=midwild.lab.test mx_host_pattern=mx.*.midwild.lab.test \
                         { policy_string = mx: mx.*.midwild.lab.test } { policy_string = version: STSv1 } \
                         { policy_string = mode: enforce } { policy_string = max_age: 86400 }",
            },
        ),
        (
            "postfix",
            "brace.lab.test",
            Expect::Differ {
                ours: "OK secure match=mx.brace.lab.test servername=hostname",
                theirs: "OK secure match=mx.brace.lab.test servername=hostname policy_type=sts \
                         policy_domain=brace.lab.test mx_host_pattern=mx.brace.lab.test \
                         { policy_string = mx: mx.brace.lab.test } { policy_string = version: STSv1 } \
                         { policy_string = mode: enforce } { policy_string = max_age: 86400 } \
                         { policy_string = x_note: a{b }",
            },
        ),
        (
            "postfix",
            "upper.lab.test",
            Expect::Differ {
                ours: "OK secure match=mx.upper.lab.test:.upper.lab.test servername=hostname \
                       policy_type=sts policy_domain=upper.lab.test mx_host_pattern=mx.upper.lab.test \
                       mx_host_pattern=*.upper.lab.test { policy_string = version: STSv1 } \
                       { policy_string = mode: enforce } { policy_string = mx: MX.Upper.lab.test. } \
                       { policy_string = mx: *.UPPER.lab.test } { policy_string = max_age: 86400 }",
                theirs: "OK secure match=MX.Upper.lab.test.:.UPPER.lab.test servername=hostname \
                         policy_type=sts policy_domain=upper.lab.test \
                         mx_host_pattern=MX.Upper.lab.test. mx_host_pattern=*.UPPER.lab.test \
                         { policy_string = mx: MX.Upper.lab.test. } { policy_string = mx: *.UPPER.lab.test } \
                         { policy_string = version: STSv1 } { policy_string = mode: enforce } \
                         { policy_string = max_age: 86400 }",
            },
        ),
        ("postfix", "html.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "gone.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "moved.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "down.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "oldcert.lab.test", Expect::Same("NOTFOUND")),
        (
            "postfix",
            "badid.lab.test",
            Expect::Differ {
                ours: "NOTFOUND ",
                theirs: "OK secure match=mx.badid.lab.test servername=hostname policy_type=sts \
                         policy_domain=badid.lab.test mx_host_pattern=mx.badid.lab.test \
                         { policy_string = mx: mx.badid.lab.test } { policy_string = version: STSv1 } \
                         { policy_string = mode: enforce } { policy_string = max_age: 86400 }",
            },
        ),
        ("postfix", "xn--bcher-kva.lab.test", Expect::Same("OK secure")),
        (
            "postfix",
            "bücher.lab.test",
            Expect::Differ {
                ours: "OK secure match=mx.xn--bcher-kva.lab.test servername=hostname policy_type=sts \
                       policy_domain=xn--bcher-kva.lab.test mx_host_pattern=mx.xn--bcher-kva.lab.test \
                       { policy_string = version: STSv1 } { policy_string = mode: enforce } \
                       { policy_string = mx: mx.xn--bcher-kva.lab.test } { policy_string = max_age: 86400 }",
                theirs: "OK secure match=mx.xn--bcher-kva.lab.test servername=hostname policy_type=sts \
                         policy_domain=bücher.lab.test mx_host_pattern=mx.xn--bcher-kva.lab.test \
                         { policy_string = mx: mx.xn--bcher-kva.lab.test } { policy_string = version: STSv1 } \
                         { policy_string = mode: enforce } { policy_string = max_age: 86400 }",
            },
        ),
        ("postfix", ".one.lab.test", Expect::Same("NOTFOUND")),
        ("postfix", "[mx.one.lab.test]:25", Expect::Same("NOTFOUND")),
        ("postfix", "192.0.2.1", Expect::Same("NOTFOUND")),
        (
            "nosuchmap",
            "one.lab.test",
            Expect::Differ {
                ours: "PERM unknown map nosuchmap",
                theirs: "OK secure match=mx.one.lab.test servername=hostname policy_type=sts \
                         policy_domain=one.lab.test mx_host_pattern=mx.one.lab.test \
                         { policy_string = mx: mx.one.lab.test } { policy_string = version: STSv1 } \
                         { policy_string = mode: enforce } { policy_string = max_age: 86400 }",
            },
        ),
    ];
    let mut failures = Vec::new();
    for (map, key, expect) in &cases {
        let (a, b) = (ours.ask(map, key), theirs.ask(map, key));
        let agrees = match expect {
            Expect::Same(start) => a.starts_with(start) && normalized(&a) == normalized(&b),
            Expect::Differ { ours, theirs } => {
                normalized(&a) == normalized(ours) && normalized(&b) == normalized(theirs)
            }
        };
        if !agrees {
            failures.push(format!("{map} {key}:\n  ours:   {a}\n  theirs: {b}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- policyd:\n{}\n--- mta-sts-daemon:\n{}",
        failures.join("\n"),
        ours.log(),
        theirs.log()
    );
}
