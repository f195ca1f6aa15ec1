"""The seams of the server, declared, so that a fake in the tests and the
real part are held to the same contract (``verifyObject``).

The job starter and its events belong to the sandbox (``spawner.py``) and
are re-exported here; the rest are the front ends' seams.
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute, Interface

from .sandbox.spawner import IJobEvents, IJobStarter

__all__ = ["IAsyBackend", "IAsyHandle", "IFrontEnd", "IJobEvents", "IJobStarter", "IRunSink"]


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

    def snapshot():
        """A JSON-able dict of the front end's state; ``failing`` (a reason)
        when it cannot serve, which turns /health not-ok."""

    def register_metrics(registry):
        """Add the front end's metrics (gauges read ``snapshot()``) to a
        prometheus_client registry."""
