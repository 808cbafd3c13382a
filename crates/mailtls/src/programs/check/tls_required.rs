//! RFC 8689's `TLS-Required: No` on Postfix 3.10 and later: a header any
//! sender can write, after which smtp(8) skips `smtp_tls_policy_maps` and
//! caps the TLS level at `may` (`tls_required_enable`, on by default).
//! PostTLS's promise (mandatory TLS, the sender deciding through us) holds
//! only when every path user mail enters by strips the header with
//! `header_checks`. PostTLS's own listeners skip header checks on purpose:
//! on 3.10 a released copy carries the header.

use std::path::{Path, PathBuf};

use super::{Finding, PostfixFacts};

/// The master.cf services that receive mail into the queue.
const ENTRY_COMMANDS: [&str; 3] = ["smtpd", "pickup", "qmqpd"];

/// PostTLS's re-injection listeners: the header they keep is ours.
const OWN_LISTENERS: [&str; 2] = ["posttls-release", "posttls-reinject"];

/// The spellings a sender could use (header names are case-insensitive,
/// the space after the colon optional).
const PROBES: [&str; 4] = [
    "TLS-Required: No",
    "tls-required: no",
    "TLS-Required:No",
    "TLS-REQUIRED: NO",
];

/// The file the fix writes, beside main.cf.
pub const HEADER_CHECKS_FILE: &str = "tls_required_header_checks";

/// Its one rule.
pub const HEADER_CHECKS_RULE: &str = "/^TLS-Required:/ IGNORE";

/// What one entry service does with a sender's `TLS-Required: No`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFate {
    /// Its `header_checks` remove it (IGNORE, REJECT, DISCARD, or REPLACE
    /// with another header), for every spelling.
    Stripped,
    /// Its `header_checks` (these tables, maybe none) let a spelling
    /// through.
    Kept {
        header_checks: String,
        probe: String,
    },
    /// It skips header checks (`receive_override_options =
    /// no_header_body_checks`).
    Unchecked,
}

/// An entry service (`name/type`) and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryService {
    pub service: String,
    pub fate: HeaderFate,
    /// `header_checks` set by `-o` on this service (so the fix goes there).
    pub overridden: bool,
}

/// What the instance does with the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRequiredFacts {
    /// `tls_required_enable`.
    pub enabled: bool,
    /// `header_checks` of main.cf.
    pub header_checks: String,
    pub services: Vec<EntryService>,
}

/// A master.cf service as `postconf -M` prints it.
struct Service {
    /// `name/type`.
    service: String,
    command: String,
    /// Its `-o name=value` settings, in order.
    settings: Vec<(String, String)>,
}

impl Service {
    fn parse(line: &str) -> Option<Service> {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.len() >= 8).then(|| Service {
            service: format!("{}/{}", words[0], words[1]),
            command: words[7].to_string(),
            settings: words
                .windows(2)
                .filter(|pair| pair[0] == "-o")
                .filter_map(|pair| pair[1].split_once('='))
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        })
    }

    /// The last `-o NAME=` of the service.
    fn setting(&self, name: &str) -> Option<String> {
        self.settings
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

impl TlsRequiredFacts {
    /// Asks the instance: `postconf` answers with `-h`/`-M` output (values
    /// expanded), `postmap_query(key, table)` with the table's answer.
    pub fn gather(
        postconf: impl Fn(&[&str]) -> Option<String>,
        postmap_query: impl Fn(&str, &str) -> Option<String>,
    ) -> Option<TlsRequiredFacts> {
        let enabled = postconf(&["-hx", "tls_required_enable"])? == "yes";
        let main = |name: &str| postconf(&["-hx", name]).unwrap_or_default();
        let header_checks = main("header_checks");
        let receive_override = main("receive_override_options");
        let lines = postconf(&["-Mx"]).unwrap_or_default();
        let services: Vec<Service> = lines.lines().filter_map(Service::parse).collect();
        let mut entries = Vec::new();
        for entry in &services {
            let service = &entry.service;
            let name = service.split('/').next().unwrap_or_default();
            if !ENTRY_COMMANDS.contains(&entry.command.as_str()) || OWN_LISTENERS.contains(&name) {
                continue;
            }
            let overrides = entry
                .setting("receive_override_options")
                .unwrap_or_else(|| receive_override.clone());
            if overrides
                .split(|c: char| c == ',' || c.is_whitespace())
                .any(|o| o == "no_header_body_checks")
            {
                entries.push(EntryService {
                    service: service.clone(),
                    fate: HeaderFate::Unchecked,
                    overridden: false,
                });
                continue;
            }
            // The cleanup service this one hands mail to may have its own.
            let cleanup = entry
                .setting("cleanup_service_name")
                .and_then(|cleanup| {
                    services
                        .iter()
                        .find(|s| s.service == format!("{cleanup}/unix"))
                })
                .and_then(|cleanup| cleanup.setting("header_checks"));
            let own = entry.setting("header_checks");
            let overridden = own.is_some();
            let tables = own.or(cleanup).unwrap_or_else(|| header_checks.clone());
            entries.push(EntryService {
                service: service.clone(),
                fate: fate(&tables, &postmap_query),
                overridden,
            });
        }
        Some(TlsRequiredFacts {
            enabled,
            header_checks,
            services: entries,
        })
    }
}

/// What `header_checks = tables` does with each spelling: the first table
/// that answers decides, as in cleanup(8).
fn fate(tables: &str, postmap_query: &impl Fn(&str, &str) -> Option<String>) -> HeaderFate {
    let list: Vec<&str> = tables
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    for probe in PROBES {
        let action = list.iter().find_map(|table| postmap_query(probe, table));
        if !action.as_deref().is_some_and(strips) {
            return HeaderFate::Kept {
                header_checks: tables.to_string(),
                probe: probe.to_string(),
            };
        }
    }
    HeaderFate::Stripped
}

/// Whether a header_checks action removes the header or the message
/// (header_checks(5)).
fn strips(action: &str) -> bool {
    let mut words = action.trim().splitn(2, char::is_whitespace);
    let verb = words.next().unwrap_or_default().to_ascii_uppercase();
    match verb.as_str() {
        "IGNORE" | "REJECT" | "DISCARD" => true,
        "REPLACE" => !words
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .starts_with("tls-required"),
        _ => false,
    }
}

/// The findings: quiet (ok) when the feature is off or every path strips
/// the header; an error naming the paths that keep it, with the lines that
/// fix it.
pub fn judge(facts: &TlsRequiredFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    const AREA: &str = "posttls";
    let version = postfix.mail_version.as_deref().unwrap_or_default();
    if !facts.enabled {
        return vec![Finding::ok(
            AREA,
            format!("tls_required_enable = no: Postfix {version} ignores a sender's TLS-Required header"),
        )];
    }
    let mut findings = Vec::new();
    let kept: Vec<&EntryService> = facts
        .services
        .iter()
        .filter(|s| matches!(s.fate, HeaderFate::Kept { .. }))
        .collect();
    if kept.is_empty() {
        findings.push(Finding::ok(
            AREA,
            "every path mail enters by strips a sender's TLS-Required header (header_checks)",
        ));
    } else {
        let described: Vec<String> = kept
            .iter()
            .map(|s| match &s.fate {
                HeaderFate::Kept {
                    header_checks,
                    probe,
                } if header_checks.is_empty() => {
                    format!("{} (no header_checks; \"{probe}\" passes)", s.service)
                }
                HeaderFate::Kept {
                    header_checks,
                    probe,
                } => format!(
                    "{} (header_checks = {header_checks} lets \"{probe}\" pass)",
                    s.service
                ),
                _ => unreachable!("filtered"),
            })
            .collect();
        findings.push(Finding::error(
            AREA,
            format!(
                "Postfix {version} sends a message with the header TLS-Required: No (RFC 8689) without TLS, past smtp_tls_security_level, smtp_tls_policy_maps, mandatory_domains and PostTLS, and mail entering by {} keeps a sender's header: any sender can skip mandatory TLS",
                described.join(", ")
            ),
            fix(facts, &kept, postfix.config_dir.as_deref()),
        ));
    }
    for service in facts
        .services
        .iter()
        .filter(|s| s.fate == HeaderFate::Unchecked)
    {
        findings.push(Finding::warning(
            AREA,
            format!(
                "{} skips header_checks (receive_override_options = no_header_body_checks): mail entering there keeps a TLS-Required: No header; right only for a content filter's return path, whose mail was checked when it first arrived",
                service.service
            ),
            format!(
                "if senders reach {} directly, remove no_header_body_checks from its receive_override_options",
                service.service
            ),
        ));
    }
    findings
}

/// The commands that strip the header on every path that keeps it: the
/// rule in a file beside main.cf, first in main.cf's `header_checks` and in
/// each service's own `-o header_checks`, then a reload.
fn fix(facts: &TlsRequiredFacts, kept: &[&EntryService], config_dir: Option<&Path>) -> String {
    let dir = config_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/etc/postfix"));
    let file = dir.join(HEADER_CHECKS_FILE);
    let table = format!("regexp:{}", file.display());
    let with_rule = |existing: &str| {
        if existing.trim().is_empty() {
            table.clone()
        } else {
            format!("{table}, {}", existing.trim())
        }
    };
    let c = config_dir
        .map(|d| format!(" -c {}", d.display()))
        .unwrap_or_default();
    let mut lines = vec![format!(
        "printf '%s\\n' '{HEADER_CHECKS_RULE}' > {}",
        file.display()
    )];
    if kept.iter().any(|s| !s.overridden) {
        lines.push(format!(
            "postconf{c} -e 'header_checks = {}'",
            with_rule(&facts.header_checks)
        ));
    }
    for service in kept.iter().filter(|s| s.overridden) {
        if let HeaderFate::Kept { header_checks, .. } = &service.fate {
            lines.push(format!(
                "postconf{c} -P '{}/header_checks = {}'",
                service.service,
                with_rule(header_checks)
            ));
        }
    }
    lines.push(format!("postfix{c} reload"));
    lines.join("\n")
}

/// The TLS levels of an `smtp_tls_policy_maps` entry that require TLS
/// (`dane` too: with TLSA records it does).
const ENFORCING: [&str; 6] = [
    "encrypt",
    "dane",
    "dane-only",
    "fingerprint",
    "verify",
    "secure",
];

/// One table of `smtp_tls_policy_maps`: its entries (`postmap -s`), or
/// `None` where it cannot be listed (socketmap, ldap, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    pub table: String,
    pub entries: Option<Vec<(String, String)>>,
}

impl PolicyTable {
    /// Each table of `maps`, listed with `postmap_list(table)`.
    pub fn gather(maps: &str, postmap_list: impl Fn(&str) -> Option<String>) -> Vec<PolicyTable> {
        maps.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|table| PolicyTable {
                table: table.to_string(),
                entries: postmap_list(table).map(|listing| {
                    listing
                        .lines()
                        .filter_map(|line| line.split_once(char::is_whitespace))
                        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
                        .collect()
                }),
            })
            .collect()
    }
}

/// With the `TLS-Required` release, Postfix skips `smtp_tls_policy_maps`
/// for a released copy: a domain whose entry requires TLS is kept from
/// releases only by `mandatory_domains`. A warning names the listed
/// domains that are not; tables that cannot be listed are named in an ok.
pub fn judge_policy_bypass(
    tables: &[PolicyTable],
    mandatory: &posttls_policy::DomainSet,
    config_file: &Path,
) -> Vec<Finding> {
    const AREA: &str = "posttls";
    let mut findings = Vec::new();
    let mut unprotected: Vec<String> = Vec::new();
    for table in tables {
        let Some(entries) = &table.entries else {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "{} cannot be listed: a released copy skips it (TLS-Required: No), so only mandatory_domains keeps a domain it requires TLS for from releases",
                    table.table
                ),
            ));
            continue;
        };
        for (key, value) in entries {
            let level = value.split_whitespace().next().unwrap_or_default();
            // Next-hop keys ([host]:port) and addresses are not domains.
            if !ENFORCING.contains(&level)
                || key.starts_with('[')
                || key.parse::<std::net::IpAddr>().is_ok()
            {
                continue;
            }
            // A `.parent` entry is covered when a name below it is.
            let probe = match key.strip_prefix('.') {
                Some(parent) => format!("any.{parent}"),
                None => key.clone(),
            };
            if !mandatory.contains_domain(&probe) && !unprotected.contains(key) {
                unprotected.push(key.clone());
            }
        }
    }
    if !unprotected.is_empty() {
        let mut wanted = mandatory.entries();
        wanted.extend(unprotected.iter().cloned());
        findings.push(Finding::warning(
            AREA,
            format!(
                "a released copy skips smtp_tls_policy_maps (TLS-Required: No), and {} require TLS there but are not in mandatory_domains: a sender's release sends to them without TLS",
                unprotected.join(", ")
            ),
            format!(
                "mandatory_domains = {} in [posttls] of {} (or add them on the admin pages)",
                wanted.join(", "),
                config_file.display()
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table that answers `action` for a header starting with
    /// `TLS-Required:` in any case (as a regexp table would).
    fn table(action: &'static str) -> impl Fn(&str, &str) -> Option<String> {
        move |key: &str, table: &str| {
            (table == "regexp:/etc/postfix/strip"
                && key.to_ascii_lowercase().starts_with("tls-required:"))
            .then(|| action.to_string())
        }
    }

    fn facts(
        main: &'static str,
        master: &'static str,
        action: &'static str,
    ) -> Option<TlsRequiredFacts> {
        TlsRequiredFacts::gather(
            |args| match args {
                ["-hx", "tls_required_enable"] => Some("yes".into()),
                ["-hx", "header_checks"] => Some(main.into()),
                ["-hx", _] => Some(String::new()),
                ["-Mx"] => Some(master.into()),
                _ => None,
            },
            table(action),
        )
    }

    const MASTER: &str = "smtp inet n - y - - smtpd\n\
        pickup unix n - y 60 1 pickup\n\
        submission inet n - y - - smtpd -o header_checks=\n\
        amavis-back inet n - n - - smtpd -o receive_override_options=no_header_body_checks\n\
        posttls-reinject unix - - n - - smtpd -o receive_override_options=no_header_body_checks\n\
        smtp unix - - y - - smtp\n";

    #[test]
    fn each_entry_path_is_judged_by_its_own_header_checks() {
        let facts = facts("regexp:/etc/postfix/strip", MASTER, "IGNORE").unwrap();
        let fates: Vec<(&str, &HeaderFate)> = facts
            .services
            .iter()
            .map(|s| (s.service.as_str(), &s.fate))
            .collect();
        assert_eq!(
            fates,
            [
                ("smtp/inet", &HeaderFate::Stripped),
                ("pickup/unix", &HeaderFate::Stripped),
                (
                    "submission/inet",
                    &HeaderFate::Kept {
                        header_checks: String::new(),
                        probe: "TLS-Required: No".into()
                    }
                ),
                ("amavis-back/inet", &HeaderFate::Unchecked),
            ]
        );
        let postfix = PostfixFacts {
            mail_version: Some("3.10.5".into()),
            ..PostfixFacts::default()
        };
        let findings = judge(&facts, &postfix);
        let error = findings
            .iter()
            .find(|f| f.level == super::super::Level::Error)
            .unwrap();
        assert!(error.message.contains("submission/inet (no header_checks"));
        assert!(!error.message.contains("smtp/inet"), "{}", error.message);
        assert_eq!(
            error.fix.as_deref().unwrap(),
            "printf '%s\\n' '/^TLS-Required:/ IGNORE' > /etc/postfix/tls_required_header_checks\n\
             postconf -P 'submission/inet/header_checks = regexp:/etc/postfix/tls_required_header_checks'\n\
             postfix reload"
        );
        assert!(findings
            .iter()
            .any(|f| f.level == super::super::Level::Warning
                && f.message
                    .starts_with("amavis-back/inet skips header_checks")));
    }

    #[test]
    fn only_actions_that_remove_the_header_count() {
        for (action, stripped) in [
            ("IGNORE", true),
            ("ignore", true),
            ("REJECT no downgrades", true),
            ("DISCARD", true),
            ("REPLACE X-Was-TLS-Required: No", true),
            ("REPLACE TLS-Required: No", false),
            ("WARN", false),
            ("PREPEND X-Seen: 1", false),
            ("DUNNO", false),
            ("HOLD", false),
        ] {
            let facts = facts(
                "regexp:/etc/postfix/strip",
                "pickup unix n - y 60 1 pickup\n",
                action,
            )
            .unwrap();
            assert_eq!(
                facts.services[0].fate == HeaderFate::Stripped,
                stripped,
                "{action}"
            );
        }
    }

    #[test]
    fn no_main_cf_header_checks_means_the_fix_sets_one_and_keeps_the_others() {
        let facts = facts("pcre:/etc/postfix/other", MASTER, "IGNORE").unwrap();
        let postfix = PostfixFacts {
            mail_version: Some("3.10.5".into()),
            ..PostfixFacts::default()
        };
        let findings = judge(&facts, &postfix);
        let fix = findings
            .iter()
            .find_map(|f| (f.level == super::super::Level::Error).then(|| f.fix.clone().unwrap()))
            .unwrap();
        assert!(fix.contains(
            "postconf -e 'header_checks = regexp:/etc/postfix/tls_required_header_checks, pcre:/etc/postfix/other'"
        ), "{fix}");
    }

    #[test]
    fn policy_entries_that_require_tls_must_be_mandatory_domains() {
        let tables = PolicyTable::gather(
            "texthash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix",
            |table| {
                table.starts_with("texthash:").then(|| {
                "bank.example\tencrypt\n.gov.example\tdane-only\n[mx.relay.example]:25\tsecure\n\
                 plain.example\tmay\nsts.example\tsecure match=mx.sts.example policy_type=sts\n"
                    .to_string()
            })
            },
        );
        assert_eq!(tables[1].entries, None);
        let mandatory = posttls_policy::DomainSet::parse_list("bank.example").unwrap();
        let findings =
            judge_policy_bypass(&tables, &mandatory, Path::new("/etc/mailtls/posttls.cfg"));
        let warning = findings
            .iter()
            .find(|f| f.level == super::super::Level::Warning)
            .unwrap();
        assert!(
            warning
                .message
                .contains(", and .gov.example, sts.example require TLS there"),
            "{}",
            warning.message
        );
        assert_eq!(
            warning.fix.as_deref(),
            Some("mandatory_domains = bank.example, .gov.example, sts.example in [posttls] of /etc/mailtls/posttls.cfg (or add them on the admin pages)")
        );
        assert!(findings.iter().any(|f| f
            .message
            .starts_with("socketmap:inet:127.0.0.1:8461:postfix cannot be listed")));
        let all = posttls_policy::DomainSet::parse_list("bank.example, .gov.example, sts.example")
            .unwrap();
        assert!(judge_policy_bypass(&tables, &all, Path::new("x"))
            .iter()
            .all(|f| f.level == super::super::Level::Ok));
    }

    #[test]
    fn before_3_10_or_switched_off_it_is_quiet() {
        // Postfix before 3.10 has no tls_required_enable.
        let unknown = TlsRequiredFacts::gather(|_| None, table("IGNORE"));
        assert_eq!(unknown, None);
        let mut off = facts("", MASTER, "IGNORE").unwrap();
        off.enabled = false;
        let findings = judge(&off, &PostfixFacts::default());
        assert!(findings.iter().all(|f| f.level == super::super::Level::Ok));
    }
}
