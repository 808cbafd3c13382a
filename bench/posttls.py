#!/usr/bin/env python3
"""PostTLS scan benchmark: `posttls scan` over a queue of N deferred messages.

The queue is a recorded `postqueue -j` listing (generated here: most
messages deferred for missing STARTTLS, some for other TLS failures, some
for connection refused, some with several recipients, most from our own
senders), served by stand-in postqueue/postcat commands so that the numbers
are the scanner's own and not Postfix's. Two timed passes:

  first   every message is new: envelopes and subjects read (postcat, 500
          messages per run), every decision stored, then every notification
          built, signed and handed to the notification command (a stand-in
          that reads and discards it, one process per mail);
  steady  the same queue again: everything known, every decision made
          again (who waits, who is told, reminders due), nothing to send.

Target (issue 4): scanning 10 000 deferred messages and deciding all
notifications in under 2 seconds (both passes up to the decisions; sending
the first pass's notifications is one command or SMTP transaction each).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAILTLS = os.path.join(ROOT, "target", "release", "mailtls")

REASONS = [
    (60, "TLS is required, but was not offered by host mx.{d}[192.0.2.{n}]"),
    (4, "Server certificate not verified"),
    (3, "delivery temporarily suspended: TLS is required, but was not offered by host mx.{d}[192.0.2.{n}]"),
    (3, "Cannot start TLS: handshake failure"),
    (20, "connect to mx.{d}[192.0.2.{n}]:25: Connection refused"),
    (10, "host mx.{d}[192.0.2.{n}] said: 450 4.2.0 Mailbox busy (in reply to RCPT TO command)"),
]


def pick_reason(rng, domain):
    total = sum(w for w, _ in REASONS)
    x = rng.randrange(total)
    for weight, text in REASONS:
        if x < weight:
            return text.format(d=domain, n=rng.randrange(1, 250))
        x -= weight
    raise AssertionError


def listing(n, seed=4):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        own = rng.random() < 0.8
        sender = f"user{i % 500}@{'example.org' if own else 'elsewhere.example'}"
        recipients = []
        for j in range(1 if rng.random() < 0.85 else rng.randrange(2, 5)):
            domain = f"d{rng.randrange(2000)}.example"
            recipients.append({"address": f"r{j}@{domain}", "delay_reason": pick_reason(rng, domain)})
        queue_id = "%011X" % (0x1000000000 + i)
        lines.append(json.dumps({
            "queue_name": "deferred", "queue_id": queue_id, "arrival_time": 1795300000 + i,
            "message_size": 2000 + i % 3000, "forced_expire": False, "sender": sender,
            "recipients": recipients}, separators=(",", ":")))
    return "\n".join(lines) + "\n"


def stand_ins(bindir, listing_file):
    """postqueue, postcat, postconf and a notification sink, as small shell
    scripts."""
    scripts = {
        # The worker asks Postfix's version (how released mail leaves) and
        # where its queue is: a Postfix 3.10 with TLS-Required honoured.
        "postconf": '#!/bin/sh\nfor a in "$@"; do case "$a" in mail_version) echo 3.10.5;; tls_required_enable) echo yes;; '
                    f'queue_directory) echo {os.path.dirname(bindir)};; -*) ;; *) echo "postconf: unknown parameter $a" >&2; exit 1;; esac; done\n',
        "postqueue": f'#!/bin/sh\nexec cat {listing_file}\n',
        # -e -h -q ID...: for each id a local submission and a subject,
        # with postcat's section markers.
        "postcat": '#!/bin/sh\nq=0\nfor a in "$@"; do case "$a" in -q) q=1;; -*) ;; *) if [ $q = 1 ]; then printf "*** ENVELOPE RECORDS deferred/%s ***\\nnamed_attribute: rewrite_context=local\\nsender: x\\n*** MESSAGE CONTENTS deferred/%s ***\\nSubject: Quarterly report\\n\\n*** HEADER EXTRACTED deferred/%s ***\\n*** MESSAGE FILE END deferred/%s ***\\n" "$a" "$a" "$a" "$a"; fi;; esac; done\n',
        "sink": '#!/bin/sh\nexec cat > /dev/null\n',
    }
    for name, text in scripts.items():
        path = os.path.join(bindir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)


def scan(work, bindir):
    cmd = [MAILTLS, "posttls", "scan",
           f"--database={work}/posttls.sqlite", f"--postfix_command_dir={bindir}",
           "--instance=bench", "--own_domains=example.org", "--mandatory_domains=.bank.example",
           "--notification_from=postmaster@example.org", "--base_url=https://posttls.example.org",
           f"--secret_key_file={work}/secret.key", f"--lock_file={work}/scan.lock",
           f"--sendmail_script={bindir}/sink", "--reminder_interval=0", "--log_level=info"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"posttls scan failed:\n{out.stderr[-3000:]}")
    summary = [line for line in out.stderr.splitlines() if " scan: " in line]
    text = summary[-1].split(" scan: ", 1)[1] if summary else "?"
    decided = float(text.split("decided in ", 1)[1].split(" s", 1)[0]) if "decided in " in text else float("nan")
    return elapsed, decided, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not os.path.exists(MAILTLS):
        sys.exit(f"{MAILTLS} is missing: run cargo build --release first (bench/run posttls does)")
    results = {"messages": args.messages, "first": [], "first_decided": [], "steady": []}
    for rep in range(args.reps):
        work = tempfile.mkdtemp(prefix="posttls-bench-")
        try:
            bindir = os.path.join(work, "bin")
            os.mkdir(bindir)
            listing_file = os.path.join(work, "queue.jsonl")
            with open(listing_file, "w") as f:
                f.write(listing(args.messages))
            stand_ins(bindir, listing_file)
            first, first_decided, first_summary = scan(work, bindir)
            steady, _, steady_summary = scan(work, bindir)
            results["first"].append(first)
            results["first_decided"].append(first_decided)
            results["steady"].append(steady)
            print(f"  rep {rep + 1}: first pass {first:6.2f} s ({first_summary})")
            print(f"  rep {rep + 1}: steady     {steady:6.2f} s ({steady_summary})")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print()
    print(f"posttls scan over {args.messages} deferred messages (median of {args.reps}, whole process):")
    print(f"  first pass, all new: decided (queue read, postcat, classify, decide, stored): {med(results['first_decided']):.2f} s")
    print(f"  first pass, all new: with every notification sent:                          {med(results['first']):.2f} s")
    print(f"  steady pass, all known, every decision again:                               {med(results['steady']):.2f} s")
    worst = max(med(results["first_decided"]), med(results["steady"]))
    print(f"  target: under 2 s for scanning and deciding all notifications: {worst:.2f} s {'PASS' if worst < 2.0 else 'MISS'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
