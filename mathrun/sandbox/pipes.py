"""Pipe ends of a process the reactor did not spawn, driven by the reactor.

Twisted has transports for sockets and for its own children's pipes, not for
a job's stdio pipes that came from the spawn server, nor for a FIFO a forked
Maxima child opened: these small FileDescriptors fill that gap, so that no
thread ever blocks on a child.
"""

from __future__ import annotations

import os

from twisted.internet import abstract, fdesc, main


class _Pipe(abstract.FileDescriptor):
    """One non-blocking pipe end; ``close`` drops it at once."""

    def __init__(self, reactor, fd: int, nonblocking: bool = False):
        super().__init__(reactor)
        if not nonblocking:  # (the spawn server's pipes come non-blocking)
            fdesc.setNonBlocking(fd)
        self.fd = fd
        self.connected = 1

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close now (a writer drops whatever was not written)."""
        if self.connected:
            self.stopReading()
            self.stopWriting()
            self.connectionLost(main.CONNECTION_DONE)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.connected = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PipeReader(_Pipe):
    """Calls ``on_data(bytes)`` as data comes, ``on_end()`` once at EOF or close."""

    def __init__(self, reactor, fd: int, on_data, on_end, nonblocking: bool = False):
        super().__init__(reactor, fd, nonblocking)
        self._on_data = on_data
        self._on_end = on_end

    def doRead(self):
        return fdesc.readFromFD(self.fd, self._on_data)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()


class PipeWriter(_Pipe):
    """Writes buffered data as the pipe takes it; ``loseConnection`` closes
    it once everything is written (the child then sees end of input)."""

    def writeSomeData(self, data):
        return fdesc.writeToFD(self.fd, data)


def write_now(transport, data: bytes) -> None:
    """Write to a process's stdin at once when nothing waits before it (the
    line is shorter than PIPE_BUF: all or nothing), instead of at the
    reactor's next turn: the process gets it sooner, and the write costs no
    epoll registration.  Anything else goes through the transport."""
    writer = getattr(transport, "pipes", {}).get(0)
    if (
        writer is not None
        and writer.connected
        and not writer.disconnecting
        and not (writer.dataBuffer or writer._tempDataBuffer)
        and len(data) < 4096
    ):
        try:
            os.write(writer.fd, data)
            return
        except OSError:
            pass  # full (or closed): the transport queues it (or reports the loss)
    transport.write(data)
