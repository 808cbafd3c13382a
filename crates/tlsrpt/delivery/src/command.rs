//! Running a configured command (`sendmail_script`, `http_script`) with the
//! report on its standard input, a time limit, and its exit status checked.
//! Split into words without a shell, as [`Sendmail`](crate::Sendmail)
//! explains.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;

use mailtls_common::process::KillWithParent;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{Error, Outcome};

/// How much of a command's output goes into the outcome's text: the end,
/// where the error usually is.
const OUTPUT_TAIL_BYTES: u64 = 1000;

/// A command line as configured, split into words.
#[derive(Debug, Clone)]
pub(crate) struct CommandLine {
    configured: String,
    words: Vec<String>,
}

impl CommandLine {
    pub(crate) fn parse(configured: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadCommand {
            command: configured.to_owned(),
            reason,
        };
        let words = shell_words::split(configured).map_err(|err| bad(err.to_string()))?;
        if words.is_empty() {
            return Err(bad("no program named".into()));
        }
        Ok(CommandLine {
            configured: configured.to_owned(),
            words,
        })
    }

    /// Runs the command with `extra_args` after the configured words and
    /// `input` on its standard input. Exit status 0 after reading all of
    /// the input is [`Outcome::Delivered`]; anything else (another status,
    /// a signal, no such program, the time limit) is
    /// [`Outcome::RetryLater`] with the command's output (standard output
    /// and error together) in the text.
    ///
    /// The command runs in a process group of its own; at the time limit
    /// the whole group is killed, so a `sh -c` wrapper cannot leave its
    /// children hanging. (The upstream waits, but never kills.)
    pub(crate) fn run(&self, extra_args: &[&str], input: &[u8], timeout: Duration) -> Outcome {
        let name = &self.configured;
        let output = match tempfile::tempfile() {
            Ok(file) => file,
            Err(err) => {
                return Outcome::RetryLater(format!(
                    "`{name}`: cannot create a file for its output: {err}"
                ))
            }
        };
        let (stdout, stderr) = match (output.try_clone(), output.try_clone()) {
            (Ok(stdout), Ok(stderr)) => (stdout, stderr),
            (Err(err), _) | (_, Err(err)) => {
                return Outcome::RetryLater(format!("`{name}`: {err}"));
            }
        };
        let mut child = match Command::new(&self.words[0])
            .args(&self.words[1..])
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_with_parent()
            .spawn()
        {
            Ok(child) => child,
            Err(err) => return Outcome::RetryLater(format!("cannot start `{name}`: {err}")),
        };
        let group = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        let mut stdin = child.stdin.take().expect("stdin is piped");

        let (status, input_result, timed_out) = thread::scope(|scope| {
            // A separate writer: a command may read slowly or not at all, and
            // the pipe holds only 64 KiB.
            let writer = scope.spawn(move || stdin.write_all(input));
            let (exited, exit) = mpsc::channel();
            scope.spawn(move || exited.send(child.wait()));
            let (status, timed_out) = match exit.recv_timeout(timeout) {
                Ok(status) => (status, false),
                Err(_) => {
                    // The group may have ended in the meantime: nothing to kill then.
                    let _ = killpg(group, Signal::SIGKILL);
                    (exit.recv().expect("the waiter always answers"), true)
                }
            };
            let input_result = writer.join().expect("the writer does not panic");
            (status, input_result, timed_out)
        });

        let output = output_tail(output);
        if timed_out {
            return Outcome::RetryLater(format!(
                "`{name}` did not finish within {} s and was killed{output}",
                timeout.as_secs_f64()
            ));
        }
        match (status, input_result) {
            (Ok(status), Ok(())) if status.success() => {
                Outcome::Delivered(format!("`{name}` exited with status 0{output}"))
            }
            (Ok(status), Err(err)) if status.success() => Outcome::RetryLater(format!(
                "`{name}` exited with status 0 without reading all of the report ({err}){output}"
            )),
            (Ok(status), _) => {
                Outcome::RetryLater(format!("`{name}` {}{output}", describe(status)))
            }
            (Err(err), _) => Outcome::RetryLater(format!("`{name}`: cannot wait for it: {err}")),
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended by {status}"),
    }
}

/// `": <last lines of output>"` on one line, or nothing when it was silent.
fn output_tail(mut file: File) -> String {
    let mut tail = Vec::new();
    let read = file
        .seek(SeekFrom::End(0))
        .and_then(|len| file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL_BYTES))))
        .and_then(|_| file.read_to_end(&mut tail));
    if read.is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_without_running_one() {
        let command =
            CommandLine::parse("curl --header 'Content-Type: application/tlsrpt+gzip' a\\ b $HOME")
                .unwrap();
        assert_eq!(
            command.words,
            [
                "curl",
                "--header",
                "Content-Type: application/tlsrpt+gzip",
                "a b",
                "$HOME"
            ]
        );
    }

    #[test]
    fn refuses_empty_and_unbalanced_commands() {
        for configured in ["", "   ", "sendmail 'unclosed"] {
            assert!(
                matches!(
                    CommandLine::parse(configured),
                    Err(Error::BadCommand { .. })
                ),
                "{configured:?}"
            );
        }
    }

    #[test]
    fn output_is_summarised_on_one_line() {
        let command = CommandLine::parse("sh -c 'echo out; echo err >&2; exit 3'").unwrap();
        let outcome = command.run(&[], b"", Duration::from_secs(10));
        assert_eq!(
            outcome,
            Outcome::RetryLater(
                "`sh -c 'echo out; echo err >&2; exit 3'` exited with status 3: out | err".into()
            )
        );
    }
}
