//! `tlsrpt-fetcher` / `mailtls fetcher`: answer one fetcher protocol v1
//! request from the completed-day database and exit.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use mailtls_common::config::{add_options, ProgramSpec};
use mailtls_common::day::Day;
use tlsrpt_fetcher::{AnswerError, Request};
use tlsrpt_store::{Storage, StoreError};

mailtls_common::options! {
    /// tlsrpt-fetcher's options, as upstream's.
    pub struct FetcherOptions, sources FetcherSources {
        /// Storage URL of the collector, e.g. sqlite:///var/lib/tlsrpt/collectd.sqlite; the
        /// completed day is read from FILE.yesterday. Only the first of several comma-separated
        /// URLs is used. mailtls extension: postgresql://USER@HOST/DATABASE, the database the
        /// collectors of a fleet share, answered as the sum over every collector
        storage: String = "",
        /// Log file (in addition to standard error)
        logfilename: String = "",
        /// Log level: debug, info, warn, error, critical, or a number
        log_level: String = "warn",
        /// mailtls extension. File whose first line is the password of the postgresql://
        /// storage; empty: the URL's
        password_file: String = "",
        /// mailtls extension, postgresql:// storage. A day is complete when every collector
        /// that counted on it has ended it; a collector that has not, this many seconds after
        /// the day's end, is given up on (logged), so that a dead host does not hold up the
        /// reports
        day_end_grace: i64 = "7200",
    }
}

pub const SPEC: ProgramSpec = ProgramSpec {
    name: "tlsrpt-fetcher",
    section: "tlsrpt_fetcher",
    env_prefix: "TLSRPT_FETCHER_",
    default_config_file: "/etc/tlsrpt/fetcher.cfg",
    ignored: &[],
};

/// Exit codes: as upstream for usage; distinct ones for a missing database
/// (the collector has not rolled over yet) and for a database of another kind.
pub mod exit {
    pub const OK: i32 = 0;
    pub const OUTPUT: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NO_DATABASE: i32 = 3;
    pub const WRONG_DATABASE: i32 = 4;
}

const LONG_ABOUT: &str = "\
Print what tlsrpt-collectd counted on one completed UTC day, in the fetcher \
protocol v1 that tlsrpt-reportd reads on standard output, locally or as \
`ssh host tlsrpt-fetcher ...`. A drop-in replacement for the fetcher of \
sys4's tlsrpt-reporter.

With DAY alone: the protocol header (version line, this host's UTC time, the \
newest completed day) and the domains with data on DAY, ended by a line `.`. \
With DAY and DOMAIN: one JSON object with that domain's counters.

Every option can also be set as TLSRPT_FETCHER_<NAME> in the environment or in \
the [tlsrpt_fetcher] section of the config file.";

const AFTER_HELP: &str = "\
Exit status: 0 success, 1 output could not be written (e.g. the reader went
away), 2 usage or configuration error, 3 the completed-day database does not
exist or cannot be read, 4 the file is not a tlsrpt-collectd database.

Bulk answers (mailtls extension): with --bulk instead of DOMAIN the answer
starts with the line `TLSRPT FETCHER v1devel-c bulk`, the time and day lines
as in the domain list, then one line per domain holding that domain's details
JSON in compact form, then a line `.`. A reportd asks for it to fetch a whole
day in one call; an upstream fetcher refuses the option, and the reportd then
falls back to one call per domain.

Examples:
  tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite 2026-11-21
  tlsrpt-fetcher --storage sqlite:///var/lib/tlsrpt/collectd.sqlite 2026-11-21 example.com
  ssh mx1.example.net tlsrpt-fetcher 2026-11-21";

pub fn command() -> Command {
    add_options::<FetcherOptions>(
        Command::new("tlsrpt-fetcher")
            .about("Print one day's TLSRPT counters for tlsrpt-reportd (fetcher protocol v1)")
            .long_about(LONG_ABOUT)
            .after_long_help(AFTER_HELP)
            .arg(
                Arg::new("day")
                    .value_name("DAY")
                    .required(true)
                    .help("UTC day to fetch, YYYY-MM-DD"),
            )
            .arg(
                Arg::new("domain")
                    .value_name("DOMAIN")
                    .help("Domain whose details to print; without it, print the list of domains"),
            )
            .arg(
                Arg::new("bulk")
                    .long("bulk")
                    .action(clap::ArgAction::SetTrue)
                    .conflicts_with("domain")
                    .help(
                        "Print every domain's details in one answer (mailtls extension, see below)",
                    ),
            ),
        &SPEC,
    )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let options = match super::start(&SPEC, "tlsrpt_fetcher", matches, |o: &FetcherOptions| {
        (o.log_level.as_str(), o.logfilename.as_str())
    }) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let day = match Day::parse(matches.get_one::<String>("day").expect("required")) {
        Ok(day) => day,
        Err(e) => {
            log::error!("{e}");
            return exit::USAGE;
        }
    };
    let password_file = Some(&options.password_file)
        .filter(|f| !f.is_empty())
        .map(Path::new);
    let mut urls = match tlsrpt_store::parse_storages(&options.storage, password_file) {
        Ok(urls) => urls.into_iter(),
        Err(e) => {
            log::error!("{e}");
            return exit::USAGE;
        }
    };
    let Ok(grace) = u64::try_from(options.day_end_grace) else {
        log::error!(
            "day_end_grace must not be negative, not {}",
            options.day_end_grace
        );
        return exit::USAGE;
    };
    let Some(url) = urls.next() else {
        log::error!("no storage configured: set storage=sqlite:///path/to/collectd.sqlite, the same as tlsrpt-collectd's (option --storage, TLSRPT_FETCHER_STORAGE or [tlsrpt_fetcher] storage)");
        return exit::USAGE;
    };
    for ignored in urls {
        log::warn!(
            "ignoring additional storage {}: the fetcher reads only the first",
            ignored.name()
        );
    }
    let request = match (
        matches.get_flag("bulk"),
        matches.get_one::<String>("domain"),
    ) {
        (true, _) => Request::Bulk,
        (false, Some(domain)) => Request::Details(domain),
        (false, None) => Request::DomainList,
    };
    match answer(&url, Duration::from_secs(grace), day, request) {
        Ok(()) => exit::OK,
        Err(AnswerError::Store(e)) => {
            log::error!("{e}");
            match e {
                StoreError::WrongPurpose { .. } => exit::WRONG_DATABASE,
                _ => exit::NO_DATABASE,
            }
        }
        Err(e @ AnswerError::Output(_)) => {
            log::warn!("{e}");
            exit::OUTPUT
        }
    }
}

/// Answers `request` from `storage`: one collector's completed-day file,
/// or the sum over a fleet's collectors in PostgreSQL (whose day is
/// complete when every collector ended it, or `grace` after its end).
fn answer(
    storage: &Storage,
    grace: Duration,
    day: Day,
    request: Request,
) -> Result<(), AnswerError> {
    let mut reader = storage.open_day_reader()?;
    let now = mailtls_common::clock::from_env()
        .map_err(|e| AnswerError::Output(std::io::Error::other(e)))?
        .now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let count = tlsrpt_fetcher::answer(&mut *reader, now, grace, day, request, &mut out)?;
    match request {
        Request::DomainList => log::info!("domain list for {day}: {count} domains"),
        Request::Bulk => log::info!("bulk answer for {day}: {count} domains"),
        Request::Details(domain) => {
            log::info!("details for {domain} on {day}: {count} policies")
        }
    }
    Ok(out.flush()?)
}
