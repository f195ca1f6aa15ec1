"""The policy of the Asymptote queue: which task runs when, where, and for
how long.  The pure :mod:`.scheduler` decides; this module carries out its
actions on back ends and clients, and keeps clients' estimates fresh.  It
also owns the uploads (:mod:`.intake`) and the render cache
(:mod:`.render_cache`): a request rendered recently is answered from there,
without a back end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IRunSink
from . import scheduler as sched
from .cache import FileCache
from .estimate import Replay
from .intake import Intake, Request
from .protocol import RunOptions
from .render_cache import Recorder, RenderCache, render_key
from .runner import output_limit_message

# Clients this near the front hear their new place in the queue at once
# (further back, only with a new estimate): one start then sends at most
# this many messages, however long the queue.
POSITIONS_SHOWN = 10


@dataclass(frozen=True)
class QueueConfig:
    """The queue's own limits and timings (uploads, images, cache, class limits, estimates)."""

    max_upload: int = 4 << 20
    max_image: int = 32 << 20  # the images of one task together, as the runners' limit
    max_files: int = 64
    cache_bytes: int = 64 << 20
    cache_seconds: float = 600.0
    # The render cache: entries, bytes, seconds kept (0 entries: off).
    render_cache_entries: int = 256
    render_cache_bytes: int = 64 << 20
    render_cache_seconds: float = 600.0
    slow_limit: int | None = None  # default: a third of the back ends, at least 1
    medium_limit: int | None = None  # default: two thirds of the back ends, at least slow
    # Seconds between two replays of the queue for estimates: the changes of
    # a burst (1000 clients submitting at once) share one replay.
    estimate_interval: float = 0.25
    # Replay steps, then queue messages, per reactor turn: with a long
    # queue both are sliced.
    estimate_slice: int = 200


def default_limits(backends: int, config: QueueConfig) -> sched.ClassLimits:
    slow = config.slow_limit or max(1, backends // 3)
    medium = config.medium_limit or max(slow, (2 * backends) // 3)
    return sched.ClassLimits(slow=min(slow, backends), medium=min(max(medium, slow), backends), fast=backends)


@implementer(IRunSink)
class _Relay:
    """The sink of one running task: forwards to the client, tells the queue
    when the task ends."""

    def __init__(self, queue, task, key: str | None):
        self.queue, self.task, self.key = queue, task, key
        self.image_bytes = 0
        self.recorder = Recorder(queue.renders.max_entry) if key is not None else None

    def output(self, stream, data):
        if self.recorder is not None:
            self.recorder.add("output", stream, data)
        self.task.client.output(stream, data)

    def result(self, fmt, data):
        """An image; over the image limit (a back end whose own limit is
        larger), the task ends for the client as the runner would end it."""
        self.image_bytes += len(data)
        client, limit = self.task.client, self.queue.config.max_image
        if client.finished:
            return
        if self.image_bytes > limit:
            self.queue.log.warn(
                "asy task: images of {n} B, over the image limit of {limit} B", n=self.image_bytes, limit=limit
            )
            self.recorder = None
            return client.complete(False, output_limit_message(limit), 0)
        if self.recorder is not None:
            self.recorder.add("result", fmt, data)
        client.result(fmt, data)

    def complete(self, success, error, time_ms):
        if success and self.recorder is not None:
            render = self.recorder.render(time_ms)
            if render is not None:
                self.queue.renders.put(self.key, render)
        self.queue._ended(self.task)
        if not self.task.client.finished:
            self.task.client.complete(success, error, time_ms)


class AsyQueue:
    """The queue's policy: tasks from clients, run on back ends as the scheduler says."""

    log = Logger()

    def __init__(self, backends, reactor, config: QueueConfig | None = None, rng=None):
        self.backends = list(backends)
        self.reactor = reactor
        self.config = config or QueueConfig()
        self.files = FileCache(self.config.cache_bytes, self.config.cache_seconds, reactor.seconds)
        self.renders = RenderCache(
            self.config.render_cache_entries,
            self.config.render_cache_bytes,
            self.config.render_cache_seconds,
            reactor.seconds,
        )
        self.started = 0  # tasks started on a back end (a cached answer starts none)
        self.scheduler = sched.Scheduler(
            default_limits(len(self.backends), self.config), reactor.seconds, rng or random.Random()
        )
        self.tasks: dict[object, sched.Task] = {}  # client -> task
        self.requests: dict[sched.Task, tuple[Request, str | None]] = {}  # until it starts
        self.handles: dict[sched.Task, object] = {}
        self.slots: dict[sched.Task, int] = {}
        self.sent_estimates: dict[sched.Task, int] = {}
        self.sent_positions: dict[sched.Task, int] = {}
        self._position = 0  # of the client being sent its estimate
        self._timers = {}
        self._estimate_call = None
        self._last_estimate = float("-inf")
        self._replay = None  # a replay under way, in slices
        self._sending = None  # then its estimates, being sent in slices
        self._stale = False  # the queue changed since that replay began

    # -- from clients -----------------------------------------------------------
    def intake(self) -> Intake:
        """A new client's files and options, until its ``run``."""
        return Intake(self.files, self.config.max_files, self.config.max_upload)

    def run(self, client, intake: Intake) -> bool:
        """The client's ``run``: True when its task is submitted (or answered),
        False when it was asked for files again (``client.missing``)."""
        taken = intake.take()
        if isinstance(taken, list):
            client.missing(taken)
            return False
        self.submit(client, taken)
        return True

    def submit(self, client, request: Request) -> None:
        """Queue the task, or answer it from the render cache."""
        options: RunOptions = request.options
        try:
            kind = sched.task_class_for(options.timeout, options.interactive)
        except ValueError as e:
            return client.denied(str(e))
        key = None
        if not options.interactive and self.renders.enabled:
            key = render_key(request.hashes, request.main, options)
            render = self.renders.get(key)
            if render is not None:
                return self._answer_cached(client, render)
        task = sched.Task(kind, client=client)
        self.tasks[client] = task
        self.requests[task] = (request, key)
        self._apply(self.scheduler.submit(task))
        self._apply(self.scheduler.cycle())
        self._update_estimates()

    def input(self, client, data: bytes) -> None:
        task = self.tasks.get(client)
        handle = self.handles.get(task)
        if handle is not None:
            handle.write_input(data)

    def leave(self, client) -> None:
        """The client is gone: drop its task, or stop it where it runs."""
        task = self.tasks.pop(client, None)
        if task is None:
            return
        handle = self.handles.pop(task, None)
        self.slots.pop(task, None)
        self.requests.pop(task, None)
        self.sent_estimates.pop(task, None)
        self.sent_positions.pop(task, None)
        self.scheduler.cancel(task)
        if handle is not None:
            handle.abort("aborted: the client left")
        self._apply(self.scheduler.cycle())
        self._update_estimates()

    def stop(self) -> None:
        """Shutting down: no more retries of failed back ends."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._estimate_call is not None and self._estimate_call.active():
            self._estimate_call.cancel()
        self._estimate_call = self._replay = self._sending = None

    @staticmethod
    def _answer_cached(client, render) -> None:
        """What the run sent when it was rendered, as it sent it."""
        client.passed()
        for kind, name, data in render.events:
            if kind == "output":
                client.output(name, data)
            else:
                client.result(name, data)
        client.complete(True, None, render.time_ms, cached=True)

    # -- carrying out the scheduler's decisions ---------------------------------
    def _apply(self, actions) -> None:
        for action in actions or ():
            if isinstance(action, sched.Start):
                self._start(action.task, action.slot, action.timeout_ms)
            elif isinstance(action, sched.Downgrade):
                handle = self.handles.get(action.task)
                if handle is not None:
                    handle.lower_timeout(action.timeout_ms)
            elif isinstance(action, sched.Halt):
                self._halt(action.task)
            elif isinstance(action, sched.Deny):
                self.tasks.pop(action.task.client, None)
                self.requests.pop(action.task, None)
                action.task.client.denied(action.reason)

    def _start(self, task, slot: int, timeout_ms: int | None) -> None:
        client = task.client
        self.sent_estimates.pop(task, None)
        self.sent_positions.pop(task, None)
        request, key = self.requests.pop(task)
        backend = self.backends[slot]
        options = request.options
        if timeout_ms is not None:
            options = RunOptions(**{**options.__dict__, "timeout": timeout_ms})
        client.passed()
        self.slots[task] = slot
        self.started += 1
        self.handles[task] = backend.start(request.files, request.main, options, _Relay(self, task, key))
        self.log.info(
            "asy task started on {backend} ({kind}, {t} ms)", backend=backend.name, kind=task.kind.name, t=timeout_ms
        )

    def _halt(self, task) -> None:
        handle = self.handles.pop(task, None)
        self.slots.pop(task, None)
        self.tasks.pop(task.client, None)
        if handle is not None:
            handle.abort("halted to free resources")
        if not task.client.finished:
            task.client.complete(False, "Interactive session halted to free resources for queued tasks", 0)

    def _ended(self, task) -> None:
        if self.handles.pop(task, None) is None:
            return  # halted or cancelled: the scheduler knows already
        slot = self.slots.pop(task, None)
        self.tasks.pop(task.client, None)
        backend = self.backends[slot]
        if not backend.available():
            # It failed: out of rotation until it may be tried again.
            self.scheduler.disable(slot)
            if slot not in self._timers:
                delay = max(0.0, backend.down_until - self.reactor.seconds())
                self._timers[slot] = self.reactor.callLater(delay, self._enable, slot)
        self.scheduler.finished(task)
        self._apply(self.scheduler.cycle())
        self._update_estimates()

    def _enable(self, slot: int) -> None:
        del self._timers[slot]
        self.scheduler.enable(slot)
        self._apply(self.scheduler.cycle())
        self._update_estimates()

    def _update_estimates(self) -> None:
        """The queue changed: one replay soon, shared by every change until
        then, and at most one per ``estimate_interval``."""
        self._stale = True
        if self._estimate_call is not None or self._replay is not None:
            return  # one is due, or under way (then another follows it)
        delay = max(0.0, self._last_estimate + self.config.estimate_interval - self.reactor.seconds())
        self._estimate_call = self.reactor.callLater(delay, self._send_estimates)

    def _send_estimates(self) -> None:
        """Run the replay a slice at a time, then tell the waiting clients a
        slice at a time: each hears its estimate if it changed materially."""
        self._estimate_call = None
        if self._replay is None:
            self._stale = False
            self._last_estimate = self.reactor.seconds()
            self._replay = Replay(self.scheduler)
        if self._sending is None:
            if not self._replay.advance(self.config.estimate_slice):
                self._estimate_call = self.reactor.callLater(0, self._send_estimates)
                return
            self._sending = iter(self._replay.waits.items())
            self._position = 0
        if not self._send_some(self.config.estimate_slice):
            self._estimate_call = self.reactor.callLater(0, self._send_estimates)
            return
        self._replay = self._sending = None
        if self._stale:
            self._update_estimates()

    def _send_some(self, most: int) -> bool:
        """At most ``most`` queue messages; True when every client is done."""
        queue = self.scheduler.state.queue
        for task, estimate in self._sending:
            if task not in queue:
                continue  # started or gone while the replay ran
            self._position += 1
            previous = self.sent_estimates.get(task)
            moved = self._position <= POSITIONS_SHOWN and self.sent_positions.get(task) != self._position
            if previous is None or moved or sched.changed_materially(previous, estimate):
                self.sent_estimates[task] = estimate
                self.sent_positions[task] = self._position
                task.client.queued(estimate, self._position)
                most -= 1
                if most == 0:
                    return False
        return True
