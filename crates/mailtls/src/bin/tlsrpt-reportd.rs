//! `tlsrpt-reportd`, under the upstream name and with the upstream options.

fn main() {
    let matches = mailtls::programs::reportd::command()
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    std::process::exit(mailtls::programs::reportd::main(&matches));
}
