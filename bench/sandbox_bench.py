"""What the sandbox costs per job: N ``/bin/true`` jobs through the sandbox at
concurrency 1 and 2, side by side with plain ``subprocess.run`` in the same
run.

    .venv/bin/python bench/sandbox_bench.py [-n 500] [--user-prefix P [--helper-user H]] [--keeper both|on|off]

Prints jobs per second for each, the ratio, and the sandbox's overhead per job
(its mean time per job minus the baseline's), and CPU per job of the whole
tree (reactor, spawn server, keepers, jobs).  ``--keeper both`` (default)
interleaves the per-slot keeper (ext/spawn-keeper.c) with the old fork per
job into fresh namespaces and cgroups.  Run as root for the real
sandbox (job users, tmpfs workspace, namespaces, cgroups); unprivileged
otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from mathrun.sandbox import Sandbox, SandboxConfig, Status  # noqa: E402


def baseline(n: int, concurrency: int) -> float:
    """Seconds for n plain subprocess.run(['/bin/true']) calls."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: subprocess.run(["/bin/true"], check=True), range(n)))
    return time.perf_counter() - start


async def through_sandbox(sandbox: Sandbox, n: int, concurrency: int) -> float:
    start = time.perf_counter()
    remaining = iter(range(n))

    async def worker():
        for _ in remaining:
            result = await sandbox.run(["/bin/true"])
            if result.status is not Status.OK:
                raise RuntimeError(result.describe())

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    return time.perf_counter() - start


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, of the children it reaped, and of its live
    descendants (a keeper's jobs reach the spawn server only with it)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return 0.0
    own = sum(int(v) for v in fields[11:15]) / tick
    return own + sum(tree_cpu(c) for c in children)


def cpu_now() -> float:
    """This process's CPU (the reactor) and its descendants' (spawn server, reaper, jobs)."""
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        children = [int(c) for c in f.read().split()]
    return time.process_time() + sum(tree_cpu(c) for c in children)


async def one_row(reactor, args, keeper: bool, concurrency: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of n jobs through a fresh sandbox."""
    config = SandboxConfig(jobs=4, user_prefix=args.user_prefix, helper_user=args.helper_user or args.user_prefix)
    config.keeper = keeper
    if os.geteuid() != 0:
        config.job_root = os.path.join(tempfile.mkdtemp(prefix="mathrun-bench-"), "jobs")
    sandbox = Sandbox(config, reactor)
    sandbox.start()
    try:
        await through_sandbox(sandbox, 20, concurrency)  # warm up (and start the keepers)
        cpu = cpu_now()
        wall = await through_sandbox(sandbox, args.n, concurrency)
        return wall, cpu_now() - cpu
    finally:
        await sandbox.stop()


async def main(reactor, args):
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.keeper]
    print(f"{args.n} jobs of /bin/true per row; {os.cpu_count()} CPUs; root: {os.geteuid() == 0}; rounds {args.rounds}")
    print(f"{'conc':>4} {'keeper':>6} {'jobs/s':>7} {'plain/s':>7} {'ratio':>6} {'overhead ms':>11} {'cpu ms/job':>10}")
    rows: dict[tuple, list] = {}
    for _ in range(args.rounds):
        for concurrency in (1, 2):
            for keeper in modes:
                wall, cpu = await one_row(reactor, args, keeper, concurrency)
                plain = baseline(args.n, concurrency)
                rows.setdefault((concurrency, keeper), []).append((wall, plain, cpu))
                overhead_ms = (wall - plain) / args.n * 1000 * concurrency
                print(
                    f"{concurrency:>4} {'on' if keeper else 'off':>6} {args.n / wall:>7.0f} {args.n / plain:>7.0f}"
                    f" {plain / wall:>6.2f} {overhead_ms:>11.2f} {cpu / args.n * 1000:>10.2f}"
                )
    print("medians:")
    for (concurrency, keeper), values in sorted(rows.items()):
        walls = sorted(v[0] for v in values)
        plains = sorted(v[1] for v in values)
        cpus = sorted(v[2] for v in values)
        wall, plain, cpu = walls[len(walls) // 2], plains[len(plains) // 2], cpus[len(cpus) // 2]
        overhead_ms = (wall - plain) / args.n * 1000 * concurrency
        print(
            f"{concurrency:>4} {'on' if keeper else 'off':>6} {args.n / wall:>7.0f} {args.n / plain:>7.0f}"
            f" {plain / wall:>6.2f} {overhead_ms:>11.2f} {cpu / args.n * 1000:>10.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="jobs per row")
    parser.add_argument("--user-prefix", default="mathrun", help="job users PREFIX-1..4 (as root)")
    parser.add_argument("--helper-user", default=None, help="the kill helper user (default: the prefix)")
    parser.add_argument("--keeper", choices=("both", "on", "off"), default="both", help="per-slot keepers (root)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every row")
    task.react(lambda r: defer.ensureDeferred(main(r, parser.parse_args())))
