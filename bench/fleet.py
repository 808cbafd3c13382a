#!/usr/bin/env python3
"""Fleet benchmark: collectors of several MTAs writing into one PostgreSQL.

A private PostgreSQL cluster (Debian's server, default durability settings:
fsync and synchronous_commit on) is started in a temporary directory. Then,
for each store kind, N collectors (default 4, release build) each receive
paced non-blocking load from `mailtls loadgen` at RATE/N datagrams per
second (default 10 000/s in total) for S seconds, all at the same time:

  postgresql  every collector counts into the one database, under its own
              collector_name
  sqlite      every collector counts into a SQLite file of its own (what a
              fleet without PostgreSQL runs)

For each it prints the datagrams sent and accepted by the kernel, the
sessions counted in the stores after the collectors stopped, the loss
(accepted but not counted: must be 0), and the commit latency from the
collectors' tlsrpt_collectd_commit_duration_seconds histograms (mean, and
the bucket bound under which 99 % of the commits fell).

Then a day of D domains (default 100 000; the report daemon benchmark's
day) is loaded into PostgreSQL under one collector and into a SQLite
`.yesterday` file, and `tlsrpt-fetcher --bulk` (the report daemon's one
fetch of a whole day) is timed from each.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reportd  # noqa: E402  (the day generator)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
PASSWORD = "bench password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private PostgreSQL cluster, as the tests start one."""

    def __init__(self):
        versions = sorted(int(v) for v in os.listdir("/usr/lib/postgresql") if v.isdigit())
        self.bin = f"/usr/lib/postgresql/{versions[-1]}/bin"
        self.dir = tempfile.mkdtemp(prefix="mailtls-fleet-pg.")
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD)
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self.run("initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8", "--no-locale",
                 "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
        self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        self.psql("postgres", "CREATE DATABASE tlsrpt")

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def run(self, program, *args):
        kwargs = {"user": "postgres"} if self.as_postgres else {}
        return subprocess.run([os.path.join(self.bin, program), *args], check=True,
                              capture_output=True, text=True, cwd=self.dir, **kwargs).stdout

    def psql(self, db, sql):
        return self.run("psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", db,
                        "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql).strip()

    def url(self, db="tlsrpt"):
        return f"postgresql://postgres:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{self.port}/{db}"

    def cpu_seconds(self):
        """CPU time the server has used so far: the postmaster, its live
        children, and the children it has reaped (backends of closed
        connections)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            master = int(f.readline())
        ticks = os.sysconf("SC_CLK_TCK")

        def stat(pid):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[1]), [int(x) for x in fields[11:15]]

        total = sum(stat(master)[1])
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != master:
                try:
                    ppid, times = stat(pid)
                except (FileNotFoundError, ProcessLookupError, IndexError):
                    continue
                if ppid == master:
                    total += times[0] + times[1]
        return total / ticks

    def stop(self):
        try:
            self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def scrape(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def commit_latency(texts):
    """Mean and 99th-percentile bucket bound over several expositions."""
    total_sum, total_count, buckets = 0.0, 0, {}
    for text in texts:
        for line in text.splitlines():
            m = re.match(r'tlsrpt_collectd_commit_duration_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
            if m:
                buckets[m.group(1)] = buckets.get(m.group(1), 0) + int(m.group(2))
            elif line.startswith("tlsrpt_collectd_commit_duration_seconds_sum "):
                total_sum += float(line.split()[1])
            elif line.startswith("tlsrpt_collectd_commit_duration_seconds_count "):
                total_count += int(line.split()[1])
    p99 = None
    for bound, n in sorted(((float("inf") if b == "+Inf" else float(b), n) for b, n in buckets.items())):
        if total_count and n >= 0.99 * total_count:
            p99 = bound
            break
    return (total_sum / total_count if total_count else None), p99, total_count


def run_fleet(kind, cluster, collectors, rate, seconds, work):
    procs, sockets, ports, dbs = [], [], [], []
    for i in range(collectors):
        d = os.path.join(work, f"{kind}-mx{i}")
        os.makedirs(d)
        sock, port = os.path.join(d, "s"), free_port()
        if kind == "postgresql":
            storage = cluster.url()
        else:
            dbs.append(os.path.join(d, "c.sqlite"))
            storage = f"sqlite://{dbs[-1]}"
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "tlsrpt-collectd"), f"--storage={storage}", f"--socketname={sock}",
             f"--collector_name=mx{i}", f"--metrics_listen=127.0.0.1:{port}", "--log_level=error",
             f"--logfilename={os.path.join(d, 'log')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d))
        sockets.append(sock)
        ports.append(port)
    for sock in sockets:
        deadline = time.time() + 20
        while not os.path.exists(sock):
            assert time.time() < deadline, f"{sock} did not appear"
            time.sleep(0.02)
    results = [None] * collectors
    cpu_before = cluster.cpu_seconds()

    def load(i):
        out = subprocess.run(
            [os.path.join(BIN, "mailtls"), "loadgen", "--socket", sockets[i], "--count",
             str(rate // collectors * seconds), "--rate", str(rate // collectors), "--seed", str(i + 1),
             "--domains", "5000", "--json"], check=True, capture_output=True).stdout
        results[i] = json.loads(out)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(collectors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)
    texts = [scrape(port) for port in ports]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)
    server_cpu = cluster.cpu_seconds() - cpu_before
    if kind == "postgresql":
        counted = int(cluster.psql("tlsrpt", "SELECT coalesce(sum(total), 0) FROM tlsrpt_results"))
        cluster.psql("tlsrpt", "TRUNCATE tlsrpt_results, tlsrpt_failures, tlsrpt_batches")
    else:
        counted = 0
        for db in dbs:
            con = sqlite3.connect(db)
            counted += con.execute("SELECT coalesce(sum(cntrtotal), 0) FROM finalresults").fetchone()[0]
            con.close()
    sent = sum(r["attempted"] for r in results)
    accepted = sum(r["accepted"] for r in results)
    mean, p99, commits = commit_latency(texts)
    return {"kind": kind, "sent": sent, "accepted": accepted, "counted": counted,
            "lost": accepted - counted, "commits": commits, "mean_commit": mean, "p99_commit": p99,
            "server_cpu": server_cpu if kind == "postgresql" else None}


def time_bulk(storage, day, reps):
    times = []
    for _ in range(reps):
        t = time.monotonic()
        out = subprocess.run([os.path.join(BIN, "tlsrpt-fetcher"), f"--storage={storage}",
                              "--day_end_grace=0", day, "--bulk"] if storage.startswith("postgresql")
                             else [os.path.join(BIN, "tlsrpt-fetcher"), f"--storage={storage}", day, "--bulk"],
                             check=True, capture_output=True).stdout
        times.append(time.monotonic() - t)
    return min(times), out.count(b"\n") - 4


def time_reportd(fetchers, work, name, n, day, totals, dbname=None):
    """Our report daemon from its start until the day's N reports are in a
    directory, fed by `fetchers`, its state in `dbname` (default: SQLite);
    the reports checked against the day."""
    workdir = os.path.join(work, f"reportd-{name}")
    outdir = os.path.join(workdir, "out")
    os.makedirs(outdir)
    cfg = reportd.write_config(workdir, fetchers, outdir, dbname)
    counter = reportd.ReportCounter(outdir)
    t0 = time.monotonic()
    proc = subprocess.Popen([os.path.join(BIN, "tlsrpt-reportd"), "--config_file", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        while not counter.reached(n):
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError(f"reportd ({name}) stopped or took too long\n" + reportd.log_tail(workdir))
            time.sleep(0.02)
        seconds = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        counter.close()
    reportd.verify_reports(outdir, n, day, totals)
    # 100 000 report files a run: removed now, not all at the end.
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


def load_day_into_postgresql(cluster, n, day):
    final, fails = reportd.day_rows(n, day)
    path = os.path.join(cluster.dir, "rows")
    with open(path + ".results", "w") as f:
        for (d, dom, rec, pol, total, failed) in final:
            f.write("\t".join([d, dom, rec, pol.replace("\\", "\\\\"), "mx0", str(total), str(failed)]) + "\n")
    with open(path + ".failures", "w") as f:
        for (d, dom, rec, pol, reason, cntr) in fails:
            f.write("\t".join([d, dom, rec, pol.replace("\\", "\\\\"), reason.replace("\\", "\\\\"), "mx0", str(cntr)]) + "\n")
    if cluster.as_postgres:
        for suffix in (".results", ".failures"):
            shutil.chown(path + suffix, "postgres", "postgres")
    cluster.psql("tlsrpt", f"COPY tlsrpt_results (day, domain, record, policy, collector, total, failed) FROM '{path}.results'")
    cluster.psql("tlsrpt", f"COPY tlsrpt_failures (day, domain, record, policy, reason, collector, count) FROM '{path}.failures'")
    cluster.psql("tlsrpt", f"INSERT INTO tlsrpt_day_ends (collector, day) VALUES ('mx0', '{day}')")
    # Settle the server before anything is timed: a checkpoint writing
    # out the loaded day on the same disk slows the report daemon's own
    # writes several times over.
    cluster.psql("tlsrpt", "VACUUM ANALYZE")
    cluster.psql("tlsrpt", "CHECKPOINT")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collectors", type=int, default=4)
    ap.add_argument("--rate", type=int, default=10_000, help="datagrams per second, all collectors together")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reportd-reps", type=int, default=3)
    args = ap.parse_args()
    cluster = Cluster()
    work = tempfile.mkdtemp(prefix="mailtls-fleet.")
    try:
        rows = [run_fleet(kind, cluster, args.collectors, args.rate, args.seconds, work)
                for kind in ("postgresql", "sqlite")]
        print(f"\n{args.collectors} collectors, {args.rate} datagrams/s in total for {args.seconds} s, "
              f"{os.cpu_count()} CPUs, kernel queue {open('/proc/sys/net/unix/max_dgram_qlen').read().strip()}:\n")
        print("| store | sent | accepted by the kernel | counted | accepted, not counted | commits | mean commit | 99 % of commits under |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            mean = f"{r['mean_commit'] * 1000:.1f} ms" if r["mean_commit"] is not None else "-"
            p99 = f"{r['p99_commit'] * 1000:.0f} ms" if r["p99_commit"] is not None else "-"
            print(f"| {r['kind']} | {r['sent']} | {r['accepted']} | {r['counted']} | {r['lost']} | "
                  f"{r['commits']} | {mean} | {p99} |")
        pg = rows[0]
        per_core = pg["counted"] / pg["server_cpu"] if pg["server_cpu"] else float("inf")
        print(f"\nPostgreSQL server CPU for the run: {pg['server_cpu']:.1f} s for {pg['counted']} datagrams "
              f"in {pg['commits']} commits: one server core takes about {per_core:,.0f} datagrams/s "
              f"at this commit size ({pg['counted'] / max(1, pg['commits']):,.0f} datagrams a commit)")
        day = reportd.utc_yesterday()
        t = time.monotonic()
        load_day_into_postgresql(cluster, args.domains, day)
        print(f"\nloaded {args.domains} domains into PostgreSQL in {time.monotonic() - t:.1f} s", file=sys.stderr)
        sqlite_db = os.path.join(work, "collectd.sqlite")
        totals = reportd.write_collector_db(sqlite_db, args.domains, day)
        pg_time, pg_domains = time_bulk(cluster.url(), day, args.reps)
        sq_time, sq_domains = time_bulk(f"sqlite://{sqlite_db}", day, args.reps)
        assert pg_domains == sq_domains == args.domains, (pg_domains, sq_domains)
        print(f"\ntlsrpt-fetcher --bulk, a day of {args.domains} domains (best of {args.reps}):\n")
        print("| store | time |")
        print("| --- | --- |")
        print(f"| postgresql | {pg_time:.2f} s |")
        print(f"| sqlite | {sq_time:.2f} s |")
        fetcher = os.path.join(BIN, "tlsrpt-fetcher")
        # (collector data, report daemon state, fetchers, state in PostgreSQL)
        runs = [
            ("SQLite, through tlsrpt-fetcher", "SQLite", f"{fetcher} --storage sqlite://{sqlite_db}", False),
            ("PostgreSQL, read in-process", "SQLite", f"{cluster.url()} --day_end_grace 0", False),
            ("PostgreSQL, through tlsrpt-fetcher", "SQLite",
             f"{fetcher} --storage {cluster.url()} --day_end_grace 0", False),
            ("PostgreSQL, read in-process", "PostgreSQL", f"{cluster.url()} --day_end_grace 0", True),
        ]
        # Interleaved rounds: this machine's disk and host vary from one
        # minute to the next, and every kind should see the same weather.
        times = {run[:2]: [] for run in runs}
        for round_ in range(args.reportd_reps):
            for i, (data, state, fetchers, in_pg) in enumerate(runs):
                name = (data, state)
                dbname = None
                if in_pg:
                    # A fresh database each run, as a first start has.
                    db = f"reportd_{round_}"
                    cluster.psql("postgres", f"CREATE DATABASE {db}")
                    dbname = cluster.url(db)
                seconds = time_reportd(fetchers, work, f"{round_}-{i}", args.domains, day, totals, dbname)
                times[name].append(seconds)
                log_line = f"  reportd round {round_ + 1}, {data} data, {state} state: {seconds:.1f} s"
                print(log_line, file=sys.stderr, flush=True)
        print(f"\nour tlsrpt-reportd, a day of {args.domains} domains into a directory "
              f"(median of {args.reportd_reps} interleaved runs, fastest and slowest):\n")
        print("| collector data | report daemon state | median | fastest | slowest |")
        print("| --- | --- | --- | --- | --- |")
        for name in times:
            t = sorted(times[name])
            print(f"| {name[0]} | {name[1]} | {t[len(t) // 2]:.1f} s | {t[0]:.1f} s | {t[-1]:.1f} s |")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
