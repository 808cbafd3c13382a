//! Postfix itself, as `postconf` shows it: its version, the TLSRPT
//! parameters and the socket they name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mailtls_common::process::Run;

use super::super::collectd::CollectdOptions;
use super::{Finding, PolicyTable, TlsRequiredFacts};

/// What `postconf` says about the instance.
#[derive(Debug, Clone, Default)]
pub struct PostfixFacts {
    pub config_dir: Option<PathBuf>,
    /// Why postconf could not be asked, if it could not.
    pub unavailable: Option<String>,
    pub mail_version: Option<String>,
    pub queue_directory: Option<String>,
    pub mail_owner: Option<String>,
    /// `None` when the parameter is unknown (Postfix without TLSRPT).
    pub tlsrpt_enable: Option<String>,
    pub tlsrpt_socket_name: Option<String>,
    pub tls_security_level: Option<String>,
    pub sender_transport_maps: Option<String>,
    /// Routing that a content filter with an empty next hop bypasses.
    pub relayhost: Option<String>,
    pub transport_maps: Option<String>,
    /// `postconf -M` lines of the services PostTLS and TLSRPT care about.
    pub smtp_service: Option<String>,
    pub release_service: Option<String>,
    pub reinject_service: Option<String>,
    /// The transport the release listener's `content_filter` names, and
    /// whether master.cf defines it.
    pub release_transport: Option<(String, bool)>,
    /// Whether that `content_filter` names a next hop (`smtp_may:[relay]`).
    pub release_nexthop: bool,
    /// What the instance does with a sender's `TLS-Required: No` (Postfix
    /// 3.10 and later).
    pub tls_required: Option<TlsRequiredFacts>,
    /// `smtp_tls_policy_maps`, and its tables with their entries.
    pub tls_policy_maps: Option<String>,
    pub tls_policy_tables: Vec<PolicyTable>,
    /// `requiretls_enable` and `smtp_requiretls_policy` (Postfix 3.11 and
    /// later).
    pub requiretls: Option<(String, String)>,
}

impl PostfixFacts {
    pub(super) fn gather(config_dir: Option<PathBuf>) -> PostfixFacts {
        let mut facts = PostfixFacts {
            config_dir: config_dir.clone(),
            ..PostfixFacts::default()
        };
        let postconf = |args: &[&str]| -> Result<Option<String>, String> {
            let done = postfix_command("postconf", config_dir.as_deref())
                .args(args)
                .run()
                .map_err(|e| format!("cannot run postconf: {e}"))?;
            let stderr = done.stderr_line();
            if stderr.contains("unknown parameter") {
                return Ok(None);
            }
            if !done.ending.success() {
                return Err(format!(
                    "postconf {} {}: {stderr}",
                    args.join(" "),
                    done.ending
                ));
            }
            Ok(Some(
                String::from_utf8_lossy(&done.stdout).trim().to_string(),
            ))
        };
        match postconf(&["-h", "mail_version"]) {
            Ok(version) => facts.mail_version = version,
            Err(why) => {
                facts.unavailable = Some(why);
                return facts;
            }
        }
        let value = |name: &str| postconf(&["-h", name]).ok().flatten();
        let service = |name: &str| {
            postconf(&["-M", name])
                .ok()
                .flatten()
                .filter(|line| !line.is_empty())
        };
        facts.queue_directory = value("queue_directory");
        facts.mail_owner = value("mail_owner");
        facts.tlsrpt_enable = value("smtp_tlsrpt_enable");
        facts.tlsrpt_socket_name = value("smtp_tlsrpt_socket_name");
        facts.tls_security_level = value("smtp_tls_security_level");
        facts.sender_transport_maps = value("sender_dependent_default_transport_maps");
        facts.relayhost = value("relayhost");
        facts.transport_maps = value("transport_maps");
        facts.smtp_service = service("smtp/unix");
        facts.release_service = service("posttls-release/unix");
        facts.reinject_service = service("posttls-reinject/unix");
        facts.release_nexthop = facts
            .release_service
            .as_deref()
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("content_filter="))
            })
            .and_then(|filter| filter.split_once(':'))
            .is_some_and(|(_, nexthop)| !nexthop.is_empty());
        let config = config_dir.clone();
        facts.tls_required = TlsRequiredFacts::gather(
            |args| postconf(args).ok().flatten(),
            |key, table| {
                let done = postfix_command("postmap", config.as_deref())
                    .arg("-q")
                    .arg(key)
                    .arg(table)
                    .run()
                    .ok()?;
                done.ending
                    .success()
                    .then(|| String::from_utf8_lossy(&done.stdout).trim().to_string())
            },
        );
        facts.requiretls = value("requiretls_enable")
            .filter(|v| !v.is_empty())
            .map(|enable| (enable, value("smtp_requiretls_policy").unwrap_or_default()));
        facts.tls_policy_maps = value("smtp_tls_policy_maps");
        facts.tls_policy_tables = PolicyTable::gather(
            facts.tls_policy_maps.as_deref().unwrap_or_default(),
            |table| {
                let done = postfix_command("postmap", config.as_deref())
                    .arg("-s")
                    .arg(table)
                    .run()
                    .ok()?;
                done.ending
                    .success()
                    .then(|| String::from_utf8_lossy(&done.stdout).into_owned())
            },
        );
        facts.release_transport = facts
            .release_service
            .as_deref()
            .and_then(content_filter_transport)
            .map(|transport| {
                let defined = service(&format!("{transport}/unix")).is_some();
                (transport, defined)
            });
        facts
    }

    /// `(major, minor)` of `mail_version`.
    pub(super) fn version(&self) -> Option<(u32, u32)> {
        let version = self.mail_version.as_deref()?;
        let mut parts = version.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// Whether `smtp` runs chrooted (`master.cf` column 5).
    pub(super) fn smtp_chrooted(&self) -> bool {
        self.smtp_service
            .as_deref()
            .and_then(|line| line.split_whitespace().nth(4))
            .is_some_and(|chroot| chroot == "y")
    }

    /// The transport `sender_dependent_default_transport_maps` gives mail
    /// from `sender` (`postmap -q`), without its nexthop.
    pub(super) fn transport_for_sender(&self, sender: &str) -> Option<String> {
        let maps = self.sender_transport_maps.as_deref()?;
        maps.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|map| !map.is_empty())
            .find_map(|map| {
                let done = postfix_command("postmap", self.config_dir.as_deref())
                    .arg("-q")
                    .arg(sender)
                    .arg(map)
                    .run()
                    .ok()?;
                done.ending.success().then(|| {
                    let answer = String::from_utf8_lossy(&done.stdout).trim().to_string();
                    answer.split(':').next().unwrap_or_default().to_string()
                })
            })
            .filter(|transport| !transport.is_empty())
    }

    /// `smtp_tlsrpt_enable` of master.cf service `name/unix`.
    pub(super) fn service_tlsrpt(&self, name: &str) -> Option<String> {
        let done = postfix_command("postconf", self.config_dir.as_deref())
            .arg("-hP")
            .arg(format!("{name}/unix/smtp_tlsrpt_enable"))
            .run()
            .ok()?;
        let value = String::from_utf8_lossy(&done.stdout).trim().to_string();
        (done.ending.success() && !value.is_empty()).then_some(value)
    }

    pub(super) fn postconf_e(&self, setting: &str) -> String {
        match &self.config_dir {
            Some(dir) => format!("postconf -c {} -e '{setting}'", dir.display()),
            None => format!("postconf -e '{setting}'"),
        }
    }
}

/// The transport of a `-o content_filter=TRANSPORT:NEXTHOP` in a
/// `postconf -M` line.
pub(super) fn content_filter_transport(service_line: &str) -> Option<String> {
    service_line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("content_filter="))
        .and_then(|filter| filter.split(':').next())
        .filter(|transport| !transport.is_empty())
        .map(str::to_string)
}

/// A Postfix command of the instance in `config_dir` (`-c DIR`).
fn postfix_command(program: &str, config_dir: Option<&Path>) -> Run<'static> {
    let run = Run::new(
        Path::new("/usr/sbin").join(program),
        Duration::from_secs(20),
    );
    match config_dir {
        Some(dir) => run.arg("-c").arg(dir),
        None => run,
    }
}

/// The socket `smtp_tlsrpt_socket_name` names, as a path outside any
/// chroot: relative names are relative to the queue directory.
pub fn tlsrpt_socket_path(socket_name: &str, queue_directory: &str) -> PathBuf {
    let name = Path::new(socket_name);
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        Path::new(queue_directory).join(name)
    }
}

/// Whether the Postfix instance answers `postconf` at all: both halves
/// need it.
pub fn judge_postfix_reachable(facts: &PostfixFacts) -> Vec<Finding> {
    match &facts.unavailable {
        Some(why) => vec![Finding::error(
            "postfix",
            format!("Postfix cannot be asked: {why}"),
            "install Postfix, or name the instance with --postfix_config_dir",
        )],
        None => Vec::new(),
    }
}

/// Postfix's TLSRPT side: its version, the TLSRPT parameters and socket.
pub fn judge_postfix(facts: &PostfixFacts, collector: Option<&CollectdOptions>) -> Vec<Finding> {
    const AREA: &str = "postfix";
    let mut findings = Vec::new();
    let version = facts.mail_version.clone().unwrap_or_default();
    match facts.version() {
        Some((major, minor)) if (major, minor) < (3, 10) => findings.push(Finding::error(
            AREA,
            format!(
                "Postfix {version} cannot report TLS results: TLSRPT needs Postfix 3.10 or newer built with libtlsrpt, so the collector receives nothing from this Postfix"
            ),
            "upgrade Postfix to 3.10 or newer (with TLSRPT support); PostTLS works with this version: `mailtls check posttls` checks only PostTLS",
        )),
        Some(_) => match facts.tlsrpt_enable.as_deref() {
            None => findings.push(Finding::error(
                AREA,
                format!("Postfix {version} was built without TLSRPT support (smtp_tlsrpt_enable is unknown)"),
                "install a Postfix package built with libtlsrpt",
            )),
            Some("yes") => findings.push(Finding::ok(
                AREA,
                format!("Postfix {version} reports TLS results (smtp_tlsrpt_enable = yes)"),
            )),
            Some(other) => findings.push(Finding::error(
                AREA,
                format!("smtp_tlsrpt_enable = {other}: Postfix does not report TLS results"),
                facts.postconf_e("smtp_tlsrpt_enable = yes"),
            )),
        },
        None => findings.push(Finding::warning(
            AREA,
            format!("Postfix version {version:?} is not one this check understands"),
            "run postconf -h mail_version and report it to the mailtls developers",
        )),
    }
    if facts.tlsrpt_enable.as_deref() == Some("yes") {
        if let (Some(name), Some(queue), Some(collector)) = (
            facts.tlsrpt_socket_name.as_deref(),
            facts.queue_directory.as_deref(),
            collector,
        ) {
            let postfix_socket = tlsrpt_socket_path(name, queue);
            let ours = Path::new(&collector.socketname);
            if postfix_socket != ours {
                let relative = ours
                    .strip_prefix(queue)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| collector.socketname.clone());
                findings.push(Finding::error(
                    AREA,
                    format!(
                        "smtp_tlsrpt_socket_name = {name} names {}, but the collector listens on {}",
                        postfix_socket.display(),
                        ours.display()
                    ),
                    facts.postconf_e(&format!("smtp_tlsrpt_socket_name = {relative}")),
                ));
            } else if facts.smtp_chrooted() && Path::new(name).is_absolute() {
                findings.push(Finding::error(
                    AREA,
                    format!("smtp runs chrooted in {queue}, where the absolute smtp_tlsrpt_socket_name {name} does not exist"),
                    format!("put the collector's socket under {queue} (socketname = {queue}/run/tlsrpt/tlsrpt-collectd.socket) and set smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt-collectd.socket"),
                ));
            } else {
                findings.push(Finding::ok(
                    AREA,
                    format!("smtp_tlsrpt_socket_name = {name} is the collector's socket"),
                ));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use mailtls_common::config::ProgramOptions;

    use super::super::tests::postfix;
    use super::super::{worst, Level};
    use super::*;

    fn collector_socket(name: &str) -> CollectdOptions {
        let mut options = CollectdOptions::defaults();
        options.socketname = name.into();
        options
    }

    #[test]
    fn postfix_before_3_10_is_told_plainly() {
        let findings = judge_postfix(&postfix("3.7.11"), None);
        assert_eq!(findings[0].level, Level::Error);
        assert!(
            findings[0].message.contains("TLSRPT needs Postfix 3.10"),
            "{findings:?}"
        );
    }

    #[test]
    fn the_socket_name_is_resolved_against_the_queue_directory() {
        let mut facts = postfix("3.10.1");
        facts.tlsrpt_enable = Some("yes".into());
        facts.tlsrpt_socket_name = Some("run/tlsrpt/tlsrpt-collectd.socket".into());
        facts.smtp_service = Some("smtp unix - - y - - smtp".into());
        let ours = collector_socket("/var/spool/postfix/run/tlsrpt/tlsrpt-collectd.socket");
        let findings = judge_postfix(&facts, Some(&ours));
        assert_eq!(worst(&findings), Level::Ok, "{findings:?}");

        let elsewhere = collector_socket("/run/tlsrpt/tlsrpt-collectd.socket");
        let findings = judge_postfix(&facts, Some(&elsewhere));
        assert_eq!(findings[1].level, Level::Error);
        assert!(findings[1]
            .fix
            .as_deref()
            .unwrap()
            .contains("smtp_tlsrpt_socket_name = /run/tlsrpt"));

        // An absolute name that matches, but smtp is chrooted.
        facts.tlsrpt_socket_name = Some("/run/tlsrpt/tlsrpt-collectd.socket".into());
        let findings = judge_postfix(&facts, Some(&elsewhere));
        assert!(findings[1].message.contains("chrooted"), "{findings:?}");
        facts.tlsrpt_enable = Some("no".into());
        assert!(judge_postfix(&facts, Some(&elsewhere))[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("smtp_tlsrpt_enable = yes"));
    }
}
