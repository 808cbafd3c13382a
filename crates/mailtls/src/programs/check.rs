//! `mailtls check`: reads the local set-up (a Postfix instance through
//! `postconf`, the collector's, report daemon's and PostTLS's configuration
//! files, the collector's socket and databases) and says in plain words
//! what is right, what is wrong and the line that fixes it.
//!
//! Facts are gathered first (all the I/O), then judged by pure functions
//! into [`Finding`]s. Exit status: 0 all well, 1 warnings, 2 errors.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use mailtls_common::config::{self, ProgramOptions, ProgramSpec};
use mailtls_common::day::Day;
use mailtls_common::process::Run;
use serde::Serialize;

use tlsrpt_reportd::config::{check_options, ReportdOptions};
use tlsrpt_reportd::db::postgres::{report_daemons, ReportDaemon};
use tlsrpt_reportd::db::DbName;
use tlsrpt_reportd::fetch::{shown_command, Fetcher};
use tlsrpt_store::postgres::{CollectorStatus, PgDayReader};

use super::collectd::{self, CollectdOptions};
use super::posttls::{self, PosttlsOptions};
use super::reportd;

mod policyd;
mod tls_required;
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
                .default_value(reportd::SPEC.default_config_file)
                .help("The report daemon's configuration file (not checked when it does not exist)"),
        )
        .arg(
            Arg::new("posttls_config")
                .long("posttls_config")
                .value_name("FILE")
                .default_value(posttls::SPEC.default_config_file)
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
        findings.extend(judge_requiretls(&postfix));
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
    fn gather(config_dir: Option<PathBuf>) -> PostfixFacts {
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
    fn version(&self) -> Option<(u32, u32)> {
        let version = self.mail_version.as_deref()?;
        let mut parts = version.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// Whether `smtp` runs chrooted (`master.cf` column 5).
    fn smtp_chrooted(&self) -> bool {
        self.smtp_service
            .as_deref()
            .and_then(|line| line.split_whitespace().nth(4))
            .is_some_and(|chroot| chroot == "y")
    }

    /// The transport `sender_dependent_default_transport_maps` gives mail
    /// from `sender` (`postmap -q`), without its nexthop.
    fn transport_for_sender(&self, sender: &str) -> Option<String> {
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
    fn service_tlsrpt(&self, name: &str) -> Option<String> {
        let done = postfix_command("postconf", self.config_dir.as_deref())
            .arg("-hP")
            .arg(format!("{name}/unix/smtp_tlsrpt_enable"))
            .run()
            .ok()?;
        let value = String::from_utf8_lossy(&done.stdout).trim().to_string();
        (done.ending.success() && !value.is_empty()).then_some(value)
    }

    fn postconf_e(&self, setting: &str) -> String {
        match &self.config_dir {
            Some(dir) => format!("postconf -c {} -e '{setting}'", dir.display()),
            None => format!("postconf -e '{setting}'"),
        }
    }
}

/// The transport of a `-o content_filter=TRANSPORT:NEXTHOP` in a
/// `postconf -M` line.
fn content_filter_transport(service_line: &str) -> Option<String> {
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

/// What the collector's configuration, socket and databases look like.
#[derive(Debug, Clone, Default)]
pub struct CollectorFacts {
    pub config_file: PathBuf,
    /// The options of its configuration file, if it could be read.
    pub options: Option<CollectdOptions>,
    pub config_error: Option<String>,
    /// Type, owner (uid, gid) and mode of the socket, if it exists.
    pub socket: Option<FileFacts>,
    pub max_dgram_qlen: Option<u64>,
    /// The completed day of `FILE.yesterday`, or why it cannot be read.
    pub completed_day: Option<Result<Option<Day>, String>>,
    /// The UTC day of the check.
    pub today: Option<Day>,
    /// With a postgresql:// storage: the fleet's collectors of the last
    /// days, or why the database cannot be read.
    pub fleet: Option<Result<Vec<CollectorStatus>, String>>,
    /// This collector's name in the fleet.
    pub collector_name: String,
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

impl CollectorFacts {
    fn gather(config_file: &Path) -> CollectorFacts {
        let mut facts = CollectorFacts {
            config_file: config_file.to_path_buf(),
            today: Some(Day::of(chrono::Utc::now())),
            ..CollectorFacts::default()
        };
        if !config_file.is_file() {
            facts.config_error = Some("it does not exist".into());
            return facts;
        }
        match options_of::<CollectdOptions>(
            &collectd::SPEC,
            Command::new("tlsrpt-collectd"),
            config_file,
        ) {
            Ok(options) => facts.options = Some(options),
            Err(e) => {
                facts.config_error = Some(e);
                return facts;
            }
        }
        let options = facts.options.as_ref().expect("just set");
        facts.socket = FileFacts::of(&options.socketname);
        facts.max_dgram_qlen = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .ok()
            .and_then(|text| text.trim().parse().ok());
        facts.collector_name = match options.collector_name.as_str() {
            "" => mailtls_common::host_name(),
            name => name.to_string(),
        };
        let password_file = Some(&options.password_file)
            .filter(|f| !f.is_empty())
            .map(Path::new);
        if let Ok(storages) = tlsrpt_store::parse_storages(&options.storage, password_file) {
            if let Some(url) = storages.iter().find_map(|s| match s {
                tlsrpt_store::Storage::Postgres(url) => Some(url),
                tlsrpt_store::Storage::Sqlite(_) => None,
            }) {
                let today = facts.today.expect("set above");
                facts.fleet = Some(
                    PgDayReader::connect(url)
                        .and_then(|mut db| db.collector_status(today, 7))
                        .map_err(|e| e.to_string()),
                );
            }
        }
        if let Ok(storage) = tlsrpt_store::parse_storage_list(&options.storage) {
            if let Some(url) = storage.first() {
                let yesterday = tlsrpt_store::yesterday_path(&url.path);
                facts.completed_day = Some(
                    tlsrpt_store::FetcherDb::open(&yesterday)
                        .and_then(|db| db.completed_day())
                        .map_err(|e| e.to_string()),
                );
            }
        }
        facts
    }
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

/// The collector: its configuration, socket, the kernel's queue and the
/// day's rollover.
pub fn judge_collector(facts: &CollectorFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    const AREA: &str = "collector";
    let mut findings = Vec::new();
    let Some(options) = &facts.options else {
        findings.push(Finding::error(
            AREA,
            format!(
                "its configuration {} cannot be used: {}",
                facts.config_file.display(),
                facts.config_error.as_deref().unwrap_or("unknown error")
            ),
            format!(
                "write {} (the package installs a commented one; see man tlsrpt-collectd), or name it with --collectd_config",
                facts.config_file.display()
            ),
        ));
        return findings;
    };
    match &facts.socket {
        None => findings.push(Finding::error(
            AREA,
            format!(
                "there is no socket at {}: the collector is not running",
                options.socketname
            ),
            "systemctl enable --now tlsrpt-collectd (or start tlsrpt-collectd)",
        )),
        Some(socket) if !socket.is_socket => findings.push(Finding::error(
            AREA,
            format!("{} is not a socket", options.socketname),
            format!("remove {} and restart tlsrpt-collectd", options.socketname),
        )),
        Some(socket) => {
            let owner = postfix.mail_owner.as_deref().unwrap_or("postfix");
            match user_ids(owner) {
                Some((uid, gids)) if may_write(socket, uid, &gids) => findings.push(Finding::ok(
                    AREA,
                    format!(
                        "{} is a socket Postfix's {owner} may write to",
                        options.socketname
                    ),
                )),
                Some(_) => findings.push(Finding::error(
                    AREA,
                    format!(
                        "Postfix's smtp (user {owner}) may not write to {} (mode {:o})",
                        options.socketname, socket.mode
                    ),
                    format!(
                        "set socketgroup = {owner} and socketmode = 0220 in {}",
                        facts.config_file.display()
                    ),
                )),
                None => findings.push(Finding::warning(
                    AREA,
                    format!("there is no user {owner} to check the socket's permissions for"),
                    "install Postfix",
                )),
            }
        }
    }
    match facts.max_dgram_qlen {
        Some(qlen) if qlen < 100 => findings.push(Finding::warning(
            AREA,
            format!("net.unix.max_dgram_qlen is {qlen}: a burst of deliveries overflows the socket's queue and loses TLS results"),
            "echo 'net.unix.max_dgram_qlen = 1024' > /etc/sysctl.d/60-mailtls.conf && sysctl -p /etc/sysctl.d/60-mailtls.conf",
        )),
        Some(qlen) => findings.push(Finding::ok(AREA, format!("net.unix.max_dgram_qlen is {qlen}"))),
        None => {}
    }
    match &facts.completed_day {
        Some(Ok(Some(day))) if facts.today.is_some_and(|today| *day < today.pred()) => {
            findings.push(Finding::warning(
                AREA,
                format!(
                    "the last completed day is {day}: the collector has not rolled over at UTC midnight since, so those days' results are not reported"
                ),
                "check that tlsrpt-collectd runs (systemctl status tlsrpt-collectd) and can write its storage",
            ))
        }
        Some(Ok(Some(day))) => findings.push(Finding::ok(
            AREA,
            format!("the last completed day is {day}"),
        )),
        Some(Ok(None)) => findings.push(Finding::warning(
            AREA,
            "no day has been completed yet",
            "wait for the first UTC midnight with the collector running",
        )),
        Some(Err(why)) => findings.push(Finding::warning(
            AREA,
            format!("the completed day cannot be read: {why}"),
            "start tlsrpt-collectd once: it creates its databases",
        )),
        None => {}
    }
    findings.extend(judge_fleet(facts));
    findings
}

/// A postgresql:// storage: reachable, and this collector (and every
/// other) ending its days, without which the fleet's day stays
/// incomplete until the fetcher's `day_end_grace`.
pub fn judge_fleet(facts: &CollectorFacts) -> Vec<Finding> {
    const AREA: &str = "collector";
    let (Some(fleet), Some(today)) = (&facts.fleet, facts.today) else {
        return Vec::new();
    };
    let statuses = match fleet {
        Ok(statuses) => statuses,
        Err(why) => {
            return vec![Finding::error(
                AREA,
                format!("the fleet's PostgreSQL storage cannot be read: {why}"),
                "check storage= and password_file in the collector's configuration, and that the server admits this host (pg_hba.conf)",
            )]
        }
    };
    let mut findings = vec![Finding::ok(
        AREA,
        format!(
            "the fleet's PostgreSQL storage answers; collectors of the last 7 days: {}",
            if statuses.is_empty() {
                "none yet".to_string()
            } else {
                statuses
                    .iter()
                    .map(|s| s.collector.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    )];
    for status in statuses {
        let unended = status.newest_counted < today
            && status
                .newest_ended
                .is_none_or(|ended| ended < status.newest_counted);
        if unended {
            let this = status.collector == facts.collector_name;
            findings.push(Finding::warning(
                AREA,
                format!(
                    "collector {} counted on {} but has not ended that day{}: the fleet's reports of it wait for day_end_grace",
                    status.collector,
                    status.newest_counted,
                    if this { " (this host's collector)" } else { "" }
                ),
                if this {
                    "check that tlsrpt-collectd runs here and reaches the database (its log says why a write failed)".to_string()
                } else {
                    format!("check tlsrpt-collectd on the host of collector {}", status.collector)
                },
            ));
        }
    }
    findings
}

/// What the report daemon's configuration gives.
#[derive(Debug, Clone, Default)]
pub struct ReportdFacts {
    pub config_file: PathBuf,
    /// `None` when the file does not exist (the report daemon runs
    /// elsewhere, or not yet).
    pub options: Option<Result<ReportdOptions, String>>,
    /// Each fetcher and what its test run found wrong (empty: nothing).
    pub fetchers: Vec<(String, Vec<String>)>,
    /// The DKIM key's TXT record (name, record), or why it is unusable.
    pub dkim: Option<Result<(String, String), String>>,
    /// The transport Postfix chooses for report mail (by its sender), as
    /// `sender_dependent_default_transport_maps` gives it.
    pub report_transport: Option<String>,
    /// `smtp_tlsrpt_enable` of that transport's master.cf service.
    pub report_transport_tlsrpt: Option<String>,
    /// With a postgresql:// `dbname`: the report daemons connected to it,
    /// or why it cannot be read.
    pub report_daemons: Option<Result<Vec<ReportDaemon>, String>>,
}

impl ReportdFacts {
    fn gather(config_file: &Path, postfix: &PostfixFacts) -> ReportdFacts {
        let mut facts = ReportdFacts {
            config_file: config_file.to_path_buf(),
            ..ReportdFacts::default()
        };
        if !config_file.is_file() {
            return facts;
        }
        let options = options_of::<ReportdOptions>(
            &reportd::SPEC,
            Command::new("tlsrpt-reportd"),
            config_file,
        );
        if let Ok(o) = &options {
            for configured in o
                .fetchers
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
            {
                let problems = match Fetcher::new(configured) {
                    Some(fetcher) => fetcher.probe(
                        &chrono::Utc::now,
                        Duration::from_secs(o.max_collectd_timediff.max(0) as u64),
                    ),
                    None => vec!["names no program".into()],
                };
                facts.fetchers.push((configured.to_string(), problems));
            }
            if !o.dkim_key_file.is_empty() {
                let domain = if o.dkim_domain.is_empty() {
                    o.sender_address
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_string())
                } else {
                    Some(o.dkim_domain.clone())
                };
                facts.dkim = Some(match domain {
                    None => Err("dkim_domain is not set and sender_address has no domain".into()),
                    Some(domain) => tlsrpt_delivery::DkimSigner::from_key_file(
                        Path::new(&o.dkim_key_file),
                        &o.dkim_selector,
                        &domain,
                    )
                    .map(|signer| (signer.dns_name(), signer.dns_record()))
                    .map_err(|e| e.to_string()),
                });
            }
            let password_file = Some(&o.password_file)
                .filter(|f| !f.is_empty())
                .map(Path::new);
            if let Ok(DbName::Postgres(url)) = DbName::parse(&o.dbname, password_file) {
                facts.report_daemons = Some(report_daemons(&url).map_err(|e| e.to_string()));
            }
            if postfix.tlsrpt_enable.as_deref() == Some("yes") && !o.sender_address.is_empty() {
                facts.report_transport = postfix.transport_for_sender(&o.sender_address);
                facts.report_transport_tlsrpt = facts
                    .report_transport
                    .as_deref()
                    .and_then(|transport| postfix.service_tlsrpt(transport));
            }
        }
        facts.options = Some(options);
        facts
    }
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

impl ReportdFacts {
    fn failure(&self, area: &'static str) -> Vec<Finding> {
        config_failure(&self.options, area, &self.config_file)
    }
}

impl PosttlsFacts {
    fn failure(&self, area: &'static str) -> Vec<Finding> {
        config_failure(&self.options, area, &self.config_file)
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

/// The report daemon: its options, fetchers, DKIM key, and that its mail
/// leaves through a transport without TLSRPT.
pub fn judge_reportd(facts: &ReportdFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    const AREA: &str = "reportd";
    let file = facts.config_file.display();
    let Some(options) = loaded(&facts.options) else {
        return facts.failure(AREA);
    };
    let mut findings = Vec::new();
    if let Err(e) = check_options(options) {
        findings.push(Finding::error(AREA, e, format!("correct {file}")));
    }
    findings.extend(unset(
        AREA,
        "the report daemon does not start",
        &format!("[tlsrpt_reportd] of {file}"),
        &[
            ("contact_info", &options.contact_info, "tlsrpt@example.com"),
            (
                "sender_address",
                &options.sender_address,
                "tlsrpt-noreply@example.com",
            ),
        ],
    ));
    for (fetcher, problems) in &facts.fetchers {
        if problems.is_empty() {
            findings.push(Finding::ok(
                AREA,
                format!("fetcher `{}` answers", shown_command(fetcher)),
            ));
        } else {
            findings.push(Finding::error(
                AREA,
                format!(
                    "fetcher `{}`: {}",
                    shown_command(fetcher),
                    problems.join("; ")
                ),
                if problems.iter().any(|p| p.contains("does not exist")) {
                    "start tlsrpt-collectd first: it creates the databases the fetcher reads"
                } else {
                    "run the fetcher by hand with the day 1999-01-01 and correct what it says"
                },
            ));
        }
    }
    match &facts.dkim {
        None => findings.push(Finding::warning(
            AREA,
            "report mail is not DKIM-signed (no dkim_key_file): receivers ignore unsigned reports unless your MTA signs them (RFC 8460 section 3)",
            format!("dkim_key_file = /etc/tlsrpt/dkim.key   (in {file}), or sign with the MTA"),
        )),
        Some(Ok((name, record))) => findings.push(Finding::ok(
            AREA,
            format!("report mail is DKIM-signed; publish: {name} TXT \"{record}\""),
        )),
        Some(Err(e)) => findings.push(Finding::error(
            AREA,
            format!("the DKIM key cannot be used: {e}"),
            "point dkim_key_file at a PEM RSA or Ed25519 private key the report daemon's user may read",
        )),
    }
    findings.extend(judge_report_daemons(facts));
    if postfix.tlsrpt_enable.as_deref() == Some("yes") && !options.sender_address.is_empty() {
        match (&facts.report_transport, facts.report_transport_tlsrpt.as_deref()) {
            (Some(transport), Some("no")) => findings.push(Finding::ok(
                AREA,
                format!("report mail leaves through {transport}, without TLSRPT"),
            )),
            _ => findings.push(Finding::warning(
                AREA,
                format!(
                    "report mail from {} goes through a transport with TLSRPT: the next reports count it, and two sites exchange reports forever",
                    options.sender_address
                ),
                format!(
                    "master.cf: smtp-notlsrpt unix - - n - - smtp -o smtp_tlsrpt_enable=no; main.cf: sender_dependent_default_transport_maps = inline:{{{}=smtp-notlsrpt:}}",
                    options.sender_address
                ),
            )),
        }
    }
    findings
}

/// A postgresql:// `dbname`: reachable, and one report daemon active.
fn judge_report_daemons(facts: &ReportdFacts) -> Vec<Finding> {
    const AREA: &str = "reportd";
    let Some(daemons) = &facts.report_daemons else {
        return Vec::new();
    };
    let daemons = match daemons {
        Ok(daemons) => daemons,
        Err(why) => {
            return vec![Finding::error(
                AREA,
                format!("the report daemons' PostgreSQL state cannot be read: {why}"),
                "check dbname and password_file in the report daemon's configuration, and that the server admits this host (pg_hba.conf)",
            )]
        }
    };
    let shown: Vec<String> = daemons
        .iter()
        .map(|d| {
            format!(
                "{} from {} ({})",
                d.name,
                d.from,
                if d.active { "active" } else { "standing by" }
            )
        })
        .collect();
    if daemons.iter().any(|d| d.active) {
        vec![Finding::ok(
            AREA,
            format!(
                "report daemons on the PostgreSQL state: {}",
                shown.join(", ")
            ),
        )]
    } else {
        vec![Finding::warning(
            AREA,
            format!(
                "no report daemon is active on the PostgreSQL state{}: no report is made or delivered",
                if shown.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", shown.join(", "))
                }
            ),
            "start tlsrpt-reportd on a report host (the first to start takes the lead); a daemon that cannot reach the database says why in its log",
        )]
    }
}

/// What PostTLS's configuration and key look like.
#[derive(Debug, Clone, Default)]
pub struct PosttlsFacts {
    pub config_file: PathBuf,
    /// `None` when the file does not exist (PostTLS not in use).
    pub options: Option<Result<PosttlsOptions, String>>,
    /// The link key file, if it exists.
    pub key: Option<FileFacts>,
    /// The database file, if it exists.
    pub database: Option<FileFacts>,
    /// A postgresql:// database: the schema and the configured role's
    /// privileges, or why they cannot be read.
    pub postgres: Option<Result<posttls_store::PgInspection, String>>,
    /// The TLSRPT databases the Outbound TLS view reads, with their
    /// directories, when they exist: (path, file, directory).
    pub tlsrpt_dbs: Vec<(String, FileFacts, FileFacts)>,
    /// The web pages' user (the unit's `User=`) and its uid and groups,
    /// when the system knows the user.
    pub web_user: Option<(String, u32, Vec<u32>)>,
    /// The `User=` of the installed posttls-web unit (empty: root), if
    /// there is a unit.
    pub web_unit_user: Option<String>,
}

/// The user a systemd unit file's `[Service]` runs as (empty for root).
pub fn unit_user(unit: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("User="))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl PosttlsFacts {
    fn gather(config_file: &Path, web_unit: Option<&Path>) -> PosttlsFacts {
        let mut facts = PosttlsFacts {
            config_file: config_file.to_path_buf(),
            ..PosttlsFacts::default()
        };
        if !config_file.exists() {
            return facts;
        }
        let options =
            options_of::<PosttlsOptions>(&posttls::SPEC, Command::new("posttls"), config_file);
        if let Ok(options) = &options {
            facts.key = FileFacts::of(&options.secret_key_file);
            facts.database = FileFacts::of(&options.database);
            if posttls_store::Database::is_url(&options.database) {
                facts.postgres = Some(match posttls::database(options) {
                    Ok(posttls_store::Database::Postgres(url)) => {
                        posttls_store::inspect_postgres(&url).map_err(|e| e.to_string())
                    }
                    Ok(posttls_store::Database::Sqlite(_)) => unreachable!("a URL"),
                    Err(e) => Err(format!("{e:#}")),
                });
            }
            for path in [&options.tlsrpt_collector_db, &options.tlsrpt_reportd_db] {
                let dir = Path::new(path.as_str()).parent().map(FileFacts::of);
                if let (Some(file), Some(Some(dir))) = (FileFacts::of(path), dir) {
                    facts.tlsrpt_dbs.push((path.clone(), file, dir));
                }
            }
        }
        facts.options = Some(options);
        facts.web_unit_user = web_unit
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|unit| unit_user(&unit));
        facts.web_user = facts
            .web_unit_user
            .as_deref()
            .filter(|user| !user.is_empty())
            .and_then(|user| user_ids(user).map(|(uid, gids)| (user.to_string(), uid, gids)));
        facts
    }
}

/// Whether the web pages' user can read the link key and write the
/// database: a worker started by hand as root before the package's fix
/// for it, or a `posttls adduser` run as root on a new database, leaves
/// them root's, and the web pages then fail at start or on every request.
fn judge_web_user_access(facts: &PosttlsFacts, options: &PosttlsOptions) -> Vec<Finding> {
    const AREA: &str = "posttls";
    let Some((user, uid, gids)) = &facts.web_user else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    if let Some(key) = &facts.key {
        if !may_read(key, *uid, gids) {
            findings.push(Finding::error(
                AREA,
                format!(
                    "the web pages' user {user} cannot read the link key {}: they do not start",
                    options.secret_key_file
                ),
                format!("chown {user}: {}", options.secret_key_file),
            ));
        }
    }
    for (path, file, dir) in &facts.tlsrpt_dbs {
        // Reading a file needs read access to it and search (execute)
        // access to its directory.
        let searchable = permitted(dir, *uid, gids, 0o1);
        if !(searchable && may_read(file, *uid, gids)) {
            findings.push(Finding::warning(
                AREA,
                format!("the web pages' user {user} cannot read {path}: the Outbound TLS view shows nothing from it"),
                format!("adduser {user} _tlsrpt (the package does this; restart posttls-web)"),
            ));
        }
    }
    if let Some(database) = &facts.database {
        if may_write(database, *uid, gids) {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "the web pages' user {user} may write the database {}",
                    options.database
                ),
            ));
        } else {
            findings.push(Finding::error(
                AREA,
                format!(
                    "the web pages' user {user} cannot write the database {}: no link can be confirmed and no admin can log in",
                    options.database
                ),
                format!("chown {user}: {}*", options.database),
            ));
        }
    }
    findings
}

/// A postgresql:// database: reachable, the schema this program's, and
/// the role either the workers' (it owns the tables) or one that may do
/// what the web pages need and nothing only the worker may do.
fn judge_posttls_postgres(facts: &PosttlsFacts) -> Vec<Finding> {
    const AREA: &str = "posttls";
    const GRANTS: &str = "the grants of the README's \"PostTLS on PostgreSQL\"";
    let Some(postgres) = &facts.postgres else {
        return Vec::new();
    };
    let pg = match postgres {
        Ok(pg) => pg,
        Err(why) => {
            return vec![Finding::error(
                AREA,
                format!("the PostTLS database cannot be read: {why}"),
                "check database= and password_file in the PostTLS configuration, and that the server admits this host (pg_hba.conf)",
            )]
        }
    };
    let role = &pg.role;
    let mut findings = Vec::new();
    match pg.version {
        0 => {
            findings.push(Finding::warning(
                AREA,
                format!("the PostTLS tables do not exist yet (connected as {role})"),
                "start posttls worker with the workers' role: it creates them",
            ));
            return findings;
        }
        v if v > pg.known => findings.push(Finding::error(
            AREA,
            format!("the PostTLS tables are at schema version {v}, newer than this program's {}", pg.known),
            "upgrade mailtls on this host",
        )),
        v if v < pg.known => findings.push(Finding::warning(
            AREA,
            format!("the PostTLS tables are at schema version {v}, older than this program's {}: the web pages do not start", pg.known),
            "start posttls worker (it migrates them)",
        )),
        v => findings.push(Finding::ok(
            AREA,
            format!("the PostTLS database answers as {role}, schema version {v}"),
        )),
    }
    if pg.owner {
        findings.push(Finding::ok(
            AREA,
            format!("{role} owns the PostTLS tables: the workers' role (give the web pages a role of their own)"),
        ));
        return findings;
    }
    if pg.web_lacks.is_empty() {
        findings.push(Finding::ok(
            AREA,
            format!("{role} may do what the web pages need"),
        ));
    } else {
        findings.push(Finding::error(
            AREA,
            format!(
                "{role} lacks what the web pages need: {}",
                pg.web_lacks.join(", ")
            ),
            GRANTS,
        ));
    }
    if pg.worker_only.is_empty() {
        findings.push(Finding::ok(
            AREA,
            format!("{role} may not change what only the worker may"),
        ));
    } else {
        findings.push(Finding::error(
            AREA,
            format!(
                "{role} is not the tables' owner but may also {}: a web process taken over could change states only the worker may",
                pg.worker_only.join(", ")
            ),
            format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}, then {GRANTS}"),
        ));
    }
    findings
}

/// A content filter without a next hop sends to each recipient domain's
/// MX: relayhost and transport_maps do not apply to released mail.
fn judge_release_routing(postfix: &PostfixFacts, transport: &str) -> Option<Finding> {
    if postfix.release_nexthop {
        return None;
    }
    let routing: Vec<String> = [
        ("relayhost", &postfix.relayhost),
        ("transport_maps", &postfix.transport_maps),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| format!("{name} = {v}"))
    })
    .collect();
    (!routing.is_empty()).then(|| {
        Finding::warning(
            "posttls",
            format!(
                "released mail goes straight to each recipient domain's MX: content_filter={transport}: has no next hop, so {} does not apply to it",
                routing.join(" and ")
            ),
            format!("if released mail must take that route, name it in master.cf: -o content_filter={transport}:[relay.example.org]:25"),
        )
    })
}

/// REQUIRETLS (RFC 8689, Postfix 3.11 and later): whether senders can ask
/// for it, and that PostTLS never releases a message that did.
fn judge_requiretls(postfix: &PostfixFacts) -> Vec<Finding> {
    let Some((enable, policy)) = &postfix.requiretls else {
        return Vec::new();
    };
    let version = postfix.mail_version.as_deref().unwrap_or_default();
    vec![Finding::ok(
        "posttls",
        if enable == "yes" {
            format!(
                "Postfix {version} takes REQUIRETLS requests (requiretls_enable = yes; smtp_requiretls_policy = {policy}): PostTLS never releases a message that asked for it, and tells its sender why"
            )
        } else {
            format!(
                "requiretls_enable = {enable}: Postfix {version} does not offer REQUIRETLS, so senders cannot ask for it"
            )
        },
    )]
}

/// The re-injection services PostTLS needs in master.cf, as shipped in
/// `/usr/share/doc/mailtls/examples/master.cf.posttls`.
pub const MASTER_CF_POSTTLS: &str =
    include_str!("../../../../packaging/examples/master.cf.posttls");

/// The lines to append to master.cf, without their comments: with the
/// `TLS-Required` release (Postfix 3.10 and later) only posttls-reinject.
fn master_cf_fix(postfix: &PostfixFacts, header_release: bool) -> String {
    let master_cf = match &postfix.config_dir {
        Some(dir) => dir.join("master.cf"),
        None => PathBuf::from("/etc/postfix/master.cf"),
    };
    let mut service = "";
    let lines: Vec<&str> = MASTER_CF_POSTTLS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            if !line.starts_with(char::is_whitespace) {
                service = line.split_whitespace().next().unwrap_or_default();
            }
            !header_release || service == "posttls-reinject"
        })
        .collect();
    let reload = match &postfix.config_dir {
        Some(dir) => format!("postfix -c {} reload", dir.display()),
        None => "postfix reload".into(),
    };
    format!(
        "append to {} (also in /usr/share/doc/mailtls/examples/master.cf.posttls), then {reload}:\n{}",
        master_cf.display(),
        lines.join("\n")
    )
}

/// PostTLS: its required options, the key's permissions, and the Postfix
/// services and TLS level it relies on.
pub fn judge_posttls(facts: &PosttlsFacts, postfix: &PostfixFacts) -> Vec<Finding> {
    const AREA: &str = "posttls";
    let file = facts.config_file.display();
    let Some(options) = loaded(&facts.options) else {
        return facts.failure(AREA);
    };
    let mut findings = Vec::new();
    findings.extend(unset(
        AREA,
        "the PostTLS worker does not start",
        &format!("[posttls] of {file}"),
        &[
            (
                "own_domains",
                &options.own_domains,
                "example.org, .example.org",
            ),
            (
                "notification_from",
                &options.notification_from,
                "postmaster@example.org",
            ),
            ("base_url", &options.base_url, "https://posttls.example.org"),
        ],
    ));
    if !options.base_url.is_empty() && !options.base_url.starts_with("https://") {
        findings.push(Finding::warning(
            AREA,
            format!("base_url = {} is not https: the links in notifications travel and open unencrypted", options.base_url),
            "put a TLS-terminating proxy in front of the web pages and set base_url = https://...",
        ));
    }
    match facts.key.as_ref().map(|key| key.mode & 0o777) {
        Some(mode) if mode & 0o077 != 0 => findings.push(Finding::error(
            AREA,
            format!(
                "the link key {} has mode {mode:o}: others may read it and forge links",
                options.secret_key_file
            ),
            format!("chmod 600 {}", options.secret_key_file),
        )),
        Some(_) => findings.push(Finding::ok(
            AREA,
            format!("the link key {} is private", options.secret_key_file),
        )),
        None => findings.push(Finding::warning(
            AREA,
            format!("there is no link key at {} yet", options.secret_key_file),
            "start posttls-web or posttls-worker: the first to start creates the key",
        )),
    }
    findings.extend(judge_web_user_access(facts, options));
    findings.extend(judge_posttls_postgres(facts));
    match facts.web_unit_user.as_deref() {
        Some("" | "root") => findings.push(Finding::error(
            AREA,
            "the web pages (posttls-web.service) run as root: a flaw in them could run Postfix commands",
            "User=_posttls in the [Service] of posttls-web.service (systemctl edit posttls-web)",
        )),
        Some(user) => findings.push(Finding::ok(
            AREA,
            format!("the web pages run as {user}, who cannot run postsuper"),
        )),
        None => {}
    }
    if postfix.unavailable.is_none() {
        let version = postfix.mail_version.as_deref().unwrap_or_default();
        let tls_required_enable =
            postfix
                .tls_required
                .as_ref()
                .map(|t| if t.enabled { "yes" } else { "no" });
        let header_release = match posttls_actions::ReleaseMethod::parse(&options.release_method)
            .map(|method| method.uses_header(version, tls_required_enable))
        {
            None => {
                findings.push(Finding::error(
                    AREA,
                    format!(
                        "release_method = {} is not one of auto, tls_required_header, content_filter: the worker does not start",
                        options.release_method
                    ),
                    format!("release_method = auto in [posttls] of {file}"),
                ));
                return findings;
            }
            Some(Err(why)) => {
                findings.push(Finding::error(
                    AREA,
                    format!("{why}: the worker does not start"),
                    format!("release_method = auto in [posttls] of {file}"),
                ));
                return findings;
            }
            Some(Ok(header)) => header,
        };
        let needed: &[(&str, &Option<String>)] = if header_release {
            &[("posttls-reinject", &postfix.reinject_service)]
        } else {
            &[
                ("posttls-release", &postfix.release_service),
                ("posttls-reinject", &postfix.reinject_service),
            ]
        };
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(_, line)| line.is_none())
            .map(|(service, _)| *service)
            .collect();
        if missing.is_empty() {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "master.cf has the {} listener{}",
                    needed
                        .iter()
                        .map(|(s, _)| *s)
                        .collect::<Vec<_>>()
                        .join(" and "),
                    if needed.len() > 1 { "s" } else { "" }
                ),
            ));
        } else {
            findings.push(Finding::error(
                AREA,
                format!(
                    "master.cf has no {} listener: released messages cannot be re-injected",
                    missing.join(" and no ")
                ),
                master_cf_fix(postfix, header_release),
            ));
        }
        if header_release {
            findings.push(Finding::ok(
                AREA,
                format!(
                    "released mail leaves through posttls-reinject with TLS-Required: No, by the instance's own routing (Postfix {version}); mandatory-TLS recipients are never in it"
                ),
            ));
            if let Ok(mandatory) = posttls_policy::DomainSet::parse_list(&options.mandatory_domains)
            {
                findings.extend(tls_required::judge_policy_bypass(
                    &postfix.tls_policy_tables,
                    &mandatory,
                    &facts.config_file,
                ));
            }
        } else if postfix.release_service.is_some() {
            match &postfix.release_transport {
                Some((transport, true)) => {
                    findings.push(Finding::ok(
                        AREA,
                        format!("released mail leaves through {transport}"),
                    ));
                    findings.extend(judge_release_routing(postfix, transport));
                }
                Some((transport, false)) => findings.push(Finding::error(
                    AREA,
                    format!("posttls-release hands mail to {transport}, which master.cf does not define: released mail stays queued"),
                    master_cf_fix(postfix, false),
                )),
                None => findings.push(Finding::error(
                    AREA,
                    "posttls-release has no content_filter: released mail takes the normal path, which requires TLS, and waits again",
                    master_cf_fix(postfix, false),
                )),
            }
        }
        match postfix.tls_security_level.as_deref() {
            Some("encrypt" | "dane-only" | "verify" | "secure" | "fingerprint") => findings.push(
                Finding::ok(AREA, "smtp_tls_security_level requires TLS"),
            ),
            Some(level) => findings.push(Finding::error(
                AREA,
                format!("smtp_tls_security_level = {level}: Postfix sends without TLS, so PostTLS has nothing to decide"),
                postfix.postconf_e("smtp_tls_security_level = encrypt"),
            )),
            None => {}
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postfix(version: &str) -> PostfixFacts {
        PostfixFacts {
            mail_version: Some(version.into()),
            queue_directory: Some("/var/spool/postfix".into()),
            mail_owner: Some("postfix".into()),
            ..PostfixFacts::default()
        }
    }

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

    #[test]
    fn report_mail_must_leave_without_tlsrpt() {
        let mut postfix = postfix("3.10.1");
        postfix.tlsrpt_enable = Some("yes".into());
        let mut options = ReportdOptions::defaults();
        options.sender_address = "tlsrpt-noreply@example.com".into();
        options.contact_info = "tlsrpt@example.com".into();
        options.fetchers = "tlsrpt-fetcher".into();
        let mut facts = ReportdFacts {
            options: Some(Ok(options)),
            ..ReportdFacts::default()
        };
        let pingpong = |facts: &ReportdFacts| {
            judge_reportd(facts, &postfix)
                .into_iter()
                .find(|f| f.message.contains("report mail") && f.message.contains("TLSRPT"))
                .unwrap()
        };
        let found = pingpong(&facts);
        assert_eq!(found.level, Level::Warning);
        assert!(found
            .fix
            .unwrap()
            .contains("inline:{tlsrpt-noreply@example.com=smtp-notlsrpt:}"));
        facts.report_transport = Some("smtp-notlsrpt".into());
        facts.report_transport_tlsrpt = Some("no".into());
        assert_eq!(pingpong(&facts).level, Level::Ok);
    }

    #[test]
    fn a_collector_that_stopped_rolling_over_is_noticed() {
        let today = Day::parse("2026-12-02").unwrap();
        let mut facts = CollectorFacts {
            options: Some(CollectdOptions::defaults()),
            today: Some(today),
            completed_day: Some(Ok(Some(today.pred()))),
            ..CollectorFacts::default()
        };
        let rollover = |facts: &CollectorFacts| {
            judge_collector(facts, &postfix("3.7.11"))
                .into_iter()
                .find(|f| f.message.contains("last completed day"))
                .unwrap()
        };
        assert_eq!(rollover(&facts).level, Level::Ok);
        facts.completed_day = Some(Ok(Some(today.pred().pred())));
        let stale = rollover(&facts);
        assert_eq!(stale.level, Level::Warning);
        assert!(stale.message.contains("has not rolled over"), "{stale:?}");
    }

    #[test]
    fn the_web_pages_must_not_run_as_root() {
        assert_eq!(
            unit_user("[Service]\nUser=_posttls\nGroup=_posttls\n"),
            "_posttls"
        );
        assert_eq!(
            unit_user("[Service]\nExecStart=/usr/sbin/posttls web\n"),
            ""
        );
        let mut options = PosttlsOptions::defaults();
        options.own_domains = "example.org".into();
        let mut facts = PosttlsFacts {
            options: Some(Ok(options)),
            web_unit_user: Some(String::new()),
            ..PosttlsFacts::default()
        };
        let web = |facts: &PosttlsFacts| {
            judge_posttls(facts, &PostfixFacts::default())
                .into_iter()
                .find(|f| f.message.contains("web pages"))
                .unwrap()
        };
        assert_eq!(web(&facts).level, Level::Error);
        facts.web_unit_user = Some("_posttls".into());
        assert_eq!(web(&facts).level, Level::Ok);
    }

    #[test]
    fn the_web_user_must_read_the_key_and_write_the_database() {
        let options = PosttlsOptions::defaults();
        let ours = FileFacts {
            is_socket: false,
            uid: 120,
            gid: 120,
            mode: 0o600,
        };
        let roots = FileFacts {
            uid: 0,
            gid: 120,
            mode: 0o644,
            ..ours.clone()
        };
        let mut facts = PosttlsFacts {
            options: Some(Ok(options.clone())),
            key: Some(ours.clone()),
            database: Some(ours.clone()),
            web_user: Some(("_posttls".into(), 120, vec![120])),
            ..PosttlsFacts::default()
        };
        // The TLSRPT data as the package leaves it: the directory 0750 and
        // the file 0644 of _tlsrpt (uid 121, group 121).
        let tlsrpt_dir = FileFacts {
            is_socket: false,
            uid: 121,
            gid: 121,
            mode: 0o750,
        };
        let tlsrpt_db = FileFacts {
            mode: 0o644,
            ..tlsrpt_dir.clone()
        };
        facts.tlsrpt_dbs = vec![(
            "/var/lib/tlsrpt/collectd.sqlite".into(),
            tlsrpt_db,
            tlsrpt_dir,
        )];
        let found = judge_web_user_access(&facts, &options);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0]
            .message
            .contains("cannot read /var/lib/tlsrpt/collectd.sqlite"));
        assert_eq!(
            found[0].fix.as_deref(),
            Some("adduser _posttls _tlsrpt (the package does this; restart posttls-web)")
        );
        // In group _tlsrpt, as the package makes it.
        facts.web_user = Some(("_posttls".into(), 120, vec![120, 121]));
        let found = judge_web_user_access(&facts, &options);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].level, Level::Ok);
        // What a worker started first as root left before it gave its
        // files to the directory's owner.
        facts.key = Some(FileFacts {
            mode: 0o600,
            ..roots.clone()
        });
        facts.database = Some(roots);
        let found = judge_web_user_access(&facts, &options);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| f.level == Level::Error));
        assert_eq!(
            found[0].fix.as_deref(),
            Some("chown _posttls: /var/lib/posttls/secret.key")
        );
        assert_eq!(
            found[1].fix.as_deref(),
            Some("chown _posttls: /var/lib/posttls/posttls.sqlite*")
        );
    }

    #[test]
    fn released_mail_needs_the_transport_its_listener_names() {
        assert_eq!(
            content_filter_transport(
                "posttls-release unix - - n - - smtpd -o content_filter=smtp_may: -o mynetworks=127.0.0.0/8"
            )
            .as_deref(),
            Some("smtp_may")
        );
        assert_eq!(
            content_filter_transport(
                "posttls-reinject unix - - n - - smtpd -o mynetworks=127.0.0.0/8"
            ),
            None
        );
        let mut postfix = postfix("3.7.11");
        postfix.release_service = Some("posttls-release unix ...".into());
        postfix.reinject_service = Some("posttls-reinject unix ...".into());
        let facts = PosttlsFacts {
            options: Some(Ok(PosttlsOptions::defaults())),
            ..PosttlsFacts::default()
        };
        let transport = |postfix: &PostfixFacts| {
            judge_posttls(&facts, postfix)
                .into_iter()
                .find(|f| f.message.contains("smtp_may") || f.message.contains("content_filter"))
                .unwrap()
        };
        postfix.release_transport = Some(("smtp_may".into(), true));
        assert_eq!(transport(&postfix).level, Level::Ok);
        let routing = |postfix: &PostfixFacts| {
            judge_posttls(&facts, postfix)
                .into_iter()
                .filter(|f| f.message.contains("straight to"))
                .count()
        };
        assert_eq!(routing(&postfix), 0);
        postfix.transport_maps = Some("inline:{notls.test=smtp:[127.0.0.1]:2526}".into());
        assert_eq!(routing(&postfix), 1);
        postfix.release_nexthop = true;
        assert_eq!(routing(&postfix), 0);
        postfix.release_transport = Some(("smtp_may".into(), false));
        let missing = transport(&postfix);
        assert_eq!(missing.level, Level::Error);
        // The fix is the lines themselves, not a pointer to a document.
        let fix = missing.fix.unwrap();
        assert!(
            fix.contains(
                "\nsmtp_may  unix  -  -  n  -  -  smtp\n  -o smtp_tls_security_level=may\n"
            ),
            "{fix}"
        );
        assert!(!fix.contains("\n#"), "{fix}");
        postfix.release_transport = None;
        assert_eq!(transport(&postfix).level, Level::Error);
    }

    #[test]
    fn the_readme_shows_the_master_cf_lines_the_package_ships() {
        let readme = include_str!("../../../../README.md");
        let services: String = MASTER_CF_POSTTLS
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(readme.contains(&services), "README.md lacks:\n{services}");
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
