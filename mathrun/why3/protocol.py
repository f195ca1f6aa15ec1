"""Why3's VC server line protocol: parsing requests, formatting replies, and
the line framing.  Parsing is pure and follows the C server: fields split at
every ``;`` with no escaping, numbers read like C ``atoi``, malformed or
unknown lines ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from .catoi import atoi

__all__ = ["atoi", "parse_request", "started", "finished", "Why3Protocol"]

TIME_FORMATS = {"1.5": "%.2f", "1.7": "%.6f"}
DEFAULT_TIME_FORMAT = TIME_FORMATS["1.5"]  # what Debian 12's why3server 1.5.1 writes


@dataclass(frozen=True)
class Run:
    """A ``run`` or ``runstdin`` request, as the C server reads it."""

    id: str
    timeout: int  # CPU seconds; 0: unlimited
    memlimit: int  # MiB; 0: unlimited
    cmd: str
    args: tuple[str, ...]
    stdin: str | None = None  # runstdin's file


@dataclass(frozen=True)
class Parallel:
    """A ``parallel`` request: provers run at once from now on."""

    jobs: int


@dataclass(frozen=True)
class Interrupt:
    """An ``interrupt`` request: stop one of the sender's runs."""

    id: str


def parse_request(line: str):
    """A request, or None for a line the C server would ignore."""
    fields = line.split(";")
    kind = fields[0]
    if kind in ("run", "runstdin"):
        need = 6 if kind == "runstdin" else 5
        if len(fields) < need:
            return None
        args = tuple(fields[5:])
        stdin = None
        if kind == "runstdin":
            args, stdin = args[:-1], args[-1]
        return Run(fields[1], atoi(fields[2]), atoi(fields[3]), fields[4], args, stdin)
    if kind == "parallel" and len(fields) == 2:
        jobs = atoi(fields[1])
        return Parallel(jobs) if jobs >= 1 else None
    if kind == "interrupt" and len(fields) == 2:
        return Interrupt(fields[1])
    return None


def started(id: str) -> bytes:
    return f"S;{id}\n".encode("utf-8", "surrogateescape")


def finished(
    id: str, exitcode: int, time: float, timeout: bool, path: str, time_format: str = DEFAULT_TIME_FORMAT
) -> bytes:
    return f"F;{id};{exitcode};{time_format % time};{int(timeout)};{path}\n".encode("utf-8", "surrogateescape")


class Why3Protocol(LineOnlyReceiver):
    """Frames at ``\\n`` (a ``\\r`` stays in the last field, as in the C
    server) and hands parsed requests to the factory, which owns all policy.

    A line over ``MAX_LENGTH`` is dropped up to its end with a log entry and
    the connection goes on (LineOnlyReceiver would close it, and would lose
    the lines after a long one in the same chunk: such chunks are fed to it
    one line at a time).
    """

    log = Logger()
    delimiter = b"\n"
    MAX_LENGTH = 1 << 20
    _discarding = False
    creds = None  # the peer's Credentials as root, set by the factory

    def connectionMade(self):
        self.factory.client_connected(self)

    def dataReceived(self, data: bytes):
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            data = data[end + 1 :]
            self._discarding = False
        if len(self._buffer) + len(data) <= self.MAX_LENGTH:
            super().dataReceived(data)  # no line in here can be too long
            return
        start = 0
        while start < len(data) and not self._discarding:
            end = data.find(b"\n", start)
            if end < 0:
                super().dataReceived(data[start:])
                return
            super().dataReceived(data[start : end + 1])
            start = end + 1

    def lineLengthExceeded(self, line: bytes):
        self.log.warn("why3 server: dropped a line longer than {n} bytes", n=self.MAX_LENGTH)
        if line is self._buffer:  # an unfinished line: skip the rest of it as it comes
            self._buffer = b""
            self._discarding = True

    def lineReceived(self, line: bytes):
        if getattr(self.factory, "log_queries", False):  # (--logging: the C server's log has every query)
            self.log.debug("received query {line!r}", line=line[:200])
        request = parse_request(line.decode("utf-8", "surrogateescape"))
        if request is None:
            self.log.info("why3 server: ignored line {line!r}", line=line[:200])
            return
        self.factory.request(self, request)

    def send(self, data: bytes):
        transport = self.transport
        if transport is None or transport.disconnecting:
            return
        # A line goes out at once when nothing waits before it: no reactor
        # turn (and two epoll changes) per S and F line; the rest, if the
        # socket took only part of it, through the transport's buffer.
        if getattr(transport, "_tempDataLen", 1) == 0 and len(transport.dataBuffer) == transport.offset:
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):
                data = data[sent:]
        if data:
            transport.write(data)

    def connectionLost(self, reason):
        self.factory.client_lost(self)
