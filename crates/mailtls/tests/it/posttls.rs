//! PostTLS against a real Postfix instance: TLS required for all mail, a
//! receiving server without STARTTLS, notifications captured by an SMTP
//! sink.
//!
//! The scenarios on a real Postfix run twice: as the tests in
//! [`on_postfix_3_7`] on this machine's Postfix (Debian 12), and in
//! `real_postfix::posttls` on Debian 13's Postfix 3.10 in the lab's root,
//! with our programs installed there.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::lab::{Root, Suite};
use crate::support::postfix::{Options, Postfix};
use crate::support::smtp_sink::SmtpSink;
use crate::support::tls::TestCa;
use serde_json::Value;

/// A port where nothing listens: deliveries there fail before TLS.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The options every test's `posttls` gets: its database, key and lock in
/// `dir`, our domain, the notification sender and the web address.
fn posttls_files(dir: &Path) -> Vec<String> {
    vec![
        format!("--database={}", dir.join("posttls.sqlite").display()),
        format!("--secret_key_file={}", dir.join("secret.key").display()),
        format!("--lock_file={}", dir.join("scan.lock").display()),
        "--own_domains=example.org".into(),
        "--notification_from=postmaster@example.org".into(),
        "--base_url=https://posttls.example.org".into(),
    ]
}

/// The Postfix a scenario runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum On {
    /// This machine's (Debian 12: Postfix 3.7).
    Host,
    /// A lab root's (Debian 13: Postfix 3.10), with `mailtls` installed in
    /// the root and run there.
    Root(Suite),
}

/// Declares each scenario `fn NAME(on: On)` as the test `NAME` on `on`.
macro_rules! scenarios_on {
    ($on:expr => $($scenario:ident),* $(,)?) => {$(
        #[test]
        fn $scenario() {
            $crate::posttls::$scenario($on)
        }
    )*};
}
pub(crate) use scenarios_on;

/// Every scenario on a real Postfix, as tests on `on`.
macro_rules! every_scenario_on {
    ($on:expr) => {
        $crate::posttls::scenarios_on!($on =>
            a_tls_deferral_notifies_our_sender_once_and_nothing_else_does,
            releases_and_deletes_act_on_the_real_queue_and_mandatory_domains_are_kept,
            mandatory_policy_delete_removes_the_message_and_tells_the_sender,
            the_link_in_the_notification_releases_the_message_through_the_web_pages,
            a_failed_release_leaves_the_queue_as_it_was,
            a_release_killed_at_each_step_is_finished_or_undone_after_a_restart,
            a_delete_killed_at_each_step_is_finished_or_undone_after_a_restart,
            a_released_copy_is_the_message_the_sender_sent,
            forged_rows_do_not_make_the_worker_touch_foreign_mail,
            a_released_copy_takes_the_route_of_its_postfix_version,
        );
    };
}
pub(crate) use every_scenario_on;

/// The scenarios on this machine's Postfix 3.7 (Debian 12 is still in
/// use); `real_postfix::posttls` runs them on 3.10.
mod on_postfix_3_7 {
    super::every_scenario_on!(super::On::Host);
}

struct Lab {
    /// The lab root the instance and our programs run in, if any.
    root: Option<Arc<Root>>,
    /// Releases go with `TLS-Required: No` through the instance's own
    /// routing (Postfix 3.10 and later), not through `posttls-release`,
    /// which the instance then does not have.
    header_release: bool,
    /// The submission listener's certificate and its CA.
    ca: TestCa,
    /// The receiving server: no STARTTLS.
    receiver: SmtpSink,
    /// Where `transport_maps` sends mail for routed.example: no STARTTLS.
    routed: SmtpSink,
    /// Where notifications arrive.
    notifications: SmtpSink,
    postfix: Postfix,
    /// An smtpd of the instance for mail from "outside".
    smtpd_port: u16,
    /// An smtpd for our own users: 127.0.0.1 counts as local
    /// (`local_header_rewrite_clients`' default).
    submission_port: u16,
    dir: tempfile::TempDir,
}

/// The re-injection listeners of docs/posttls.md: smtpd services on UNIX-domain
/// sockets under private/, which put what they receive on hold, accept
/// XFORWARD from the worker and apply no address mappings again. Before
/// Postfix 3.10 (no `header_release`), the released recipients' copy goes
/// out through `posttls-release` with opportunistic TLS to `relay`; from
/// 3.10 on, `posttls-reinject` alone, as docs/posttls.md sets up 3.10.
fn reinjection_listeners(options: Options, relay: u16, header_release: bool) -> Options {
    let common = "-o mynetworks=127.0.0.0/8 -o smtpd_client_restrictions= \
        -o smtpd_relay_restrictions=permit_mynetworks,reject -o smtpd_recipient_restrictions=permit_mynetworks,reject \
        -o smtpd_end_of_data_restrictions=check_client_access,static:HOLD \
        -o smtpd_authorized_xforward_hosts=127.0.0.0/8 \
        -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters,no_address_mappings";
    let options = options.master_cf(&format!("posttls-reinject unix - - n - - smtpd {common}"));
    if header_release {
        return options;
    }
    options
        .master_cf("smtp_may unix - - n - - smtp -o smtp_tls_security_level=may")
        .master_cf(&format!(
            "posttls-release unix - - n - - smtpd -o content_filter=smtp_may:[127.0.0.1]:{relay} {common}"
        ))
}

impl Lab {
    fn start(on: On) -> Lab {
        let receiver = SmtpSink::start();
        let routed = SmtpSink::start();
        let notifications = SmtpSink::start();
        let smtpd_port = dead_port();
        let submission_port = dead_port();
        let root = match on {
            On::Host => None,
            On::Root(suite) => Some(Root::enter(suite)),
        };
        let options = match &root {
            None => Options::new(receiver.port()),
            Some(root) => Options::in_root(root, receiver.port()),
        };
        // The lab's roots run Postfix 3.10 or later (checked below).
        let header_release = root.is_some();
        let dir = match &root {
            None => tempfile::tempdir().unwrap(),
            Some(root) => root.tempdir("posttls."),
        };
        // STARTTLS on the submission listener (REQUIRETLS needs it).
        let ca = TestCa::new(dir.path());
        let seen = |path: &Path| match &root {
            None => path.to_path_buf(),
            Some(root) => root.inside_path(path),
        };
        let submission_tls = format!(
            "-o smtpd_tls_security_level=may -o smtpd_tls_cert_file={} -o smtpd_tls_key_file={}",
            seen(&ca.server_cert_file).display(),
            seen(&ca.server_key_file).display()
        );
        // The set-up of docs/posttls.md for 3.10: a sender's TLS-Required is
        // stripped on the way in (our listener skips header checks, so the
        // header of a released copy stays).
        let options = if header_release {
            let file = dir.path().join("tls_required_header_checks");
            std::fs::write(&file, "/^TLS-Required:/ IGNORE\n").unwrap();
            options.main_cf(&format!("header_checks = regexp:{}", seen(&file).display()))
        } else {
            options
        };
        let postfix = Postfix::start(
            reinjection_listeners(options, receiver.port(), header_release)
                .tls_security_level("encrypt")
                .main_cf(&format!(
                    "transport_maps = inline:{{nontls.example=smtp:[127.0.0.1]:{}, routed.example=smtp:[127.0.0.1]:{}}}",
                    dead_port(),
                    routed.port()
                ))
                .main_cf("mynetworks = 127.0.0.0/8")
                .main_cf("message_size_limit = 40000000")
                // Long lines reach the receiver as stored, not folded by
                // Postfix's smtp client.
                .main_cf("smtp_line_length_limit = 0")
                .master_cf(&format!(
                    "127.0.0.1:{submission_port} inet n - n - - smtpd -o smtpd_recipient_restrictions=permit_mynetworks,reject {submission_tls}"
                ))
                .master_cf(&format!(
                    "127.0.0.1:{smtpd_port} inet n - n - - smtpd -o smtpd_recipient_restrictions=permit_mynetworks,reject -o local_header_rewrite_clients="
                )),
        );
        if let On::Root(suite) = on {
            let version = postfix.postconf("mail_version");
            assert!(
                version.starts_with(suite.postfix_version()),
                "the {suite:?} root runs Postfix {version}"
            );
        }
        Lab {
            root,
            ca,
            header_release,
            receiver,
            routed,
            notifications,
            postfix,
            smtpd_port,
            submission_port,
            dir,
        }
    }

    /// `mailtls` as the scenario runs it: this machine's build, or the same
    /// build installed in the root and run there.
    fn mailtls(&self) -> Command {
        match &self.root {
            None => Command::new(support::mailtls_bin()),
            Some(root) => root.command(root.install(&support::mailtls_bin()).to_str().unwrap()),
        }
    }

    /// `host`, a path under the test's directories, as our programs see it
    /// (inside the root).
    fn seen(&self, host: &Path) -> PathBuf {
        match &self.root {
            None => host.to_path_buf(),
            Some(root) => root.inside_path(host),
        }
    }

    /// [`posttls_files`] in the test's directory, as our programs see it.
    fn files(&self) -> Vec<String> {
        posttls_files(&self.seen(self.dir.path()))
    }

    /// A temporary directory our programs can see.
    fn tempdir(&self, prefix: &str) -> tempfile::TempDir {
        match &self.root {
            None => tempfile::Builder::new().prefix(prefix).tempdir().unwrap(),
            Some(root) => root.tempdir(prefix),
        }
    }

    /// Submits a message locally (sendmail): our own user.
    fn submit(&self, from: &str, to: &[&str], subject: &str) {
        let mut args = vec!["-f", from, "--"];
        args.extend_from_slice(to);
        let message = format!(
            "From: {from}\nTo: {}\nSubject: {subject}\n\nHello.\n",
            to.join(", ")
        );
        self.postfix.sendmail(&args, message.as_bytes());
    }

    /// Sends a message into the instance over SMTP, unauthenticated: mail
    /// relayed from outside. (The listener does not count 127.0.0.1 as a
    /// local client, as `local_header_rewrite_clients` does by default.)
    fn relay(&self, from: &str, to: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.smtpd_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let read = |s: &mut TcpStream| {
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(s, &mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        assert!(read(&mut s).starts_with("220"));
        for (line, code) in [
            ("EHLO outside.example".to_string(), "250"),
            (format!("MAIL FROM:<{from}>"), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
            (
                format!("From: {from}\r\nSubject: relayed\r\n\r\nHi.\r\n."),
                "250",
            ),
        ] {
            s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
            let answer = read(&mut s);
            assert!(
                answer.starts_with(code),
                "{line}: {answer}\n{}",
                self.postfix.maillog()
            );
        }
        let _ = s.write_all(b"QUIT\r\n");
    }

    /// Waits until every queued message has a delay reason for each
    /// recipient: all deliveries have been tried once.
    fn wait_deferred(&self, count: usize) -> Vec<Value> {
        self.postfix
            .wait_queue(Duration::from_secs(30), "deferred messages", |q| {
                q.len() == count
                    && q.iter().all(|m| {
                        m["queue_name"] == "deferred"
                            && m["recipients"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .all(|r| r["delay_reason"].is_string())
                    })
            })
    }

    fn scan(&self) -> String {
        self.scan_with(&[])
    }

    /// A scan with some options changed (given later, they win).
    fn scan_with(&self, extra: &[String]) -> String {
        let (status, log) = self.scan_output(extra);
        assert!(status.success(), "posttls scan failed:\n{log}");
        log
    }

    /// A scan that may die: its exit status and log.
    fn scan_output(&self, extra: &[String]) -> (std::process::ExitStatus, String) {
        let out = self
            .mailtls()
            .args(["posttls", "scan"])
            .args(self.files())
            .arg(format!(
                "--postfix_config_dir={}",
                self.postfix.config_dir().display()
            ))
            .arg("--instance=lab")
            .arg("--mandatory_domains=bank.example")
            .arg("--organization_name=Example Org")
            .arg(format!(
                "--smtp_relay=127.0.0.1:{}",
                self.notifications.port()
            ))
            .arg("--smtp_security=plain")
            .arg("--log_level=info")
            .args(extra)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the web process does once a sender confirmed: a queued
    /// request that approves the recipients the notification offered (the
    /// web flow itself is tested with its own crate and in the browser
    /// test).
    fn request(&self, queue_id: &str, action: &str) -> i64 {
        let offered = self.db_rows(&format!(
            "SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_id \
             WHERE m.queue_id = '{queue_id}' AND r.state = 'pending' AND r.tls_kind IS NOT NULL AND r.mandatory = 0"
        ));
        self.request_for(queue_id, action, &offered)
    }

    /// A request that approves `recipients`.
    fn request_for(&self, queue_id: &str, action: &str, recipients: &[String]) -> i64 {
        let store = posttls_store::Store::open(&self.dir.path().join("posttls.sqlite")).unwrap();
        let conn = rusqlite::Connection::open(self.dir.path().join("posttls.sqlite")).unwrap();
        let message: i64 = conn
            .query_row(
                "SELECT id FROM messages WHERE queue_id=? ORDER BY id DESC",
                [queue_id],
                |r| r.get(0),
            )
            .unwrap();
        store
            .request_action(
                message,
                action.parse().unwrap(),
                "sender test",
                Some("127.0.0.1"),
                recipients,
                0,
            )
            .unwrap()
    }

    fn action(&self, id: i64) -> (String, String, Option<String>) {
        let conn = rusqlite::Connection::open(self.dir.path().join("posttls.sqlite")).unwrap();
        conn.query_row(
            "SELECT state, result, new_queue_id FROM actions WHERE id=?",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    /// The queue id of the message for `recipient`. A `maildrop` entry is
    /// passed over: `postqueue -j` may still list the file that pickup has
    /// just copied into the queue under a new id.
    fn queue_id_of(&self, queue: &[Value], recipient: &str) -> String {
        queue
            .iter()
            .filter(|m| m["queue_name"] != "maildrop")
            .find(|m| {
                m["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["address"] == recipient)
            })
            .unwrap_or_else(|| panic!("no message for {recipient}: {queue:?}"))["queue_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `postcat -bh` of a queued message: its headers and body as queued.
    fn queued_content(&self, id: &str) -> String {
        let out = self
            .postfix
            .command("/usr/sbin/postcat")
            .arg("-c")
            .arg(self.postfix.config_dir())
            .args(["-bh", "-q", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "postcat {id}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether a copy as the receiver got it carries `TLS-Required: No`
    /// exactly when this Postfix releases with the header.
    fn assert_header_as_released(&self, received: &support::smtp_sink::Message) {
        let text = received.text();
        assert_eq!(
            text.matches("\r\nTLS-Required: No\r\n").count(),
            usize::from(self.header_release),
            "{text}"
        );
    }

    fn db_rows(&self, sql: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.dir.path().join("posttls.sqlite")).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }
}

/// One message deferred for missing STARTTLS gives its sender exactly one
/// notification, however often the queue is scanned; the links are signed
/// tokens, not queue ids. A deferral for another reason, mail relayed from
/// outside (even with our domain as sender) and mail from another domain
/// give none.
pub(crate) fn a_tls_deferral_notifies_our_sender_once_and_nothing_else_does(on: On) {
    let lab = Lab::start(on);
    lab.submit(
        "alice@example.org",
        &["bob@notls.example"],
        "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and figures",
    );
    lab.submit(
        "carol@example.org",
        &["dave@nontls.example"],
        "not a TLS problem",
    );
    lab.submit(
        "erin@other.example",
        &["bob@notls.example"],
        "not our domain",
    );
    lab.relay("alice@example.org", "frank@notls.example");
    let queue = lab.wait_deferred(4);
    let reasons: Vec<String> = queue
        .iter()
        .map(|m| {
            m["recipients"][0]["delay_reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("TLS is required, but was not offered")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("Connection refused")),
        "{reasons:?}"
    );

    let log = lab.scan();
    let mails = lab.notifications.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1, "{log}");
    let mail = &mails[0];
    assert_eq!(mail.recipients, ["alice@example.org"]);
    assert_eq!(mail.sender, "postmaster@example.org");
    let text = mail.text();
    assert!(text.contains("Auto-Submitted: auto-generated"), "{text}");
    let parsed = mail_text(&mail.data);
    assert!(parsed.contains("Grüße and figures"), "{parsed}");
    assert!(parsed.contains("bob@notls.example"), "{parsed}");
    assert!(
        parsed.contains("does not support encryption") || parsed.contains("encrypt"),
        "{parsed}"
    );
    let links: Vec<&str> = parsed
        .split_whitespace()
        .filter(|w| w.starts_with("https://posttls.example.org/confirm/"))
        .collect();
    assert_eq!(links.len(), 2, "{parsed}");
    assert_ne!(links[0], links[1]);
    let queue_id = queue
        .iter()
        .find(|m| {
            m["sender"] == "alice@example.org"
                && m["recipients"][0]["address"] == "bob@notls.example"
        })
        .unwrap()["queue_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        links.iter().all(|l| !l.contains(&queue_id)),
        "links carry tokens, not the queue id"
    );

    // Scanning again tells nobody anything new.
    lab.scan();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.notifications.messages().len(), 1);
    assert_eq!(
        lab.db_rows("SELECT sender || ' ' || state FROM messages ORDER BY sender, state"),
        ["alice@example.org deferred", "alice@example.org ignored", "erin@other.example ignored"],
        "the relayed message and the other domain's are recorded as ignored; carol's has no TLS failure"
    );
    assert!(
        log.contains("TLS deferral ignored (not_own_sender)"),
        "{log}"
    );
    // Both new messages from our domain were read with one postcat run.
    assert!(
        log.contains("envelopes of 2 new message(s) read in 1 postcat run(s): 2 found"),
        "{log}"
    );
}

/// The text of a mail's body parts, decoded (quoted-printable, base64).
fn mail_text(raw: &[u8]) -> String {
    let out = Command::new(support::venv_python())
        .args([
            "-c",
            "import email, email.policy, sys\n\
             m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)\n\
             print(m['Subject'])\n\
             for part in m.walk():\n    \
                 if part.get_content_maintype() == 'text': print(part.get_content())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(raw)?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The sender's choices carried out against the real queue: a release
/// sends the message to the TLS-failed recipient over the opportunistic
/// path and removes the original; with another pending recipient, that
/// one keeps its normal delivery in a copy of its own; a delete removes
/// the message; a recipient in a mandatory-TLS domain is never released.
pub(crate) fn releases_and_deletes_act_on_the_real_queue_and_mandatory_domains_are_kept(on: On) {
    let lab = Lab::start(on);
    lab.submit("alice@example.org", &["bob@notls.example"], "release me");
    lab.submit(
        "alice@example.org",
        &["carl@notls.example", "dave@nontls.example"],
        "mixed",
    );
    lab.submit("alice@example.org", &["erin@notls.example"], "delete me");
    lab.submit("alice@example.org", &["frank@bank.example"], "mandatory");
    let queue = lab.wait_deferred(4);
    let single = lab.queue_id_of(&queue, "bob@notls.example");
    let mixed = lab.queue_id_of(&queue, "carl@notls.example");
    let doomed = lab.queue_id_of(&queue, "erin@notls.example");
    let mandatory = lab.queue_id_of(&queue, "frank@bank.example");
    lab.scan();
    let notes = lab.notifications.wait_for(4, Duration::from_secs(10));
    let mandatory_note = notes
        .iter()
        .map(|m| mail_text(&m.data))
        .find(|t| t.contains("frank@bank.example"))
        .unwrap();
    assert!(
        mandatory_note.contains("Never sent unencrypted"),
        "{mandatory_note}"
    );
    assert!(
        !mandatory_note.contains("/confirm/"),
        "no links when nothing may be released: {mandatory_note}"
    );

    let release = lab.request(&single, "release");
    let release_mixed = lab.request(&mixed, "release");
    let delete = lab.request(&doomed, "delete");
    let refused = lab.request(&mandatory, "release");
    lab.scan();

    let (state, result, new_id) = lab.action(release);
    assert_eq!(state, "done", "{result}");
    assert!(new_id.is_some(), "{result}");
    let (state, result, _) = lab.action(release_mixed);
    assert_eq!(state, "done", "{result}");
    assert!(
        result.contains("the other recipients keep their normal delivery"),
        "{result}"
    );
    let (state, result, _) = lab.action(delete);
    assert_eq!(
        (state.as_str(), result.as_str()),
        ("done", "the message was deleted")
    );
    let (state, result, _) = lab.action(refused);
    assert_eq!(state, "refused");
    assert!(
        result.contains("returned to its sender: its recipients require encryption"),
        "{result}"
    );

    // Delivered in plain text to exactly the released recipients.
    let delivered = lab.receiver.wait_for(2, Duration::from_secs(30));
    let mut got: Vec<Vec<String>> = delivered.iter().map(|m| m.recipients.clone()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            vec!["bob@notls.example".to_string()],
            vec!["carl@notls.example".to_string()]
        ]
    );
    assert!(delivered
        .iter()
        .any(|m| m.text().contains("Subject: release me")));
    for copy in &delivered {
        lab.assert_header_as_released(copy);
    }

    // The queue: originals gone (frank's returned: its bounce to alice now
    // waits for TLS itself); dave waits in his own copy (normal path,
    // still refused); nothing left on hold.
    let queue = lab.postfix.wait_queue(
        Duration::from_secs(30),
        "the queue after the actions",
        |q| {
            q.len() == 2
                && q.iter()
                    .all(|m| m["recipients"][0]["delay_reason"].is_string())
        },
    );
    let ids: Vec<&str> = queue
        .iter()
        .map(|m| m["queue_id"].as_str().unwrap())
        .collect();
    for original in [&single, &mixed, &doomed, &mandatory] {
        assert!(
            !ids.contains(&original.as_str()),
            "{original} still queued: {queue:?}"
        );
    }
    let dave = queue
        .iter()
        .find(|m| m["recipients"][0]["address"] == "dave@nontls.example")
        .unwrap();
    assert_eq!(dave["recipients"].as_array().unwrap().len(), 1);
    assert_eq!(dave["sender"], "alice@example.org");
    // Only the released copy has the header.
    let kept = lab.queued_content(dave["queue_id"].as_str().unwrap());
    assert!(!kept.contains("TLS-Required"), "{kept}");
    let bounce = queue
        .iter()
        .find(|m| m["sender"] == "MAILER-DAEMON")
        .expect("frank's message bounced");
    assert_eq!(bounce["recipients"][0]["address"], "alice@example.org");
    assert!(queue.iter().all(|m| m["queue_name"] != "hold"), "{queue:?}");
    assert_eq!(
        lab.db_rows("SELECT state FROM messages WHERE state IN ('released', 'deleted', 'returned') ORDER BY state"),
        ["deleted", "released", "released", "returned"]
    );
    // A second release of the same message is refused, not repeated.
    let again = lab.request(&single, "release");
    lab.scan();
    let (state, result, _) = lab.action(again);
    assert_eq!(state, "refused", "{result}");
    assert_eq!(lab.receiver.messages().len(), 2);
}

/// With `mandatory_policy = delete`, a message whose only waiting
/// recipients are in mandatory-TLS domains is deleted from the real queue
/// at once, without a bounce; its sender is told so, without links, and the
/// audit log says why.
pub(crate) fn mandatory_policy_delete_removes_the_message_and_tells_the_sender(on: On) {
    let lab = Lab::start(on);
    lab.submit("alice@example.org", &["frank@bank.example"], "mandatory");
    let queue = lab.wait_deferred(1);
    let id = lab.queue_id_of(&queue, "frank@bank.example");
    let log = lab.scan_with(&["--mandatory_policy=delete".to_string()]);

    let notes = lab.notifications.wait_for(1, Duration::from_secs(10));
    let note = mail_text(&notes[0].data);
    assert_eq!(notes[0].recipients, ["alice@example.org"]);
    assert!(
        note.contains("will not be sent to them unencrypted"),
        "{note}"
    );
    assert!(note.contains("it was deleted."), "{note}");
    assert!(note.contains("frank@bank.example"), "{note}");
    assert!(!note.contains("/confirm/"), "no links: {note}");

    // Gone, and no bounce queued in its place.
    lab.postfix.wait_queue_empty(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.postfix.postqueue_json(), Vec::<Value>::new(), "{log}");
    assert_eq!(
        lab.db_rows(&format!(
            "SELECT state FROM messages WHERE queue_id = '{id}'"
        )),
        ["deleted"]
    );
    assert_eq!(
        lab.db_rows("SELECT detail FROM audit WHERE event = 'mandatory_policy'"),
        ["all waiting recipients require TLS: it was deleted."]
    );

    // A later scan neither finds it nor writes again.
    lab.scan_with(&["--mandatory_policy=delete".to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.notifications.messages().len(), 1);
}

/// `posttls scan` from cron does not overlap a scan still running: it sees
/// the lock, says so and leaves the queue alone.
#[test]
fn an_overlapping_scan_steps_aside() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let lock_path = dir.path().join("scan.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    // A Postfix command dir whose postqueue would show that it ran.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("postqueue"),
        format!("#!/bin/sh\ntouch {}/ran\n", dir.path().display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            bin.join("postqueue"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    let out = Command::new(support::mailtls_bin())
        .args(["posttls", "scan"])
        .args(posttls_files(dir.path()))
        .arg(format!("--postfix_command_dir={}", bin.display()))
        // The last of an option given twice wins.
        .arg(format!("--lock_file={}", lock_path.display()))
        .arg("--release_method=content_filter")
        .arg("--release_listener=/nonexistent/posttls-release")
        .arg("--reinject_listener=/nonexistent/posttls-reinject")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("another scan holds"), "{log}");
    assert!(
        !dir.path().join("ran").exists(),
        "the queue was read although another scan runs"
    );
    drop(lock);
}

/// Stand-in Postfix commands for what a real instance cannot show in a
/// test's time (expiry, reminders): `postqueue` prints a listing the test
/// writes, `postcat` shows every message as a local submission with the
/// subject "Contract", and notifications land as files.
pub(crate) struct StandIn {
    pub(crate) dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    listing: std::path::PathBuf,
    sent: std::path::PathBuf,
}

impl StandIn {
    pub(crate) fn new() -> StandIn {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let listing = dir.path().join("queue.jsonl");
        let sent = dir.path().join("sent");
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(&sent).unwrap();
        std::fs::write(&listing, "").unwrap();
        for (name, text) in [
            ("postqueue", format!("#!/bin/sh\ncat {}\n", listing.display())),
            (
                "postcat",
                "#!/bin/sh\nq=0\nfor a in \"$@\"; do case \"$a\" in -q) q=1;; -*) ;; *) [ $q = 1 ] && printf '*** ENVELOPE RECORDS deferred/%s ***\\nnamed_attribute: rewrite_context=local\\n*** MESSAGE CONTENTS deferred/%s ***\\nSubject: Contract\\n\\n' \"$a\" \"$a\";; esac; done\nexit 0\n".to_string(),
            ),
            ("sink", format!("#!/bin/sh\ncat > $(mktemp {}/mail.XXXXXX)\n", sent.display())),
        ] {
            std::fs::write(bin.join(name), text).unwrap();
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        StandIn {
            dir,
            bin,
            listing,
            sent,
        }
    }

    /// The queue: one deferred message from alice to bob, arrived at
    /// `arrival`.
    pub(crate) fn queue_one(&self, arrival: i64) {
        std::fs::write(
            &self.listing,
            format!(
                r#"{{"queue_name":"deferred","queue_id":"4A0AF98C232","arrival_time":{arrival},"message_size":300,"forced_expire":false,"sender":"alice@example.org","recipients":[{{"address":"bob@notls.example","delay_reason":"TLS is required, but was not offered by host mx.notls.example[192.0.2.1]"}}]}}"#
            ) + "\n",
        )
        .unwrap();
    }

    pub(crate) fn command(&self, subcommand: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(support::mailtls_bin());
        command
            .args(["posttls", subcommand])
            .args(posttls_files(self.dir.path()))
            .arg(format!("--postfix_command_dir={}", self.bin.display()))
            // Stand-ins have no postconf to find the queue directory or
            // the version.
            .arg("--release_method=content_filter")
            .arg("--release_listener=/nonexistent/posttls-release")
            .arg("--reinject_listener=/nonexistent/posttls-reinject")
            .arg(format!(
                "--sendmail_script={}",
                self.bin.join("sink").display()
            ))
            .args(extra);
        command
    }

    pub(crate) fn scan(&self, extra: &[&str]) {
        let out = self.command("scan", extra).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The notifications sent so far, decoded, sorted.
    fn mails(&self) -> Vec<String> {
        let mut texts: Vec<String> = std::fs::read_dir(&self.sent)
            .unwrap()
            .map(|e| mail_text(&std::fs::read(e.unwrap().path()).unwrap()))
            .collect();
        texts.sort();
        texts
    }
}

/// A message the sender was told about that leaves the queue as old as
/// Postfix keeps messages has expired: the sender hears that it was not
/// delivered.
#[test]
fn the_sender_hears_when_a_message_expires() {
    let lab = StandIn::new();
    lab.queue_one(chrono::Utc::now().timestamp() - 5 * 86400 + 600);
    lab.scan(&[]);
    assert_eq!(lab.mails().len(), 1);
    // Postfix gives up on it: it leaves the queue.
    std::fs::write(&lab.listing, "").unwrap();
    lab.scan(&[]);
    lab.scan(&[]);
    let texts = lab.mails();
    assert_eq!(texts.len(), 2, "{texts:?}");
    let expired = texts
        .iter()
        .find(|t| t.starts_with("Not delivered:"))
        .expect("an expiry note");
    assert!(expired.contains("Contract"), "{expired}");
    assert!(expired.contains("bob@notls.example"), "{expired}");
    assert!(!expired.contains("/confirm/"), "{expired}");
}

/// Reminders come after `reminder_interval`, at most `max_reminders` of
/// them (the original reminded every 30 minutes for as long as the message
/// waited).
#[test]
fn reminders_are_spaced_and_capped() {
    let lab = StandIn::new();
    lab.queue_one(chrono::Utc::now().timestamp() - 60);
    // Two seconds: the second scan comes well before, even on a busy
    // machine running other tests beside this one.
    let options = ["--reminder_interval=2", "--max_reminders=2"];
    lab.scan(&options);
    lab.scan(&options); // too early for a reminder
    assert_eq!(lab.mails().len(), 1);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(2100));
        lab.scan(&options);
    }
    let texts = lab.mails();
    assert_eq!(texts.len(), 3, "one notice and two reminders: {texts:?}");
    assert_eq!(
        texts.iter().filter(|t| t.starts_with("Reminder:")).count(),
        2
    );
    // Every notice has fresh working links.
    assert!(texts
        .iter()
        .all(|t| t.contains("https://posttls.example.org/confirm/")));
}

/// The daemon scans every `scan_interval` seconds without cron, and stops
/// cleanly on SIGTERM.
#[test]
fn the_worker_scans_on_its_own_and_stops_on_sigterm() {
    let lab = StandIn::new();
    let mut worker = lab
        .command("worker", &["--scan_interval=1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lab.mails().is_empty());
    // A message arrives; the next scan tells its sender.
    lab.queue_one(chrono::Utc::now().timestamp());
    support::wait_until(10, "the worker's notification", || lab.mails().len() == 1);
    support::signal(&worker, libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// A minimal HTTP/1.1 exchange with the web process: status line and body.
fn http(port: u16, method: &str, path: &str, form: Option<&str>) -> (u16, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = form.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, answer)
}

/// The whole flow with the real programs: the scanner's notification, its
/// "Send unencrypted" link opened in the web process (`posttls web`), the
/// confirmation POSTed, the worker's pass carrying it out against Postfix,
/// the message delivered in plain text, and the page saying so.
pub(crate) fn the_link_in_the_notification_releases_the_message_through_the_web_pages(on: On) {
    let lab = Lab::start(on);
    lab.submit("alice@example.org", &["bob@notls.example"], "via the web");
    let queue = lab.wait_deferred(1);
    let queue_id = lab.queue_id_of(&queue, "bob@notls.example");
    lab.scan();
    let note = mail_text(&lab.notifications.wait_for(1, Duration::from_secs(10))[0].data);
    let release_link = note
        .split_whitespace()
        .find(|w| w.starts_with("https://posttls.example.org/confirm/"))
        .unwrap()
        .to_string();
    let path = release_link.trim_start_matches("https://posttls.example.org");

    let port = dead_port();
    let mut web = lab
        .mailtls()
        .args(["posttls", "web"])
        .args(lab.files())
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--instance=lab")
        .arg("--mandatory_domains=bank.example")
        .arg("--cookie_secure=0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    support::wait_until(20, "the web process", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let (status, page) = http(port, "GET", path, None);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("bob@notls.example") && page.contains("via the web"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    // Opening the link did nothing.
    assert_eq!(lab.db_rows("SELECT count(*) || '' FROM actions"), ["0"]);
    let (status, answer) = http(port, "POST", path, Some(&format!("csrf={csrf}")));
    assert_eq!(status, 303, "{answer}");
    assert_eq!(lab.db_rows("SELECT state FROM actions"), ["queued"]);

    lab.scan(); // the worker's pass
    let delivered = lab.receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(delivered[0].recipients, ["bob@notls.example"]);
    lab.postfix
        .wait_queue(Duration::from_secs(30), "the original to be gone", |q| {
            q.iter().all(|m| m["queue_id"] != queue_id.as_str())
        });
    let (status, page) = http(port, "GET", path, None);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.to_lowercase()
            .contains("sent without mandatory encryption"),
        "{page}"
    );
    // The link worked once.
    let (status, _) = http(port, "POST", path, Some(&format!("csrf={csrf}")));
    assert_eq!(status, 409);
    support::signal(&web, libc::SIGTERM);
    assert!(web.wait().unwrap().success());
}

/// When a re-injection listener is not there, the request fails before
/// the queue is touched, with the reason: the queue is as it was, and a
/// later attempt can succeed. (Failures half-way are undone: see the kill
/// tests.)
pub(crate) fn a_failed_release_leaves_the_queue_as_it_was(on: On) {
    let lab = Lab::start(on);
    lab.submit(
        "alice@example.org",
        &["bob@notls.example", "dave@nontls.example"],
        "mixed",
    );
    let queue = lab.wait_deferred(1);
    let original = lab.queue_id_of(&queue, "bob@notls.example");
    lab.scan();
    let release = lab.request(&original, "release");
    let missing = if lab.header_release {
        "--reinject_listener=/nonexistent/posttls-reinject"
    } else {
        "--release_listener=/nonexistent/posttls-release"
    };
    lab.scan_with(&[missing.to_string()]);
    let (state, result, new_id) = lab.action(release);
    assert_eq!(state, "failed", "{result}");
    assert!(result.contains("the message was not touched"), "{result}");
    assert_eq!(new_id, None);
    let queue = lab.postfix.wait_queue(
        Duration::from_secs(30),
        "the original, deferred again",
        |q| q.len() == 1 && q[0]["queue_name"] == "deferred",
    );
    assert_eq!(queue[0]["queue_id"], original.as_str());
    assert_eq!(queue[0]["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(lab.db_rows("SELECT state FROM messages"), ["deferred"]);
    // Asked again with the listener up, it goes through.
    let again = lab.request(&original, "release");
    lab.scan();
    assert_eq!(lab.action(again).0, "done");
    assert_eq!(
        lab.receiver.wait_for(1, Duration::from_secs(30))[0].recipients,
        ["bob@notls.example"]
    );
}

/// Wrappers around the real Postfix commands, for `postfix_command_dir`:
/// each runs the real command, and the worker that called it is killed
/// with SIGKILL before or after the Nth command matching a pattern.
struct KillSwitch {
    dir: tempfile::TempDir,
    /// `dir` as the worker sees it.
    seen: PathBuf,
}

impl KillSwitch {
    fn new(lab: &Lab) -> KillSwitch {
        use std::os::unix::fs::PermissionsExt;
        let dir = lab.tempdir("kill.");
        let seen = lab.seen(dir.path());
        let d = seen.display();
        for name in ["postqueue", "postcat", "postsuper", "postconf", "sendmail"] {
            let script = format!(
                "#!/bin/sh\n\
                 line=\"$(basename \"$0\") $*\"\n\
                 check() {{\n\
                 \x20 [ -f {d}/kill-$1 ] || return 0\n\
                 \x20 read n pattern < {d}/kill-$1\n\
                 \x20 case \"$line\" in $pattern) ;; *) return 0;; esac\n\
                 \x20 c=$(( $(cat {d}/count-$1 2>/dev/null || echo 0) + 1 )); echo $c > {d}/count-$1\n\
                 \x20 if [ $c -eq $n ]; then rm -f {d}/kill-$1 {d}/count-$1; echo \"$line\" > {d}/killed; kill -9 $PPID; sleep 5; exit 1; fi\n\
                 }}\n\
                 check before\n\
                 /usr/sbin/{name} \"$@\"\n\
                 rc=$?\n\
                 check after\n\
                 exit $rc\n"
            );
            let path = dir.path().join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        KillSwitch { dir, seen }
    }

    fn option(&self) -> String {
        format!("--postfix_command_dir={}", self.seen.display())
    }

    /// Kill the caller `when` ("before" or "after") the `nth` command that
    /// matches the shell `pattern`, e.g. `postsuper * -h *`.
    fn arm(&self, when: &str, nth: u32, pattern: &str) {
        let _ = std::fs::remove_file(self.dir.path().join("killed"));
        std::fs::write(
            self.dir.path().join(format!("kill-{when}")),
            format!("{nth} {pattern}\n"),
        )
        .unwrap();
    }

    /// The command line at which the caller was killed.
    fn killed_at(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("killed"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Lab {
    /// Nothing is left on hold.
    fn assert_nothing_held(&self) {
        let queue = self.postfix.postqueue_json();
        assert!(
            queue.iter().all(|m| m["queue_name"] != "hold"),
            "left on hold: {queue:?}"
        );
    }

    /// The messages the receiver got with `subject`.
    fn received(&self, subject: &str) -> Vec<support::smtp_sink::Message> {
        self.receiver
            .messages()
            .into_iter()
            .filter(|m| m.text().contains(&format!("Subject: {subject}\r\n")))
            .collect()
    }

    /// Submits a message and waits until each of its recipients was tried.
    fn submit_deferred(&self, to: &[&str], subject: &str) -> String {
        self.submit("alice@example.org", to, subject);
        let queue =
            self.postfix
                .wait_queue(Duration::from_secs(30), "the new message deferred", |q| {
                    q.iter().any(|m| {
                        let recipients = m["recipients"].as_array().unwrap();
                        m["queue_name"] == "deferred"
                            && recipients.iter().any(|r| r["address"] == to[0])
                            && recipients.iter().all(|r| r["delay_reason"].is_string())
                    })
                });
        self.queue_id_of(&queue, to[0])
    }
}

fn killed_by_sigkill(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGKILL)
}

/// A worker killed with SIGKILL at each step of a release, then started
/// again, finishes or undoes what it was doing: the approved recipient gets
/// exactly one copy, the TLS-failed recipient nobody approved and the one
/// waiting for another reason never get a plaintext copy (they wait in a
/// copy of their own on the normal path), nothing of ours is left on hold,
/// and the action is settled with an outcome the sender's page shows.
pub(crate) fn a_release_killed_at_each_step_is_finished_or_undone_after_a_restart(on: On) {
    let lab = Lab::start(on);
    let switch = KillSwitch::new(&lab);
    let kill_points = [
        ("after", 1, "postsuper * -h * deferred"),
        // Before the check of the first copy: it was just accepted.
        ("before", 2, "postcat * -e -q *"),
        // Both copies accepted, the original still held.
        ("before", 3, "postcat * -e -q *"),
        ("after", 1, "postsuper * -d * hold"),
        ("after", 1, "postsuper * -H *"),
    ];
    for (n, (when, nth, pattern)) in kill_points.into_iter().enumerate() {
        let subject = format!("kill point {n}");
        let (a, b, d) = (
            format!("a{n}@notls.example"),
            format!("b{n}@notls.example"),
            format!("d{n}@nontls.example"),
        );
        let original = lab.submit_deferred(&[&a, &b, &d], &subject);
        lab.scan();
        // The sender approved a only (b was deferred for another reason
        // when the notification was made, say).
        let action = lab.request_for(&original, "release", std::slice::from_ref(&a));
        switch.arm(when, nth, pattern);
        let (status, log) = lab.scan_output(&[switch.option()]);
        assert!(
            killed_by_sigkill(status),
            "kill point {n} not reached ({status}):\n{log}"
        );
        let killed_at = switch.killed_at();
        // Restarted: it settles what the dead one left.
        let log = lab.scan();
        let (state, result, new_id) = lab.action(action);
        assert_eq!(
            state, "done",
            "kill point {n} ({killed_at}): {result}\n{log}"
        );
        assert!(
            result.contains(&format!("sent without mandatory encryption to {a}")),
            "{result}"
        );
        assert!(
            result.contains(&format!("{b}: the request did not approve this recipient")),
            "{result}"
        );
        assert!(new_id.is_some());
        lab.receiver.wait_for(n + 1, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(1500));
        let mine = lab.received(&subject);
        assert_eq!(
            mine.iter()
                .map(|m| m.recipients.clone())
                .collect::<Vec<_>>(),
            [vec![a.clone()]],
            "kill point {n} ({killed_at}): exactly one copy, to the approved recipient only"
        );
        lab.assert_header_as_released(&mine[0]);
        lab.assert_nothing_held();
        let queue = lab.postfix.postqueue_json();
        assert!(
            queue.iter().all(|m| m["queue_id"] != original.as_str()),
            "kill point {n}: the original is still queued: {queue:?}"
        );
        let kept: Vec<&Value> = queue
            .iter()
            .filter(|m| {
                m["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["address"] == b.as_str() || r["address"] == d.as_str())
            })
            .collect();
        assert_eq!(
            kept.len(),
            1,
            "kill point {n}: b and d wait in one copy: {queue:?}"
        );
        assert_eq!(kept[0]["recipients"].as_array().unwrap().len(), 2);
        let content = lab.queued_content(kept[0]["queue_id"].as_str().unwrap());
        assert!(
            !content.contains("TLS-Required"),
            "kill point {n}: the kept copy has no TLS-Required header: {content}"
        );
        eprintln!("kill point {n} ({when} {killed_at}): settled as {state}: {result}");
    }
    assert_eq!(lab.receiver.messages().len(), kill_points.len());
}

/// The same for a delete: killed after the hold or after the deletion,
/// the restarted worker leaves the message deleted, nothing on hold, and
/// the request done.
pub(crate) fn a_delete_killed_at_each_step_is_finished_or_undone_after_a_restart(on: On) {
    let lab = Lab::start(on);
    let switch = KillSwitch::new(&lab);
    for (n, pattern) in ["postsuper * -h *", "postsuper * -d * hold"]
        .into_iter()
        .enumerate()
    {
        let a = format!("a{n}@notls.example");
        let original = lab.submit_deferred(&[&a], &format!("delete {n}"));
        lab.scan();
        let action = lab.request(&original, "delete");
        switch.arm("after", 1, pattern);
        let (status, log) = lab.scan_output(&[switch.option()]);
        assert!(
            killed_by_sigkill(status),
            "kill point {n} not reached ({status}):\n{log}"
        );
        let log = lab.scan();
        let (state, result, _) = lab.action(action);
        assert_eq!(
            (state.as_str(), result.as_str()),
            ("done", "the message was deleted"),
            "{log}"
        );
        lab.assert_nothing_held();
        assert!(lab
            .postfix
            .postqueue_json()
            .iter()
            .all(|m| m["queue_id"] != original.as_str()));
        eprintln!("delete kill point {n} (after {pattern}): {state}: {result}");
    }
    assert!(lab.receiver.messages().is_empty());
}

/// One SMTP transaction with the submission listener, with ESMTP
/// parameters and the content sent with BDAT exactly as given; panics
/// unless every reply is positive.
pub(crate) fn submit_smtp(port: u16, mail: &str, rcpts: &[&str], content: &[u8]) {
    use std::io::{BufRead, BufReader};
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut expect = |what: &str, code: &str| loop {
        let mut line = String::new();
        input.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "{what}: {line}");
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    expect("greeting", "220");
    let mut command = |line: &str, code: &str| {
        out.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        expect(line, code);
    };
    command("EHLO client.example.org", "250");
    command(mail, "250");
    for rcpt in rcpts {
        command(rcpt, "250");
    }
    out.write_all(format!("BDAT {} LAST\r\n", content.len()).as_bytes())
        .unwrap();
    out.write_all(content).unwrap();
    expect("BDAT", "250");
    let _ = out.write_all(b"QUIT\r\n");
}

/// Byte-for-byte equality, reported as lengths and the first difference.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes received, {} sent, first difference at byte {at}: {:?} vs {:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[at..(at + 40).min(got.len())]),
            String::from_utf8_lossy(&want[at..(at + 40).min(want.len())]),
        );
    }
}

/// The body of a message: what follows the first empty line.
fn body_of(data: &[u8]) -> &[u8] {
    let at = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header/body separator");
    &data[at + 4..]
}

/// A released copy is the message the sender sent: the body byte for byte
/// (8-bit text and bytes, a 5000-octet line, a line with a lone dot and one
/// starting with dots), the DSN parameters (RET, ENVID, NOTIFY, ORCPT),
/// BODY=8BITMIME and SMTPUTF8 with a UTF-8 address, as the receiving server
/// sees them; and a 20 MB message arrives whole.
pub(crate) fn a_released_copy_is_the_message_the_sender_sent(on: On) {
    let lab = Lab::start(on);
    let mut body = Vec::new();
    body.extend_from_slice("Grüße aus Zürich, 8-bit UTF-8.\r\n".as_bytes());
    body.extend_from_slice(b"Latin-1 bytes: \xe9\xe8\xff and a tab\there.\r\n");
    body.extend_from_slice(&[b'x'; 5000]);
    body.extend_from_slice(b"\r\n.\r\n..two dots\r\n.one dot\r\nlast line\r\n");
    let mut content = b"From: alice@example.org\r\nTo: j\xc3\xb6rg@notls.example\r\nSubject: faithful\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
    content.extend_from_slice(&body);
    submit_smtp(
        lab.submission_port,
        "MAIL FROM:<alice@example.org> RET=HDRS ENVID=env+2B42=x BODY=8BITMIME SMTPUTF8",
        &["RCPT TO:<jörg@notls.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;J+C3+B6rg@NoTLS.example"],
        &content,
    );
    let queue = lab.wait_deferred(1);
    let original = lab.queue_id_of(&queue, "jörg@notls.example");
    lab.scan();
    lab.request(&original, "release");
    lab.scan();
    let got = &lab.receiver.wait_for(1, Duration::from_secs(30))[0];
    assert_eq!(got.recipients, ["jörg@notls.example"]);
    assert_eq!(got.sender, "alice@example.org");
    for param in ["RET=HDRS", "BODY=8BITMIME", "SMTPUTF8"] {
        assert!(
            got.mail_params.contains(param),
            "{param}: {}",
            got.mail_params
        );
    }
    // ENVID "env+42=x", as xtext.
    assert!(
        got.mail_params.contains("ENVID=env+2B42+3Dx"),
        "{}",
        got.mail_params
    );
    assert!(
        got.rcpt_params[0].contains("NOTIFY=SUCCESS,DELAY"),
        "{:?}",
        got.rcpt_params
    );
    assert!(
        got.rcpt_params[0].contains("ORCPT=rfc822;"),
        "{:?}",
        got.rcpt_params
    );
    assert!(
        got.rcpt_params[0].contains("NoTLS.example"),
        "the original recipient as the sender gave it: {:?}",
        got.rcpt_params
    );
    assert_same_bytes(body_of(&got.data), &body, "the body");
    let text = got.text();
    for header in [
        "Subject: faithful",
        "Content-Transfer-Encoding: 8bit",
        "To: jörg@notls.example",
    ] {
        assert!(text.contains(header), "{header}: {text}");
    }
    // The copy was received once by the instance: one more Received line.
    assert_eq!(text.matches("Received: ").count(), 2, "{text}");
    lab.assert_header_as_released(got);

    // 20 MB.
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n";
    let big: String = std::iter::repeat_n(line, 20_000_000 / line.len()).collect();
    let message = format!("From: alice@example.org\nTo: bob@notls.example\nSubject: big\n\n{big}");
    lab.postfix.sendmail(
        &["-f", "alice@example.org", "--", "bob@notls.example"],
        message.as_bytes(),
    );
    let queue = lab
        .postfix
        .wait_queue(Duration::from_secs(60), "the big message deferred", |q| {
            q.iter().any(|m| {
                m["recipients"][0]["address"] == "bob@notls.example"
                    && m["recipients"][0]["delay_reason"].is_string()
            })
        });
    let original = lab.queue_id_of(&queue, "bob@notls.example");
    let log = lab.scan();
    assert_eq!(
        lab.db_rows(&format!(
            "SELECT state FROM messages WHERE queue_id = '{original}'"
        )),
        ["deferred"],
        "the scan recorded the big message: {log}\n{queue:?}"
    );
    lab.request(&original, "release");
    lab.scan();
    let got = &lab.receiver.wait_for(2, Duration::from_secs(60))[1];
    assert_eq!(got.recipients, ["bob@notls.example"]);
    assert_same_bytes(
        body_of(&got.data),
        big.replace('\n', "\r\n").as_bytes(),
        "the 20 MB body",
    );
}

/// The worker trusts nothing the web process wrote: a relayed message
/// (our domain in its envelope, but not submitted by one of our users)
/// whose database row was forged to look like ours is neither deleted nor
/// released; the queue file decides, and the message is left as it was.
pub(crate) fn forged_rows_do_not_make_the_worker_touch_foreign_mail(on: On) {
    let lab = Lab::start(on);
    lab.relay("alice@example.org", "frank@notls.example");
    let queue = lab.wait_deferred(1);
    let id = lab.queue_id_of(&queue, "frank@notls.example");
    lab.scan();
    assert_eq!(lab.db_rows("SELECT state FROM messages"), ["ignored"]);
    // What a compromised web process could write.
    let conn = rusqlite::Connection::open(lab.dir.path().join("posttls.sqlite")).unwrap();
    conn.execute_batch(
        "UPDATE messages SET state='deferred', own_sender=1; \
         INSERT INTO recipients(message_id, address, tls_kind, mandatory, state) \
         SELECT id, 'frank@notls.example', 'not_offered', 0, 'pending' FROM messages",
    )
    .unwrap();
    let delete = lab.request(&id, "delete");
    let release = lab.request(&id, "release");
    let log = lab.scan();
    for action in [delete, release] {
        let (state, result, _) = lab.action(action);
        assert_eq!(state, "refused", "{result}\n{log}");
        assert!(result.contains("not_own_sender"), "{result}");
    }
    let queue = lab.postfix.postqueue_json();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["queue_id"], id.as_str());
    assert_eq!(queue[0]["queue_name"], "deferred", "taken off hold again");
    assert!(lab.receiver.messages().is_empty());
}

/// A message being delivered right now (in the active queue) is not acted
/// on: the request waits, queued, until it is back in the deferred queue.
#[test]
fn a_message_being_delivered_is_not_acted_on_until_it_is_deferred_again() {
    let lab = StandIn::new();
    lab.queue_one(chrono::Utc::now().timestamp() - 60);
    lab.scan(&[]);
    let listing = std::fs::read_to_string(&lab.listing).unwrap();
    std::fs::write(
        &lab.listing,
        listing.replace(r#""queue_name":"deferred""#, r#""queue_name":"active""#),
    )
    .unwrap();
    let store = posttls_store::Store::open(&lab.dir.path().join("posttls.sqlite")).unwrap();
    let message = store
        .messages_in(posttls_store::MessageState::Deferred, 1)
        .unwrap()
        .remove(0);
    let action = store
        .request_action(
            message.id,
            posttls_store::ActionKind::Delete,
            "sender test",
            None,
            &[],
            0,
        )
        .unwrap();
    lab.scan(&[]);
    let row = store.action(action).unwrap().unwrap();
    assert_eq!(row.state, posttls_store::ActionState::Queued);
    assert_eq!(
        row.result.as_deref(),
        Some("the message is in the active queue (being delivered right now)")
    );
    // The stand-ins have no postsuper: nothing was held or deleted.
}

/// A released copy takes the path of its Postfix version: from 3.10 on,
/// `TLS-Required: No` through the instance's own routing (here
/// `transport_maps` sends routed.example to a server of its own); before,
/// `posttls-release`'s content filter, whose next hop (here the receiver)
/// `transport_maps` does not change, as docs/posttls.md says.
pub(crate) fn a_released_copy_takes_the_route_of_its_postfix_version(on: On) {
    let lab = Lab::start(on);
    let original = lab.submit_deferred(&["erin@routed.example"], "routed");
    lab.scan();
    let action = lab.request(&original, "release");
    lab.scan();
    let (state, result, _) = lab.action(action);
    assert_eq!(state, "done", "{result}");
    let (route, other) = if lab.header_release {
        (&lab.routed, &lab.receiver)
    } else {
        (&lab.receiver, &lab.routed)
    };
    let got = route.wait_for(1, Duration::from_secs(30));
    assert_eq!(got[0].recipients, ["erin@routed.example"]);
    assert!(!got[0].tls);
    lab.assert_header_as_released(&got[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(other.messages().is_empty());
    assert_eq!(route.messages().len(), 1);
}

/// One SMTP transaction with the submission listener over STARTTLS (the
/// lab CA trusted), asking for REQUIRETLS (RFC 8689 section 4.1), by
/// Python's smtplib.
fn submit_requiretls(lab: &Lab, from: &str, to: &str, subject: &str) {
    let script = "import smtplib, ssl, sys\n\
        port, cafile, sender, rcpt, subject = sys.argv[1:]\n\
        s = smtplib.SMTP('127.0.0.1', int(port))\n\
        s.starttls(context=ssl.create_default_context(cafile=cafile))\n\
        s.ehlo('client.example.org')\n\
        assert s.has_extn('requiretls'), s.esmtp_features\n\
        s.sendmail(sender, [rcpt], f'From: {sender}\\r\\nSubject: {subject}\\r\\n\\r\\nHi.\\r\\n', mail_options=['REQUIRETLS'])\n\
        s.quit()\n";
    support::run(
        support::venv_python(),
        &[
            "-c",
            script,
            &lab.submission_port.to_string(),
            lab.ca.ca_file.to_str().unwrap(),
            from,
            to,
            subject,
        ],
        b"",
    );
}

/// On Postfix 3.11, a message whose sender asked for REQUIRETLS (the ESMTP
/// option over STARTTLS, or the `Require-TLS-ESMTP: yes` header of a local
/// submission, which Postfix turns into the same request) waits for TLS
/// like any other, and is never released: the worker refuses, the queue
/// keeps it, the receiver gets nothing. `postqueue -j`'s 3.11 fields are
/// read as they come.
pub(crate) fn a_message_that_asked_for_requiretls_is_never_released(on: On) {
    let lab = Lab::start(on);
    submit_requiretls(
        &lab,
        "alice@example.org",
        "bob@notls.example",
        "requiretls smtp",
    );
    lab.postfix.sendmail(
        &["-f", "alice@example.org", "--", "carl@notls.example"],
        b"From: alice@example.org\nSubject: requiretls header\nRequire-TLS-ESMTP: yes\n\nHi.\n",
    );
    let queue = lab.wait_deferred(2);
    // 3.11 lists each recipient's orig_address.
    assert!(
        queue
            .iter()
            .all(|m| m["recipients"][0]["orig_address"].is_string()),
        "{queue:?}"
    );
    let ids: Vec<String> = ["bob@notls.example", "carl@notls.example"]
        .iter()
        .map(|r| lab.queue_id_of(&queue, r))
        .collect();
    // Told without links, with the reason; the message waits.
    let wait = ["--mandatory_policy=wait".to_string()];
    let log = lab.scan_with(&wait);
    let notes = lab.notifications.wait_for(2, Duration::from_secs(10));
    for note in &notes {
        let text = mail_text(&note.data);
        assert!(!text.contains("/confirm/"), "no release link: {text}");
        assert!(
            text.contains("(the message asked for REQUIRETLS)"),
            "{text}"
        );
    }
    // A release request (a forged one: no link offered it) is refused.
    let offered = |id: &str| {
        lab.db_rows(&format!(
            "SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_id \
             WHERE m.queue_id = '{id}' AND r.state = 'pending'"
        ))
    };
    let actions: Vec<i64> = ids
        .iter()
        .map(|id| lab.request_for(id, "release", &offered(id)))
        .collect();
    lab.scan_with(&wait);
    for action in actions {
        let (state, result, _) = lab.action(action);
        assert_eq!(state, "refused", "{result}\n{log}");
        assert!(result.contains("REQUIRETLS"), "{result}");
    }
    let queue = lab.postfix.postqueue_json();
    for id in &ids {
        assert!(
            queue
                .iter()
                .any(|m| m["queue_id"] == id.as_str() && m["queue_name"] == "deferred"),
            "{id} waits on: {queue:?}"
        );
    }
    lab.assert_nothing_held();
    // With the default mandatory_policy (return) both go back to the
    // sender, as messages to a mandatory domain do.
    lab.scan();
    let queue = lab
        .postfix
        .wait_queue(Duration::from_secs(30), "the originals returned", |q| {
            ids.iter()
                .all(|id| q.iter().all(|m| m["queue_id"] != id.as_str()))
        });
    assert!(
        queue.iter().all(|m| m["sender"] == "MAILER-DAEMON"),
        "only the bounces wait: {queue:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.receiver.messages().is_empty());
    // mailtls check names the instance's REQUIRETLS settings.
    let out = lab
        .mailtls()
        .args(["check", "posttls", "--json"])
        .arg(format!(
            "--postfix_config_dir={}",
            lab.postfix.config_dir().display()
        ))
        .arg("--posttls_config=/nonexistent/posttls.cfg")
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = check["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["message"]
                .as_str()
                .unwrap()
                .contains("REQUIRETLS requests")
        })
        .unwrap_or_else(|| panic!("{check:#}"))
        .clone();
    assert_eq!(finding["level"], "ok");
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("requiretls_enable = yes; smtp_requiretls_policy = "),
        "{message}"
    );
}

mod fleet;
