"""The Maxima front end as a service: its pools (one per library version)
start with the server; the resource is mounted at /maxima and /goemaxima."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer

from .config import MaximaConfig
from .http import MaximaResource
from .mother import Mother
from .pool import MaximaPool, job_netns


class MaximaService(service.Service):
    name = "maxima"

    def __init__(self, sandbox, config: MaximaConfig, reactor, registry=None):
        self.sandbox = sandbox
        self.config = config
        self.reactor = reactor
        self.pools: dict[str, MaximaPool] = {}
        versions = config.versions or {"default": config.libraries}
        metrics = None
        if registry is not None:
            from ..metrics import MaximaMetrics

            metrics = MaximaMetrics(registry, self.pools.values())
        for version, libraries in versions.items():
            mother = Mother(config, reactor, job_netns(sandbox), libraries=libraries, name=version)
            self.pools[version] = MaximaPool(sandbox, config, reactor, mother=mother, metrics=metrics)
        self.resource = MaximaResource(self.pools, config, reactor, metrics)

    def report(self) -> dict:
        """For /health: each version's mother and children."""
        return {
            version: {
                "mother": "ready" if pool.mother.ready else "starting",
                "restarts": pool.mother.restarts,
                "ready": len(pool.ready),
                "busy": len(pool.busy),
                "waiting": len(pool.waiters),
            }
            for version, pool in self.pools.items()
        }

    def startService(self):
        super().startService()
        for pool in self.pools.values():
            pool.start()

    def stopService(self):
        super().stopService()
        return defer.DeferredList([defer.ensureDeferred(p.stop()) for p in self.pools.values()])
