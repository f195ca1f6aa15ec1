"""The two named pipes of a forked child, driven by the reactor.

Twisted has transports for sockets and for its own children's pipes, not for
a FIFO a process we did not spawn opened: these two small FileDescriptors
fill that gap, so that no thread ever blocks on a child.
"""

from __future__ import annotations

import os

from twisted.internet import abstract, fdesc, main


class PipeReader(abstract.FileDescriptor):
    """Calls ``on_data(bytes)`` as data comes, ``on_end()`` once at EOF or close."""

    def __init__(self, reactor, fd: int, on_data, on_end):
        super().__init__(reactor)
        fdesc.setNonBlocking(fd)
        self.fd = fd
        self.connected = 1
        self._on_data = on_data
        self._on_end = on_end

    def fileno(self) -> int:
        return self.fd

    def doRead(self):
        return fdesc.readFromFD(self.fd, self._on_data)

    def close(self) -> None:
        if self.connected:
            self.stopReading()
            self.connectionLost(main.CONNECTION_DONE)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.connected = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()


class PipeWriter(abstract.FileDescriptor):
    """Writes buffered data as the pipe takes it; ``loseConnection`` closes
    it once everything is written (the child then sees end of input)."""

    def __init__(self, reactor, fd: int):
        super().__init__(reactor)
        fdesc.setNonBlocking(fd)
        self.fd = fd
        self.connected = 1

    def fileno(self) -> int:
        return self.fd

    def writeSomeData(self, data):
        return fdesc.writeToFD(self.fd, data)

    def close(self) -> None:
        """Close now, dropping whatever was not written."""
        if self.connected:
            self.stopWriting()
            self.connectionLost(main.CONNECTION_DONE)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.connected = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
