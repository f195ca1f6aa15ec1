"""Access control's pure parts: per-client counting, the --auth checkers,
the runner token.  The same against a real server: test_access.py."""

from __future__ import annotations

import base64
import os

import treq
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.cred import error, strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.python import failure
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from mathrun.asy.token import TokenError, accept, check_runner_request, presented, read_token, runner_refusal
from mathrun.options import Options
from mathrun.web.auth import AnyChecker, GuardedRoot
from mathrun.web.perclient import PerClient, PerClientProtocol, PerClientResource

from .helpers import async_test, temp_dir, within

CLIENTS = st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"])


class PerClientMachine(RuleBasedStateMachine):
    """Any interleaving of acquires and releases: the counts match what is
    held, never go below zero nor above the limit, and leave no empty entry."""

    def __init__(self):
        super().__init__()
        self.policy = PerClient(2)
        self.held: dict[str, int] = {}

    @rule(client=CLIENTS)
    def acquire(self, client):
        got = self.policy.acquire(client)
        assert got == (self.held.get(client, 0) < 2)
        if got:
            self.held[client] = self.held.get(client, 0) + 1

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def release(self, data):
        client = data.draw(st.sampled_from(sorted(c for c, n in self.held.items() if n)))
        self.policy.release(client)
        self.held[client] -= 1

    @invariant()
    def counts_match(self):
        assert self.policy.counts == {c: n for c, n in self.held.items() if n}
        assert all(0 < n <= 2 for n in self.policy.counts.values())


TestPerClientMachine = PerClientMachine.TestCase
TestPerClientMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


class Pending(resource.Resource):
    """A resource that answers later, as Maxima does."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        return server.NOT_DONE_YET


def request_from(host: str) -> DummyRequest:
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", host, 40000)
    return request


class PerClientResourceTests(unittest.TestCase):
    @given(st.lists(st.tuples(CLIENTS, st.sampled_from(["finish", "fail", "lost", "keep"])), max_size=12))
    @settings(max_examples=100, deadline=None)
    def test_released_on_every_way_out(self, script):
        """Requests end by an answer, an error or the client leaving; whatever
        the order, each address holds what is still open, and beyond the
        limit a request gets 429 and never reaches the front end."""
        inner = Pending()
        limited = PerClientResource(inner, PerClient(2))
        still_open, admitted = [], 0
        for host, end in script:
            request = request_from(host)
            body = limited.render(request)
            if body is not server.NOT_DONE_YET:
                self.assertEqual(request.responseCode, 429)
                self.assertEqual(request.responseHeaders.getRawHeaders(b"retry-after"), [b"1"])
                self.assertGreaterEqual(sum(1 for h, _ in still_open if h == host), 2)
                continue
            admitted += 1
            still_open.append((host, request))
            if end == "keep":
                continue
            if end == "finish":
                request.finish()
            else:
                request.processingFailed(failure.Failure(RuntimeError() if end == "fail" else ConnectionLost()))
            still_open.pop()
        self.assertEqual(len(inner.requests), admitted)
        expected = {}
        for host, _ in still_open:
            expected[host] = expected.get(host, 0) + 1
        self.assertEqual(limited.policy.counts, expected)


class Transport:
    def __init__(self, host):
        self.host = host

    def getPeer(self):
        return IPv4Address("TCP", self.host, 1234)


class FakeQueueProtocol:
    def onOpen(self):
        self.opened = True

    def denied(self, error):
        self.denial = error

    def onClose(self, wasClean, code, reason):
        if getattr(self, "raise_on_close", False):
            raise RuntimeError("the queue's own close failed")


class Limited(PerClientProtocol, FakeQueueProtocol):
    pass


class Factory:
    def __init__(self, limit):
        self.per_client = PerClient(limit)


class PerClientProtocolTests(unittest.TestCase):
    def connect(self, factory, host):
        p = Limited()
        p.factory, p.transport = factory, Transport(host)
        p.onOpen()
        return p

    def test_denied_beyond_the_limit_and_released_on_close(self):
        factory = Factory(1)
        first = self.connect(factory, "10.0.0.1")
        self.assertFalse(hasattr(first, "denial"))
        other = self.connect(factory, "10.0.0.2")
        second = self.connect(factory, "10.0.0.1")
        self.assertIn("too many connections from 10.0.0.1", second.denial)
        second.onClose(True, 1000, None)  # the denied one held nothing
        self.assertEqual(factory.per_client.counts, {"10.0.0.1": 1, "10.0.0.2": 1})
        first.raise_on_close = True
        self.assertRaises(RuntimeError, first.onClose, False, 1006, None)
        first.raise_on_close = False
        first.onClose(False, 1006, None)  # a second close releases nothing more
        other.onClose(True, 1000, None)
        self.assertEqual(factory.per_client.counts, {})
        self.assertFalse(hasattr(self.connect(factory, "10.0.0.1"), "denial"))


def check(checker, name, password):
    """The avatar id, or None when refused."""
    d = defer.maybeDeferred(checker.requestAvatarId, UsernamePassword(name, password))
    results = []
    d.addCallbacks(results.append, lambda f: f.trap(error.UnauthorizedLogin) and results.append(None))
    return results[0]


class CheckerTests(unittest.TestCase):
    def options(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_memory_checker_takes_basic_auths_bytes(self):
        """Twisted's memory: checker holds text; wired up plainly, the right
        password from basic auth (bytes) would be refused."""
        raw = strcred.makeChecker("memory:alice:s3cret:bob:p\u00e4ss")
        self.assertIsNone(check(raw, b"alice", b"s3cret"))  # the trap itself
        checker = AnyChecker(self.options("--auth", "memory:alice:s3cret:bob:p\u00e4ss")["credCheckers"])
        self.assertEqual(check(checker, b"alice", b"s3cret"), b"alice")
        self.assertEqual(check(checker, b"bob", "p\u00e4ss".encode()), b"bob")
        self.assertIsNone(check(checker, b"alice", b"wrong"))
        self.assertIsNone(check(checker, b"alice", b"s3cret\0"))
        self.assertIsNone(check(checker, b"carol", b"s3cret"))
        self.assertIsNone(check(checker, b"alice", b"\xff"))

    def test_file_checker_and_several_checkers(self):
        path = os.path.join(temp_dir(self), "users")
        with open(path, "wb") as f:
            f.write("stack:m00dle\ncl\u00e9ment:\u00e9t\u00e9\n".encode())
        checker = AnyChecker(self.options("--auth", f"file:{path}", "--auth", "memory:alice:s3cret")["credCheckers"])
        self.assertEqual(check(checker, b"stack", b"m00dle"), b"stack")
        self.assertEqual(check(checker, "cl\u00e9ment".encode(), "\u00e9t\u00e9".encode()), "cl\u00e9ment".encode())
        self.assertEqual(check(checker, b"alice", b"s3cret"), b"alice")  # the second --auth is asked too
        self.assertIsNone(check(checker, b"stack", b"s3cret"))

    def test_auth_in_the_configuration_file(self):
        path = os.path.join(temp_dir(self), "mathrun.ini")
        with open(path, "w") as f:
            f.write("[mathrun]\nauth = memory:alice:s3cret\n  memory:bob:b0b\nmetrics-open = true\n")
        options = self.options("--config", path)
        checker = AnyChecker(options["credCheckers"])
        self.assertEqual((check(checker, b"alice", b"s3cret"), check(checker, b"bob", b"b0b")), (b"alice", b"bob"))
        self.assertTrue(options["metrics-open"])

    def test_no_auth_no_checkers(self):
        self.assertNotIn("credCheckers", self.options())


TOKEN = b"0123456789abcdef0123"


class TokenTests(unittest.TestCase):
    def test_queue_with_the_token_is_let_in(self):
        check_runner_request({"authorization": "Bearer " + TOKEN.decode()}, TOKEN)
        check_runner_request({}, None)  # no token configured: as before

    def refusal(self, headers, token=TOKEN) -> str:
        with self.assertRaises(ConnectionDeny) as caught:
            check_runner_request(headers, token)
        self.assertEqual(caught.exception.code, 403)
        return caught.exception.reason

    def test_refusals_say_why(self):
        self.assertIn("token missing", self.refusal({}))
        self.assertIn("token missing", self.refusal({"authorization": "Basic " + TOKEN.decode()}))
        self.assertIn("token wrong", self.refusal({"authorization": "Bearer " + TOKEN.decode()[:-1]}))
        self.assertIn("token wrong", self.refusal({"authorization": "Bearer " + TOKEN.decode() + "x"}))
        origin = {"authorization": "Bearer " + TOKEN.decode(), "origin": "http://127.0.0.1:8000"}
        self.assertIn("Origin", self.refusal(origin))
        self.assertIn("Origin", self.refusal({"origin": "null"}, None))

    @given(st.binary(max_size=40))
    def test_only_the_token_itself_passes(self, given_token):
        header = {"authorization": "Bearer " + given_token.decode("latin-1")}
        try:
            check_runner_request(header, TOKEN)
        except ConnectionDeny:
            self.assertNotEqual(presented(header), TOKEN)
        else:
            self.assertEqual(presented(header), TOKEN)

    def test_token_file(self):
        directory = temp_dir(self)

        def write(name, data):
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(data)
            return path

        self.assertEqual(read_token(write("ok", TOKEN + b"\n")), TOKEN)
        for data, why in ((b"short\n", "shorter"), (b"with a blank inside it\n", "printable")):
            with self.assertRaises(TokenError) as caught:
                read_token(write("bad", data))
            self.assertIn(why, str(caught.exception))
        self.assertRaises(TokenError, read_token, os.path.join(directory, "absent"))


@implementer(ICredentialsChecker)
class LaterChecker:
    """A checker that answers on a later reactor turn (as a database would)."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        ok = (credentials.username, credentials.password) == (b"later", b"pw")
        outcome = defer.succeed(b"later") if ok else defer.fail(error.UnauthorizedLogin())
        return task.deferLater(reactor, 0.01, lambda: outcome)


class Text(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes):
        super().__init__()
        self.body = body

    def render_GET(self, request):
        return self.body


class GuardedSiteTests(unittest.TestCase):
    """GuardedRoot on a real port: checkers that answer at once and later,
    a password file that changes, a password file gone."""

    def setUp(self):
        self.users = os.path.join(temp_dir(self), "users")
        with open(self.users, "w") as f:
            f.write("stack:first\n")
        root = resource.Resource()
        root.putChild(b"health", Text(b"up"))
        root.putChild(b"maxima", Text(b"answer"))
        checkers = [strcred.makeChecker(f"file:{self.users}"), LaterChecker(), strcred.makeChecker("memory:a:b")]
        guarded = GuardedRoot(root, checkers, [b"health"])
        port = reactor.listenTCP(0, server.Site(guarded), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, path, auth=None, header=None):
        if auth:
            header = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers = {"Authorization": header} if header else {}
        response = await within(treq.get(self.url + path, headers=headers, persistent=False))
        return response.code, await within(treq.content(response))

    @async_test
    async def test_each_checker_and_path(self):
        self.assertEqual(await self.get("/health"), (200, b"up"))
        self.assertEqual((await self.get("/maxima"))[0], 401)
        for auth in (("stack", "first"), ("later", "pw"), ("a", "b")):
            self.assertEqual(await self.get("/maxima", auth), (200, b"answer"), auth)
        for header in ("Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"no-colon").decode()):
            self.assertEqual((await self.get("/maxima", header=header))[0], 401, header)
        self.assertEqual((await self.get("/maxima", ("later", "wrong")))[0], 401)

    @async_test
    async def test_password_file_changes_and_goes(self):
        self.assertEqual((await self.get("/maxima", ("stack", "first")))[0], 200)
        with open(self.users, "w") as f:
            f.write("stack:second\n")
        later = os.stat(self.users).st_mtime + 1
        os.utime(self.users, (later, later))
        self.assertEqual((await self.get("/maxima", ("stack", "first")))[0], 401)
        self.assertEqual((await self.get("/maxima", ("stack", "second")))[0], 200)
        os.unlink(self.users)
        self.assertEqual((await self.get("/maxima", ("stack", "second")))[0], 401)
        self.assertEqual((await self.get("/maxima", ("a", "b")))[0], 200)  # the next checker is still asked
        self.flushLoggedErrors(FileNotFoundError)


class Impostor(WebSocketServerProtocol):
    """Listens where a runner should be, takes any upload, knows no token."""

    def onConnect(self, request):
        return self.factory.answer

    def onMessage(self, data, isBinary):
        self.factory.received.append(data)


class RunnerProofTests(unittest.TestCase):
    def test_proof_is_bound_to_token_and_key(self):
        self.assertIsNone(accept({"sec-websocket-key": "abc"}, None))
        _, headers = accept({"sec-websocket-key": "abc"}, TOKEN)
        self.assertIsNone(runner_refusal({k.lower(): v for k, v in headers.items()}, b"abc", TOKEN))
        self.assertIsNone(runner_refusal({}, b"abc", None))  # no token: as before
        self.assertIn("no proof", runner_refusal({}, b"abc", TOKEN))
        for key, token in ((b"abd", TOKEN), (b"abc", TOKEN + b"x")):
            self.assertIn("wrong", runner_refusal({k.lower(): v for k, v in headers.items()}, key, token))

    async def impostor_gets(self, answer):
        """What a queue with the token does with a WebSocket server that
        cannot prove it: (success, error) of the task, what the server got."""
        from autobahn.twisted.websocket import WebSocketServerFactory

        from mathrun.asy.backends import RemoteBackend
        from mathrun.asy.protocol import RunOptions

        factory = WebSocketServerFactory()
        factory.protocol, factory.answer, factory.received = Impostor, answer, []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        backend = RemoteBackend(f"ws://127.0.0.1:{port.getHost().port}/", reactor, token=TOKEN)
        done = defer.Deferred()
        sink = type("Sink", (), {"complete": lambda self, ok, error, ms: done.callback((ok, error))})()
        backend.start({"main.asy": b"draw(unitcircle);"}, "main.asy", RunOptions(), sink)
        outcome = await within(done)
        await within(task.deferLater(reactor, 0.2, lambda: None))  # anything sent would have arrived
        self.assertFalse(backend.available())
        return outcome, factory.received

    @async_test
    async def test_queue_hands_no_task_to_a_runner_without_the_token(self):
        (ok, error), received = await self.impostor_gets(None)
        self.assertEqual((ok, received), (False, []))
        self.assertIn("sent no proof of the runner token", error)
        (ok, error), received = await self.impostor_gets((None, {"X-Mathrun-Runner-Proof": "00" * 32}))
        self.assertEqual((ok, received), (False, []))
        self.assertIn("proof of the runner token is wrong", error)
