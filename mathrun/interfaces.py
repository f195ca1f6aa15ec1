"""The seams of the server, declared, so that a fake in the tests and the
real part are held to the same contract (``verifyObject``).

The job starter and its events belong to the sandbox (``spawner.py``) and
are re-exported here; the rest are the front ends' seams.
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute, Interface

from .sandbox.spawner import IJobEvents, IJobStarter

__all__ = [
    "IAsyBackend",
    "IAsyHandle",
    "IFrontEnd",
    "IJob",
    "IJobEvents",
    "IJobStarter",
    "ILease",
    "IMaximaChild",
    "IMaximaPool",
    "IMother",
    "IQueueClient",
    "IRunSink",
    "ISandbox",
]


class ISandbox(Interface):
    """What a front end asks of the sandbox: a lease on a job user."""

    config = Attribute("The SandboxConfig (its ``limits`` are the defaults, ``jobs`` the users).")
    privileged = Attribute("True when jobs run as job users (the server is root).")
    refusal = Attribute("Why jobs are refused (unprivileged without user namespaces), or None.")

    def acquire(workspace_bytes=None):
        """A Deferred firing with an ILease once a job user is free."""


class ILease(Interface):
    """A job user and its fresh workspace, until ``release``."""

    workspace = Attribute("The job's Workspace (``path``; staging and reading files).")

    def spawn(
        argv, limits=None, env=None, on_output=None, frontend="jobs", stdin=None, output_fd=None, output_create=None
    ):
        """Start one job in the workspace as the job user; returns an IJob."""

    def release():
        """Kill what is left, unmount, hand the user back; a Deferred."""


class IJob(Interface):
    """One process of any front end, kept to its limits by the server."""

    done = Attribute("A Deferred firing with the JobResult.")

    def write(data):
        """Bytes to the job's stdin."""

    def close_stdin():
        """End of the job's input."""

    def stop(cause):
        """Kill the job; ``cause`` (a Status) is its verdict."""


class IMaximaPool(Interface):
    """Ready Maxima children of one library version."""

    def evaluate(text, timeout):
        """Run ``text`` (bytes) in a ready child; a coroutine giving a JobResult."""


class IMaximaChild(Interface):
    """One forked Maxima child, as the pool drives it: forked into a lease,
    ready on its pipes, one evaluation, then closed."""

    lease = Attribute("The lease (job user, workspace) it was forked into.")
    state = Attribute('"spawning", "ready", "running" or "done".')
    ready = Attribute("A Deferred firing with the child once it waits for input.")
    on_death = Attribute("Called if a ready child dies while it waits, or None.")
    job = Attribute("The Job of its evaluation, once it runs.")

    def prepare():
        """Limits and directories before the fork."""

    def fork_fields():
        """The fields of the mother's ``fork`` request for this child."""

    def forked(pid):
        """The mother forked it: it has a pid now."""

    def hurry():
        """Leave the fork's nice level: a request waits for it."""

    def evaluate(text, timeout):
        """Feed ``text``; a Deferred firing with its JobResult."""

    def close():
        """Close its pipes."""

    def kill():
        """Kill it."""

    def exited():
        """A Deferred firing once the child's process has ended (or a bound
        time has passed): its user's cleanup follows."""


class IMother(Interface):
    """The Maxima mother process, kept running (restarted with backoff)."""

    ready = Attribute("True while it serves forks.")
    restarts = Attribute("How often it was restarted.")
    error = Attribute("Why it cannot start, or None.")
    pid = Attribute("Its pid while it runs, else None.")
    on_ready = Attribute("Callables called each time a mother is ready.")

    def start():
        """Start it (and keep restarting it)."""

    def stop():
        """Close the channel, stop restarting; a Deferred."""

    def kill():
        """Kill the running mother (it is then restarted)."""

    def hurry(on):
        """Fork at normal priority while requests wait (``on``), or not."""

    def fork(fields):
        """Ask for a child; a Deferred firing with its pid."""


class IQueueClient(Interface):
    """A client of the Asymptote queue, as the queue speaks to it."""

    finished = Attribute("True once it heard complete or denied.")

    def queued(estimate_ms, position=None):
        """Still waiting; the estimate (ms) or None, and its place in the queue."""

    def missing(files):
        """``run`` named files the queue does not hold: send them (``files`` as the protocol lists them)."""

    def passed():
        """Its task starts now."""

    def output(stream, data):
        """What the task wrote."""

    def result(fmt, data):
        """An image."""

    def complete(success, error, time_ms):
        """The task ended."""

    def denied(error):
        """The task was refused."""


class IRunSink(Interface):
    """Where one Asymptote run reports: output as it comes, each image, then
    exactly one ``complete``."""

    def output(stream, data):
        """``data`` (bytes) written by the run on ``stream`` ("stdout"/"stderr")."""

    def result(fmt, data):
        """One image of format ``fmt``."""

    def complete(success, error, time_ms):
        """The end: ``error`` is the client's message, or None."""


class IAsyHandle(Interface):
    """A task started on a back end, as the queue steers it."""

    def lower_timeout(timeout_ms):
        """Shorten the task's time (the queue downgrades it)."""

    def write_input(data):
        """Bytes to an interactive task's stdin."""

    def abort(reason):
        """Stop the task; its sink still hears ``complete``."""


class IAsyBackend(Interface):
    """A place where the Asymptote queue runs a task: a local runner or a
    runner back end at a URL."""

    name = Attribute("A name for logs and metrics.")

    def available():
        """False while the back end is out of rotation after a failure."""

    def start(files, main, options, sink):
        """Run ``files`` (name -> bytes) with ``options``; returns an IAsyHandle."""


class IFrontEnd(IService):
    """A front end of ``twistd mathrun`` (Maxima, Asymptote, Why3): a service
    that owns its resource or port, reports its state once for both /health
    and its gauges, and registers its metrics."""

    paths = Attribute("Where the site mounts its ``resource`` (none: it listens on a port of its own).")

    def snapshot():
        """A JSON-able dict of the front end's state; ``failing`` (a reason)
        when it cannot serve, which turns /health not-ok."""

    def register_metrics(registry):
        """Add the front end's metrics (gauges read ``snapshot()``) to a
        prometheus_client registry."""
