"""mathrun-why3server vs Debian's C why3server, same run, same tasks.

    .venv/bin/python bench/why3_bench.py [-n 2000] [--rounds 3] [--c-server PATH] [--also NAME=PATH]
        [--user-prefix P] [--base-tree DIR --base-prefix P0] [--real-runs 10] [--no-daemon]

As root (unless ``--no-daemon``) the bench starts a ``twistd mathrun`` with
the Why3 front end only, on the job users ``P-1..4``, and adds the hand-off
(``handoff``: the standalone passes its socket to that daemon, provers run
as job users) to the rotation; ``mathrun`` is the standalone serving
in-process.  ``--base-tree DIR --base-prefix P0`` adds a second daemon run
from another source tree (an export of an older commit, its ``ext/`` built)
on the job users ``P0-1..4`` (``base``: the hand-off before a change), in
the same rotation.  The real-client row: wall time of ``why3 prove -P z3`` of a
theory of 20 easy goals, C server vs hand-off vs standalone, interleaved
(the server swapped in by a private bind mount), and the client's CPU (why3
and its server; the daemon's provers not counted).

For ``-j 1`` and ``-j 2``: n ``/bin/true`` tasks sent at once on one
connection, timed until the last ``F`` line, the two servers taking turns
(C, mathrun, C, mathrun, ...) so that both see the same load on a shared
host; prints the median over the rounds of tasks per second and of the
server's own CPU per task (utime + stime from /proc of the server, its
spawn server and the keepers; the jobs excluded),
and the ratio mathrun / C.  A last row gives the floor that the sandbox sets:
the spawn server alone running ``/bin/true``, one after the other, spoken to
by hand, with no Python server around it.  For a daemon, the server CPU is
also split: the daemon's own (``twistd``), and its spawn server's and
keepers' (``spawn``).
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


def run(server: str, n: int, jobs: int, env: dict | None = None, cpu_of=None) -> tuple[float, float, float]:
    """(tasks/s, server CPU ms per task, of which the daemon's own);
    ``cpu_of``: whose CPU that is (the daemon's, for the hand-off), else
    the server process's."""
    workdir = tempfile.mkdtemp(prefix="why3-bench-")
    path = os.path.join(workdir, "s.sock")
    proc = subprocess.Popen([server, "--socket", path, "-j", str(jobs)], cwd=workdir, env=env)
    try:
        while not os.path.exists(path):
            time.sleep(0.005)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        cpu_pids = cpu_of or [proc.pid]
        cpu0, own0 = tree_cpu(cpu_pids), sum(server_cpu(pid) for pid in cpu_pids)
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
        cpu, own = tree_cpu(cpu_pids) - cpu0, sum(server_cpu(pid) for pid in cpu_pids) - own0
        sock.close()
        return n / elapsed, cpu / n * 1000, own / n * 1000
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


def tree_cpu(pids, depth: int = 2) -> float:
    """CPU seconds of these processes and of their descendants down to
    ``depth`` (a mathrun server's spawn server and its per-slot keepers,
    which fork the jobs; ended jobs are not counted)."""
    total = 0.0
    for pid in pids:
        total += server_cpu(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(child) for child in f.read().split()]
        except OSError:
            children = []
        if depth > 0:
            total += tree_cpu(children, depth - 1)
    return total


def start_daemon(prefix: str, workdir: str, tree: str | None = None):
    """A ``twistd mathrun`` with the Why3 front end only, from this source
    tree or ``tree``: (process, control socket)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=tree) if tree else None
    control = os.path.join(workdir, f"why3-control-{prefix}.sock")
    why3_socket = os.path.join(workdir, f"why3-{prefix}.sock")
    args = ["--why3-socket", why3_socket, "--why3-control", control, "--no-maxima", "--no-asy", "--no-http"]
    args += ["--jobs", "4", "--user-prefix", prefix, "--helper-user", prefix]
    log = open(os.path.join(workdir, f"twistd-{prefix}.log"), "wb")  # noqa: SIM115 - the daemon's for its life
    command = [twistd, "-n", "--pidfile=", "mathrun", *args]
    proc = subprocess.Popen(command, cwd=tree or workdir, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 30
    while not os.path.exists(control):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the daemon did not start; see {log.name}")
        time.sleep(0.05)
    return proc, control


THEORY = (
    "theory T\n  use int.Int\n"
    + "".join(f"  goal g{i}: forall x y:int. x + {i} * y = {i} * y + x\n" for i in range(20))
    + "end\n"
)


def prove(server: str | None, workdir: str, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of why3 and its server) of one ``why3 prove``."""
    command = ["why3", "prove", "-P", "z3", "-t", "5", "goals.mlw"]
    # Every row goes through the same private bind mount (the C server's row
    # binds it over its own place), so that no row pays for unshare, sh and
    # mount alone.
    mount = f'mount --bind "$0" {DEBIAN_PLACES[2]} && exec "$@"'
    command = ["unshare", "-m", "sh", "-c", mount, server or DEBIAN_PLACES[2], *command]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0 or out.count(b"Valid") != 20:
        sys.exit(f"why3 prove failed through {server or 'the C server'}: {out.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def real_client_row(runs: int, control: str | None, base_control: str | None = None) -> None:
    if not shutil.which("why3") or os.geteuid() != 0:
        print("real client: needs why3 and root (the private bind mount)")
        return
    workdir = tempfile.mkdtemp(prefix="why3-bench-prove-")
    with open(os.path.join(workdir, "goals.mlw"), "w") as f:
        f.write(THEORY)
    env = dict(os.environ, HOME=workdir, MATHRUN_WHY3_CONTROL="none")
    subprocess.run(["why3", "config", "detect"], cwd=workdir, env=env, capture_output=True, check=True)
    rotation = [("C", None, env), ("standalone", OURS, env)]
    if control:
        rotation.insert(1, ("handoff", OURS, dict(env, MATHRUN_WHY3_CONTROL=control)))
    if base_control:
        rotation.insert(2, ("base", OURS, dict(env, MATHRUN_WHY3_CONTROL=base_control)))
    times = {name: [] for name, _, _ in rotation}
    for _ in range(runs):
        for name, server, server_env in rotation:
            times[name].append(prove(server, workdir, server_env))
    print(f"real client: why3 prove -P z3, 20 easy goals, median of {runs} interleaved runs")
    c_wall = median([t[0] for t in times["C"]])
    for name, _, _ in rotation:
        wall, cpu = median([t[0] for t in times[name]]), median([t[1] for t in times[name]])
        print(f"  {name:>10}: wall {wall:.3f} s ({wall / c_wall:.2f}x C), client CPU {cpu:.3f} s")
    shutil.rmtree(workdir, ignore_errors=True)


def rotation_rows(servers, args, daemon) -> None:
    print(f"{args.n} /bin/true tasks per row, median of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs")
    print(f"{'-j':>3} {'server':>8} {'tasks/s':>8} {'server CPU ms/task':>19} {'twistd':>6} {'spawn':>6}   rounds")
    for jobs in (1, 2):
        runs = {name: [] for name, *_ in servers}
        for _ in range(args.rounds):
            for name, server, env, cpu_of in servers:
                runs[name].append(run(server, args.n, jobs, env, cpu_of))
        rows = {}
        for name, _server, _env, cpu_of in servers:
            rates = [r[0] for r in runs[name]]
            rows[name] = (median(rates), median([r[1] for r in runs[name]]))
            every = " ".join(f"{r:.0f}" for r in rates)
            if cpu_of:
                own = median([r[2] for r in runs[name]])
                split = f" {own:>6.2f} {rows[name][1] - own:>6.2f}"
            else:
                split = f" {'':>6} {'':>6}"
            print(f"{jobs:>3} {name:>8} {rows[name][0]:>8.0f} {rows[name][1]:>19.2f}{split}   {every}")
        for name, *_ in servers[1:]:
            label = f"{name}/C"[:8]
            print(f"{jobs:>3} {label:>8} {rows[name][0] / rows['C'][0]:>8.2f} {rows[name][1] / rows['C'][1]:>19.2f}")


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
    parser.add_argument("--user-prefix", default="mathrun", help="the daemon's job users PREFIX-1..4 (as root)")
    parser.add_argument("--no-daemon", action="store_true", help="no hand-off rows (no twistd started)")
    parser.add_argument("--base-tree", default=None, help="also a daemon run from this source tree: the base rows")
    parser.add_argument("--base-prefix", default=None, help="the base daemon's job users PREFIX-1..4")
    parser.add_argument("--real-runs", type=int, default=10, help="why3 prove runs per server (0: none)")
    args = parser.parse_args()
    alone = dict(os.environ, MATHRUN_WHY3_CONTROL="none")
    servers = [("C", args.c_server or find_c_server(), None, None), ("mathrun", OURS, alone, None)]
    servers += [(*extra.split("=", 1), alone, None) for extra in args.also]
    daemon, control, workdir = None, None, tempfile.mkdtemp(prefix="why3-bench-daemon-")
    if os.geteuid() == 0 and not args.no_daemon:
        daemon, control = start_daemon(args.user_prefix, workdir)
        servers.insert(1, ("handoff", OURS, dict(os.environ, MATHRUN_WHY3_CONTROL=control), [daemon.pid]))
    old, old_control = None, None
    if daemon is not None and args.base_tree:
        if not args.base_prefix:
            sys.exit("--base-tree needs --base-prefix (job users of its own)")
        old, old_control = start_daemon(args.base_prefix, workdir, os.path.abspath(args.base_tree))
        servers.insert(2, ("base", OURS, dict(os.environ, MATHRUN_WHY3_CONTROL=old_control), [old.pid]))
    try:
        rotation_rows(servers, args, daemon)
        print(f"spawn server alone, serial: {spawn_floor(min(args.n, 1000)):.0f} tasks/s")
        if args.real_runs:
            real_client_row(args.real_runs, control, old_control)
    finally:
        for proc in (daemon, old):
            if proc is not None:
                proc.terminate()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
