//! Our collector on the socket Postfix 3.10 sends to, in its spool
//! (`run/tlsrpt/tlsrpt-collectd.socket` of the queue directory, reached by
//! Postfix's smtp chrooted there as Debian ships it), restarted and killed
//! while Postfix keeps sending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{collector_socket, logged_events, Domain, Lab, Mx, WAIT};
use crate::support::lab::Suite;
use crate::support::postfix::Postfix;
use crate::support::*;

/// The numeric gid of `group` in the root's /etc/group (the root's ids are
/// not the host's).
fn root_gid(lab: &Lab, group: &str) -> String {
    let groups = std::fs::read_to_string(lab.root.path().join("etc/group")).unwrap();
    groups
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields[0] == group).then(|| fields[2].to_string())
        })
        .unwrap_or_else(|| panic!("no group {group} in the root"))
}

/// Submits one message a `period` to `to` until stopped.
struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Sender {
    fn start(postfix: &Arc<Postfix>, to: String, period: Duration) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, postfix) = (stop.clone(), postfix.clone());
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    postfix.sendmail(
                        &["-f", "sender@mta.mailtls.test", "--", &to],
                        b"Subject: steady\n\nbody\n",
                    );
                    sent += 1;
                    std::thread::sleep(period);
                }
                sent
            })
        };
        Sender {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop; the number of messages submitted.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Postfix's log lines saying a datagram could not be handed to the
/// collector (no collector bound to the socket).
fn send_failures(maillog: &str) -> usize {
    maillog
        .lines()
        .filter(|l| l.contains("tlsrpt") && l.contains("warning:"))
        .count()
}

#[test]
fn the_collector_in_postfixs_spool_restarted_and_killed_while_postfix_sends_counts_each_datagram_once(
) {
    let domain = Domain::new("steady", Mx::Trusted).policy("secure");
    let lab = Lab::start(Suite::Trixie, std::slice::from_ref(&domain));
    let postfix = Arc::new(Postfix::start(lab.postfix_options()));
    let socket = collector_socket(&postfix);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collectd.sqlite");
    let group = root_gid(&lab, "postfix");
    // As the package sets it up: Postfix's group may write, nobody else.
    let start_collector = || {
        Collector::start_at(
            &format!("sqlite://{}", db.display()),
            &socket,
            &[
                &format!("--socketgroup={group}"),
                "--socketmode=0220",
                "--sockettimeout=1",
                "--receiver_priority=normal",
            ],
        )
    };
    let events = |postfix: &Postfix| logged_events(&postfix.maillog()).len();
    let counted = || try_total(&db).unwrap_or(0) as usize;

    let mut collector = start_collector();
    let sender = Sender::start(
        &postfix,
        domain_address(&domain),
        Duration::from_millis(100),
    );
    wait_until(30, "10 TLSRPT events", || events(&postfix) >= 10);

    // A restart (SIGTERM, start again) while Postfix keeps sending: what
    // Postfix handed over before is committed, what it sends while no
    // collector is bound is refused (and logged by Postfix), what comes
    // after is counted by the new collector.
    assert!(collector.terminate().success(), "{}", collector.log_text());
    std::thread::sleep(Duration::from_millis(500));
    collector = start_collector();
    let before = events(&postfix);
    wait_until(30, "10 more TLSRPT events", || {
        events(&postfix) >= before + 10
    });

    // SIGKILL once everything accepted is committed, then Postfix sends
    // again at once: into a socket nobody reads until the restart. The
    // restarted collector neither loses the committed counts nor counts
    // anything again. (What a collector holds uncommitted, at most
    // `sockettimeout` of datagrams, dies with it: see docs/architecture.md.)
    let first = sender.stop();
    postfix.wait_queue_empty(WAIT);
    let accepted_so_far = events(&postfix) - send_failures(&postfix.maillog());
    wait_until(20, "everything accepted committed", || {
        counted() == accepted_so_far
    });
    collector.signal(libc::SIGKILL);
    let _ = collector.wait(10);
    let sender = Sender::start(
        &postfix,
        domain_address(&domain),
        Duration::from_millis(100),
    );
    let killed_at = events(&postfix);
    wait_until(30, "events while no collector runs", || {
        events(&postfix) >= killed_at + 3
    });
    collector = start_collector();
    let before = events(&postfix);
    wait_until(30, "events after the restart", || {
        events(&postfix) >= before + 5
    });
    let sent = first + sender.stop();
    postfix.wait_queue_empty(WAIT);

    let maillog = postfix.maillog();
    let total_events = events(&postfix);
    let refused = send_failures(&maillog);
    assert_eq!(total_events, sent, "one event a delivery:\n{maillog}");
    assert!(
        refused >= 3,
        "Postfix logged no refused datagram:\n{maillog}"
    );
    let accepted = total_events - refused;
    wait_until(20, "the last commit", || counted() == accepted);
    assert!(collector.terminate().success(), "{}", collector.log_text());
    // Exactly what the kernel accepted: nothing counted twice, nothing lost.
    assert_eq!(counted(), accepted, "{maillog}");
    // Every message was delivered over TLS.
    assert_eq!(lab.mxes[&domain.name()].messages().len(), sent);
}

fn domain_address(domain: &Domain) -> String {
    format!("user@{}", domain.name())
}
