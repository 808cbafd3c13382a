//! `mailtls check` inside the Debian 13 root, on a live Postfix 3.10
//! instance set up wrong and then right: each fix it prints is run as
//! printed, and then Postfix's datagrams reach the collector.

use std::path::Path;

use serde_json::Value;

use super::{collector_socket, logged_events, Domain, Lab, Mx, WAIT};
use crate::support::lab::{Root, Suite};
use crate::support::postfix::Postfix;
use crate::support::*;

/// `mailtls check tlsrpt --json` run inside the root for the instance, with
/// the collector's configuration file `collectd_cfg` (a path inside the
/// root): its exit code and findings.
fn check(root: &Root, postfix: &Postfix, collectd_cfg: &Path) -> (i32, Vec<Value>) {
    check_part(
        root,
        postfix,
        "tlsrpt",
        &[
            &format!("--collectd_config={}", collectd_cfg.display()),
            "--reportd_config=/nonexistent/reportd.cfg",
        ],
    )
}

/// `mailtls check PART --json ARGS` run inside the root for the instance:
/// its exit code and findings.
pub(super) fn check_part(
    root: &Root,
    postfix: &Postfix,
    part: &str,
    args: &[&str],
) -> (i32, Vec<Value>) {
    let mailtls = root.install(&mailtls_bin());
    let out = root
        .command(mailtls.to_str().unwrap())
        .arg("check")
        .arg(part)
        .arg(format!(
            "--postfix_config_dir={}",
            postfix.config_dir().display()
        ))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().unwrap(),
        answer["findings"].as_array().unwrap().clone(),
    )
}

/// The postfix finding whose message contains `text`.
fn postfix_finding<'a>(findings: &'a [Value], text: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["area"] == "postfix" && f["message"].as_str().unwrap().contains(text))
        .unwrap_or_else(|| panic!("no postfix finding with {text:?} in {findings:#?}"))
}

/// Run a finding's fix as printed, inside the root, as an admin would.
pub(super) fn apply(root: &Root, finding: &Value) {
    let fix = finding["fix"].as_str().unwrap();
    root.run("/bin/sh", &["-c", fix]);
}

#[test]
fn check_on_a_live_postfix_3_10_finds_each_mistake_and_its_printed_fix_works() {
    let domain = Domain::new("checked", Mx::Trusted).policy("secure");
    let lab = Lab::start(Suite::Trixie, std::slice::from_ref(&domain));
    // Wrong twice: TLSRPT off (Debian's default), and an absolute socket
    // name, which the chrooted smtp cannot reach.
    let postfix = Postfix::start(
        lab.postfix_options()
            .main_cf("smtp_tlsrpt_enable = no")
            .main_cf("smtp_tlsrpt_socket_name = /run/tlsrpt/tlsrpt-collectd.socket"),
    );
    let socket = collector_socket(&postfix);
    let inside_socket = lab.root.inside_path(&socket);
    let dir = lab.root.tempdir("check.");
    let cfg = dir.path().join("collectd.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[tlsrpt_collectd]\nstorage = sqlite://{}/collectd.sqlite\nsocketname = {}\n",
            lab.root.inside_path(dir.path()).display(),
            inside_socket.display()
        ),
    )
    .unwrap();
    let inside_cfg = lab.root.inside_path(&cfg);
    let _collector = Collector::start_at(
        &format!("sqlite://{}/collectd.sqlite", dir.path().display()),
        &socket,
        &["--socketmode=0222", "--receiver_priority=normal"],
    );

    let (code, findings) = check(&lab.root, &postfix, &inside_cfg);
    assert_eq!(code, 2, "{findings:#?}");
    let off = postfix_finding(&findings, "smtp_tlsrpt_enable = no");
    assert_eq!(off["level"], "error");
    apply(&lab.root, off);
    assert_eq!(postfix.postconf("smtp_tlsrpt_enable"), "yes");

    let (code, findings) = check(&lab.root, &postfix, &inside_cfg);
    assert_eq!(code, 2, "{findings:#?}");
    let version = postfix_finding(&findings, "reports TLS results");
    assert_eq!(version["level"], "ok");
    assert!(
        version["message"]
            .as_str()
            .unwrap()
            .contains("Postfix 3.10."),
        "{version}"
    );
    let socket_name = postfix_finding(&findings, "smtp_tlsrpt_socket_name = /run/tlsrpt");
    assert_eq!(socket_name["level"], "error");
    assert!(
        socket_name["message"]
            .as_str()
            .unwrap()
            .contains(&inside_socket.display().to_string()),
        "{socket_name}"
    );
    apply(&lab.root, socket_name);
    assert_eq!(
        postfix.postconf("smtp_tlsrpt_socket_name"),
        "run/tlsrpt/tlsrpt-collectd.socket"
    );

    let (_, findings) = check(&lab.root, &postfix, &inside_cfg);
    assert_eq!(
        postfix_finding(&findings, "is the collector's socket")["level"],
        "ok"
    );
    assert!(
        findings
            .iter()
            .all(|f| f["area"] != "postfix" || f["level"] == "ok"),
        "{findings:#?}"
    );
    // Right for real: after a reload, a delivery's datagram reaches the
    // collector.
    lab.root.run(
        "/usr/sbin/postfix",
        &["-c", postfix.config_dir().to_str().unwrap(), "reload"],
    );
    postfix.sendmail(
        &[
            "-f",
            "sender@mta.mailtls.test",
            "--",
            &format!("user@{}", domain.name()),
        ],
        b"Subject: checked\n\nbody\n",
    );
    postfix.wait_queue_empty(WAIT);
    wait_until(20, "the datagram counted", || {
        try_total(&dir.path().join("collectd.sqlite")) == Some(1)
    });
    assert_eq!(logged_events(&postfix.maillog()).len(), 1);
}
