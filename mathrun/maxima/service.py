"""The Maxima front end as a service: its pools (one per library version)
start with the server; the resource is mounted at /maxima and /goemaxima."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from zope.interface import implementer

from ..interfaces import IFrontEnd
from ..metrics import MaximaMetrics
from .config import MaximaConfig
from .cores import CoreCache
from .http import MaximaResource
from .libraries import library_sets
from .mother import Mother
from .pool import MaximaPool, job_netns


@implementer(IFrontEnd)
class MaximaService(service.Service):
    """Owns the pools (and their mothers) and the resource; the pools and
    the resource time their work into ``metrics``, registered with
    ``register_metrics``."""

    name = "maxima"
    paths = ("maxima", "goemaxima")

    def __init__(self, sandbox, config: MaximaConfig, reactor):
        self.sandbox = sandbox
        self.config = config
        self.reactor = reactor
        self.pools: dict[str, MaximaPool] = {}
        self.cores = CoreCache(config, reactor, config.core_cache)
        self.metrics = MaximaMetrics(self.snapshot)
        for version, libraries in library_sets(config, config.core_cache).items():
            mother = Mother(config, reactor, job_netns(sandbox), libraries=libraries, name=version, cores=self.cores)
            self.pools[version] = MaximaPool(sandbox, config, reactor, mother=mother, metrics=self.metrics)
        self.resource = MaximaResource(self.pools, config, reactor, self.metrics)

    def snapshot(self) -> dict:
        """Each version's mother (its memory, PSS) and children; ``failing``
        names the mothers that cannot start, and why."""
        report = {}
        failing = {}
        for version, pool in self.pools.items():
            state = pool.snapshot()
            pid, error = state.pop("mother_pid"), state.pop("error")
            state["pss_bytes"] = pss_bytes(pid) if pid else None
            report[version] = state
            if error:
                state["error"] = failing[version] = error
        if failing:
            report["failing"] = failing
        return report

    def register_metrics(self, registry) -> None:
        """goemaxima's metrics (see MaximaMetrics)."""
        self.metrics.register(registry)

    def startService(self):
        super().startService()
        for pool in self.pools.values():
            pool.start()

    def stopService(self):
        super().stopService()
        stops = [defer.ensureDeferred(p.stop()) for p in self.pools.values()]
        return defer.DeferredList([*stops, self.cores.stop()])


def pss_bytes(pid: int) -> int | None:
    """A process's proportional set size: its share of the pages it has in
    common with the mother's other children."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
