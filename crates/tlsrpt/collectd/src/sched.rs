//! Scheduling hints that keep the receiver ahead of everything else on a
//! busy host. The kernel queue of a datagram socket is short (10 by
//! default), so what matters is how soon the receiver runs after a datagram
//! arrives, not how much CPU the collector gets in total. None of this needs
//! privileges; a kernel that refuses a hint is only noted in the debug log.

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

/// The calling thread reacts to wake-ups: ask for a short time slice, which
/// the EEVDF scheduler (Linux >= 6.12) turns into an early deadline, so a
/// woken receiver preempts a running CPU hog at once instead of after its
/// slice. Older kernels ignore or refuse the request.
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
        std::io::Error::last_os_error()
    );
}
