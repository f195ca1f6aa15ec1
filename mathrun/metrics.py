"""Prometheus metrics, kept in one registry per server (tests build their own).

The sandbox's metrics count and time every job of every front end (Maxima's
included: its children are Jobs too); each front end adds its own through
its service's ``register_metrics``, gauges reading the same ``snapshot()``
that /health shows.
"""

from __future__ import annotations

import bisect
import itertools
import math

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .sandbox import Status

FRONTENDS = ("maxima", "asy", "why3", "jobs")  # "jobs": the sandbox's own (the deep health probe)
JOB_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAXIMA_RESULTS = ("success", "timeout", "error", "busy", "bad_request", "too_large")


class LeanHistogram:
    """A histogram the reactor's thread alone observes: an observation is a
    bisect and two additions.  prometheus_client's Histogram takes a lock
    for its sum and one for the bucket and checks itself at each (~3 us;
    five of them a Maxima request).  Scraped as the same ``_bucket``,
    ``_count`` and ``_sum`` samples (no ``_created``)."""

    def __init__(self, name: str, documentation: str, labelnames=(), buckets=JOB_SECONDS, registry=None):
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets) + (math.inf,)
        self.les = [floatToGoString(b) for b in self.bounds]
        self._children: dict[tuple, _HistogramChild] = {}
        if not self.labelnames:
            self.observe = self.labels().observe
        if registry is not None:
            registry.register(self)

    def labels(self, *values) -> _HistogramChild:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, given {key}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _HistogramChild(self.bounds)
        return child

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            buckets = list(zip(self.les, itertools.accumulate(child.counts), strict=True))
            family.add_metric(list(key), buckets, child.sum)
        yield family


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class SandboxMetrics:
    """Counts and times every sandbox job by front end, and shows the
    job-user pool (quarantined users included: a shrinking pool is a
    failing cleanup)."""

    def __init__(self, registry: CollectorRegistry, sandbox):
        self.jobs = Counter(
            "mathrun_jobs", "Sandbox jobs by front end and how they ended.", ["frontend", "status"], registry=registry
        )
        self.wall = LeanHistogram(
            "mathrun_job_wall_seconds", "Wall time of sandbox jobs, by front end.", ["frontend"], registry=registry
        )
        self.cpu = LeanHistogram(
            "mathrun_job_cpu_seconds", "CPU time of sandbox jobs, by front end.", ["frontend"], registry=registry
        )
        for frontend in FRONTENDS:
            self.wall.labels(frontend)
            self.cpu.labels(frontend)
            for status in Status:
                self.jobs.labels(frontend, status.value)
        users = Gauge("mathrun_job_users", "Job users by state.", ["state"], registry=registry)
        for state in ("busy", "free", "waiting", "quarantined"):
            users.labels(state).set_function(lambda state=state: getattr(sandbox.pool, state) if sandbox.pool else 0)
        self._children: dict = {}
        sandbox.observers.append(self.observe)

    def observe(self, result, frontend: str = "jobs") -> None:
        """A finished job (the sandbox calls every observer with each).  The
        labelled children are looked up once per (front end, status):
        ``labels`` validates and locks at every call."""
        key = (frontend, result.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.jobs.labels(frontend, result.status.value),
                self.wall.labels(frontend),
                self.cpu.labels(frontend),
            )
        jobs, wall, cpu = children
        jobs.inc()
        wall.observe(result.wall)
        cpu.observe(result.user_cpu + result.system_cpu)


class MaximaMetrics:
    """goemaxima's metrics, in seconds: response, spawn and queue-wait times,
    responses by result, and the children by state (read from ``snapshot``,
    the Maxima service's, when scraped).  Made before a registry exists (the
    pools time into it from the start); ``register`` adds it to one."""

    def __init__(self, snapshot):
        def seconds(name, what):
            return LeanHistogram(name, what)

        self.response = seconds("mathrun_maxima_response_seconds", "Time to answer a Maxima request.")
        self.spawn = seconds("mathrun_maxima_spawn_seconds", "Fork of a Maxima child until it is ready.")
        self.queue_wait = seconds(
            "mathrun_maxima_queue_wait_seconds", "Time a request waited for a ready Maxima child."
        )
        self.responses = Counter("mathrun_maxima_responses", "Maxima responses by result.", ["result"], registry=None)
        # Looked up once: ``labels`` validates and locks at every call.
        self.response_counts = {result: self.responses.labels(result) for result in MAXIMA_RESULTS}
        self.children = Gauge("mathrun_maxima_children", "Maxima children by state.", ["state"], registry=None)

        def total(key):
            return lambda: sum(s[key] for s in _pools(snapshot()))

        for state, key in (
            ("ready", "ready"),
            ("busy", "busy"),
            ("spawning", "spawning"),
            ("waiting_requests", "waiting"),
        ):
            self.children.labels(state).set_function(total(key))
        self.restarts = Gauge("mathrun_maxima_mother_restarts", "Restarts of the Maxima mothers.", registry=None)
        self.restarts.set_function(total("restarts"))

    def register(self, registry: CollectorRegistry) -> None:
        """Add every metric to ``registry`` (once)."""
        for metric in (self.response, self.spawn, self.queue_wait, self.responses, self.children, self.restarts):
            registry.register(metric)


def _pools(snapshot: dict) -> list[dict]:
    """The per-version entries of the Maxima snapshot (not ``failing``)."""
    return [state for version, state in snapshot.items() if version != "failing"]


class AsyQueueMetrics:
    """The Asymptote queue's tasks started on back ends and its render
    cache's counts, read from the queue when scraped."""

    def __init__(self, registry: CollectorRegistry, queue):
        self.queue = queue
        registry.register(self)

    def collect(self):
        started = CounterMetricFamily(
            "mathrun_asy_tasks_started", "Asymptote tasks started on a back end (a cached answer starts none)."
        )
        started.add_metric([], self.queue.started)
        yield started
        cache = self.queue.renders
        events = CounterMetricFamily(
            "mathrun_asy_render_cache",
            "Render cache lookups (hit, miss) and entries stored, evicted, expired.",
            labels=["event"],
        )
        for event, count in (
            ("hit", cache.hits),
            ("miss", cache.misses),
            ("store", cache.stores),
            ("eviction", cache.evictions),
            ("expiry", cache.expiries),
        ):
            events.add_metric([event], count)
        yield events
        held = GaugeMetricFamily(
            "mathrun_asy_render_cache_held", "Renders in the cache, and their bytes.", labels=["what"]
        )
        held.add_metric(["entries"], len(cache))
        held.add_metric(["bytes"], cache.size)
        yield held
