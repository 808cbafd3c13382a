//! `mailtls check`: reads the local set-up (a Postfix instance through
//! `postconf`, the collector's, report daemon's and PostTLS's configuration
//! files, the collector's socket and databases) and says in plain words
//! what is right, what is wrong and the line that fixes it.
//!
//! Facts are gathered first (all the I/O), then judged by pure functions
//! into [`Finding`]s. Exit status: 0 all well, 1 warnings, 2 errors.
//!
//! One module per area, each with its facts and its judgement: [`postfix`],
//! [`collector`] (and the fleet), [`reportd`], [`posttls`], [`tls_required`]
//! and [`policyd`]. This one holds the command, the findings and what the
//! areas share.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use mailtls_common::config::{self, ProgramOptions, ProgramSpec};
use serde::Serialize;

use super::collectd;

mod collector;
mod policyd;
mod postfix;
mod posttls;
mod reportd;
mod tls_required;

pub use collector::{judge_collector, judge_fleet, CollectorFacts};
pub use postfix::{judge_postfix, judge_postfix_reachable, tlsrpt_socket_path, PostfixFacts};
pub use posttls::{judge_posttls, unit_user, PosttlsFacts, MASTER_CF_POSTTLS};
pub use reportd::{judge_reportd, ReportdFacts};
pub use tls_required::{PolicyTable, TlsRequiredFacts, HEADER_CHECKS_FILE, HEADER_CHECKS_RULE};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One thing `check` found, and how to fix it when it is not ok.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// `postfix`, `collector`, `posttls`.
    pub area: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(area: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            area,
            message: message.into(),
            fix: None,
        }
    }

    fn warning(area: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warning,
            area,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    fn error(area: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Error,
            area,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

pub fn command() -> Command {
    Command::new("check")
        .about("Check the local set-up: Postfix, the TLSRPT collector, PostTLS")
        .long_about(
            "Read the local set-up and say what is right, what is wrong and the line that \
             fixes it: the Postfix instance (its version, TLSRPT parameters and socket, the \
             PostTLS re-injection listeners and TLS level), the TLSRPT collector (its socket, \
             owner and mode, the kernel's datagram queue, its databases and the day's \
             rollover) and PostTLS (base_url, the link key's permissions).",
        )
        .after_long_help(
            "Exit status: 0 when all is well, 1 when there are warnings, 2 when there are errors.",
        )
        .arg(
            Arg::new("postfix_config_dir")
                .long("postfix_config_dir")
                .value_name("DIR")
                .help("Configuration directory of the Postfix instance (postconf -c); default: the default instance"),
        )
        .arg(
            Arg::new("collectd_config")
                .long("collectd_config")
                .value_name("FILE")
                .default_value(collectd::SPEC.default_config_file)
                .help("The collector's configuration file"),
        )
        .arg(
            Arg::new("reportd_config")
                .long("reportd_config")
                .value_name("FILE")
                .default_value(super::reportd::SPEC.default_config_file)
                .help("The report daemon's configuration file (not checked when it does not exist)"),
        )
        .arg(
            Arg::new("posttls_config")
                .long("posttls_config")
                .value_name("FILE")
                .default_value(super::posttls::SPEC.default_config_file)
                .help("PostTLS's configuration file (not checked when it does not exist)"),
        )
        .arg(
            Arg::new("policyd_config")
                .long("policyd_config")
                .value_name("FILE")
                .default_value(super::policyd::SPEC.default_config_file)
                .help("mailtls policyd's configuration file (not checked when it does not exist)"),
        )
        .arg(
            Arg::new("posttls_web_unit")
                .long("posttls_web_unit")
                .value_name("FILE")
                .help("The systemd unit of the PostTLS web pages, whose User= must not be root and must be able to use the database and key; default: posttls-web.service in /etc/systemd/system, else /lib/systemd/system"),
        )
        .arg(
            Arg::new("part")
                .value_name("PART")
                .num_args(0..)
                .value_parser(clap::builder::EnumValueParser::<Part>::new())
                .help("Check only these parts: tlsrpt (Postfix's TLSRPT side, the collector, the report daemon), posttls, policyd (smtp_tls_policy_maps and the policy server); default: all"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print the findings as JSON, for monitoring"),
        )
}

/// The halves of the suite `check` looks at; a site may use only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Tlsrpt,
    Posttls,
    Policyd,
}

impl clap::ValueEnum for Part {
    fn value_variants<'a>() -> &'a [Self] {
        &[Part::Tlsrpt, Part::Posttls, Part::Policyd]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Part::Tlsrpt => "tlsrpt",
            Part::Posttls => "posttls",
            Part::Policyd => "policyd",
        }))
    }
}

pub fn main(matches: &ArgMatches) -> i32 {
    let parts: Vec<Part> = match matches.get_many::<Part>("part") {
        Some(parts) => parts.copied().collect(),
        None => vec![Part::Tlsrpt, Part::Posttls, Part::Policyd],
    };
    let postfix = PostfixFacts::gather(
        matches
            .get_one::<String>("postfix_config_dir")
            .map(PathBuf::from),
    );
    let collector = CollectorFacts::gather(Path::new(
        matches
            .get_one::<String>("collectd_config")
            .expect("default"),
    ));
    let web_unit = match matches.get_one::<String>("posttls_web_unit") {
        Some(file) => Some(PathBuf::from(file)),
        None => [
            "/etc/systemd/system/posttls-web.service",
            "/lib/systemd/system/posttls-web.service",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists()),
    };
    let posttls = PosttlsFacts::gather(
        Path::new(
            matches
                .get_one::<String>("posttls_config")
                .expect("default"),
        ),
        web_unit.as_deref(),
    );
    let reporter = ReportdFacts::gather(
        Path::new(
            matches
                .get_one::<String>("reportd_config")
                .expect("default"),
        ),
        &postfix,
    );
    let mut findings = judge_postfix_reachable(&postfix);
    if postfix.unavailable.is_none() && parts.contains(&Part::Tlsrpt) {
        findings.extend(judge_postfix(&postfix, collector.options.as_ref()));
    }
    if parts.contains(&Part::Tlsrpt) {
        findings.extend(judge_collector(&collector, &postfix));
        findings.extend(judge_reportd(&reporter, &postfix));
    }
    if parts.contains(&Part::Posttls) {
        findings.extend(judge_posttls(&posttls, &postfix));
        if let Some(tls_required) = &postfix.tls_required {
            findings.extend(tls_required::judge(tls_required, &postfix));
        }
        findings.extend(posttls::judge_requiretls(&postfix));
    }
    if postfix.unavailable.is_none() && parts.contains(&Part::Policyd) {
        let facts = policyd::PolicydFacts::gather(Path::new(
            matches
                .get_one::<String>("policyd_config")
                .expect("default"),
        ));
        findings.extend(policyd::judge(&facts, &postfix));
    }
    if matches.get_flag("json") {
        let worst = worst(&findings);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "status": worst,
                "findings": findings,
            }))
            .expect("findings are plain data")
        );
    } else {
        for finding in &findings {
            let level = match finding.level {
                Level::Ok => "ok",
                Level::Warning => "WARNING",
                Level::Error => "ERROR",
            };
            println!("{level:<8} {:<10} {}", finding.area, finding.message);
            if let Some(fix) = &finding.fix {
                let mut lines = fix.lines();
                println!("{:<19} fix: {}", "", lines.next().unwrap_or_default());
                for line in lines {
                    println!("{:<24}{line}", "");
                }
            }
        }
    }
    match worst(&findings) {
        Level::Ok => 0,
        Level::Warning => 1,
        Level::Error => 2,
    }
}

fn worst(findings: &[Finding]) -> Level {
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

/// Type, owner and mode of a file (the socket, the link key, a database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub is_socket: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl FileFacts {
    fn of(path: impl AsRef<Path>) -> Option<FileFacts> {
        std::fs::metadata(path).ok().map(|meta| FileFacts {
            is_socket: meta.file_type().is_socket(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.permissions().mode() & 0o7777,
        })
    }
}

/// The options of `program`'s configuration file, as the program reads
/// them (without command line or environment).
fn options_of<O: ProgramOptions>(
    spec: &ProgramSpec,
    command: Command,
    file: &Path,
) -> Result<O, String> {
    let matches = config::add_options::<O>(command, spec)
        .try_get_matches_from([
            spec.name.to_string(),
            format!("--config_file={}", file.display()),
        ])
        .map_err(|e| e.to_string())?;
    config::resolve::<O>(spec, &matches, &[])
        .map(|(options, _)| options)
        .map_err(|e| e.to_string())
}

/// The uid and the gids of a user, from the system's user database.
fn user_ids(name: &str) -> Option<(u32, Vec<u32>)> {
    let user = nix::unistd::User::from_name(name).ok()??;
    let c_name = std::ffi::CString::new(name).ok()?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .ok()?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Some((user.uid.as_raw(), groups))
}

/// Whether a user with `uid` in `gids` may write to a file or socket.
pub fn may_write(file: &FileFacts, uid: u32, gids: &[u32]) -> bool {
    permitted(file, uid, gids, 0o2)
}

/// Whether a user with `uid` in `gids` may read a file.
pub fn may_read(file: &FileFacts, uid: u32, gids: &[u32]) -> bool {
    permitted(file, uid, gids, 0o4)
}

/// The classic permission check for one access bit (`0o4` read, `0o2`
/// write): owner, else group, else others; root may do anything.
fn permitted(file: &FileFacts, uid: u32, gids: &[u32], bit: u32) -> bool {
    if uid == 0 {
        return true;
    }
    if file.uid == uid {
        return file.mode & (bit << 6) != 0;
    }
    if gids.contains(&file.gid) {
        return file.mode & (bit << 3) != 0;
    }
    file.mode & bit != 0
}

/// A program's options from its configuration file, when there is a file
/// and it can be used.
fn loaded<O>(options: &Option<Result<O, String>>) -> Option<&O> {
    options.as_ref()?.as_ref().ok()
}

/// What a program's configuration that is not [`loaded`] gives: nothing
/// when there is no file (the program is not used here), an error when it
/// cannot be used.
fn config_failure<O>(
    options: &Option<Result<O, String>>,
    area: &'static str,
    file: &Path,
) -> Vec<Finding> {
    match options {
        Some(Err(e)) => vec![Finding::error(
            area,
            format!("its configuration {} cannot be used: {e}", file.display()),
            format!("correct {}", file.display()),
        )],
        _ => Vec::new(),
    }
}

/// An error for each required option (name, value, example) left empty.
fn unset(
    area: &'static str,
    consequence: &str,
    section: &str,
    required: &[(&str, &String, &str)],
) -> Vec<Finding> {
    required
        .iter()
        .filter(|(_, value, _)| value.is_empty())
        .map(|(name, _, example)| {
            Finding::error(
                area,
                format!("{name} is not set: {consequence}"),
                format!("{name} = {example}   (in {section})"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn postfix(version: &str) -> PostfixFacts {
        PostfixFacts {
            mail_version: Some(version.into()),
            queue_directory: Some("/var/spool/postfix".into()),
            mail_owner: Some("postfix".into()),
            ..PostfixFacts::default()
        }
    }

    #[test]
    fn who_may_write_to_the_socket() {
        let socket = FileFacts {
            is_socket: true,
            uid: 998,
            gid: 120,
            mode: 0o220,
        };
        assert!(may_write(&socket, 110, &[120]));
        assert!(!may_write(&socket, 110, &[121]));
        assert!(may_write(&socket, 998, &[]));
        let world = FileFacts {
            mode: 0o222,
            ..socket.clone()
        };
        assert!(may_write(&world, 5, &[5]));
    }
}
