#!/usr/bin/env python3
"""Collector benchmark: datagram loss under paced non-blocking load.

For each rate, the same load (mailtls loadgen: non-blocking sends like
libtlsrpt) goes to these receivers in interleaved repetitions:

  floor      mailtls count-sink: receives and counts, nothing else; the least
             loss this machine allows a normal process
  floor-rt   the same at real-time priority (when permitted): the least loss
             this machine allows at all
  mailtls    our tlsrpt-collectd as installed: its receiver thread takes
             real-time priority when permitted (receiver_priority=realtime)
  mailtls-normal  ours with receiver_priority=normal
  upstream   the Python tlsrpt-collectd 0.6.0 (from .venv)

Real-time priority needs root, CAP_SYS_NICE or RLIMIT_RTPRIO >= 1; without
it floor-rt is left out and mailtls runs as mailtls-normal does.

Loss is what the sender attempted minus what ends up counted in the database
(or by the sink): datagrams the kernel refused because the receiver's queue
was full, plus any accepted but never counted (the upstream drops queued
datagrams on SIGTERM). Run once on a quiet machine and once with one core
kept busy by another process. Medians over the repetitions are reported.

Then the memory check: peak resident memory of our collectd over a day with
100 000 distinct domains.

Usage: bench/run collectd [--quick] [--reps N] [--seconds S] [--json FILE]
"""

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
VENV = os.path.join(ROOT, ".venv", "bin")


def wait_for(path, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited early: {proc.args}")
        time.sleep(0.02)
    raise RuntimeError(f"socket {path} did not appear")


def sum_counts(db):
    con = sqlite3.connect(db)
    try:
        (n,) = con.execute("SELECT coalesce(sum(cntrtotal), 0) FROM finalresults").fetchone()
        return n
    finally:
        con.close()


class Receiver:
    def __init__(self, kind, workdir):
        self.kind = kind
        self.sock = os.path.join(workdir, "s")
        self.db = os.path.join(workdir, "c.sqlite")
        if kind.startswith("floor"):
            cmd = [os.path.join(BIN, "mailtls"), "count-sink", "--socket", self.sock]
            if kind == "floor-rt":
                cmd.append("--realtime")
        elif kind.startswith("mailtls"):
            cmd = [os.path.join(BIN, "tlsrpt-collectd")]
            if kind == "mailtls-normal":
                cmd.append("--receiver_priority=normal")
        else:
            cmd = [os.path.join(VENV, "tlsrpt-collectd")]
        if not kind.startswith("floor"):
            cmd += [f"--storage=sqlite://{self.db}", f"--socketname={self.sock}",
                    "--log_level=error"]
        env = dict(os.environ)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, cwd=workdir)
        wait_for(self.sock, self.proc)
        time.sleep(0.2)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        if self.kind.startswith("floor"):
            return int(out.decode().strip() or 0)
        return sum_counts(self.db)


def loadgen(sock, rate, seconds, seed, domains=1000, extra=()):
    out = subprocess.run(
        [os.path.join(BIN, "mailtls"), "loadgen", "--socket", sock, "--count",
         str(rate * seconds), "--rate", str(rate), "--seed", str(seed),
         "--domains", str(domains), "--json", *extra],
        check=True, capture_output=True).stdout
    return json.loads(out)


def cpu_times():
    """The machine's CPU time counters (/proc/stat), in ticks."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def steal_pct(before, after):
    """Share of CPU time the hypervisor gave to others (steal) between two
    readings: on a virtual machine, a sign that the host was busy and the
    figures are noisy."""
    d = [b - a for a, b in zip(before, after)]
    return 100.0 * d[7] / max(1, sum(d))


def one_run(kind, rate, seconds, seed):
    with tempfile.TemporaryDirectory(prefix="mailtls-bench-") as d:
        r = Receiver(kind, d)
        try:
            before = cpu_times()
            sent = loadgen(r.sock, rate, seconds, seed)
            steal = steal_pct(before, cpu_times())
        finally:
            counted = r.stop()
    attempted = sent["attempted"]
    return {
        "attempted": attempted,
        "refused": sent["refused"],
        "counted": counted,
        "loss_pct": 100.0 * (attempted - counted) / attempted,
        "lost_after_accept": sent["accepted"] - counted,
        "steal_pct": steal,
    }


# Differences printed: ours against the floor of the same scheduling class.
DIFFS = [("mailtls", "floor"), ("mailtls", "floor-rt"), ("mailtls-normal", "floor")]


def realtime_permitted():
    """Whether this user may give a thread real-time priority."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], stderr=subprocess.DEVNULL).returncode == 0


def busy_core():
    """One process that keeps one core busy, as another program on an MTA host."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def scenario(name, kinds, rates, reps, seconds):
    results = {}
    for rate in rates:
        for rep in range(reps):
            for kind in kinds:
                r = one_run(kind, rate, seconds, seed=rep + 1)
                results.setdefault((rate, kind), []).append(r)
                print(f"  {name:5} {rate:6}/s rep {rep + 1} {kind:14} loss {r['loss_pct']:6.2f}%"
                      f" (refused {r['refused']}, lost after accept {r['lost_after_accept']},"
                      f" host steal {r['steal_pct']:.1f}%)",
                      file=sys.stderr, flush=True)
    return results


def memory_check(domains=100_000, count=200_000, rate=10_000):
    """A day's worth of distinct domains, compressed into 20 seconds: every
    domain appears twice, in turn."""
    with tempfile.TemporaryDirectory(prefix="mailtls-bench-") as d:
        r = Receiver("mailtls", d)
        sent = loadgen(r.sock, rate, count // rate, seed=7, domains=domains, extra=["--sequential"])
        time.sleep(1.5)  # let the last write happen
        with open(f"/proc/{r.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        counted = r.stop()
        con = sqlite3.connect(r.db)
        (distinct,) = con.execute("SELECT count(DISTINCT domain) FROM finalresults").fetchone()
        con.close()
    return {
        "datagrams": sent["attempted"],
        "counted": counted,
        "distinct_domains": distinct,
        "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
    }


def hostile_memory_check(count=1_000_000, rate=50_000):
    """One domain whose MX gives a new EHLO name in every session: every
    datagram carries a failure detail never seen before. The collector keeps
    1000 distinct details per domain, policy and day; the totals count
    every session."""
    with tempfile.TemporaryDirectory(prefix="mailtls-bench-") as d:
        r = Receiver("mailtls", d)
        sent = loadgen(r.sock, rate, count // rate, seed=11, domains=1, extra=["--unique-ehlo"])
        time.sleep(1.5)
        with open(f"/proc/{r.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        counted = r.stop()
        con = sqlite3.connect(r.db)
        (details,) = con.execute("SELECT count(*) FROM failures").fetchone()
        (failed,) = con.execute("SELECT coalesce(sum(cntrfailure), 0) FROM finalresults").fetchone()
        con.close()
        day = time.strftime("%Y-%m-%d", time.gmtime())
        fetched = subprocess.run(
            [os.path.join(BIN, "tlsrpt-fetcher"), f"--storage=sqlite://{r.db}", day, "d0.example"],
            check=True, capture_output=True).stdout.decode()
        valid = json.loads(fetched) is not None
    return {
        "datagrams": sent["attempted"],
        "accepted": sent["accepted"],
        "counted": counted,
        "failed_sessions": failed,
        "failure_details_stored": details,
        "fetcher_answer_is_json": valid,
        "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per rate and receiver (default 3)")
    ap.add_argument("--seconds", type=int, default=2, help="seconds of load per run (default 2)")
    ap.add_argument("--rates", default="2000,10000,20000,50000")
    ap.add_argument("--quick", action="store_true", help="one repetition, one second")
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--scenarios", default="quiet,busy", help="quiet, busy or both (default)")
    ap.add_argument("--kinds", help="only these receivers, e.g. floor,mailtls (upstream: see --no-upstream)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--hostile-only", action="store_true",
                    help="only the unique-EHLO memory check (1 million sessions, one domain)")
    args = ap.parse_args()
    if args.hostile_only:
        result = hostile_memory_check()
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"hostile_memory": result}, f, indent=2)
        return
    if args.quick:
        args.reps, args.seconds = 1, 1
    rates = [int(x) for x in args.rates.split(",")]
    kinds = ["floor", "mailtls", "mailtls-normal"]
    if realtime_permitted():
        kinds.insert(1, "floor-rt")
    else:
        print("real-time priority not permitted here: floor-rt left out, mailtls runs at normal "
              "priority", file=sys.stderr)
    if args.kinds:
        kinds = [k for k in kinds if k in args.kinds.split(",")]
    if not args.no_upstream:
        if os.path.exists(os.path.join(VENV, "tlsrpt-collectd")):
            kinds.append("upstream")
        else:
            print("upstream not installed (.venv): run scripts/setup-oracle", file=sys.stderr)
    qlen = open("/proc/sys/net/unix/max_dgram_qlen").read().strip()
    print(f"net.unix.max_dgram_qlen = {qlen}; {os.cpu_count()} cores; "
          f"{args.reps} reps x {args.seconds} s per rate and receiver", file=sys.stderr)

    report = {"qlen": int(qlen), "cores": os.cpu_count(), "scenarios": {}}
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        hog = busy_core() if name == "busy" else None
        try:
            res = scenario(name, kinds, rates, args.reps, args.seconds)
        finally:
            if hog:
                hog.kill()
                hog.wait()
        report["scenarios"][name] = {
            f"{rate}": {kind: statistics.median(r["loss_pct"] for r in res[(rate, kind)])
                        for kind in kinds}
            for rate in rates
        }
        report["scenarios"][name + "_runs"] = {
            f"{rate}": {kind: res[(rate, kind)] for kind in kinds} for rate in rates
        }
        report["scenarios"][name + "_steal_pct"] = statistics.median(
            r["steal_pct"] for runs in res.values() for r in runs)
        report["scenarios"][name + "_lost_after_accept"] = {
            f"{rate}": {kind: sum(r["lost_after_accept"] for r in res[(rate, kind)]) for kind in kinds}
            for rate in rates
        }
    report["memory"] = memory_check()
    report["hostile_memory"] = hostile_memory_check()

    print()
    print("Median loss in % of datagrams sent (kernel refusals + accepted but not counted):")
    for name in scenarios:
        print(f"\n  {name} machine" + (" (one core kept busy by another process)" if name == "busy" else "")
              + f"; median host steal during the runs {report['scenarios'][name + '_steal_pct']:.1f}%")
        diffs = [(a, b) for a, b in DIFFS if a in kinds and b in kinds]
        print("    rate/s " + "".join(f"{k:>15}" for k in kinds)
              + "".join(f"{a + ' - ' + b:>26}" for a, b in diffs))
        for rate in rates:
            row = report["scenarios"][name][f"{rate}"]
            print(f"    {rate:6} " + "".join(f"{row[k]:14.2f}%" for k in kinds)
                  + "".join(f"{row[a] - row[b]:+23.2f} pp" for a, b in diffs))
        lost = report["scenarios"][name + "_lost_after_accept"]
        if "upstream" in kinds:
            print("    accepted by the kernel but never counted (all reps): "
                  + ", ".join(f"{rate}/s: mailtls {lost[f'{rate}']['mailtls']}, upstream {lost[f'{rate}']['upstream']}"
                              for rate in rates))
    h = report["hostile_memory"]
    print(f"\nUnique EHLO names: {h['datagrams']} sessions for one domain, each with a new failure "
          f"detail: peak RSS {h['peak_rss_mb']:.1f} MB, {h['counted']} counted, "
          f"{h['failure_details_stored']} details stored")
    m = report["memory"]
    print(f"\nMemory: {m['datagrams']} datagrams for {m['distinct_domains']} distinct domains: "
          f"peak RSS {m['peak_rss_mb']:.1f} MB (now {m['rss_mb']:.1f} MB), counted {m['counted']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
