"""``twistd mathrun``'s reactor: Twisted's epoll reactor without the legacy
logging context around each event.

Twisted's reactor calls every read or write through ``log.callWithLogger``,
which copies a context dict so that old-style ``log.msg`` calls made inside
get the connection's prefix as their "system": eight Python calls per event,
four events per Maxima request.  Nothing of mathrun logs through that
context (its events carry their own namespace), so the events are called
directly; an exception that escapes one is logged as callWithLogger would,
and the next event still runs.
"""

from __future__ import annotations

import errno
import sys

from twisted.internet import epollreactor
from twisted.logger import Logger

_log = Logger()


class LeanEPollReactor(epollreactor.EPollReactor):
    def doPoll(self, timeout):
        """As EPollReactor.doPoll, each event called without a log context."""
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables, do = self._selectables, self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                do(selectable, fd, event)
            except BaseException:
                _log.failure("unhandled error handling an event of {selectable!r}", selectable=selectable)

    doIteration = doPoll


def install() -> bool:
    """Install it as the reactor unless one is installed already (``twistd
    --reactor``, or a module that imported the default); True if it did."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(LeanEPollReactor())
    return True
