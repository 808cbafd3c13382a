//! `mailtls run`: everything built so far, on embedded SQLite, with a default
//! configuration in a local directory and no root needed: the TLSRPT
//! collector, and the report daemon writing the daily reports into a local
//! directory (nothing is sent anywhere). Prints where the socket is and how
//! to point Postfix at it.

use anyhow::Context;
use std::path::Path;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use mailtls_common::config::ProgramOptions;
use tlsrpt_collectd::CollectdConfig;
use tlsrpt_reportd::config::ReportdOptions;
use tlsrpt_reportd::daemon::Reportd;
use tlsrpt_reportd_db::ReportdDb;

use super::collectd::CollectdOptions;

pub fn command() -> Command {
    Command::new("run")
        .about(
            "Start everything with a default configuration in a local directory (no root needed)",
        )
        .long_about(
            "Start the mailtls services with a default configuration: the TLSRPT collector \
             listening on DIR/tlsrpt-collectd.socket and counting into DIR/collectd.sqlite \
             (embedded SQLite), and the report daemon, which after each UTC midnight makes \
             the RFC 8460 reports of the completed day and writes them into DIR/reports \
             instead of sending them. Prints where everything is and how to point Postfix \
             at it; stops cleanly on Ctrl-C or SIGTERM. For production, run the programs \
             (tlsrpt-collectd, tlsrpt-reportd, ...) with their own configuration files. \
             The PostTLS web pages (admin dashboard) listen on --web with their \
             database in DIR; the PostTLS worker needs a Postfix instance and is \
             started separately (mailtls posttls worker). The policy server \
             (mailtls policyd) answers Postfix's smtp_tls_policy_maps on --policyd, \
             asking /etc/resolv.conf's name servers, its cache in DIR/policyd.sqlite.",
        )
        .arg(
            Arg::new("dir")
                .long("dir")
                .value_name("DIR")
                .default_value("run")
                .help("Directory for the socket, databases and log (created if missing)"),
        )
        .arg(
            Arg::new("web")
                .long("web")
                .value_name("ADDRESS:PORT")
                .default_value("127.0.0.1:8025")
                .help("Where the PostTLS web pages (admin dashboard, confirmation pages) listen"),
        )
        .arg(
            Arg::new("policyd")
                .long("policyd")
                .value_name("ADDRESS:PORT")
                .default_value("127.0.0.1:8461")
                .help("Where the MTA-STS/DANE policy server (mailtls policyd) listens for Postfix's socketmap lookups"),
        )
        .arg(
            Arg::new("log_level")
                .long("log_level")
                .value_name("LEVEL")
                .default_value("info")
                .help("Log level: debug, info, warn, error"),
        )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let dir = matches.get_one::<String>("dir").expect("default");
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("mailtls run: cannot create directory {dir}: {e}");
        return 1;
    }
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mailtls run: {dir}: {e}");
            return 1;
        }
    };
    let level = match mailtls_common::logging::parse_level(
        matches.get_one::<String>("log_level").expect("default"),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mailtls run: {e}");
            return 2;
        }
    };
    let log_file = dir.join("mailtls.log");
    if let Err(e) = mailtls_common::logging::init("mailtls", &log_file.to_string_lossy(), level) {
        eprintln!("mailtls run: {e}");
        return 1;
    }
    let config = match default_config(&dir) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mailtls run: collector: {e:#}");
            return 2;
        }
    };
    let reports = dir.join("reports");
    let reportd = match start_reportd(&dir, &config, &reports) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailtls run: report daemon: {e:#}");
            return 1;
        }
    };
    let policyd_listen = matches
        .get_one::<String>("policyd")
        .expect("default")
        .clone();
    let policyd = match start_policyd(&dir, &policyd_listen) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mailtls run: policy server: {e:#}");
            return 1;
        }
    };
    let web_listen = matches.get_one::<String>("web").expect("default").clone();
    let tlsrpt = tlsrpt_stats::Sources {
        collector: Some(tlsrpt_stats::CollectorSource::Sqlite(
            sqlite_store(&config).path.clone(),
        )),
        reportd: Some(tlsrpt_reportd_db::DbName::Sqlite(
            dir.join("reportd.sqlite"),
        )),
    };
    // The one /metrics of this process (the web pages') carries the
    // collector's and the report daemon's metrics too.
    let collector_metrics = std::sync::Arc::new(tlsrpt_collectd::metrics::CollectdMetrics::new());
    let more_metrics = {
        let collector = std::sync::Arc::clone(&collector_metrics);
        let reportd = std::sync::Arc::clone(&reportd.2);
        mailtls_web::MoreMetrics(vec![
            std::sync::Arc::new(move || collector.render()),
            std::sync::Arc::new(move || reportd.render()),
        ])
    };
    let web = match start_web(&dir, &web_listen, tlsrpt, more_metrics) {
        Ok(web) => web,
        Err(e) => {
            eprintln!("mailtls run: PostTLS web pages: {e:#}");
            return 1;
        }
    };
    print_banner(
        &dir,
        &config,
        &log_file,
        &reports,
        &web_listen,
        &policyd_listen,
    );
    let clock = mailtls_common::clock::SystemClock;
    let code = tlsrpt_collectd::run_counting_into(config, &clock, collector_metrics);
    reportd.0.stop();
    let _ = reportd.1.join();
    // The web pages and the policy server stop on the same SIGTERM/SIGINT.
    let _ = web.join();
    let _ = policyd.join();
    code
}

/// The policy server on a thread with the defaults but for its listener
/// (plain TCP on `listen`) and its cache (DIR/policyd.sqlite).
fn start_policyd(dir: &Path, listen: &str) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut options = super::policyd::PolicydOptions::defaults();
    options.listen = format!("inet:{listen}");
    options.database = dir.join("policyd.sqlite").display().to_string();
    let config = super::policyd::config_from(&options)?;
    // Its listener is bound on its own runtime: a port in use would only be
    // logged there, so it is tried here first.
    std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    // The cache is made now, so that the web pages find it.
    policyd_store::PolicyDb::open(
        config.database.as_ref().expect("set above"),
        policyd_store::Access::Writer,
    )?;
    std::thread::Builder::new()
        .name("policyd".into())
        .spawn(move || {
            let clock = Box::new(mailtls_common::clock::SystemClock);
            if let Err(e) = policyd_daemon::run(config, clock, super::policyd::stop_signal()) {
                log::error!("policy server stopped: {e}");
            }
        })
        .map_err(anyhow::Error::from)
}

/// The PostTLS web pages on a thread, on DIR/posttls.sqlite, plain HTTP
/// on loopback. (The PostTLS worker needs a Postfix queue and its
/// privileges, so it is not started here.)
fn start_web(
    dir: &Path,
    listen: &str,
    tlsrpt: tlsrpt_stats::Sources,
    more_metrics: mailtls_web::MoreMetrics,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let key = posttls_token::SecretKey::load_or_create(&dir.join("posttls-secret.key"))?;
    let host = mailtls_common::host_name();
    let config = mailtls_web::WebConfig {
        listen: listen.to_string(),
        instance: Some(host.clone()),
        base_url: format!("http://{listen}"),
        organization: format!("mailtls on {host}"),
        secure_cookies: false,
        mandatory_domains: posttls_policy::DomainSet::new(),
        trusted_proxies: Vec::new(),
        tlsrpt,
        policyd: Some(policyd_store::Database::Sqlite(dir.join("policyd.sqlite"))),
        limits: Default::default(),
        more_metrics,
    };
    let store = posttls_store::Database::Sqlite(dir.join("posttls.sqlite"));
    // Checked now, so that a broken database stops the start visibly.
    posttls_store::Store::connect(&store, posttls_store::Access::Web)
        .with_context(|| store.to_string())?;
    std::thread::Builder::new()
        .name("posttls-web".into())
        .spawn(move || {
            if let Err(e) = mailtls_web::serve(config, &store, key) {
                log::error!("PostTLS web pages stopped: {e}");
            }
        })
        .map_err(anyhow::Error::from)
}

/// The report daemon on a thread: fetching from the collector above with
/// our fetcher, every report into `reports`. Returns what stops it, its
/// thread and its metrics.
fn start_reportd(
    dir: &Path,
    collector: &CollectdConfig,
    reports: &Path,
) -> anyhow::Result<(
    tlsrpt_reportd::daemon::Stopper,
    std::thread::JoinHandle<()>,
    std::sync::Arc<tlsrpt_reportd::metrics::ReportdMetrics>,
)> {
    std::fs::create_dir_all(reports).with_context(|| reports.display().to_string())?;
    let exe = std::env::current_exe()?;
    let yesterday = tlsrpt_store::yesterday_path(&sqlite_store(collector).path);
    // Every report goes into the directory.
    let record_map = dir.join("record.map");
    std::fs::write(
        &record_map,
        format!(". REPLACE directory:{}\n", reports.display()),
    )
    .with_context(|| record_map.display().to_string())?;
    let host = mailtls_common::host_name();
    let mut options = ReportdOptions::defaults();
    options.dbname = dir.join("reportd.sqlite").display().to_string();
    options.fetchers = format!(
        "{} fetcher --storage {}",
        exe.display(),
        sqlite_store(collector).url
    );
    options.organization_name = format!("mailtls on {host}");
    options.contact_info = format!("tlsrpt@{host}");
    options.sender_address = options.contact_info.clone();
    options.tlsrpt_record_map = record_map.display().to_string();
    // Reports of a day are written at once, not spread over hours.
    options.spread_out_delivery = 1;
    let (config, deliverer) = super::reportd::config_from(&options)?;
    let db = ReportdDb::open(&config.dbname).with_context(|| config.dbname.shown())?;
    let clock: &'static mailtls_common::clock::SystemClock = &mailtls_common::clock::SystemClock;
    let mut reportd = Reportd::new(config, db, deliverer, clock);
    let stopper = reportd.stopper();
    let metrics = reportd.metrics();
    let handle = std::thread::Builder::new()
        .name("reportd".into())
        .spawn(move || {
            // The collector makes its files as it starts; a fetch before
            // that would fail and wait for its retry (minutes).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !yesterday.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = reportd.run() {
                log::error!("report daemon stopped: {e}");
            }
        })?;
    Ok((stopper, handle, metrics))
}

/// The collector's configuration under `dir`: the defaults with the
/// database, socket and dump file there.
pub fn default_config(dir: &Path) -> anyhow::Result<CollectdConfig> {
    let mut options = CollectdOptions::defaults();
    options.storage = format!("sqlite://{}", dir.join("collectd.sqlite").display());
    options.socketname = dir.join("tlsrpt-collectd.socket").display().to_string();
    options.dump_path_for_invalid_datagram = dir.join("invalid-datagram.bin").display().to_string();
    super::collectd::config_from(&options)
}

/// The SQLite file `mailtls run` counts into ([`default_config`]).
fn sqlite_store(config: &CollectdConfig) -> &tlsrpt_store::StorageUrl {
    config.storage[0]
        .sqlite()
        .expect("mailtls run keeps its counters in a SQLite file")
}

fn print_banner(
    dir: &Path,
    config: &CollectdConfig,
    log_file: &Path,
    reports: &Path,
    web: &str,
    policyd: &str,
) {
    let socket = config.socket.display();
    let storage = sqlite_store(config);
    println!("mailtls is running (Ctrl-C to stop)");
    println!();
    println!("  TLSRPT collector socket   {socket}");
    println!("  TLSRPT database (today)   {}", storage.path.display());
    println!(
        "  completed days            {}",
        tlsrpt_store::yesterday_path(&storage.path).display()
    );
    println!(
        "  daily reports (RFC 8460)  {} (written there, not sent)",
        reports.display()
    );
    println!(
        "  report state              {}",
        dir.join("reportd.sqlite").display()
    );
    println!("  log                       {}", log_file.display());
    println!("  web UI (PostTLS)          http://{web}/admin");
    println!("  web UI (outbound TLS)     http://{web}/admin/tls");
    println!("  policy server (MTA-STS)   {policyd} (socketmap)");
    println!();
    println!("Point Postfix (>= 3.10) at the collector, in main.cf:");
    println!("  smtp_tlsrpt_enable = yes");
    println!("  smtp_tlsrpt_socket_name = {socket}");
    println!(
        "(Postfix's smtp processes need write access to {}.)",
        dir.display()
    );
    println!("Have Postfix ask the policy server for MTA-STS and DANE policies:");
    println!("  smtp_tls_policy_maps = socketmap:inet:{policyd}:postfix");
    println!();
    println!("Send test traffic:    mailtls loadgen --socket {socket} --count 1000 --rate 1000");
    println!(
        "Read a completed day: tlsrpt-fetcher --storage {} YYYY-MM-DD",
        storage.url
    );
    println!(
        "Report status:        tlsrptctl status --dbname {}",
        dir.join("reportd.sqlite").display()
    );
    println!(
        "Web UI admin:         mailtls posttls adduser --database {} NAME   (password on standard input)",
        dir.join("posttls.sqlite").display()
    );
    println!();
}
