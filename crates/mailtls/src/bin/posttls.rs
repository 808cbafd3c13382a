//! `posttls`: mandatory outbound TLS with the sender in control.

fn main() {
    let matches = mailtls::programs::posttls::command()
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    std::process::exit(mailtls::programs::posttls::main(&matches));
}
