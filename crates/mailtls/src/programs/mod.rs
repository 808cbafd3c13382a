//! One module per program. Each exposes `command()` (its clap command, used
//! both as a `mailtls` subcommand and as a standalone binary) and
//! `main(&ArgMatches) -> i32` returning the exit code.

pub mod collectd;
pub mod fetcher;
pub mod loadgen;
pub mod run;

use clap::ArgMatches;
use mailtls_common::config::{self, ProgramSpec, Settings};

/// Resolve a program's settings, or print the error the way a command-line
/// user needs it and return the usage exit code.
pub(crate) fn settings(spec: &ProgramSpec, matches: &ArgMatches) -> Result<Settings, i32> {
    config::resolve(spec, matches, &config::process_env()).map_err(|e| {
        eprintln!("{}: {e}", spec.name);
        2
    })
}

/// Set up logging from the common `logfilename` and `log_level` settings.
pub(crate) fn init_logging(
    component: &'static str,
    program: &str,
    settings: &Settings,
) -> Result<(), i32> {
    let level =
        mailtls_common::logging::parse_level(settings.get_str("log_level")).map_err(|e| {
            eprintln!("{program}: {e}");
            2
        })?;
    mailtls_common::logging::init(component, settings.get_str("logfilename"), level).map_err(
        |e| {
            eprintln!("{program}: {e}");
            2
        },
    )?;
    settings.log();
    Ok(())
}
