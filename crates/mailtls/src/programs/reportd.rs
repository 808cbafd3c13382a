//! `tlsrpt-reportd` / `mailtls reportd`: options as upstream (plus DKIM,
//! SMTP relay and HTTPS settings), start-up checks, then
//! [`tlsrpt_reportd::daemon::Reportd::run`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, Command};
use mailtls_common::clock::Clock;
use mailtls_common::config::{add_options, Kind, OptionSpec, ProgramSpec, Settings, Source};
use mailtls_common::pidfile::PidFile;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tlsrpt_delivery::{
    DkimSigner, HttpScript, HttpTransport, HttpsPost, MailTransport, Sendmail, TrustAnchors,
};
use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::report::{submitter_domain, ReportingOrganization};
use tlsrpt_reportd::config::{
    check_options, effective_keep_days, split_fetchers, FetchRetry, ReportdConfig,
};
use tlsrpt_reportd::daemon::Reportd;
use tlsrpt_reportd::db::ReportdDb;
use tlsrpt_reportd::deliver::Deliverer;
use tlsrpt_reportd::fetch::Fetcher;
use tlsrpt_reportd::reports::Caps;
use tlsrpt_reportd::schedule::DeliveryRetry;

/// Upstream's options (same names, defaults, order), then ours.
pub const OPTIONS: [OptionSpec; 47] = [
    OptionSpec { name: "pidfilename", kind: Kind::Str, default: "", help: "PID file to write" },
    OptionSpec { name: "logfilename", kind: Kind::Str, default: "", help: "Log file (in addition to standard error); reopened on SIGHUP" },
    OptionSpec { name: "log_level", kind: Kind::Str, default: "warn", help: "Log level: debug, info, warn, error, critical, or a number" },
    OptionSpec { name: "debug_db", kind: Kind::Int, default: "0", help: "Accepted for compatibility; use log_level = debug to follow each step" },
    OptionSpec { name: "keep_days", kind: Kind::Int, default: "10", help: "Days to keep fetched data, reports and their delivery state (at least 2)" },
    OptionSpec { name: "debug_send_mail_dest", kind: Kind::Str, default: "", help: "Send every report mail to this address instead of the rua address (testing)" },
    OptionSpec { name: "debug_send_http_dest", kind: Kind::Str, default: "", help: "Upload every report to this URL instead of the rua URL (testing)" },
    OptionSpec { name: "debug_send_file_dest", kind: Kind::Str, default: "", help: "Also save every report (and report mail) into this directory (testing)" },
    OptionSpec { name: "dbname", kind: Kind::Str, default: "", help: "The reportd's SQLite database file (created if missing; an upstream reportd's file is used as it is)" },
    OptionSpec { name: "fetchers", kind: Kind::Str, default: "", help: "Comma-separated fetcher commands, each split on white space, e.g. `tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite, ssh mx2 tlsrpt-fetcher`" },
    OptionSpec { name: "organization_name", kind: Kind::Str, default: "", help: "The reporting organization's name (report field organization-name)" },
    OptionSpec { name: "contact_info", kind: Kind::Str, default: "", help: "Contact address (report field contact-info); its domain is the TLS-Report-Submitter" },
    OptionSpec { name: "sender_address", kind: Kind::Str, default: "", help: "From address (and envelope sender) of report mail" },
    OptionSpec { name: "compression_level", kind: Kind::Int, default: "-1", help: "gzip level of reports, 0-9, -1 for zlib's default" },
    OptionSpec { name: "tlsrpt_record_map", kind: Kind::Str, default: "", help: "Map file applied to each report domain's destinations (see README: destination maps)" },
    OptionSpec { name: "mail_destination_map", kind: Kind::Str, default: "", help: "Map file applied to each mailto: destination" },
    OptionSpec { name: "http_upload_map", kind: Kind::Str, default: "", help: "Map file applied to each https: destination" },
    OptionSpec { name: "http_script", kind: Kind::Str, default: HttpScript::DEFAULT_COMMAND, help: "Upload command (URL appended, report on standard input). Left at its default, reports are POSTed natively (only a 2xx answer counts); set, the command is run and its exit status decides" },
    OptionSpec { name: "http_timeout", kind: Kind::Int, default: "10", help: "Seconds an HTTPS upload may take" },
    OptionSpec { name: "sendmail_script", kind: Kind::Str, default: "sendmail -i -t", help: "Command that takes a report mail on standard input (split into words, no shell); unused when smtp_relay is set" },
    OptionSpec { name: "sendmail_timeout", kind: Kind::Int, default: "10", help: "Seconds sendmail_script (or an SMTP submission) may take" },
    OptionSpec { name: "spread_out_delivery", kind: Kind::Int, default: "36000", help: "Seconds over which the first deliveries of a day's reports are spread (RFC 8460 section 4.1)" },
    OptionSpec { name: "interval_main_loop", kind: Kind::Int, default: "300", help: "Longest sleep of the main loop, in seconds" },
    OptionSpec { name: "max_collectd_timeout", kind: Kind::Int, default: "10", help: "Seconds one fetcher run may take before it is killed and retried (a bulk run may take 60 times this, but may not pause its output for longer)" },
    OptionSpec { name: "max_collectd_timediff", kind: Kind::Int, default: "10", help: "Warn when a fetcher's clock differs from ours by more seconds" },
    OptionSpec { name: "max_retries_delivery", kind: Kind::Int, default: "5", help: "Retries of a failed delivery. Unless this or a *_wait_delivery option is set, failed deliveries are retried with backoff for 24 hours (RFC 8460 section 5.5)" },
    OptionSpec { name: "min_wait_delivery", kind: Kind::Int, default: "300", help: "Least seconds between delivery attempts (when set: upstream's fixed rule)" },
    OptionSpec { name: "max_wait_delivery", kind: Kind::Int, default: "1800", help: "Most seconds between delivery attempts (when set: upstream's fixed rule)" },
    OptionSpec { name: "max_retries_domainlist", kind: Kind::Int, default: "5", help: "Retries of a fetcher's domain list" },
    OptionSpec { name: "min_wait_domainlist", kind: Kind::Int, default: "30", help: "Least seconds between domain list attempts" },
    OptionSpec { name: "max_wait_domainlist", kind: Kind::Int, default: "300", help: "Most seconds between domain list attempts" },
    OptionSpec { name: "max_retries_domaindetails", kind: Kind::Int, default: "5", help: "Retries of a domain's details (upstream never gives up)" },
    OptionSpec { name: "min_wait_domaindetails", kind: Kind::Int, default: "30", help: "Least seconds between domain details attempts" },
    OptionSpec { name: "max_wait_domaindetails", kind: Kind::Int, default: "300", help: "Most seconds between domain details attempts" },
    OptionSpec { name: "fetcher_bulk", kind: Kind::Int, default: "1", help: "mailtls: ask fetchers for all domains in one run first (1) or always once per domain as upstream (0); fetchers without the extension are detected and asked once per domain" },
    OptionSpec { name: "dkim_key_file", kind: Kind::Str, default: "", help: "mailtls: PEM private key (RSA or Ed25519) to DKIM-sign report mail with (RFC 8460 section 3); empty: unsigned, e.g. when the MTA signs" },
    OptionSpec { name: "dkim_selector", kind: Kind::Str, default: "tlsrpt", help: "mailtls: DKIM selector" },
    OptionSpec { name: "dkim_domain", kind: Kind::Str, default: "", help: "mailtls: DKIM signing domain (d=); default: the domain of sender_address" },
    OptionSpec { name: "smtp_relay", kind: Kind::Str, default: "", help: "mailtls: submit report mail by SMTP to HOST or HOST:PORT instead of sendmail_script" },
    OptionSpec { name: "smtp_security", kind: Kind::Str, default: "starttls", help: "mailtls: starttls (port 587), tls (465) or plain (25, no AUTH)" },
    OptionSpec { name: "smtp_user", kind: Kind::Str, default: "", help: "mailtls: SMTP AUTH user" },
    OptionSpec { name: "smtp_password_file", kind: Kind::Str, default: "", help: "mailtls: file holding the SMTP AUTH password" },
    OptionSpec { name: "tls_ca_file", kind: Kind::Str, default: "", help: "mailtls: extra CA certificates (PEM) trusted for the SMTP relay" },
    OptionSpec { name: "max_destinations_per_record", kind: Kind::Int, default: "4", help: "mailtls: destinations taken from one TLSRPT record (the first ones); the rest are logged and dropped, so a record listing hundreds cannot make one report hundreds of deliveries" },
    OptionSpec { name: "max_records_per_domain", kind: Kind::Int, default: "4", help: "mailtls: distinct TLSRPT records of one domain and day whose destinations are used (a TTL-0 record that changes on every lookup); reports of further records are kept and shown by tlsrptctl, and go only where the destination maps send them" },
    OptionSpec { name: "http_ca_file", kind: Kind::Str, default: "", help: "mailtls: extra CA certificates (PEM) trusted for HTTPS uploads (default: the system's roots only)" },
    OptionSpec { name: "http_allow_private_addresses", kind: Kind::Int, default: "0", help: "mailtls: let HTTPS uploads connect to loopback, private, link-local, unique-local and other non-global addresses (1, for labs and tests); by default a rua=https: destination cannot reach internal services" },
];

pub const SPEC: ProgramSpec = ProgramSpec {
    name: "tlsrpt-reportd",
    section: "tlsrpt_reportd",
    env_prefix: "TLSRPT_REPORTD_",
    default_config_file: "/etc/tlsrpt/reportd.cfg",
    options: &OPTIONS,
    ignored: &[],
};

/// Exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    pub const DATABASE: i32 = 3;
}

const ABOUT: &str = "Make the daily TLSRPT reports (RFC 8460) and deliver them";

const LONG_ABOUT: &str = "\
Every UTC day, fetch the previous day's counters from each configured fetcher \
(tlsrpt-fetcher, locally or over ssh), add them up per domain, make one RFC 8460 \
report per domain and TLSRPT record, and deliver it to the record's rua= \
destinations: by mail (DKIM-signed when a key is configured), by HTTPS POST, or \
into a directory. A drop-in replacement for the reportd of sys4's \
tlsrpt-reporter: same options, config file, environment variables and database.

Every delivery attempt is recorded before it starts and after it ends, so a \
report reaches each destination once even if the daemon is killed. Deliveries \
are spread over spread_out_delivery seconds and failed ones retried with \
backoff for 24 hours.

Every option can also be set as TLSRPT_REPORTD_<NAME> in the environment or in \
the [tlsrpt_reportd] section of the config file; the command line wins over the \
environment, which wins over the file.";

const AFTER_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  finish the current delivery, store what is fetched, exit 0
  SIGHUP           reopen the log file (after log rotation)

Exit status: 0 clean shutdown, 2 configuration error, 3 database error.

Report mail must not be counted in the next report, or two sites exchange
reports forever: send it through a Postfix transport without TLSRPT logging
(see README, \"Postfix setup for report mail\").

Example:
  tlsrpt-reportd --dbname /var/lib/tlsrpt/reportd.sqlite \\
    --fetchers 'tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite' \\
    --organization_name 'Example Inc.' --contact_info tlsrpt@example.com \\
    --sender_address tlsrpt-noreply@example.com";

pub fn command() -> Command {
    add_options(
        Command::new("tlsrpt-reportd")
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .after_long_help(AFTER_HELP),
        &SPEC,
    )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let settings = match super::start(&SPEC, "tlsrpt_reportd", matches) {
        Ok(s) => s,
        Err(code) => return code,
    };
    log::info!("TLSRPT reportd starting");
    // Leaked: it lives as long as the process, and the probe threads need it.
    let clock: &'static dyn Clock = match mailtls_common::clock::from_env() {
        Ok(c) => Box::leak(c),
        Err(e) => {
            log::error!("{e}");
            return exit::USAGE;
        }
    };
    if std::env::var_os(mailtls_common::clock::TEST_CLOCK_ENV).is_some() {
        log::warn!("using a test clock that started at {}", clock.now());
    }
    let (config, deliverer) = match config_from(&settings) {
        Ok(c) => c,
        Err(e) => {
            log::error!("setup error: {e}");
            return exit::USAGE;
        }
    };
    let _pid = PidFile::create(settings.get_str("pidfilename"));
    probe_fetchers(&config, clock);
    let db = match ReportdDb::open(&config.dbname) {
        Ok(db) => db,
        Err(e) => {
            log::error!("database {}: {e}", config.dbname.display());
            return exit::DATABASE;
        }
    };
    log::info!("database {} looks OK", config.dbname.display());
    let mut reportd = Reportd::new(config, db, deliverer, clock);
    let stopper = reportd.stopper();
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return exit::USAGE;
        }
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                mailtls_common::logging::reopen();
            } else {
                log::info!("caught signal {signal}, cleaning up");
                stopper.stop();
            }
        }
    });
    match reportd.run() {
        Ok(()) => {
            log::info!("process terminates with exit code 0");
            exit::OK
        }
        Err(e) => {
            log::error!("{e}; process terminates with exit code {}", exit::DATABASE);
            exit::DATABASE
        }
    }
}

/// Upstream's start-up test of each fetcher (day 1999-01-01): problems are
/// logged, not fatal, because a remote collector may come up later. The
/// tests run in the background (upstream waits up to 30 s for each), so a
/// hung fetcher does not hold up the start.
fn probe_fetchers(config: &ReportdConfig, clock: &'static dyn Clock) {
    for (index, command) in config.fetchers.iter().enumerate() {
        let (index, command) = (index + 1, command.clone());
        let max_timediff = config.max_collectd_timediff;
        std::thread::spawn(move || {
            let findings = Fetcher::new(&command)
                .map(|f| f.probe(&|| clock.now(), max_timediff))
                .unwrap_or_else(|| vec!["empty command".into()]);
            if findings.is_empty() {
                log::info!("fetcher {index} `{command}` answers as expected");
            }
            for finding in findings {
                log::error!("test of fetcher {index} `{command}` failed: {finding}");
            }
        });
    }
}

fn non_empty(settings: &Settings, name: &str) -> Option<String> {
    let value = settings.get_str(name);
    (!value.is_empty()).then(|| value.to_string())
}

fn seconds(settings: &Settings, name: &str) -> Duration {
    Duration::from_secs(settings.get_int(name).max(0) as u64)
}

/// Checks the settings and builds everything that can fail at start.
pub fn config_from(settings: &Settings) -> Result<(ReportdConfig, Deliverer), String> {
    check_options(
        |name| settings.get_int(name),
        |name| settings.get_str(name).to_string(),
    )?;
    if settings.get_int("debug_db") != 0 {
        log::warn!(
            "debug_db is accepted for compatibility and has no effect; use log_level = debug"
        );
    }
    let dbname = non_empty(settings, "dbname").ok_or(
        "no database configured: set dbname=/var/lib/tlsrpt/reportd.sqlite (option --dbname, TLSRPT_REPORTD_DBNAME or [tlsrpt_reportd] dbname)",
    )?;
    let contact_info = settings.get_str("contact_info");
    let submitter = submitter_domain(contact_info).map_err(|e| {
        format!("{e} (set contact_info to the address where report receivers can reach you, e.g. tlsrpt@example.com)")
    })?;
    let sender_address = settings.get_str("sender_address").to_string();
    if sender_address.is_empty() {
        return Err("no sender_address configured: report mail needs a From address, e.g. sender_address = tlsrpt-noreply@example.com".into());
    }
    let organization_name = settings.get_str("organization_name").to_string();
    if organization_name.is_empty() {
        log::warn!("organization_name is empty; RFC 8460 section 4.4 asks for the name of the reporting organization");
    }
    let (keep_days, warning) = effective_keep_days(settings.get_int("keep_days"));
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let map_path = |name: &str| non_empty(settings, name).map(PathBuf::from);
    let (record_map, mail_map, http_map) = (
        map_path("tlsrpt_record_map"),
        map_path("mail_destination_map"),
        map_path("http_upload_map"),
    );
    let maps = DestinationMaps::from_files(
        record_map.as_deref(),
        mail_map.as_deref(),
        http_map.as_deref(),
    )
    .map_err(|e| e.to_string())?;

    let ca_file = map_path("tls_ca_file");
    let trust = || TrustAnchors::load(ca_file.as_deref()).map_err(|e| e.to_string());
    let http_ca_file = map_path("http_ca_file");
    let sendmail_timeout = seconds(settings, "sendmail_timeout");
    let mail = match non_empty(settings, "smtp_relay") {
        None => MailTransport::Sendmail(
            Sendmail::new(settings.get_str("sendmail_script"), sendmail_timeout)
                .map_err(|e| e.to_string())?,
        ),
        Some(relay) => MailTransport::Smtp(super::smtp_transport(
            settings,
            &relay,
            sendmail_timeout,
            &trust()?,
        )?),
    };
    let http_timeout = seconds(settings, "http_timeout");
    let http = if settings.source("http_script") == Source::Def {
        HttpTransport::Native(HttpsPost::new(
            http_timeout,
            &TrustAnchors::load(http_ca_file.as_deref()).map_err(|e| e.to_string())?,
            settings.get_int("http_allow_private_addresses") != 0,
        ))
    } else {
        HttpTransport::Script(
            HttpScript::new(settings.get_str("http_script"), http_timeout)
                .map_err(|e| e.to_string())?,
        )
    };
    let dkim = match non_empty(settings, "dkim_key_file") {
        None => {
            log::warn!("report mail is not DKIM-signed (no dkim_key_file): RFC 8460 section 3 tells receivers to ignore unsigned reports unless your MTA signs them");
            None
        }
        Some(key_file) => {
            let domain = match non_empty(settings, "dkim_domain") {
                Some(domain) => domain,
                None => sender_address
                    .rsplit_once('@')
                    .map(|(_, domain)| domain.to_string())
                    .ok_or("dkim_domain is not set and sender_address has no domain")?,
            };
            let signer = DkimSigner::from_key_file(
                Path::new(&key_file),
                settings.get_str("dkim_selector"),
                &domain,
            )
            .map_err(|e| e.to_string())?;
            log::info!(
                "signing report mail as {} ({}); publish: {} TXT \"{}\"",
                signer.dns_name(),
                signer.algorithm(),
                signer.dns_name(),
                signer.dns_record()
            );
            Some(signer)
        }
    };
    let explicit = |name: &str| settings.source(name) != Source::Def;
    let delivery_retry = if [
        "max_retries_delivery",
        "min_wait_delivery",
        "max_wait_delivery",
    ]
    .iter()
    .any(|name| explicit(name))
    {
        DeliveryRetry::Fixed {
            max_retries: settings.get_int("max_retries_delivery") as u64,
            min_wait: settings.get_int("min_wait_delivery") as u64,
            max_wait: settings.get_int("max_wait_delivery") as u64,
        }
    } else {
        DeliveryRetry::default()
    };
    let retry = |kind: &str| FetchRetry {
        max_retries: settings.get_int(&format!("max_retries_{kind}")),
        min_wait: settings.get_int(&format!("min_wait_{kind}")) as u64,
        max_wait: settings.get_int(&format!("max_wait_{kind}")) as u64,
    };
    let organization = ReportingOrganization {
        name: organization_name.clone(),
        contact_info: contact_info.to_string(),
    };
    let debug_send_file_dest = map_path("debug_send_file_dest");
    let config = ReportdConfig {
        dbname: PathBuf::from(dbname),
        fetchers: split_fetchers(settings.get_str("fetchers")),
        fetcher_bulk: settings.get_int("fetcher_bulk") != 0,
        organization,
        submitter: submitter.clone(),
        sender_address: sender_address.clone(),
        keep_days,
        compression_level: settings.get_int("compression_level") as i32,
        debug_send_mail_dest: non_empty(settings, "debug_send_mail_dest"),
        debug_send_http_dest: non_empty(settings, "debug_send_http_dest"),
        debug_send_file_dest: debug_send_file_dest.clone(),
        maps,
        caps: caps(settings)?,
        spread_out_delivery: u32::try_from(settings.get_int("spread_out_delivery"))
            .unwrap_or(u32::MAX),
        interval_main_loop: seconds(settings, "interval_main_loop"),
        fetcher_timeout: seconds(settings, "max_collectd_timeout"),
        max_collectd_timediff: seconds(settings, "max_collectd_timediff"),
        delivery_retry,
        domainlist_retry: retry("domainlist"),
        domaindetails_retry: retry("domaindetails"),
    };
    let deliverer = Deliverer {
        organization_name,
        submitter,
        sender_address,
        compression_level: config.compression_level,
        mail,
        dkim,
        http,
        debug_send_mail_dest: config.debug_send_mail_dest.clone(),
        debug_send_http_dest: config.debug_send_http_dest.clone(),
        debug_send_file_dest,
    };
    Ok((config, deliverer))
}

/// The amplification limits (`max_destinations_per_record`,
/// `max_records_per_domain`), each at least 1.
pub fn caps(settings: &Settings) -> Result<Caps, String> {
    let at_least_one = |name: &str| {
        let value = settings.get_int(name);
        usize::try_from(value)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| format!("{name} must be at least 1, not {value}"))
    };
    Ok(Caps {
        destinations_per_record: at_least_one("max_destinations_per_record")?,
        records_per_domain: at_least_one("max_records_per_domain")?,
    })
}
