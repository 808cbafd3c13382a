//! `mailtls policyd`: the MTA-STS (RFC 8461) and DANE (RFC 7672) policy
//! server for Postfix's `smtp_tls_policy_maps`; options, then
//! [`policyd_daemon::run`].

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgMatches, Command};
use mailtls_common::config::{add_options, ProgramSpec};
use policyd_daemon::{Config, Listen};
use policyd_policy::TestingAnswer;
use tlsrpt_delivery::TrustAnchors;

mailtls_common::options! {
    /// mailtls policyd's options.
    pub struct PolicydOptions, sources PolicydSources {
        /// Where Postfix connects: inet:ADDRESS:PORT (main.cf: socketmap:inet:ADDRESS:PORT:postfix)
        /// or unix:/PATH (socketmap:unix:PATH:postfix; a chrooted smtp needs the socket inside the
        /// queue directory)
        listen: String = "inet:127.0.0.1:8461",
        /// Permissions of a unix: socket in octal. The answers are public DNS and HTTPS data, but
        /// the socket must be writable by Postfix's smtp (user postfix)
        listen_mode: String = "0666",
        /// Name servers to ask, IP or IP:PORT, comma-separated; empty: those of /etc/resolv.conf.
        /// DANE needs a validating resolver (its AD flag is trusted, RFC 7672 section 2.1): use
        /// one on this host or a trusted network
        nameservers: String = "",
        /// PEM file of extra CAs trusted for the policy hosts' certificates, besides the system's
        /// (RFC 8461 section 3.3: WebPKI); empty: the system's only
        sts_ca_file: String = "",
        /// 1: policy hosts may be at loopback, private and other non-global addresses (labs,
        /// tests); 0: only global addresses are connected to, since a stranger's DNS names them
        allow_private_addresses: i64 = "0",
        /// The answer for a policy in mode testing (RFC 8461 section 5): notfound (Postfix applies
        /// its default level, as postfix-mta-sts-resolver and postfix-tlspol do), may
        /// (opportunistic TLS with the TLSRPT attributes, map postfix only), or enforce (as an
        /// enforce policy)
        testing_answer: String = "notfound",
        /// Most domains whose policy is kept in memory; the least recently used is dropped first
        cache_size: i64 = "100000",
        /// The persistent policy cache, so that a restart keeps applying a policy whose host is
        /// down (RFC 8461 section 3.3): a SQLite file, or postgresql://USER@HOST/DB for one cache
        /// a fleet's policy servers share (and the web pages' Outbound TLS view reads); empty:
        /// memory only
        database: String = "/var/lib/mailtls-policyd/policyd.sqlite",
        /// File whose first line is the password of a postgresql:// database
        password_file: String = "",
        /// Connections served at once (Postfix keeps one per smtp process, up to
        /// default_process_limit); more wait in the kernel's backlog
        max_connections: i64 = "256",
        /// Lookups running at once (each may wait for DNS and a policy fetch); more requests
        /// wait, so a flood of new domains cannot grow threads and memory without bound
        max_lookups: i64 = "64",
        /// Prometheus metrics at http://ADDRESS/metrics (plain HTTP, for anyone who can connect;
        /// keep it on loopback); empty: off
        metrics_listen: String = "",
        /// Connections the metrics listener serves at once (one address gets a quarter)
        metrics_max_connections: i64 = "8",
        /// Seconds a metrics client has for its whole request
        metrics_request_timeout: i64 = "5",
        /// Seconds a policy fetch may take, from resolving to the last byte
        fetch_timeout: i64 = "10",
        /// Seconds to wait for each name server
        dns_timeout: i64 = "5",
        /// Log level: debug, info, warn, error, critical, or a number
        log_level: String = "info",
        /// Log file (in addition to standard error); reopened on SIGHUP
        logfilename: String = "",
    }
}

pub const SPEC: ProgramSpec = ProgramSpec {
    name: "policyd",
    section: "policyd",
    env_prefix: "MAILTLS_POLICYD_",
    default_config_file: "/etc/mailtls/policyd.cfg",
    ignored: &[],
};

const ABOUT: &str =
    "Serve MTA-STS (RFC 8461) and DANE (RFC 7672) policies to Postfix's smtp_tls_policy_maps";

const LONG_ABOUT: &str = "\
Answer Postfix's smtp_tls_policy_maps lookups over the socketmap protocol: \
for each recipient domain, DANE first (RFC 8461 section 2), then MTA-STS. \
A domain whose MX hosts all have usable TLSA records under DNSSEC gets \
dane-only, one where some have gets dane. Otherwise its MTA-STS policy \
(TXT record _mta-sts.DOMAIN, policy fetched over HTTPS and cached until \
max_age): enforce gets secure with match= of the policy's MX patterns and \
servername=hostname, plus, in map postfix, the TLSRPT attributes that \
Postfix 3.10+ reports (policy_type=sts, policy_domain, mx_host_pattern, \
policy_string). Map postfix-notlsrpt answers the same without them, for \
Postfix 3.9 and older. No policy, mode none, mode testing (by default) and \
a policy that cannot be fetched without a valid cached one (RFC 8461 \
section 3.3) get NOTFOUND: Postfix applies smtp_tls_security_level. A DNS \
failure gets TEMP: Postfix defers rather than delivering without a policy.

Keys that are not a domain get NOTFOUND: .parent lookups, [host]:port and \
IP next hops. Internationalized domains are looked up by their A-label.

Fetched policies are cached in memory (at most cache_size domains) and \
in database (a SQLite file, or PostgreSQL shared by a fleet), read back at \
start, so that a restart keeps applying a cached policy whose host is down. \
An enforce policy that none of the domain's MX hosts matches (RFC 8461 \
section 4.1) gets secure with policy_failure=validation-failure: Postfix \
defers and reports it.

Every option can also be set as MAILTLS_POLICYD_<NAME> in the environment or \
in the [policyd] section of the config file; the command line wins over the \
environment, which wins over the file.";

const AFTER_HELP: &str = "\
Signals:
  SIGTERM, SIGINT  stop listening and exit 0
  SIGHUP           reopen the log file (after log rotation)

Exit status: 0 clean stop, 1 cannot listen, 2 configuration error.

Postfix, main.cf (3.10+; map postfix-notlsrpt for older versions):
  smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix";

pub fn command() -> Command {
    add_options::<PolicydOptions>(
        Command::new("policyd")
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .after_long_help(AFTER_HELP),
        &SPEC,
    )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let options = match super::start(&SPEC, "policyd", matches, |o: &PolicydOptions| {
        (o.log_level.as_str(), o.logfilename.as_str())
    }) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let config = match config_from(&options) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e:#}");
            return 2;
        }
    };
    let clock = match mailtls_common::clock::from_env() {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return 2;
        }
    };
    super::reopen_log_on_sighup();
    match policyd_daemon::run(config, clock, stop_signal()) {
        Ok(()) => {
            log::info!("stopped");
            0
        }
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

/// SIGTERM or SIGINT.
pub(super) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: stopping"),
                _ = int.recv() => log::info!("SIGINT: stopping"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot handle SIGTERM/SIGINT ({e}); serving until killed");
            std::future::pending::<()>().await;
        }
    }
}

/// Validates the options into the daemon's configuration.
pub fn config_from(o: &PolicydOptions) -> anyhow::Result<Config> {
    let listen: Listen = o.listen.parse().map_err(anyhow::Error::msg)?;
    let listen_mode = u32::from_str_radix(o.listen_mode.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("listen_mode {:?} is not an octal mode", o.listen_mode))?;
    let nameservers = match o.nameservers.trim() {
        "" => {
            let text = std::fs::read_to_string("/etc/resolv.conf")
                .context("nameservers is empty and /etc/resolv.conf cannot be read")?;
            policyd_daemon::dns::resolv_conf_nameservers(&text)
        }
        list => policyd_daemon::dns::parse_nameservers(list)
            .map_err(|e| anyhow::anyhow!("nameservers: {e}"))?,
    };
    if nameservers.is_empty() {
        bail!("no name server: set nameservers or a nameserver line in /etc/resolv.conf");
    }
    let ca_file = Some(o.sts_ca_file.trim())
        .filter(|f| !f.is_empty())
        .map(Path::new);
    let trust = TrustAnchors::load(ca_file).context("sts_ca_file")?;
    let allow_private_addresses = match o.allow_private_addresses {
        0 => false,
        1 => true,
        other => bail!("allow_private_addresses must be 0 or 1, not {other}"),
    };
    let testing = match o.testing_answer.as_str() {
        "notfound" => TestingAnswer::NotFound,
        "may" => TestingAnswer::May,
        "enforce" => TestingAnswer::Enforce,
        other => bail!("testing_answer must be notfound, may or enforce, not {other:?}"),
    };
    let positive = |name: &str, value: i64| -> anyhow::Result<u64> {
        u64::try_from(value)
            .ok()
            .filter(|v| *v > 0)
            .with_context(|| format!("{name} must be at least 1, not {value}"))
    };
    Ok(Config {
        listen,
        listen_mode,
        nameservers,
        dns_timeout: Duration::from_secs(positive("dns_timeout", o.dns_timeout)?),
        trust,
        allow_private_addresses,
        fetch_timeout: Duration::from_secs(positive("fetch_timeout", o.fetch_timeout)?),
        testing,
        cache_size: usize::try_from(positive("cache_size", o.cache_size)?)?,
        database: match o.database.trim() {
            "" => None,
            database => {
                let password_file = Some(o.password_file.trim())
                    .filter(|f| !f.is_empty())
                    .map(Path::new);
                Some(policyd_store::Database::parse(database, password_file).context("database")?)
            }
        },
        metrics: match o.metrics_listen.trim() {
            "" => None,
            listen => Some((
                listen
                    .parse()
                    .map_err(|_| anyhow::anyhow!("metrics_listen {listen:?} is not IP:PORT"))?,
                mailtls_common::config::metrics_limits(
                    o.metrics_max_connections,
                    o.metrics_request_timeout,
                )?,
            )),
        },
        limits: policyd_daemon::server::Limits {
            connections: usize::try_from(positive("max_connections", o.max_connections)?)?,
            lookups: usize::try_from(positive("max_lookups", o.max_lookups)?)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtls_common::config::ProgramOptions;

    #[test]
    fn defaults_and_refusals() {
        let mut o = PolicydOptions::defaults();
        o.nameservers = "127.0.0.1".into();
        let config = config_from(&o).unwrap();
        assert_eq!(
            config.listen,
            Listen::Inet("127.0.0.1:8461".parse().unwrap())
        );
        assert_eq!(config.testing, TestingAnswer::NotFound);
        assert_eq!(config.cache_size, 100_000);
        assert!(!config.allow_private_addresses);
        for (field, value) in [
            ("testing_answer", "strict"),
            ("listen", "127.0.0.1:8461"),
            ("listen_mode", "rw"),
            ("nameservers", "dns.example"),
        ] {
            let mut bad = o.clone();
            match field {
                "testing_answer" => bad.testing_answer = value.into(),
                "listen" => bad.listen = value.into(),
                "listen_mode" => bad.listen_mode = value.into(),
                _ => bad.nameservers = value.into(),
            }
            assert!(config_from(&bad).is_err(), "{field} = {value}");
        }
        let mut bad = o.clone();
        bad.allow_private_addresses = 2;
        assert!(config_from(&bad).is_err());
        bad = o;
        bad.cache_size = 0;
        assert!(config_from(&bad).is_err());
    }
}
