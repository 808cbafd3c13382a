//! `mailtls check` against a real Postfix instance and a real collector,
//! set up wrong and then right.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::postfix::{Options, Postfix};
use crate::support::{self, Collector};

/// `mailtls check --json` with the configuration files in `dir`: its exit
/// code and its findings.
fn check(postfix: &Postfix, dir: &Path) -> (i32, Vec<Value>) {
    let file = |name: &str| dir.join(name).display().to_string();
    let out = Command::new(support::mailtls_bin())
        .arg("check")
        .arg(format!(
            "--postfix_config_dir={}",
            postfix.config_dir().display()
        ))
        .arg(format!("--collectd_config={}", file("collectd.cfg")))
        .arg(format!("--reportd_config={}", file("reportd.cfg")))
        .arg(format!("--posttls_config={}", file("posttls.cfg")))
        // Not the unit of a mailtls package this machine may have.
        .arg(format!(
            "--posttls_web_unit={}",
            file("posttls-web.service")
        ))
        .arg("--json")
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let findings = answer["findings"].as_array().unwrap().clone();
    let worst = answer["status"].as_str().unwrap().to_string();
    let code = out.status.code().unwrap();
    assert_eq!(
        code,
        match worst.as_str() {
            "ok" => 0,
            "warning" => 1,
            _ => 2,
        },
        "{findings:#?}"
    );
    (code, findings)
}

/// The finding of `area` whose message contains `text`.
fn finding<'a>(findings: &'a [Value], area: &str, text: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["area"] == area && f["message"].as_str().unwrap().contains(text))
        .unwrap_or_else(|| panic!("no {area} finding with {text:?} in {findings:#?}"))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The collector's configuration file for `collector`.
fn collectd_cfg(dir: &Path, collector: &Collector) {
    write(
        dir,
        "collectd.cfg",
        &format!(
            "[tlsrpt_collectd]\nstorage = {}\nsocketname = {}\n",
            collector.storage_url(),
            collector.socket.display()
        ),
    );
}

#[test]
fn check_says_what_is_wrong_and_how_to_fix_it_then_that_it_is_right() {
    let dir = tempfile::tempdir().unwrap();
    // Wrong: TLS optional, no re-injection listeners, a socket only its
    // owner (root) may write to, PostTLS without base_url.
    let postfix = Postfix::start(Options::new(9));
    let mut collector = Collector::start(&["--socketmode=0200"], &[]);
    collectd_cfg(dir.path(), &collector);
    let key = dir.path().join("secret.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let posttls_cfg = write(
        dir.path(),
        "posttls.cfg",
        &format!(
            "[posttls]\nown_domains = example.org\nnotification_from = postmaster@example.org\nsecret_key_file = {}\ndatabase = {}\n",
            key.display(),
            dir.path().join("posttls.sqlite").display()
        ),
    );
    write(
        dir.path(),
        "reportd.cfg",
        "[tlsrpt_reportd]\ndbname = /nonexistent/reportd.sqlite\nfetchers = /nonexistent/tlsrpt-fetcher\n",
    );
    let (code, findings) = check(&postfix, dir.path());
    assert_eq!(code, 2);
    assert_eq!(
        finding(&findings, "reportd", "contact_info is not set")["level"],
        "error"
    );
    assert_eq!(
        finding(
            &findings,
            "reportd",
            "fetcher `/nonexistent/tlsrpt-fetcher`"
        )["level"],
        "error"
    );
    assert_eq!(
        finding(&findings, "reportd", "not DKIM-signed")["level"],
        "warning"
    );
    // Postfix 3.7 (Debian 12) cannot report TLS results, and is told so.
    let version = postfix.postconf("mail_version");
    if version.starts_with("3.")
        && version[2..]
            .split('.')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            < 10
    {
        let tlsrpt = finding(&findings, "postfix", "TLSRPT needs Postfix 3.10");
        assert_eq!(tlsrpt["level"], "error");
    }
    let socket = finding(&findings, "collector", "may not write");
    assert_eq!(socket["level"], "error");
    assert!(
        socket["fix"]
            .as_str()
            .unwrap()
            .contains("socketgroup = postfix"),
        "{socket}"
    );
    assert_eq!(
        finding(&findings, "posttls", "base_url is not set")["level"],
        "error"
    );
    let leaked = finding(&findings, "posttls", "others may read it");
    assert!(
        leaked["fix"].as_str().unwrap().starts_with("chmod 600"),
        "{leaked}"
    );
    let listeners = finding(
        &findings,
        "posttls",
        "no posttls-release and no posttls-reinject listener",
    );
    assert_eq!(listeners["level"], "error");
    // The fix is the lines to append, as the package ships them.
    let fix = listeners["fix"].as_str().unwrap();
    for service in [
        "smtp_may  unix",
        "posttls-release  unix",
        "posttls-reinject  unix",
    ] {
        assert!(fix.contains(&format!("\n{service}")), "{fix}");
    }
    let level = finding(&findings, "posttls", "smtp_tls_security_level = may");
    assert!(
        level["fix"]
            .as_str()
            .unwrap()
            .contains("-e 'smtp_tls_security_level = encrypt'"),
        "{level}"
    );
    assert!(collector.terminate().success());
    postfix.stop();

    // Right: what the fixes say, done: the shipped master.cf lines, with
    // the next hop named as the routing warning says (this instance sends
    // everything to a relayhost).
    let services = include_str!("../../../../packaging/examples/master.cf.posttls").replace(
        "content_filter=smtp_may:",
        "content_filter=smtp_may:[127.0.0.1]:9",
    );
    let postfix = Postfix::start(
        Options::new(9)
            .tls_security_level("encrypt")
            .master_cf(&services),
    );
    let mut collector = Collector::start(&["--socketgroup=postfix", "--socketmode=0220"], &[]);
    collectd_cfg(dir.path(), &collector);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dkim = support::openssl_key(dir.path(), "dkim.key", &["-algorithm", "ed25519"]);
    write(
        dir.path(),
        "reportd.cfg",
        &format!(
            "[tlsrpt_reportd]\ndbname = {}\nfetchers = {} --storage {}\ncontact_info = tlsrpt@example.com\nsender_address = tlsrpt-noreply@example.com\ndkim_key_file = {}\n",
            dir.path().join("reportd.sqlite").display(),
            support::fetcher_bin().display(),
            collector.storage_url(),
            dkim.display()
        ),
    );
    let mut text = std::fs::read_to_string(&posttls_cfg).unwrap();
    text.push_str("base_url = https://posttls.example.org\n");
    std::fs::write(&posttls_cfg, text).unwrap();
    let (_, findings) = check(&postfix, dir.path());
    assert_eq!(
        finding(&findings, "collector", "Postfix's postfix may write to")["level"],
        "ok"
    );
    assert_eq!(finding(&findings, "reportd", "answers")["level"], "ok");
    let signed = finding(
        &findings,
        "reportd",
        "publish: tlsrpt._domainkey.example.com TXT",
    );
    assert!(
        signed["message"].as_str().unwrap().contains("k=ed25519"),
        "{signed}"
    );
    for ok in [
        "the link key",
        "master.cf has the posttls-release and posttls-reinject listeners",
        "released mail leaves through smtp_may",
        "smtp_tls_security_level requires TLS",
    ] {
        assert_eq!(finding(&findings, "posttls", ok)["level"], "ok");
    }
    // What is left is Postfix's version and the collector's first day
    // (and the kernel queue, which this machine may leave at 10).
    for f in &findings {
        if f["level"] != "ok" {
            let message = f["message"].as_str().unwrap();
            assert!(
                message.contains("TLSRPT needs Postfix 3.10")
                    || message.contains("max_dgram_qlen")
                    || message.contains("no day has been completed"),
                "{f}"
            );
        }
    }
    assert!(collector.terminate().success());
}
