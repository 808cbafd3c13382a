//! The TLSRPT collector: its configuration, socket, the kernel's datagram
//! queue, the day's rollover and, with PostgreSQL, the fleet.

use std::path::{Path, PathBuf};

use clap::Command;
use mailtls_common::day::Day;
use tlsrpt_store::postgres::{CollectorStatus, PgDayReader};

use super::super::collectd::{self, CollectdOptions};
use super::{may_write, options_of, user_ids, FileFacts, Finding, PostfixFacts};

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

impl CollectorFacts {
    pub(super) fn gather(config_file: &Path) -> CollectorFacts {
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

#[cfg(test)]
mod tests {
    use mailtls_common::config::ProgramOptions;

    use super::super::tests::postfix;
    use super::super::Level;
    use super::*;

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
}
