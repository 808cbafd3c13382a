//! `tlsrpt-reportd` / `mailtls reportd`: options as upstream (plus DKIM,
//! SMTP relay and HTTPS settings), start-up checks, then
//! [`tlsrpt_reportd::daemon::Reportd::run`].

use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};

use clap::{ArgMatches, Command};
use mailtls_common::clock::Clock;
use mailtls_common::config::{add_options, listen_address, seconds, ProgramSpec, Source};
use mailtls_common::pidfile::PidFile;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tlsrpt_delivery::{
    DkimSigner, HttpScript, HttpTransport, HttpsPost, MailTransport, Sendmail, TrustAnchors,
};
use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::report::{submitter_domain, ReportingOrganization};
use tlsrpt_reportd::config::{
    check_options, effective_keep_days, split_fetchers, FetchRetry, ReportdConfig, ReportdOptions,
};
use tlsrpt_reportd::daemon::Reportd;
use tlsrpt_reportd::deliver::Deliverer;
use tlsrpt_reportd::fetch::{shown_command, Fetcher};
use tlsrpt_reportd::reports::Caps;
use tlsrpt_reportd::schedule::DeliveryRetry;
use tlsrpt_reportd_db::{DbName, ReportdDb};

pub const SPEC: ProgramSpec = ProgramSpec {
    name: "tlsrpt-reportd",
    section: "tlsrpt_reportd",
    env_prefix: "TLSRPT_REPORTD_",
    default_config_file: "/etc/tlsrpt/reportd.cfg",
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

With dbname = postgresql://USER@HOST/DB (and password_file), several report \
daemons on different hosts share their state: the first to start works, the \
others stand by and take over within interval_main_loop seconds when it stops \
or dies; an attempt it left unfinished is made again once its time limit has \
passed.

Every option can also be set as TLSRPT_REPORTD_<NAME> in the environment or in \
the [tlsrpt_reportd] section of the config file; the command line wins over the \
environment, which wins over the file.";

const AFTER_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  finish the current delivery, store what is fetched, exit 0
  SIGHUP           reopen the log file (after log rotation)

Exit status: 0 clean shutdown, 2 configuration error, 3 database error (a \
SQLite dbname; a PostgreSQL one out of reach is waited for).

Report mail must not be counted in the next report, or two sites exchange
reports forever: send it through a Postfix transport without TLSRPT logging
(see docs/tlsrpt.md, \"Postfix setup for report mail\").

Example:
  tlsrpt-reportd --dbname /var/lib/tlsrpt/reportd.sqlite \\
    --fetchers 'tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite' \\
    --organization_name 'Example Inc.' --contact_info tlsrpt@example.com \\
    --sender_address tlsrpt-noreply@example.com";

pub fn command() -> Command {
    add_options::<ReportdOptions>(
        Command::new("tlsrpt-reportd")
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .after_long_help(AFTER_HELP),
        &SPEC,
    )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let options = match super::start(&SPEC, "tlsrpt_reportd", matches, |o: &ReportdOptions| {
        (o.log_level.as_str(), o.logfilename.as_str())
    }) {
        Ok(options) => options,
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
    let (config, deliverer) = match config_from(&options) {
        Ok(c) => c,
        Err(e) => {
            log::error!("setup error: {e:#}");
            return exit::USAGE;
        }
    };
    if deliverer.dkim.is_none() {
        log::warn!("report mail is not DKIM-signed (no dkim_key_file): RFC 8460 section 3 tells receivers to ignore unsigned reports unless your MTA signs them");
    }
    let _pid = PidFile::create(&options.pidfilename);
    probe_fetchers(&config, clock);
    let db = match open_db(&config) {
        Ok(Some(db)) => db,
        Ok(None) => {
            log::info!(
                "stopped before the database could be reached; process terminates with exit code 0"
            );
            return exit::OK;
        }
        Err(e) => {
            log::error!("database {}: {e}", config.dbname.shown());
            return exit::DATABASE;
        }
    };
    log::info!("database {} looks OK", config.dbname.shown());
    let (metrics_listen, metrics_limits) = (config.metrics_listen, config.metrics_limits);
    let mut reportd = Reportd::new(config, db, deliverer, clock);
    if let Some(listen) = metrics_listen {
        let metrics = reportd.metrics();
        if let Err(e) =
            mailtls_common::metrics::spawn(listen, metrics_limits, move || Ok(metrics.render()))
        {
            log::error!("cannot listen for metrics on {listen} (metrics_listen): {e}");
            return exit::USAGE;
        }
    }
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

/// Opens the state. A SQLite file that cannot be used is fatal. A
/// PostgreSQL server that cannot be reached is not (a standby host may well
/// start before the database): the daemon tries again every
/// `interval_main_loop` seconds until it can, or until SIGTERM/SIGINT
/// (`Ok(None)`).
fn open_db(config: &ReportdConfig) -> Result<Option<ReportdDb>, tlsrpt_reportd_db::DbError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let DbName::Postgres(_) = &config.dbname else {
        return ReportdDb::open(&config.dbname).map(Some);
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            log::warn!("cannot handle signal {signal} while waiting for the database: {e}");
        }
    }
    let every = config.interval_main_loop;
    loop {
        match ReportdDb::open(&config.dbname) {
            Ok(db) => return Ok(Some(db)),
            Err(e) => log::error!(
                "{e}; trying again every {} s (the daemon starts its work once it can reach the database)",
                every.as_secs()
            ),
        }
        let deadline = std::time::Instant::now() + every;
        while std::time::Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
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
                log::info!(
                    "fetcher {index} `{}` answers as expected",
                    shown_command(&command)
                );
            }
            for finding in findings {
                log::error!(
                    "test of fetcher {index} `{}` failed: {finding}",
                    shown_command(&command)
                );
            }
        });
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// Checks the options and builds everything that can fail at start.
pub fn config_from(o: &ReportdOptions) -> anyhow::Result<(ReportdConfig, Deliverer)> {
    check_options(o).map_err(anyhow::Error::msg)?;
    if o.debug_db != 0 {
        log::warn!(
            "debug_db is accepted for compatibility and has no effect; use log_level = debug"
        );
    }
    let dbname = non_empty(&o.dbname).context(
        "no database configured: set dbname=/var/lib/tlsrpt/reportd.sqlite (option --dbname, TLSRPT_REPORTD_DBNAME or [tlsrpt_reportd] dbname)",
    )?;
    let contact_info = o.contact_info.as_str();
    let submitter = submitter_domain(contact_info).map_err(|e| {
        anyhow!("{e} (set contact_info to the address where report receivers can reach you, e.g. tlsrpt@example.com)")
    })?;
    let sender_address = o.sender_address.clone();
    if sender_address.is_empty() {
        bail!("no sender_address configured: report mail needs a From address, e.g. sender_address = tlsrpt-noreply@example.com");
    }
    let organization_name = o.organization_name.clone();
    if organization_name.is_empty() {
        log::warn!("organization_name is empty; RFC 8460 section 4.4 asks for the name of the reporting organization");
    }
    let (keep_days, warning) = effective_keep_days(o.keep_days);
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let map_path = |value: &str| non_empty(value).map(PathBuf::from);
    let (record_map, mail_map, http_map) = (
        map_path(&o.tlsrpt_record_map),
        map_path(&o.mail_destination_map),
        map_path(&o.http_upload_map),
    );
    let maps = DestinationMaps::from_files(
        record_map.as_deref(),
        mail_map.as_deref(),
        http_map.as_deref(),
    )?;

    let (mail, http) = transports(o)?;
    let dkim = dkim_signer(o)?;
    let retry = |max_retries: i64, min_wait: i64, max_wait: i64| FetchRetry {
        max_retries,
        min_wait: min_wait as u64,
        max_wait: max_wait as u64,
    };
    let organization = ReportingOrganization {
        name: organization_name.clone(),
        contact_info: contact_info.to_string(),
    };
    let debug_send_file_dest = map_path(&o.debug_send_file_dest);
    let config = ReportdConfig {
        dbname: DbName::parse(&dbname, map_path(&o.password_file).as_deref())?,
        fetchers: split_fetchers(&o.fetchers),
        fetcher_bulk: o.fetcher_bulk != 0,
        organization,
        submitter: submitter.clone(),
        sender_address: sender_address.clone(),
        keep_days,
        compression_level: o.compression_level as i32,
        debug_send_mail_dest: non_empty(&o.debug_send_mail_dest),
        debug_send_http_dest: non_empty(&o.debug_send_http_dest),
        debug_send_file_dest: debug_send_file_dest.clone(),
        maps,
        caps: caps(o.max_destinations_per_record, o.max_records_per_domain)?,
        spread_out_delivery: u32::try_from(o.spread_out_delivery).unwrap_or(u32::MAX),
        interval_main_loop: seconds("interval_main_loop", o.interval_main_loop)?,
        fetcher_timeout: seconds("max_collectd_timeout", o.max_collectd_timeout)?,
        max_collectd_timediff: seconds("max_collectd_timediff", o.max_collectd_timediff)?,
        delivery_retry: delivery_retry(o),
        domainlist_retry: retry(
            o.max_retries_domainlist,
            o.min_wait_domainlist,
            o.max_wait_domainlist,
        ),
        domaindetails_retry: retry(
            o.max_retries_domaindetails,
            o.min_wait_domaindetails,
            o.max_wait_domaindetails,
        ),
        metrics_listen: listen_address("metrics_listen", &o.metrics_listen)?,
        metrics_limits: mailtls_common::config::metrics_limits(
            o.metrics_max_connections,
            o.metrics_request_timeout,
        )?,
        attempt_limit: seconds("sendmail_timeout", o.sendmail_timeout)?
            .max(seconds("http_timeout", o.http_timeout)?),
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

/// How report mail is submitted (`sendmail_script`, or `smtp_relay` and
/// its options) and reports are uploaded (natively, unless `http_script`
/// is set).
fn transports(o: &ReportdOptions) -> anyhow::Result<(MailTransport, HttpTransport)> {
    let ca_file = non_empty(&o.tls_ca_file).map(PathBuf::from);
    let sendmail_timeout = seconds("sendmail_timeout", o.sendmail_timeout)?;
    let mail = match o.smtp_relay.as_str() {
        "" => MailTransport::Sendmail(Sendmail::new(&o.sendmail_script, sendmail_timeout)?),
        relay => MailTransport::Smtp(super::smtp_transport(
            &super::SmtpOptions {
                relay,
                security: &o.smtp_security,
                user: &o.smtp_user,
                password_file: &o.smtp_password_file,
            },
            sendmail_timeout,
            &TrustAnchors::load(ca_file.as_deref())?,
        )?),
    };
    let http_timeout = seconds("http_timeout", o.http_timeout)?;
    let http = if o.sources.http_script == Source::Def {
        let http_ca_file = non_empty(&o.http_ca_file).map(PathBuf::from);
        HttpTransport::Native(HttpsPost::new(
            http_timeout,
            &TrustAnchors::load(http_ca_file.as_deref())?,
            o.http_allow_private_addresses != 0,
        ))
    } else {
        HttpTransport::Script(HttpScript::new(&o.http_script, http_timeout)?)
    };
    Ok((mail, http))
}

/// The DKIM signer of report mail (RFC 8460 section 3), if a key is set;
/// its TXT record to publish is logged.
fn dkim_signer(o: &ReportdOptions) -> anyhow::Result<Option<DkimSigner>> {
    let Some(key_file) = non_empty(&o.dkim_key_file) else {
        return Ok(None);
    };
    let domain = match non_empty(&o.dkim_domain) {
        Some(domain) => domain,
        None => o
            .sender_address
            .rsplit_once('@')
            .map(|(_, domain)| domain.to_string())
            .context("dkim_domain is not set and sender_address has no domain")?,
    };
    let signer = DkimSigner::from_key_file(Path::new(&key_file), &o.dkim_selector, &domain)?;
    log::info!(
        "signing report mail as {} ({}); publish: {} TXT \"{}\"",
        signer.dns_name(),
        signer.algorithm(),
        signer.dns_name(),
        signer.dns_record()
    );
    Ok(Some(signer))
}

/// Upstream's fixed retry rule when any of its three options is set,
/// otherwise backoff for 24 hours (RFC 8460 section 5.5). check_options
/// made the counts and waits non-negative.
fn delivery_retry(o: &ReportdOptions) -> DeliveryRetry {
    let set = [
        o.sources.max_retries_delivery,
        o.sources.min_wait_delivery,
        o.sources.max_wait_delivery,
    ];
    if set.iter().any(|source| *source != Source::Def) {
        DeliveryRetry::Fixed {
            max_retries: o.max_retries_delivery as u64,
            min_wait: o.min_wait_delivery as u64,
            max_wait: o.max_wait_delivery as u64,
        }
    } else {
        DeliveryRetry::default()
    }
}

/// The amplification limits (`max_destinations_per_record`,
/// `max_records_per_domain`), each at least 1.
pub fn caps(destinations_per_record: i64, records_per_domain: i64) -> anyhow::Result<Caps> {
    let at_least_one = |name: &str, value: i64| {
        usize::try_from(value)
            .ok()
            .filter(|v| *v >= 1)
            .with_context(|| format!("{name} must be at least 1, not {value}"))
    };
    Ok(Caps {
        destinations_per_record: at_least_one(
            "max_destinations_per_record",
            destinations_per_record,
        )?,
        records_per_domain: at_least_one("max_records_per_domain", records_per_domain)?,
    })
}
