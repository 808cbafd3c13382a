//! The test harness itself: a real private Postfix delivers to the SMTP sink
//! (TLS "may"), defers when TLS is required ("encrypt"), and the sink speaks
//! SMTP correctly.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::postfix::{Options, Postfix};
use crate::support::smtp_sink::{Mode, SmtpSink};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn postfix_delivers_to_the_sink_with_tls_may() {
    let sink = SmtpSink::start();
    let postfix = Postfix::start(Options::new(sink.port()));
    assert_eq!(
        postfix.postconf("relayhost"),
        format!("[127.0.0.1]:{}", sink.port())
    );

    postfix.sendmail(
        &["-f", "alice@example.test", "--", "bob@remote.example"],
        b"From: alice@example.test\nTo: bob@remote.example\nSubject: harness\n\nfirst line\n.\n..two dots\nlast line\n",
    );
    let messages = sink.wait_for(1, WAIT);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let m = &messages[0];
    assert_eq!(m.sender, "alice@example.test");
    assert_eq!(m.recipients, ["bob@remote.example"]);
    assert_eq!(m.helo, "mta.mailtls.test");
    let text = m.text();
    assert!(text.contains("\r\nSubject: harness\r\n"), "{text}");
    // Postfix added its headers, and the body survived dot-stuffing both ways
    // (-i: a lone dot does not end the submission).
    assert!(text.contains("Message-Id: <"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nfirst line\r\n.\r\n..two dots\r\nlast line\r\n"),
        "{text}"
    );
    postfix.wait_queue_empty(WAIT);
    let log = postfix.maillog();
    assert!(log.contains("status=sent"), "{log}");
    // The harness's configuration is complete (e.g. a missing tlsmgr
    // service or queue permission problem would show here).
    assert!(!log.contains("warning:"), "{log}");

    // The command line for a `sendmail_script`: recipients from the headers.
    let command = postfix.sendmail_command();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "/usr/sbin/sendmail");
    assert!(words.ends_with(&["-i", "-t"]), "{command}");
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From: carol@example.test\nTo: dave@remote.example, erin@remote.example\nSubject: t\n\nbody\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let messages = sink.wait_for(2, WAIT);
    // -t takes recipients, not the sender, from the headers: the envelope
    // sender is the submitting user (root, as the harness runs) @ myorigin.
    assert_eq!(messages[1].sender, "root@mta.mailtls.test");
    let mut rcpts = messages[1].recipients.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["dave@remote.example", "erin@remote.example"]);
}

#[test]
fn postfix_defers_without_starttls_when_tls_is_required() {
    let sink = SmtpSink::start();
    let postfix = Postfix::start(Options::new(sink.port()).tls_security_level("encrypt"));
    postfix.sendmail(
        &["-f", "alice@example.test", "--", "bob@remote.example"],
        b"Subject: must not leave in plaintext\n\nsecret\n",
    );
    let reason = |q: &[serde_json::Value]| -> Option<String> {
        q.first()?["recipients"][0]["delay_reason"]
            .as_str()
            .map(str::to_string)
    };
    let queue = postfix.wait_queue(WAIT, "a deferred message", |q| reason(q).is_some());
    assert_eq!(queue.len(), 1, "{queue:#?}");
    assert_eq!(queue[0]["queue_name"], "deferred", "{queue:#?}");
    assert_eq!(queue[0]["sender"], "alice@example.test");
    assert_eq!(queue[0]["recipients"][0]["address"], "bob@remote.example");
    let reason = reason(&queue).unwrap();
    assert!(
        reason.contains("TLS is required, but was not offered"),
        "{reason}"
    );
    // Postfix did connect (and gave up after EHLO): nothing was delivered.
    assert!(sink.connections() >= 1);
    assert!(sink.messages().is_empty(), "{:#?}", sink.messages());

    // A flush retries at once, with the same outcome.
    let log_lines = postfix.maillog().lines().count();
    postfix.flush();
    let queue = postfix.wait_queue(WAIT, "a second deferral", |_| {
        postfix
            .maillog()
            .lines()
            .skip(log_lines)
            .any(|l| l.contains("status=deferred"))
    });
    assert_eq!(queue.len(), 1, "{queue:#?}");
    assert!(sink.messages().is_empty());
}

#[test]
fn postfix_defers_on_a_4xx_and_delivers_after_a_flush() {
    let sink = SmtpSink::start_with(Mode::DeferData);
    let postfix = Postfix::start(Options::new(sink.port()));
    postfix.sendmail(
        &["-f", "alice@example.test", "--", "bob@remote.example"],
        b"Subject: retry\n\nbody\n",
    );
    sink.wait_for_rejections(1, WAIT);
    let queue = postfix.wait_queue(WAIT, "a deferred message", |q| {
        q.first().is_some_and(|m| m["queue_name"] == "deferred")
    });
    let reason = queue[0]["recipients"][0]["delay_reason"].as_str().unwrap();
    assert!(
        reason.contains("451 4.3.0 test sink: message deferred"),
        "{reason}"
    );
    assert!(sink.messages().is_empty());

    sink.set_mode(Mode::Accept);
    postfix.flush();
    let messages = sink.wait_for(1, WAIT);
    assert_eq!(messages[0].recipients, ["bob@remote.example"]);
    postfix.wait_queue_empty(WAIT);
}

/// Read one (possibly multi-line) SMTP reply; returns its last line.
fn reply(input: &mut impl BufRead) -> String {
    loop {
        let mut line = String::new();
        input.read_line(&mut line).unwrap();
        assert!(line.len() >= 4, "short reply {line:?}");
        if line.as_bytes()[3] == b' ' {
            return line.trim_end().to_string();
        }
    }
}

fn exchange(out: &mut TcpStream, input: &mut impl BufRead, command: &str, code: &str) -> String {
    out.write_all(command.as_bytes()).unwrap();
    let r = reply(input);
    assert!(r.starts_with(code), "{command:?} got {r:?}, wanted {code}");
    r
}

#[test]
fn sink_unstuffs_dots_and_records_every_recipient() {
    let sink = SmtpSink::start();
    let mut out = TcpStream::connect(("127.0.0.1", sink.port())).unwrap();
    let mut input = BufReader::new(out.try_clone().unwrap());
    assert!(reply(&mut input).starts_with("220 "));
    let ehlo = exchange(&mut out, &mut input, "EHLO client.test\r\n", "250");
    assert!(!ehlo.contains("STARTTLS"));
    exchange(&mut out, &mut input, "STARTTLS\r\n", "502");
    exchange(&mut out, &mut input, "DATA\r\n", "503");
    exchange(&mut out, &mut input, "NOOP\r\n", "250");

    // A transaction abandoned with RSET leaves no trace.
    exchange(
        &mut out,
        &mut input,
        "MAIL FROM:<gone@example.test>\r\n",
        "250",
    );
    exchange(
        &mut out,
        &mut input,
        "RCPT TO:<gone@remote.example>\r\n",
        "250",
    );
    exchange(&mut out, &mut input, "RSET\r\n", "250");

    exchange(
        &mut out,
        &mut input,
        "MAIL FROM:<alice@example.test> SIZE=100 BODY=8BITMIME\r\n",
        "250",
    );
    exchange(
        &mut out,
        &mut input,
        "RCPT TO:<bob@remote.example>\r\n",
        "250",
    );
    exchange(
        &mut out,
        &mut input,
        "rcpt to:<carol@remote.example> NOTIFY=NEVER\r\n",
        "250",
    );
    exchange(&mut out, &mut input, "DATA\r\n", "354");
    exchange(
        &mut out,
        &mut input,
        "Subject: dots\r\n\r\n..\r\n...x\r\n.y\r\nz.\r\n.\r\n",
        "250",
    );
    // A second message in the same session, null sender.
    exchange(&mut out, &mut input, "MAIL FROM:<>\r\n", "250");
    exchange(
        &mut out,
        &mut input,
        "RCPT TO:<dave@remote.example>\r\n",
        "250",
    );
    exchange(&mut out, &mut input, "DATA\r\n", "354");
    exchange(&mut out, &mut input, "\r\n.\r\n", "250");
    exchange(&mut out, &mut input, "QUIT\r\n", "221");

    let messages = sink.wait_for(2, Duration::from_secs(5));
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].helo, "client.test");
    assert_eq!(messages[0].sender, "alice@example.test");
    assert_eq!(
        messages[0].recipients,
        ["bob@remote.example", "carol@remote.example"]
    );
    assert_eq!(
        messages[0].data,
        b"Subject: dots\r\n\r\n.\r\n..x\r\ny\r\nz.\r\n"
    );
    assert_eq!(messages[1].sender, "");
    assert_eq!(messages[1].recipients, ["dave@remote.example"]);
    assert_eq!(messages[1].data, b"\r\n");
    assert_eq!(sink.connections(), 1);
}

#[test]
fn sink_failure_modes_answer_4xx() {
    let sink = SmtpSink::start_with(Mode::DeferRcpt);
    let mut out = TcpStream::connect(("127.0.0.1", sink.port())).unwrap();
    let mut input = BufReader::new(out.try_clone().unwrap());
    reply(&mut input);
    // Each line sent and the reply code it must get.
    let mut talk = |lines: &[(&str, &str)]| {
        for (line, code) in lines {
            exchange(&mut out, &mut input, line, code);
        }
    };
    let envelope = |rcpt_code| {
        [
            ("MAIL FROM:<a@example.test>\r\n", "250"),
            ("RCPT TO:<b@remote.example>\r\n", rcpt_code),
        ]
    };
    talk(&[("HELO client.test\r\n", "250")]);
    talk(&envelope("451"));
    talk(&[("DATA\r\n", "554"), ("RSET\r\n", "250")]);

    sink.set_mode(Mode::DeferData);
    talk(&envelope("250"));
    talk(&[("DATA\r\n", "354"), ("x\r\n.\r\n", "451")]);
    assert_eq!(sink.rejections(), 2);
    assert!(sink.messages().is_empty());

    sink.set_mode(Mode::Accept);
    talk(&envelope("250"));
    talk(&[("DATA\r\n", "354"), ("x\r\n.\r\n", "250")]);
    assert_eq!(sink.wait_for(1, Duration::from_secs(5))[0].data, b"x\r\n");
}
