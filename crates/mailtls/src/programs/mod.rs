//! One module per program. Each exposes `command()` (its clap command, used
//! both as a `mailtls` subcommand and as a standalone binary) and
//! `main(&ArgMatches) -> i32` returning the exit code.

pub mod check;
pub mod collectd;
pub mod docs;
pub mod fetcher;
pub mod loadgen;
pub mod policyd;
pub mod posttls;
pub mod reportd;
pub mod run;
pub mod tlsrptctl;

use anyhow::{bail, Context};
use clap::{ArgMatches, Command};
use mailtls_common::config::{self, ProgramOptions, ProgramSpec};

/// The `mailtls` command with every program as a subcommand.
pub fn cli() -> Command {
    Command::new("mailtls")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Visibility and control over the TLS of outgoing mail for Postfix")
        .long_about(
            "mailtls gives Postfix operators visibility and control over the TLS of their \
             outgoing mail. Its TLSRPT part (RFC 8460) replaces sys4's tlsrpt-reporter: the \
             subcommands collectd, fetcher and reportd are the same programs as the \
             binaries tlsrpt-collectd, tlsrpt-fetcher and tlsrpt-reportd, with the same options.",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(run::command())
        .subcommand(check::command())
        .subcommand(collectd::command().name("collectd"))
        .subcommand(fetcher::command().name("fetcher"))
        .subcommand(reportd::command().name("reportd"))
        .subcommand(tlsrptctl::command())
        .subcommand(posttls::command())
        .subcommand(policyd::command())
        .subcommand(loadgen::command())
        .subcommand(loadgen::sink_command().hide(true))
        .subcommand(docs::command().hide(true))
}

/// Where a program's options name its log: `(log_level, logfilename)`.
pub(crate) type LogOptions<O> = fn(&O) -> (&str, &str);

/// Resolve a program's options and set up its logging from its
/// `log_level` and `logfilename` options (`log`), then log every setting
/// with its source. On failure the error has been printed and the usage
/// exit code is returned.
pub(crate) fn start<O: ProgramOptions>(
    spec: &ProgramSpec,
    component: &'static str,
    matches: &ArgMatches,
    log: LogOptions<O>,
) -> Result<O, i32> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("{}: {e}", spec.name);
        2
    };
    let (options, settings) =
        config::resolve::<O>(spec, matches, &config::process_env()).map_err(|e| fail(&e))?;
    let (log_level, logfilename) = log(&options);
    let level = mailtls_common::logging::parse_level(log_level).map_err(|e| fail(&e))?;
    mailtls_common::logging::init(component, logfilename, level).map_err(|e| fail(&e))?;
    settings.log();
    Ok(options)
}

/// The SMTP submission options that the report daemon and PostTLS share.
pub(crate) struct SmtpOptions<'a> {
    /// `HOST`, `HOST:PORT` or `[ADDRESS]:PORT`.
    pub relay: &'a str,
    /// `starttls`, `tls` or `plain`.
    pub security: &'a str,
    /// Empty: no SMTP AUTH.
    pub user: &'a str,
    pub password_file: &'a str,
}

/// The SMTP relay of `smtp`: how report mail (reportd) and notifications
/// (PostTLS) are submitted when a relay is configured.
pub(crate) fn smtp_transport(
    smtp: &SmtpOptions<'_>,
    timeout: std::time::Duration,
    trust: &tlsrpt_delivery::TrustAnchors,
) -> anyhow::Result<tlsrpt_delivery::Smtp> {
    use tlsrpt_delivery::{Smtp, SmtpCredentials, SmtpSecurity};
    let relay = smtp.relay;
    let security = match smtp.security {
        "starttls" => SmtpSecurity::StartTls,
        "tls" => SmtpSecurity::ImplicitTls,
        "plain" => SmtpSecurity::Plaintext,
        other => {
            bail!("smtp_security {other:?} is not one of starttls, tls, plain")
        }
    };
    let (host, port) = match relay.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse::<u16>()
                .with_context(|| format!("smtp_relay {relay:?}: bad port {port:?}"))?,
        ),
        _ => (relay, security.default_port()),
    };
    let credentials = match Some(smtp.user)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
    {
        None => None,
        Some(user) => {
            let file = Some(smtp.password_file)
                .filter(|f| !f.is_empty())
                .context("smtp_user is set but smtp_password_file is not")?;
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read smtp_password_file {file}"))?;
            Some(SmtpCredentials {
                user,
                password: password.trim_end_matches(['\r', '\n']).to_string(),
            })
        }
    };
    Smtp::new(host, port, security, credentials, timeout, trust).map_err(anyhow::Error::from)
}

/// SIGHUP reopens the log file (logrotate), on a thread of its own.
pub(crate) fn reopen_log_on_sighup() {
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    mailtls_common::logging::reopen();
                }
            });
        }
        Err(e) => log::warn!("cannot handle SIGHUP (log reopening): {e}"),
    }
}
