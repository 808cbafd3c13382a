//! The sendmail transport with fake sendmail commands: one that keeps the
//! mail, one that fails like sendmail does, one that hangs.

use std::path::Path;
use std::time::{Duration, Instant};

use tlsrpt_delivery::{MailTransport, Outcome, Sendmail};

use crate::common::{gzip_report, render_mail};

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn exit_0_is_delivered_and_the_mail_arrives_with_local_line_ends() {
    let dir = tempfile::tempdir().unwrap();
    let fake = script(
        dir.path(),
        "sendmail",
        "printf '%s ' \"$@\" > \"$(dirname \"$0\")/args\"; cat > \"$(dirname \"$0\")/mail\"",
    );
    let transport = MailTransport::Sendmail(
        Sendmail::new(&format!("{fake} -i -t"), Duration::from_secs(10)).unwrap(),
    );
    let mail = render_mail(&gzip_report());
    let outcome = transport.send("ignored@example.net", "ignored@example.com", &mail);
    assert_eq!(
        outcome,
        Outcome::Delivered(format!("`{fake} -i -t` exited with status 0"))
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args")).unwrap(),
        "-i -t "
    );
    let received = std::fs::read(dir.path().join("mail")).unwrap();
    assert!(!received.contains(&b'\r'));
    assert_eq!(
        received,
        String::from_utf8(mail)
            .unwrap()
            .replace("\r\n", "\n")
            .into_bytes()
    );
}

#[test]
fn another_exit_status_is_retried_with_the_error_output() {
    let dir = tempfile::tempdir().unwrap();
    let fake = script(
        dir.path(),
        "sendmail",
        "cat > /dev/null; echo 'sendmail: fatal: queue file write error' >&2; exit 75",
    );
    let outcome = Sendmail::new(&fake, Duration::from_secs(10))
        .unwrap()
        .send(&render_mail(&gzip_report()));
    assert_eq!(
        outcome,
        Outcome::RetryLater(format!(
            "`{fake}` exited with status 75: sendmail: fatal: queue file write error"
        ))
    );
}

#[test]
fn a_hanging_command_is_killed_with_its_children_at_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep.pid");
    // The script's child, not the script, holds on: only killing the whole
    // process group ends it.
    let fake = script(
        dir.path(),
        "sendmail",
        &format!("sleep 30 & echo $! > {}; wait", pid_file.display()),
    );
    let started = Instant::now();
    let outcome = Sendmail::new(&fake, Duration::from_secs(1))
        .unwrap()
        .send(&render_mail(&gzip_report()));
    let elapsed = started.elapsed();
    assert_eq!(
        outcome,
        Outcome::RetryLater(format!("`{fake}` did not finish within 1 s and was killed"))
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let sleep_pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_entry = Path::new("/proc").join(sleep_pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    // Killed, and reaped by init once its parent is gone.
    while proc_entry.exists() && !is_zombie(&proc_entry) {
        assert!(Instant::now() < deadline, "the script's child still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(proc_entry: &Path) -> bool {
    std::fs::read_to_string(proc_entry.join("stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn a_missing_program_is_retried() {
    let outcome = Sendmail::new("/nonexistent/sendmail -t", Duration::from_secs(1))
        .unwrap()
        .send(b"x");
    match outcome {
        Outcome::RetryLater(text) => assert!(
            text.starts_with("cannot start `/nonexistent/sendmail -t`:"),
            "{text}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_command_that_ignores_a_large_mail_is_not_delivered() {
    // Exit 0 without reading: a mail larger than the pipe buffer cannot
    // have been taken.
    let outcome = Sendmail::new("true", Duration::from_secs(10))
        .unwrap()
        .send(&vec![b'x'; 1 << 20]);
    match outcome {
        Outcome::RetryLater(text) => assert!(text.contains("without reading all"), "{text}"),
        other => panic!("{other:?}"),
    }
}
