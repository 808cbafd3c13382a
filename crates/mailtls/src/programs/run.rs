//! `mailtls run`: everything built so far, on embedded SQLite, with a default
//! configuration in a local directory and no root needed. Prints where the
//! socket is and how to point Postfix at it.

use std::path::Path;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use tlsrpt_collectd::socket::Permissions;
use tlsrpt_collectd::CollectdConfig;

pub fn command() -> Command {
    Command::new("run")
        .about(
            "Start everything with a default configuration in a local directory (no root needed)",
        )
        .long_about(
            "Start the mailtls services with a default configuration: the TLSRPT collector \
             listening on DIR/tlsrpt-collectd.socket and counting into DIR/collectd.sqlite \
             (embedded SQLite). Prints where everything is and how to point Postfix and the \
             fetcher at it; stops cleanly on Ctrl-C or SIGTERM. For production, run the \
             programs (tlsrpt-collectd, ...) with their own configuration files instead.",
        )
        .arg(
            Arg::new("dir")
                .long("dir")
                .value_name("DIR")
                .default_value("run")
                .help("Directory for the socket, databases and log (created if missing)"),
        )
        .arg(
            Arg::new("log_level")
                .long("log_level")
                .value_name("LEVEL")
                .default_value("info")
                .help("Log level: debug, info, warn, error"),
        )
}

pub fn main(matches: &ArgMatches) -> i32 {
    let dir = matches.get_one::<String>("dir").expect("default");
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("mailtls run: cannot create directory {dir}: {e}");
        return 1;
    }
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mailtls run: {dir}: {e}");
            return 1;
        }
    };
    let level = match mailtls_common::logging::parse_level(
        matches.get_one::<String>("log_level").expect("default"),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mailtls run: {e}");
            return 2;
        }
    };
    let log_file = dir.join("mailtls.log");
    if let Err(e) = mailtls_common::logging::init("mailtls", &log_file.to_string_lossy(), level) {
        eprintln!("mailtls run: {e}");
        return 1;
    }
    let config = default_config(&dir);
    print_banner(&dir, &config, &log_file);
    let clock = mailtls_common::clock::SystemClock;
    tlsrpt_collectd::run(config, &clock)
}

/// The collector's configuration under `dir`.
pub fn default_config(dir: &Path) -> CollectdConfig {
    let db = dir.join("collectd.sqlite");
    CollectdConfig {
        storage: vec![
            tlsrpt_store::StorageUrl::parse(&format!("sqlite://{}", db.display()))
                .expect("an absolute path makes a valid URL"),
        ],
        socket: dir.join("tlsrpt-collectd.socket"),
        permissions: Permissions::default(),
        socket_timeout: Duration::from_secs(5),
        max_uncommitted: 1000,
        rollover_script: None,
        dump_path: Some(dir.join("invalid-datagram.bin")),
    }
}

fn print_banner(dir: &Path, config: &CollectdConfig, log_file: &Path) {
    let socket = config.socket.display();
    let storage = &config.storage[0];
    println!("mailtls is running (Ctrl-C to stop)");
    println!();
    println!("  TLSRPT collector socket   {socket}");
    println!("  TLSRPT database (today)   {}", storage.path.display());
    println!(
        "  completed days            {}",
        tlsrpt_store::yesterday_path(&storage.path).display()
    );
    println!("  log                       {}", log_file.display());
    println!("  web UI                    none yet (the PostTLS dashboard is not built yet)");
    println!();
    println!("Point Postfix (>= 3.10) at the collector, in main.cf:");
    println!("  smtp_tlsrpt_enable = yes");
    println!("  smtp_tlsrpt_socket_name = {socket}");
    println!(
        "(Postfix's smtp processes need write access to {}.)",
        dir.display()
    );
    println!();
    println!("Send test traffic:    mailtls loadgen --socket {socket} --count 1000 --rate 1000");
    println!(
        "Read a completed day: tlsrpt-fetcher --storage {} YYYY-MM-DD",
        storage.url
    );
    println!();
}
