"""The Asymptote queue under load: N WebSocket clients at once against a real
``twistd mathrun`` with 2 local runners, while /health and Maxima are probed.

    .venv/bin/python bench/asy_queue_load.py [-n 1000] [--user-prefix mra]

Prints the time until every client is done, how many got ``queue`` messages,
how many ended with ``complete`` / ``denied`` and how many were dropped
(closed with neither), the latency of /health and of a small Maxima request
(p50/p99, from a separate process so that the clients' own work does not
count) while the clients wait, and the server process's CPU time and peak
RSS.  Two anchors in the same run: the probes with the server idle, and
with the runners kept busy by one client each (the machine's own latency
when asy uses the CPUs, no queue).  ``--twistd`` runs another checkout's server (a baseline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

TIMEOUTS = (None, 3000, 10000, 30000)  # the clients cycle through the classes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client(WebSocketClientProtocol):
    """Submits one small render; records the verbs it gets."""

    def onOpen(self):
        f = self.factory
        source = f"size(50); draw(circle((0,0),{f.index % 7 + 1})); dot((0,0));".encode()
        body = {"filename": "main.asy", "main": True, "hash": hashlib.sha256(source).hexdigest()}
        self.sendMessage(f"add {json.dumps(body)}".encode())
        self.sendMessage(source, isBinary=True)
        timeout = TIMEOUTS[f.index % len(TIMEOUTS)]
        if timeout is not None:
            self.sendMessage(f"options {json.dumps({'timeout': timeout})}".encode())
        self.sendMessage(b"run")

    def onMessage(self, data, isBinary):
        if not isBinary:
            self.factory.verbs.append(data.decode().partition(" ")[0])

    def onClose(self, wasClean, code, reason):
        f = self.factory
        if not f.done.called:
            f.ended = time.monotonic()
            f.done.callback((code, reason))


def start_client(url: str, index: int):
    factory = WebSocketClientFactory(url)
    factory.protocol = Client
    factory.index, factory.verbs, factory.done = index, [], defer.Deferred()
    factory.setProtocolOptions(openHandshakeTimeout=120, autoPingInterval=0)
    factory.clientConnectionFailed = lambda c, reason: factory.done.called or factory.done.callback((0, str(reason)))
    connectWS(factory)
    return factory


def probe(base: str, stop, results) -> None:
    """In its own process: /health every 0.1 s, a Maxima request every 1 s;
    latencies with the time they were measured at (monotonic)."""
    health, maxima, failures = [], [], []
    body = urllib.parse.urlencode({"input": "integrate(x^2,x);", "timeout": "10000"}).encode()
    next_maxima = time.monotonic()
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(base + "/health", timeout=30) as r:
                r.read()
            health.append((t0, time.monotonic() - t0))
        except OSError as e:
            failures.append(f"health: {e}")
        if time.monotonic() >= next_maxima:
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(base + "/goemaxima", body, timeout=30) as r:
                    r.read()
                maxima.append((t0, time.monotonic() - t0))
            except OSError as e:
                failures.append(f"maxima: {e}")
            next_maxima = t0 + 1.0
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
    results.put({"health": health, "maxima": maxima, "failures": failures})


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field="VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(args, port: int, logdir: str) -> subprocess.Popen:
    argv = [args.twistd, "-n", "--pidfile="]
    if args.profile:
        argv += [f"--profile={args.profile}", "--profiler=cprofile", "--savestats"]
    argv += ["mathrun", "--http", f"tcp:{port}:interface=127.0.0.1:backlog=1024"]
    argv += ["--asy-local", str(args.runners), "--no-why3", "--jobs", str(args.jobs)]
    argv += ["--asy-max-connections", str(args.n + 64)]
    argv += ["--user-prefix", args.user_prefix, "--helper-user", args.helper_user or args.user_prefix]
    if os.geteuid() != 0:
        argv += ["--job-root", os.path.join(logdir, "jobs")]
    log = open(os.path.join(logdir, "twistd.log"), "wb")
    proc = subprocess.Popen(argv, cwd=logdir, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if json.load(r)["status"] == "ok":
                    break
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited; see {logdir}/twistd.log") from None
            time.sleep(0.2)
    # The Maxima mother must be up before the load starts.
    body = urllib.parse.urlencode({"input": "1+1;", "timeout": "10000"}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/goemaxima", body, timeout=120) as r:
        r.read()
    return proc


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def probe_for(port: int, seconds: float):
    """The anchor: the same probes for a while with the server idle."""
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(f"http://127.0.0.1:{port}", stop, results))
    prober.start()
    time.sleep(seconds)
    stop.set()
    probes = results.get(timeout=60)
    prober.join()
    return probes


async def busy_anchor(reactor, port: int, seconds: float, runners: int):
    """The second anchor: the same probes while the runners are kept busy
    by one client each at a time (asy uses the CPUs, no queue forms)."""
    url = f"ws://127.0.0.1:{port}/asy"
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(f"http://127.0.0.1:{port}", stop, results))
    prober.start()
    deadline = time.monotonic() + seconds

    async def worker(k):
        while time.monotonic() < deadline:
            await start_client(url, k).done

    await defer.gatherResults([defer.ensureDeferred(worker(k)) for k in range(runners)])
    stop.set()
    probes = results.get(timeout=60)
    prober.join()
    return probes


async def load(reactor, args, port: int, pid: int):
    url = f"ws://127.0.0.1:{port}/asy"
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(f"http://127.0.0.1:{port}", stop, results))
    prober.start()
    rss_peak = [rss_mib(pid)]
    sampler = task.LoopingCall(lambda: rss_peak.append(rss_mib(pid)))
    sampler.start(0.5)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    factories = [start_client(url, i) for i in range(args.n)]
    # A Deferred of its own for the timeout: cancelling the DeferredList
    # would cancel the clients' Deferreds too.
    waiter = defer.Deferred()
    defer.DeferredList([f.done for f in factories]).addBoth(lambda _: waiter.called or waiter.callback(None))
    try:
        await waiter.addTimeout(args.deadline, reactor)
    except defer.TimeoutError:
        pass  # reported as "still waiting"
    drained = time.monotonic() - t0
    for f in factories:  # as they are now: stopping the server closes the rest
        f.seen, f.at_deadline = list(f.verbs), f.done.called
    cpu = cpu_seconds(pid) - cpu0
    sampler.stop()
    stop.set()
    probes = results.get(timeout=60)
    prober.join()
    probes["start"] = t0
    return factories, drained, cpu, max(rss_peak), probes


def latencies(probes, name: str, label: str) -> None:
    values = [v * 1000 for _, v in probes[name]]
    worst = max(probes[name], key=lambda p: p[1], default=None)
    when = f" (at {worst[0] - probes['start']:.0f} s)" if worst and "start" in probes else ""
    print(
        f"  {label:>14}: {len(values)} requests, p50 {percentile(values, 50):.1f} ms, "
        f"p99 {percentile(values, 99):.1f} ms, max {max(values, default=float('nan')):.1f} ms{when}"
    )


def report(args, factories, drained, cpu, rss, probes, rss_idle, idle, busy):
    ends = [next((v for v in reversed(f.seen) if v in ("complete", "denied")), None) for f in factories]
    queued = sum(1 for f in factories if "queue" in f.seen)
    waiting = sum(1 for f in factories if not f.at_deadline)
    dropped = sum(1 for f, e in zip(factories, ends, strict=True) if e is None and f.at_deadline)
    print(f"{args.n} clients at once, {args.runners} local runners (server: {args.twistd})")
    state = f"drained in {drained:.1f} s" if not waiting else f"{waiting} still waiting after {drained:.1f} s"
    print(f"  {state}; {queued} got queue messages; complete {ends.count('complete')},")
    print(f"  denied {ends.count('denied')}, dropped {dropped}")
    for name in ("health", "maxima"):
        latencies(idle, name, f"{name} idle")
        latencies(busy, name, f"{name} busy")
        latencies(probes, name, f"{name} loaded")
    print(f"  probe failures while loaded: {len(probes['failures'])} {probes['failures'][:3]}")
    print(
        f"  server: {cpu:.1f} s CPU ({cpu / drained * 100:.0f} % of one core), RSS {rss_idle:.0f} MiB idle, "
        f"peak {rss:.0f} MiB"
    )
    if dropped:
        reasons = [f.done.result for f, e in zip(factories, ends, strict=True) if e is None and f.at_deadline]
        print("  dropped, first few close reasons:", reasons[:5])
    if probes["health"]:
        print(f"  /health mean while loaded {statistics.mean(v for _, v in probes['health']) * 1000:.1f} ms")


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="clients at once")
    parser.add_argument("--runners", type=int, default=2, help="local runners (--asy-local)")
    parser.add_argument("--jobs", type=int, default=8, help="job users of the server")
    parser.add_argument("--user-prefix", default="mathrun", help="the server's job users (--user-prefix)")
    parser.add_argument("--helper-user", default=None, help="the server's helper user (default: the prefix)")
    parser.add_argument("--profile", help="the server runs under cProfile, stats saved to this file")
    parser.add_argument("--anchor", type=float, default=20, help="seconds of probes before the load, server idle")
    parser.add_argument("--deadline", type=float, default=1200, help="stop waiting after this many seconds")
    parser.add_argument("--twistd", default=os.path.join(here, ".venv", "bin", "twistd"), help="server to run")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.n + 1024)), hard))
    logdir = tempfile.mkdtemp(prefix="mathrun-asy-load-")
    port = free_port()
    proc = start_server(args, port, logdir)
    rss_idle = rss_mib(proc.pid)
    try:
        idle = probe_for(port, args.anchor)
        outcome = {}

        async def run(reactor):
            outcome["busy"] = await busy_anchor(reactor, port, args.anchor, args.runners)
            outcome["r"] = await load(reactor, args, port, proc.pid)

        task.react(lambda r: defer.ensureDeferred(run(r)), [])
    except SystemExit as e:
        if e.code:
            raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # stalled in its reactor: still replaying the queue
            proc.wait()
    report(args, *outcome["r"], rss_idle, idle, outcome["busy"])
    print(f"  server log: {logdir}/twistd.log")


if __name__ == "__main__":
    main()
