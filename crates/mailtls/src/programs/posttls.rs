//! `mailtls posttls` / `posttls`: mandatory outbound TLS with the sender in
//! control. `scan` makes one pass over the queue (for cron, with a lock
//! against overlapping runs); `worker` scans every `scan_interval` seconds.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, Command};
use mailtls_common::config::{add_options, listen_address, seconds, ProgramSpec};
use mailtls_common::pidfile::PidFile;
use posttls_actions::{postfix_version, Executor, Listeners, ReleaseMethod, ReleaseRoute};
use posttls_notify::Templates;
use posttls_policy::{DomainSet, OwnSenders};
use posttls_postfix::Postfix;
use posttls_scanner::{Mailer, MandatoryPolicy, ScanConfig, ScanReport, Scanner};
use posttls_store::{Access, Database, Store};
use posttls_token::SecretKey;
use tlsrpt_delivery::{MailTransport, Outcome, Sendmail, TrustAnchors};

mailtls_common::options! {
    /// PostTLS's options (`posttls scan`, `worker`, `web` and `adduser`).
    pub struct PosttlsOptions, sources PosttlsSources {
        /// Database of messages, notifications, actions and the audit log: a SQLite file, or
        /// postgresql://USER@HOST/DATABASE for a fleet (one web process, a worker per
        /// instance; see README, "PostTLS on PostgreSQL")
        database: String = "/var/lib/posttls/posttls.sqlite",
        /// File whose first line is the password of a postgresql:// database (so that it need
        /// not be in the URL); empty: none
        password_file: String = "",
        /// Name of this Postfix instance, bound into every link (default: the host name). The
        /// web pages accept only its links; on PostgreSQL, unset, they accept every instance's
        instance: String = "",
        /// Postfix configuration directory (-c) of the instance to watch; empty: the default
        /// instance
        postfix_config_dir: String = "",
        /// Where postqueue, postcat, postsuper and sendmail are
        postfix_command_dir: String = "/usr/sbin",
        /// Seconds a Postfix command may take
        command_timeout: i64 = "30",
        /// Comma-separated sender domains of our organisation (exact, or .suffix for
        /// subdomains). Only their senders are told, and only for mail submitted locally or
        /// with SMTP AUTH
        own_domains: String = "",
        /// Comma-separated recipient domains that are never sent unencrypted (exact or
        /// .suffix); more can be added in the web UI
        mandatory_domains: String = "",
        /// Named in notifications
        organization_name: String = "",
        /// From address of notifications, e.g. postmaster@example.org
        notification_from: String = "",
        /// Command that takes a notification on standard input (split into words, no shell);
        /// unused when smtp_relay is set. Must not depend on the failing TLS: e.g. local
        /// delivery. `-f notification_from` is added unless the command has a -f, so bounces
        /// of notifications go to that address, not to the worker's user (root)
        sendmail_script: String = "sendmail -i -t",
        /// Send notifications by SMTP to HOST or HOST:PORT instead
        smtp_relay: String = "",
        /// starttls (port 587), tls (465) or plain (25, no AUTH)
        smtp_security: String = "starttls",
        /// SMTP AUTH user
        smtp_user: String = "",
        /// File holding the SMTP AUTH password
        smtp_password_file: String = "",
        /// Extra CA certificates (PEM) for the SMTP relay
        tls_ca_file: String = "",
        /// Address of the PostTLS web pages as senders reach them, e.g.
        /// https://posttls.example.org
        base_url: String = "",
        /// Key that signs the links (created, mode 0600, when missing); the web process needs
        /// the same file
        secret_key_file: String = "/var/lib/posttls/secret.key",
        /// Seconds a link in a notification works (default 5 days, Postfix's
        /// maximal_queue_lifetime)
        link_lifetime: i64 = "432000",
        /// Seconds between queue scans of the worker
        scan_interval: i64 = "60",
        /// Seconds between reminders about a message still waiting; 0: no reminders
        reminder_interval: i64 = "14400",
        /// Reminders per message at most (the original reminded every 30 minutes forever)
        max_reminders: i64 = "3",
        /// A message whose waiting recipients are all in mandatory-TLS domains: return
        /// (postsuper -e: it bounces to the sender now), delete (postsuper -d, as the original
        /// PostTLS), or wait (until it expires); the sender is told
        mandatory_policy: String = "return",
        /// Postfix's maximal_queue_lifetime in seconds: a message that leaves the queue this
        /// old expired, and its sender is told
        queue_lifetime: i64 = "432000",
        /// Directory with replacements for the notification templates subject.txt.j2,
        /// notification.txt.j2, notification.html.j2
        template_dir: String = "",
        /// How released recipients' copy leaves: tls_required_header (through
        /// reinject_listener with "TLS-Required: No" added, following the instance's own
        /// routing; Postfix 3.10 or later), content_filter (through release_listener), or auto
        /// (the header where Postfix honours it: 3.10 or later with tls_required_enable = yes)
        release_method: String = "auto",
        /// UNIX-domain socket of the instance's smtpd that sends with opportunistic TLS and
        /// puts what it receives on hold (master.cf service posttls-release; see README);
        /// relative to the queue directory. Released recipients are re-injected there when
        /// release_method is content_filter (not needed with the header)
        release_listener: String = "private/posttls-release",
        /// UNIX-domain socket of the instance's smtpd with the normal (mandatory TLS) path that
        /// puts what it receives on hold (master.cf service posttls-reinject); relative to the
        /// queue directory. When a released message has other pending recipients, their copy is
        /// re-injected there
        reinject_listener: String = "private/posttls-reinject",
        /// Days the audit log is kept; older entries are deleted by the worker (0: kept
        /// forever)
        audit_retention: i64 = "400",
        /// Address of the web pages (confirmation pages and admin dashboard); put a TLS-
        /// terminating proxy in front
        listen: String = "127.0.0.1:8025",
        /// Comma-separated addresses of reverse proxies in front of the web pages whose
        /// X-Forwarded-For names the client (audit log, login throttle); empty: the peer
        /// address
        trusted_proxies: String = "",
        /// Mark the admin session cookie Secure (needs HTTPS in front); 0 only for tests on
        /// plain HTTP
        cookie_secure: i64 = "1",
        /// Connections the web pages serve at once; more wait in the kernel's queue (keep it
        /// below the process's file descriptor limit, 1024 under systemd)
        max_connections: i64 = "512",
        /// Connections of one client (an IPv4 address, an IPv6 /64) at once; more are closed
        /// at once. trusted_proxies have no such limit
        max_connections_per_client: i64 = "16",
        /// Seconds a client has to send a complete request head (also between requests on a
        /// kept-alive connection) before the connection is closed
        request_head_timeout: i64 = "5",
        /// Seconds a request may take, its body and answer included (408 after that)
        request_timeout: i64 = "60",
        /// The TLSRPT collector's database, read by the web pages' Outbound TLS view (its
        /// completed day FILE.yesterday too), or a fleet's postgresql:// collector store;
        /// empty: not shown
        tlsrpt_collector_db: String = "/var/lib/tlsrpt/collectd.sqlite",
        /// File whose first line is the password of a postgresql:// tlsrpt_collector_db
        tlsrpt_collector_password_file: String = "",
        /// The TLSRPT report daemon's database (or postgresql:// state), read by the
        /// Outbound TLS view (the days it fetched, the reports it sent) and written to
        /// resend a report; empty: not shown
        tlsrpt_reportd_db: String = "/var/lib/tlsrpt/reportd.sqlite",
        /// File whose first line is the password of a postgresql:// tlsrpt_reportd_db
        tlsrpt_reportd_password_file: String = "",
        /// Lock that keeps scans from overlapping
        lock_file: String = "/run/posttls/scan.lock",
        /// PID file of the worker
        pidfilename: String = "",
        /// Log file (in addition to standard error); reopened on SIGHUP
        logfilename: String = "",
        /// Log level: debug, info, warn, error, critical, or a number
        log_level: String = "info",
        /// IP:PORT on which `posttls worker` serves Prometheus metrics at /metrics (plain
        /// HTTP, to anyone who can connect: use a loopback address or a firewall), e.g.
        /// 127.0.0.1:9152; empty: none. The web pages serve the same at /metrics to local
        /// clients
        metrics_listen: String = "",
        /// Connections metrics_listen serves at once (further ones wait;
        /// one client address gets a quarter of them, at least one)
        metrics_max_connections: i64 = "8",
        /// Seconds a metrics_listen client has to send its request, and
        /// again to take the answer, before the connection is closed
        metrics_request_timeout: i64 = "5",
    }
}

pub const SPEC: ProgramSpec = ProgramSpec {
    name: "posttls",
    section: "posttls",
    env_prefix: "POSTTLS_",
    default_config_file: "/etc/mailtls/posttls.cfg",
    ignored: &[],
};

const LONG_ABOUT: &str = "\
PostTLS lets a Postfix site require TLS for all outgoing mail while the \
sender stays in control: when a recipient's server cannot do TLS and \
Postfix defers the message, the sender is told (once, plus a few reminders) \
and chooses \"send unencrypted\" or \"delete\" on a confirmation page. \
Recipients in mandatory-TLS domains are never sent unencrypted.

Every option can also be set as POSTTLS_<NAME> in the environment or in the \
[posttls] section of the config file; the command line wins over the \
environment, which wins over the file.";

pub fn command() -> Command {
    let sub = |name: &'static str, about: &'static str| {
        add_options::<PosttlsOptions>(Command::new(name).about(about), &SPEC)
    };
    Command::new("posttls")
        .about("Mandatory outbound TLS with the sender in control")
        .long_about(LONG_ABOUT)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(sub(
            "scan",
            "Carry out queued requests, then one pass over the queue: classify, notify (for cron; locked against overlaps)",
        ))
        .subcommand(sub(
            "worker",
            "Scan every scan_interval seconds until SIGTERM",
        ))
        .subcommands(super::posttls_web::subcommands())
}

pub fn main(matches: &ArgMatches) -> i32 {
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    let options = match super::start(&SPEC, "posttls", sub, |o: &PosttlsOptions| {
        (o.log_level.as_str(), o.logfilename.as_str())
    }) {
        Ok(options) => options,
        Err(code) => return code,
    };
    // The web process needs none of the scanner's settings.
    if let Some(code) = super::posttls_web::run(name, sub, &options) {
        return code;
    }
    let setup = match Setup::from(&options) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e:#}");
            return 2;
        }
    };
    match name {
        "scan" => setup.scan_once(),
        "worker" => setup.worker(),
        _ => unreachable!("clap knows the subcommands"),
    }
}

/// Sends notifications through the configured path.
struct TransportMailer(MailTransport, String);

impl Mailer for TransportMailer {
    fn send(&self, to: &str, message: &[u8]) -> Result<(), String> {
        match self.0.send(&self.1, to, message) {
            Outcome::Delivered(_) => Ok(()),
            Outcome::RetryLater(why) | Outcome::Permanent(why) => Err(why),
        }
    }
}

/// Everything built from the settings.
struct Setup {
    config: ScanConfig,
    postfix: Postfix,
    templates: Templates,
    key: SecretKey,
    mailer: TransportMailer,
    database: Database,
    listeners: Listeners,
    audit_retention: Option<Duration>,
    lock_file: PathBuf,
    pidfilename: String,
    scan_interval: Duration,
    metrics_listen: Option<SocketAddr>,
    metrics_limits: mailtls_common::metrics::Limits,
}

/// The value of option `name`, which must be set; `example` shows how.
/// `command` with `-f FROM` added unless it names an envelope sender:
/// without one, sendmail uses the worker's user, root, and the bounce of a
/// notification lands in root's mailbox.
fn with_envelope_sender(command: &str, from: &str) -> anyhow::Result<String> {
    if from.is_empty() || from.contains(|c: char| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("notification_from {from:?} is not a mail address");
    }
    let names_sender = command
        .split_whitespace()
        .any(|word| word.starts_with("-f") || word.starts_with("-r"));
    Ok(if names_sender {
        command.to_string()
    } else {
        format!("{command} -f {from}")
    })
}

/// The `database` (with `password_file`).
pub(crate) fn database(o: &PosttlsOptions) -> anyhow::Result<Database> {
    let password_file = Some(&o.password_file)
        .filter(|f| !f.is_empty())
        .map(Path::new);
    Database::parse(&o.database, password_file).context("database")
}

fn required(value: &str, name: &str, example: &str) -> anyhow::Result<String> {
    if value.is_empty() {
        bail!("{name} is not set (e.g. {name} = {example}; option --{name}, POSTTLS_{} or [posttls] {name})", name.to_uppercase());
    }
    Ok(value.to_string())
}

impl Setup {
    fn from(o: &PosttlsOptions) -> anyhow::Result<Setup> {
        let own_domains = DomainSet::parse_list(&required(
            &o.own_domains,
            "own_domains",
            "example.org, .example.org",
        )?)
        .context("own_domains")?;
        let mandatory = DomainSet::parse_list(&o.mandatory_domains).context("mandatory_domains")?;
        let notification_from = required(
            &o.notification_from,
            "notification_from",
            "postmaster@example.org",
        )?;
        let base_url = required(&o.base_url, "base_url", "https://posttls.example.org")?;
        let instance = super::posttls_web::instance_name(o);
        let reminder = seconds("reminder_interval", o.reminder_interval)?;
        let config = ScanConfig {
            instance,
            own: OwnSenders {
                domains: own_domains.clone(),
            },
            mandatory,
            // Named in every notification: the first own domain when unset.
            organization: match o.organization_name.as_str() {
                "" => own_domains
                    .entries()
                    .first()
                    .map(|d| d.trim_start_matches('.').to_string())
                    .unwrap_or_default(),
                name => name.to_string(),
            },
            notification_from: notification_from.clone(),
            base_url,
            link_lifetime: seconds("link_lifetime", o.link_lifetime)?,
            reminder_interval: (!reminder.is_zero()).then_some(reminder),
            max_reminders: u32::try_from(o.max_reminders).unwrap_or(0),
            mandatory_policy: MandatoryPolicy::parse(&o.mandatory_policy).with_context(|| {
                format!(
                    "mandatory_policy {:?} is not one of return, delete, wait",
                    o.mandatory_policy
                )
            })?,
            queue_lifetime: seconds("queue_lifetime", o.queue_lifetime)?,
        };
        let config_dir = Some(&o.postfix_config_dir)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let timeout = seconds("command_timeout", o.command_timeout)?;
        let postfix = Postfix::new(config_dir, PathBuf::from(&o.postfix_command_dir), timeout);
        let template_dir = Some(&o.template_dir).filter(|d| !d.is_empty());
        let templates = Templates::load(template_dir.map(Path::new))?;
        let key_file = PathBuf::from(&o.secret_key_file);
        let key = SecretKey::load_or_create(&key_file)?;
        let listeners = Listeners {
            release: release_route(&postfix, o)?,
            keep: listener(&postfix, &o.reinject_listener, "reinject_listener")?,
            timeout,
        };
        let retention = seconds("audit_retention", o.audit_retention)?;
        let transport = match o.smtp_relay.as_str() {
            "" => MailTransport::Sendmail(Sendmail::new(
                &with_envelope_sender(&o.sendmail_script, &notification_from)?,
                timeout,
            )?),
            relay => {
                let ca = Some(&o.tls_ca_file)
                    .filter(|f| !f.is_empty())
                    .map(Path::new);
                let trust = TrustAnchors::load(ca)?;
                let smtp = super::SmtpOptions {
                    relay,
                    security: &o.smtp_security,
                    user: &o.smtp_user,
                    password_file: &o.smtp_password_file,
                };
                MailTransport::Smtp(super::smtp_transport(&smtp, timeout, &trust)?)
            }
        };
        Ok(Setup {
            config,
            postfix,
            templates,
            key,
            mailer: TransportMailer(transport, notification_from),
            database: database(o)?,
            listeners,
            audit_retention: (!retention.is_zero()).then(|| retention * 86400),
            lock_file: PathBuf::from(&o.lock_file),
            pidfilename: o.pidfilename.clone(),
            scan_interval: seconds("scan_interval", o.scan_interval)?.max(Duration::from_secs(1)),
            metrics_listen: listen_address("metrics_listen", &o.metrics_listen)?,
            metrics_limits: mailtls_common::config::metrics_limits(
                o.metrics_max_connections,
                o.metrics_request_timeout,
            )?,
        })
    }

    fn scan(&self, store: &Store) -> anyhow::Result<ScanReport> {
        let scanner = Scanner {
            config: &self.config,
            store,
            postfix: &self.postfix,
            templates: &self.templates,
            key: &self.key,
            mailer: &self.mailer,
        };
        let report = scanner.scan(chrono::Utc::now())?;
        for problem in &report.problems {
            log::warn!("{problem}");
        }
        log::info!(
            "scan: {} queued, {} waiting for TLS, {} notified, {} reminded, {} ignored, {} gone, decided in {:.3} s, {:.3} s in all",
            report.queued,
            report.tls_deferred,
            report.notified,
            report.reminded,
            report.ignored,
            report.gone,
            report.decided.as_secs_f64(),
            report.elapsed.as_secs_f64()
        );
        Ok(report)
    }

    /// Settles the actions a dead worker left running, then carries out
    /// every queued action that is due; returns how many were taken.
    fn act(&self, store: &Store) -> anyhow::Result<usize> {
        let executor = Executor {
            postfix: &self.postfix,
            store,
            instance: &self.config.instance,
            own: &self.config.own,
            mandatory: &self.config.mandatory,
            listeners: &self.listeners,
        };
        let now = || chrono::Utc::now().timestamp();
        for action in store.running_actions(&self.config.instance)? {
            executor.recover(&action, now())?;
        }
        let mut done = 0;
        while let Some(action) = store.take_action(&self.config.instance, now())? {
            executor.execute(&action, now())?;
            done += 1;
        }
        Ok(done)
    }

    /// Deletes audit entries older than `audit_retention`.
    fn prune_audit(&self, store: &Store) {
        let Some(retention) = self.audit_retention else {
            return;
        };
        let before = chrono::Utc::now().timestamp() - retention.as_secs() as i64;
        match store.prune_audit(before) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "audit log: {n} entries older than {} days deleted",
                retention.as_secs() / 86400
            ),
            Err(e) => log::error!("audit log: pruning failed: {e}"),
        }
    }

    fn open_store(&self) -> anyhow::Result<Store> {
        Store::connect(&self.database, Access::Worker).with_context(|| self.database.to_string())
    }

    /// Serves the database's counts on `listen` from a connection of its
    /// own, so that a scrape never waits for the worker's loop.
    fn serve_metrics(&self, listen: SocketAddr) -> anyhow::Result<()> {
        let store = std::sync::Mutex::new(self.open_store()?);
        mailtls_common::metrics::spawn(listen, self.metrics_limits, move || {
            let store = store.lock().unwrap_or_else(|e| e.into_inner());
            let counts = store.counts().map_err(|e| format!("database: {e}"))?;
            Ok(posttls_web::metrics::render(&counts))
        })?;
        Ok(())
    }

    fn scan_once(&self) -> i32 {
        let lock_path = self.lock_file.display();
        let _lock = match ScanLock::take(&self.lock_file) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                log::warn!("another scan holds {lock_path}; not scanning now");
                return 0;
            }
            Err(e) => {
                log::error!("lock {lock_path}: {e}");
                return 1;
            }
        };
        let result = self.open_store().and_then(|store| {
            self.act(&store)?;
            self.prune_audit(&store);
            self.scan(&store)
        });
        match result {
            Ok(_) => 0,
            Err(e) => {
                log::error!("{e:#}");
                1
            }
        }
    }

    fn worker(&self) -> i32 {
        let _pid = PidFile::create(&self.pidfilename);
        // One worker per instance and database: actions left running are
        // settled by the one that holds the lock (a cron `posttls scan`
        // steps aside while the worker runs).
        let lock_path = self.lock_file.display();
        let _lock = match ScanLock::take(&self.lock_file) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                log::error!(
                    "another PostTLS worker or scan holds {lock_path}; not starting a second one"
                );
                return 1;
            }
            Err(e) => {
                log::error!("lock {lock_path}: {e}");
                return 1;
            }
        };
        let store = match self.open_store() {
            Ok(s) => s,
            Err(e) => {
                log::error!("{e:#}");
                return 1;
            }
        };
        if let Some(listen) = self.metrics_listen {
            if let Err(e) = self.serve_metrics(listen) {
                log::error!("cannot serve metrics on {listen} (metrics_listen): {e:#}");
                return 1;
            }
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
                log::error!("cannot handle signals: {e}");
                return 1;
            }
        }
        let interval = self.scan_interval;
        log::info!(
            "PostTLS worker started, scanning every {} s",
            interval.as_secs()
        );
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            self.prune_audit(&store);
            if let Err(e) = self.scan(&store) {
                log::error!("scan failed: {e:#}");
            }
            // Requests from the web pages are carried out within a second.
            let until = std::time::Instant::now() + interval;
            while std::time::Instant::now() < until
                && !stop.load(std::sync::atomic::Ordering::SeqCst)
            {
                if let Err(e) = self.act(&store) {
                    log::error!("actions: {e:#}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        log::info!("PostTLS worker stopped");
        0
    }
}

/// How released mail leaves this instance (`release_method`), asked of
/// its Postfix unless content_filter is set.
fn release_route(postfix: &Postfix, o: &PosttlsOptions) -> anyhow::Result<ReleaseRoute> {
    let method = ReleaseMethod::parse(&o.release_method).with_context(|| {
        format!(
            "release_method {:?} is not one of auto, tls_required_header, content_filter",
            o.release_method
        )
    })?;
    let header = match method {
        ReleaseMethod::ContentFilter => false,
        _ => {
            let version = postfix
                .postconf("mail_version")
                .context("release_method: Postfix's version decides how released mail leaves")?;
            let tls_required = match postfix_version(&version) {
                Some(v) if v >= (3, 10) => Some(postfix.postconf("tls_required_enable")?),
                _ => None,
            };
            let header = method
                .uses_header(&version, tls_required.as_deref())
                .map_err(anyhow::Error::msg)?;
            log::info!(
                "Postfix {version}: released mail leaves {}",
                if header {
                    "through reinject_listener with TLS-Required: No, by the instance's own routing"
                } else {
                    "through release_listener's content filter"
                }
            );
            header
        }
    };
    Ok(if header {
        ReleaseRoute::TlsRequiredHeader
    } else {
        ReleaseRoute::Listener(listener(postfix, &o.release_listener, "release_listener")?)
    })
}

/// The socket of a re-injection listener: a path, relative to the
/// instance's queue directory unless absolute. A TCP listener is refused:
/// any local process could relay through it with TLS optional.
fn listener(postfix: &Postfix, value: &str, name: &str) -> anyhow::Result<PathBuf> {
    if value.is_empty() || (value.contains(':') && !value.contains('/')) {
        bail!(
            "{name} = {value:?}: give the UNIX-domain socket of an smtpd service under Postfix's private/ directory \
             (e.g. {name} = private/posttls-release), not a TCP address: a TCP listener lets any local process send \
             mail with TLS optional. See README, \"The re-injection listeners\"."
        );
    }
    let path = PathBuf::from(value);
    if path.is_absolute() {
        return Ok(path);
    }
    let queue_directory = postfix
        .postconf("queue_directory")
        .with_context(|| format!("{name}: the queue directory is needed to find {value}"))?;
    Ok(Path::new(&queue_directory).join(path))
}

/// An exclusive `flock` on the lock file, held while the value lives (the
/// kernel releases it when the file is closed).
struct ScanLock {
    _file: std::fs::File,
}

impl ScanLock {
    fn take(path: &Path) -> std::io::Result<Option<ScanLock>> {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            Ok(Some(ScanLock { _file: file }))
        } else {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_sent_from_notification_from_unless_the_command_says() {
        assert_eq!(
            with_envelope_sender("sendmail -i -t", "postmaster@example.org").unwrap(),
            "sendmail -i -t -f postmaster@example.org"
        );
        for named in [
            "sendmail -i -t -f bounces@example.org",
            "sendmail -i -t -fbounces@example.org",
            "sendmail -i -t -r bounces@example.org",
        ] {
            assert_eq!(
                with_envelope_sender(named, "postmaster@example.org").unwrap(),
                named
            );
        }
        assert!(with_envelope_sender("sendmail -i -t", "a b@example.org").is_err());
    }
}
