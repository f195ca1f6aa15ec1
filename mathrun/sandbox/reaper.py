"""The long-lived reaper (``mathrun-jail reaper``) the sandbox asks to kill
what a job user left and detach its workspace, off the reactor; and the
logger of the one line per job."""

from __future__ import annotations

import collections
import os
import time

from twisted.internet import defer, protocol
from twisted.logger import Logger, LogLevel

from .lines import LineSplitter
from .pipes import write_now

_LEVELS = frozenset(LogLevel.iterconstants())


class _JobLogger(Logger):
    """Twisted's Logger without its scan of every log level at each event
    (``LogLevel.iterconstants()`` sorts them: 7% of the why3 server's time,
    which logs one line per job)."""

    def emit(self, level, format=None, **kwargs):
        if level not in _LEVELS:
            return super().emit(level, format, **kwargs)
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time.time(),
        )
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))
        self.observer(kwargs)
        return None


class _Reaper(protocol.ProcessProtocol):
    """A long-lived ``mathrun-jail reaper``: kills every process of a job
    user on request, without a process spawn per job.  It answers each
    request in order with ``ok UID`` or ``failed UID REASON``."""

    log = Logger()

    def __init__(self):
        self.waiting: collections.deque[tuple[int, defer.Deferred]] = collections.deque()
        self.ended = defer.Deferred()
        self.lines = LineSplitter(self._line, self._unexpected)

    def reap(self, uid: int, count_file: str | None = None, unmount: str | None = None) -> defer.Deferred:
        """Kill the user's processes, then (``unmount``) detach that mount."""
        d = defer.Deferred()
        self.waiting.append((uid, d))
        line = b"%d" % uid
        if count_file:
            line += b" " + count_file.encode()
        if unmount:
            line += b" umount=" + os.fsencode(unmount)
        write_now(self.transport, line + b"\n")
        return d

    def outReceived(self, data: bytes) -> None:
        self.lines.dataReceived(data)

    def _line(self, line: bytes) -> None:
        """The reply to the oldest request, if it names that request's uid;
        anything else is logged (raising here would raise in the reactor)."""
        verdict, _, rest = line.partition(b" ")
        answered, _, reason = rest.partition(b" ")
        # "failed - bad request": the reaper could not read the request's uid.
        expected = (b"%d" % self.waiting[0][0], b"-") if self.waiting else ()
        if verdict not in (b"ok", b"failed") or answered not in expected:
            return self._unexpected(line)
        uid, d = self.waiting.popleft()
        if verdict == b"ok":
            d.callback(None)
        else:
            d.errback(RuntimeError(f"processes of uid {uid} survived the cleanup: {reason.decode(errors='replace')}"))

    def _unexpected(self, line: bytes) -> None:
        self.log.error("sandbox: unexpected line from the reaper: {line!r}", line=line)

    def processEnded(self, reason) -> None:
        waiting, self.waiting = self.waiting, collections.deque()
        for uid, d in waiting:
            d.errback(RuntimeError(f"the reaper ended before uid {uid} was cleaned up: {reason.value}"))
        self.ended.callback(None)
