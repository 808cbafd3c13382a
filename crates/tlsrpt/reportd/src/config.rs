//! What the daemon needs to know, checked once at start.
//!
//! The option table itself (names, defaults, help) belongs to the program
//! (`mailtls reportd` / `tlsrpt-reportd`); this module holds the upstream's
//! start-up checks as pure functions, so that a bad configuration is refused
//! with the upstream's rules and words before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use tlsrpt_report::maps::DestinationMaps;
use tlsrpt_report::report::ReportingOrganization;

use crate::schedule::DeliveryRetry;

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
    pub dbname: PathBuf,
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
}

/// The upstream's checks of the numeric options and of options that
/// cannot be combined, with its messages. `int` and `text` look an option
/// up by name.
pub fn check_options(
    int: impl Fn(&str) -> i64,
    text: impl Fn(&str) -> String,
) -> Result<(), String> {
    let colliding = [
        ("debug_send_file_dest", "tlsrpt_record_map"),
        ("debug_send_mail_dest", "mail_destination_map"),
        ("debug_send_http_dest", "http_upload_map"),
    ];
    for (deprecated, newer) in colliding {
        if !text(deprecated).is_empty() && !text(newer).is_empty() {
            return Err(format!(
                "deprecated option {deprecated} can not be used with option {newer}"
            ));
        }
    }
    if text("fetchers").trim().is_empty() {
        return Err("no fetchers set up: set fetchers to one or more comma-separated fetcher commands, e.g. fetchers = tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite".into());
    }
    if text("fetchers").split(',').any(|f| f.trim().is_empty()) {
        return Err(format!(
            "empty fetcher configured in fetchers = {:?}",
            text("fetchers")
        ));
    }
    for (name, min) in [
        ("spread_out_delivery", 1),
        ("min_wait_delivery", 0),
        ("min_wait_domainlist", 0),
        ("min_wait_domaindetails", 0),
    ] {
        let value = int(name);
        if value < min {
            return Err(format!("{name} value '{value}' must be at least '{min}'"));
        }
    }
    for (min, max) in [
        ("min_wait_delivery", "max_wait_delivery"),
        ("min_wait_domainlist", "max_wait_domainlist"),
        ("min_wait_domaindetails", "max_wait_domaindetails"),
    ] {
        if int(max) < int(min) {
            return Err(format!(
                "{max} value '{}' must be at least {min} value '{}'",
                int(max),
                int(min)
            ));
        }
    }
    // Not checked upstream, but a zero or negative value would make the
    // main loop spin or a retry count meaningless.
    for (name, min) in [
        ("interval_main_loop", 1),
        ("sendmail_timeout", 1),
        ("http_timeout", 1),
        ("max_collectd_timeout", 1),
        ("max_retries_delivery", 0),
        ("max_retries_domainlist", 0),
        ("max_retries_domaindetails", 0),
    ] {
        let value = int(name);
        if value < min {
            return Err(format!("{name} value '{value}' must be at least '{min}'"));
        }
    }
    let level = int("compression_level");
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
    use std::collections::HashMap;

    fn defaults() -> HashMap<&'static str, String> {
        [
            ("fetchers", "tlsrpt-fetcher"),
            ("spread_out_delivery", "36000"),
            ("min_wait_delivery", "300"),
            ("max_wait_delivery", "1800"),
            ("min_wait_domainlist", "30"),
            ("max_wait_domainlist", "300"),
            ("min_wait_domaindetails", "30"),
            ("max_wait_domaindetails", "300"),
            ("interval_main_loop", "300"),
            ("sendmail_timeout", "10"),
            ("http_timeout", "10"),
            ("max_collectd_timeout", "10"),
            ("max_retries_delivery", "5"),
            ("max_retries_domainlist", "5"),
            ("max_retries_domaindetails", "5"),
            ("compression_level", "-1"),
            ("debug_send_file_dest", ""),
            ("debug_send_mail_dest", ""),
            ("debug_send_http_dest", ""),
            ("tlsrpt_record_map", ""),
            ("mail_destination_map", ""),
            ("http_upload_map", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    fn check(changes: &[(&'static str, &str)]) -> Result<(), String> {
        let mut options = defaults();
        for (k, v) in changes {
            options.insert(k, v.to_string());
        }
        check_options(
            |name| options[name].parse().unwrap(),
            |name| options[name].clone(),
        )
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
