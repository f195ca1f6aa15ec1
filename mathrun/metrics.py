"""Prometheus metrics, kept in one registry per server (tests build their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .sandbox import Status

FRONTENDS = ("maxima", "asy", "why3", "jobs")  # "jobs": the sandbox's own (the deep health probe)
JOB_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SandboxMetrics:
    """Counts and times every sandbox job, and shows the job-user pool."""

    def __init__(self, registry: CollectorRegistry, sandbox):
        self.jobs = Counter(
            "mathrun_jobs", "Sandbox jobs by front end and how they ended.", ["frontend", "status"], registry=registry
        )
        for frontend in FRONTENDS:
            for status in Status:
                self.jobs.labels(frontend, status.value)
        self.wall = Histogram(
            "mathrun_job_wall_seconds", "Wall time of sandbox jobs.", buckets=JOB_SECONDS, registry=registry
        )
        self.cpu = Histogram(
            "mathrun_job_cpu_seconds", "CPU time of sandbox jobs.", buckets=JOB_SECONDS, registry=registry
        )
        users = Gauge("mathrun_job_users", "Job users by state.", ["state"], registry=registry)
        users.labels("busy").set_function(lambda: sandbox.pool.busy if sandbox.pool else 0)
        users.labels("free").set_function(lambda: sandbox.pool.free if sandbox.pool else 0)
        users.labels("waiting").set_function(lambda: sandbox.pool.waiting if sandbox.pool else 0)
        sandbox.observers.append(self.observe)

    def observe(self, result, frontend: str = "jobs") -> None:
        self.jobs.labels(frontend, result.status.value).inc()
        self.wall.observe(result.wall)
        self.cpu.observe(result.user_cpu + result.system_cpu)


class MaximaMetrics:
    """goemaxima's metrics, in seconds: response, spawn and queue-wait times,
    responses by result, and the children by state."""

    def __init__(self, registry: CollectorRegistry, pools):
        def seconds(name, what):
            return Histogram(name, what, buckets=JOB_SECONDS, registry=registry)

        self.response = seconds("mathrun_maxima_response_seconds", "Time to answer a Maxima request.")
        self.spawn = seconds("mathrun_maxima_spawn_seconds", "Fork of a Maxima child until it is ready.")
        self.queue_wait = seconds(
            "mathrun_maxima_queue_wait_seconds", "Time a request waited for a ready Maxima child."
        )
        self.responses = Counter(
            "mathrun_maxima_responses", "Maxima responses by result.", ["result"], registry=registry
        )
        for result in ("success", "timeout", "error", "busy", "bad_request", "too_large"):
            self.responses.labels(result)
        children = Gauge("mathrun_maxima_children", "Maxima children by state.", ["state"], registry=registry)
        children.labels("ready").set_function(lambda: sum(len(p.ready) for p in pools))
        children.labels("busy").set_function(lambda: sum(len(p.busy) for p in pools))
        children.labels("spawning").set_function(lambda: sum(p.spawning for p in pools))
        children.labels("waiting_requests").set_function(lambda: sum(len(p.waiters) for p in pools))
        restarts = Gauge("mathrun_maxima_mother_restarts", "Restarts of the Maxima mothers.", registry=registry)
        restarts.set_function(lambda: sum(p.mother.restarts for p in pools))


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
