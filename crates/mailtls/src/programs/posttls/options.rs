//! PostTLS's options, shared by the worker and the web process, and what
//! both derive from them the same way (the database, the instance name).

use std::path::Path;

use anyhow::Context;
use mailtls_common::config::ProgramSpec;
use posttls_store::Database;

mailtls_common::options! {
    /// PostTLS's options (`posttls scan`, `worker`, `web` and `adduser`).
    pub struct PosttlsOptions, sources PosttlsSources {
        /// Database of messages, notifications, actions and the audit log: a SQLite file, or
        /// postgresql://USER@HOST/DATABASE for a fleet (one web process, a worker per
        /// instance; see docs/fleets.md, "PostTLS on PostgreSQL")
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
        /// puts what it receives on hold (master.cf service posttls-release; see docs/posttls.md);
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
        /// The policy cache of mailtls policyd (its database option: a SQLite file or a
        /// postgresql:// URL), read by the Outbound TLS view to show each domain's MTA-STS
        /// policy; empty: not shown
        policyd_database: String = "/var/lib/mailtls-policyd/policyd.sqlite",
        /// File whose first line is the password of a postgresql:// policyd_database
        policyd_password_file: String = "",
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

/// The `database` (with `password_file`).
pub(crate) fn database(o: &PosttlsOptions) -> anyhow::Result<Database> {
    let password_file = Some(&o.password_file)
        .filter(|f| !f.is_empty())
        .map(Path::new);
    Database::parse(&o.database, password_file).context("database")
}

/// `instance`, or the host name when it is empty (as the worker does: the
/// two must agree, or no link verifies).
pub(crate) fn instance_name(o: &PosttlsOptions) -> String {
    match o.instance.as_str() {
        "" => mailtls_common::host_name(),
        name => name.to_string(),
    }
}
