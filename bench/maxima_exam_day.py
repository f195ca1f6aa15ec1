"""Exam day: a burst of STACK-shaped Maxima requests at once.

    .venv/bin/python bench/maxima_exam_day.py [--requests 500] [--jobs 8,32]
        [--stack DIR] [--user-prefix P]

For each --jobs value a ``twistd mathrun`` (Maxima only, STACK's library
loaded with --stack) gets ``--requests`` POSTs at the same moment, each in
its own connection, as the students of a large course pressing "check" at
once.  Every answer must be 200, 416 or a 503 with Retry-After, and none may
hang (each has 120 s); the report gives the latency p50/p99 of the answered
ones, the 503 share, and the server's memory (PSS of all its processes)
before, at its peak while loaded, and after.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from maxima_bench import STACK_REQUEST, free_port, start_server  # noqa: E402
from maxima_bench import tree_pss as pss_by_command  # noqa: E402

ERRORS: collections.Counter = collections.Counter()


def one(url: str, body: bytes) -> tuple[int, float, bool]:
    """(status, seconds, has Retry-After); status 0: no answer in time."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, body, timeout=120) as r:
            r.read()
            return r.status, time.perf_counter() - start, False
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - start, e.headers.get("Retry-After") is not None
    except OSError as e:
        ERRORS[type(e).__name__ + ": " + str(getattr(e, "reason", e))] += 1
        return 0, time.perf_counter() - start, False


def burst(jobs: int, args) -> None:
    port = free_port()
    server = start_server(port, 3, args.user_prefix, args.stack, jobs=jobs)
    url = f"http://127.0.0.1:{port}/maxima"
    text = STACK_REQUEST if args.stack else "integrate(x^2,x);"
    body = urllib.parse.urlencode({"input": text, "timeout": "10000", "ploturlbase": "!ploturl!"}).encode()
    try:
        time.sleep(2)
        before = tree_pss(server.pid)
        peak, done = [before], threading.Event()

        def sample():
            while not done.wait(0.2):
                peak.append(tree_pss(server.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.requests) as pool:
            answers = list(pool.map(lambda _: one(url, body), range(args.requests)))
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        time.sleep(2)
        after = tree_pss(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    codes = collections.Counter(code for code, _, _ in answers)
    bad = [a for a in answers if a[0] not in (200, 416) and not (a[0] == 503 and a[2])]
    served = sorted(t for code, t, _ in answers if code in (200, 416))
    q = statistics.quantiles(served, n=100, method="inclusive") if len(served) > 1 else [0.0] * 99
    print(
        f"--jobs {jobs}: {args.requests} at once, drained in {elapsed:.1f} s; answers {dict(sorted(codes.items()))};"
        f" 503 share {codes.get(503, 0) / args.requests:.1%}; not 200/416/503+Retry-After: {len(bad)}"
    )
    if ERRORS:
        print(f"  no answer: {dict(ERRORS)}")
        ERRORS.clear()
    print(f"  answered: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")
    print(f"  server PSS: before {before / 1e6:.1f} MB, peak {max(peak) / 1e6:.1f} MB, after {after / 1e6:.1f} MB")


def tree_pss(pid: int) -> int:
    """The whole server's PSS in bytes (every process under ``pid``)."""
    return sum(size for size, _ in pss_by_command(pid).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--jobs", default="8,32")
    parser.add_argument("--stack", help="STACK's stack/maxima directory, loaded into the server")
    parser.add_argument("--user-prefix", default="mathrun", help="job users of the server")
    args = parser.parse_args()
    for jobs in (int(j) for j in args.jobs.split(",")):
        burst(jobs, args)


if __name__ == "__main__":
    main()
