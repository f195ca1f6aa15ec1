"""mathrun-why3server vs Debian's C why3server, same run, same tasks.

    .venv/bin/python bench/why3_bench.py [-n 2000] [--rounds 3] [--c-server PATH] [--also NAME=PATH]

For ``-j 1`` and ``-j 2``: n ``/bin/true`` tasks sent at once on one
connection, timed until the last ``F`` line, the two servers taking turns
(C, mathrun, C, mathrun, ...) so that both see the same load on a shared
host; prints the median over the rounds of tasks per second and of the
server's own CPU per task (its utime + stime from /proc, children excluded),
and the ratio mathrun / C.  A last row gives the floor that the sandbox sets:
the spawn server alone running ``/bin/true``, one after the other, spoken to
by hand, with no Python server around it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OURS = os.path.join(os.path.dirname(sys.executable), "mathrun-why3server")
# Where Debian's why3 package has put its C server over the releases.
DEBIAN_PLACES = (
    "/usr/lib/x86_64-linux-gnu/why3/why3server",
    "/usr/lib/why3/why3server",
    "/usr/lib/ocaml/why3/why3server",
)
TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(server: str, n: int, jobs: int) -> tuple[float, float]:
    workdir = tempfile.mkdtemp(prefix="why3-bench-")
    path = os.path.join(workdir, "s.sock")
    proc = subprocess.Popen([server, "--socket", path, "-j", str(jobs)], cwd=workdir)
    try:
        while not os.path.exists(path):
            time.sleep(0.005)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        cpu0 = server_cpu(proc.pid)
        start = time.perf_counter()
        sock.sendall(b"".join(b"run;%d;0;0;/bin/true\n" % i for i in range(n)))
        done, buffer = 0, b""
        while done < n:
            buffer += sock.recv(1 << 16)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"F;"):
                    done += 1
                    os.unlink(line.rsplit(b";", 1)[1])
        elapsed = time.perf_counter() - start
        cpu = server_cpu(proc.pid) - cpu0
        sock.close()
        return n / elapsed, cpu / n * 1000
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def spawn_floor(n: int) -> float:
    """Tasks per second of the bare spawn server, one job after the other,
    spoken to by hand (no reactor, no why3 protocol, no workspace)."""
    from mathrun.sandbox.sandbox import DEFAULT_SPAWN
    from mathrun.sandbox.spawner import FrameParser, encode

    workdir = tempfile.mkdtemp(prefix="why3-bench-spawn-")
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([DEFAULT_SPAWN, "--fd", str(theirs.fileno())], pass_fds=[theirs.fileno()])
    theirs.close()
    parser, pending = FrameParser(), []

    def answer():
        while not pending:
            data, fds, _, _ = socket.recv_fds(ours, 65536, 8)
            parser.fds_received(fds)
            pending.extend(parser.feed(data))
        return pending.pop(0)

    try:
        answer()  # ready
        start = time.perf_counter()
        for i in range(n):
            ours.sendall(encode([b"spawn", b"%d" % i, b"dir=" + workdir.encode(), b"arg=/bin/true"]))
            for fd in answer().fds:
                os.close(fd)
            answer()  # exited
        return n / (time.perf_counter() - start)
    finally:
        ours.close()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def find_c_server() -> str:
    """Debian's why3server: the known places, else the package's file list."""
    for path in DEBIAN_PLACES:
        if os.access(path, os.X_OK):
            return path
    try:
        files = subprocess.run(["dpkg", "-L", "why3"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        files = ""
    for path in files.splitlines():
        if path.endswith("/why3server") and os.access(path, os.X_OK):
            return path
    sys.exit("Debian's why3server not found: install why3, or give --c-server")


def median(values: list[float]) -> float:
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per row")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server, interleaved")
    parser.add_argument("--c-server", default=None, help="the C why3server (default: found)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="one more server in the rotation (an older build)",
    )
    args = parser.parse_args()
    servers = [("C", args.c_server or find_c_server()), ("mathrun", OURS)]
    servers += [tuple(extra.split("=", 1)) for extra in args.also]
    print(f"{args.n} /bin/true tasks per row, median of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs")
    print(f"{'-j':>3} {'server':>8} {'tasks/s':>8} {'server CPU ms/task':>19}   rounds (tasks/s)")
    for jobs in (1, 2):
        runs = {name: [] for name, _ in servers}
        for _ in range(args.rounds):
            for name, server in servers:
                runs[name].append(run(server, args.n, jobs))
        rows = {}
        for name, _ in servers:
            rates = [r[0] for r in runs[name]]
            rows[name] = (median(rates), median([r[1] for r in runs[name]]))
            every = " ".join(f"{r:.0f}" for r in rates)
            print(f"{jobs:>3} {name:>8} {rows[name][0]:>8.0f} {rows[name][1]:>19.2f}   {every}")
        for name, _ in servers[1:]:
            label = "ratio" if name == "mathrun" else f"{name}/C"[:8]
            print(f"{jobs:>3} {label:>8} {rows[name][0] / rows['C'][0]:>8.2f} {rows[name][1] / rows['C'][1]:>19.2f}")

    print(f"spawn server alone, serial: {spawn_floor(min(args.n, 1000)):.0f} tasks/s")


if __name__ == "__main__":
    main()
