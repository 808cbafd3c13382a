//! `mailtls`: one binary with a subcommand per program.

use clap::Command;
use mailtls::programs::{collectd, fetcher, loadgen, posttls, reportd, run, tlsrptctl};

fn main() {
    let cli = Command::new("mailtls")
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
        .subcommand(collectd::command().name("collectd"))
        .subcommand(fetcher::command().name("fetcher"))
        .subcommand(reportd::command().name("reportd"))
        .subcommand(tlsrptctl::command())
        .subcommand(posttls::command())
        .subcommand(loadgen::command())
        .subcommand(loadgen::sink_command().hide(true));
    let matches = cli.get_matches();
    let code = match matches.subcommand() {
        Some(("run", m)) => run::main(m),
        Some(("collectd", m)) => collectd::main(m),
        Some(("fetcher", m)) => fetcher::main(m),
        Some(("reportd", m)) => reportd::main(m),
        Some(("tlsrptctl", m)) => tlsrptctl::main(m),
        Some(("posttls", m)) => posttls::main(m),
        Some(("loadgen", m)) => loadgen::main(m),
        Some(("count-sink", m)) => loadgen::sink_main(m),
        _ => unreachable!("clap requires a known subcommand"),
    };
    std::process::exit(code);
}
