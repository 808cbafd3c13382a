//! How long one scan of a large queue takes in the pure stages: parsing a
//! `postqueue -j` listing of 10 000 deferred messages, classifying every
//! delay reason and deciding every message (issue 4 asks for under 2 s for
//! the whole scan).
//!
//! The listing is generated: 60% "TLS not offered", 10% other TLS failures,
//! 20% connection refused, 10% several recipients with mixed reasons; 80%
//! of the senders are ours. The envelope evidence, which the real scanner
//! reads with `postcat -e`, is taken as given: own senders were submitted
//! locally or with SMTP AUTH, the others were relayed.
//!
//! `cargo run --release -p posttls-policy --example scan_bench [MESSAGES]`

use std::time::{Duration, Instant};

use posttls_classify::classify;
use posttls_policy::{decide, Decision, DomainSet, OwnSenders, SubmissionEvidence};
use posttls_queue::parse_queue;

const OTHER_TLS: &[&str] = &[
    "TLS is required, but host mx.partner.example[198.51.100.7] refused to start TLS: 454 4.7.0 TLS not available due to local problem",
    "Cannot start TLS: handshake failure",
    "Server certificate not verified",
    "delivery temporarily suspended: Server certificate not verified",
    "TLSA lookup error for mx.dane.example:25",
];

/// A small deterministic generator (xorshift64), so every run measures the
/// same listing without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn recipient_json(address: &str, reason: &str) -> String {
    format!(r#"{{"address": "{address}", "delay_reason": "{reason}"}}"#)
}

fn listing(messages: usize) -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = String::with_capacity(messages * 400);
    for i in 0..messages {
        let host = format!("mx{}.dest{}.example", rng.below(3), rng.below(500));
        let addr = format!("192.0.2.{}", rng.below(254) + 1);
        let not_offered = format!("TLS is required, but was not offered by host {host}[{addr}]");
        let refused = format!("connect to {host}[{addr}]:25: Connection refused");
        let rcpt = format!("user{}@dest{}.example", rng.below(10_000), rng.below(500));
        let recipients = match rng.below(10) {
            0..=5 => recipient_json(&rcpt, &not_offered),
            6 => recipient_json(&rcpt, OTHER_TLS[rng.below(OTHER_TLS.len() as u64) as usize]),
            7 | 8 => recipient_json(&rcpt, &refused),
            _ => [
                recipient_json(&rcpt, &not_offered),
                recipient_json("clerk@bank.example", &not_offered),
                recipient_json("someone@down.example", &refused),
                r#"{"address": "in-delivery@busy.example"}"#.to_owned(),
            ]
            .join(", "),
        };
        let sender = if rng.below(10) < 8 {
            format!("user{}@example.com", rng.below(2_000))
        } else {
            format!("stranger{}@relayed.example", rng.below(2_000))
        };
        out.push_str(&format!(
            r#"{{"queue_name": "deferred", "queue_id": "{:011X}", "arrival_time": {}, "message_size": {}, "forced_expire": false, "sender": "{sender}", "recipients": [{recipients}]}}"#,
            0x04A0_AF98_C232_u64 + i as u64,
            1_795_300_000 + i,
            300 + rng.below(50_000),
        ));
        out.push('\n');
    }
    out
}

fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("MESSAGES must be a number"))
        .unwrap_or(10_000);
    let text = listing(messages);
    let own = OwnSenders {
        domains: DomainSet::parse_list("example.com .example.com").unwrap(),
    };
    let mandatory = DomainSet::parse_list("bank.example .gov.example").unwrap();
    let local = SubmissionEvidence {
        local_submission: true,
        sasl_username: None,
    };
    let relayed = SubmissionEvidence::default();

    let mut best = Duration::MAX;
    let mut counts = (0, 0, 0, 0);
    for _ in 0..5 {
        let start = Instant::now();
        let scan = parse_queue(text.as_bytes());
        let (mut notify, mut ignore, mut releasable, mut mandatory_rcpts) = (0, 0, 0, 0);
        for m in &scan.messages {
            let evidence = if m.sender.ends_with("@example.com") {
                &local
            } else {
                &relayed
            };
            match decide(
                m,
                classify,
                own.is_own(&m.sender, evidence),
                false,
                &mandatory,
            ) {
                Decision::Notify(n) => {
                    notify += 1;
                    releasable += n.releasable.len();
                    mandatory_rcpts += n.mandatory.len();
                }
                Decision::Ignore(_) => ignore += 1,
            }
        }
        best = best.min(start.elapsed());
        assert!(scan.errors.is_empty(), "{:?}", scan.errors.first());
        counts = (notify, ignore, releasable, mandatory_rcpts);
    }
    let (notify, ignore, releasable, mandatory_rcpts) = counts;
    println!(
        "{messages} messages ({} bytes of postqueue -j): parse + classify + decide in {:.1} ms (best of 5)",
        text.len(),
        best.as_secs_f64() * 1e3
    );
    println!(
        "  notify {notify}, ignore {ignore}; releasable recipients {releasable}, mandatory {mandatory_rcpts}"
    );
}
