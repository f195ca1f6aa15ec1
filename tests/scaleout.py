"""The scale-out test's cluster: network namespaces joined by a bridge, a
``twistd mathrun`` node in each, HAProxy in front (tests/test_scale_out.py).

Nothing of it touches the host's own network: the bridge and HAProxy live
in a namespace of their own (``lb``), each node in another, joined by veth
pairs made directly inside them; HAProxy's front end and its stats socket
are unix sockets in the test's directory, which the test reaches from the
host's namespace.  Everything is removed at the end, also after a failure.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import time

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
HTTP_PORT, RUNNER_PORT = 8080, 9001
NODES = ("a", "b", "c")
QUEUE_NODE = "a"  # the Asymptote queue; every node is a runner back end
# One Maxima child (of 2 job users, one kept for the runner), one request
# waiting, then 503: the test fills it from outside the maxima back end, and
# HAProxy retries the 503 it then answers on another node.
SMALL_NODE = "c"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class Cluster:
    def __init__(self, prefix: str, directory: str, jobs: int = 4):
        self.prefix, self.dir, self.jobs = prefix, directory, jobs
        # A private /24 per test prefix; it exists only inside the namespaces.
        third = int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % 250 + 1
        self.net = f"10.213.{third}"
        self.lb = f"{prefix}-scale-lb"
        self.ns = {n: f"{prefix}-scale-{n}" for n in NODES}
        self.addr = {n: f"{self.net}.{11 + i}" for i, n in enumerate(NODES)}
        self.front = os.path.join(directory, "front.sock")
        self.stats_socket = os.path.join(directory, "stats.sock")
        self.procs: dict[str, subprocess.Popen] = {}
        # The queue and the runners share a token (docs/security.md).
        self.token_file = os.path.join(directory, "runner.token")
        with open(os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(os.urandom(24).hex() + "\n")

    # -- network -------------------------------------------------------------
    def make_network(self) -> None:
        self.remove_network()  # what a run that died may have left
        for ns in (self.lb, *self.ns.values()):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.lb, "link", "add", "br0", "type", "bridge")
        ip("-n", self.lb, "addr", "add", f"{self.net}.1/24", "dev", "br0")
        ip("-n", self.lb, "link", "set", "br0", "up")
        for node, ns in self.ns.items():
            port = f"to-{node}"
            ip("link", "add", port, "netns", self.lb, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.lb, "link", "set", port, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addr[node]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def remove_network(self) -> None:
        """Kill whatever still runs in the namespaces (only this test starts
        anything there), then delete them, which removes their links."""
        for ns in (self.lb, *self.ns.values()):
            if not os.path.exists(f"/run/netns/{ns}"):
                continue
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)

    def inside(self, ns: str, argv: list[str]) -> list[str]:
        """Only the network namespace: the node keeps the host's mounts, so
        its cgroups, job root and Maxima core are where they always are."""
        return ["nsenter", f"--net=/run/netns/{ns}", "--", *argv]

    # -- nodes ---------------------------------------------------------------
    def node_args(self, node: str) -> list[str]:
        user = f"{self.prefix}-{node}"
        addr = self.addr[node]
        args = ["-n", "--pidfile=", "mathrun", "--user-prefix", user, "--helper-user", user]
        args += ["--no-why3", "--maxima-ready", "1", "--maxima-heap", "512"]
        args += ["--jobs", str(self.jobs_of(node))]
        if node == SMALL_NODE:
            args += ["--maxima-max-waiting", "1", "--maxima-queue-wait", "60"]  # its waiting filler outlasts the first
        args += ["--http", f"tcp:{HTTP_PORT}:interface={addr}"]
        args += ["--asy-runner", f"tcp:{RUNNER_PORT}:interface={addr}", "--asy-runner-token-file", self.token_file]
        if node == QUEUE_NODE:
            args += ["--asy-backends", ",".join(f"ws://{self.addr[n]}:{RUNNER_PORT}/" for n in NODES)]
        else:
            args.append("--no-asy")
        return args

    def jobs_of(self, node: str) -> int:
        return 2 if node == SMALL_NODE else self.jobs

    def start_node(self, node: str) -> subprocess.Popen:
        log = open(os.path.join(self.dir, f"node-{node}.log"), "ab")
        argv = self.inside(self.ns[node], [TWISTD, *self.node_args(node)])
        proc = subprocess.Popen(argv, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[node] = proc
        return proc

    def node_log(self, node: str) -> str:
        with open(os.path.join(self.dir, f"node-{node}.log"), errors="replace") as f:
            return f.read()

    # -- HAProxy -------------------------------------------------------------
    def haproxy_config(self) -> str:
        """The configuration of docs/scale-out.md, with unix sockets in front,
        and one test-only back end: requests with ``X-Mathrun-Direct: c`` go
        to the small node alone, outside the maxima back end's accounting (as
        clients that do not come through HAProxy would)."""
        maxconn = {n: self.jobs_of(n) - 1 for n in NODES}  # one job user for the runner
        maxima = "\n".join(f"    server {n} {self.addr[n]}:{HTTP_PORT} maxconn {maxconn[n]}" for n in NODES)
        return f"""global
    stats socket {self.stats_socket} mode 600 level admin
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    timeout server 45s
    timeout queue 20s
    timeout tunnel 120s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 503
frontend mathrun
    bind unix@{self.front} mode 600
    use_backend direct if {{ hdr(x-mathrun-direct) -m str {SMALL_NODE} }}
    use_backend asy if {{ path_beg /asy }}
    default_backend maxima
backend maxima
    balance roundrobin
    option http-buffer-request
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 300ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
    http-response set-header X-Mathrun-Node %s
{maxima}
backend asy
    option httpchk GET /health
    server {QUEUE_NODE} {self.addr[QUEUE_NODE]}:{HTTP_PORT} check inter 300ms
backend direct
    server {SMALL_NODE} {self.addr[SMALL_NODE]}:{HTTP_PORT}
"""

    def start_haproxy(self) -> subprocess.Popen:
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(self.haproxy_config())
        log = open(os.path.join(self.dir, "haproxy.log"), "ab")
        proc = subprocess.Popen(
            self.inside(self.lb, ["haproxy", "-db", "-f", path]), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs["haproxy"] = proc
        return proc

    def haproxy_log(self) -> str:
        with open(os.path.join(self.dir, "haproxy.log"), errors="replace") as f:
            return f.read()

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat`` from HAProxy's stats socket: (backend, server) -> row."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.stats_socket)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {(r["pxname"], r["svname"]): r for r in rows}

    def status(self, backend: str, server: str) -> str:
        return self.stats()[(backend, server)]["status"]

    # -- the end -------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM first (a node unmounts its workspaces), SIGKILL after 20 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.remove_network()
        self.unmount_leftovers()

    def unmount_leftovers(self) -> None:
        """Workspaces of a node killed and not restarted (a failed run): its
        next start would unmount them, but no next start may come."""
        from mathrun.sandbox import SandboxConfig
        from mathrun.sandbox.workspace import unmount

        roots = [SandboxConfig(user_prefix=f"{self.prefix}-{n}").resolved_job_root(True) + "/" for n in NODES]
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in sorted(points, reverse=True):
            if point.startswith(tuple(roots)):
                unmount(point)
