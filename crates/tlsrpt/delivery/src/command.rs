//! Running a configured command (`sendmail_script`, `http_script`) with the
//! report on its standard input, a time limit, and its exit status checked.
//! Split into words without a shell, as [`Sendmail`](crate::Sendmail)
//! explains.

use std::time::Duration;

use mailtls_common::process::{one_line, Keep, Run};

use crate::{Error, Outcome};

/// How much of a command's output (each stream) goes into the outcome's
/// text: the end, where the error usually is.
const OUTPUT_TAIL_BYTES: usize = 1000;

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
    /// [`Outcome::RetryLater`] with the end of the command's output
    /// (standard output, then standard error) in the text.
    ///
    /// At the time limit the command's whole process group is killed
    /// ([`Run`]). (The upstream waits, but never kills.)
    pub(crate) fn run(&self, extra_args: &[&str], input: &[u8], timeout: Duration) -> Outcome {
        let name = &self.configured;
        let finished = match Run::new(&self.words[0], timeout)
            .args(&self.words[1..])
            .args(extra_args)
            .input(input)
            .stdout(Keep::Tail(OUTPUT_TAIL_BYTES))
            .stderr(Keep::Tail(OUTPUT_TAIL_BYTES))
            .run()
        {
            Ok(finished) => finished,
            Err(err) => return Outcome::RetryLater(format!("cannot start `{name}`: {err}")),
        };
        let lines: Vec<String> = [one_line(&finished.stdout), finished.stderr_line()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect();
        let output = if lines.is_empty() {
            String::new()
        } else {
            format!(": {}", lines.join(" | "))
        };
        let ending = &finished.ending;
        match &finished.input_error {
            None if ending.success() => Outcome::Delivered(format!("`{name}` {ending}{output}")),
            Some(err) if ending.success() => Outcome::RetryLater(format!(
                "`{name}` exited with status 0 without reading all of the report ({err}){output}"
            )),
            _ => Outcome::RetryLater(format!("`{name}` {ending}{output}")),
        }
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
