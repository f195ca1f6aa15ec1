"""Asymptote through mathrun's queue front end vs ``asy`` called directly,
and a render from the queue's render cache vs a real one.

    .venv/bin/python bench/asy_bench.py [-n 40] [--user-prefix PREFIX] [--cache-only]

Renders the same small SVG n times at concurrency 1, 2 and 4, both ways, in
the same run, and prints renders per second, mean time per render and the
queue's overhead per render (as a share of the direct time); these rows run
with the render cache off.  The queue runs with as many local runners as
there are CPUs, like ``twistd mathrun``.

The cache row: n pairs, interleaved, of a real render (a source never seen,
so asy runs) and a cached one (the same request again: answered from the
render cache), both through the queue over WebSocket; mean and median wall
time of each, their ratio, and CPU per render (this process, which is the
client and the server, plus the asy jobs' own CPU as the sandbox measured it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from mathrun.asy.backends import LocalBackend  # noqa: E402
from mathrun.asy.queue import AsyQueue, QueueConfig  # noqa: E402
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


async def render(url: str, source: bytes, check: bool = True) -> dict:
    """One render through the queue: its ``complete`` message."""
    factory = connect(url)
    client = await factory.opened
    client.send("add", {"filename": "main.asy", "main": True, "hash": hashlib.sha256(source).hexdigest()}, source)
    client.send("run")
    received = await factory.closed
    complete = messages(received, "complete")[0][1]
    if check and (not complete["success"] or not messages(received, "result")):
        raise RuntimeError(complete)
    return complete


async def through_queue(url: str, n: int, concurrency: int) -> tuple[float, int]:
    """Seconds for n renders, and how many failed (a default task downgraded
    to the fast class when the queue forms may end at its 3 s limit on a
    loaded host)."""
    remaining = iter(range(n))
    failed = []

    async def worker():
        for _ in remaining:
            complete = await render(url, SOURCE, check=False)
            if not complete["success"]:
                failed.append(complete.get("error"))

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    return time.perf_counter() - start, len(failed)


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def cached_vs_real(url: str, n: int, job_cpu: list) -> None:
    """n real renders and n cached ones, interleaved; one row each and the ratio."""
    await render(url, SOURCE)  # in the cache from here on
    wall = {"real": [], "cached": []}
    cpu = {"real": 0.0, "cached": 0.0}
    for i in range(n):
        for kind, source in (("real", SOURCE + f"\n// {i} {time.time_ns()}".encode()), ("cached", SOURCE)):
            cpu0, jobs0, start = own_cpu(), job_cpu[0], time.perf_counter()
            complete = await render(url, source)
            wall[kind].append(time.perf_counter() - start)
            cpu[kind] += own_cpu() - cpu0 + job_cpu[0] - jobs0
            if complete.get("cached", False) != (kind == "cached"):
                raise RuntimeError(f"a {kind} render answered {complete}")
    print(f"\nrender cache: {n} real and {n} cached renders of the same small SVG, interleaved, one at a time")
    print(f"{'':>7} {'mean ms':>8} {'p50 ms':>7} {'CPU ms/render':>14}")
    for kind in ("real", "cached"):
        ms = [w * 1000 for w in wall[kind]]
        print(f"{kind:>7} {statistics.mean(ms):>8.2f} {statistics.median(ms):>7.2f} {cpu[kind] / n * 1000:>14.2f}")
    ratio = statistics.mean(wall["real"]) / statistics.mean(wall["cached"])
    p50 = statistics.median(wall["real"]) / statistics.median(wall["cached"])
    print(f"cached is {ratio:.0f}x faster (mean), {p50:.0f}x (median); CPU {cpu['real'] / cpu['cached']:.0f}x less")


async def main(reactor, args):
    cpus = os.cpu_count() or 1
    config = SandboxConfig(jobs=max(4, cpus), user_prefix=args.user_prefix, helper_user=args.user_prefix)
    if os.geteuid() != 0:
        config.job_root = os.path.join(tempfile.mkdtemp(prefix="mathrun-bench-"), "jobs")
    sandbox = Sandbox(config, reactor)
    job_cpu = [0.0]
    sandbox.observers.append(
        lambda result, frontend="jobs": job_cpu.__setitem__(0, job_cpu[0] + result.user_cpu + result.system_cpu)
    )
    sandbox.start()
    backends = [LocalBackend(sandbox, name=f"local-{i}") for i in range(cpus)]
    queues = {
        "uncached": AsyQueue(backends, reactor, QueueConfig(render_cache_entries=0)),
        "cached": AsyQueue(backends, reactor),
    }
    ports = {name: reactor.listenTCP(0, QueueFactory(q), interface="127.0.0.1") for name, q in queues.items()}
    urls = {name: f"ws://127.0.0.1:{port.getHost().port}/asy" for name, port in ports.items()}
    await through_queue(urls["uncached"], 2, 1)  # warm up
    if not args.cache_only:
        print(f"{args.n} renders of a small SVG per row; {cpus} CPUs; {cpus} local runners; render cache off")
        print(
            f"{'concurrency':>11} {'queue/s':>8} {'direct/s':>9} {'queue ms':>9} {'direct ms':>10} {'overhead':>9}"
            f" {'failed':>7}"
        )
        for concurrency in (1, 2, 4):
            q, failed = await through_queue(urls["uncached"], args.n, concurrency)
            d = direct(args.n, concurrency)
            print(
                f"{concurrency:>11} {args.n / q:>8.2f} {args.n / d:>9.2f} {q / args.n * 1000:>9.1f}"
                f" {d / args.n * 1000:>10.1f} {(q - d) / d * 100:>8.1f}% {failed:>7}"
            )
    await cached_vs_real(urls["cached"], args.n, job_cpu)
    for port in ports.values():
        await port.stopListening()
    await sandbox.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="renders per row")
    parser.add_argument("--user-prefix", default="mathrun", help="the sandbox's job users PREFIX-N and helper PREFIX")
    parser.add_argument("--cache-only", action="store_true", help="only the render cache's row")
    task.react(lambda r: defer.ensureDeferred(main(r, parser.parse_args())))
