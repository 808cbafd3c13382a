//! Child processes: the one way every program runs a command (delivery
//! commands, Postfix commands, fetchers), and children that do not outlive
//! the daemon that started them.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// What to keep of a child's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// All of it (a Postfix queue listing, a queue file).
    All,
    /// The last this many bytes (an error message is usually at the end).
    Tail(usize),
    /// At most this many bytes; more and the child is killed
    /// ([`Ending::TooMuchOutput`]): nobody would read the rest.
    AtMost(usize),
}

/// A command to run: a program and its arguments (no shell), optional
/// standard input, and limits. The child runs in a process group of its
/// own, which is killed as a whole at a limit, so a `sh -c` wrapper cannot
/// leave its children running; and it dies with the thread that started it
/// ([`KillWithParent`]).
#[derive(Debug, Clone)]
pub struct Run<'a> {
    program: OsString,
    args: Vec<OsString>,
    input: Option<&'a [u8]>,
    timeout: Duration,
    idle_timeout: Option<Duration>,
    stdout: Keep,
    stderr: Keep,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ending {
    /// The child exited (or was ended by a signal not of ours).
    Exited(ExitStatus),
    /// Killed at the time limit.
    TimedOut(Duration),
    /// Killed after writing nothing to standard output for this long.
    Idle(Duration),
    /// Killed for writing more than this many bytes to standard output.
    TooMuchOutput(usize),
    /// Waiting for the child failed.
    WaitFailed(std::io::Error),
}

impl Ending {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        matches!(self, Ending::Exited(status) if status.success())
    }

    /// The exit code, when it exited with one.
    pub fn code(&self) -> Option<i32> {
        match self {
            Ending::Exited(status) => status.code(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Ending {
    /// How it ended, in words that follow the command's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited(status) => match status.code() {
                Some(code) => write!(f, "exited with status {code}"),
                None => write!(f, "ended by {status}"),
            },
            Ending::TimedOut(limit) => write!(
                f,
                "did not finish within {} s and was killed",
                limit.as_secs_f64()
            ),
            Ending::Idle(limit) => write!(
                f,
                "wrote nothing for {} s and was killed",
                limit.as_secs_f64()
            ),
            Ending::TooMuchOutput(limit) => {
                write!(f, "wrote more than {limit} bytes and was killed")
            }
            Ending::WaitFailed(err) => write!(f, "could not be waited for: {err}"),
        }
    }
}

/// What a finished run left.
#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    /// Standard output, as much as [`Run::stdout`] keeps.
    pub stdout: Vec<u8>,
    /// Standard error, as much as [`Run::stderr`] keeps.
    pub stderr: Vec<u8>,
    /// Why not all of the input was written, if it was not (the child
    /// exited without reading it, say).
    pub input_error: Option<std::io::Error>,
    /// Why standard output could not be read to its end, if so.
    pub output_error: Option<std::io::Error>,
}

impl Finished {
    /// Standard error on one line (`a | b`), empty when there was none.
    pub fn stderr_line(&self) -> String {
        one_line(&self.stderr)
    }
}

/// `text`'s non-empty lines, trimmed and joined with ` | `.
pub fn one_line(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" | ")
}

impl<'a> Run<'a> {
    /// `program` with a time limit; standard output kept whole, the last
    /// 1000 bytes of standard error.
    pub fn new(program: impl AsRef<OsStr>, timeout: Duration) -> Run<'a> {
        Run {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            input: None,
            timeout,
            idle_timeout: None,
            stdout: Keep::All,
            stderr: Keep::Tail(1000),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Run<'a> {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Run<'a> {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Written to standard input (otherwise it is `/dev/null`), by a
    /// thread of its own: a child may read slowly or not at all.
    pub fn input(mut self, input: &'a [u8]) -> Run<'a> {
        self.input = Some(input);
        self
    }

    /// Kill the child when it writes nothing to standard output for this
    /// long: a long answer may take minutes, a hung one should not.
    pub fn idle_timeout(mut self, idle: Duration) -> Run<'a> {
        self.idle_timeout = Some(idle);
        self
    }

    pub fn stdout(mut self, keep: Keep) -> Run<'a> {
        self.stdout = keep;
        self
    }

    pub fn stderr(mut self, keep: Keep) -> Run<'a> {
        self.stderr = keep;
        self
    }

    /// The command line for messages: program and arguments, space-joined.
    pub fn shown(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|word| word.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the command to its end or to a limit. `Err` only when it
    /// cannot be started.
    pub fn run(self) -> std::io::Result<Finished> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(if self.input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_with_parent()
            .spawn()?;
        let group = i32::try_from(child.id()).expect("pids fit in i32");
        let kill_group = || {
            // SAFETY: killpg only sends a signal. The group may have ended
            // meanwhile: nothing to kill then.
            unsafe { libc::killpg(group, libc::SIGKILL) };
        };
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");

        enum Event {
            Exited(std::io::Result<ExitStatus>),
            Stdout(std::io::Result<Vec<u8>>, bool),
            Stderr(Vec<u8>),
        }
        let deadline = Instant::now() + self.timeout;
        let last_output = Mutex::new(Instant::now());
        let (tx, rx) = mpsc::channel();
        let (mut status, mut output, mut errors) = (None, None, Vec::new());
        let mut killed: Option<Ending> = None;
        let mut input_error = None;
        std::thread::scope(|scope| {
            let writer = match (self.input, stdin) {
                (Some(input), Some(mut stdin)) => Some(scope.spawn(move || stdin.write_all(input))),
                _ => None,
            };
            let sender = tx.clone();
            let activity = &last_output;
            let keep = self.stdout;
            scope.spawn(move || {
                let mut too_much = false;
                let read = read_kept(&mut stdout, keep, &mut || {
                    *activity.lock().expect("not poisoned") = Instant::now();
                })
                .map(|(data, over)| {
                    too_much = over;
                    data
                });
                if too_much {
                    kill_group();
                }
                let _ = sender.send(Event::Stdout(read, too_much));
            });
            let sender = tx.clone();
            let keep = self.stderr;
            scope.spawn(move || {
                let tail = read_kept(&mut stderr, keep, &mut || {})
                    .map(|(data, _)| data)
                    .unwrap_or_default();
                let _ = sender.send(Event::Stderr(tail));
            });
            scope.spawn(move || {
                let _ = tx.send(Event::Exited(child.wait()));
            });
            // All three must end: the output pipes may be held open by the
            // command's children after it exited.
            let mut answered = 0;
            while answered < 3 {
                let mut wait = deadline.saturating_duration_since(Instant::now());
                if let Some(idle) = self.idle_timeout {
                    let quiet_until = *last_output.lock().expect("not poisoned") + idle;
                    wait = wait.min(quiet_until.saturating_duration_since(Instant::now()));
                }
                let event = match rx.recv_timeout(wait) {
                    Ok(event) => event,
                    Err(_) => {
                        let now = Instant::now();
                        let idle_for = now - *last_output.lock().expect("not poisoned");
                        match self.idle_timeout {
                            Some(idle) if now < deadline && idle_for < idle => continue,
                            Some(idle) if now < deadline => {
                                killed.get_or_insert(Ending::Idle(idle));
                            }
                            _ => {
                                killed.get_or_insert(Ending::TimedOut(self.timeout));
                            }
                        }
                        kill_group();
                        rx.recv().expect("every reader and the waiter answer")
                    }
                };
                answered += 1;
                match event {
                    Event::Exited(result) => status = Some(result),
                    Event::Stdout(result, too_much) => {
                        if too_much {
                            if let Keep::AtMost(limit) = self.stdout {
                                killed.get_or_insert(Ending::TooMuchOutput(limit));
                            }
                        }
                        output = Some(result);
                    }
                    Event::Stderr(tail) => errors = tail,
                }
            }
            if let Some(writer) = writer {
                input_error = writer.join().expect("the writer does not panic").err();
            }
        });
        let (stdout, output_error) = match output.expect("the reader answered") {
            Ok(data) => (data, None),
            Err(err) => (Vec::new(), Some(err)),
        };
        let ending = match (killed, status.expect("the waiter answered")) {
            (Some(ending), _) => ending,
            (None, Ok(status)) => Ending::Exited(status),
            (None, Err(err)) => Ending::WaitFailed(err),
        };
        Ok(Finished {
            ending,
            stdout,
            stderr: errors,
            input_error,
            output_error,
        })
    }
}

/// Reads `reader` to its end, keeping what `keep` says and calling
/// `activity` after each read; `true` when [`Keep::AtMost`] was exceeded
/// (reading stops there).
fn read_kept(
    reader: &mut impl Read,
    keep: Keep,
    activity: &mut dyn FnMut(),
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok((data, false)),
            Ok(n) => {
                data.extend_from_slice(&chunk[..n]);
                activity();
                match keep {
                    Keep::All => {}
                    Keep::Tail(limit) => {
                        if data.len() > limit {
                            data.drain(..data.len() - limit);
                        }
                    }
                    Keep::AtMost(limit) => {
                        if data.len() > limit {
                            return Ok((data, true));
                        }
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

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

    fn sh(script: &str, timeout: Duration) -> Run<'static> {
        Run::new("sh", timeout).arg("-c").arg(script)
    }

    #[test]
    fn output_status_and_input_come_back() {
        let done = sh("cat; echo err >&2; exit 3", Duration::from_secs(10))
            .input(b"hello")
            .run()
            .unwrap();
        assert_eq!(done.ending.code(), Some(3));
        assert!(!done.ending.success());
        assert_eq!(done.stdout, b"hello");
        assert_eq!(done.stderr_line(), "err");
        assert!(done.input_error.is_none());
        assert_eq!(done.ending.to_string(), "exited with status 3");
        let ok = Run::new("true", Duration::from_secs(10)).run().unwrap();
        assert!(ok.ending.success());
        assert!(Run::new("/nonexistent/program", Duration::from_secs(1))
            .run()
            .is_err());
    }

    #[test]
    fn the_whole_group_is_killed_at_the_time_limit() {
        let started = Instant::now();
        // The grandchild holds the pipe open; killing only `sh` would hang.
        let done = sh("sleep 30 & sleep 30", Duration::from_millis(300))
            .run()
            .unwrap();
        assert!(
            matches!(done.ending, Ending::TimedOut(_)),
            "{:?}",
            done.ending
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(done
            .ending
            .to_string()
            .contains("did not finish within 0.3 s"));
    }

    #[test]
    fn a_quiet_child_is_killed_at_the_idle_limit_a_busy_one_is_not() {
        let done = sh("echo a; sleep 30", Duration::from_secs(20))
            .idle_timeout(Duration::from_millis(300))
            .run()
            .unwrap();
        assert!(matches!(done.ending, Ending::Idle(_)), "{:?}", done.ending);
        assert_eq!(done.stdout, b"a\n");
        let busy = sh(
            "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done",
            Duration::from_secs(20),
        )
        .idle_timeout(Duration::from_millis(400))
        .run()
        .unwrap();
        assert!(busy.ending.success(), "{:?}", busy.ending);
    }

    #[test]
    fn output_is_capped_or_tailed_as_asked() {
        let big = "head -c 300000 /dev/zero; sleep 30";
        let capped = sh(big, Duration::from_secs(20))
            .stdout(Keep::AtMost(1000))
            .run()
            .unwrap();
        assert!(
            matches!(capped.ending, Ending::TooMuchOutput(1000)),
            "{:?}",
            capped.ending
        );
        let tailed = sh("seq 1 10000; seq 1 3 >&2", Duration::from_secs(20))
            .stdout(Keep::Tail(6))
            .stderr(Keep::Tail(4))
            .run()
            .unwrap();
        assert!(tailed.ending.success());
        assert_eq!(tailed.stdout, b"10000\n");
        assert_eq!(tailed.stderr_line(), "2 | 3");
    }

    #[test]
    fn input_a_child_does_not_read_is_reported() {
        let big = vec![b'x'; 1 << 20];
        let done = Run::new("true", Duration::from_secs(10))
            .input(&big)
            .run()
            .unwrap();
        assert!(done.ending.success());
        assert!(done.input_error.is_some());
    }

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
