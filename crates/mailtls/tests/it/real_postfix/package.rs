//! The Debian package on Debian 13, as an admin would use it: built by
//! `scripts/package` from this test's own programs, installed with dpkg in
//! a scratch root beside that root's own Postfix 3.10, every unit's command
//! started as its unit says (user, group, supplementary groups, umask,
//! real-time limit), Postfix's datagrams counted by the installed collector
//! and reported by mail to the lab's domains through that Postfix, and the
//! package purged without a trace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Domain, Lab, Mx, WAIT};
use crate::support::lab::{Root, Suite};
use crate::support::*;

/// What the test reads of a systemd unit (`/lib/systemd/system/NAME.service`
/// inside the root): how systemd would start its command.
#[derive(Debug)]
struct Unit {
    name: String,
    exec_start: Vec<String>,
    user: String,
    group: String,
    supplementary_groups: Vec<String>,
    umask: Option<String>,
    limit_rtprio: Option<String>,
}

impl Unit {
    fn read(root: &Root, name: &str) -> Unit {
        let path = root.host_path(Path::new(&format!("/lib/systemd/system/{name}.service")));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the package installed no {}: {e}", path.display()));
        let value = |key: &str| -> Option<String> {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
        };
        Unit {
            name: name.to_string(),
            // The units' command lines have no quoting.
            exec_start: value("ExecStart")
                .expect("ExecStart=")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            user: value("User").expect("User="),
            group: value("Group").unwrap_or_else(|| "nogroup".into()),
            supplementary_groups: value("SupplementaryGroups")
                .map(|g| g.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            umask: value("UMask"),
            limit_rtprio: value("LimitRTPRIO"),
        }
    }
}

/// A unit's command running in the root as systemd would run it (without
/// systemd's sandboxing, which needs systemd); killed if a test fails.
struct Service {
    unit: Unit,
    child: Child,
    /// Its standard error (the journal's part), on the host.
    log: PathBuf,
}

impl Service {
    fn start(root: &Root, name: &str) -> Service {
        let unit = Unit::read(root, name);
        let log = root.host_path(Path::new(&format!("/tmp/{name}.log")));
        // The user's groups (initgroups) and the unit's
        // SupplementaryGroups=, the umask, and LimitRTPRIO= by prlimit
        // where the machine lets root raise it (a container may not).
        let script = format!(
            "set -e\n\
             umask {umask}\n\
             groups=$(id -G {user} | tr ' ' ',')\n\
             for g in {supplementary}; do groups=\"$groups,$(getent group \"$g\" | cut -d: -f3)\"; done\n\
             limit=\n\
             if prlimit --rtprio={rtprio} true 2>/dev/null; then limit=\"prlimit --rtprio={rtprio}\"; fi\n\
             exec $limit setpriv --reuid={user} --regid={group} --groups=\"$groups\" -- \"$@\"",
            umask = unit.umask.as_deref().unwrap_or("0022"),
            user = unit.user,
            group = unit.group,
            supplementary = unit.supplementary_groups.join(" "),
            rtprio = unit.limit_rtprio.as_deref().unwrap_or("0"),
        );
        let child = root
            .command("/bin/sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&unit.exec_start)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Service { unit, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited with {status}:\n{}", self.unit.name, self.log());
        }
    }

    /// Waits up to `within` until `done`, the service running all along;
    /// panics with `what`, its log and `context` when time is up.
    fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&Service) -> bool,
        context: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + within;
        while !done(self) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {within:?}:\n{}\n{}",
                self.unit.name,
                self.log(),
                context()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process's user and groups, as the kernel has them
    /// (`/proc/PID/status`: real, effective, saved, filesystem IDs).
    fn credentials(&self, root: &Root) -> (String, String, BTreeSet<String>) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap()
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect()
        };
        let name_of = |db: &str, id: u32| -> String {
            root.run("/usr/bin/getent", &[db, &id.to_string()])
                .split(':')
                .next()
                .unwrap()
                .to_string()
        };
        let (uids, gids) = (field("Uid"), field("Gid"));
        assert!(uids.iter().all(|u| *u == uids[0]), "{uids:?}");
        assert!(gids.iter().all(|g| *g == gids[0]), "{gids:?}");
        let groups = field("Groups")
            .into_iter()
            .map(|g| name_of("group", g))
            .collect();
        (
            name_of("passwd", uids[0]),
            name_of("group", gids[0]),
            groups,
        )
    }

    /// SIGTERM, and its exit status within 20 seconds.
    fn stop(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.unit.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a package could leave behind: the files under the system's
/// directories (dpkg's own records and Postfix's queue and state, which
/// change as mail flows, apart), and the users and groups with their
/// members.
fn system_state(root: &Root) -> BTreeSet<String> {
    let files = root.run(
        "/usr/bin/find",
        &["/etc", "/usr", "/var/lib", "/var/spool/postfix", "-xdev"],
    );
    let mut state: BTreeSet<String> = files
        .lines()
        .filter(|path| {
            !path.starts_with("/var/lib/dpkg/")
                && !path.starts_with("/var/lib/postfix/")
                && (!path.starts_with("/var/spool/postfix/")
                    || path.starts_with("/var/spool/postfix/run"))
        })
        .map(str::to_string)
        .collect();
    for db in ["passwd", "group"] {
        state.extend(
            root.run("/usr/bin/getent", &[db])
                .lines()
                .map(|line| format!("{db}: {line}")),
        );
    }
    state
}

/// Appends `lines` to a configuration file in the root, as an admin
/// editing it would.
fn append(root: &Root, inside: &str, lines: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.host_path(Path::new(inside)))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
}

/// The RFC 8460 report in a report mail (its `application/tlsrpt+gzip`
/// part), read by Python's email package.
fn report_of(mail: &[u8]) -> Value {
    let script = "import email, gzip, sys\n\
                  from email import policy\n\
                  msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)\n\
                  part = [p for p in msg.walk() if p.get_content_type() == 'application/tlsrpt+gzip'][0]\n\
                  sys.stdout.write(gzip.decompress(part.get_content()).decode())\n";
    serde_json::from_slice(&run(venv_python(), &["-c", script], mail)).unwrap()
}

/// Builds the package from the programs this test binary was built with:
/// its path.
fn build_package(out: &Path) -> PathBuf {
    let bins = mailtls_bin().parent().unwrap().to_path_buf();
    let output = Command::new(repo().join("scripts/package"))
        .arg("--debug")
        .arg("--bins")
        .arg(&bins)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/package: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap(),
    )
}

#[test]
fn the_package_installs_runs_as_its_units_say_reports_and_purges_on_debian_13() {
    let build = tempfile::tempdir().unwrap();
    let deb = build_package(build.path());
    let secure = Domain::new("secure", Mx::Trusted);
    // TLS required for plain (its datagram a failure): its report goes to
    // secure's mailbox.
    let plain = Domain::new("plain", Mx::NoStarttls)
        .policy("encrypt")
        .rua("tlsrpt@secure.lab.test");
    let lab = Lab::start_in(
        Root::scratch(Suite::Trixie),
        &[secure.clone(), plain.clone()],
    );
    let root = &lab.root;

    // The root's own Postfix, set up as a Debian 13 admin would for
    // TLSRPT: datagrams to the package's socket in the spool, where the
    // chrooted smtp reaches it. Its chroot files are Debian's (resolv.conf
    // is copied in at start), mail leaves by the lab DNS.
    std::fs::remove_file(root.host_path(Path::new("/etc/default/postfix"))).unwrap();
    std::fs::write(
        root.host_path(Path::new("/etc/resolv.conf")),
        lab.dns.resolv_conf(),
    )
    .unwrap();
    root.run(
        "/usr/sbin/postconf",
        &[
            "-e",
            "myhostname = mta.mailtls.test",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "smtp_address_preference = ipv4",
            "maillog_file = /var/log/mail.log",
            "smtp_tls_security_level = may",
            "smtp_tls_loglevel = 1",
            &format!("smtp_tls_CAfile = {}", lab.ca_file()),
            &format!("smtp_tls_policy_maps = {}", lab.policy_map),
            "smtp_connection_cache_on_demand = no",
            "smtp_tlsrpt_enable = yes",
            "smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt-collectd.socket",
        ],
    );
    // No listener on the host's port 25: mail is submitted with sendmail.
    root.run("/usr/sbin/postconf", &["-M#", "smtp/inet"]);
    root.run("/usr/sbin/postfix", &["start"]);
    let _stop_postfix = StopPostfix(root.clone());
    let maillog = || {
        std::fs::read_to_string(root.host_path(Path::new("/var/log/mail.log"))).unwrap_or_default()
    };

    let before = system_state(root);
    std::fs::copy(&deb, root.host_path(Path::new("/tmp/mailtls.deb"))).unwrap();
    root.run("/usr/bin/dpkg", &["-i", "/tmp/mailtls.deb"]);

    // The configuration an admin completes (the report daemon's required
    // options; PostTLS's domains and address), and the re-injection
    // listeners from the package's example file in Postfix's master.cf.
    append(
        root,
        "/etc/tlsrpt/reportd.cfg",
        "organization_name = Lab Org\n\
         contact_info = tlsrpt@mailtls.test\n\
         sender_address = tlsrpt-noreply@mta.mailtls.test\n\
         spread_out_delivery = 1\n\
         interval_main_loop = 1\n\
         log_level = debug\n",
    );
    let web_port = free_port();
    append(
        root,
        "/etc/mailtls/posttls.cfg",
        &format!(
            "own_domains = mailtls.test, .mailtls.test\n\
             notification_from = postmaster@mailtls.test\n\
             base_url = https://posttls.mailtls.test\n\
             listen = 127.0.0.1:{web_port}\n"
        ),
    );
    // The example header_checks that strips a sender's TLS-Required: No,
    // as docs/tlsrpt.md sets it up.
    root.run(
        "/bin/sh",
        &[
            "-c",
            "cat /usr/share/doc/mailtls/examples/master.cf.posttls >> /etc/postfix/master.cf \
             && cp /usr/share/doc/mailtls/examples/tls_required_header_checks /etc/postfix/ \
             && postconf -e 'header_checks = regexp:/etc/postfix/tls_required_header_checks' \
             && postfix check && postfix reload",
        ],
    );
    // (It exits non-zero: the listeners' content filter has no next hop.)
    let out = root
        .command("/usr/bin/mailtls")
        .args(["check", "posttls", "--json"])
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = check["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["level"] == "ok"
            && f["message"]
                .as_str()
                .unwrap()
                .starts_with("every path mail enters by strips")),
        "{findings:#?}"
    );

    // The units' commands, as their users.
    let mut collector = Service::start(root, "tlsrpt-collectd");
    let socket = root.host_path(Path::new(
        "/var/spool/postfix/run/tlsrpt/tlsrpt-collectd.socket",
    ));
    collector.wait_for(WAIT, "socket", |_| socket.exists(), String::new);
    assert_eq!(
        collector.credentials(root),
        (
            "_tlsrpt".to_string(),
            "_tlsrpt".to_string(),
            BTreeSet::from(["_tlsrpt".to_string(), "postfix".to_string()])
        )
    );
    let mut web = Service::start(root, "posttls-web");
    wait_until(20, "the web pages", || {
        std::net::TcpStream::connect(("127.0.0.1", web_port)).is_ok()
    });
    web.assert_running();
    assert_eq!(
        web.credentials(root),
        (
            "_posttls".to_string(),
            "_posttls".to_string(),
            BTreeSet::from([
                "_posttls".to_string(),
                "_tlsrpt".to_string(),
                "_policyd".to_string()
            ])
        )
    );

    // Postfix's mail, each delivery's datagram counted by the installed
    // collector.
    for domain in [&secure, &plain] {
        root.run(
            "/bin/sh",
            &[
                "-c",
                &format!(
                    "printf 'Subject: to {0}\\n\\nbody\\n' | sendmail -f alice@mailtls.test user@{0}",
                    domain.name()
                ),
            ],
        );
    }
    let database = root.host_path(Path::new("/var/lib/tlsrpt/collectd.sqlite"));
    collector.wait_for(
        WAIT,
        "count of 2 datagrams",
        |_| try_total(&database) == Some(2),
        || {
            format!(
                "counted {:?}; maillog:\n{}",
                try_total(&database),
                maillog()
            )
        },
    );
    let events = super::logged_events(&maillog());
    assert_eq!(events.len(), 2, "{}", maillog());
    assert!(lab.mxes[&secure.name()].messages()[0].tls);
    assert!(lab.mxes[&plain.name()].messages().is_empty());

    // The worker's first scan finds the message waiting for TLS (from a
    // local user of an own domain).
    let mut worker = Service::start(root, "posttls-worker");
    worker.wait_for(
        WAIT,
        "deferred message found",
        |worker| {
            worker
                .log()
                .contains("from alice@mailtls.test: 1 recipient(s) wait for TLS")
        },
        String::new,
    );
    assert_eq!(
        worker.credentials(root),
        (
            "root".to_string(),
            "_posttls".to_string(),
            BTreeSet::from(["root".to_string()])
        )
    );

    // The day ends (the development rollover), and the installed report
    // daemon, started now, reports it through the installed fetcher and
    // the system's sendmail.
    signal(&collector.child, libc::SIGUSR2);
    let yesterday = PathBuf::from(format!("{}.yesterday", database.display()));
    wait_until(20, "the development rollover", || {
        try_total(&yesterday) == Some(2)
    });
    let mut reportd = Service::start(root, "tlsrpt-reportd");
    let report_mail = |domain: &Domain| {
        lab.mxes[&secure.name()].messages().into_iter().find(|m| {
            m.text()
                .contains(&format!("TLS-Report-Domain: {}\r\n", domain.name()))
        })
    };
    reportd.wait_for(
        WAIT * 2,
        "report mail at the lab's MX",
        |_| report_mail(&secure).is_some() && report_mail(&plain).is_some(),
        || format!("maillog:\n{}", maillog()),
    );
    let secure_report = report_of(&report_mail(&secure).unwrap().data);
    let summary = &secure_report["policies"][0]["summary"];
    assert_eq!(secure_report["organization-name"], "Lab Org");
    assert_eq!(summary["total-successful-session-count"], 1);
    assert_eq!(summary["total-failure-session-count"], 0);
    let plain_report = report_of(&report_mail(&plain).unwrap().data);
    let policy = &plain_report["policies"][0];
    assert_eq!(policy["summary"]["total-failure-session-count"], 1);
    assert_eq!(
        policy["failure-details"][0]["result-type"],
        "starttls-not-supported"
    );
    // From: the configured sender; the envelope is the Unix user's, as
    // with upstream's `sendmail -i -t`.
    let mail = report_mail(&plain).unwrap();
    assert!(
        mail.text()
            .contains("From: <tlsrpt-noreply@mta.mailtls.test>\r\n"),
        "{}",
        mail.text()
    );
    assert_eq!(mail.sender, "_tlsrpt@mta.mailtls.test");

    // The policy server as its unit runs it answers a lookup through the
    // lab's DNS: the secure domain publishes no MTA-STS policy.
    let policyd_port = free_port();
    append(
        root,
        "/etc/mailtls/policyd.cfg",
        &format!(
            "listen = inet:127.0.0.1:{policyd_port}\nnameservers = {}\n",
            lab.dns.resolver()
        ),
    );
    let mut policyd = Service::start(root, "mailtls-policyd");
    policyd.wait_for(
        WAIT,
        "listener",
        |_| std::net::TcpStream::connect(("127.0.0.1", policyd_port)).is_ok(),
        String::new,
    );
    assert_eq!(
        policyd.credentials(root),
        (
            "_policyd".to_string(),
            "_policyd".to_string(),
            BTreeSet::from(["_policyd".to_string()])
        )
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", policyd_port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        &crate::policyd::netstring(&format!("postfix {}", secure.name())),
    )
    .unwrap();
    assert_eq!(
        crate::policyd::read_answer(&mut stream).unwrap(),
        "NOTFOUND ",
        "{}",
        policyd.log()
    );
    // Its policy cache: its own, readable by the web pages' group.
    let cache =
        std::fs::metadata(root.host_path(Path::new("/var/lib/mailtls-policyd/policyd.sqlite")))
            .unwrap_or_else(|e| panic!("the policy cache: {e}\n{}", policyd.log()));
    assert_eq!(
        root.run(
            "/usr/bin/stat",
            &["-c", "%U:%G", "/var/lib/mailtls-policyd/policyd.sqlite"]
        )
        .trim(),
        "_policyd:_policyd"
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&cache.permissions()) & 0o040,
        0o040
    );

    // The web pages answer.
    let mut login = String::new();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", web_port)).unwrap();
        write!(
            s,
            "GET /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s.read_to_string(&mut login).unwrap();
    }
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    worker.assert_running();

    // Everything stops cleanly, and the package goes without a trace.
    for service in [collector, reportd, web, worker, policyd] {
        let name = service.unit.name.clone();
        let log = service.log();
        let status = service.stop();
        assert!(status.success(), "{name} exited with {status}:\n{log}");
    }
    root.run("/usr/bin/dpkg", &["--purge", "mailtls"]);
    std::fs::remove_file(root.host_path(Path::new("/tmp/mailtls.deb"))).unwrap();
    // The admin's own file (from the example) is the admin's to remove.
    root.run("/bin/rm", &["/etc/postfix/tls_required_header_checks"]);
    // master.cf is the admin's: the example's lines stay until removed.
    let after = system_state(root);
    let left: Vec<_> = after.difference(&before).collect();
    let gone: Vec<_> = before.difference(&after).collect();
    assert!(left.is_empty(), "left behind after purge: {left:#?}");
    assert!(gone.is_empty(), "removed by the package: {gone:#?}");
}

/// `postfix stop` of the root's own Postfix, also when the test fails.
struct StopPostfix(std::sync::Arc<Root>);

impl Drop for StopPostfix {
    fn drop(&mut self) {
        let _ = self.0.command("/usr/sbin/postfix").arg("stop").output();
    }
}
