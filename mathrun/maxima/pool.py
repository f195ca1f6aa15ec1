"""The pool of ready Maxima children, as goemaxima keeps it: a few forked
children wait on their pipes, each already its job user; a request takes
one, and afterwards its user's processes are killed, its workspace removed
(the sandbox's cleanup) and a new child is forked in its place.

All of that is off the request's path: a request only waits when no child
is ready, at most ``queue_wait`` seconds, behind at most ``max_waiting``
others.
"""

from __future__ import annotations

import collections

from twisted.internet import defer
from twisted.logger import Logger

from ..sandbox.result import JobResult, Status
from .child import Child
from .config import MaximaConfig
from .mother import Mother, MotherUnavailable


def job_netns(sandbox) -> str:
    """The network namespace the mother joins (and its children inherit):
    the sandbox's own; unprivileged, "unshare": each child makes a fresh
    one; empty when jobs may use the network."""
    if sandbox.config.network:
        return ""
    return sandbox.netns if sandbox.privileged else "unshare"


class PoolBusy(Exception):
    """No child became free in time, or too many requests wait already."""


class MaximaPool:
    """The ready children of one library version, the requests waiting for
    one, and the refill that forks replacements off the request's path."""

    log = Logger()
    retry_delay = 0.5  # after a failed fork, before the next try

    def __init__(
        self, sandbox, config: MaximaConfig, reactor, mother: Mother | None = None, metrics=None, child_factory=Child
    ):
        """``child_factory(reactor, lease, config)`` makes a Child (tests
        pass a fake, to drive the pool's logic without processes)."""
        self.sandbox = sandbox
        self.child_factory = child_factory
        self.config = config
        self.reactor = reactor
        if mother is None:
            mother = Mother(config, reactor, job_netns(sandbox))
        self.mother = mother
        self.metrics = metrics
        self.ready: collections.deque[Child] = collections.deque()
        self.busy: set[Child] = set()
        self.spawning = 0
        self.waiters: collections.deque[defer.Deferred] = collections.deque()
        self.spawn_failures = 0
        # Ready children hold job users: leave one to the other front ends.
        self.target = min(config.ready, max(1, sandbox.config.jobs - 1))
        if self.target < config.ready:
            self.log.warn(
                "maxima: {ready} ready children asked for, {target} kept: only {jobs} job users",
                ready=config.ready,
                target=self.target,
                jobs=sandbox.config.jobs,
            )
        self._running = False
        self._retry = None
        self._releasing: set[defer.Deferred] = set()
        self._acquiring: list[defer.Deferred] = []  # forks waiting for a job user
        self._starting: set[Child] = set()  # forked, not ready yet
        self._hurried = False
        self._retiring: dict[Child, object] = {}  # answered, cleaned up at the next turn
        mother.on_ready.append(self._mother_ready)

    # -- service ------------------------------------------------------------
    def start(self) -> None:
        """Start the mother; children are forked once it is ready."""
        self._running = True
        self.mother.start()

    async def stop(self) -> None:
        """Refuse the waiting requests, stop the mother, end every child."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        waiters, self.waiters = self.waiters, collections.deque()
        for d in waiters:
            d.errback(PoolBusy("the server is stopping"))
        await self.mother.stop()
        while self.ready:
            self._retire(self.ready.popleft())
        for child, call in list(self._retiring.items()):
            call.cancel()
            self._retire_later(child)
        for child in list(self.busy):
            if child.job is not None:
                child.job.stop(Status.CANCELLED)
        while self._releasing:
            await defer.DeferredList(list(self._releasing))

    def snapshot(self) -> dict:
        """The pool's state for /health and the gauges, read in one place."""
        mother = self.mother
        return {
            "mother": "ready" if mother.ready else ("failed" if mother.error else "starting"),
            "mother_pid": mother.pid,
            "restarts": mother.restarts,
            "ready": len(self.ready),
            "busy": len(self.busy),
            "spawning": self.spawning,
            "waiting": len(self.waiters),
            "error": mother.error,
        }

    # -- requests -------------------------------------------------------------
    def evaluate(self, text: bytes, timeout: float) -> defer.Deferred:
        """Run ``text`` in a ready child (waiting for one if need be): fires
        with the JobResult; cancelling stops the wait or the job.  Plain
        callbacks: this runs for every request."""
        if self.sandbox.refusal is not None:
            return defer.succeed(JobResult(Status.INTERNAL_ERROR, detail=self.sandbox.refusal))
        if self.ready:  # the common case: no Deferred for the take
            try:
                return self._run(self._take_ready(), text, timeout, self.reactor.seconds())
            except Exception:
                return defer.fail()
        return self._take().addCallback(self._run, text, timeout, self.reactor.seconds())

    def _run(self, child: Child, text: bytes, timeout: float, asked: float) -> defer.Deferred:
        if child.state != "ready":  # it died just now
            self._retire(child)
            return self._take().addCallback(self._run, text, timeout, asked)
        if self.metrics:
            self.metrics.queue_wait.observe(self.reactor.seconds() - asked)
        self.busy.add(child)

        def done(result):
            # The answer first (the front end's callbacks come next in this
            # chain), the cleanup at the reactor's next turn.
            self.busy.discard(child)
            self._retiring[child] = self.reactor.callLater(0, self._retire_later, child)
            return result

        try:
            d = child.evaluate(text, timeout)
        except BaseException:
            done(None)
            raise
        return d.addBoth(done)

    def _take_ready(self) -> Child:
        child = self.ready.popleft()
        if not self.ready:
            # The last one: its replacement starts now, if a job user is
            # free (else after this job's cleanup, which costs the
            # running job no CPU).
            self._refill()
        return child

    def _take(self) -> defer.Deferred:
        if self.ready:
            return defer.succeed(self._take_ready())
        if not self._running:
            return defer.fail(PoolBusy("the server is stopping"))
        if len(self.waiters) >= self.config.max_waiting:
            return defer.fail(PoolBusy(f"{len(self.waiters)} requests are already waiting for Maxima"))
        d = defer.Deferred(self._gave_up)
        self.waiters.append(d)
        self._hurry(True)
        self._refill()
        d.addTimeout(self.config.queue_wait, self.reactor)

        def busy(failure):
            failure.trap(defer.TimeoutError)
            why = "the Maxima mother process is restarting" if not self.mother.ready else "all Maxima children are busy"
            raise PoolBusy(f"no Maxima child within {self.config.queue_wait:g}s: {why}")

        return d.addErrback(busy)

    def _gave_up(self, waiter: defer.Deferred) -> None:
        """A request stopped waiting (timeout, client gone): the fork it
        asked for, if still waiting for a job user, is not needed."""
        self.waiters.remove(waiter)
        if not self.waiters:
            self._hurry(False)
        while self._wanted() < 0 and self._acquiring:
            self._acquiring.pop().cancel()

    # -- children ---------------------------------------------------------------
    def _wanted(self) -> int:
        return self.target + len(self.waiters) - len(self.ready) - self.spawning

    def _refill(self) -> None:
        if self._retry is not None and self._retry.active():
            return
        while self._running and self.mother.ready and self._wanted() > 0 and self.sandbox.refusal is None:
            self.spawning += 1
            try:
                d = self._spawn()
            except BaseException:
                d = defer.fail()
            d.addBoth(self._spawned)

    def _spawn(self) -> defer.Deferred:
        """A job user, a fork into it, its readiness: a Deferred firing with
        the ready Child.  Plain callbacks, not a coroutine: this runs for
        every request."""
        lease = self.sandbox.try_acquire(self.config.workspace_bytes)
        if lease is not None:  # the common case: no Deferred for the job user
            return self._fork(lease)
        acquiring = self.sandbox.acquire(self.config.workspace_bytes)
        if not acquiring.called:
            self._acquiring.append(acquiring)
            acquiring.addBoth(self._acquired, acquiring)
        return acquiring.addCallback(self._fork)

    def _acquired(self, result, acquiring: defer.Deferred):
        if acquiring in self._acquiring:
            self._acquiring.remove(acquiring)
        return result

    def _fork(self, lease) -> defer.Deferred:
        # The mother forks the child, not the jail: reap the user at release.
        lease.external_processes = True
        started = self.reactor.seconds()
        child = self.child_factory(self.reactor, lease, self.config)

        def forked(pid: int) -> defer.Deferred:
            child.forked(pid)
            if self.waiters:
                child.hurry()
            self._starting.add(child)
            return child.ready.addTimeout(self.config.spawn_timeout, self.reactor)

        def ready(_) -> Child:
            self._starting.discard(child)
            if self.metrics:
                self.metrics.spawn.observe(self.reactor.seconds() - started)
            return child

        def failed(failure):
            self._starting.discard(child)
            self._retire(child)
            return failure

        try:
            child.prepare()
            d = self.mother.fork(child.fork_fields())
        except BaseException:
            self._retire(child)
            raise
        return d.addCallback(forked).addCallbacks(ready, failed)

    def _spawned(self, result) -> None:
        self.spawning -= 1
        if isinstance(result, defer.Failure):
            self._spawn_failed(result)
            return
        child = result
        self.spawn_failures = 0
        child.on_death = self._died
        if not self._running or (not self.waiters and len(self.ready) >= self.target):
            # Forked for requests that have given up meanwhile.
            self._retire(child)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.called:
                waiter.callback(child)
                break
        else:
            self.ready.append(child)
        if not self.waiters:
            self._hurry(False)
        self._refill()

    def _mother_ready(self) -> None:
        """A (re)started mother runs niced: hurry it if requests wait already."""
        self._hurried = False
        if self.waiters:
            self._hurry(True)
        self._refill()

    def _hurry(self, on: bool) -> None:
        """Forks and starting children run niced (background work, a running
        job goes first) unless a request waits for them: then they are on
        its path, and on a host busy with other work a nice-10 start could
        take a second."""
        if on != self._hurried:
            self._hurried = on
            self.mother.hurry(on)
        if on:
            for child in self._starting:
                child.hurry()

    def _spawn_failed(self, failure) -> None:
        if failure.check(MotherUnavailable, defer.CancelledError):
            return  # the mother's next start refills; or no longer wanted
        self.spawn_failures += 1
        self.log.failure("maxima: forking a child failed", failure)
        if self.spawn_failures >= 3 and self.mother.ready:
            self.log.error("maxima: 3 forks in a row failed: restarting the mother")
            self.mother.kill()
        self._retry = self.reactor.callLater(self.retry_delay, self._after_retry_delay)

    def _after_retry_delay(self) -> None:
        self._retry = None
        self._refill()

    def _died(self, child: Child) -> None:
        """A ready child ended while waiting (someone killed it)."""
        if child in self.ready:
            self.ready.remove(child)
        self._retire(child)

    def _retire_later(self, child: Child) -> None:
        del self._retiring[child]
        self._retire(child)

    def _retire(self, child: Child) -> None:
        """Kill everything of the child's user and remove its workspace
        (in the background), then fork a replacement."""
        child.close()
        child.kill()
        # The user's cleanup once the child has ended: its first count is then 0.
        d = child.exited().addCallback(lambda _: child.lease.release())
        self._releasing.add(d)

        def released(result):
            self._releasing.discard(d)
            if isinstance(result, defer.Failure):
                self.log.failure("maxima: cleaning up after a child failed", result)
            self._refill()

        d.addBoth(released)
