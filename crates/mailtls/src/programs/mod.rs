//! One module per program. Each exposes `command()` (its clap command, used
//! both as a `mailtls` subcommand and as a standalone binary) and
//! `main(&ArgMatches) -> i32` returning the exit code.

pub mod collectd;
pub mod fetcher;
pub mod loadgen;
pub mod posttls;
pub mod posttls_web;
pub mod reportd;
pub mod run;
pub mod tlsrptctl;

use clap::ArgMatches;
use mailtls_common::config::{self, ProgramSpec, Settings};

/// Resolve a program's settings and set up its logging from the common
/// `logfilename` and `log_level` settings, then log every setting with its
/// source. On failure the error has been printed and the usage exit code is
/// returned.
pub(crate) fn start(
    spec: &ProgramSpec,
    component: &'static str,
    matches: &ArgMatches,
) -> Result<Settings, i32> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("{}: {e}", spec.name);
        2
    };
    let settings = config::resolve(spec, matches, &config::process_env()).map_err(|e| fail(&e))?;
    let level = mailtls_common::logging::parse_level(settings.get_str("log_level"))
        .map_err(|e| fail(&e))?;
    mailtls_common::logging::init(component, settings.get_str("logfilename"), level)
        .map_err(|e| fail(&e))?;
    settings.log();
    Ok(settings)
}

/// The SMTP relay `relay` (`HOST`, `HOST:PORT` or `[ADDRESS]:PORT`) with
/// the program's `smtp_security`, `smtp_user` and `smtp_password_file`
/// options: how report mail (reportd) and notifications (PostTLS) are
/// submitted when a relay is configured.
pub(crate) fn smtp_transport(
    settings: &Settings,
    relay: &str,
    timeout: std::time::Duration,
    trust: &tlsrpt_delivery::TrustAnchors,
) -> Result<tlsrpt_delivery::Smtp, String> {
    use tlsrpt_delivery::{Smtp, SmtpCredentials, SmtpSecurity};
    let security = match settings.get_str("smtp_security") {
        "starttls" => SmtpSecurity::StartTls,
        "tls" => SmtpSecurity::ImplicitTls,
        "plain" => SmtpSecurity::Plaintext,
        other => {
            return Err(format!(
                "smtp_security {other:?} is not one of starttls, tls, plain"
            ))
        }
    };
    let (host, port) = match relay.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse::<u16>()
                .map_err(|_| format!("smtp_relay {relay:?}: bad port {port:?}"))?,
        ),
        _ => (relay, security.default_port()),
    };
    let credentials = match Some(settings.get_str("smtp_user"))
        .filter(|u| !u.is_empty())
        .map(str::to_string)
    {
        None => None,
        Some(user) => {
            let file = Some(settings.get_str("smtp_password_file"))
                .filter(|f| !f.is_empty())
                .ok_or("smtp_user is set but smtp_password_file is not")?;
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read smtp_password_file {file}: {e}"))?;
            Some(SmtpCredentials {
                user,
                password: password.trim_end_matches(['\r', '\n']).to_string(),
            })
        }
    };
    Smtp::new(host, port, security, credentials, timeout, trust).map_err(|e| e.to_string())
}
