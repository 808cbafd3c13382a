//! `mailtls loadgen`: send TLSRPT datagrams at a given rate, non-blocking as
//! libtlsrpt does, and report how many the kernel refused. Also the
//! count-only receiver (`mailtls count-sink`) that benchmarks use as the floor
//! of what this machine allows.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{value_parser, Arg, ArgMatches, Command};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tlsrpt_datagram::client::{
    DeliveryAttempt, FailureDetail, Policy, PolicyType, ResultType, Sender,
};

pub fn command() -> Command {
    Command::new("loadgen")
        .about("Send varied TLSRPT datagrams at a given rate and count what the kernel refused")
        .long_about(
            "Send COUNT datagrams to a collector socket at RATE per second, the way libtlsrpt \
             sends them: non-blocking, so a datagram that finds the receive queue full is lost \
             (counted as refused). Each datagram carries one policy for a domain drawn from \
             DOMAINS distinct domains; each domain has a fixed policy (TLSA, MTA-STS or none) \
             and about one delivery in five fails with a random result type. The sum of the \
             collector's cntrtotal therefore equals the number of datagrams it counted.",
        )
        .arg(
            Arg::new("socket")
                .long("socket")
                .value_name("PATH")
                .required(true)
                .help("Collector socket to send to"),
        )
        .arg(
            Arg::new("count")
                .long("count")
                .value_name("N")
                .default_value("10000")
                .value_parser(value_parser!(u64))
                .help("Number of datagrams to send"),
        )
        .arg(
            Arg::new("rate")
                .long("rate")
                .value_name("PER_SECOND")
                .default_value("0")
                .value_parser(value_parser!(u64))
                .help("Datagrams per second; 0 sends as fast as possible"),
        )
        .arg(
            Arg::new("domains")
                .long("domains")
                .value_name("N")
                .default_value("1000")
                .value_parser(value_parser!(u64).range(1..))
                .help("Number of distinct recipient domains"),
        )
        .arg(
            Arg::new("sequential")
                .long("sequential")
                .action(clap::ArgAction::SetTrue)
                .help("Take the domains in turn instead of at random, so that every domain appears before any repeats"),
        )
        .arg(
            Arg::new("unique-ehlo")
                .long("unique-ehlo")
                .action(clap::ArgAction::SetTrue)
                .help("Every delivery fails at a server with an EHLO name never seen before (a hostile MX): one new failure detail per datagram"),
        )
        .arg(
            Arg::new("seed")
                .long("seed")
                .value_name("N")
                .default_value("1")
                .value_parser(value_parser!(u64))
                .help("Seed of the random choices, for repeatable runs"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(clap::ArgAction::SetTrue)
                .help("Print the result as one JSON object"),
        )
}

/// What one load run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadResult {
    pub attempted: u64,
    /// Accepted by the kernel.
    pub accepted: u64,
    /// Refused because the receiver's queue was full (EAGAIN).
    pub refused: u64,
    /// Other send errors (no such socket, connection refused).
    pub errors: u64,
    pub seconds: f64,
}

pub fn main(matches: &ArgMatches) -> i32 {
    let socket = matches.get_one::<String>("socket").expect("required");
    let count = *matches.get_one::<u64>("count").expect("default");
    let rate = *matches.get_one::<u64>("rate").expect("default");
    let domains = *matches.get_one::<u64>("domains").expect("default");
    let seed = *matches.get_one::<u64>("seed").expect("default");
    let sender = match Sender::new(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: cannot create a socket: {e}");
            return 1;
        }
    };
    let sequential = matches.get_flag("sequential");
    let unique_ehlo = matches.get_flag("unique-ehlo");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent = 0u64;
    let r = send_paced(&sender, count, rate, || {
        let domain = if sequential {
            sent % domains
        } else {
            rng.gen_range(0..domains)
        };
        sent += 1;
        let mut attempt = random_attempt(&mut rng, domain);
        if unique_ehlo {
            let policy = &mut attempt.policies[0];
            let mut detail = FailureDetail::new(ResultType::ALL[0]);
            detail.receiving_mx_helo = Some(format!("mx-{sent}.rotating.example"));
            policy.failures = vec![detail];
            policy.failed = true;
        }
        attempt.to_datagram()
    });
    if matches.get_flag("json") {
        println!(
            "{{\"attempted\": {}, \"accepted\": {}, \"refused\": {}, \"errors\": {}, \"seconds\": {:.3}}}",
            r.attempted, r.accepted, r.refused, r.errors, r.seconds
        );
    } else {
        println!(
            "sent {} datagrams in {:.2} s ({:.0}/s): {} accepted, {} refused by the kernel ({:.2}%), {} other errors",
            r.attempted,
            r.seconds,
            r.attempted as f64 / r.seconds.max(1e-9),
            r.accepted,
            r.refused,
            100.0 * r.refused as f64 / r.attempted.max(1) as f64,
            r.errors
        );
    }
    if r.errors > 0 && r.accepted == 0 {
        eprintln!("loadgen: nothing reached {socket}: is the collector running?");
        return 1;
    }
    0
}

/// A random delivery attempt to domain number `d`. As in real
/// traffic, what belongs to a domain is fixed (its policy type, policy, MX
/// hosts, TLSRPT record), and what varies is the outcome: about one delivery
/// in five fails, with a random result type, at one of the domain's two MX
/// addresses. So each domain sends a handful of distinct datagrams.
pub fn random_attempt(rng: &mut StdRng, d: u64) -> DeliveryAttempt {
    let domain = format!("d{d}.example");
    let policy_type = match d % 3 {
        0 => PolicyType::Tlsa,
        1 => PolicyType::Sts,
        _ => PolicyType::NoPolicyFound,
    };
    let mut policy = Policy::new(policy_type);
    if policy_type != PolicyType::NoPolicyFound {
        policy.policy_domain = Some(domain.clone());
        policy.mx_hosts = vec![format!("mx1.{domain}"), format!("mx2.{domain}")];
        policy.policy_strings = match policy_type {
            PolicyType::Sts => vec![
                "version: STSv1".into(),
                "mode: enforce".into(),
                format!("mx: *.{domain}"),
                "max_age: 86400".into(),
            ],
            _ => vec![format!(
                "3 1 1 {:064X}",
                u128::from(d).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
            )],
        };
    }
    if rng.gen_range(0..5) == 0 {
        let mut detail =
            FailureDetail::new(ResultType::ALL[rng.gen_range(0..ResultType::ALL.len())]);
        let mx = rng.gen_range(1..3);
        detail.sending_mta_ip = Some("192.0.2.1".into());
        detail.receiving_ip = Some(format!("198.51.{}.{mx}", d % 256));
        detail.receiving_mx_hostname = Some(format!("mx{mx}.{domain}"));
        policy.failures.push(detail);
        policy.failed = true;
    }
    DeliveryAttempt {
        domain,
        record: format!("v=TLSRPTv1;rua=mailto:tlsrpt@d{d}.example"),
        policies: vec![policy],
    }
}

/// Send `count` datagrams made by `next` at `rate` per second (0: unpaced),
/// never blocking.
pub fn send_paced(
    sender: &Sender,
    count: u64,
    rate: u64,
    mut next: impl FnMut() -> Vec<u8>,
) -> LoadResult {
    // Fine-grained sleeps: the default 50 µs timer slack would turn a 20 µs
    // pause into bursts that no receiver could absorb.
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
    let mut r = LoadResult::default();
    let start = Instant::now();
    while r.attempted < count {
        if rate > 0 {
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(count);
            if r.attempted >= due {
                let next = Duration::from_secs_f64((r.attempted as f64) / rate as f64);
                let pause = next.saturating_sub(start.elapsed());
                std::thread::sleep(pause.max(Duration::from_micros(5)));
                continue;
            }
        }
        let bytes = next();
        r.attempted += 1;
        match sender.send_raw(&bytes) {
            Ok(()) => r.accepted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => r.refused += 1,
            Err(_) => r.errors += 1,
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    r
}

pub fn sink_command() -> Command {
    Command::new("count-sink")
        .about("Benchmark floor: receive datagrams on a socket and only count them")
        .long_about(
            "Bind a datagram socket and count what arrives, doing nothing else, until SIGTERM or \
             SIGINT; then read what is still queued and print the count. Benchmarks run it beside \
             the collectors as the floor of loss this machine allows.",
        )
        .arg(
            Arg::new("socket")
                .long("socket")
                .value_name("PATH")
                .required(true)
                .help("Socket path to bind (replaced if it exists)"),
        )
        .arg(
            Arg::new("realtime")
                .long("realtime")
                .action(clap::ArgAction::SetTrue)
                .help("Receive at real-time priority, as the collector does when permitted"),
        )
}

pub fn sink_main(matches: &ArgMatches) -> i32 {
    let path = matches.get_one::<String>("socket").expect("required");
    let _ = std::fs::remove_file(path);
    let socket = match std::os::unix::net::UnixDatagram::bind(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("count-sink: cannot bind {path}: {e}");
            return 1;
        }
    };
    let term = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook_consts::SIGTERM, signal_hook_consts::SIGINT] {
        if let Err(e) = signal_hook_flag(signal, &term) {
            eprintln!("count-sink: {e}");
            return 1;
        }
    }
    if matches.get_flag("realtime") {
        if let Err(e) = tlsrpt_collectd::sched::realtime() {
            eprintln!("count-sink: real-time priority not permitted: {e}");
            return 1;
        }
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set timeout");
    let mut buf = vec![0u8; 65536];
    let mut count: u64 = 0;
    while !term.load(Ordering::Relaxed) {
        if socket.recv(&mut buf).is_ok() {
            count += 1;
        }
    }
    socket.set_nonblocking(true).expect("nonblocking");
    while socket.recv(&mut buf).is_ok() {
        count += 1;
    }
    let _ = std::fs::remove_file(path);
    println!("{count}");
    let _ = std::io::stdout().flush();
    0
}

mod signal_hook_consts {
    pub const SIGTERM: i32 = libc::SIGTERM;
    pub const SIGINT: i32 = libc::SIGINT;
}

fn signal_hook_flag(signal: i32, flag: &Arc<AtomicBool>) -> std::io::Result<()> {
    signal_hook::flag::register(signal, Arc::clone(flag)).map(|_| ())
}
