#!/usr/bin/env python3
"""The durable burst through `arkline serve`'s admin API (issue 20's budget row
"the same 1,000-execution burst through `arkline serve`'s API").

Each round starts a fresh `arkline serve` of this directory's container (one
engine, the `five` pipeline of `faults/upper` steps, no quota) on a fresh data
dir on loopback, triggers N executions from C concurrent HTTP clients (one
keep-alive connection each), waits until every one has finished, and reports:

- executions/s = N / (first trigger sent -> last execution finished, by the
  executions' own `finished` times);
- how long triggering took, and the trigger request's p50/p99 as a client sees it;
- trigger -> finished p50/p99 (the execution's `created` to its `finished`);
- how many did not end `Succeeded`.

Usage (from the repository root; builds nothing itself):

    cargo build --release -p arkline-cli
    cargo ark container --manifest-path benches/api/container.toml
    python3 benches/api/burst.py [--n 1000] [--clients 8] [--rounds 3]

Standard library only. Timings are wall-clock on this machine; compare runs
made the same way, alternating builds.
"""

import argparse
import datetime
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ENGINE = "bench"
PIPELINE = "five"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_time(text):
    # RFC 3339 with nanoseconds and `Z`; Python wants at most microseconds.
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return datetime.datetime.fromisoformat(text).timestamp()


def request(conn, method, path, body=None):
    conn.request(method, path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data) if data else None


def wait_ready(port, proc, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"arkline serve exited with {proc.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("arkline serve was not ready within 120 s")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def round_once(args):
    data_dir = tempfile.mkdtemp(prefix="arkline-api-burst-")
    port = free_port()
    log = open(os.path.join(data_dir, "serve.log"), "wb")
    proc = subprocess.Popen(
        [args.arkline, "serve", args.arkc, "--data-dir", os.path.join(data_dir, "data"),
         "--insecure-no-auth", "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )
    try:
        wait_ready(port, proc)
        base = f"/api/v1/engines/{ENGINE}"
        # Ready means deployed: wait until the pipeline resolves.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(600):
            pipelines = request(conn, "GET", f"{base}/pipelines")
            items = pipelines.get("items", pipelines) if isinstance(pipelines, dict) else pipelines
            if any((p.get("metadata") or {}).get("name") == PIPELINE for p in items):
                break
            time.sleep(0.1)
        per_client = [args.n // args.clients + (1 if i < args.n % args.clients else 0)
                      for i in range(args.clients)]
        latencies, errors = [], []
        lock = threading.Lock()
        start = threading.Barrier(args.clients + 1)

        def client(count):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine = []
            start.wait()
            for _ in range(count):
                t = time.perf_counter()
                try:
                    request(c, "POST", f"{base}/pipelines/{PIPELINE}/executions", b"{}")
                except Exception as e:  # noqa: BLE001 - reported below
                    with lock:
                        errors.append(str(e))
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                mine.append(time.perf_counter() - t)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
        for t in threads:
            t.start()
        start.wait()
        first = time.time()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        triggered = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} triggers failed, first: {errors[0]}")
        deadline = time.time() + 900
        while True:
            listed = request(conn, "GET", f"{base}/executions")
            items = listed.get("items", listed) if isinstance(listed, dict) else listed
            mine = [e for e in items if (e.get("spec") or {}).get("pipeline") == PIPELINE]
            finished = [e for e in mine if (e.get("status") or {}).get("finished")]
            if len(mine) >= args.n and len(finished) == len(mine):
                break
            if time.time() > deadline:
                raise RuntimeError(f"{len(finished)} of {len(mine)} finished after 900 s")
            time.sleep(0.5)
        ends = [parse_time(e["status"]["finished"]) for e in mine]
        spans = [parse_time(e["status"]["finished"]) - parse_time(e["metadata"]["created"])
                 for e in mine]
        failed = sum(1 for e in mine if e["status"].get("phase") != "Succeeded")
        return {
            "rate": args.n / (max(ends) - first),
            "triggered": triggered,
            "trigger_p50": pct(latencies, 0.5),
            "trigger_p99": pct(latencies, 0.99),
            "p50": pct(spans, 0.5),
            "p99": pct(spans, 0.99),
            "failed": failed,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arkline", default="target/release/arkline")
    parser.add_argument("--arkc", default="benches/api/target/ark/api-burst-0.1.0.arkc")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep each round's data dir")
    args = parser.parse_args()
    for path in (args.arkline, args.arkc):
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: build it first (see the usage at the top of {__file__})")
    results = []
    for i in range(args.rounds):
        r = round_once(args)
        results.append(r)
        print(f"round {i + 1}: {r['rate']:.0f} executions/s; triggered in {r['triggered']:.2f} s "
              f"(request p50 {r['trigger_p50'] * 1e3:.1f} ms, p99 {r['trigger_p99'] * 1e3:.1f} ms); "
              f"trigger -> finished p50 {r['p50'] * 1e3:.0f} ms, p99 {r['p99'] * 1e3:.0f} ms; "
              f"not Succeeded: {r['failed']}", flush=True)
    rates = sorted(r["rate"] for r in results)
    print(f"| `arkline serve`, {args.n} five-step executions, {args.clients} clients | "
          f"{statistics.median(rates):.0f}/s ({', '.join(f'{x:.0f}' for x in rates)}) |")


if __name__ == "__main__":
    main()
