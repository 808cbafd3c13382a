//! `tlsrpt-collectd`, under the upstream name and with the upstream options.

fn main() {
    let matches = mailtls::programs::collectd::command()
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    std::process::exit(mailtls::programs::collectd::main(&matches));
}
