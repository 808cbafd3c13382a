//! `tlsrptctl`, under the upstream name, reading the reportd's options.

fn main() {
    let matches = mailtls::programs::tlsrptctl::command()
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    std::process::exit(mailtls::programs::tlsrptctl::main(&matches));
}
