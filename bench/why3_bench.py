"""mathrun-why3server vs Debian's C why3server, same run, same tasks.

    .venv/bin/python bench/why3_bench.py [-n 2000]

For ``-j 1`` and ``-j 2``: n ``/bin/true`` tasks sent at once on one
connection, timed until the last ``F`` line; prints tasks per second, the
server's own CPU per task (its utime + stime from /proc, children excluded),
and the ratio mathrun / C.  A last row gives the floor that the sandbox sets:
the jail helper alone running ``/bin/true``, one after the other, with no
server at all (two execs per task where the C server has one).
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
DEBIAN = "/usr/lib/ocaml/why3/why3server"
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


def jail_floor(n: int) -> float:
    """Tasks per second of the bare jail helper, started and reaped serially."""
    from mathrun.sandbox.sandbox import DEFAULT_JAIL

    workdir = tempfile.mkdtemp(prefix="why3-bench-jail-")
    argv = [DEFAULT_JAIL, "run", "--dir", workdir, "--", "/bin/true"]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        start = time.perf_counter()
        for _ in range(n):
            pid = os.posix_spawn(DEFAULT_JAIL, argv, {}, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 3)])
            os.waitpid(pid, 0)
        return n / (time.perf_counter() - start)
    finally:
        os.close(devnull)
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per row")
    args = parser.parse_args()
    print(f"{args.n} /bin/true tasks per row; {os.cpu_count()} CPUs")
    print(f"{'-j':>3} {'server':>8} {'tasks/s':>8} {'server CPU ms/task':>19}")
    for jobs in (1, 2):
        rows = {}
        for name, server in (("C", DEBIAN), ("mathrun", OURS)):
            rows[name] = run(server, args.n, jobs)
            print(f"{jobs:>3} {name:>8} {rows[name][0]:>8.0f} {rows[name][1]:>19.2f}")
        print(
            f"{jobs:>3} {'ratio':>8} {rows['mathrun'][0] / rows['C'][0]:>8.2f} {rows['mathrun'][1] / rows['C'][1]:>19.2f}"
        )

    print(f"jail helper alone, serial: {jail_floor(min(args.n, 500)):.0f} tasks/s")


if __name__ == "__main__":
    main()
