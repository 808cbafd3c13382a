//! What the daemon needs to know, checked once at start.
//!
//! The options ([`ReportdOptions`]: names, defaults, help) are declared
//! here, beside the upstream's start-up checks (pure functions), so that a
//! bad configuration is refused with the upstream's rules and words before
//! anything runs. The program (`mailtls reportd` / `tlsrpt-reportd`) loads
//! them and builds the transports.

use std::path::PathBuf;
use std::time::Duration;

use tlsrpt_delivery::HttpScript;
use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::report::ReportingOrganization;

use crate::schedule::DeliveryRetry;
use tlsrpt_reportd_db::DbName;

mailtls_common::options! {
    /// tlsrpt-reportd's options: upstream's (same names, defaults, order), then ours.
    pub struct ReportdOptions, sources ReportdSources {
        /// PID file to write
        pidfilename: String = "",
        /// Log file (in addition to standard error); reopened on SIGHUP
        logfilename: String = "",
        /// Log level: debug, info, warn, error, critical, or a number
        log_level: String = "warn",
        /// Accepted for compatibility; use log_level = debug to follow each step
        debug_db: i64 = "0",
        /// Days to keep fetched data, reports and their delivery state (at least 2)
        keep_days: i64 = "10",
        /// Send every report mail to this address instead of the rua address (testing)
        debug_send_mail_dest: String = "",
        /// Upload every report to this URL instead of the rua URL (testing)
        debug_send_http_dest: String = "",
        /// Also save every report (and report mail) into this directory (testing)
        debug_send_file_dest: String = "",
        /// The reportd's SQLite database file (created if missing; an upstream reportd's file
        /// is used as it is), or (mailtls extension) a postgresql://USER@HOST/DB URL that
        /// several report daemons share: one works, the others stand by
        dbname: String = "",
        /// Comma-separated fetcher commands, each split on white space, e.g. `tlsrpt-fetcher
        /// --storage sqlite:///var/lib/tlsrpt/collectd.sqlite, ssh mx2 tlsrpt-fetcher`
        fetchers: String = "",
        /// The reporting organization's name (report field organization-name)
        organization_name: String = "",
        /// Contact address (report field contact-info); its domain is the TLS-Report-Submitter
        contact_info: String = "",
        /// From address (and envelope sender) of report mail
        sender_address: String = "",
        /// gzip level of reports, 0-9, -1 for zlib's default
        compression_level: i64 = "-1",
        /// Map file applied to each report domain's destinations (see docs/tlsrpt.md: destination maps)
        tlsrpt_record_map: String = "",
        /// Map file applied to each mailto: destination
        mail_destination_map: String = "",
        /// Map file applied to each https: destination
        http_upload_map: String = "",
        /// Upload command (URL appended, report on standard input). Left at its default,
        /// reports are POSTed natively (only a 2xx answer counts); set, the command is run and
        /// its exit status decides
        http_script: String = HttpScript::DEFAULT_COMMAND,
        /// Seconds an HTTPS upload may take
        http_timeout: i64 = "10",
        /// Command that takes a report mail on standard input (split into words, no shell);
        /// unused when smtp_relay is set
        sendmail_script: String = "sendmail -i -t",
        /// Seconds sendmail_script (or an SMTP submission) may take
        sendmail_timeout: i64 = "10",
        /// Seconds over which the first deliveries of a day's reports are spread (RFC 8460
        /// section 4.1)
        spread_out_delivery: i64 = "36000",
        /// Longest sleep of the main loop, in seconds
        interval_main_loop: i64 = "300",
        /// Seconds one fetcher run may take before it is killed and retried (a bulk run may
        /// take 60 times this, but may not pause its output for longer)
        max_collectd_timeout: i64 = "10",
        /// Warn when a fetcher's clock differs from ours by more seconds
        max_collectd_timediff: i64 = "10",
        /// Retries of a failed delivery. Unless this or a *_wait_delivery option is set, failed
        /// deliveries are retried with backoff for 24 hours (RFC 8460 section 5.5)
        max_retries_delivery: i64 = "5",
        /// Least seconds between delivery attempts (when set: upstream's fixed rule)
        min_wait_delivery: i64 = "300",
        /// Most seconds between delivery attempts (when set: upstream's fixed rule)
        max_wait_delivery: i64 = "1800",
        /// Retries of a fetcher's domain list
        max_retries_domainlist: i64 = "5",
        /// Least seconds between domain list attempts
        min_wait_domainlist: i64 = "30",
        /// Most seconds between domain list attempts
        max_wait_domainlist: i64 = "300",
        /// Retries of a domain's details (upstream never gives up)
        max_retries_domaindetails: i64 = "5",
        /// Least seconds between domain details attempts
        min_wait_domaindetails: i64 = "30",
        /// Most seconds between domain details attempts
        max_wait_domaindetails: i64 = "300",
        /// mailtls: ask fetchers for all domains in one run first (1) or always once per domain
        /// as upstream (0); fetchers without the extension are detected and asked once per
        /// domain
        fetcher_bulk: i64 = "1",
        /// mailtls: PEM private key (RSA or Ed25519) to DKIM-sign report mail with (RFC 8460
        /// section 3); empty: unsigned, e.g. when the MTA signs
        dkim_key_file: String = "",
        /// mailtls: DKIM selector
        dkim_selector: String = "tlsrpt",
        /// mailtls: DKIM signing domain (d=); default: the domain of sender_address
        dkim_domain: String = "",
        /// mailtls: submit report mail by SMTP to HOST or HOST:PORT instead of sendmail_script
        smtp_relay: String = "",
        /// mailtls: starttls (port 587), tls (465) or plain (25, no AUTH)
        smtp_security: String = "starttls",
        /// mailtls: SMTP AUTH user
        smtp_user: String = "",
        /// mailtls: file holding the SMTP AUTH password
        smtp_password_file: String = "",
        /// mailtls: extra CA certificates (PEM) trusted for the SMTP relay
        tls_ca_file: String = "",
        /// mailtls: destinations taken from one TLSRPT record (the first ones); the rest are
        /// logged and dropped, so a record listing hundreds cannot make one report hundreds of
        /// deliveries
        max_destinations_per_record: i64 = "4",
        /// mailtls: distinct TLSRPT records of one domain and day whose destinations are used
        /// (a TTL-0 record that changes on every lookup); reports of further records are kept
        /// and shown by tlsrptctl, and go only where the destination maps send them
        max_records_per_domain: i64 = "4",
        /// mailtls: extra CA certificates (PEM) trusted for HTTPS uploads (default: the
        /// system's roots only)
        http_ca_file: String = "",
        /// mailtls: let HTTPS uploads connect to loopback, private, link-local, unique-local
        /// and other non-global addresses (1, for labs and tests); by default a rua=https:
        /// destination cannot reach internal services
        http_allow_private_addresses: i64 = "0",
        /// mailtls: IP:PORT on which to serve Prometheus metrics at /metrics (plain HTTP, to
        /// anyone who can connect: use a loopback address or a firewall), e.g. 127.0.0.1:9151;
        /// empty: none
        metrics_listen: String = "",
        /// mailtls: Connections metrics_listen serves at once (further ones wait;
        /// one client address gets a quarter of them, at least one)
        metrics_max_connections: i64 = "8",
        /// mailtls: Seconds a metrics_listen client has to send its request, and
        /// again to take the answer, before the connection is closed
        metrics_request_timeout: i64 = "5",
        /// mailtls extension. File whose first line is the password of a postgresql://
        /// dbname, so that it need not be in the configuration; empty: the URL's
        password_file: String = "",
    }
}

/// Retries of a fetch step (domain list or domain details), upstream's
/// rule: after a failure wait a random time between `min_wait` and
/// `max_wait` seconds, and give up once `max_retries` retries have failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRetry {
    pub max_retries: i64,
    pub min_wait: u64,
    pub max_wait: u64,
}

/// The daemon's configuration, with the maps read. (The transports and
/// the DKIM key are set up in [`Deliverer`](crate::deliver::Deliverer).)
pub struct ReportdConfig {
    pub dbname: DbName,
    /// The configured fetcher commands, in order (their index is 1-based
    /// in the database).
    pub fetchers: Vec<String>,
    /// Ask fetchers for bulk answers (mailtls extension) first.
    pub fetcher_bulk: bool,
    pub organization: ReportingOrganization,
    /// `TLS-Report-Submitter`: the domain of `contact_info`.
    pub submitter: String,
    pub sender_address: String,
    pub keep_days: i64,
    pub compression_level: i32,
    pub debug_send_mail_dest: Option<String>,
    pub debug_send_http_dest: Option<String>,
    pub debug_send_file_dest: Option<PathBuf>,
    pub maps: DestinationMaps,
    /// Limits against amplification by hostile TLSRPT records.
    pub caps: crate::reports::Caps,
    pub spread_out_delivery: u32,
    pub interval_main_loop: Duration,
    /// How long one fetcher run may take (`max_collectd_timeout`).
    pub fetcher_timeout: Duration,
    pub max_collectd_timediff: Duration,
    pub delivery_retry: DeliveryRetry,
    pub domainlist_retry: FetchRetry,
    pub domaindetails_retry: FetchRetry,
    /// `metrics_listen`: where Prometheus reads [`crate::metrics`], if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `metrics_max_connections`, `metrics_request_timeout`.
    pub metrics_limits: mailtls_common::metrics::Limits,
    /// The longest a delivery attempt can take (`sendmail_timeout`,
    /// `http_timeout`): a daemon taking over from one that vanished
    /// repeats the attempt it left unfinished only after this long, when
    /// that attempt is surely over.
    pub attempt_limit: Duration,
}

/// The upstream's checks of the numeric options and of options that
/// cannot be combined, with its messages.
pub fn check_options(o: &ReportdOptions) -> Result<(), String> {
    let colliding = [
        (
            "debug_send_file_dest",
            &o.debug_send_file_dest,
            "tlsrpt_record_map",
            &o.tlsrpt_record_map,
        ),
        (
            "debug_send_mail_dest",
            &o.debug_send_mail_dest,
            "mail_destination_map",
            &o.mail_destination_map,
        ),
        (
            "debug_send_http_dest",
            &o.debug_send_http_dest,
            "http_upload_map",
            &o.http_upload_map,
        ),
    ];
    for (deprecated, old, newer, new) in colliding {
        if !old.is_empty() && !new.is_empty() {
            return Err(format!(
                "deprecated option {deprecated} can not be used with option {newer}"
            ));
        }
    }
    if o.fetchers.trim().is_empty() {
        return Err("no fetchers set up: set fetchers to one or more comma-separated fetcher commands, e.g. fetchers = tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite".into());
    }
    if o.fetchers.split(',').any(|f| f.trim().is_empty()) {
        return Err(format!(
            "empty fetcher configured in fetchers = {:?}",
            o.fetchers
        ));
    }
    let at_least = |name: &str, value: i64, min: i64| {
        if value < min {
            Err(format!("{name} value '{value}' must be at least '{min}'"))
        } else {
            Ok(())
        }
    };
    at_least("spread_out_delivery", o.spread_out_delivery, 1)?;
    at_least("min_wait_delivery", o.min_wait_delivery, 0)?;
    at_least("min_wait_domainlist", o.min_wait_domainlist, 0)?;
    at_least("min_wait_domaindetails", o.min_wait_domaindetails, 0)?;
    for (min_name, min, max_name, max) in [
        (
            "min_wait_delivery",
            o.min_wait_delivery,
            "max_wait_delivery",
            o.max_wait_delivery,
        ),
        (
            "min_wait_domainlist",
            o.min_wait_domainlist,
            "max_wait_domainlist",
            o.max_wait_domainlist,
        ),
        (
            "min_wait_domaindetails",
            o.min_wait_domaindetails,
            "max_wait_domaindetails",
            o.max_wait_domaindetails,
        ),
    ] {
        if max < min {
            return Err(format!(
                "{max_name} value '{max}' must be at least {min_name} value '{min}'"
            ));
        }
    }
    // Not checked upstream, but a zero or negative value would make the
    // main loop spin or a retry count meaningless.
    at_least("interval_main_loop", o.interval_main_loop, 1)?;
    at_least("sendmail_timeout", o.sendmail_timeout, 1)?;
    at_least("http_timeout", o.http_timeout, 1)?;
    at_least("max_collectd_timeout", o.max_collectd_timeout, 1)?;
    at_least("max_retries_delivery", o.max_retries_delivery, 0)?;
    at_least("max_retries_domainlist", o.max_retries_domainlist, 0)?;
    at_least("max_retries_domaindetails", o.max_retries_domaindetails, 0)?;
    let level = o.compression_level;
    if !(-1..=9).contains(&level) {
        return Err(format!(
            "compression_level value '{level}' must be -1 (zlib's default) or 0 to 9"
        ));
    }
    Ok(())
}

/// The fetcher commands of the `fetchers` option (comma-separated, each
/// split on white space when run, as upstream).
pub fn split_fetchers(option: &str) -> Vec<String> {
    option.split(',').map(|f| f.trim().to_owned()).collect()
}

/// Upstream deletes a day's fetch jobs when they are `keep_days` old and
/// then, with `keep_days` of 1 or less, finds yesterday without jobs and
/// builds and sends its reports again at every main loop. Two days is the
/// least that keeps yesterday's jobs. Returns the value to use and, when it
/// was raised, a warning for the log.
pub fn effective_keep_days(keep_days: i64) -> (i64, Option<String>) {
    if keep_days < 2 {
        (
            2,
            Some(format!(
                "keep_days = {keep_days} would forget yesterday's reports and send them again; using 2"
            )),
        )
    } else {
        (keep_days, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtls_common::config::{add_options, resolve, ProgramOptions, ProgramSpec};

    /// The defaults with a fetcher, changed by (option, value) pairs on
    /// the command line.
    fn check(changes: &[(&'static str, &str)]) -> Result<(), String> {
        let mut args = vec!["t".to_string(), "--fetchers=tlsrpt-fetcher".to_string()];
        args.extend(
            changes
                .iter()
                .map(|(name, value)| format!("--{name}={value}")),
        );
        let spec = ProgramSpec {
            name: "tlsrpt-reportd",
            section: "tlsrpt_reportd",
            env_prefix: "TLSRPT_REPORTD_",
            default_config_file: "/nonexistent",
            ignored: &[],
        };
        let matches =
            add_options::<ReportdOptions>(clap::Command::new("t"), &spec).get_matches_from(args);
        let (options, _) = resolve::<ReportdOptions>(&spec, &matches, &[]).unwrap();
        check_options(&options)
    }

    #[test]
    fn the_defaults_pass() {
        check(&[]).unwrap();
    }

    #[test]
    fn upstreams_checks_refuse_with_upstreams_words() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[("spread_out_delivery", "0")], "spread_out_delivery value '0' must be at least '1'"),
            (&[("min_wait_delivery", "-1")], "min_wait_delivery value '-1' must be at least '0'"),
            (&[("max_wait_domainlist", "29")], "max_wait_domainlist value '29' must be at least min_wait_domainlist value '30'"),
            (&[("max_wait_domaindetails", "1"), ("min_wait_domaindetails", "2")], "max_wait_domaindetails value '1' must be at least min_wait_domaindetails value '2'"),
            (&[("debug_send_file_dest", "/tmp"), ("tlsrpt_record_map", "/etc/map")], "deprecated option debug_send_file_dest can not be used with option tlsrpt_record_map"),
            (&[("debug_send_mail_dest", "a@b"), ("mail_destination_map", "/m")], "deprecated option debug_send_mail_dest can not be used with option mail_destination_map"),
            (&[("debug_send_http_dest", "https://x"), ("http_upload_map", "/h")], "deprecated option debug_send_http_dest can not be used with option http_upload_map"),
            (&[("fetchers", "a, ,b")], "empty fetcher configured"),
        ];
        for (changes, expected) in cases {
            let err = check(changes).unwrap_err();
            assert!(err.contains(expected), "{changes:?}: {err}");
        }
        assert!(check(&[("fetchers", " ")])
            .unwrap_err()
            .contains("no fetchers set up"));
        assert!(check(&[("interval_main_loop", "0")]).is_err());
        assert!(check(&[("compression_level", "10")]).is_err());
        assert_eq!(ReportdOptions::defaults().fetchers, "");
        // Each collision alone is fine.
        check(&[("debug_send_file_dest", "/tmp")]).unwrap();
        check(&[("tlsrpt_record_map", "/etc/map")]).unwrap();
    }

    #[test]
    fn fetchers_are_split_at_commas() {
        assert_eq!(
            split_fetchers("tlsrpt-fetcher, ssh mx2 tlsrpt-fetcher --storage sqlite:///x"),
            [
                "tlsrpt-fetcher",
                "ssh mx2 tlsrpt-fetcher --storage sqlite:///x"
            ]
        );
    }

    #[test]
    fn keep_days_below_two_is_raised() {
        assert_eq!(effective_keep_days(10), (10, None));
        assert_eq!(effective_keep_days(2), (2, None));
        let (days, warning) = effective_keep_days(1);
        assert_eq!(days, 2);
        assert!(warning.unwrap().contains("using 2"));
    }
}
