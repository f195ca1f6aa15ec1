"""The Asymptote front end as a service of ``twistd mathrun``: the /asy
queue (its back ends, the queue policy, the WebSocket resource mounted on
the site) and, on its own endpoint, this host as a runner back end."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import Gauge
from twisted.application import service, strports
from zope.interface import implementer

from ..interfaces import IFrontEnd
from ..metrics import AsyQueueMetrics
from ..web.perclient import limit_asy
from .backends import LocalBackend, RemoteBackend
from .config import AsyConfig, RunnerConfig
from .queue import AsyQueue, QueueConfig
from .queue_ws import QueueFactory
from .runner_ws import FRAME_SLACK, RunnerFactory, limit_websocket


def make_backends(sandbox, config: AsyConfig, reactor) -> list:
    """The runner back ends at ``config.backends``, else local runners."""
    runner = config.runner
    if config.backends:
        return [
            RemoteBackend(
                url,
                reactor,
                retry_seconds=config.backend_retry_seconds,
                max_image=runner.max_image,
                max_upload=runner.max_upload,
                token=config.token,
                ca_file=config.backends_ca,
            )
            for url in config.backends
        ]
    return [LocalBackend(sandbox, runner, f"local-{n}") for n in range(1, config.local + 1)]


@implementer(IFrontEnd)
class AsyService(service.Service):
    """Owns the queue and its resource (mounted at /asy by the site); at
    stop, the queue stops retrying its back ends."""

    name = "asy"
    paths = ("asy",)

    def __init__(self, sandbox, config: AsyConfig, reactor, backends=None):
        self.config = config
        runner = config.runner
        queue_config = QueueConfig(
            max_upload=runner.max_upload,
            max_image=runner.max_image,
            max_files=runner.max_files,
            render_cache_entries=config.render_cache_entries,
            render_cache_bytes=config.render_cache_bytes,
            render_cache_seconds=config.render_cache_seconds,
        )
        self.backends = list(backends) if backends is not None else make_backends(sandbox, config, reactor)
        self.queue = AsyQueue(self.backends, reactor, queue_config)
        self.factory = QueueFactory(self.queue)
        limit_websocket(
            self.factory,
            queue_config.max_upload + FRAME_SLACK,
            config.origins,
            config.max_connections,
            max_send=queue_config.max_image + FRAME_SLACK,
        )
        limit_asy(self.factory, config.per_client)
        self.resource = WebSocketResource(self.factory)

    def stopService(self):
        super().stopService()
        self.queue.stop()

    def snapshot(self) -> dict:
        """Tasks waiting and running, and which back ends are in rotation;
        failing when none is (no task could run)."""
        up = {backend.name: backend.available() for backend in self.backends}
        state = {
            "queue_length": len(self.queue.scheduler.state.queue),
            "running": len(self.queue.scheduler.state.running),
            "backends_up": sum(up.values()),
            "backends": up,
        }
        if not any(up.values()):
            state["failing"] = "no Asymptote back end is in rotation"
        return state

    def register_metrics(self, registry) -> None:
        """The queue's length, the back ends up, tasks started and the render
        cache's counts, read when scraped."""
        AsyQueueMetrics(registry, self.queue)
        Gauge("mathrun_asy_queue_length", "Asymptote tasks waiting in the queue.", registry=registry).set_function(
            lambda: self.snapshot()["queue_length"]
        )
        Gauge("mathrun_asy_backends_up", "Asymptote back ends in rotation.", registry=registry).set_function(
            lambda: self.snapshot()["backends_up"]
        )


def runner_service(endpoint: str, sandbox, config: RunnerConfig, token: bytes | None = None) -> service.Service:
    """This host as an Asymptote back end (WebSocket at /), on its own
    endpoint; with a token, only a queue that sends it is served."""
    runner = strports.service(endpoint, RunnerFactory(sandbox, config, token=token))
    runner.setName("asy-runner")
    return runner
