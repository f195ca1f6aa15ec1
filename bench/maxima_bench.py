"""Maxima over HTTP vs goemaxima and a fresh Maxima per request, same run.

    .venv/bin/python bench/maxima_bench.py [--seconds 5] [--concurrency 1,2,4,8,16]
        [--stack DIR] [--goemaxima ANCHOR_DIR] [--user-prefix P] [--no-fresh]

With --goemaxima (the folder of shared/anchors/goemaxima, built by its
build.sh), goemaxima itself runs on another port and every row is measured
for both servers, one after the other, with the ratio; with --stack DIR
(STACK's stack/maxima, the revision goemaxima's image carries), mathrun loads
it through --maxima-stack, a STACK answer-test request (built as STACK's
cassession2 builds one) joins the inputs, and the whole servers' memory (PSS
of every process) is reported idle and under load.

Starts ``twistd mathrun`` (Maxima only, job users mathrun-1..32) on an
ephemeral port and loads it with wrk (POST, as STACK sends): sequential
latency p50/p90/p99 and requests per second at each concurrency, for three
inputs.  The baselines answer the same inputs without any server, one fresh
process per request, in the same run: Debian's ``maxima`` (GCL), and the
mother core started afresh (SBCL, no fork) — what a server without a warm
mother would pay.  goemaxima's figures on this machine kind (the anchor):
sequential p50 1.5 ms for integrate(x^2,x); about 700 requests/s at
concurrency 2 to 16.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from mathrun.maxima.config import DEFAULT_CORE  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
INPUTS = ["integrate(x^2,x);", "1+1;", "factor(x^12*y^12-1);"]
# An answer test the way STACK's cassession2 wraps one (its options left out).
STACK_REQUEST = (
    'block([stack_seed],\n  stack_randseed(86),\n  stack_seed:86,\n  _RESPONSE:["stack_map"],\n'
    '  _VALUES:["stack_map"],\n  _CS2v("__stackmaximaversion",stackmaximaversion),\n  %stmt:"s0",\n'
    '  _EC(errcatch(__s0:ATAlgEquiv(x^2+2*x+1,(x+1)^2)),""),\n  _CS2v("__s0",__s0),\n  _CS2out()\n)$'
)
LUA = """
wrk.method = "POST"
wrk.body = "timeout=10000&ploturlbase=!ploturl!&version={version}&input={input}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CpuGroup:
    """A cpuacct cgroup (v1) that one server's whole process tree runs in:
    its CPU time, children that have exited included, per row; and the
    long-lived processes' own share from /proc/PID/stat."""

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __init__(self, name: str, long_lived_depth: int):
        self.path = os.path.join(self.ROOT, f"mathrun-bench-{name}")
        self.depth = long_lived_depth  # processes down to this depth of the tree are the server's own
        os.makedirs(self.path, exist_ok=True)

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.ROOT, os.W_OK)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside the group (so is everything it starts)."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def usage(self) -> int:
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read())

    def close(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def process_tree(root: int) -> dict[int, tuple[str, int, int]]:
    """pid -> (comm, depth below ``root``, utime+stime in clock ticks)."""
    stats: dict[int, tuple[int, str, int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        stats[int(name)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _c, _t) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {}, [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        if pid in stats:
            tree[pid] = (stats[pid][1], depth, stats[pid][2])
            todo += [(c, depth + 1) for c in children.get(pid, [])]
    return tree


def cpu_split(group: CpuGroup, root: int, before: tuple[int, dict], after: tuple[int, dict], requests: int) -> str:
    """CPU ms per request: the whole server, each long-lived process, the rest (children)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = (after[0] - before[0]) / 1e6 / max(requests, 1)
    parts: dict[str, float] = {}
    for pid, (comm, depth, ticks) in after[1].items():
        if depth <= group.depth and pid in before[1]:
            key = f"{comm}@{depth}"
            parts[key] = parts.get(key, 0.0) + (ticks - before[1][pid][2]) * 1000 / hz / max(requests, 1)
    rest = total - sum(parts.values())
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: kv[0].split("@")[1]))
    return f"cpu/request {total:.2f} ms = {shown}, children {rest:.2f}"


def start_server(
    port: int, ready: int, prefix: str, stack: str | None, jobs: int = 32, group: CpuGroup | None = None
) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile(prefix="maxima-bench-", suffix=".log", delete=False)
    argv = [TWISTD, "-n", "--pidfile=", f"--logfile={log.name}", "mathrun", "--no-why3", "--no-asy"]
    argv += ["--jobs", str(jobs), "--maxima-ready", str(ready), "--http", f"tcp:{port}:interface=127.0.0.1"]
    argv += ["--user-prefix", prefix, "--helper-user", prefix] + (["--maxima-stack", stack] if stack else [])
    if group is not None:
        argv = group.wrap(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/maxima"
    body = urllib.parse.urlencode({"input": "1+1;", "timeout": "10000", "ploturlbase": "!ploturl!"}).encode()
    for _ in range(3000):  # a STACK core is saved at the first start (about 20 s)
        try:
            with urllib.request.urlopen(url, body, timeout=5) as r:
                if b"2" in r.read():
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"the server did not answer; see {log.name}")


def start_goemaxima(anchor: str, port: int, group: CpuGroup | None = None) -> int:
    """goemaxima via the anchor's ctl; returns the pid of its process tree's root."""
    argv = [os.path.join(anchor, "ctl"), str(port)]
    subprocess.run(group.wrap(argv) if group else argv, check=True, stdout=subprocess.DEVNULL)
    # "running on 127.0.0.1:PORT (pid N)": the anchor knows where it keeps its pid files.
    status = subprocess.run([os.path.join(anchor, "ctl"), "--status", str(port)], capture_output=True, text=True)
    found = re.search(r"\(pid (\d+)\)", status.stdout)
    if not found:
        sys.exit(f"goemaxima on port {port}: {status.stdout.strip() or status.stderr.strip()}")
    return int(found.group(1))


def tree_pss(root: int) -> dict[str, list[int]]:
    """PSS of a process and all its descendants: command -> [bytes, processes]."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    parts: dict[str, list[int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            continue
        part = parts.setdefault(comm, [0, 0])
        part[0] += pss
        part[1] += 1
    return parts


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, text: str, connections: int, seconds: float, version: str = "1") -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.replace("{input}", urllib.parse.quote(text, safe="")).replace("{version}", version))
    try:
        out = subprocess.run(
            [
                "wrk",
                "--latency",
                "-t",
                str(min(connections, 2)),
                "-c",
                str(connections),
                "-d",
                f"{seconds:g}s",
                "-s",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        result[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    result["errors"] = errors
    return result


def fresh(argv: list[str], text: str, expect: str, count: int, concurrency: int) -> dict:
    """``count`` fresh processes, ``concurrency`` at a time."""

    def one(_):
        start = time.perf_counter()
        out = subprocess.run(argv, input=text + "\n", capture_output=True, text=True).stdout
        if expect not in out.replace(" ", ""):
            raise RuntimeError(f"{argv[0]} gave {out!r}")
        return (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        times = sorted(pool.map(one, range(count)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"rps": count / elapsed, "p50": q[49], "p90": q[89], "p99": q[98], "errors": 0}


EXPECT = {"integrate(x^2,x);": "3", "1+1;": "2", "factor(x^12*y^12-1);": "y-1"}


def row(label: str, c: int, r: dict) -> None:
    print(
        f"  {label:<22} c={c:<3} {r['rps']:8.1f} req/s   p50 {r['p50']:7.2f} ms   p90 {r['p90']:7.2f} ms"
        f"   p99 {r['p99']:7.2f} ms   errors {r['errors']}"
    )


def compare(servers: dict, text: str, levels: list[int], seconds: float, version: str, groups: dict) -> None:
    """Each concurrency level on every server in turn, with mathrun's ratio
    and (with cpuacct) each server's CPU time per request."""
    for c in levels:
        results = {}
        for name, (url, root) in servers.items():
            group = groups.get(name)
            before = (group.usage(), process_tree(root)) if group else None
            results[name] = wrk(url, text, c, seconds, version)
            row(name, c, results[name])
            if group:
                after = (group.usage(), process_tree(root))
                print(f"  {'':<22} {cpu_split(group, root, before, after, results[name]['requests'])}")
        if "goemaxima" in results:
            g, m = results["goemaxima"], results["mathrun"]
            print(f"  {'ratio':<22} c={c:<3} {m['rps'] / g['rps']:8.2f}x req/s   p50 {m['p50'] / g['p50']:.2f}x")


def memory(servers: dict, label: str) -> None:
    """Each server's whole PSS, and by command (the front process's own)."""
    for name, (_url, root) in servers.items():
        parts = tree_pss(root)
        total = sum(pss for pss, _n in parts.values())
        shown = ", ".join(f"{c} {p / 1e6:.1f}" + (f" ({n})" if n > 1 else "") for c, (p, n) in sorted(parts.items()))
        print(f"  memory ({label}): {name} {total / 1e6:.1f} MB = {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--ready", type=int, default=3, help="--maxima-ready of the server")
    parser.add_argument("--fresh", type=int, default=40, help="fresh processes per baseline row")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh-process baselines")
    parser.add_argument("--stack", help="STACK's stack/maxima directory, loaded into mathrun")
    parser.add_argument("--goemaxima", help="the goemaxima anchor's folder (its ctl), run side by side")
    parser.add_argument("--user-prefix", default="mathrun", help="job users of mathrun")
    parser.add_argument("--inputs", help="only these inputs (indexes into the list, e.g. 0,2)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (make bench installs it)")
    groups = {}
    if CpuGroup.available():
        groups = {"mathrun": CpuGroup(f"{args.user_prefix}-mathrun", 1), "goemaxima": CpuGroup("goemaxima", 2)}
    port = free_port()
    server = start_server(port, args.ready, args.user_prefix, args.stack, group=groups.get("mathrun"))
    servers = {"mathrun": (f"http://127.0.0.1:{port}/maxima", server.pid)}
    gport = None
    if args.goemaxima:
        gport = free_port()
        servers = {
            "goemaxima": (
                f"http://127.0.0.1:{gport}/maxima",
                start_goemaxima(args.goemaxima, gport, groups.get("goemaxima")),
            ),
            **servers,
        }
    version = "1"
    inputs = list(INPUTS)
    if args.stack:
        inputs = ["integrate(x^2,x);", "1+1;", STACK_REQUEST]
    if args.inputs:
        inputs = [inputs[int(i)] for i in args.inputs.split(",")]
    if args.stack:
        version = subprocess.run(
            ["grep", "-o", "-m1", r"stackmaximaversion:[0-9]*", os.path.join(args.stack, "stackmaxima.mac")],
            capture_output=True, text=True,
        ).stdout.strip().split(":")[-1] or "1"  # fmt: skip
    debian = ["/usr/bin/maxima", "--very-quiet"]
    sbcl = ["sbcl", "--core", DEFAULT_CORE, "--noinform", "--end-runtime-options", "--very-quiet"]
    try:
        print(
            f"Maxima over HTTP (--maxima-ready {args.ready}), wrk {args.seconds:g}s per row, servers {list(servers)};"
        )
        print(f"library: {args.stack or 'none'}; baselines: one fresh process per request, no server.")
        time.sleep(2)
        memory(servers, "idle")
        for text in inputs:
            print(f"\n{text if len(text) < 40 else 'STACK answer test (ATAlgEquiv, cassession2 style)'}")
            compare(servers, text, levels, args.seconds, version, groups)
            if args.no_fresh or text not in EXPECT:
                continue
            for c in levels:
                row("fresh SBCL core", c, fresh(sbcl, text, EXPECT[text], args.fresh, c))
            for c in levels:
                row("fresh Debian maxima", c, fresh(debian, text, EXPECT[text], args.fresh, c))
        sampler = concurrent.futures.ThreadPoolExecutor(1).submit(
            lambda: (time.sleep(args.seconds / 2), memory(servers, "c=16"))
        )
        compare(servers, inputs[0], [16], args.seconds, version, groups)
        sampler.result()
    finally:
        server.terminate()
        server.wait(30)
        if gport:
            subprocess.run([os.path.join(args.goemaxima, "ctl"), "--stop", str(gport)], stdout=subprocess.DEVNULL)
        for group in groups.values():
            group.close()


if __name__ == "__main__":
    main()
