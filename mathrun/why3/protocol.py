"""Why3's VC server line protocol: parsing requests, formatting replies, and
the line framing.  Parsing is pure and follows the C server: fields split at
every ``;`` with no escaping, numbers read like C ``atoi``, malformed or
unknown lines ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.internet import protocol
from twisted.logger import Logger

TIME_FORMATS = {"1.5": "%.2f", "1.7": "%.6f"}


def atoi(text: str) -> int:
    """glibc ``atoi``: optional blanks and sign, then digits, anything else
    stops; ``strtol``'s saturation, then the cast to ``int``."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if not m:
        return 0
    value = max(-(2**63), min(2**63 - 1, int(m.group(1))))
    return (value + 2**31) % 2**32 - 2**31


@dataclass(frozen=True)
class Run:
    id: str
    timeout: int  # CPU seconds; 0: unlimited
    memlimit: int  # MiB; 0: unlimited
    cmd: str
    args: tuple[str, ...]
    stdin: str | None = None  # runstdin's file


@dataclass(frozen=True)
class Parallel:
    jobs: int


@dataclass(frozen=True)
class Interrupt:
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
    return f"S;{id}\n".encode()


def finished(id: str, exitcode: int, time: float, timeout: bool, path: str, time_format: str = "%.2f") -> bytes:
    return f"F;{id};{exitcode};{time_format % time};{int(timeout)};{path}\n".encode()


class Why3Protocol(protocol.Protocol):
    """Splits the stream at ``\\n`` (a ``\\r`` stays in the last field, as in
    the C server); an over-long line is dropped up to its end, with a log
    entry, and the connection goes on."""

    log = Logger()
    max_line = 1 << 20

    def connectionMade(self):
        self._buffer = b""
        self._discarding = False
        self.factory.client_connected(self)

    def dataReceived(self, data: bytes):
        self._buffer += data
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                if len(self._buffer) > self.max_line:
                    self._discard()
                    self._buffer = b""
                return
            self._buffer = rest
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_line:
                self._discard()
                self._discarding = False
                continue
            self.lineReceived(line)

    def _discard(self):
        if not self._discarding:
            self.log.warn("why3 server: dropped a line longer than {n} bytes", n=self.max_line)
        self._discarding = True

    def lineReceived(self, line: bytes):
        request = parse_request(line.decode("utf-8", "surrogateescape"))
        if request is None:
            self.log.info("why3 server: ignored line {line!r}", line=line[:200])
            return
        self.factory.request(self, request)

    def send(self, data: bytes):
        if self.transport is not None and not self.transport.disconnecting:
            self.transport.write(data)

    def connectionLost(self, reason):
        self.factory.client_lost(self)
