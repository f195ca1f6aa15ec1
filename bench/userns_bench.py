"""What unprivileged mode's namespaces cost a job, side by side in one run.

Each round runs ``/bin/true`` once per variant, in a shuffled order:
``subprocess.run`` (the anchor), the jail with no namespace (what unprivileged
mode did before), and the jail with a user and PID namespace (and the /proc
of that namespace), then with a fresh network namespace too (what a job gets
now), then with a private /tmp as well.  Prints the median milliseconds per
job of each.

    .venv/bin/python bench/userns_bench.py [--rounds 300] [--as-user nobody]

As root, ``--as-user`` runs the jail as that user (what an unprivileged
server does); without it the jail runs as the caller.
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
JAIL = os.path.join(HERE, "..", "ext", "mathrun-jail")


def variants(workspace: str) -> dict[str, list[str]]:
    run = [JAIL, "run", "--dir", os.path.join(workspace, "work"), "--report-fd", "1"]
    ns = ["--userns", "--pidns", "--nproc", "64"]
    tmp = ["--tmp", os.path.join(workspace, "tmp")]
    return {
        "subprocess.run": [],
        "jail, no namespace": run,
        "jail + user/pid ns, /proc": run + ns,
        "  + network ns (a job now)": run + ns + ["--unshare-net"],
        "  + private /tmp": run + ns + ["--unshare-net"] + tmp,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--as-user", help="run the jail as this user (needs root)")
    args = parser.parse_args()
    demote = None
    workspace = tempfile.mkdtemp(prefix="mathrun-userns-bench-")
    for sub in ("work", "tmp"):
        os.mkdir(os.path.join(workspace, sub))
    if args.as_user:
        entry = pwd.getpwnam(args.as_user)
        for path in (workspace, *(os.path.join(workspace, s) for s in ("work", "tmp"))):
            os.chown(path, entry.pw_uid, entry.pw_gid)

        def demote():
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

    runs = variants(workspace)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        order = list(runs.items())
        random.shuffle(order)
        for name, prefix in order:
            t0 = time.perf_counter()
            proc = subprocess.run(
                prefix + (["--", "/bin/true"] if prefix else ["/bin/true"]),
                capture_output=True,
                preexec_fn=demote,
                cwd="/",
            )
            times[name].append(time.perf_counter() - t0)
            if proc.returncode != 0 or (prefix and not proc.stdout.startswith(b"status=exited code=0")):
                raise SystemExit(f"{name}: {proc.stdout!r} {proc.stderr!r}")
    anchor = statistics.median(times["subprocess.run"])
    print(f"{args.rounds} rounds, uid {args.as_user or os.getuid()}, kernel {os.uname().release}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:28s} {median * 1000:7.3f} ms  ({median / anchor:4.2f}x subprocess.run)")


if __name__ == "__main__":
    main()
