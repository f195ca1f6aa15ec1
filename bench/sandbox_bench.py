"""What the sandbox costs per job: N ``/bin/true`` jobs through the sandbox at
concurrency 1 and 2, side by side with plain ``subprocess.run`` in the same
run.

    .venv/bin/python bench/sandbox_bench.py [-n 500] [--user-prefix P]

Prints jobs per second for each, the ratio, and the sandbox's overhead per job
(its mean time per job minus the baseline's).  Run as root for the real
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


async def main(reactor, args):
    config = SandboxConfig(jobs=4, user_prefix=args.user_prefix, helper_user=args.helper_user or args.user_prefix)
    if os.geteuid() != 0:
        config.job_root = os.path.join(tempfile.mkdtemp(prefix="mathrun-bench-"), "jobs")
    sandbox = Sandbox(config, reactor)
    sandbox.start()
    await through_sandbox(sandbox, 20, 1)  # warm up
    mode = "privileged (job users, tmpfs, netns, cgroups)" if sandbox.privileged else "unprivileged"
    print(f"sandbox: {mode}; {args.n} jobs of /bin/true per row; {os.cpu_count()} CPUs")
    print(f"{'concurrency':>11} {'sandbox jobs/s':>15} {'plain jobs/s':>13} {'ratio':>6} {'overhead ms/job':>16}")
    for concurrency in (1, 2):
        sb = await through_sandbox(sandbox, args.n, concurrency)
        plain = baseline(args.n, concurrency)
        overhead_ms = (sb - plain) / args.n * 1000 * concurrency
        print(f"{concurrency:>11} {args.n / sb:>15.0f} {args.n / plain:>13.0f} {plain / sb:>6.2f} {overhead_ms:>16.2f}")
    await sandbox.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="jobs per row")
    parser.add_argument("--user-prefix", default="mathrun", help="job users PREFIX-N (as root)")
    parser.add_argument("--helper-user", default=None, help="the helper user (default: the prefix)")
    task.react(lambda r: defer.ensureDeferred(main(r, parser.parse_args())))
