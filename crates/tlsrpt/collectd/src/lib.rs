//! The TLSRPT collector (`tlsrpt-collectd`): the second stage of the TLSRPT
//! flow, between the MTA's datagrams and the store the fetcher reads.
//!
//! ```text
//! socket --> receiver --raw tallies--> aggregator --counters--> committer --> SQLite
//!            (recv, tally bytes)      (parse, count per day)     (rollover at UTC midnight)
//! ```
//!
//! - [`socket`]: the datagram socket, its permissions, the kernel queue check.
//! - [`receiver`]: the thread that drains the socket and tallies raw datagrams.
//! - [`tally`]: raw datagrams counted by their bytes, and when counts are due.
//! - [`aggregator`]: the thread that parses and counts in memory.
//! - [`committer`]: the thread that owns the stores and retries failed writes.
//! - [`refused`]: counting and logging of invalid datagrams without log floods.
//! - [`metrics`]: the counters served on `metrics_listen`.
//! - [`sched`]: real-time priority for the receiver, so that a busy host does
//!   not make the kernel drop datagrams.

pub mod aggregator;
pub mod committer;
pub mod metrics;
pub mod receiver;
pub mod refused;
pub mod sched;
pub mod socket;
pub mod tally;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use aggregator::Aggregator;
use mailtls_common::clock::Clock;
use mailtls_common::day::Day;
use metrics::CollectdMetrics;
use receiver::{Receiver, SignalFlags};
use refused::Refused;
use socket::{CollectorSocket, Permissions};
use tally::CommitSchedule;
use tlsrpt_store::Storage;

/// Exit codes of the upstream collectd, kept so that service managers and
/// scripts read ours the same way.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    pub const DB_SETUP_FAILURE: i32 = 3;
    pub const WRONG_DB_VERSION: i32 = 4;
    pub const SHUTDOWN_STORE: i32 = 6;
    pub const SOCKET: i32 = 7;
}

/// Everything the collector needs, already validated.
#[derive(Debug, Clone)]
pub struct CollectdConfig {
    pub storage: Vec<Storage>,
    /// `collector_name`: this collector's name in a shared PostgreSQL
    /// store (the host name by default).
    pub collector_name: String,
    pub socket: PathBuf,
    pub permissions: Permissions,
    /// `sockettimeout`: counters reach the database at most this long after
    /// their datagram arrived.
    pub socket_timeout: Duration,
    /// `max_uncommited_datagrams`.
    pub max_uncommitted: u64,
    pub rollover_script: Option<String>,
    pub dump_path: Option<PathBuf>,
    /// Try real-time priority for the receiver (see [`sched::realtime`]).
    pub realtime_receiver: bool,
    /// `metrics_listen`: where Prometheus reads [`metrics`], if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// `metrics_max_connections`, `metrics_request_timeout`.
    pub metrics_limits: mailtls_common::metrics::Limits,
}

/// Run the collector until SIGTERM or SIGINT; returns the exit code.
pub fn run(config: CollectdConfig, clock: &dyn Clock) -> i32 {
    run_counting_into(config, clock, Arc::new(CollectdMetrics::new()))
}

/// [`run`], counting into `metrics`, which another part of the process
/// (`mailtls run`'s web pages) may serve too.
pub fn run_counting_into(
    config: CollectdConfig,
    clock: &dyn Clock,
    metrics: Arc<CollectdMetrics>,
) -> i32 {
    log::info!("TLSRPT collectd starting");
    // First of all, so that a SIGTERM during a long start-up (a rollover of
    // a big database) still ends in a clean shutdown.
    let flags = SignalFlags::default();
    if let Err(e) = register_signals(&flags) {
        log::error!("cannot install signal handlers: {e}");
        return exit::SOCKET;
    }
    socket::check_queue_length();

    let now = clock.now();
    let today = Day::of(now);
    let yesterday = today.pred();
    let stores = match committer::open_stores(
        &config.storage,
        &config.collector_name,
        today,
        yesterday,
        config.rollover_script.clone(),
    ) {
        Ok(stores) => stores,
        Err(e) => {
            log::error!("{e}");
            return match e {
                tlsrpt_store::StoreError::WrongPurpose { .. } => exit::WRONG_DB_VERSION,
                _ => exit::DB_SETUP_FAILURE,
            };
        }
    };

    if let Some(listen) = config.metrics_listen {
        let shared = Arc::clone(&metrics);
        if let Err(e) = mailtls_common::metrics::spawn(listen, config.metrics_limits, move || {
            Ok(shared.render())
        }) {
            log::error!("cannot listen for metrics on {listen} (metrics_listen): {e}");
            return exit::SOCKET;
        }
    }

    let socket = match CollectorSocket::bind(&config.socket, &config.permissions) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return exit::SOCKET;
        }
    };
    log::info!("listening on socket {}", config.socket.display());

    let (to_committer, requests) = mpsc::channel();
    let committer_metrics = Arc::clone(&metrics);
    let committer = std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            leave_signals_to_the_receiver();
            sched::background(COMMITTER_NICE);
            committer::run(stores, requests, &committer_metrics)
        })
        .expect("spawn committer thread");

    let (to_aggregator, inputs) = mpsc::channel();
    let (recycle, recycled) = mpsc::channel();
    let schedule = CommitSchedule::new(
        config.max_uncommitted,
        config.socket_timeout,
        Instant::now(),
    );
    let receiver = Receiver::new(
        socket,
        flags,
        clock,
        schedule,
        to_aggregator,
        recycled,
        Arc::clone(&metrics),
    );
    let aggregator = Aggregator::new(
        inputs,
        recycle,
        to_committer,
        Refused::new(config.dump_path.clone(), Instant::now()),
        metrics,
        receiver.day(),
    );
    let aggregator = std::thread::Builder::new()
        .name("aggregator".into())
        .spawn(move || {
            leave_signals_to_the_receiver();
            sched::background(AGGREGATOR_NICE);
            aggregator.run()
        })
        .expect("spawn aggregator thread");

    let guard = receiver_priority(config.realtime_receiver);
    let received = receiver.run(guard);
    match aggregator.join() {
        Ok((counted, refused)) => log::info!(
            "received {received} datagrams: {counted} counted, {} refused",
            refused.total_refused
        ),
        Err(_) => log::error!("the aggregator crashed"),
    }
    match committer.join() {
        Ok(committer::Outcome::AllWritten) => {
            log::info!("all counters written; exiting");
            exit::OK
        }
        Ok(committer::Outcome::Lost { .. }) => exit::SHUTDOWN_STORE,
        Err(_) => {
            log::error!("the database writer crashed");
            exit::SHUTDOWN_STORE
        }
    }
}

/// Give the calling thread (the receiver) real-time priority when asked and
/// permitted, watched by a guard; otherwise normal priority tuned for
/// wake-ups.
fn receiver_priority(realtime: bool) -> Option<sched::RealtimeGuard> {
    if realtime {
        match sched::realtime() {
            Ok(()) => {
                log::info!("the receiver runs at real-time priority (SCHED_FIFO 1)");
                return Some(sched::RealtimeGuard::new(Instant::now()));
            }
            Err(e) => log::info!(
                "the receiver runs at normal priority: real-time priority is not permitted ({e}). \
                 On a busy host it loses fewer datagrams with it: run the collector with \
                 LimitRTPRIO=1 in its systemd unit, or as root"
            ),
        }
    }
    sched::latency_sensitive();
    None
}

/// Nice values of the threads behind the receiver. Counting and writing can
/// wait; reading cannot, because the kernel drops datagrams once its short
/// queue is full. On a busy host this lets the receiver win the CPU whenever
/// they compete.
const AGGREGATOR_NICE: i32 = 5;
const COMMITTER_NICE: i32 = 10;

const HANDLED_SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2, libc::SIGHUP];

/// Block the handled signals in the calling thread, so that the kernel
/// delivers them to the receiver, whose waiting read they then interrupt.
/// (Child processes start with an empty mask again: Rust's spawn resets it.)
fn leave_signals_to_the_receiver() {
    // SAFETY: sigset operations on a local set, and pthread_sigmask on the
    // calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Route SIGTERM/SIGINT/SIGUSR2/SIGHUP to flags that the receiver checks
/// after every read; the signal itself interrupts a waiting read.
fn register_signals(flags: &SignalFlags) -> std::io::Result<()> {
    let [term, int, usr2, hup] = HANDLED_SIGNALS;
    for (signal, flag) in [
        (term, &flags.terminate),
        (int, &flags.terminate),
        (usr2, &flags.rollover),
        (hup, &flags.reopen_log),
    ] {
        signal_hook::flag::register(signal, Arc::clone(flag))?;
    }
    Ok(())
}
