"""The Asymptote queue with many waiting clients: a burst of changes shares one
replay of the queue (a fake clock), estimates go out only when they change
materially; and end to end, a few hundred real WebSocket clients against
two real local runners, nobody dropped."""

from __future__ import annotations

import random

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from mathrun.asy import queue as queue_module
from mathrun.asy.backends import LocalBackend
from mathrun.asy.cache import sha256_hex
from mathrun.asy.intake import Request
from mathrun.asy.protocol import RunOptions
from mathrun.asy.queue import AsyQueue, QueueConfig
from mathrun.asy.queue_ws import QueueFactory
from mathrun.asy.runner import RunnerConfig
from mathrun.asy.runner_ws import limit_websocket
from mathrun.asy.scheduler import changed_materially
from mathrun.interfaces import IQueueClient

from .asyclient import connect, messages
from .fakes import FakeBackend
from .helpers import async_test, make_sandbox, within

TIMEOUTS = (None, 3000, 10000, 30000)


@implementer(IQueueClient)
class FakeClient:
    """What the queue needs of a client: options, files, and the replies."""

    def __init__(self, timeout):
        files = {"main.asy": b"draw(unitcircle);"}
        self.request = Request(
            files, {"main.asy": sha256_hex(files["main.asy"])}, "main.asy", RunOptions(timeout=timeout)
        )
        self.estimates, self.positions, self.passed_at, self.finished = [], [], None, False

    def queued(self, estimate_ms, position=None):
        self.estimates.append(estimate_ms)
        self.positions.append(position)

    def passed(self):
        self.passed_at = len(self.estimates)

    def missing(self, files):
        raise AssertionError(f"submitted with every file, yet asked for {files}")

    def output(self, stream, data):
        pass

    def result(self, fmt, data):
        pass

    def complete(self, success, error, time_ms):
        self.finished = True

    def denied(self, error):
        self.finished = True


class BurstTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.backends = [FakeBackend("a"), FakeBackend("b")]
        self.queue = AsyQueue(self.backends, self.clock, QueueConfig(estimate_interval=0.25), random.Random(5))
        self.addCleanup(self.queue.stop)
        self.passes, self.slices, self.during_replay = 0, [], []
        test = self

        class CountedReplay(queue_module.Replay):
            def __init__(self, scheduler):
                super().__init__(scheduler)
                test.passes += 1

            def advance(self, steps=float("inf")):
                if test.during_replay:
                    test.during_replay.pop()()
                before = self.scheduler.replay_steps
                try:
                    return super().advance(steps)
                finally:
                    test.slices.append(self.scheduler.replay_steps - before)

        self.patch(queue_module, "Replay", CountedReplay)
        self.sends = []  # queue messages per reactor turn
        send_some = self.queue._send_some

        def counted(most):
            before = sum(len(c.estimates) for c in self.clients)
            try:
                return send_some(most)
            finally:
                self.sends.append(sum(len(c.estimates) for c in self.clients) - before)

        self.queue._send_some = counted
        self.clients = []

    def finish_one(self):
        run = next(r for b in self.backends for r in b.runs if not r.sink.task.client.finished)
        run.finish()

    def test_a_thousand_submits_share_one_replay(self):
        clients = self.clients = [FakeClient(TIMEOUTS[i % 4]) for i in range(1002)]
        for client in clients:
            self.queue.submit(client, client.request)
        self.assertEqual(self.passes, 0)  # nothing replayed on the submits themselves
        self.clock.advance(0)
        self.assertEqual(self.passes, 1)
        waiting = [c for c in clients if c.passed_at is None]
        self.assertEqual(len(waiting), 1000)
        self.assertTrue(all(len(c.estimates) == 1 for c in waiting))
        # One replay, linear in the queue, in slices of at most a few hundred
        # steps between which the reactor runs.
        steps = self.queue.scheduler.replay_steps
        self.assertLessEqual(steps, 3 * 1002 + 3)
        self.assertGreater(len(self.slices), 3)
        self.assertLessEqual(max(self.slices), self.queue.config.estimate_slice + 10)
        # The thousand messages, too, go out a slice at a time.
        self.assertEqual(sum(self.sends), 1000)
        self.assertEqual(max(self.sends), self.queue.config.estimate_slice)
        # Ten ends within one interval: one more replay, not ten.
        for _ in range(10):
            self.clock.advance(0.01)
            self.finish_one()
        self.clock.advance(0.25)
        self.assertEqual(self.passes, 2)
        self.assertLessEqual(self.queue.scheduler.replay_steps - steps, 3 * 1002 + 3)

    def test_estimates_sent_only_when_they_change_materially(self):
        clients = [FakeClient(TIMEOUTS[i % 4]) for i in range(60)]
        for client in clients:
            self.queue.submit(client, client.request)
        self.clock.advance(0)
        rng = random.Random(9)
        for _ in range(40):
            self.clock.advance(rng.uniform(0.1, 3))
            self.finish_one()
            self.clock.advance(0.25)
        sent = moved = 0
        for client in clients:
            shown = list(zip(client.estimates, client.positions, strict=True))[: client.passed_at]
            sent += len(shown)
            for (old, was), (new, place) in zip(shown, shown[1:], strict=False):
                # A new message says a new estimate, or a new place near the front.
                if place != was and place <= queue_module.POSITIONS_SHOWN:
                    moved += 1
                else:
                    self.assertTrue(changed_materially(old, new), shown)
            places = [place for _, place in shown]
            self.assertEqual(places, sorted(places, reverse=True))  # only forward
        # Some estimates did change (the measured run times moved them), most did not.
        self.assertGreater(sent - moved, len(clients))
        self.assertLess(sent - moved, 40 * len(clients) // 4)
        # A place is told near the front only: at most that many per start.
        self.assertLessEqual(moved, 40 * queue_module.POSITIONS_SHOWN)

    def test_a_task_that_leaves_is_not_replayed(self):
        clients = [FakeClient(None) for _ in range(5)]
        for client in clients:
            self.queue.submit(client, client.request)
        self.queue.leave(clients[-1])
        self.clock.advance(0)
        self.assertEqual(clients[-1].estimates, [])
        self.assertEqual([len(c.estimates) for c in clients[2:4]], [1, 1])

    def test_changes_while_a_replay_runs_in_slices(self):
        """A client that leaves, and one that starts, while a replay is under
        way get nothing from it; the change brings one more replay."""
        clients = [FakeClient(3000) for _ in range(300)]
        for client in clients:
            self.queue.submit(client, client.request)
        gone, starting = clients[-1], clients[2]

        def meanwhile():
            self.queue.leave(gone)
            self.finish_one()  # clients[2] starts

        self.during_replay.append(meanwhile)
        self.clock.advance(0)
        self.assertEqual(self.passes, 1)
        self.assertGreater(len(self.slices), 1)
        self.assertEqual((gone.estimates, starting.estimates), ([], []))
        self.assertEqual(starting.passed_at, 0)
        self.clock.advance(0.25)
        self.assertEqual(self.passes, 2)
        self.assertTrue(all(len(c.estimates) == 1 for c in clients[3:-1]))


SOURCE = b"size(30); draw(unitcircle);"


class ManyClientsTests(unittest.TestCase):
    """300 real clients at once (10 of them interactive, so denied) against
    two real local runners: every one ends properly, none is dropped."""

    N, INTERACTIVE = 300, 10
    timeout = 280  # trial's own limit per test (120 s by default); a loaded host needs more

    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=4)
        backends = [LocalBackend(self.sandbox, RunnerConfig(), f"local-{n}") for n in (1, 2)]
        self.queue = AsyQueue(backends, reactor)
        self.addCleanup(self.queue.stop)
        factory = QueueFactory(self.queue)
        limit_websocket(factory, 1 << 20, ["*"], self.N + 10)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=self.N)
        self.addCleanup(port.stopListening)
        self.url = f"ws://127.0.0.1:{port.getHost().port}/asy"

    async def one(self, n):
        factory = connect(self.url)
        factory.setProtocolOptions(openHandshakeTimeout=60)
        c = await within(factory.opened, 60)
        if n < self.INTERACTIVE:
            c.send("options", {"interactive": True})
        else:
            c.add("main.asy", SOURCE, main=True, hashed=True)
            if TIMEOUTS[n % 4] is not None:
                c.send("options", {"timeout": TIMEOUTS[n % 4]})
        c.send("run")
        return await within(factory.closed, 230)

    @async_test(timeout=240)
    async def test_three_hundred_clients(self):
        # The interactive ones come once the runners are busy.
        results = [defer.ensureDeferred(self.one(n)) for n in range(self.INTERACTIVE, self.N)]
        await within(defer.ensureDeferred(self.some_queued()), 60)
        results += [defer.ensureDeferred(self.one(n)) for n in range(self.INTERACTIVE)]
        received = await defer.gatherResults(results)
        ends = [[m[0] for m in r if m[0] in ("complete", "denied")] for r in received]
        self.assertEqual([e for e in ends if len(e) != 1], [])  # nobody dropped
        batch, interactive = received[: -self.INTERACTIVE], received[-self.INTERACTIVE :]
        for r in batch:
            self.assertTrue(messages(r, "queue"), r)
            complete = messages(r, "complete")[0][1]
            if not complete["success"] and complete.get("error", "").startswith(
                "Execution aborted due to the time limit"
            ):
                # The client's own 3 s class on a host the rest of the run
                # keeps busy: its limit was honoured, nothing was dropped.
                self.assertLessEqual(complete["time"], 3000 + 2000, complete)
                continue
            self.assertTrue(complete["success"], complete)
            self.assertIn(b"<svg", messages(r, "result")[0][2])
        timed_out = sum(1 for r in batch if not messages(r, "complete")[0][1]["success"])
        self.assertLess(timed_out, len(batch) // 10)  # a few under load, not the many
        self.assertTrue(all(messages(r, "denied") for r in interactive))
        # Most waited and were told how long.
        told = sum(1 for r in batch if any("estimate" in m[1] for m in messages(r, "queue")))
        self.assertGreater(told, self.N // 2)
        self.assertEqual(self.queue.handles, {})

    async def some_queued(self):
        from twisted.internet.task import deferLater

        while len(self.queue.scheduler.state.queue) < 20:
            await deferLater(reactor, 0.05, lambda: None)


class HighDescriptorTests(unittest.TestCase):
    """With 1000 WebSocket connections open, new descriptors are numbered
    above select's FD_SETSIZE (1024): the Maxima child's kill check failed
    there with ValueError (a 500) under the load benchmark."""

    def test_kill_with_a_pidfd_above_1024(self):
        import os
        import subprocess

        from mathrun.maxima.child import Child
        from mathrun.maxima.config import MaximaConfig

        fillers = []
        self.addCleanup(lambda: [os.close(fd) for fd in fillers])
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
        self.addCleanup(proc.wait)
        workspace = type("Workspace", (), {"root": "/nonexistent"})
        lease = type("Lease", (), {"workspace": workspace, "capped": staticmethod(lambda limits: limits)})()
        child = Child(reactor, lease, MaximaConfig())
        child.forked(proc.pid)
        self.assertGreater(child._pidfd, 1024)
        child.kill()
        self.assertEqual(proc.wait(timeout=10), -9)
