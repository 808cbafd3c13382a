//! `mailtls policyd` as Postfix uses it: `smtp_tls_policy_maps` names its
//! socket with the map that fits the Postfix version (3.9 and older refuse
//! the TLSRPT attributes), a chrooted smtp can reach a unix socket, and it
//! answers (Postfix defers a delivery whose policy lookup fails).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use policyd_daemon::Listen;

use super::super::policyd::{PolicydOptions, SPEC};
use super::{config_failure, loaded, options_of, Finding, PostfixFacts};

const AREA: &str = "policyd";

/// The map that carries the TLSRPT attributes, and the one without them.
const MAP: &str = "postfix";
const MAP_NOTLSRPT: &str = "postfix-notlsrpt";

/// The key of the probe lookup: a name that has no policy anywhere.
const PROBE_KEY: &str = "mailtls-check.invalid";

/// What the check knows of the policy server.
#[derive(Debug, Default)]
pub struct PolicydFacts {
    pub config_file: PathBuf,
    /// `None` when the file does not exist (not installed).
    pub options: Option<Result<PolicydOptions, String>>,
    /// Its answer to a lookup of [`PROBE_KEY`], or why none came.
    pub probe: Option<Result<String, String>>,
}

impl PolicydFacts {
    pub fn gather(config_file: &Path) -> PolicydFacts {
        let mut facts = PolicydFacts {
            config_file: config_file.to_path_buf(),
            ..PolicydFacts::default()
        };
        if !config_file.exists() {
            return facts;
        }
        let options =
            options_of::<PolicydOptions>(&SPEC, clap::Command::new("policyd"), config_file);
        if let Ok(listen) = options.as_ref().map(|o| o.listen.parse::<Listen>()) {
            facts.probe = Some(listen.map_err(|e| e.to_string()).and_then(|l| probe(&l)));
        }
        facts.options = Some(options);
        facts
    }
}

/// One socketmap lookup of [`PROBE_KEY`] in map [`MAP`]: the answer.
fn probe(listen: &Listen) -> Result<String, String> {
    let timeout = Duration::from_secs(5);
    let request = format!("{MAP} {PROBE_KEY}");
    let request = format!("{}:{request},", request.len());
    let answer = match listen {
        Listen::Inet(address) => {
            let mut stream = std::net::TcpStream::connect_timeout(address, timeout)
                .map_err(|e| e.to_string())?;
            stream.set_read_timeout(Some(timeout)).ok();
            exchange(&mut stream, request.as_bytes())?
        }
        Listen::Unix(path) => {
            let mut stream =
                std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
            stream.set_read_timeout(Some(timeout)).ok();
            exchange(&mut stream, request.as_bytes())?
        }
    };
    // A netstring: LENGTH:PAYLOAD,
    answer
        .split_once(':')
        .and_then(|(_, rest)| rest.strip_suffix(','))
        .map(str::to_string)
        .ok_or_else(|| format!("not a socketmap answer: {answer:?}"))
}

fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> Result<String, String> {
    stream.write_all(request).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut byte = [0u8];
    // Up to the closing comma of the one answer (short for this key).
    while answer.len() < 1024 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                answer.push(byte[0]);
                if byte[0] == b',' {
                    break;
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The `socketmap:` table of `smtp_tls_policy_maps` that names `listen`,
/// and its map name.
fn table_for<'a>(postfix: &'a PostfixFacts, listen: &Listen) -> Option<(&'a str, &'a str)> {
    let maps = postfix.tls_policy_maps.as_deref()?;
    maps.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .find_map(|table| {
            let (socket, map) = table.strip_prefix("socketmap:")?.rsplit_once(':')?;
            let names_it = match listen {
                Listen::Inet(address) => socket
                    .strip_prefix("inet:")
                    .is_some_and(|s| s == address.to_string()),
                Listen::Unix(path) => socket.strip_prefix("unix:").is_some_and(|s| {
                    let named = Path::new(s);
                    named == path
                        || postfix
                            .queue_directory
                            .as_deref()
                            .is_some_and(|queue| Path::new(queue).join(named) == *path)
                }),
            };
            names_it.then_some((table, map))
        })
}

/// The findings: nothing when the server is not installed, an ok line when
/// it is installed but not used.
pub fn judge(facts: &PolicydFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    let Some(options) = loaded(&facts.options) else {
        return config_failure(&facts.options, AREA, &facts.config_file);
    };
    let listen = match options.listen.parse::<Listen>() {
        Ok(listen) => listen,
        Err(e) => {
            return vec![Finding::error(
                AREA,
                format!(
                    "listen = {}: {e}: the policy server does not start",
                    options.listen
                ),
                format!(
                    "listen = inet:127.0.0.1:8461 in [policyd] of {}",
                    facts.config_file.display()
                ),
            )]
        }
    };
    let version = postfix.mail_version.as_deref().unwrap_or_default();
    let tlsrpt = postfix.version().is_some_and(|v| v >= (3, 10));
    let wanted_map = if tlsrpt { MAP } else { MAP_NOTLSRPT };
    let socket = match &listen {
        Listen::Inet(address) => format!("inet:{address}"),
        Listen::Unix(path) => match postfix
            .queue_directory
            .as_deref()
            .and_then(|queue| path.strip_prefix(queue).ok())
        {
            Some(inside) => format!("unix:{}", inside.display()),
            None => format!("unix:{}", path.display()),
        },
    };
    let wanted_table = format!("socketmap:{socket}:{wanted_map}");
    let with_ours = match postfix.tls_policy_maps.as_deref().map(str::trim) {
        Some(existing) if !existing.is_empty() => format!("{wanted_table}, {existing}"),
        _ => wanted_table.clone(),
    };
    let answering = matches!(&facts.probe, Some(Ok(answer)) if answer == "NOTFOUND " || answer.starts_with("OK "));
    let mut findings = Vec::new();
    let Some((table, map)) = table_for(postfix, &listen) else {
        findings.push(if answering {
            Finding::warning(
                AREA,
                format!("mailtls policyd answers at {listen}, but smtp_tls_policy_maps does not ask it: MTA-STS domains are neither enforced nor reported as such"),
                postfix.postconf_e(&format!("smtp_tls_policy_maps = {with_ours}")),
            )
        } else {
            Finding::ok(
                AREA,
                "mailtls policyd is not in use (smtp_tls_policy_maps does not name it, and it does not answer)",
            )
        });
        return findings;
    };
    match map {
        MAP if !tlsrpt => findings.push(Finding::error(
            AREA,
            format!("{table}: Postfix {version} refuses the TLSRPT attributes of map {MAP} (\"invalid attribute name\"), so every policy lookup fails and deliveries are deferred"),
            postfix.postconf_e(&format!("smtp_tls_policy_maps = {}", postfix.tls_policy_maps.as_deref().unwrap_or_default().replace(table, &wanted_table))),
        )),
        MAP_NOTLSRPT if tlsrpt => findings.push(Finding::warning(
            AREA,
            format!("{table}: map {MAP_NOTLSRPT} leaves out the TLSRPT attributes Postfix {version} reads, so MTA-STS domains are reported as no-policy-found"),
            postfix.postconf_e(&format!("smtp_tls_policy_maps = {}", postfix.tls_policy_maps.as_deref().unwrap_or_default().replace(table, &wanted_table))),
        )),
        MAP | MAP_NOTLSRPT => findings.push(Finding::ok(
            AREA,
            format!("smtp_tls_policy_maps asks mailtls policyd ({table})"),
        )),
        other => findings.push(Finding::error(
            AREA,
            format!("{table}: mailtls policyd has no map {other:?} (only {MAP} and {MAP_NOTLSRPT}); every lookup fails"),
            postfix.postconf_e(&format!("smtp_tls_policy_maps = {}", postfix.tls_policy_maps.as_deref().unwrap_or_default().replace(table, &wanted_table))),
        )),
    }
    if let Listen::Unix(path) = &listen {
        let inside = postfix
            .queue_directory
            .as_deref()
            .is_some_and(|queue| path.starts_with(queue));
        if postfix.smtp_chrooted() && !inside {
            findings.push(Finding::error(
                AREA,
                format!("listen = {listen}: Postfix's smtp runs chrooted to the queue directory and cannot reach a socket outside it"),
                format!(
                    "listen = unix:{}/private/policyd in [policyd] of {} (main.cf: socketmap:unix:private/policyd:{wanted_map})",
                    postfix.queue_directory.as_deref().unwrap_or("/var/spool/postfix"),
                    facts.config_file.display()
                ),
            ));
        }
    }
    match &facts.probe {
        Some(Ok(answer)) if answering => findings.push(Finding::ok(
            AREA,
            format!("mailtls policyd answers at {listen} ({answer:?} for a name without a policy)"),
        )),
        Some(Ok(answer)) => findings.push(Finding::error(
            AREA,
            format!("mailtls policyd at {listen} answered {answer:?} for a name without a policy: Postfix defers deliveries whose lookup fails (is its DNS reachable?)"),
            format!("see its log; check nameservers in [policyd] of {}", facts.config_file.display()),
        )),
        Some(Err(why)) => findings.push(Finding::error(
            AREA,
            format!("smtp_tls_policy_maps asks mailtls policyd at {listen}, which does not answer ({why}): Postfix defers every delivery whose policy lookup fails"),
            "systemctl enable --now mailtls-policyd",
        )),
        // Gathered with the options: a listen that does not parse stopped
        // the judgement above.
        None => {}
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::super::Level;
    use super::*;
    use mailtls_common::config::ProgramOptions;

    fn facts(listen: &str, probe: Result<&str, &str>) -> PolicydFacts {
        let mut options = PolicydOptions::defaults();
        options.listen = listen.into();
        PolicydFacts {
            config_file: "/etc/mailtls/policyd.cfg".into(),
            options: Some(Ok(options)),
            probe: Some(probe.map(str::to_string).map_err(str::to_string)),
        }
    }

    fn postfix(version: &str, maps: &str) -> PostfixFacts {
        PostfixFacts {
            mail_version: Some(version.into()),
            queue_directory: Some("/var/spool/postfix".into()),
            tls_policy_maps: Some(maps.into()),
            smtp_service: Some("smtp unix - - y - - smtp".into()),
            ..PostfixFacts::default()
        }
    }

    fn levels(findings: &[Finding]) -> Vec<(Level, &str)> {
        findings
            .iter()
            .map(|f| (f.level, f.message.as_str()))
            .collect()
    }

    #[test]
    fn the_map_must_fit_the_postfix_version() {
        let up = facts("inet:127.0.0.1:8461", Ok("NOTFOUND "));
        let ok = judge(
            &up,
            &postfix("3.10.13", "socketmap:inet:127.0.0.1:8461:postfix"),
        );
        assert!(ok.iter().all(|f| f.level == Level::Ok), "{:?}", levels(&ok));
        let old = judge(
            &up,
            &postfix("3.7.11", "socketmap:inet:127.0.0.1:8461:postfix"),
        );
        assert_eq!(old[0].level, Level::Error, "{:?}", levels(&old));
        assert!(old[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("socketmap:inet:127.0.0.1:8461:postfix-notlsrpt"));
        let no_reports = judge(
            &up,
            &postfix(
                "3.10.13",
                "hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix-notlsrpt",
            ),
        );
        assert_eq!(
            no_reports[0].level,
            Level::Warning,
            "{:?}",
            levels(&no_reports)
        );
        assert_eq!(
            no_reports[0].fix.as_deref(),
            Some("postconf -e 'smtp_tls_policy_maps = hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix'")
        );
        let unknown = judge(
            &up,
            &postfix("3.10.13", "socketmap:inet:127.0.0.1:8461:sts"),
        );
        assert_eq!(unknown[0].level, Level::Error, "{:?}", levels(&unknown));
    }

    #[test]
    fn named_but_silent_is_an_error_unnamed_and_silent_is_not_in_use() {
        let down = facts(
            "inet:127.0.0.1:8461",
            Err("Connection refused (os error 111)"),
        );
        let named = judge(
            &down,
            &postfix("3.10.13", "socketmap:inet:127.0.0.1:8461:postfix"),
        );
        assert!(
            named.iter().any(|f| f.level == Level::Error
                && f.message
                    .contains("which does not answer (Connection refused")),
            "{:?}",
            levels(&named)
        );
        let unused = judge(&down, &postfix("3.10.13", ""));
        assert_eq!(levels(&unused), [(Level::Ok, "mailtls policyd is not in use (smtp_tls_policy_maps does not name it, and it does not answer)")]);
        let up = facts("inet:127.0.0.1:8461", Ok("NOTFOUND "));
        let forgotten = judge(&up, &postfix("3.10.13", "hash:/etc/postfix/tls_policy"));
        assert_eq!(forgotten[0].level, Level::Warning);
        assert_eq!(
            forgotten[0].fix.as_deref(),
            Some("postconf -e 'smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix, hash:/etc/postfix/tls_policy'")
        );
        let temp = judge(
            &facts("inet:127.0.0.1:8461", Ok("TEMP dns timeout")),
            &postfix("3.10.13", "socketmap:inet:127.0.0.1:8461:postfix"),
        );
        assert!(temp
            .iter()
            .any(|f| f.level == Level::Error && f.message.contains("TEMP dns timeout")));
    }

    #[test]
    fn a_chrooted_smtp_reaches_only_sockets_in_the_queue_directory() {
        let outside = facts("unix:/run/policyd.sock", Ok("NOTFOUND "));
        let findings = judge(
            &outside,
            &postfix("3.10.13", "socketmap:unix:/run/policyd.sock:postfix"),
        );
        assert!(
            findings
                .iter()
                .any(|f| f.level == Level::Error && f.message.contains("chrooted")),
            "{:?}",
            levels(&findings)
        );
        let inside = facts("unix:/var/spool/postfix/private/policyd", Ok("NOTFOUND "));
        let findings = judge(
            &inside,
            &postfix("3.10.13", "socketmap:unix:private/policyd:postfix"),
        );
        assert!(
            findings.iter().all(|f| f.level == Level::Ok),
            "{:?}",
            levels(&findings)
        );
    }
}
