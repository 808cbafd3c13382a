//! Child processes that do not outlive the daemon that started them.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Extension for [`Command`]: the child is killed when the thread that
/// started it ends (Linux `PR_SET_PDEATHSIG`).
///
/// A daemon killed hard (SIGKILL, OOM) must not leave a delivery command
/// running that might still hand a report over after the daemon's state
/// says the attempt never finished: the restarted daemon retries it, and
/// the orphan would make that a duplicate. Start such commands from a
/// thread that lives as long as the attempt.
pub trait KillWithParent {
    fn kill_with_parent(&mut self) -> &mut Self;
}

impl KillWithParent for Command {
    fn kill_with_parent(&mut self) -> &mut Self {
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            self.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_child_dies_with_the_thread_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let pid_file2 = pid_file.clone();
        std::thread::spawn(move || {
            // Reaped below with waitpid, after this thread has ended.
            #[allow(clippy::zombie_processes)]
            let child = Command::new("sleep")
                .arg("60")
                .kill_with_parent()
                .spawn()
                .unwrap();
            std::fs::write(&pid_file2, child.id().to_string()).unwrap();
        })
        .join()
        .unwrap();
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        let start = Instant::now();
        // Reap it (it is our child) once the kernel has killed it.
        loop {
            let mut status = 0;
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if reaped == pid {
                assert!(libc::WIFSIGNALED(status), "status {status}");
                assert_eq!(libc::WTERMSIG(status), libc::SIGKILL);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sleep still runs"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
