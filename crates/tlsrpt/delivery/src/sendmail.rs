//! Report mail through the local MTA's `sendmail` command (the upstream's
//! `sendmail_script` and `sendmail_timeout`).

use std::time::Duration;

use crate::command::CommandLine;
use crate::{Error, Outcome};

/// Pipes the mail into a sendmail-compatible command, which takes the
/// recipients from the headers (`-t`).
///
/// The upstream hands the configured command to `/bin/sh`. We split it into
/// words as a POSIX shell would (quotes and backslashes work the same) and
/// run the program directly, so no report data ever meets a shell; pipes,
/// redirections and `$VARIABLES` therefore mean nothing. A command that
/// needs them can be written as `sh -c '...'`. The same holds for
/// [`HttpScript`](crate::HttpScript).
#[derive(Debug, Clone)]
pub struct Sendmail {
    command: CommandLine,
    timeout: Duration,
}

impl Sendmail {
    /// The upstream default `sendmail_script`: `-i` so a line with a single
    /// dot does not end the message, `-t` for the recipients.
    pub const DEFAULT_COMMAND: &'static str = "sendmail -i -t";

    /// `command` as configured, e.g. [`DEFAULT_COMMAND`](Self::DEFAULT_COMMAND).
    pub fn new(command: &str, timeout: Duration) -> Result<Self, Error> {
        Ok(Sendmail {
            command: CommandLine::parse(command)?,
            timeout,
        })
    }

    /// Exit status 0 is delivered (the MTA queued the mail); every other
    /// status, and the time limit, is [`Outcome::RetryLater`], as upstream.
    ///
    /// The mail goes in with LF line ends, the local text format that
    /// sendmail(1) reads; the MTA restores CRLF on the wire, so the DKIM
    /// signature (computed over CRLF) still verifies. (The upstream writes
    /// CRLF and relies on the MTA to strip the CRs, as Postfix does with
    /// `sendmail_fix_line_endings = always`.)
    pub fn send(&self, message: &[u8]) -> Outcome {
        self.command.run(&[], &crlf_to_lf(message), self.timeout)
    }
}

fn crlf_to_lf(message: &[u8]) -> Vec<u8> {
    let mut local = Vec::with_capacity(message.len());
    let mut bytes = message.iter().peekable();
    while let Some(&byte) = bytes.next() {
        if byte == b'\r' && bytes.peek() == Some(&&b'\n') {
            continue;
        }
        local.push(byte);
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crlf_pairs_lose_their_cr() {
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\n\r\n\r"), b"a\nb\rc\n\n\r");
    }
}
