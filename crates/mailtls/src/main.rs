//! `mailtls`: one binary with a subcommand per program.

use mailtls::programs::{
    self, check, collectd, docs, fetcher, loadgen, policyd, posttls, reportd, run, tlsrptctl,
};

fn main() {
    let matches = programs::cli().get_matches();
    let code = match matches.subcommand() {
        Some(("run", m)) => run::main(m),
        Some(("check", m)) => check::main(m),
        Some(("collectd", m)) => collectd::main(m),
        Some(("fetcher", m)) => fetcher::main(m),
        Some(("reportd", m)) => reportd::main(m),
        Some(("tlsrptctl", m)) => tlsrptctl::main(m),
        Some(("posttls", m)) => posttls::main(m),
        Some(("policyd", m)) => policyd::main(m),
        Some(("loadgen", m)) => loadgen::main(m),
        Some(("count-sink", m)) => loadgen::sink_main(m),
        Some(("generate-docs", m)) => docs::main(m),
        _ => unreachable!("clap requires a known subcommand"),
    };
    std::process::exit(code);
}
