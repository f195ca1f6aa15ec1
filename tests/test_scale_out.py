"""Scale-out for real (docs/scale-out.md): three mathrun nodes in network
namespaces of their own behind HAProxy, the Asymptote queue on one of them
dispatching to runner back ends on all three; a node is killed with SIGKILL
in the middle of a stream of Maxima requests and asy renders, and restarted.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time

import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .asyclient import Session, messages
from .helpers import ROOT, USER_PREFIX, async_test, temp_dir, within
from .scaleout import NODES, SMALL_NODE, Cluster

MAXIMA_CLIENTS = 6
# Two: one fewer than the runners, so that no task ever waits, even with one
# runner gone (a waiting task makes the queue downgrade a running default
# task to the fast class's 3 s, which may stop it: the design's, not this
# test's concern).  Free runners are taken in turn, so each runner, the
# victim too, gets every third task.
ASY_CLIENTS = 2
# About half a second of asy's CPU: long enough that a node killed while it
# renders is caught in the middle of a task.
ASY_PROGRAM = "real s = 0; for (int i = 0; i < 300000; ++i) s += i; draw(scale({k}) * unitcircle);"
BACK_END_FAILED = "Back end failed: "


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    """HTTP to HAProxy's front end, a unix socket: whatever the URL's host."""

    def __init__(self, path):
        self.path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(reactor, self.path, timeout=5)


def asy_connection(path: str):
    """An Asymptote queue session through HAProxy (tests/asyclient.py's
    client, over the unix socket)."""
    factory = WebSocketClientFactory("ws://mathrun/asy")
    factory.protocol = Session
    factory.received, factory.waiters = [], []
    factory.opened, factory.closed = defer.Deferred(), defer.Deferred()
    factory.setProtocolOptions(openHandshakeTimeout=10)
    UNIXClientEndpoint(reactor, path, timeout=5).connect(factory).addErrback(factory.opened.errback)
    return factory


class ScaleOutTests(unittest.TestCase):
    def setUp(self):
        if not ROOT:
            raise unittest.SkipTest("needs root: network namespaces, job users of three nodes")
        for tool in ("haproxy", "ip", "nsenter"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest(f"{tool} is not installed (scripts/setup.sh --test installs haproxy)")
        self.cluster = Cluster(USER_PREFIX, temp_dir(self, "mathrun-scale-"))
        self.addCleanup(self.cluster.stop)
        self.cluster.make_network()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(
            Agent.usingEndpointFactory(reactor, _UnixEndpoints(self.cluster.front), pool)
        )
        self.stopping = False
        self.maxima_results: list[tuple[float, int | str, str, bool]] = []  # (end, status, node, right)
        self.asy_results: list[tuple[float, float, str]] = []  # (start, end, "ok" / error)
        self.counter = itertools.count(1)

    async def until(self, what: str, predicate, seconds: float):
        """Poll ``predicate`` (every 50 ms) until it holds; fail after ``seconds``."""
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- node {n}\n{self.cluster.node_log(n)[-1500:]}" for n in NODES)
                self.fail(f"not within {seconds} s: {what}\n{logs}")
            await task.deferLater(reactor, 0.05, lambda: None)

    def all_up(self) -> bool:
        try:
            stats = self.cluster.stats()
        except OSError:
            return False
        return all(stats[("maxima", n)]["status"] == "UP" for n in NODES) and stats[("asy", "a")]["status"] == "UP"

    def check_status(self, node: str) -> str:
        """The last health check of a node: L7OK, L4CON (refused), ..."""
        return self.cluster.stats()[("maxima", node)]["check_status"].lstrip("* ")

    async def maxima_client(self):
        """One client's requests, one after another: x^k integrated."""
        while not self.stopping:
            k = next(self.counter)
            try:
                response = await within(
                    self.http.post("http://mathrun/maxima", data={"input": f"integrate(x^{k},x);", "timeout": "10000"}),
                    30,
                )
                body = (await within(response.content(), 30)).split()
            except Exception as e:  # noqa: BLE001 -- every failure is a result here
                self.maxima_results.append((time.monotonic(), f"client error {e!r}", "", False))
                continue
            node = (response.headers.getRawHeaders("x-mathrun-node") or [""])[0]
            # x^(k+1)/(k+1) in 2D: the exponent, x, the label, the fraction bar, the denominator.
            exponent = str(k + 1).encode()
            right = body[2:5] == [exponent, b"x", b"(%o2)"] and body[5].strip(b"-") == b"" and body[6] == exponent
            self.maxima_results.append((time.monotonic(), response.code, node, right))
            await task.deferLater(reactor, 0.05, lambda: None)

    async def asy_client(self):
        while not self.stopping:
            start = time.monotonic()
            factory = asy_connection(self.cluster.front)
            try:
                session = await within(factory.opened, 30)
                session.add("main.asy", ASY_PROGRAM.format(k=next(self.counter)).encode(), main=True, hashed=True)
                session.send("run")
                received = await within(factory.closed, 60)
            except Exception as e:  # noqa: BLE001
                self.asy_results.append((start, time.monotonic(), f"client error {e!r}"))
                continue
            complete = messages(received, "complete")
            if complete and complete[0][1]["success"]:
                images = messages(received, "result")
                outcome = "ok" if images and b"<svg" in images[0][2] else f"no image: {received}"
            else:
                outcome = complete[0][1].get("error", "") if complete else f"no complete: {received}"
            self.asy_results.append((start, time.monotonic(), outcome))

    def asy_running_on(self, node: str) -> bool:
        """A job user of that node runs asy right now (one scan of /proc)."""
        import pwd

        uids = {str(pwd.getpwnam(f"{USER_PREFIX}-{node}-{n}").pw_uid) for n in range(1, self.cluster.jobs + 1)}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("Name") == "asy" and fields.get("Uid", "").split()[0] in uids:
                return True
        return False

    @async_test(timeout=110)
    async def test_a_node_killed_and_restarted_behind_haproxy(self):
        cluster, victim = self.cluster, "b"
        for node in NODES:
            cluster.start_node(node)
        cluster.start_haproxy()
        await self.until("every node UP in HAProxy", self.all_up, 40)
        clients = [defer.ensureDeferred(self.maxima_client()) for _ in range(MAXIMA_CLIENTS)]
        clients += [defer.ensureDeferred(self.asy_client()) for _ in range(ASY_CLIENTS)]
        try:
            await self.until("Maxima answers", lambda: len(self.maxima_results) >= 10, 30)
            await self.until(f"an asy task on node {victim}", lambda: self.asy_running_on(victim), 30)
            cluster.procs[victim].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            cluster.procs[victim].wait(timeout=10)
            await self.until("the dead node DOWN", lambda: cluster.status("maxima", victim).startswith("DOWN"), 10)
            down = time.monotonic()
            # Its first refused connection took it out; the health check agrees.
            await self.until("the health check failing", lambda: self.check_status(victim).startswith("L4"), 10)
            await task.deferLater(reactor, 2, lambda: None)  # the stream goes on without it
            restarted = time.monotonic()
            cluster.start_node(victim)
            await self.until("the restarted node UP", lambda: cluster.status("maxima", victim) == "UP", 40)
            up = time.monotonic()
            self.assertEqual(self.check_status(victim), "L7OK")
            await self.until(
                "Maxima answers from the restarted node",
                lambda: any(end > restarted and node == victim for end, _, node, _ in self.maxima_results),
                20,
            )
            await self.until(
                "asy tasks after the kill", lambda: sum(s > killed for s, _, _ in self.asy_results) >= 3, 30
            )
        finally:
            self.stopping = True
            await within(defer.DeferredList(clients), 60)
        await self.burst()
        stats = cluster.stats()
        print(
            f"scale-out: {len(self.maxima_results)} Maxima requests"
            f" ({sum(r[1] == 503 for r in self.maxima_results)} answered 503),"
            f" {len(self.asy_results)} asy tasks"
            f" ({sum(r[2].startswith(BACK_END_FAILED) for r in self.asy_results)} back end failed);"
            f" node {victim} DOWN {down - killed:.2f} s after SIGKILL, UP {up - restarted:.2f} s after its restart;"
            f" HAProxy retries {stats[('maxima', 'BACKEND')]['wretr']}, redispatches {stats[('maxima', 'BACKEND')]['wredis']}"
        )
        self.check_maxima(down, restarted)
        self.check_asy(killed)
        self.assertTrue(self.all_up(), cluster.stats())

    async def burst(self):
        """The small node full with requests that did not come through the
        maxima back end: the one HAProxy then sends it is answered 503 and
        retried on another node; every request gets its answer."""
        retried = int(self.cluster.stats()[("maxima", "BACKEND")]["wretr"])

        async def one(n, headers=None, loops=1):
            program = f"block([s: {n}], for i thru {loops} do s: s + 1, s);"
            data = {"input": program, "timeout": "20000"}
            response = await self.http.post("http://mathrun/maxima", data=data, headers=headers)
            return response.code, (await response.content()).split()[2:4]

        # Fill it from outside the maxima back end: every child busy, one
        # request waiting (as many fillers as that takes: a child per job
        # user the runner leaves free).
        direct = {"X-Mathrun-Direct": SMALL_NODE}
        fillers = []
        while self.small_pool()[1] < 1:
            self.assertLess(len(fillers), 4, self.small_pool())
            fillers.append(defer.ensureDeferred(one(len(fillers) + 1, direct, 600000)))
            count = len(fillers)
            await self.until(
                f"filler {count} on node {SMALL_NODE}", lambda count=count: sum(self.small_pool()) >= count, 10
            )
        quick = [defer.ensureDeferred(one(n)) for n in range(10, 10 + 2 * len(NODES))]
        answers = await within(defer.gatherResults(quick + fillers), 60)
        expected = [(200, [b"(%o2)", str(n + 1).encode()]) for n in range(10, 10 + 2 * len(NODES))]
        expected += [(200, [b"(%o2)", str(n + 600000).encode()]) for n in range(1, len(fillers) + 1)]
        self.assertEqual(answers, expected, self.cluster.haproxy_log()[-3000:])
        self.assertIn('"POST /maxima HTTP/1.1" 503', self.cluster.node_log(SMALL_NODE)[-20000:], "no 503")
        self.assertGreater(int(self.cluster.stats()[("maxima", "BACKEND")]["wretr"]), retried)

    def small_pool(self) -> tuple[int, int]:
        """The small node's Maxima children busy and requests waiting, from its
        /health (through the direct back end; blocking, it answers at once)."""
        import json
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.cluster.front)
            s.sendall(f"GET /health HTTP/1.0\r\nX-Mathrun-Direct: {SMALL_NODE}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        pool = json.loads(data.partition(b"\r\n\r\n")[2])["maxima"]["default"]
        return pool["busy"], pool["waiting"]

    def check_maxima(self, down, restarted):
        """Every request answered: right, or 503 when every node left was full
        (none lost, none wrong); the dead node served none while down, and
        serves again once restarted."""
        wrong = [r for r in self.maxima_results if not (r[1] == 200 and r[3]) and r[1] != 503]
        unusual = [line for line in self.cluster.haproxy_log().splitlines() if "POST" in line and " ---- " not in line]
        self.assertEqual(wrong, [], "\n".join(unusual))
        answered = [r for r in self.maxima_results if r[1] == 200]
        while_down = [r for r in answered if down < r[0] < restarted]
        self.assertTrue(while_down)
        self.assertNotIn("b", {r[2] for r in while_down})
        self.assertTrue([r for r in answered if r[0] > restarted and r[2] == "b"])
        self.assertEqual({r[2] for r in answered}, set(NODES))

    def check_asy(self, killed):
        """The task the dead runner had ends with the design's error; every
        other one renders, and the queue goes on with the other runners."""
        outcomes = [r[2] for r in self.asy_results]
        self.assertTrue(all(o == "ok" or o.startswith(BACK_END_FAILED) for o in outcomes), outcomes)
        self.assertTrue(any(o.startswith(BACK_END_FAILED) for o in outcomes), outcomes)
        after = [r for r in self.asy_results if r[0] > killed and r[2] == "ok"]
        self.assertGreaterEqual(len(after), 2, outcomes)
