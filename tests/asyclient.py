"""A WebSocket client for the Asymptote runner and queue, for tests and benches."""

from __future__ import annotations

import hashlib
import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer


class Session(WebSocketClientProtocol):
    """Sends a script of messages, collects ``(verb, body, payload)`` replies."""

    def onOpen(self):
        self.factory.opened.callback(self)

    def send(self, verb, body=None, payload=None):
        text = verb if body is None else f"{verb} {json.dumps(body)}"
        self.sendMessage(text.encode(), isBinary=False)
        if payload is not None:
            self.sendMessage(payload, isBinary=True)

    def add(self, name, data, main=False, hashed=False, restore=False):
        body = {"filename": name, "main": main}
        if hashed or restore:
            body["hash"] = hashlib.sha256(data).hexdigest()
        if restore:
            body["restore"] = True
            self.send("add", body)
        else:
            self.send("add", body, data)

    def onMessage(self, data, isBinary):
        if isBinary:
            verb, body, _ = self.factory.received[-1]
            self.factory.received[-1] = (verb, body, data)
            return
        verb, _, rest = data.decode().partition(" ")
        self.factory.received.append((verb, json.loads(rest) if rest else None, None))
        for waiter in list(self.factory.waiters):
            if waiter[0] == verb:
                self.factory.waiters.remove(waiter)
                waiter[1].callback(self.factory.received[-1])

    def wait_for(self, verb) -> defer.Deferred:
        for message in self.factory.received:
            if message[0] == verb:
                return defer.succeed(message)
        d = defer.Deferred()
        self.factory.waiters.append((verb, d))
        return d

    def onClose(self, wasClean, code, reason):
        self.factory.close_reason = (code, reason)
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"refused: {code} {reason}"))
        self.factory.closed.callback(self.factory.received)


def connect(url: str, reactor=None):
    """(factory, Deferred firing with the Session once open)."""
    factory = WebSocketClientFactory(url)
    factory.protocol = Session
    factory.received = []
    factory.waiters = []
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    factory.setProtocolOptions(openHandshakeTimeout=10)
    connectWS(factory)
    return factory


def messages(received, verb):
    return [m for m in received if m[0] == verb]


def serve_queue(testcase, backends, max_upload: int = 10_000):
    """An AsyQueue over ``backends`` behind a QueueFactory on an ephemeral
    port (limits as a server sets them); (queue, its ws:// URL)."""
    from twisted.internet import reactor

    from mathrun.asy.queue import AsyQueue, QueueConfig
    from mathrun.asy.queue_ws import QueueFactory
    from mathrun.asy.runner_ws import limit_websocket

    queue = AsyQueue(backends, reactor, QueueConfig(max_upload=max_upload))
    testcase.addCleanup(queue.stop)
    factory = QueueFactory(queue, "ws://127.0.0.1/asy")
    limit_websocket(factory, 20_000, ["*"], 16)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return queue, f"ws://127.0.0.1:{port.getHost().port}/asy"
