#!/usr/bin/env python3
"""Policy server benchmark: cached socketmap answers of `mailtls policyd`
and of postfix-mta-sts-resolver 1.5.1 (the oracle in .venv), side by side.

A lab (crates/mailtls/examples/policyd_bench.rs) serves any number of
MTA-STS domains dN.bench.lab.test: signed DNS with wildcard MX, _mta-sts
and policy host records (Knot and a validating Unbound on 127.53.x.x, as
the tests' lab, but caching answers for their TTL as a production
resolver does; --uncached-dns: as the tests' lab), and one policy host on port 443 whose lab CA certificate
is made for whatever name is asked. Both servers resolve through that lab
(ours with --nameservers, the resolver in a mount namespace where the
lab's resolv.conf covers /etc/resolv.conf) and trust its CA (ours with
--sts_ca_file, the resolver through SSL_CERT_FILE).

Each server is warmed with every domain once (each answer must be
`OK secure`), then asked the same domains again for --seconds: over one
connection, over --connections at once, and pipelined (--pipeline lookups
written at a time on one connection), by a Rust load generator. The
resolver runs with cache_grace as long as the bench (its default 60 s
would send every lookup of a policy fetched more than a minute earlier
back to DNS: not a cached answer). Then ours is filled with
--memory-domains domains and its RSS read (and its cached-domain count
from its metrics, which must say all of them).

Needs root (the lab's DNS and policy host listen on port 53 and 443 of
127.53.x.x; the resolver's mount namespace), knotd, unbound, dig and
unshare (scripts/test installs them), and the release build and .venv
(bench/run policyd makes both). Goal (issue 23): ours at least 10 times
the resolver's throughput.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAILTLS = os.path.join(ROOT, "target", "release", "mailtls")
BENCH = os.path.join(ROOT, "target", "release", "examples", "policyd_bench")
RESOLVER = os.path.join(ROOT, ".venv", "bin", "mta-sts-daemon")

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, log):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} does not listen on {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def load(port, domains, connections=1, pipeline=1, seconds=None):
    cmd = [BENCH, "load", "--address", f"127.0.0.1:{port}", "--domains", str(domains),
           "--connections", str(connections), "--pipeline", str(pipeline)]
    cmd += ["--seconds", str(seconds)] if seconds else ["--once"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"load generator failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    if result["not_ok"]:
        sys.exit(f"{result['not_ok']} answers were not OK secure, the first: {result['first_not_ok']}")
    return result


def start_ours(work, lab, cache_size):
    port, metrics = free_port(), free_port()
    log = os.path.join(work, "policyd.log")
    proc = subprocess.Popen(
        [MAILTLS, "policyd", f"--listen=inet:127.0.0.1:{port}", f"--nameservers={lab['resolver']}",
         f"--sts_ca_file={lab['ca_file']}", "--allow_private_addresses=1", f"--cache_size={cache_size}",
         f"--metrics_listen=127.0.0.1:{metrics}", "--log_level=warning",
         # In memory, as the resolver's `cache: internal`: cached answers
         # never read the database anyway.
         "--database="],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    wait_listening(port, proc, "mailtls policyd", log)
    return proc, port, metrics


def start_resolver(work, lab, cache_size):
    port = free_port()
    config = os.path.join(work, "mta-sts-daemon.yml")
    with open(config, "w") as f:
        f.write(f"host: 127.0.0.1\nport: {port}\ncache_grace: 86400\n"
                f"cache:\n  type: internal\n  options:\n    cache_size: {cache_size}\n"
                "default_zone:\n  tlsrpt: true\n")
    log = os.path.join(work, "mta-sts-daemon.log")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--", "sh", "-c",
         'mount --bind "$1" /etc/resolv.conf && exec "$2" -v warn -c "$3"', "sh",
         lab["resolv_conf"], RESOLVER, config],
        env=dict(os.environ, SSL_CERT_FILE=lab["ca_file"]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    wait_listening(port, proc, "mta-sts-daemon", log)
    return proc, port


def cached_domains(metrics_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("policyd_cached_domains "):
                return int(float(line.split()[1]))
    raise AssertionError("no policyd_cached_domains")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=1000, help="domains asked of both servers")
    ap.add_argument("--connections", type=int, default=32, help="connections at once in the 'many' case")
    ap.add_argument("--pipeline", type=int, default=32, help="lookups written at a time in the pipelined case")
    ap.add_argument("--seconds", type=int, default=5, help="length of each timed run")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per case (the median is shown)")
    ap.add_argument("--memory-domains", type=int, default=100000, help="domains cached for ours' RSS (0: skip)")
    ap.add_argument("--uncached-dns", action="store_true",
                    help="the lab resolver caches nothing (every DNS question goes to the zone's server)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run policyd needs root: the lab listens on port 53 and 443 of 127.53.x.x")
    for path, how in [(MAILTLS, "cargo build --release"), (BENCH, "cargo build --release --example policyd_bench -p mailtls"),
                      (RESOLVER, "scripts/setup-oracle")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run {how} (bench/run policyd does)")
    began = time.perf_counter()
    work = tempfile.mkdtemp(prefix="policyd-bench-")
    lab_proc = subprocess.Popen([BENCH, "lab"] + (["--uncached-dns"] if args.uncached_dns else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lab = json.loads(lab_proc.stdout.readline())
    procs = [lab_proc]
    cases = [("one connection", 1, 1), (f"{args.connections} connections", args.connections, 1),
             (f"one connection, {args.pipeline} pipelined", 1, args.pipeline)]
    results = {"domains": args.domains, "seconds": args.seconds, "reps": args.reps,
               "dns_cache": not args.uncached_dns, "servers": {}}
    try:
        ours, ours_port, metrics = start_ours(work, lab, max(args.memory_domains, args.domains) + 1000)
        theirs, theirs_port = start_resolver(work, lab, args.domains + 1000)
        procs += [ours, theirs]
        for name, proc, port in [("mailtls", ours, ours_port), ("resolver", theirs, theirs_port)]:
            warm = load(port, args.domains, connections=16)
            print(f"{name}: {args.domains} domains fetched and cached in {warm['seconds']:.1f} s")
            server = results["servers"][name] = {"warm_seconds": warm["seconds"], "cases": {}}
            for label, connections, pipeline in cases:
                runs = [load(port, args.domains, connections, pipeline, args.seconds) for _ in range(args.reps)]
                runs.sort(key=lambda r: r["per_second"])
                median = runs[len(runs) // 2]
                server["cases"][label] = {"runs": runs, "per_second": median["per_second"],
                                          "p99_us": median["p99_us"], "p50_us": median["p50_us"]}
                print(f"  {label:32} {median['per_second']:10.0f} answers/s  p50 {median['p50_us']:6d} us"
                      f"  p99 {median['p99_us']:6d} us")
            server["rss_kib"] = rss_kib(proc.pid)
        print()
        print(f"cached answers, {args.domains} domains, median of {args.reps} runs of {args.seconds} s:")
        print(f"| case | mailtls answers/s | p99 | resolver answers/s | p99 | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, _, _ in cases:
            o, t = results["servers"]["mailtls"]["cases"][label], results["servers"]["resolver"]["cases"][label]
            ratio = o["per_second"] / t["per_second"]
            print(f"| {label} | {o['per_second']:.0f} | {o['p99_us'] / 1000:.2f} ms | {t['per_second']:.0f} "
                  f"| {t['p99_us'] / 1000:.2f} ms | {ratio:.1f}x {'PASS' if ratio >= 10 else 'MISS'} |")
        print(f"RSS with {args.domains} domains cached: mailtls {results['servers']['mailtls']['rss_kib'] / 1024:.1f} MiB,"
              f" resolver {results['servers']['resolver']['rss_kib'] / 1024:.1f} MiB")
        if args.memory_domains:
            theirs.terminate()
            warm = load(ours_port, args.memory_domains, connections=64)
            cached = cached_domains(metrics)
            if cached < args.memory_domains:
                sys.exit(f"ours holds {cached} domains, not {args.memory_domains}")
            rss = rss_kib(ours.pid)
            results["memory"] = {"domains": args.memory_domains, "fill_seconds": warm["seconds"],
                                 "cached_domains": cached, "rss_kib": rss}
            print(f"mailtls with {cached} domains cached (filled in {warm['seconds']:.0f} s): RSS {rss / 1024:.1f} MiB")
    finally:
        for proc in procs[1:]:
            proc.terminate()
            proc.wait()
        lab_proc.stdin.close()
        lab_proc.wait()
    results["total_seconds"] = time.perf_counter() - began
    print(f"bench took {results['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
