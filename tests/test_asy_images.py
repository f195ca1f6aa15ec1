"""Large Asymptote images: one image limit on every hop.  A real render larger
than the old 4 MiB frame limit arrives whole through a local runner and
through a runner back end; one over a (small) configured limit ends with the
design's output-limit message, the server logs why, and the back end stays
in rotation."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from mathrun.asy.backends import LocalBackend, RemoteBackend
from mathrun.asy.queue import AsyQueue, QueueConfig
from mathrun.asy.queue_ws import QueueFactory
from mathrun.asy.runner import RunnerConfig
from mathrun.asy.runner_ws import FRAME_SLACK, RunnerFactory, limit_websocket
from mathrun.options import Options
from mathrun.service import asy_config

from .asyclient import connect, messages
from .helpers import async_test, make_sandbox, within

OLD_FRAME_LIMIT = (4 << 20) + 4096


def noise_image(n: int) -> bytes:
    """An n x n raster of noise: JPEG cannot shrink it, so the SVG that
    embeds it has about n * n bytes (n = 2300: 4.7 MB, in seconds)."""
    return f"""import palette;
size(10cm);
srand(11);
int n = {n};
real[] row = new real[n];
for (int j = 0; j < n; ++j) row[j] = unitrand();
real[][] v = new real[n][];
for (int i = 0; i < n; ++i) v[i] = sin(row * (1000 * i + 1618));
image(v, (0, 0), (1, 1), Rainbow());
""".encode()


class ImageTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=2)

    def queue_url(self, backends, max_image: int) -> str:
        queue = AsyQueue(backends, reactor, QueueConfig(max_image=max_image))
        self.addCleanup(queue.stop)
        factory = QueueFactory(queue)
        limit_websocket(factory, (4 << 20) + FRAME_SLACK, ["*"], 8, max_send=max_image + FRAME_SLACK)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"ws://127.0.0.1:{port.getHost().port}/asy"

    def runner_url(self, config: RunnerConfig) -> str:
        port = reactor.listenTCP(0, RunnerFactory(self.sandbox, config), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"ws://127.0.0.1:{port.getHost().port}/"

    async def render(self, url: str, source: bytes):
        factory = connect(url)
        c = await within(factory.opened)
        c.add("main.asy", source, main=True, hashed=True)
        c.send("options", {"timeout": 30000})
        c.send("run")
        received = await within(factory.closed, 90)
        complete = messages(received, "complete")
        self.assertEqual(len(complete), 1, [m[:2] for m in received])
        self.output = b"".join(m[2] for m in messages(received, "output"))
        return complete[0][1], [m[2] for m in messages(received, "result")]

    def assert_whole_svg(self, complete, images):
        self.assertTrue(complete["success"], (complete, self.output[-2000:]))
        self.assertEqual(len(images), 1)
        self.assertGreater(len(images[0]), OLD_FRAME_LIMIT)
        self.assertTrue(images[0].startswith(b"<?xml"), images[0][:80])
        self.assertTrue(images[0].rstrip().endswith(b"</svg>"), images[0][-80:])

    @async_test(timeout=200)
    async def test_larger_than_the_old_frame_limit_arrives_whole(self):
        options = Options()
        options.parseOptions([])
        config = asy_config(options).runner  # the default, as the server makes it
        local = self.queue_url([LocalBackend(self.sandbox, config)], config.max_image)
        self.assert_whole_svg(*await self.render(local, noise_image(2300)))
        remote = self.queue_url([RemoteBackend(self.runner_url(config), reactor)], config.max_image)
        self.assert_whole_svg(*await self.render(remote, noise_image(2300)))

    @async_test(timeout=150)
    async def test_over_the_limit_ends_with_the_output_limit_message(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        limit = 1 << 20
        message = f"Execution aborted due to the output limit ({limit}B)"
        small = RunnerConfig(max_image=limit)
        # The runner itself refuses it (a local runner, or a runner back end).
        local = self.queue_url([LocalBackend(self.sandbox, small)], limit)
        complete, images = await self.render(local, noise_image(1300))
        self.assertEqual((complete["success"], complete.get("error"), images), (False, message, []))
        self.assertTrue(any("over the image limit" in e.get("log_format", "") for e in events))
        behind = self.queue_url([RemoteBackend(self.runner_url(small), reactor, max_image=limit)], limit)
        complete, images = await self.render(behind, noise_image(1300))
        self.assertEqual((complete["success"], complete.get("error"), images), (False, message, []))
        # A runner back end with a larger limit than the queue's: the queue
        # refuses the frame, the task ends the same way, the back end is fine.
        backend = RemoteBackend(self.runner_url(RunnerConfig()), reactor, max_image=limit)
        remote = self.queue_url([backend], limit)
        complete, images = await self.render(remote, noise_image(1300))
        self.assertEqual((complete["success"], complete.get("error"), images), (False, message, []))
        self.assertTrue(backend.available())
        complete, images = await self.render(remote, b"draw(unitcircle);")
        self.assertTrue(complete["success"], complete)
        # A local runner with a larger limit: the queue refuses to relay it.
        relaying = self.queue_url([LocalBackend(self.sandbox, RunnerConfig())], limit)
        complete, images = await self.render(relaying, noise_image(1300))
        self.assertEqual((complete["success"], complete.get("error"), images), (False, message, []))
        await autobahn_timers()


async def autobahn_timers():
    """Autobahn's batched timers (the close handshake of the connection the
    queue failed) stay scheduled when cancelled: let them run out."""
    calls = [c for c in reactor.getDelayedCalls() if "_notify_bucket" in repr(c.func)]
    if calls:
        await deferLater(reactor, max(c.getTime() for c in calls) - reactor.seconds() + 0.01, lambda: None)
