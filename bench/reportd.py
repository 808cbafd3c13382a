#!/usr/bin/env python3
"""Report daemon benchmark: a full day, from the collector's database to reports.

For N domains, a collector database as tlsrpt-collectd leaves it after UTC
midnight (collectd.sqlite.yesterday, upstream schema, data for the real UTC
yesterday: 1-3 policies per domain, a mix of sts, tlsa and no-policy-found,
some failure details, and the daystatus row that marks the day complete) is
handed to a freshly started report daemon with its fetcher:

  mailtls   our tlsrpt-reportd with our tlsrpt-fetcher (target/release)
  upstream  the Python tlsrpt-reportd 0.6.0 with its tlsrpt-fetcher (.venv)

Both get the same config file: every report goes to a `directory:`
destination (tlsrpt_record_map `. REPLACE directory:OUTDIR`),
spread_out_delivery = 1 and interval_main_loop = 1, so nothing waits on
purpose. The time measured runs from starting the daemon until the
directory holds one .json report per domain (polled every 20 ms); then the
daemon gets SIGTERM and must exit 0, and every report is checked (valid
JSON, a report-id, policies, every domain covered once, session counts
adding up to the database's).

The upstream reportd runs one fetcher process per domain (about 0.1 s each),
so 10 000 domains would take it some 20 minutes per run: it is measured
at the --upstream-domains sizes only and its time at N is a linear
least-squares EXTRAPOLATION from those. Ours is measured at N and at the
upstream sizes (like for like).

Targets: ours under 10 s for 10 000 domains, and at least 50x faster than
upstream at N.

With the defaults the upstream runs dominate: about 10 minutes on 2 cores
(upstream takes some 40 s at 300 domains and 2 minutes at 1000, three times
each). --upstream-only measures upstream alone (no target/release needed).

Usage: bench/run reportd [--domains 10000] [--upstream-domains 300,1000]
                         [--reps N] [--no-upstream] [--json FILE]
"""

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
VENV = os.path.join(ROOT, ".venv", "bin")

IMPLS = {
    "mailtls": (os.path.join(BIN, "tlsrpt-reportd"), os.path.join(BIN, "tlsrpt-fetcher")),
    "upstream": (os.path.join(VENV, "tlsrpt-reportd"), os.path.join(VENV, "tlsrpt-fetcher")),
}
UPSTREAM_FETCHER = IMPLS["upstream"][1]

TARGET_SECONDS_10K = 10.0
TARGET_RATIO = 50.0

# The upstream collector's schema (TLSRPTCollectd / VersionedSQLiteCollectdBase).
COLLECTD_DDL = [
    "CREATE TABLE finalresults(day, domain, tlsrptrecord, policy, cntrtotal, cntrfailure, "
    "its datetime default CURRENT_TIMESTAMP,PRIMARY KEY(day, domain, tlsrptrecord, policy))",
    "CREATE TABLE failures(day, domain, tlsrptrecord, policy, reason, cntr, "
    "PRIMARY KEY(day, domain, tlsrptrecord, policy, reason))",
    "CREATE TABLE daystatus(daycomplete, its datetime default CURRENT_TIMESTAMP, PRIMARY KEY(daycomplete))",
    "CREATE TABLE dbversion(version, installdate, purpose)",
    "INSERT INTO dbversion(version, installdate, purpose) "
    " VALUES(1,strftime('%Y-%m-%d %H-%M-%f','now'),'TLSRPT-Collectd-DB-devel-2024-10-28')",
]

DOMAIN_RE = re.compile(r"d\d{5,}\.bench\.example")


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def utc_yesterday():
    return (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()


def domain_name(i):
    return f"d{i:05d}.bench.example"


# ---------------------------------------------------------------- the day's data

def day_rows(n, day, seed=1):
    """finalresults and failures rows for n domains, policy and failure JSON
    spelled as the upstream collector writes them (json.dumps of the datagram's
    objects, keys in libtlsrpt's order)."""
    rng = random.Random(seed)
    final, fails = [], []
    for i in range(1, n + 1):
        dom = domain_name(i)
        record = f"v=TLSRPTv1;rua=mailto:tlsrpt@{dom}"
        for kind in rng.sample(["sts", "tlsa", "none"], 1 + (i - 1) % 3):
            if kind == "sts":
                policy = {"policy-type": 2, "policy-domain": dom,
                          "policy-string": ["version: STSv1", "mode: enforce", f"mx: mx.{dom}",
                                            "max_age: 86400"],
                          "mx-host": [f"mx.{dom}"]}
            elif kind == "tlsa":
                policy = {"policy-type": 1, "policy-domain": dom,
                          "policy-string": [f"3 1 1 {rng.getrandbits(256):064X}"]}
            else:
                policy = {"policy-type": 9}
            p = json.dumps(policy)
            total = rng.randint(1, 500)
            failed = 0
            if rng.random() < 0.3:
                failed = rng.randint(1, min(total, 20))
                code = {"sts": [301, 302, 303], "tlsa": [203, 304, 305], "none": [201, 205]}[kind]
                split = [failed] if failed == 1 or rng.random() < 0.5 else [failed // 2, failed - failed // 2]
                for j, cntr in enumerate(split):
                    reason = {"c": code[j % len(code)], "s": "192.0.2.25", "n": f"mx.{dom}",
                              "h": f"mx{j}.{dom}", "r": f"198.51.100.{j + 1}",
                              "a": "bench failure", "f": "421 4.7.0 TLS not available"}
                    if kind == "none":
                        del reason["n"], reason["h"]
                    fails.append((day, dom, record, p, json.dumps(reason), cntr))
            final.append((day, dom, record, p, total, failed))
    return final, fails


def write_collector_db(path, n, day):
    """The collector's files after midnight: PATH.yesterday with the completed
    day and an empty fresh PATH. Returns the total session count."""
    final, fails = day_rows(n, day)
    for name, rows in ((path + ".yesterday", True), (path, False)):
        if os.path.exists(name):
            os.remove(name)
        con = sqlite3.connect(name)
        for stmt in COLLECTD_DDL:
            con.execute(stmt)
        if rows:
            con.executemany("INSERT INTO finalresults (day, domain, tlsrptrecord, policy, cntrtotal, "
                            "cntrfailure) VALUES (?,?,?,?,?,?)", final)
            con.executemany("INSERT INTO failures (day, domain, tlsrptrecord, policy, reason, cntr) "
                            "VALUES (?,?,?,?,?,?)", fails)
            con.execute("INSERT INTO daystatus (daycomplete) VALUES (?)", (day,))
        con.commit()
        con.close()
    return {"sessions": sum(r[4] for r in final), "failed": sum(r[5] for r in final),
            "policies": len(final), "failure_rows": len(fails)}


def check_with_upstream_fetcher(storage_dir, n, day):
    """The upstream fetcher must list exactly our N domains for the day."""
    url = f"sqlite://{os.path.join(storage_dir, 'collectd.sqlite')}"
    r = subprocess.run([UPSTREAM_FETCHER, "--storage", url, day], capture_output=True, text=True,
                       timeout=120)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) < 4 or lines[0] != "TLSRPT FETCHER v1devel-c domain list":
        raise BenchError(f"upstream fetcher failed on the generated database (exit {r.returncode}):\n"
                         f"{r.stdout[:500]}{r.stderr[-2000:]}")
    if lines[2] != day or lines[-1] != ".":
        raise BenchError(f"upstream fetcher: day line {lines[2]!r} (want {day}), last line {lines[-1]!r}")
    listed = set(lines[3:-1])
    want = {domain_name(i) for i in range(1, n + 1)}
    if listed != want:
        raise BenchError(f"upstream fetcher lists {len(listed)} domains, expected {n} "
                         f"(missing e.g. {sorted(want - listed)[:3]}, extra {sorted(listed - want)[:3]})")


class DayCache:
    """One generated collector database per (size, day), copied into each run."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mailtls-bench-reportd-cache-")
        self.made = {}

    def get(self, n):
        day = utc_yesterday()
        key = (n, day)
        if key not in self.made:
            d = os.path.join(self.dir, f"{n}-{day}")
            os.makedirs(d)
            t = time.monotonic()
            totals = write_collector_db(os.path.join(d, "collectd.sqlite"), n, day)
            check_with_upstream_fetcher(d, n, day)
            log(f"  collector database for {n} domains, day {day}: {totals['policies']} policy rows, "
                f"{totals['failure_rows']} failure rows ({time.monotonic() - t:.1f} s incl. upstream "
                f"fetcher check)")
            self.made[key] = (d, day, totals)
        return self.made[key]

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- one run

def count_reports(outdir):
    with os.scandir(outdir) as it:
        return sum(1 for e in it if e.name.endswith(".json"))


class ReportCounter:
    """Counts the .json files in a directory that starts empty. Rescanning a
    directory of 10 000 files takes about 10 ms, half a core at a 20 ms poll
    on the machine being measured, so files are counted from inotify events
    (created or renamed in: +1, deleted or renamed away: -1); a directory
    scan is the fallback when inotify is unavailable or its queue overflows,
    and confirms the count once it reaches the goal."""

    IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
    IN_Q_OVERFLOW, IN_NONBLOCK, IN_CLOEXEC = 0x4000, 0o4000, 0o2000000

    def __init__(self, path):
        self.path, self.fd, self.count = path, None, 0
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
            if fd >= 0:
                mask = self.IN_CREATE | self.IN_MOVED_TO | self.IN_MOVED_FROM | self.IN_DELETE
                if libc.inotify_add_watch(fd, os.fsencode(path), mask) >= 0:
                    self.fd = fd
                else:
                    os.close(fd)
        except (OSError, AttributeError):
            self.fd = None
        self.count = count_reports(path)

    def poll(self):
        if self.fd is None:
            return count_reports(self.path)
        overflow = False
        while True:
            try:
                buf = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            i = 0
            while i < len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16:i + 16 + length].split(b"\0", 1)[0]
                i += 16 + length
                if mask & self.IN_Q_OVERFLOW:
                    overflow = True
                elif name.endswith(b".json"):
                    if mask & (self.IN_CREATE | self.IN_MOVED_TO):
                        self.count += 1
                    elif mask & (self.IN_DELETE | self.IN_MOVED_FROM):
                        self.count -= 1
        if overflow:
            self.close()
            return count_reports(self.path)
        return self.count

    def reached(self, goal):
        return self.poll() >= goal and count_reports(self.path) >= goal

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def log_tail(workdir, lines=40):
    out = []
    for name in ("reportd.log", "stderr.txt"):
        p = os.path.join(workdir, name)
        if os.path.exists(p):
            with open(p, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            out.append(f"--- {name} (last {len(tail)} lines)\n" + "\n".join(tail) if tail else f"--- {name} is empty")
    return "\n".join(out) or "(no log output)"


def write_config(workdir, fetchers, outdir, dbname=None):
    """The report daemon's config: `fetchers` as given, every report into
    `outdir`, its state in `dbname` (default: a SQLite file in `workdir`)."""
    mapfile = os.path.join(workdir, "tlsrpt-record.map")
    with open(mapfile, "w") as f:
        # upstream mapping.py: a domain pattern "." matches every report domain,
        # REPLACE puts the directory in place of the record's rua destinations
        f.write(f". REPLACE directory:{outdir}\n")
    cfg = os.path.join(workdir, "reportd.cfg")
    with open(cfg, "w") as f:
        f.write("[tlsrpt_reportd]\n"
                f"dbname = {(dbname or os.path.join(workdir, 'reportd.sqlite')).replace('%', '%%')}\n"
                f"fetchers = {fetchers.replace('%', '%%')}\n"
                "organization_name = mailtls benchmark\n"
                "contact_info = tlsrpt@bench.example\n"
                "sender_address = tlsrpt-noreply@bench.example\n"
                f"tlsrpt_record_map = {mapfile}\n"
                "spread_out_delivery = 1\n"
                "interval_main_loop = 1\n"
                "log_level = warn\n"
                f"logfilename = {os.path.join(workdir, 'reportd.log')}\n")
    return cfg


def verify_reports(outdir, n, day, totals):
    domains = {}
    sessions = failed = 0
    for name in sorted(os.listdir(outdir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(outdir, name)
        try:
            with open(path) as f:
                rep = json.load(f)
        except (OSError, ValueError) as e:
            raise BenchError(f"report {name} is not valid JSON: {e}")
        rid = rep.get("report-id")
        pols = rep.get("policies")
        if not rid or not isinstance(pols, list) or not pols:
            raise BenchError(f"report {name} lacks a report-id or policies: {json.dumps(rep)[:300]}")
        if rep.get("date-range", {}).get("start-datetime") != f"{day}T00:00:00Z":
            raise BenchError(f"report {name} covers {rep.get('date-range')}, expected {day}")
        # the report domain: in the upstream report-id (DAYT00:00:00Z_idxN_DOMAIN),
        # else in the file name, else the policies' policy-domain
        found = (DOMAIN_RE.findall(str(rid)) or DOMAIN_RE.findall(name)
                 or DOMAIN_RE.findall(json.dumps([p.get("policy", {}).get("policy-domain") for p in pols])))
        if not found:
            raise BenchError(f"report {name} (report-id {rid}) names no bench domain")
        domains.setdefault(found[0], []).append(name)
        for p in pols:
            s = p["summary"]
            sessions += s["total-successful-session-count"] + s["total-failure-session-count"]
            failed += s["total-failure-session-count"]
    dup = {d: v for d, v in domains.items() if len(v) > 1}
    if dup:
        d, v = next(iter(dup.items()))
        raise BenchError(f"{len(dup)} domains have more than one report, e.g. {d}: {v}")
    if len(domains) != n:
        raise BenchError(f"reports cover {len(domains)} distinct domains, expected {n}")
    if (sessions, failed) != (totals["sessions"], totals["failed"]):
        raise BenchError(f"reports count {sessions} sessions ({failed} failed), the database "
                         f"{totals['sessions']} ({totals['failed']} failed)")
    return len(domains)


def one_run(kind, n, cache, timeout):
    srcdir, day, totals = cache.get(n)
    daemon, fetcher = IMPLS[kind]
    workdir = tempfile.mkdtemp(prefix=f"mailtls-bench-reportd-{kind}-")
    ok = False
    try:
        for name in ("collectd.sqlite", "collectd.sqlite.yesterday"):
            shutil.copy(os.path.join(srcdir, name), os.path.join(workdir, name))
        outdir = os.path.join(workdir, "out")
        os.mkdir(outdir)
        storage = f"sqlite://{os.path.join(workdir, 'collectd.sqlite')}"
        cfg = write_config(workdir, f"{fetcher} --storage {storage}", outdir)
        errf = open(os.path.join(workdir, "stderr.txt"), "w")
        counter = ReportCounter(outdir)
        t0 = time.monotonic()
        proc = subprocess.Popen([daemon, "--config_file", cfg], stdout=errf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir)
        try:
            deadline = t0 + timeout
            while True:
                if counter.reached(n):
                    seconds = time.monotonic() - t0
                    break
                got = counter.count if counter.fd is not None else count_reports(outdir)
                rc = proc.poll()
                if rc is not None:
                    raise BenchError(f"{kind} reportd exited early with status {rc} after "
                                     f"{time.monotonic() - t0:.1f} s and {got} of {n} reports\n"
                                     + log_tail(workdir))
                if time.monotonic() > deadline:
                    raise BenchError(f"{kind} reportd wrote only {got} of {n} reports in {timeout:.0f} s\n"
                                     + log_tail(workdir))
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{kind} reportd did not exit within 60 s of SIGTERM\n" + log_tail(workdir))
            if rc != 0:
                raise BenchError(f"{kind} reportd exited with status {rc} after SIGTERM\n" + log_tail(workdir))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            errf.close()
            counter.close()
        covered = verify_reports(outdir, n, day, totals)
        ok = True
        return {"seconds": seconds, "reports": count_reports(outdir), "domains_covered": covered}
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"  (work directory kept for inspection: {workdir})")


# ---------------------------------------------------------------- analysis

def linear_fit(points):
    """Least squares seconds = a + b * domains; through the origin for one size."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    if len(set(xs)) < 2:
        b = sum(ys) / sum(xs)
        return 0.0, b
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def fmt_ratio(r):
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def timeout_for(kind, n, factor):
    per_domain = 0.5 if kind == "upstream" else 0.05
    return factor * (60 + per_domain * n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=10000, help="N, domains of the day (default 10000)")
    ap.add_argument("--upstream-domains", default="300,1000",
                    help="sizes at which upstream is measured and from which its time at N is "
                         "extrapolated (default 300,1000)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per implementation and size (default 3)")
    ap.add_argument("--no-upstream", action="store_true", help="measure ours only")
    ap.add_argument("--upstream-only", action="store_true",
                    help="measure upstream only (while our tlsrpt-reportd does not exist yet)")
    ap.add_argument("--timeout-factor", type=float, default=1.0,
                    help="scale the per-run time limits (60 s + 0.5 s per domain upstream, "
                         "60 s + 0.05 s per domain ours)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.no_upstream and args.upstream_only:
        ap.error("--no-upstream and --upstream-only exclude each other")
    n = args.domains
    up_sizes = sorted({int(x) for x in args.upstream_domains.split(",") if x.strip()})
    if n < 1 or any(s < 1 for s in up_sizes) or n > 99999 or any(s > 99999 for s in up_sizes):
        ap.error("domain counts must be between 1 and 99999")

    kinds = []
    if not args.upstream_only:
        for path in IMPLS["mailtls"]:
            if not os.access(path, os.X_OK):
                sys.exit(f"bench/reportd.py: {os.path.relpath(path, ROOT)} is missing: "
                         f"run cargo build --release first (bench/run reportd does)")
        kinds.append("mailtls")
    if not args.no_upstream:
        for path in IMPLS["upstream"]:
            if not os.access(path, os.X_OK):
                sys.exit(f"bench/reportd.py: {os.path.relpath(path, ROOT)} is missing: run scripts/setup-oracle")
        kinds.append("upstream")
    if not os.access(UPSTREAM_FETCHER, os.X_OK):
        sys.exit("bench/reportd.py: the upstream fetcher checks the generated database: run scripts/setup-oracle")

    # which (kind, size) to measure
    plan = []
    if "mailtls" in kinds:
        plan += [("mailtls", s) for s in sorted(set(up_sizes + [n]) if "upstream" in kinds else {n})]
    if "upstream" in kinds:
        plan += [("upstream", s) for s in up_sizes]
    log(f"{os.cpu_count()} cores; {args.reps} reps; " + ", ".join(f"{k} at {s}" for k, s in plan))

    cache = DayCache()
    res = {}
    try:
        for rep in range(args.reps):
            for size in sorted({s for _, s in plan}):
                for kind in kinds:
                    if (kind, size) not in plan:
                        continue
                    r = one_run(kind, size, cache, timeout_for(kind, size, args.timeout_factor))
                    res.setdefault((kind, size), []).append(r["seconds"])
                    log(f"  rep {rep + 1} {kind:8} {size:6} domains: {r['seconds']:8.2f} s "
                        f"({r['reports']} reports, {r['domains_covered']} domains covered)")
    except BenchError as e:
        log(f"\nFAILED: {e}")
        sys.exit(1)
    finally:
        cache.cleanup()

    median = {k: statistics.median(v) for k, v in res.items()}
    report = {"cores": os.cpu_count(), "domains": n, "upstream_domains": up_sizes, "reps": args.reps,
              "runs": {}, "median_seconds": {}}
    for (kind, size), v in sorted(res.items()):
        report["runs"].setdefault(kind, {})[str(size)] = v
        report["median_seconds"].setdefault(kind, {})[str(size)] = median[(kind, size)]

    fit = None
    if "upstream" in kinds:
        a, b = linear_fit([(s, median[("upstream", s)]) for s in up_sizes])
        fit = {"intercept_seconds": a, "seconds_per_domain": b, "extrapolated_seconds_at_n": a + b * n,
               "measured": n in up_sizes, "from_sizes": up_sizes}
        if n in up_sizes:
            fit["seconds_at_n"] = median[("upstream", n)]
        report["upstream_fit"] = fit

    print()
    print(f"A full day from the collector's database to one report file per domain "
          f"(median of {args.reps}, {os.cpu_count()} cores):")
    print()
    print(f"  {'implementation':24} {'domains':>8} {'seconds':>10} {'reports/s':>10}")
    for (kind, size) in sorted(median, key=lambda k: (k[1], k[0])):
        s = median[(kind, size)]
        print(f"  {kind:24} {size:8} {s:10.2f} {size / s:10.1f}")
    if fit and n not in up_sizes:
        e = fit["extrapolated_seconds_at_n"]
        print(f"  {'upstream (extrapolated)':24} {n:8} {e:10.1f} {n / e:10.1f}   <- NOT measured")
    if fit:
        print()
        how = (f"least squares over {', '.join(map(str, up_sizes))} domains" if len(up_sizes) > 1
               else f"proportional to the {up_sizes[0]}-domain time")
        print(f"  upstream: {fit['seconds_per_domain'] * 1000:.1f} ms per domain + "
              f"{fit['intercept_seconds']:.2f} s ({how}"
              + (")" if n in up_sizes else f"; its time at {n} domains is an extrapolation)"))
    targets = {}
    if "mailtls" in kinds:
        ours = median[("mailtls", n)]
        print()
        if n == 10000:
            ok = ours < TARGET_SECONDS_10K
            targets["under_10s_for_10000"] = ok
            print(f"  target: under {TARGET_SECONDS_10K:.0f} s for 10 000 domains: {ours:.2f} s "
                  f"{'PASS' if ok else 'MISS'}")
        else:
            print(f"  target: under {TARGET_SECONDS_10K:.0f} s for 10 000 domains: not checked "
                  f"(run with --domains 10000)")
        if fit:
            up = fit.get("seconds_at_n", fit["extrapolated_seconds_at_n"])
            ratio = up / ours
            report["ratio_upstream_over_ours"] = ratio
            report["ratio_is_extrapolated"] = n not in up_sizes
            ok = ratio >= TARGET_RATIO
            targets["at_least_50x"] = ok
            print(f"  target: at least {TARGET_RATIO:.0f}x faster than upstream at {n} domains: "
                  f"{fmt_ratio(ratio)} {'PASS' if ok else 'MISS'}"
                  + (" (upstream time extrapolated)" if n not in up_sizes else ""))
            report["like_for_like_ratio"] = {}
            for s in up_sizes:
                if ("mailtls", s) in median:
                    r = median[("upstream", s)] / median[("mailtls", s)]
                    report["like_for_like_ratio"][str(s)] = r
                    print(f"    like for like, both measured at {s} domains: {fmt_ratio(r)}")
    report["targets"] = targets
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
