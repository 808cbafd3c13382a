//! `mailtls posttls web` and `mailtls posttls adduser NAME`: the web pages
//! (confirmation pages and admin dashboard, [`mailtls_web`]) and the admin
//! accounts they log in with.
//!
//! The web process needs no privileges: it reads the token key and reads
//! and writes the PostTLS database (tokens used, requested actions, audit,
//! sessions), never a Postfix command. The worker carries out what it
//! records.

use anyhow::{anyhow, Context};
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use mailtls_common::config::add_options;
use mailtls_web::WebConfig;
use posttls_policy::DomainSet;
use posttls_store::{Access, AuditEvent, Database, Store};
use posttls_token::SecretKey;

use super::options::{database, instance_name, PosttlsOptions, SPEC};
use tlsrpt_reportd_db::DbName;

/// Shortest admin password accepted by `adduser`.
pub const MIN_PASSWORD_LEN: usize = 12;

/// The `web` and `adduser` subcommands of `mailtls posttls`, with the
/// program's options: `posttls::command()` adds them with
/// `.subcommands(web::subcommands())`.
pub fn subcommands() -> [Command; 2] {
    let spec = &SPEC;
    [
        add_options::<PosttlsOptions>(
            Command::new("web").about(
                "Serve the confirmation pages and the admin dashboard on `listen` until SIGTERM \
                 (needs no root: it only records requests for the worker)",
            ),
            spec,
        ),
        add_options::<PosttlsOptions>(
            Command::new("adduser")
                .about("Create admin NAME or give it a new password, read as one line from standard input")
                .arg(
                    Arg::new("admin")
                        .value_name("NAME")
                        .required(true)
                        .help("Admin name: 1 to 64 letters, digits, '.', '_', '@' or '-' (not first)"),
                ),
            spec,
        ),
    ]
}

/// Runs subcommand `name` if it is `web` or `adduser` (`None` for the
/// others): `posttls::main()` calls it with the resolved options before it
/// builds the scanner's setup, which the web process does not need.
pub fn run(name: &str, sub: &ArgMatches, options: &PosttlsOptions) -> Option<i32> {
    match name {
        "web" => Some(web(options)),
        "adduser" => {
            let admin = sub.get_one::<String>("admin").expect("clap requires NAME");
            Some(adduser(options, admin))
        }
        _ => None,
    }
}

/// `mailtls posttls web`: serve until SIGTERM/SIGINT. Exit status 0 after a
/// clean stop, 1 when it cannot start or serve, 2 for bad settings.
pub fn web(options: &PosttlsOptions) -> i32 {
    let config = match web_config(options) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e:#}");
            return 2;
        }
    };
    if let Some(warning) = proxy_warning(&config) {
        log::warn!("{warning}");
    }
    let key = match SecretKey::load_or_create(Path::new(&options.secret_key_file)) {
        Ok(k) => k,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    super::super::reopen_log_on_sighup();
    let database = match database(options) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e:#}");
            return 2;
        }
    };
    match mailtls_web::serve(config, &database, key) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

/// The web settings: `listen`, `instance`, `base_url`, `organization_name`,
/// `cookie_secure`, `mandatory_domains` and `trusted_proxies`.
pub fn web_config(o: &PosttlsOptions) -> anyhow::Result<WebConfig> {
    let mandatory_domains =
        DomainSet::parse_list(&o.mandatory_domains).context("mandatory_domains")?;
    let trusted_proxies = o
        .trusted_proxies
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .with_context(|| format!("trusted_proxies: {p:?} is not an IP address"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let positive = |name: &str, value: i64| {
        u64::try_from(value)
            .ok()
            .filter(|&v| v > 0)
            .with_context(|| format!("{name} = {value}: a positive number is needed"))
    };
    let limits = mailtls_web::ConnectionLimits {
        max_connections: positive("max_connections", o.max_connections)? as usize,
        max_per_client: positive("max_connections_per_client", o.max_connections_per_client)?
            as usize,
        head_timeout: Duration::from_secs(positive(
            "request_head_timeout",
            o.request_head_timeout,
        )?),
        request_timeout: Duration::from_secs(positive("request_timeout", o.request_timeout)?),
    };
    let secure_cookies = o.cookie_secure != 0;
    if !secure_cookies {
        log::warn!("cookie_secure = 0: the admin session cookie is sent over plain HTTP too; use this for tests only");
    }
    Ok(WebConfig {
        listen: o.listen.clone(),
        // One web process for a fleet's workers serves every instance.
        instance: (!o.instance.is_empty() || !Database::is_url(&o.database))
            .then(|| instance_name(o)),
        base_url: o.base_url.clone(),
        organization: o.organization_name.clone(),
        secure_cookies,
        mandatory_domains,
        trusted_proxies,
        tlsrpt: tlsrpt_sources(o)?,
        policyd: match o.policyd_database.as_str() {
            "" => None,
            value => Some(
                policyd_store::Database::parse(
                    value,
                    Some(o.policyd_password_file.as_str())
                        .filter(|f| !f.is_empty())
                        .map(std::path::Path::new),
                )
                .context("policyd_database")?,
            ),
        },
        limits,
        more_metrics: Default::default(),
    })
}

/// What the Outbound TLS view reads: `tlsrpt_collector_db` and
/// `tlsrpt_reportd_db`, each a SQLite file or a `postgresql://` URL with
/// its password file.
fn tlsrpt_sources(o: &PosttlsOptions) -> anyhow::Result<tlsrpt_stats::Sources> {
    let file = |value: &str| (!value.is_empty()).then(|| PathBuf::from(value));
    let collector = match o.tlsrpt_collector_db.as_str() {
        "" => None,
        value => Some(
            tlsrpt_stats::CollectorSource::parse(
                value,
                file(&o.tlsrpt_collector_password_file).as_deref(),
            )
            .context("tlsrpt_collector_db")?,
        ),
    };
    let reportd = match o.tlsrpt_reportd_db.as_str() {
        "" => None,
        value => Some(
            DbName::parse(value, file(&o.tlsrpt_reportd_password_file).as_deref())
                .context("tlsrpt_reportd_db")?,
        ),
    };
    Ok(tlsrpt_stats::Sources { collector, reportd })
}

/// The warning for `listen` on loopback without `trusted_proxies`: behind
/// a reverse proxy on this host every client then has the proxy's address,
/// so one stranger's failed logins throttle every admin's. Only a warning:
/// without a proxy (the quick start) the setting is right.
fn proxy_warning(config: &WebConfig) -> Option<String> {
    if !config.trusted_proxies.is_empty() {
        return None;
    }
    if is_dual_stack(&config.listen) {
        return Some(format!(
            "listen = {} takes IPv4 connections too, and trusted_proxies is empty: a reverse \
             proxy on this host (127.0.0.1, seen here as ::ffff:127.0.0.1) makes every client \
             appear as the proxy's address, so one stranger's failed logins lock every admin \
             out of the login. If a proxy forwards to these pages, set trusted_proxies = \
             127.0.0.1 (and ::1 if it connects over IPv6; addresses are compared as IPv4 \
             where they are IPv4-mapped) and have it send X-Forwarded-For with the client's \
             address",
            config.listen
        ));
    }
    if !is_loopback(&config.listen) {
        return None;
    }
    Some(format!(
        "listen = {} is a loopback address and trusted_proxies is empty: behind a reverse \
         proxy every client appears as the proxy's address, so one stranger's failed logins \
         lock every admin out of the login. If a proxy on this host forwards to these \
         pages, set trusted_proxies = 127.0.0.1 (and ::1 if it connects over IPv6) and have \
         it send X-Forwarded-For with the client's address",
        config.listen
    ))
}

/// Whether `listen` is `[::]:PORT`, which also takes IPv4 connections
/// (as IPv4-mapped addresses), from a proxy on 127.0.0.1 too.
fn is_dual_stack(listen: &str) -> bool {
    listen
        .parse::<SocketAddr>()
        .is_ok_and(|addr| addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
}

/// Whether `listen` (`ADDRESS:PORT`) is a loopback address.
fn is_loopback(listen: &str) -> bool {
    match listen.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().to_canonical().is_loopback(),
        Err(_) => listen
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

/// `mailtls posttls adduser NAME`: create admin NAME, or give it a new
/// password, read as one line from standard input (`echo "$PW" |` or a
/// file; nothing is asked twice). Exit status 0 when saved, 1 when the
/// database cannot be written, 2 for a bad name or password.
pub fn adduser(options: &PosttlsOptions, name: &str) -> i32 {
    if unsafe { libc::isatty(0) } == 1 {
        eprintln!("Password for admin {name} (one line; it is shown as you type, so prefer piping it in):");
    }
    adduser_from(options, name, &mut std::io::stdin().lock())
}

/// [`adduser`] with the password from `input`.
pub fn adduser_from(options: &PosttlsOptions, name: &str, input: &mut impl BufRead) -> i32 {
    if let Err(e) = check_admin_name(name) {
        eprintln!("posttls adduser: {e}");
        return 2;
    }
    let mut line = String::new();
    if let Err(e) = input.read_line(&mut line) {
        eprintln!("posttls adduser: cannot read the password from standard input: {e}");
        return 2;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.chars().count() < MIN_PASSWORD_LEN {
        eprintln!(
            "posttls adduser: the password (one line on standard input) must have at least {MIN_PASSWORD_LEN} characters"
        );
        return 2;
    }
    let hash = posttls_auth::hash_password(password);
    // As the worker: on PostgreSQL only its role may write admins (and
    // the first adduser creates the tables).
    let database = match database(options) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("posttls adduser: {e:#}");
            return 2;
        }
    };
    let saved = Store::connect(&database, Access::Worker).and_then(|store| {
        let now = chrono::Utc::now().timestamp();
        store.set_admin(name, &hash, now)?;
        store.audit(
            "adduser",
            None,
            None,
            AuditEvent::AdminPasswordSet,
            name,
            now,
        )
    });
    match saved {
        Ok(()) => {
            println!(
                "admin {name} saved in {database}; sign in at {}/admin",
                options.base_url.trim_end_matches('/')
            );
            0
        }
        Err(e) => {
            eprintln!("posttls adduser: {database}: {e}");
            1
        }
    }
}

/// Admin names: 1 to 64 letters, digits and `._@-`, not starting with `-`
/// (the login form looks up nothing else).
pub fn check_admin_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "admin name {name:?}: use 1 to 64 letters, digits, '.', '_', '@' or '-' (not first)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtls_common::config::{add_options, resolve, ProgramSpec};

    /// PostTLS's spec without its default file: the tests must not read
    /// the /etc/mailtls/posttls.cfg of a mailtls installed on this machine.
    const SPEC: ProgramSpec = ProgramSpec {
        default_config_file: "/nonexistent/posttls.cfg",
        ..super::super::SPEC
    };

    fn settings(args: &[&str]) -> PosttlsOptions {
        let command = add_options::<PosttlsOptions>(clap::Command::new("web"), &SPEC);
        let matches = command
            .try_get_matches_from(std::iter::once("web").chain(args.iter().copied()))
            .unwrap();
        resolve(&SPEC, &matches, &[]).unwrap().0
    }

    #[test]
    fn subcommands_parse() {
        let command = clap::Command::new("posttls").subcommands(subcommands());
        let matches = command
            .clone()
            .try_get_matches_from(["posttls", "adduser", "root", "--database=/tmp/x.sqlite"])
            .unwrap();
        let (name, sub) = matches.subcommand().unwrap();
        assert_eq!(name, "adduser");
        assert_eq!(sub.get_one::<String>("admin").unwrap(), "root");
        let (options, _) = resolve::<PosttlsOptions>(&SPEC, sub, &[]).unwrap();
        assert_eq!(options.database, "/tmp/x.sqlite");
        assert!(command
            .clone()
            .try_get_matches_from(["posttls", "adduser"])
            .is_err());
        let matches = command
            .try_get_matches_from(["posttls", "web", "--listen=127.0.0.1:9"])
            .unwrap();
        let (name, sub) = matches.subcommand().unwrap();
        assert_eq!(name, "web");
        let (options, _) = resolve::<PosttlsOptions>(&SPEC, sub, &[]).unwrap();
        assert_eq!(web_config(&options).unwrap().listen, "127.0.0.1:9");
        assert_eq!(run("scan", sub, &options), None);
    }

    #[test]
    fn the_outbound_tls_view_reads_files_or_a_fleets_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("viewer.pgpass");
        std::fs::write(&password, "secret\n").unwrap();
        let s = settings(&[
            "--tlsrpt_collector_db=postgresql://viewer@db.example.org/tlsrpt",
            &format!("--tlsrpt_collector_password_file={}", password.display()),
            "--tlsrpt_reportd_db=/var/lib/tlsrpt/reportd.sqlite",
        ]);
        let sources = tlsrpt_sources(&s).unwrap();
        assert!(matches!(
            sources.collector,
            Some(tlsrpt_stats::CollectorSource::Postgres(url))
                if url.shown() == "postgresql://viewer@db.example.org/tlsrpt"
        ));
        assert!(
            matches!(sources.reportd, Some(DbName::Sqlite(path)) if path.ends_with("reportd.sqlite"))
        );
        let s = settings(&[
            "--tlsrpt_collector_db=",
            "--tlsrpt_reportd_db=postgresql://r@h/reportd",
        ]);
        let sources = tlsrpt_sources(&s).unwrap();
        assert!(sources.collector.is_none());
        assert!(matches!(sources.reportd, Some(DbName::Postgres(_))));
        let s = settings(&[
            "--tlsrpt_reportd_db=postgresql://r@h/reportd",
            "--tlsrpt_reportd_password_file=/nonexistent/file",
        ]);
        let error = format!("{:#}", tlsrpt_sources(&s).unwrap_err());
        assert!(error.starts_with("tlsrpt_reportd_db: "), "{error}");
    }

    #[test]
    fn web_settings() {
        let s = settings(&[
            "--listen=127.0.0.1:9999",
            "--instance=mx1",
            "--base_url=https://mail.example.org/posttls",
            "--organization_name=Example Org",
            "--mandatory_domains=bank.example, .gov.example",
            "--cookie_secure=0",
        ]);
        let config = web_config(&s).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9999");
        assert_eq!(config.instance.as_deref(), Some("mx1"));
        assert_eq!(config.base_url, "https://mail.example.org/posttls");
        assert_eq!(config.organization, "Example Org");
        assert!(!config.secure_cookies);
        assert_eq!(
            config.mandatory_domains.entries(),
            [".gov.example", "bank.example"]
        );
        let defaults = web_config(&settings(&[])).unwrap();
        assert!(defaults.secure_cookies, "Secure cookies by default");
        assert_eq!(defaults.listen, "127.0.0.1:8025");
        assert!(!defaults.instance.unwrap().is_empty());
        // One web process for a fleet on PostgreSQL serves every instance,
        // unless one is named.
        let fleet = "--database=postgresql://posttls_web@db.example.org/posttls";
        assert_eq!(web_config(&settings(&[fleet])).unwrap().instance, None);
        assert_eq!(
            web_config(&settings(&[fleet, "--instance=mx1"]))
                .unwrap()
                .instance
                .as_deref(),
            Some("mx1")
        );
        assert!(web_config(&settings(&["--mandatory_domains=a@b"])).is_err());
    }

    #[test]
    fn loopback_without_trusted_proxies_is_warned_about() {
        let config = |args: &[&str]| web_config(&settings(args)).unwrap();
        let warning = proxy_warning(&config(&[])).expect("the default listen is loopback");
        assert!(warning.contains("listen = 127.0.0.1:8025"), "{warning}");
        assert!(
            warning.contains("set trusted_proxies = 127.0.0.1"),
            "{warning}"
        );
        assert!(warning.contains("X-Forwarded-For"), "{warning}");
        for listen in [
            "[::1]:8025",
            "127.0.0.2:80",
            "localhost:8025",
            "[::ffff:127.0.0.1]:1",
        ] {
            let arg = format!("--listen={listen}");
            assert!(proxy_warning(&config(&[&arg])).is_some(), "{listen}");
        }
        for quiet in [
            &["--trusted_proxies=127.0.0.1"][..],
            &["--trusted_proxies=::1, 127.0.0.1"],
            &["--listen=192.0.2.1:8025"],
            &["--listen=[2001:db8::1]:8025"],
            &["--listen=0.0.0.0:8025"],
            &["--listen=[::]:8025", "--trusted_proxies=127.0.0.1"],
            &["--listen=web.example:8025"],
        ] {
            let config = config(quiet);
            assert_eq!(proxy_warning(&config), None, "{quiet:?}");
        }
        // A dual-stack listener sees a proxy on 127.0.0.1 as ::ffff:127.0.0.1.
        let warning = proxy_warning(&config(&["--listen=[::]:8025"])).expect("dual stack");
        assert!(warning.contains("::ffff:127.0.0.1"), "{warning}");
        assert!(warning.contains("set trusted_proxies"), "{warning}");
        // An IPv4-mapped proxy address is taken as the IPv4 address.
        assert_eq!(
            config(&["--trusted_proxies=::ffff:127.0.0.1"]).trusted_proxies,
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            config(&["--trusted_proxies=::1, 127.0.0.1"]).trusted_proxies,
            [
                "::1".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn adduser_reads_one_line_and_hashes_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("posttls.sqlite");
        let s = settings(&[&format!("--database={}", db.display())]);
        let mut input = "a long enough password\nignored second line\n".as_bytes();
        assert_eq!(adduser_from(&s, "root", &mut input), 0);
        let store = Store::open(&db).unwrap();
        let hash = store.admin_password_hash("root").unwrap().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(posttls_auth::verify_password(
            &hash,
            "a long enough password"
        ));
        assert_eq!(
            store.audit_log(1).unwrap()[0].event,
            AuditEvent::AdminPasswordSet
        );
        // A new password replaces the old one; CRLF is not part of it.
        assert_eq!(
            adduser_from(&s, "root", &mut "another password!\r\n".as_bytes()),
            0
        );
        let hash = store.admin_password_hash("root").unwrap().unwrap();
        assert!(posttls_auth::verify_password(&hash, "another password!"));

        assert_eq!(adduser_from(&s, "root", &mut "short\n".as_bytes()), 2);
        assert_eq!(adduser_from(&s, "root", &mut "".as_bytes()), 2);
        for bad in ["", "--help", "-", "a b", "$(id)", "a\nb", "<b>"] {
            assert_eq!(
                adduser_from(&s, bad, &mut "a long enough password\n".as_bytes()),
                2,
                "{bad:?}"
            );
            assert_eq!(store.admin_password_hash(bad).unwrap(), None);
        }
    }
}
