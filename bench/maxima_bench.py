"""Maxima over HTTP vs a fresh Maxima per request, same run, same inputs.

    .venv/bin/python bench/maxima_bench.py [--seconds 5] [--concurrency 1,2,4,8,16]

Starts ``twistd mathrun`` (Maxima only, job users mathrun-1..32) on an
ephemeral port and loads it with wrk (POST, as STACK sends): sequential
latency p50/p90/p99 and requests per second at each concurrency, for three
inputs.  The baselines answer the same inputs without any server, one fresh
process per request, in the same run: Debian's ``maxima`` (GCL), and the
mother core started afresh (SBCL, no fork) — what a server without a warm
mother would pay.  goemaxima's figures on this machine kind (the anchor):
sequential p50 1.5 ms for integrate(x^2,x); about 700 requests/s at
concurrency 2 to 16.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from mathrun.maxima.config import DEFAULT_CORE  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
INPUTS = ["integrate(x^2,x);", "1+1;", "factor(x^12*y^12-1);"]
LUA = """
wrk.method = "POST"
wrk.body = "timeout=10000&ploturlbase=!ploturl!&version=1&input={input}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, ready: int) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile(prefix="maxima-bench-", suffix=".log", delete=False)
    argv = [TWISTD, "-n", "--pidfile=", f"--logfile={log.name}", "mathrun", "--no-why3", "--no-asy"]
    argv += ["--jobs", "32", "--maxima-ready", str(ready), "--http", f"tcp:{port}:interface=127.0.0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/maxima"
    body = urllib.parse.urlencode({"input": "1+1;", "timeout": "10000"}).encode()
    for _ in range(600):
        try:
            with urllib.request.urlopen(url, body, timeout=5) as r:
                if r.read().strip() == b"2":
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"the server did not answer; see {log.name}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, text: str, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.replace("{input}", urllib.parse.quote(text, safe="")))
    try:
        out = subprocess.run(
            [
                "wrk",
                "--latency",
                "-t",
                str(min(connections, 2)),
                "-c",
                str(connections),
                "-d",
                f"{seconds:g}s",
                "-s",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        result[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    result["errors"] = errors
    return result


def fresh(argv: list[str], text: str, expect: str, count: int, concurrency: int) -> dict:
    """``count`` fresh processes, ``concurrency`` at a time."""

    def one(_):
        start = time.perf_counter()
        out = subprocess.run(argv, input=text + "\n", capture_output=True, text=True).stdout
        if expect not in out.replace(" ", ""):
            raise RuntimeError(f"{argv[0]} gave {out!r}")
        return (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        times = sorted(pool.map(one, range(count)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"rps": count / elapsed, "p50": q[49], "p90": q[89], "p99": q[98], "errors": 0}


EXPECT = {"integrate(x^2,x);": "3", "1+1;": "2", "factor(x^12*y^12-1);": "y-1"}


def row(label: str, c: int, r: dict) -> None:
    print(
        f"  {label:<22} c={c:<3} {r['rps']:8.1f} req/s   p50 {r['p50']:7.2f} ms   p90 {r['p90']:7.2f} ms"
        f"   p99 {r['p99']:7.2f} ms   errors {r['errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--ready", type=int, default=3, help="--maxima-ready of the server")
    parser.add_argument("--fresh", type=int, default=40, help="fresh processes per baseline row")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (make bench installs it)")
    port = free_port()
    server = start_server(port, args.ready)
    url = f"http://127.0.0.1:{port}/maxima"
    debian = ["/usr/bin/maxima", "--very-quiet"]
    sbcl = ["sbcl", "--core", DEFAULT_CORE, "--noinform", "--end-runtime-options", "--very-quiet"]
    try:
        print(f"mathrun Maxima over HTTP (--maxima-ready {args.ready}), wrk {args.seconds:g}s per row;")
        print("baselines: one fresh process per request, no server.  goemaxima anchor: p50 1.5 ms, ~700 req/s.")
        for text in INPUTS:
            print(f"\n{text}")
            for c in levels:
                row("mathrun HTTP", c, wrk(url, text, c, args.seconds))
            for c in levels:
                row("fresh SBCL core", c, fresh(sbcl, text, EXPECT[text], args.fresh, c))
            for c in levels:
                row("fresh Debian maxima", c, fresh(debian, text, EXPECT[text], args.fresh, c))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
