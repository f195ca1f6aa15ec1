"""What basic auth costs a request: /health on a server without --auth next
to the same request with credentials on servers with --auth memory: and
--auth file: (and --auth-health, so that /health goes through the guard).

    .venv/bin/python bench/auth_bench.py [-n 2000] [--rounds 5]

The servers run side by side; each round sends n requests on one keep-alive
connection to each in turn.  Printed per server: requests per second, the
twistd process's CPU time per request (from /proc/PID/stat, which the load
of other processes disturbs less than wall time) and its resident memory.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """A twistd in unprivileged mode with a job root of its own: the bench
    runs no job, so it needs no job users and disturbs no other server."""

    def __init__(self, name, extra, directory, headers):
        self.name, self.headers, self.port = name, headers, free_port()
        args = ["--http", f"tcp:{self.port}:interface=127.0.0.1", "--jobs", "1", "--no-maxima", "--no-asy"]
        args += ["--no-why3", "--unprivileged", "--job-root", os.path.join(directory, name), *extra]
        self.log = open(os.path.join(directory, name + ".log"), "wb")
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "mathrun", *args], stdout=self.log, stderr=self.log)
        self.wall = self.cpu = 0.0
        self.requests = 0

    def wait(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.get(http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)) == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def get(self, connection) -> int:
        connection.request("GET", "/health", headers=self.headers)
        response = connection.getresponse()
        response.read()
        return response.status

    def round(self, n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        cpu, start = cpu_seconds(self.proc.pid), time.perf_counter()
        for _ in range(n):
            assert self.get(connection) == 200
        self.wall += time.perf_counter() - start
        self.cpu += cpu_seconds(self.proc.pid) - cpu
        self.requests += n
        connection.close()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per server per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="mathrun-auth-bench-")
    users = os.path.join(directory, "users")
    with open(users, "w") as f:
        f.write("".join(f"user{i}:password{i}\n" for i in range(100)) + "stack:m00dle-password\n")
    credentials = {"Authorization": "Basic " + base64.b64encode(b"stack:m00dle-password").decode()}
    specs = [
        ("no-auth", [], {}),
        ("memory", ["--auth", "memory:stack:m00dle-password", "--auth-health"], credentials),
        ("file", ["--auth", f"file:{users}", "--auth-health"], credentials),
    ]
    servers = []
    try:
        servers = [Server(name, extra, directory, headers) for name, extra, headers in specs]
        for server in servers:
            server.wait()
        for _ in range(args.rounds):
            for server in servers:
                server.round(args.n)
        print(f"GET /health, {args.n} requests x {args.rounds} rounds per server, one keep-alive connection each")
        print(f"{'server':>8} {'req/s':>8} {'cpu us/req':>11} {'rss MiB':>8}")
        for s in servers:
            print(f"{s.name:>8} {s.requests / s.wall:8.0f} {1e6 * s.cpu / s.requests:11.1f} {rss_mib(s.proc.pid):8.1f}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(directory, True)


if __name__ == "__main__":
    main()
