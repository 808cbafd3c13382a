//! `tlsrpt-fetcher`, under the upstream name and with the upstream options.

fn main() {
    let matches = mailtls::programs::fetcher::command()
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    std::process::exit(mailtls::programs::fetcher::main(&matches));
}
