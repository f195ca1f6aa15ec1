"""The Maxima mother process: started once, forks every child, restarted
with backoff when it dies (as Twisted's procmon restarts its processes).

Its stdin and stdout are the fork channel (see ext/maxima-fork.c): the
server writes ``fork TOKEN UID GID ROOT CPU FSIZE NOFILE NPROC [CGROUP...]``
lines and reads ``forked TOKEN PID`` or ``failed TOKEN MESSAGE`` back.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import AnyStr

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from ..sandbox.lines import LineSplitter
from ..sandbox.pipes import write_now
from .config import MaximaConfig
from .libraries import LibrarySet

_READY = re.compile(rb"mathrun-mother ready (\d+)")
MOTHER_NICE = 10  # as ext/maxima-fork.c sets it
MAX_LINE = 65536
STOP_GRACE = 5.0  # seconds from closing the channel to SIGKILL


class MotherUnavailable(Exception):
    """The mother is (re)starting: no child can be forked now."""


class ForkFailed(Exception):
    """The mother or the new child reported an error."""


def maxima_string(text: AnyStr) -> AnyStr:
    """A Maxima string literal, of a str or of bytes."""
    quote, backslash = ('"', "\\") if isinstance(text, str) else (b'"', b"\\")
    return quote + text.replace(backslash, backslash * 2).replace(quote, backslash + quote) + quote


def preamble(config: MaximaConfig, netns: str) -> bytes:
    """What the mother's REPL reads first: the start of the fork loop (its
    libraries are already in its core, see cores.py)."""
    labels = "t" if config.labels else "nil"
    lisp = f"(mathrun-mother:serve {maxima_string(config.fork_library)} {maxima_string(netns)} {labels})"
    return f":lisp {lisp}\n".encode()


class MotherProtocol(protocol.ProcessProtocol):
    """Frames the fork channel; ``ready`` fires with the mother's pid."""

    log = Logger()

    def __init__(self, on_ended):
        self.ready = defer.Deferred()
        self.pending: dict[str, defer.Deferred] = {}
        # A line over 64 KiB (what Maxima prints before it serves) is logged cut.
        self.lines = LineSplitter(self._line, self._line, max_length=MAX_LINE)
        self._on_ended = on_ended
        self._is_ready = False

    def outReceived(self, data: bytes) -> None:
        self.lines.dataReceived(data)

    def _line(self, line: bytes) -> None:
        words = line.split(b" ", 2)
        if self._is_ready and words[0] == b"forked" and len(words) == 3:
            d = self.pending.pop(words[1].decode(), None)
            if d is not None:
                d.callback(int(words[2]))
            return
        if words[0] == b"failed" and len(words) == 3:
            d = self.pending.pop(words[1].decode(), None)
            message = words[2].decode(errors="replace")
            if d is not None:
                d.errback(ForkFailed(message))
            else:
                self.log.error("maxima mother: {message}", message=message)
            return
        match = _READY.search(line)
        if match and not self._is_ready:
            self._is_ready = True
            self.ready.callback(int(match.group(1)))
            return
        if line.strip():
            # Whatever the mother prints before it serves.
            self.log.info("maxima mother: {line}", line=line.decode(errors="replace"))

    def errReceived(self, data: bytes) -> None:
        for line in data.decode(errors="replace").splitlines():
            if line.strip():
                self.log.warn("maxima mother (stderr): {line}", line=line)

    def processEnded(self, reason) -> None:
        # Not ready from now on: a waiting fork's errback may refill the
        # pool at once (an unprivileged cleanup is synchronous), and such a
        # fork must not be sent here, where nobody would ever answer it.
        self._is_ready = False
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(MotherUnavailable("the Maxima mother process died"))
        if not self.ready.called:
            self.ready.errback(MotherUnavailable(f"the Maxima mother process ended at start-up: {reason.value}"))
        self._on_ended(reason)


class Mother:
    """Keeps one mother process running; ``fork`` asks it for a child."""

    log = Logger()
    min_restart_delay = 1.0
    max_restart_delay = 60.0
    stable_after = 60.0  # seconds of life that reset the restart delay

    def __init__(
        self, config: MaximaConfig, reactor, netns: str = "", libraries=None, name: str = "maxima", cores=None
    ):
        """``libraries``: the LibrarySet saved into this mother's core by
        ``cores`` (a CoreCache); none: the base core."""
        self.config = config
        self.reactor = reactor
        self.netns = netns
        self.libraries = libraries if libraries is not None else LibrarySet()
        self.cores = cores
        self.name = name
        self.core: str | None = None  # the core it runs from, once known
        self.error: str | None = None  # why it cannot start (a library failed to load)
        self.pid: int | None = None
        self.restarts = 0
        self.on_ready = []  # called with no argument each time a mother is ready
        self._proto: MotherProtocol | None = None
        self._tokens = itertools.count(1)
        self._delay = self.min_restart_delay
        self._restart_call = None
        self._started_at = 0.0
        self._start_timer = None
        self._running = False
        self._hurried = False

    @property
    def ready(self) -> bool:
        """The mother serves forks now."""
        return self._proto is not None and self._proto._is_ready

    def start(self) -> None:
        """Start the mother process (and keep restarting it)."""
        self._running = True
        self._spawn()

    def stop(self) -> defer.Deferred:
        """Close the channel (the mother exits at its end) and stop restarting."""
        self._running = False
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        proto = self._proto
        if proto is None or proto.transport is None:
            return defer.succeed(None)
        ended = defer.Deferred()
        killer = self.reactor.callLater(STOP_GRACE, _kill, proto.transport)

        def on_ended(reason):
            if killer.active():
                killer.cancel()
            ended.callback(None)

        proto._on_ended = on_ended
        proto.transport.closeStdin()
        return ended

    def hurry(self, on: bool) -> None:
        """Fork at normal priority while requests wait (see MaximaPool._hurry)."""
        if on == self._hurried or self.pid is None:
            return
        self._hurried = on
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, 0 if on else MOTHER_NICE)
        except OSError:
            pass  # it has just ended

    def kill(self) -> None:
        """Kill the running mother (it is then restarted)."""
        if self._proto is not None and self._proto.transport is not None:
            _kill(self._proto.transport)

    def _spawn(self) -> None:
        self._restart_call = None
        if not self._running:
            return
        self._started_at = self.reactor.seconds()
        if self.libraries.empty or self.cores is None:
            self._spawn_from(self.config.core)
            return
        d = self.cores.core_for(self.libraries)
        d.addCallbacks(self._spawn_from, self._core_failed)

    def _core_failed(self, failure) -> None:
        """A library that does not load fails the mother, loudly; it is
        tried again (with backoff) in case the operator fixes the file."""
        if not self._running:
            return  # stopped while its core was being built
        self.error = str(failure.value)
        self.log.error("maxima mother {name} cannot start: {why}", name=self.name, why=self.error)
        self._schedule_restart()

    def _spawn_from(self, core: str) -> None:
        if not self._running:
            return
        if not os.path.exists(core):
            self.error = f"no mother core at {core}: run the set-up step"
            self.log.error("maxima: {why}", why=self.error)
            self._schedule_restart()
            return
        self.core, self.error = core, None
        proto = MotherProtocol(self._ended)
        self._proto = proto
        # LD_BIND_NOW: the mother resolves every symbol once, at its start,
        # instead of each child resolving (and copying on write the pages
        # of) those the mother never called; a child drops the variable.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent", "LD_BIND_NOW": "1"}
        argv = self.config.argv(core)
        self.reactor.spawnProcess(proto, argv[0], argv, env=env)
        proto.transport.write(preamble(self.config, self.netns))
        self._start_timer = self.reactor.callLater(self.config.start_timeout, _kill, proto.transport)
        proto.ready.addCallbacks(self._ready, lambda f: None)

    def _ready(self, pid: int) -> None:
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self.pid = pid
        self.log.info(
            "maxima mother {name} ready (pid {pid}) in {s:.2f}s",
            name=self.name,
            pid=pid,
            s=self.reactor.seconds() - self._started_at,
        )
        for callback in list(self.on_ready):
            callback()

    def _ended(self, reason) -> None:
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._proto = None
        self.pid = None
        self._hurried = False
        if not self._running:
            return
        self.log.warn("maxima mother {name} ended: {why}", name=self.name, why=reason.value)
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self.reactor.seconds() - self._started_at > self.stable_after:
            self._delay = self.min_restart_delay
        delay, self._delay = self._delay, min(self._delay * 2, self.max_restart_delay)
        self.restarts += 1
        self.log.info("maxima mother {name}: restarting in {delay:.0f}s", name=self.name, delay=delay)
        self._restart_call = self.reactor.callLater(delay, self._spawn)

    def fork(self, fields: list[str]) -> defer.Deferred:
        """Ask for a child; fires with its pid, or fails (ForkFailed,
        MotherUnavailable)."""
        if not self.ready:
            return defer.fail(MotherUnavailable("the Maxima mother process is starting"))
        token = str(next(self._tokens))
        d = defer.Deferred()
        self._proto.pending[token] = d
        write_now(self._proto.transport, ("fork " + " ".join([token] + fields) + "\n").encode())
        return d


def _kill(transport) -> None:
    """SIGKILL, unless the process has ended already."""
    try:
        transport.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass
