//! `posttls scan` and `posttls worker`: the privileged half, which runs
//! Postfix's commands, sends the notifications and carries out what the
//! web pages recorded.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailtls_common::config::{listen_address, seconds};
use mailtls_common::pidfile::PidFile;
use posttls_actions::{postfix_version, Executor, Listeners, ReleaseMethod, ReleaseRoute};
use posttls_notify::Templates;
use posttls_policy::{DomainSet, OwnSenders};
use posttls_postfix::Postfix;
use posttls_scanner::{Mailer, MandatoryPolicy, ScanConfig, ScanReport, Scanner};
use posttls_store::{Access, Database, Store};
use posttls_token::SecretKey;
use tlsrpt_delivery::{MailTransport, Outcome, Sendmail, TrustAnchors};

use super::options::{database, instance_name, PosttlsOptions};

/// Runs `scan` or `worker` with the resolved options.
pub(super) fn run(name: &str, options: &PosttlsOptions) -> i32 {
    let setup = match Setup::from(options) {
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

/// The value of option `name`, which must be set; `example` shows how.
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
        let instance = instance_name(o);
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
                let smtp = super::super::SmtpOptions {
                    relay,
                    security: &o.smtp_security,
                    user: &o.smtp_user,
                    password_file: &o.smtp_password_file,
                };
                MailTransport::Smtp(super::super::smtp_transport(&smtp, timeout, &trust)?)
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
            Ok(posttls_metrics::render(&counts))
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
             mail with TLS optional. See docs/posttls.md, \"The re-injection listeners\"."
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
