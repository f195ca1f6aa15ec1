"""The Asymptote front end's service on fakes: its snapshot follows the
back ends in and out of rotation, and stopping it stops the queue's
timers (no retry of a failed back end after shutdown)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from mathrun.asy.config import AsyConfig
from mathrun.asy.service import AsyService

from .fakes import FakeBackend
from .test_asy_queue_load import FakeClient
from .test_maxima_logic import FakeSandbox


class AsyServiceTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.backends = [FakeBackend("a", self.clock), FakeBackend("b", self.clock)]
        self.service = AsyService(FakeSandbox(2), AsyConfig(), self.clock, backends=self.backends)
        self.service.startService()
        self.registry = CollectorRegistry()
        self.service.register_metrics(self.registry)

    def gauge(self, name):
        return self.registry.get_sample_value(name)

    def test_a_failed_back_end_leaves_rotation_and_returns(self):
        client = FakeClient(3000)
        self.service.queue.submit(client, client.request)
        (run,) = [r for b in self.backends for r in b.runs]
        backend = next(b for b in self.backends if b.runs)
        backend.fail(30)
        run.sink.complete(False, "Back end failed: gone", 0)
        state = self.service.snapshot()
        self.assertEqual((state["backends_up"], state["backends"][backend.name]), (1, False))
        self.assertEqual(self.gauge("mathrun_asy_backends_up"), 1)
        self.assertNotIn("failing", state)
        self.clock.advance(30)
        self.assertEqual(self.service.snapshot()["backends_up"], 2)

    def test_no_back_end_up_is_failing(self):
        for backend in self.backends:
            backend.fail(30)
        self.assertIn("no Asymptote back end", self.service.snapshot()["failing"])
        self.assertEqual(self.gauge("mathrun_asy_backends_up"), 0)

    def test_queue_length_and_stop_cancels_the_timers(self):
        clients = [FakeClient(30000) for _ in range(5)]
        for client in clients:
            self.service.queue.submit(client, client.request)
        waiting = len(self.service.queue.scheduler.state.queue)
        self.assertGreater(waiting, 0)
        self.assertEqual(self.gauge("mathrun_asy_queue_length"), waiting)
        self.backends[0].fail(30)
        self.backends[0].runs[0].sink.complete(False, "Back end failed", 0)  # a retry timer for its slot
        self.assertIn(0, self.service.queue._timers)
        self.service.stopService()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
