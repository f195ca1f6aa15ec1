"""The reactor's end of the spawn server's socket: frames in and out, with
the descriptors that come and go with them (Twisted's own transports have
no place for descriptors sent with a frame)."""

from __future__ import annotations

import collections
import os
import socket

from twisted.internet import abstract, error, main, protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.python import failure
from zope.interface import implementer

from .framing import FrameError, FrameParser


@implementer(IFileDescriptorReceiver)
class SpawnProtocol(protocol.Protocol):
    """The socket side: frames in, messages to ``on_message``."""

    def __init__(self, on_message, on_lost):
        self.parser = FrameParser()
        self._on_message = on_message
        self._on_lost = on_lost

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.parser.fds_received((descriptor,))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except FrameError as e:
            for m in e.messages:
                self._on_message(m)
            self._on_lost(f"the spawn server sent a bad frame: {e}")
            self.transport.abortConnection()
            return
        for m in messages:
            self._on_message(m)

    def connectionLost(self, reason) -> None:
        self.parser.close_fds()
        self._on_lost(f"the spawn server's socket closed ({reason.getErrorMessage()})")


class SpawnSocket(abstract.FileDescriptor):
    """The reactor's end of the socket: descriptors received close-on-exec,
    descriptors sent with the first byte of their frame, and a frame goes out
    at once when nothing waits before it (no extra reactor turn per request).
    It keeps its own queue of (bytes, fds), since Twisted's buffer has no
    place for descriptors."""

    def __init__(self, reactor, sock: socket.socket, proto: SpawnProtocol):
        super().__init__(reactor)
        self.socket = sock
        self.protocol = proto
        self.connected = 1
        self._aborting = False
        self._queue: collections.deque[list] = collections.deque()  # [memoryview, fds we own]
        proto.makeConnection(self)
        self.startReading()

    def fileno(self) -> int:
        return self.socket.fileno()

    def write(self, data: bytes, fds=()) -> None:
        """Send ``data`` (and copies of ``fds``, which stay the caller's)."""
        if not self.connected or self.disconnecting or self._aborting:
            return
        if not self._queue:
            try:
                sent = socket.send_fds(self.socket, [data], fds) if fds else self.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the read side sees the end too
            if sent == len(data):
                return
            if sent:
                data, fds = data[sent:], ()
        self._queue.append([memoryview(data), [os.dup(fd) for fd in fds]])
        self.startWriting()

    def doWrite(self):
        while self._queue:
            entry = self._queue[0]
            try:
                if entry[1]:
                    sent = socket.send_fds(self.socket, [entry[0]], entry[1])
                else:
                    sent = self.socket.send(entry[0])
            except BlockingIOError:
                return None
            except OSError:
                return main.CONNECTION_LOST
            _close_all(entry[1])
            entry[1] = []
            entry[0] = entry[0][sent:]
            if entry[0]:
                return None
            self._queue.popleft()
        self.stopWriting()
        if self.disconnecting:
            return self._postLoseConnection()
        return None

    def doRead(self):
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.socket, 65536, 16, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if fds:
            self.protocol.parser.fds_received(fds)
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def abortConnection(self) -> None:
        """Drop the stream now (what is queued is not sent)."""
        if not self.connected or self._aborting:
            return
        self._aborting = True
        self.stopReading()
        self.stopWriting()
        self.reactor.callLater(0, self.connectionLost, failure.Failure(error.ConnectionAborted()))

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        while self._queue:
            _close_all(self._queue.popleft()[1])
        self.socket.close()
        self.protocol.connectionLost(reason)


def _close_all(fds) -> None:
    for fd in fds:
        os.close(fd)
