"""What each confinement layer of ``mathrun-jail run`` costs: a job of
``/bin/true`` run directly through the jail (no server) with the layers
added one by one, the variants interleaved round by round so that a busy
host slows them all alike.

    sudo .venv/bin/python bench/jail_bench.py [-n 300] [--user-prefix P]

Prints the median and the mean wall time per job of each variant and its
cost over the previous one.  Needs root and the job users PREFIX-1 and the
helper user PREFIX (``scripts/setup.sh --test``).
"""

from __future__ import annotations

import argparse
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mathrun.sandbox.sandbox import DEFAULT_JAIL, RUN_DIR  # noqa: E402

LAYERS = [
    ("job user, private /tmp + IPC, rlimits", []),
    ("+ PID namespace (init + /proc)", ["--pidns"]),
    ("+ seccomp filter", ["--pidns", "--seccomp"]),
]


def once(argv: list[str]) -> float:
    """Seconds for one run; the jail's report (fd 3) must say it ran."""
    r, w = os.pipe()
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, {}, file_actions=[(os.POSIX_SPAWN_DUP2, w, 3)])
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    os.close(w)
    report = os.read(r, 4096)
    os.close(r)
    if status != 0 or (b"status=" in report and not report.startswith(b"status=exited code=0")):
        raise RuntimeError(f"{argv} failed: {status} {report!r}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="jobs per variant")
    parser.add_argument("--user-prefix", default="mathrun", help="job user PREFIX-1, helper user PREFIX")
    args = parser.parse_args()
    user, helper = pwd.getpwnam(f"{args.user_prefix}-1"), pwd.getpwnam(args.user_prefix)
    tmp = tempfile.mkdtemp(prefix="mathrun-jail-bench-")
    os.chown(tmp, user.pw_uid, user.pw_gid)
    os.makedirs(RUN_DIR, exist_ok=True)
    netns = os.path.join(RUN_DIR, f"jail-bench-netns-{os.getpid()}")
    subprocess.run([DEFAULT_JAIL, "mknetns", netns], check=True)
    common = [DEFAULT_JAIL, "run", "--uid", str(user.pw_uid), "--gid", str(user.pw_gid)]
    common += ["--kill-ruid", str(helper.pw_uid), "--dir", "/", "--tmp", tmp, "--netns", netns]
    common += ["--cpu", "10", "--nofile", "256", "--nproc", "64", "--report-fd", "3"]
    variants = [common + extra + ["--", "/bin/true"] for _, extra in LAYERS]
    plain = ["/bin/true"]
    times: list[list[float]] = [[] for _ in range(len(variants) + 1)]
    try:
        for _ in range(args.n):
            times[0].append(once(plain))
            for i, argv in enumerate(variants, 1):
                times[i].append(once(argv))
    finally:
        subprocess.run(["umount", netns], check=False)
        os.unlink(netns)
        os.rmdir(tmp)
    print(f"{args.n} jobs of /bin/true per variant, interleaved; {os.cpu_count()} CPUs")
    print(f"{'variant':<40} {'median ms':>10} {'mean ms':>8} {'+median ms':>11}")
    previous = None
    for name, samples in zip(["plain posix_spawn of /bin/true"] + [n for n, _ in LAYERS], times, strict=True):
        med = statistics.median(samples) * 1000
        extra = f"{med - previous:>11.3f}" if previous is not None else f"{'':>11}"
        print(f"{name:<40} {med:>10.3f} {statistics.mean(samples) * 1000:>8.3f} {extra}")
        previous = med


if __name__ == "__main__":
    main()
