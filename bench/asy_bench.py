"""Asymptote through mathrun's queue front end vs ``asy`` called directly.

    .venv/bin/python bench/asy_bench.py [-n 40]

Renders the same small SVG n times at concurrency 1, 2 and 4, both ways, in
the same run, and prints renders per second, mean time per render and the
queue's overhead per render (as a share of the direct time).  The queue runs
with as many local runners as there are CPUs, like ``twistd mathrun``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from mathrun.asy.backends import LocalBackend  # noqa: E402
from mathrun.asy.queue import AsyQueue  # noqa: E402
from mathrun.asy.queue_ws import QueueFactory  # noqa: E402
from mathrun.sandbox import Sandbox, SandboxConfig  # noqa: E402
from tests.asyclient import connect, messages  # noqa: E402

SOURCE = b'size(100); draw(unitcircle); dot((0,0)); label("$x^2$", (0.5,0.5));'


def direct(n: int, concurrency: int) -> float:
    def one(_):
        d = tempfile.mkdtemp()
        try:
            with open(os.path.join(d, "main.asy"), "wb") as f:
                f.write(SOURCE)
            os.mkdir(os.path.join(d, "out"))
            subprocess.run(
                ["asy", "-noV", "-safe", "-render", "0", "-f", "svg", "-o", "out/output", "main.asy"], cwd=d, check=True
            )
            assert os.path.exists(os.path.join(d, "out", "output.svg"))
        finally:
            shutil.rmtree(d)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - start


async def through_queue(url: str, n: int, concurrency: int) -> float:
    remaining = iter(range(n))
    digest = hashlib.sha256(SOURCE).hexdigest()

    async def worker():
        for _ in remaining:
            factory = connect(url)
            client = await factory.opened
            client.send("add", {"filename": "main.asy", "main": True, "hash": digest}, SOURCE)
            client.send("run")
            received = await factory.closed
            complete = messages(received, "complete")[0][1]
            if not complete["success"]:
                raise RuntimeError(complete)

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    return time.perf_counter() - start


async def main(reactor, args):
    cpus = os.cpu_count() or 1
    config = SandboxConfig(jobs=max(4, cpus))
    if os.geteuid() != 0:
        config.job_root = os.path.join(tempfile.mkdtemp(prefix="mathrun-bench-"), "jobs")
    sandbox = Sandbox(config, reactor)
    sandbox.start()
    queue = AsyQueue([LocalBackend(sandbox, name=f"local-{i}") for i in range(cpus)], reactor)
    port = reactor.listenTCP(0, QueueFactory(queue), interface="127.0.0.1")
    url = f"ws://127.0.0.1:{port.getHost().port}/asy"
    await through_queue(url, 2, 1)  # warm up
    print(f"{args.n} renders of a small SVG per row; {cpus} CPUs; {cpus} local runners")
    print(f"{'concurrency':>11} {'queue/s':>8} {'direct/s':>9} {'queue ms':>9} {'direct ms':>10} {'overhead':>9}")
    for concurrency in (1, 2, 4):
        q = await through_queue(url, args.n, concurrency)
        d = direct(args.n, concurrency)
        print(
            f"{concurrency:>11} {args.n / q:>8.2f} {args.n / d:>9.2f} {q / args.n * 1000:>9.1f} {d / args.n * 1000:>10.1f}"
            f" {(q - d) / d * 100:>8.1f}%"
        )
    await port.stopListening()
    await sandbox.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="renders per row")
    task.react(lambda r: defer.ensureDeferred(main(r, parser.parse_args())))
