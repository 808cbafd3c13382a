//! `tlsrpt-collectd` / `mailtls collectd`: options as upstream, then
//! [`tlsrpt_collectd::run`].

use anyhow::bail;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Command};
use mailtls_common::config::{add_options, listen_address, ProgramSpec};
use mailtls_common::pidfile::PidFile;
use tlsrpt_collectd::socket::{parse_mode, Permissions};
use tlsrpt_collectd::{exit, CollectdConfig};

mailtls_common::options! {
    /// tlsrpt-collectd's options: upstream's names, defaults and order, then ours.
    pub struct CollectdOptions, sources CollectdSources {
        /// Storage URL(s), comma-separated, e.g. sqlite:///var/lib/tlsrpt/collectd.sqlite.
        /// Completed days are kept beside each file as FILE.yesterday. mailtls extension:
        /// postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (libpq URI, ?host=/socket/dir),
        /// a database the collectors of a fleet share
        storage: String = "",
        /// Path of the unix datagram socket that the MTA sends to (Postfix:
        /// smtp_tlsrpt_socket_name)
        socketname: String = "",
        /// User (name or number) to own the socket
        socketuser: String = "",
        /// Group (name or number) to own the socket
        socketgroup: String = "",
        /// Permissions of the socket in octal, e.g. 0220
        socketmode: String = "",
        /// Seconds after which received counters are committed at the latest
        sockettimeout: i64 = "5",
        /// Commit after this many datagrams
        max_uncommited_datagrams: i64 = "1000",
        /// Accepted for compatibility; failed commits are retried by a separate writer with a
        /// growing pause, independently of incoming datagrams
        retry_commit_datagram_count: i64 = "1000",
        /// PID file to write
        pidfilename: String = "",
        /// Log file (in addition to standard error); reopened on SIGHUP
        logfilename: String = "",
        /// Log level: debug, info, warn, error, critical, or a number
        log_level: String = "warn",
        /// Command started after each UTC midnight rollover, with the storage URL and the path
        /// of the completed day's database as two extra arguments
        daily_rollover_script: String = "",
        /// File to save an invalid datagram to, for inspection (the first of each kind per
        /// minute)
        dump_path_for_invalid_datagram: String = "",
        /// mailtls extension. realtime: the thread that reads the socket runs at real-time
        /// priority when permitted (root, CAP_SYS_NICE or systemd LimitRTPRIO=1), so that a
        /// busy host does not make the kernel drop datagrams; normal: never
        receiver_priority: String = "realtime",
        /// mailtls extension. IP:PORT on which to serve Prometheus metrics at /metrics (plain
        /// HTTP, to anyone who can connect: use a loopback address or a firewall), e.g.
        /// 127.0.0.1:9150; empty: none
        metrics_listen: String = "",
        /// mailtls extension. Connections metrics_listen serves at once (further ones wait;
        /// one client address gets a quarter of them, at least one)
        metrics_max_connections: i64 = "8",
        /// mailtls extension. Seconds a metrics_listen client has to send its request, and
        /// again to take the answer, before the connection is closed
        metrics_request_timeout: i64 = "5",
        /// mailtls extension. This collector's name in a postgresql:// storage, which the
        /// collectors of a fleet share, each counting under its own name; empty: the host name
        collector_name: String = "",
        /// mailtls extension. File whose first line is the password of the postgresql://
        /// storage, so that it need not be in the configuration; empty: the URL's
        password_file: String = "",
    }
}

pub const SPEC: ProgramSpec = ProgramSpec {
    name: "tlsrpt-collectd",
    section: "tlsrpt_collectd",
    env_prefix: "TLSRPT_COLLECTD_",
    default_config_file: "/etc/tlsrpt/collectd.cfg",
    ignored: &[],
};

const ABOUT: &str = "Receive TLSRPT datagrams from the MTA and count them per day (RFC 8460)";

const LONG_ABOUT: &str = "\
Receive the TLSRPT datagrams that Postfix (through libtlsrpt) sends for every \
delivery attempt, and count them per UTC day, domain, TLSRPT record and policy \
in an SQLite database that tlsrpt-fetcher reads. A drop-in replacement for the \
collectd of sys4's tlsrpt-reporter: same options, config file, environment \
variables and database files.

The socket is drained on one thread and the database written on another, so a \
slow or locked database never makes the kernel drop datagrams; counters wait \
in memory and the write is retried. The thread that reads the socket runs at \
real-time priority when permitted (root, CAP_SYS_NICE or systemd \
LimitRTPRIO=1; see receiver_priority), because the kernel queues only \
net.unix.max_dgram_qlen datagrams and a busy host otherwise makes it drop \
some. At UTC midnight the database is moved to FILE.yesterday and a fresh one \
started.

Every option can also be set as TLSRPT_COLLECTD_<NAME> in the environment or \
in the [tlsrpt_collectd] section of the config file; the command line wins \
over the environment, which wins over the file.";

const AFTER_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  read what is still queued, commit everything, remove the socket, exit 0
  SIGHUP           reopen the log file (after log rotation)
  SIGUSR2          development only: today's counters become yesterday's, then roll over

Exit status: 0 clean shutdown, 2 configuration error, 3 database cannot be set up,
4 database of another program or version, 6 counters could not be written at
shutdown, 7 socket (or the metrics_listen address) cannot be created.

Postfix (>= 3.10), main.cf, with socketname =
/var/spool/postfix/run/tlsrpt/tlsrpt-collectd.socket (inside the queue
directory, so that a chrooted smtp reaches it):
  smtp_tlsrpt_enable = yes
  smtp_tlsrpt_socket_name = run/tlsrpt/tlsrpt-collectd.socket";

pub fn command() -> Command {
    add_options::<CollectdOptions>(
        Command::new("tlsrpt-collectd")
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .after_long_help(AFTER_HELP),
        &SPEC,
    )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let options = match super::start(&SPEC, "tlsrpt_collectd", matches, |o: &CollectdOptions| {
        (o.log_level.as_str(), o.logfilename.as_str())
    }) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let config = match config_from(&options) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e:#}");
            return exit::USAGE;
        }
    };
    let clock = match mailtls_common::clock::from_env() {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return exit::USAGE;
        }
    };
    if std::env::var_os(mailtls_common::clock::TEST_CLOCK_ENV).is_some() {
        log::warn!("using a test clock that started at {}", clock.now());
    }
    let _pid = PidFile::create(&options.pidfilename);
    let code = tlsrpt_collectd::run(config, clock.as_ref());
    if code == exit::OK {
        log::info!("process terminates with exit code {code}");
    } else {
        log::error!("process terminates with exit code {code}");
    }
    code
}

/// Validate the options into the collector's configuration.
pub fn config_from(options: &CollectdOptions) -> anyhow::Result<CollectdConfig> {
    let password_file = Some(&options.password_file)
        .filter(|f| !f.is_empty())
        .map(std::path::Path::new);
    let storage = tlsrpt_store::parse_storages(&options.storage, password_file)?;
    if storage.is_empty() {
        bail!("no storage configured: set storage=sqlite:///path/to/collectd.sqlite (option --storage, TLSRPT_COLLECTD_STORAGE or [tlsrpt_collectd] storage)");
    }
    let socket = &options.socketname;
    if socket.is_empty() {
        bail!("no socket configured: set socketname=/path/to/tlsrpt-collectd.socket (option --socketname, TLSRPT_COLLECTD_SOCKETNAME or [tlsrpt_collectd] socketname), the same path as Postfix's smtp_tlsrpt_socket_name");
    }
    let non_empty = |value: &String| (!value.is_empty()).then(|| value.clone());
    let mode = match non_empty(&options.socketmode) {
        Some(text) => Some(parse_mode(&text).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let timeout = options.sockettimeout;
    if timeout < 1 {
        bail!("sockettimeout must be at least 1 second, not {timeout}");
    }
    let max_uncommitted = options.max_uncommited_datagrams;
    if max_uncommitted < 1 {
        bail!("max_uncommited_datagrams must be at least 1, not {max_uncommitted}");
    }
    Ok(CollectdConfig {
        storage,
        collector_name: match options.collector_name.as_str() {
            "" => mailtls_common::host_name(),
            name => name.to_string(),
        },
        socket: PathBuf::from(socket),
        permissions: Permissions {
            user: non_empty(&options.socketuser),
            group: non_empty(&options.socketgroup),
            mode,
        },
        socket_timeout: Duration::from_secs(timeout as u64),
        max_uncommitted: max_uncommitted as u64,
        rollover_script: non_empty(&options.daily_rollover_script),
        dump_path: non_empty(&options.dump_path_for_invalid_datagram).map(PathBuf::from),
        realtime_receiver: match options.receiver_priority.as_str() {
            "realtime" => true,
            "normal" => false,
            other => {
                bail!("receiver_priority must be realtime or normal, not {other:?}")
            }
        },
        metrics_listen: listen_address("metrics_listen", &options.metrics_listen)?,
        metrics_limits: mailtls_common::config::metrics_limits(
            options.metrics_max_connections,
            options.metrics_request_timeout,
        )?,
    })
}
