"""The Asymptote queue front end over a real WebSocket: uploads, the cache,
option checks, queue messages, interactive denial, failing back ends; and
end to end, real clients against two real runner back ends running asy."""

from __future__ import annotations

import hashlib

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mathrun.asy.backends import RemoteBackend
from mathrun.asy.queue import AsyQueue
from mathrun.asy.queue_ws import QueueFactory
from mathrun.asy.runner import RunnerConfig
from mathrun.asy.runner_ws import RunnerFactory

from .asyclient import connect, messages, serve_queue
from .fakes import FakeBackend
from .helpers import async_test, make_sandbox, within

CIRCLE = b"size(50); draw(unitcircle);"


class QueueProtocolTests(unittest.TestCase):
    def setUp(self):
        self.backends = [FakeBackend("a"), FakeBackend("b")]
        self.queue, self.url = serve_queue(self, self.backends)

    async def client(self):
        factory = connect(self.url)
        return factory, await within(factory.opened)

    async def settle(self):
        await deferLater(reactor, 0.05, lambda: None)

    @async_test
    async def test_runs_and_relays(self):
        factory, c = await self.client()
        c.add("main.asy", CIRCLE, main=True, hashed=True)
        c.send("options", {"timeout": 3000, "format": "pdf"})
        c.send("run")
        await within(c.wait_for("queue"))
        self.assertEqual(messages(factory.received, "queue")[0][1], {"passed": True})
        await self.settle()
        run = self.backends[0].runs[0] if self.backends[0].runs else self.backends[1].runs[0]
        self.assertEqual(
            (run.files, run.main, run.options.timeout, run.options.format),
            ({"main.asy": CIRCLE}, "main.asy", 3000, "pdf"),
        )
        run.finish()
        received = await within(factory.closed)
        self.assertEqual(messages(received, "result")[0][2], b"<svg/>")
        self.assertEqual(messages(received, "complete")[0][1], {"success": True, "time": 5})

    @async_test
    async def test_bad_hash_is_denied(self):
        factory, c = await self.client()
        c.send("add", {"filename": "main.asy", "main": True, "hash": hashlib.sha256(b"other").hexdigest()}, CIRCLE)
        received = await within(factory.closed)
        self.assertIn("hash of main.asy does not match", messages(received, "denied")[0][1]["error"])

    @async_test
    async def test_only_the_three_timeouts(self):
        factory, c = await self.client()
        c.send("options", {"timeout": 5000})
        received = await within(factory.closed)
        self.assertEqual(
            messages(received, "denied")[0][1], {"error": "timeout must be one of 3000, 10000, 30000, none"}
        )

    @async_test
    async def test_restore_and_missing(self):
        factory, c = await self.client()
        c.add("helper.asy", b"void f() {}", hashed=True)
        c.add("main.asy", CIRCLE, main=True, hashed=True)
        c.sendClose()
        await within(factory.closed)
        # A second client restores both, and one file the server never saw.
        factory, c = await self.client()
        c.add("helper.asy", b"void f() {}", restore=True)
        c.add("main.asy", CIRCLE, main=True, restore=True)
        c.add("lost.asy", b"// lost", restore=True)
        c.send("run")
        missing = await within(c.wait_for("missing"))
        self.assertEqual(missing[1], [{"filename": "lost.asy", "hash": hashlib.sha256(b"// lost").hexdigest()}])
        c.add("lost.asy", b"// lost", hashed=True)
        c.send("run")
        await within(c.wait_for("queue"))
        await self.settle()
        run = (self.backends[0].runs + self.backends[1].runs)[0]
        self.assertEqual(sorted(run.files), ["helper.asy", "lost.asy", "main.asy"])
        run.finish()
        await within(factory.closed)

    @async_test
    async def test_queue_estimates_and_interactive_denial(self):
        runs = []
        for _ in range(2):
            factory, c = await self.client()
            c.add("main.asy", CIRCLE, main=True, hashed=True)
            c.send("options", {"timeout": 3000})
            c.send("run")
            await within(c.wait_for("queue"))
            runs.append(factory)
        # Both back ends busy: the next task waits with an estimate...
        waiting, c = await self.client()
        c.add("main.asy", CIRCLE, main=True, hashed=True)
        c.send("options", {"timeout": 3000})
        c.send("run")
        queued = await within(c.wait_for("queue"))
        self.assertEqual(queued[1]["passed"], False)
        self.assertIsInstance(queued[1]["estimate"], int)
        # ...and an interactive task is denied at once.
        denied, d = await self.client()
        d.send("options", {"interactive": True})
        d.send("run")
        received = await within(denied.closed)
        self.assertEqual(len(messages(received, "denied")), 1)
        # When one finishes, the waiting task passes.
        await self.settle()
        self.backends[0].runs[0].finish()
        await within(runs[0].closed)
        while len(messages(waiting.received, "queue")) < 2:
            await self.settle()
        self.assertEqual(messages(waiting.received, "queue")[-1][1], {"passed": True})
        for run in self.backends[0].runs[1:] + self.backends[1].runs:
            run.finish()
        await within(waiting.closed)

    @async_test
    async def test_interactive_input_is_relayed(self):
        factory, c = await self.client()
        c.send("options", {"interactive": True})
        c.send("run")
        await within(c.wait_for("queue"))
        c.send("input", None, b"write(1);\n")
        await self.settle()
        run = (self.backends[0].runs + self.backends[1].runs)[0]
        self.assertEqual((run.options.interactive, run.options.timeout, run.inputs), (True, None, [b"write(1);\n"]))
        run.sink.output("stdout", b"1\n")
        run.sink.complete(False, "No image output", 9)
        received = await within(factory.closed)
        self.assertEqual(messages(received, "output")[0][2], b"1\n")

    @async_test
    async def test_client_leaving_aborts_its_task(self):
        factory, c = await self.client()
        c.add("main.asy", CIRCLE, main=True, hashed=True)
        c.send("run")
        await within(c.wait_for("queue"))
        await self.settle()
        c.sendClose()
        await within(factory.closed)
        await self.settle()
        run = (self.backends[0].runs + self.backends[1].runs)[0]
        self.assertIsNotNone(run.aborted)
        self.assertEqual(self.queue.handles, {})


class FailingBackendTests(unittest.TestCase):
    async def run_one(self, url):
        factory = connect(url)
        c = await within(factory.opened)
        c.add("main.asy", CIRCLE, main=True, hashed=True)
        c.send("run")
        received = await within(factory.closed)
        complete = messages(received, "complete")
        self.assertTrue(complete, f"no complete message; received: {received!r}")
        return complete[0][1]

    @async_test
    async def test_dead_back_end_fails_the_task_leaves_rotation_and_comes_back(self):
        from socket import AF_INET, socket

        s = socket()
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
        # Bound, never listening: connections are refused, and the port
        # cannot go to the queue's own listener meanwhile (a closed one
        # could: then the "dead" back end would be the queue itself).
        backend = RemoteBackend(f"ws://127.0.0.1:{dead_port}/", reactor, retry_seconds=0.5)
        queue = AsyQueue([backend], reactor)
        self.addCleanup(queue.stop)
        port = reactor.listenTCP(0, QueueFactory(queue), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}/asy"
        complete = await self.run_one(url)
        self.assertEqual(complete["success"], False)
        self.assertIn("Back end failed", complete["error"])
        self.assertFalse(backend.available())
        self.assertEqual(queue.scheduler.disabled, {0})
        # The runner comes up: after the retry delay the queue uses it again.
        sandbox = make_sandbox(self, jobs=1)
        # The same socket starts listening: the port is never free in between
        # (another process's connection could take it as its local port).
        s.listen(16)
        s.setblocking(False)
        runner = reactor.adoptStreamPort(s.fileno(), AF_INET, RunnerFactory(sandbox, RunnerConfig()))
        s.close()  # the reactor holds its own duplicate
        self.addCleanup(runner.stopListening)
        complete = await self.run_one(url)
        self.assertEqual(complete["success"], True, complete)
        self.assertEqual(queue.scheduler.disabled, set())


class EndToEndTests(unittest.TestCase):
    """20 clients of mixed classes against two real runner back ends."""

    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=4)
        urls = []
        for _ in range(2):
            port = reactor.listenTCP(0, RunnerFactory(self.sandbox, RunnerConfig()), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            urls.append(f"ws://127.0.0.1:{port.getHost().port}/")
        self.queue = AsyQueue([RemoteBackend(u, reactor) for u in urls], reactor)
        self.addCleanup(self.queue.stop)
        port = reactor.listenTCP(0, QueueFactory(self.queue), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"ws://127.0.0.1:{port.getHost().port}/asy"

    async def one(self, n):
        factory = connect(self.url)
        c = await within(factory.opened)
        c.add("main.asy", b"size(40); draw(scale(%d)*unitcircle);" % (n + 1), main=True, hashed=True)
        timeout = [3000, 10000, 30000, None][n % 4]
        if timeout is not None:
            c.send("options", {"timeout": timeout})
        c.send("run")
        received = await within(factory.closed, 120)
        return received

    @async_test(timeout=180)
    async def test_twenty_clients(self):
        results = await defer.gatherResults([defer.ensureDeferred(self.one(n)) for n in range(20)])
        for received in results:
            complete = messages(received, "complete")
            self.assertEqual(len(complete), 1, received)
            self.assertTrue(complete[0][1]["success"], complete)
            self.assertIn(b"<svg", messages(received, "result")[0][2])
            self.assertTrue(messages(received, "queue")[-1][1]["passed"])
        self.assertEqual(self.queue.handles, {})
        self.assertEqual(self.sandbox.pool.busy, 0)
