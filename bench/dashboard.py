#!/usr/bin/env python3
"""Outbound-TLS dashboard benchmark: page times for a day of N domains.

A completed day for N recipient domains (default 100 000; the day the
report daemon benchmark generates: 1-3 policies per domain, failures for
30 % of them) is written as the collector's `.yesterday` database; `posttls
web` (release build) serves the pages with `tlsrpt_collector_db` pointing
at it. An admin signs in over HTTP, then each page is fetched REPS times:

  day (first)       /admin/tls?day=D, the first request: the whole day read
                    and summed (the web process then keeps it for a while)
  day (kept)        the same page again
  day, last page    /admin/tls?day=D&page=LAST
  day by domain     /admin/tls?day=D&sort=domain (100 000 rows sorted)
  domain            /admin/tls/DOMAIN (its chart, policies and failures)
  day JSON          /admin/tls.json?day=D (every domain)

Checks that the page's totals and the JSON's domain count equal the
generated day's.
"""

import argparse
import http.cookiejar
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reportd  # noqa: E402  (the day generator)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSTTLS = os.path.join(ROOT, "target", "release", "posttls")
PASSWORD = "bench password for the dashboard"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mailtls-dashboard-bench.")
    try:
        day = reportd.utc_yesterday()
        db = os.path.join(work, "collectd.sqlite")
        t0 = time.monotonic()
        totals = reportd.write_collector_db(db, args.domains, day)
        print(f"generated {args.domains} domains, {totals['sessions']} sessions "
              f"({totals['failed']} failed) in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        posttls_db = os.path.join(work, "posttls.sqlite")
        cfg = os.path.join(work, "posttls.cfg")
        with open(cfg, "w") as f:
            f.write("[posttls]\n")
        subprocess.run([POSTTLS, "adduser", f"--config_file={cfg}", f"--database={posttls_db}", "admin"],
                       input=PASSWORD + "\n", text=True, check=True, capture_output=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [POSTTLS, "web", f"--config_file={cfg}", f"--database={posttls_db}",
             f"--secret_key_file={os.path.join(work, 'key')}", f"--listen=127.0.0.1:{port}",
             f"--base_url={base}", "--cookie_secure=0", f"--tlsrpt_collector_db={db}",
             "--tlsrpt_reportd_db=", "--log_level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "web.log"), "w"))
        try:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            for _ in range(100):
                try:
                    login = opener.open(f"{base}/admin/login").read().decode()
                    break
                except OSError:
                    time.sleep(0.1)
            csrf = re.search(r'name="csrf" value="([^"]+)"', login).group(1)
            opener.open(f"{base}/admin/login", urllib.parse.urlencode(
                {"csrf": csrf, "name": "admin", "password": PASSWORD}).encode()).read()

            def fetch(path):
                t = time.monotonic()
                body = opener.open(base + path).read()
                return time.monotonic() - t, body

            last_page = -(-args.domains // 100)
            first_seconds, page = fetch(f"/admin/tls?day={day}")
            text = page.decode()
            shown = re.search(r'id="total-sessions">(\d+)<', text).group(1)
            assert int(shown) == totals["sessions"], (shown, totals)
            assert int(re.search(r'id="total-domains">(\d+)<', text).group(1)) == args.domains
            cases = [
                ("day (kept)", f"/admin/tls?day={day}"),
                ("day, last page", f"/admin/tls?day={day}&page={last_page}"),
                ("day by domain", f"/admin/tls?day={day}&sort=domain"),
                ("domain", f"/admin/tls/{reportd.domain_name(args.domains // 2)}"),
                ("day JSON", f"/admin/tls.json?day={day}"),
            ]
            results = [("day (first)", [first_seconds], len(page))]
            for name, path in cases:
                times = []
                for _ in range(args.reps):
                    seconds, body = fetch(path)
                    times.append(seconds)
                results.append((name, times, len(body)))
                if name == "day JSON":
                    assert body.count(b'"domain":') == args.domains
        finally:
            server.terminate()
            server.wait(timeout=10)
        print(f"\nOutbound-TLS pages, {args.domains} domains, {os.cpu_count()} CPUs "
              f"(median of {args.reps}; the first request once):\n")
        print("| page | time | size |")
        print("| --- | --- | --- |")
        for name, times, size in results:
            median = statistics.median(times)
            shown = f"{median * 1000:.0f} ms" if median < 10 else f"{median:.1f} s"
            print(f"| {name} | {shown} | {size / 1024:.0f} KiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
