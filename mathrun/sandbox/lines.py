"""Lines out of a child process's stdout, by Twisted's ``LineReceiver``
(fed from ``outReceived``, as procmon's ``LoggingProtocol`` does), for the
helpers that answer a line per request: the reaper and the Maxima mother."""

from __future__ import annotations

from collections.abc import Callable

from twisted.protocols import basic


class _NoTransport:
    """What ``LineReceiver`` asks of a transport: never disconnecting (the
    process protocol owns the real one)."""

    disconnecting = False

    def loseConnection(self) -> None:
        """A line too long is the owner's business, not a reason to hang up."""


class LineSplitter(basic.LineReceiver):
    """``on_line(line)`` for each ``\\n``-ended line; a line longer than
    ``max_length`` goes to ``on_overlong`` (cut to ``max_length``) and the
    lines after it are still delivered."""

    delimiter = b"\n"

    def __init__(self, on_line: Callable[[bytes], None], on_overlong: Callable[[bytes], None], max_length: int = 16384):
        self.on_line = on_line
        self.on_overlong = on_overlong
        self.MAX_LENGTH = max_length
        self._rest = b""
        self.makeConnection(_NoTransport())

    def dataReceived(self, data: bytes) -> None:
        """Feed stdout's bytes; what follows an overlong line is fed again."""
        super().dataReceived(data)
        while self._rest:
            rest, self._rest = self._rest, b""
            super().dataReceived(rest)

    def lineReceived(self, line: bytes) -> None:
        self.on_line(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """LineReceiver hands over the long line with everything after it."""
        head, _, self._rest = line.partition(self.delimiter)
        self.on_overlong(head[: self.MAX_LENGTH])
