//! Scheduling that keeps the receiver ahead of everything else on a busy
//! host. The kernel queue of a datagram socket is short (10 by default), so
//! what matters is how soon the receiver runs after a datagram arrives, not
//! how much CPU the collector gets in total.
//!
//! Measured on 2 cores with one kept busy by another process, 50 000
//! datagrams/s: a receiver at normal priority that the kernel happens to put
//! beside the busy process loses 10-20 % of the datagrams, because the queue
//! fills before the receiver's turn comes; with real-time priority it loses
//! almost none. The receiver's work per datagram is a hash lookup, so
//! real-time priority costs others little, and [`RealtimeGuard`] gives it up
//! should the receiver ever keep a CPU to itself.

use std::io;
use std::time::{Duration, Instant};

/// The calling thread is background work: SCHED_BATCH (it never preempts
/// others on wake-up) with a raised nice value.
pub fn background(nice: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on the calling thread (id 0 / own tid).
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
            note("SCHED_BATCH");
        }
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            note("nice");
        }
    }
}

/// Real-time priority for the calling thread: SCHED_FIFO at the lowest
/// real-time priority, so that it runs as soon as a datagram wakes it,
/// ahead of every normal process. Not inherited by child processes. Needs
/// root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1 (systemd:
/// `LimitRTPRIO=1`).
pub fn realtime() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on the calling thread with a valid param.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Normal priority for the calling thread, tuned for wake-ups: ask for a
/// short time slice, which the EEVDF scheduler (Linux >= 6.12) turns into an
/// early deadline, so a woken receiver preempts a running CPU hog sooner.
/// Older kernels ignore or refuse the request.
pub fn latency_sensitive() {
    /// `struct sched_attr`, first version (48 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: 100_000, // ns: the shortest slice the kernel accepts
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from a valid struct.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        note("short time slice");
    }
}

fn note(what: &str) {
    log::debug!(
        "scheduling hint '{what}' not applied: {}",
        io::Error::last_os_error()
    );
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Watches a real-time receiver's CPU use: a thread at real-time priority
/// that never sleeps (a flood of datagrams) would starve every normal
/// process on its CPU. Above [`RealtimeGuard::MAX_SHARE`] of a CPU over a
/// second, the receiver goes back to normal priority for
/// [`RealtimeGuard::PAUSE`].
#[derive(Debug)]
pub struct RealtimeGuard {
    window_start: Instant,
    cpu_at_start: Duration,
    /// Normal priority until then, after using too much CPU.
    demoted_until: Option<Instant>,
}

/// What [`RealtimeGuard::decide`] asks for.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    Demote,
    Promote,
}

impl RealtimeGuard {
    const WINDOW: Duration = Duration::from_secs(1);
    const MAX_SHARE: f64 = 0.9;
    const PAUSE: Duration = Duration::from_secs(10);

    /// For a thread that has just been given real-time priority.
    pub fn new(now: Instant) -> RealtimeGuard {
        RealtimeGuard {
            window_start: now,
            cpu_at_start: thread_cpu_time(),
            demoted_until: None,
        }
    }

    /// Called by the guarded thread often (once per read); looks at the
    /// CPU time once per [`Self::WINDOW`].
    pub fn check(&mut self, now: Instant) {
        let wall = now.duration_since(self.window_start);
        if wall < Self::WINDOW {
            return;
        }
        let cpu = thread_cpu_time();
        let used = cpu.saturating_sub(self.cpu_at_start);
        self.window_start = now;
        self.cpu_at_start = cpu;
        match self.decide(used, wall, now) {
            Change::None => {}
            Change::Demote => {
                latency_sensitive_after_realtime();
                log::warn!(
                    "the receiver used {:.0} % of a CPU in the last {:.1} s; it leaves real-time priority for {} s so that other programs are not starved",
                    100.0 * used.as_secs_f64() / wall.as_secs_f64(),
                    wall.as_secs_f64(),
                    Self::PAUSE.as_secs()
                );
            }
            Change::Promote => match realtime() {
                Ok(()) => log::info!("the receiver is back at real-time priority"),
                Err(e) => log::warn!("the receiver cannot return to real-time priority: {e}"),
            },
        }
    }

    /// The pure decision: `used` CPU time in `wall` time, at `now`.
    fn decide(&mut self, used: Duration, wall: Duration, now: Instant) -> Change {
        if let Some(until) = self.demoted_until {
            if now < until {
                return Change::None;
            }
            self.demoted_until = None;
            return Change::Promote;
        }
        if used.as_secs_f64() > Self::MAX_SHARE * wall.as_secs_f64() {
            self.demoted_until = Some(now + Self::PAUSE);
            return Change::Demote;
        }
        Change::None
    }
}

/// Leave real-time priority for normal priority with a short slice.
fn latency_sensitive_after_realtime() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread with a valid param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
        note("SCHED_OTHER");
    }
    latency_sensitive();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_keeps_a_cpu_is_demoted_for_a_while_then_promoted() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let mut g = RealtimeGuard::new(start);
        let second = Duration::from_secs(1);
        assert_eq!(
            g.decide(Duration::from_millis(300), second, at(1)),
            Change::None
        );
        assert_eq!(
            g.decide(Duration::from_millis(950), second, at(2)),
            Change::Demote
        );
        assert_eq!(g.decide(second, second, at(3)), Change::None, "paused");
        assert_eq!(
            g.decide(second, second, at(11)),
            Change::None,
            "still paused"
        );
        assert_eq!(g.decide(second, second, at(12)), Change::Promote);
        assert_eq!(g.decide(Duration::ZERO, second, at(13)), Change::None);
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() > before);
    }
}
