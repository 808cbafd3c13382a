//! The Postfix commands PostTLS runs, behind one small interface.
//!
//! Every command runs from an argv array (never a shell), with queue ids
//! that [`posttls_queue::QueueId`] has validated (so an id can never be an
//! option such as `-` or `--help`), with `-c CONFIG_DIR` for multi-instance
//! setups, a time limit, and its exit status checked. `postsuper` exits 0
//! even when nothing matched, so its summary line is read to know how many
//! messages it acted on.

use std::path::PathBuf;
use std::time::Duration;

use mailtls_common::process::{Ending, Keep, Run};
use posttls_queue::QueueId;

/// `postqueue`'s exit status when the mail system is down (EX_UNAVAILABLE).
const EX_UNAVAILABLE: i32 = 69;

#[derive(Debug, thiserror::Error)]
pub enum PostfixError {
    #[error("cannot run {command}: {source}")]
    Start {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} did not finish within {seconds} s and was killed")]
    Timeout { command: String, seconds: u64 },
    #[error("the mail system is down ({command}: {stderr})")]
    MailSystemDown { command: String, stderr: String },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// The envelope of a queued message (`postcat -e`), as far as PostTLS
/// needs it: who submitted it, for whom, and the ESMTP parameters a copy
/// must carry again (RFC 3461 DSN, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The queue the file is in (`hold`, `deferred`, `active`, ...), from
    /// postcat's `*** ENVELOPE RECORDS QUEUE/ID ***` line.
    pub queue_name: Option<String>,
    pub sender: String,
    /// `recipient:` records: still pending, with their DSN parameters.
    pub recipients: Vec<EnvelopeRecipient>,
    /// `done_recipient:` records.
    pub done_recipients: Vec<String>,
    /// `named_attribute: rewrite_context=local`: submitted on this host
    /// (sendmail/postdrop), not received from outside.
    pub local_submission: bool,
    /// `named_attribute: sasl_username=...`: an authenticated submission.
    pub sasl_username: Option<String>,
    /// `named_attribute: envelope_id=...`: the DSN ENVID (decoded).
    pub envelope_id: Option<String>,
    /// `named_attribute: ret_flags=N`: the DSN RET (1 FULL, 2 HDRS).
    pub ret_flags: u32,
    /// `named_attribute: encoding=8bit`: submitted with BODY=8BITMIME.
    pub eight_bit: bool,
    /// The sendopts field of the `message_size:` record (Postfix
    /// `sendopts.h`): SMTPUTF8 flags in bits 0-3, REQUIRETLS above.
    pub sendopts: u32,
    /// `named_attribute: log_ident=...`: the XFORWARD IDENT the message was
    /// submitted with (PostTLS marks its copies so).
    pub log_ident: Option<String>,
}

/// A pending recipient with its DSN parameters (RFC 3461 section 4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    pub address: String,
    /// `named_attribute: notify_flags=N`: NEVER 1, SUCCESS 2, FAILURE 4,
    /// DELAY 8; 0 when the submission gave none.
    pub notify_flags: u32,
    /// `named_attribute: dsn_orig_rcpt=TYPE;ADDRESS`: the ORCPT (decoded).
    pub dsn_orig_rcpt: Option<String>,
}

/// SMTPUTF8 was requested (`SOPT_SMTPUTF8_REQUESTED`).
pub const SENDOPTS_SMTPUTF8_REQUESTED: u32 = 1;
/// The SMTPUTF8 flags; every other sendopts bit is a sending option this
/// program does not know (REQUIRETLS in Postfix 3.11 and later).
pub const SENDOPTS_SMTPUTF8_MASK: u32 = 0xf;

impl Envelope {
    /// Reads `postcat -e` output. Unknown records are ignored.
    pub fn parse(output: &str) -> Envelope {
        let mut envelope = Envelope::default();
        // Per-recipient attributes come before their recipient record.
        let mut next = EnvelopeRecipient::default();
        for line in output.lines() {
            if let Some(rest) = line.strip_prefix("*** ENVELOPE RECORDS ") {
                envelope.queue_name = rest
                    .split('/')
                    .next()
                    .filter(|q| !q.is_empty() && !q.contains(' '))
                    .map(str::to_string);
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim() {
                "message_size" => {
                    envelope.sendopts = value
                        .split_whitespace()
                        .nth(5)
                        .and_then(|f| f.parse().ok())
                        .unwrap_or(0)
                }
                "sender" => envelope.sender = value.to_string(),
                "recipient" => {
                    next.address = value.to_string();
                    envelope.recipients.push(std::mem::take(&mut next));
                }
                "done_recipient" => {
                    envelope.done_recipients.push(value.to_string());
                    next = EnvelopeRecipient::default();
                }
                "named_attribute" => match value.split_once('=') {
                    Some(("rewrite_context", "local")) => envelope.local_submission = true,
                    Some(("sasl_username", user)) if !user.is_empty() => {
                        envelope.sasl_username = Some(user.to_string())
                    }
                    Some(("envelope_id", id)) if !id.is_empty() => {
                        envelope.envelope_id = Some(id.to_string())
                    }
                    Some(("ret_flags", flags)) => envelope.ret_flags = flags.parse().unwrap_or(0),
                    Some(("encoding", "8bit")) => envelope.eight_bit = true,
                    Some(("log_ident", ident)) if !ident.is_empty() => {
                        envelope.log_ident = Some(ident.to_string())
                    }
                    Some(("notify_flags", flags)) => next.notify_flags = flags.parse().unwrap_or(0),
                    Some(("dsn_orig_rcpt", orcpt)) if !orcpt.is_empty() => {
                        next.dsn_orig_rcpt = Some(orcpt.to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        envelope
    }

    /// Whether the message asked for a sending option beyond SMTPUTF8
    /// (REQUIRETLS, RFC 8689): such a message is never sent without
    /// verified TLS.
    pub fn has_unknown_sendopts(&self) -> bool {
        self.sendopts & !SENDOPTS_SMTPUTF8_MASK != 0
    }

    /// The pending recipients' addresses.
    pub fn recipient_addresses(&self) -> impl Iterator<Item = &str> {
        self.recipients.iter().map(|r| r.address.as_str())
    }
}

/// One Postfix instance's commands.
#[derive(Debug, Clone)]
pub struct Postfix {
    /// `-c DIR`; `None` for the default instance.
    pub config_dir: Option<PathBuf>,
    /// Where postqueue, postcat, postsuper and sendmail live.
    pub command_dir: PathBuf,
    pub timeout: Duration,
}

/// What a command printed.
struct Output {
    stdout: Vec<u8>,
    stderr: String,
}

impl Postfix {
    pub fn new(config_dir: Option<PathBuf>, command_dir: PathBuf, timeout: Duration) -> Postfix {
        Postfix {
            config_dir,
            command_dir,
            timeout,
        }
    }

    /// `postqueue -j`: one JSON object per queued message and line.
    pub fn queue_json(&self) -> Result<Vec<u8>, PostfixError> {
        Ok(self.run("postqueue", &["-j"], None)?.stdout)
    }

    /// `postcat -e -q ID`: the envelope records.
    pub fn envelope(&self, id: &QueueId) -> Result<Envelope, PostfixError> {
        let output = self.run("postcat", &["-e", "-q", id.as_str()], None)?;
        Ok(Envelope::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    /// `postcat -e -h -q ID`: the envelope and the header block in one
    /// run (the scanner needs both for every new message).
    pub fn envelope_and_headers(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), PostfixError> {
        let output = self.run("postcat", &["-e", "-h", "-q", id.as_str()], None)?;
        Ok(split_envelope_and_headers(&output.stdout))
    }

    /// `postcat -e -h -q ID...`: envelope and header block of many
    /// messages in one run, by queue id. A message that left the queue
    /// meanwhile makes postcat stop; the caller then asks one by one.
    pub fn envelopes_and_headers(
        &self,
        ids: &[&QueueId],
    ) -> Result<std::collections::HashMap<String, (Envelope, Vec<u8>)>, PostfixError> {
        let mut args = vec!["-e", "-h", "-q"];
        args.extend(ids.iter().map(|id| id.as_str()));
        let output = self.run("postcat", &args, None)?;
        Ok(split_files(&output.stdout))
    }

    /// `postcat -h -q ID`: the message's header block.
    pub fn headers(&self, id: &QueueId) -> Result<Vec<u8>, PostfixError> {
        Ok(self
            .run("postcat", &["-h", "-q", id.as_str()], None)?
            .stdout)
    }

    /// `postcat -bh -q ID`: exactly the message content (headers and
    /// body), for re-injection.
    pub fn content(&self, id: &QueueId) -> Result<Vec<u8>, PostfixError> {
        Ok(self
            .run("postcat", &["-bh", "-q", id.as_str()], None)?
            .stdout)
    }

    /// `postsuper -h ID`: puts the message on hold; returns how many
    /// messages Postfix says it held (0 or 1).
    pub fn hold(&self, id: &QueueId) -> Result<usize, PostfixError> {
        self.postsuper(&["-h", id.as_str()], "Placed on hold")
    }

    /// `postsuper -h ID deferred`: puts the message on hold only if it is
    /// in the deferred queue (not while it is being delivered).
    pub fn hold_deferred(&self, id: &QueueId) -> Result<usize, PostfixError> {
        self.postsuper(&["-h", id.as_str(), "deferred"], "Placed on hold")
    }

    /// `postsuper -H ID`: releases it from hold.
    pub fn unhold(&self, id: &QueueId) -> Result<usize, PostfixError> {
        self.postsuper(&["-H", id.as_str()], "Released from hold")
    }

    /// `postconf -hP SERVICE/unix/NAME`: a parameter that master.cf sets
    /// for one UNIX-domain service with `-o` (empty when it sets none).
    pub fn service_setting(&self, service: &str, name: &str) -> Result<String, PostfixError> {
        let output = self.run(
            "postconf",
            &["-hP", &format!("{service}/unix/{name}")],
            None,
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `postconf -h NAME` (`-c DIR` for another instance): a parameter's
    /// value.
    pub fn postconf(&self, name: &str) -> Result<String, PostfixError> {
        let output = self.run("postconf", &["-h", name], None)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `postsuper -d ID [QUEUE]`: deletes it (only from `queue` if given).
    pub fn delete(&self, id: &QueueId, queue: Option<&str>) -> Result<usize, PostfixError> {
        let mut args = vec!["-d", id.as_str()];
        if let Some(queue) = queue {
            args.push(queue);
        }
        self.postsuper(&args, "Deleted")
    }

    /// `postsuper -e ID` (Postfix >= 3.5): expire now, so it bounces to the
    /// sender with its delay reason.
    pub fn expire(&self, id: &QueueId) -> Result<usize, PostfixError> {
        self.postsuper(&["-e", id.as_str()], "Force-expired")
    }

    /// `postqueue -i ID`: try the message again now.
    pub fn retry(&self, id: &QueueId) -> Result<(), PostfixError> {
        self.run("postqueue", &["-i", id.as_str()], None)
            .map(|_| ())
    }

    /// `sendmail -i -f SENDER -- RECIPIENT...` with `message` on standard
    /// input (the instance's own sendmail, `-C` for another instance).
    pub fn sendmail(
        &self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<(), PostfixError> {
        let mut args: Vec<&str> = vec!["-i", "-f", sender, "--"];
        args.extend(recipients.iter().map(String::as_str));
        self.run("sendmail", &args, Some(message)).map(|_| ())
    }

    fn postsuper(&self, args: &[&str], summary: &str) -> Result<usize, PostfixError> {
        let output = self.run("postsuper", args, None)?;
        Ok(summary_count(&output.stderr, summary))
    }

    /// Runs `program` from the command directory with `-c DIR` first (`-C`
    /// for sendmail) and `args` after.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Output, PostfixError> {
        let path = self.command_dir.join(program);
        let mut run = Run::new(&path, self.timeout).stderr(Keep::All);
        if let Some(dir) = &self.config_dir {
            run = run
                .arg(if program == "sendmail" { "-C" } else { "-c" })
                .arg(dir);
        }
        run = run.args(args);
        if let Some(input) = input {
            run = run.input(input);
        }
        let shown = format!("{} {}", path.display(), args.join(" "));
        let finished = run.run().map_err(|source| PostfixError::Start {
            command: shown.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&finished.stderr).trim().to_string();
        match finished.ending {
            Ending::TimedOut(_) => Err(PostfixError::Timeout {
                command: shown,
                seconds: self.timeout.as_secs(),
            }),
            ending if ending.success() => Ok(Output {
                stdout: finished.stdout,
                stderr,
            }),
            ending if ending.code() == Some(EX_UNAVAILABLE) && program == "postqueue" => {
                Err(PostfixError::MailSystemDown {
                    command: shown,
                    stderr,
                })
            }
            ending => Err(PostfixError::Failed {
                command: shown,
                status: ending.to_string(),
                stderr,
            }),
        }
    }
}

/// Splits the output of `postcat -e -h` for several queue files into the
/// files, by queue id (the part after the `/` of `*** ENVELOPE RECORDS
/// deferred/ID ***`).
fn split_files(output: &[u8]) -> std::collections::HashMap<String, (Envelope, Vec<u8>)> {
    let text = String::from_utf8_lossy(output);
    let mut files = std::collections::HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: &mut Option<(String, String)>| {
        if let Some((id, body)) = current.take() {
            files.insert(id, split_envelope_and_headers(body.as_bytes()));
        }
    };
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("*** ENVELOPE RECORDS ") {
            finish(&mut current);
            let id = rest
                .trim_end()
                .trim_end_matches("***")
                .trim()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            current = Some((id, String::new()));
        }
        if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    finish(&mut current);
    files
}

/// Splits `postcat -e -h` output at its section markers: the envelope
/// records before `*** MESSAGE CONTENTS`, the header lines after it (up to
/// the next `***` marker).
fn split_envelope_and_headers(output: &[u8]) -> (Envelope, Vec<u8>) {
    let text = String::from_utf8_lossy(output);
    let mut envelope_text = String::new();
    let mut headers = Vec::new();
    let mut in_headers = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("*** ") {
            in_headers = line.starts_with("*** MESSAGE CONTENTS");
            continue;
        }
        if in_headers {
            headers.extend_from_slice(line.as_bytes());
        } else {
            envelope_text.push_str(line);
        }
    }
    (Envelope::parse(&envelope_text), headers)
}

/// The count in a postsuper summary such as `postsuper: Placed on hold: 1
/// message` (0 when the line is missing: nothing matched).
fn summary_count(stderr: &str, summary: &str) -> usize {
    let wanted = format!("{summary}: ");
    stderr
        .lines()
        .filter_map(|line| line.split_once(&wanted).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_tell_local_and_authenticated_submissions() {
        let local = Envelope::parse(
            "*** ENVELOPE RECORDS deferred/4A0AF98C232 ***\n\
             message_size:             324             193               1               0             324               0\n\
             message_arrival_time: Sun Nov 22 03:00:00 2026\n\
             named_attribute: rewrite_context=local\n\
             sender: alice@example.test\n\
             original_recipient: bob@notls.example\n\
             recipient: bob@notls.example\n\
             done_recipient: carol@ok.example\n",
        );
        assert_eq!(local.sender, "alice@example.test");
        assert_eq!(
            local.recipient_addresses().collect::<Vec<_>>(),
            ["bob@notls.example"]
        );
        assert_eq!(local.queue_name.as_deref(), Some("deferred"));
        assert_eq!(local.done_recipients, ["carol@ok.example"]);
        assert!(local.local_submission);
        assert_eq!(local.sasl_username, None);
        let remote = Envelope::parse(
            "named_attribute: rewrite_context=remote\nnamed_attribute: sasl_username=alice\nsender: alice@example.test\n",
        );
        assert!(!remote.local_submission);
        assert_eq!(remote.sasl_username.as_deref(), Some("alice"));
    }

    #[test]
    fn envelopes_carry_dsn_8bitmime_smtputf8_and_the_copy_marker() {
        // As postcat -e of Postfix 3.7 printed it for a message submitted
        // with XFORWARD IDENT, RET=HDRS ENVID BODY=8BITMIME SMTPUTF8 and
        // per-recipient NOTIFY/ORCPT.
        let envelope = Envelope::parse(
            "*** ENVELOPE RECORDS hold/AB43198C8D8 ***\n\
             message_size:             179             823               2              22             179               1\n\
             content_filter: smtp_may:\n\
             named_attribute: log_ident=posttls.7.release\n\
             named_attribute: rewrite_context=remote\n\
             named_attribute: envelope_id=xyz+q\n\
             named_attribute: ret_flags=2\n\
             sender: alice@example.org\n\
             named_attribute: encoding=8bit\n\
             named_attribute: notify_flags=10\n\
             named_attribute: dsn_orig_rcpt=rfc822;Bob@NoTLS.example\n\
             original_recipient: bob@notls.example\n\
             recipient: bob@notls.example\n\
             named_attribute: notify_flags=1\n\
             original_recipient: jörg@notls.example\n\
             recipient: jörg@notls.example\n",
        );
        assert_eq!(envelope.queue_name.as_deref(), Some("hold"));
        assert_eq!(envelope.log_ident.as_deref(), Some("posttls.7.release"));
        assert_eq!(envelope.envelope_id.as_deref(), Some("xyz+q"));
        assert_eq!(envelope.ret_flags, 2);
        assert!(envelope.eight_bit);
        assert_eq!(envelope.sendopts, SENDOPTS_SMTPUTF8_REQUESTED);
        assert!(!envelope.has_unknown_sendopts());
        assert_eq!(
            envelope.recipients,
            [
                EnvelopeRecipient {
                    address: "bob@notls.example".into(),
                    notify_flags: 10,
                    dsn_orig_rcpt: Some("rfc822;Bob@NoTLS.example".into()),
                },
                EnvelopeRecipient {
                    address: "jörg@notls.example".into(),
                    notify_flags: 1,
                    dsn_orig_rcpt: None,
                },
            ]
        );
        let requiretls = Envelope::parse("message_size: 1 2 1 0 1 32\n");
        assert!(requiretls.has_unknown_sendopts());
    }

    #[test]
    fn envelope_and_headers_come_apart_at_the_markers() {
        let (envelope, headers) = split_envelope_and_headers(
            b"*** ENVELOPE RECORDS deferred/4A0AF98C232 ***\nnamed_attribute: rewrite_context=local\nsender: alice@example.test\nrecipient: bob@notls.example\n\
              *** MESSAGE CONTENTS deferred/4A0AF98C232 ***\nsender: forged@header.example\nSubject: Hello\n\n\
              *** HEADER EXTRACTED deferred/4A0AF98C232 ***\n*** MESSAGE FILE END deferred/4A0AF98C232 ***\n",
        );
        assert_eq!(envelope.sender, "alice@example.test");
        assert!(envelope.local_submission);
        assert_eq!(
            headers,
            b"sender: forged@header.example\nSubject: Hello\n\n"
        );
    }

    #[test]
    fn several_files_come_apart_by_queue_id() {
        let files = split_files(
            b"*** ENVELOPE RECORDS deferred/AAA111 ***\nnamed_attribute: rewrite_context=local\nsender: a@x\n\
              *** MESSAGE CONTENTS deferred/AAA111 ***\nSubject: one\n\n*** HEADER EXTRACTED deferred/AAA111 ***\n\
              *** MESSAGE FILE END deferred/AAA111 ***\n\
              *** ENVELOPE RECORDS deferred/BBB222 ***\nsender: b@x\n*** MESSAGE CONTENTS deferred/BBB222 ***\nSubject: two\n\n\
              *** HEADER EXTRACTED deferred/BBB222 ***\n*** MESSAGE FILE END deferred/BBB222 ***\n",
        );
        assert_eq!(files.len(), 2);
        assert!(files["AAA111"].0.local_submission);
        assert_eq!(files["AAA111"].1, b"Subject: one\n\n");
        assert_eq!(files["BBB222"].0.sender, "b@x");
        assert!(!files["BBB222"].0.local_submission);
        assert_eq!(files["BBB222"].1, b"Subject: two\n\n");
    }

    #[test]
    fn postsuper_summaries_are_counted() {
        assert_eq!(
            summary_count(
                "postsuper: 4A0AF98C232: placed on hold\npostsuper: Placed on hold: 1 message\n",
                "Placed on hold"
            ),
            1
        );
        assert_eq!(
            summary_count("postsuper: Deleted: 2 messages\n", "Deleted"),
            2
        );
        assert_eq!(summary_count("", "Deleted"), 0);
    }

    #[test]
    fn commands_run_with_argv_and_the_config_dir_and_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        // A fake postsuper that prints its argv, one per line.
        let fake = dir.path().join("postsuper");
        std::fs::write(&fake, "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\" >> \"$(dirname \"$0\")/argv\"; done\necho 'postsuper: Placed on hold: 1 message' >&2\n").unwrap();
        std::fs::write(
            dir.path().join("postqueue"),
            "#!/bin/sh\necho 'Queue report unavailable - mail system is down' >&2\nexit 69\n",
        )
        .unwrap();
        for name in ["postsuper", "postqueue"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join(name),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        let postfix = Postfix::new(
            Some("/etc/postfix-out".into()),
            dir.path().to_path_buf(),
            Duration::from_secs(10),
        );
        let id: QueueId = "4A0AF98C232".parse().unwrap();
        assert_eq!(postfix.hold(&id).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("argv")).unwrap(),
            "-c\n/etc/postfix-out\n-h\n4A0AF98C232\n"
        );
        assert!(matches!(
            postfix.queue_json(),
            Err(PostfixError::MailSystemDown { .. })
        ));
        let missing = Postfix::new(None, "/nonexistent".into(), Duration::from_secs(1));
        assert!(matches!(
            missing.queue_json(),
            Err(PostfixError::Start { .. })
        ));
    }
}
