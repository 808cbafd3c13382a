//! `mailtls posttls` / `posttls`: mandatory outbound TLS with the sender in
//! control. `scan` makes one pass over the queue (for cron, with a lock
//! against overlapping runs); `worker` scans every `scan_interval` seconds;
//! `web` serves the pages and `adduser` makes their admin accounts.
//!
//! [`options`] is what the privileged [`worker`] and the unprivileged
//! [`web`] process share; neither uses the other.

use clap::{ArgMatches, Command};
use mailtls_common::config::add_options;

pub mod options;
pub mod web;
pub mod worker;

pub(crate) use options::database;
pub use options::{PosttlsOptions, SPEC};

const LONG_ABOUT: &str = "\
PostTLS lets a Postfix site require TLS for all outgoing mail while the \
sender stays in control: when a recipient's server cannot do TLS and \
Postfix defers the message, the sender is told (once, plus a few reminders) \
and chooses \"send unencrypted\" or \"delete\" on a confirmation page. \
Recipients in mandatory-TLS domains are never sent unencrypted.

Every option can also be set as POSTTLS_<NAME> in the environment or in the \
[posttls] section of the config file; the command line wins over the \
environment, which wins over the file.";

pub fn command() -> Command {
    let sub = |name: &'static str, about: &'static str| {
        add_options::<PosttlsOptions>(Command::new(name).about(about), &SPEC)
    };
    Command::new("posttls")
        .about("Mandatory outbound TLS with the sender in control")
        .long_about(LONG_ABOUT)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(sub(
            "scan",
            "Carry out queued requests, then one pass over the queue: classify, notify (for cron; locked against overlaps)",
        ))
        .subcommand(sub(
            "worker",
            "Scan every scan_interval seconds until SIGTERM",
        ))
        .subcommands(web::subcommands())
}

pub fn main(matches: &ArgMatches) -> i32 {
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    let options = match super::start(&SPEC, "posttls", sub, |o: &PosttlsOptions| {
        (o.log_level.as_str(), o.logfilename.as_str())
    }) {
        Ok(options) => options,
        Err(code) => return code,
    };
    // The web process needs none of the scanner's settings.
    if let Some(code) = web::run(name, sub, &options) {
        return code;
    }
    worker::run(name, &options)
}
