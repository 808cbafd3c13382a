//! One module per program. Each exposes `command()` (its clap command, used
//! both as a `mailtls` subcommand and as a standalone binary) and
//! `main(&ArgMatches) -> i32` returning the exit code.

pub mod collectd;
pub mod fetcher;
pub mod loadgen;
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
