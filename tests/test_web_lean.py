"""The lean channel's parsing (web/lean.py) against twisted.web's on
generated requests, and the channel itself (web/channel.py) on a
StringTransport: keep-alive, pipelining, the hand-over to twisted.web,
413, auth, per-client limits, a client that goes away, the access log."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, quote, quote_plus

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from twisted.web import resource

from mathrun.web.auth import GuardedRoot
from mathrun.web.channel import LeanChannel, Route
from mathrun.web.lean import Answer, Head, form_fields, parse_form, parse_head, response_bytes, text_answer
from mathrun.web.perclient import PerClient
from mathrun.web.site import BoundedRequest, Site

PEER = IPv4Address("TCP", "10.1.2.3", 4567)


class Recorder(resource.Resource):
    """twisted.web's view of a request, for comparison; answers "web"."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render(self, request):
        request.content.seek(0)
        request.body = request.content.read()  # (gone once answered)
        self.seen.append(request)
        request.setHeader(b"Content-Type", b"text/plain")
        return b"web"


def twisted_parse(data: bytes):
    """The request twisted.web (with BoundedRequest's form parsing) makes of
    ``data``, or None if it refused it."""
    recorder = Recorder()
    site = Site(recorder, parsePOSTFormSubmission=False, reactor=MemoryReactorClock())
    site.requestFactory = BoundedRequest
    channel = site.buildProtocol(PEER)
    channel.makeConnection(StringTransport(peerAddress=PEER))
    channel.dataReceived(data)
    return recorder.seen[0] if recorder.seen else None


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
fields = st.dictionaries(text.filter(bool), text, max_size=4)
token = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=10
)
value = st.text("abc xyz=;,/\t0123456789\"'", max_size=16).map(lambda v: v.strip(" \t"))


@st.composite
def requests(draw):
    """A well-formed request as STACK or curl would send it: (bytes, query, body fields)."""
    method = draw(st.sampled_from([b"GET", b"POST"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    path = b"/maxima" + draw(st.sampled_from([b"", b"/", b"/x/y"]))
    query = draw(fields)
    target = path + (b"?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()).encode() if query else b"")
    headers = [(n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(token, value), max_size=4))]
    headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"content-type", b"connection")]
    headers = [(n, v) for n, v in headers if n.lower() not in (b"transfer-encoding", b"expect", b"upgrade", b"host")]
    body_fields = draw(fields)
    body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in body_fields.items()).encode()
    name = draw(st.sampled_from([b"Content-Type", b"content-type", b"CONTENT-TYPE"]))
    headers.append((name, b"application/x-www-form-urlencoded"))
    headers.append((b"Content-Length", b"%d" % len(body)))
    head = b"\r\n".join([b" ".join([method, target, version])] + [n + b": " + v for n, v in headers])
    return head, body


def as_text(args: dict) -> dict:
    return {k: sorted(v) for k, v in args.items()}


def mostly(good: list, alphabet: str):
    """One of ``good`` three times in four, else a short text of ``alphabet``."""
    kind = bytes if isinstance(good[0], bytes) else str
    other = st.text(alphabet, max_size=20).map(lambda t: t.encode() if kind is bytes else t)
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), other)


class ParsingTests(unittest.SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(requests())
    def test_fields_are_twisted_webs(self, request):
        head_bytes, body = request
        head = parse_head(head_bytes)
        self.assertIsNotNone(head)
        seen = twisted_parse(head_bytes + b"\r\n\r\n" + body)
        self.assertIsNotNone(seen)
        self.assertEqual((head.method, head.target, head.version), (seen.method, seen.uri, seen.clientproto))
        self.assertEqual(head.length, len(body))
        self.assertEqual(as_text(form_fields(head, body)), as_text(seen.args))

    @settings(max_examples=1000, deadline=None)
    @given(
        mostly([b"POST /maxima HTTP/1.1", b"GET /m?a=1 HTTP/1.0", b"GET /x HTTP/1.1"], "GETPOS /m?a= HTP1.0\t\r"),
        st.lists(
            st.tuples(
                mostly(["Content-Length", "content-type", "X-y", "Connection"], "ab- :\t\0"),
                mostly([":", ": ", ":\t", ":  "], " :\t\r"),
                mostly(["3", "close", "x", "0 ", "a b"], "a1 \t\0\r:+-"),
            ),
            max_size=4,
        ),
        mostly([b"\r\n"], "\r\n"),
    )
    def test_whatever_it_takes_twisted_parses_alike(self, line, headers, newline):
        """Any head: if the lean parser takes it, twisted.web parses the same
        request line, the same header values and the same body length."""
        data = newline.join([line] + [(n + sep + v).encode() for n, sep, v in headers])
        head = parse_head(data)
        event(f"taken: {head is not None}")
        if head is None or head.length >= 100:
            return  # left to twisted.web: nothing to compare
        seen = twisted_parse(data + b"\r\n\r\n" + b"b" * head.length)
        self.assertIsNotNone(seen, data)
        self.assertEqual((head.method, head.target, head.version), (seen.method, seen.uri, seen.clientproto))
        for name, got in head.headers.items():
            self.assertEqual(seen.requestHeaders.getRawHeaders(name)[-1], got, data)
        self.assertEqual(seen.body, b"b" * head.length)

    @given(st.binary(max_size=40) | st.text("ab=&+%2BC3A9;", max_size=40).map(str.encode))
    def test_form_bodies_as_urllib_reads_them_in_latin_1(self, body):
        oracle = parse_qs(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        expected = {k.encode("latin-1"): [v.encode("latin-1") for v in vs] for k, vs in oracle.items()}
        self.assertEqual(parse_form(body), expected)

    def test_non_ascii_fields(self):
        """urllib handed bytes raised on these (STACK sends UTF-8)."""
        self.assertEqual(
            parse_form(b"input=%C3%A9+1%3B&x=\xc3\xa9"), {b"input": ["é 1;".encode()], b"x": ["é".encode()]}
        )

    def test_left_to_twisted(self):
        for data in (
            b"POST /maxima HTTP/1.1\r\nTransfer-Encoding: chunked",
            b"POST /maxima HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3",
            b"POST /maxima HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3",
            b"POST /maxima HTTP/1.1\r\nContent-Length: +3",
            b"HEAD /maxima HTTP/1.1",
            b"GET /maxima HTTP/2.0",
            b"GET  /maxima HTTP/1.1",
            b"GET /maxima HTTP/1.1\r\n folded: line",
            b"GET /maxima HTTP/1.1\nX: bare newline",
            b"GET maxima HTTP/1.1",
        ):
            self.assertIsNone(parse_head(data), data)

    def test_persistence_as_twisted(self):
        cases = {b"HTTP/1.1": True, b"HTTP/1.0": False}
        for version, persistent in cases.items():
            self.assertEqual(parse_head(b"GET /maxima " + version).persistent, persistent)
        self.assertFalse(parse_head(b"GET /maxima HTTP/1.1\r\nConnection: Close").persistent)
        self.assertTrue(parse_head(b"GET /maxima HTTP/1.1\r\nConnection: keep-alive").persistent)

    def test_response_bytes(self):
        answer = text_answer(503, "busy\n", ((b"Retry-After", b"3"),))
        self.assertEqual(
            response_bytes(answer, b"HTTP/1.1", b"D", False),
            b"HTTP/1.1 503 Service Unavailable\r\nDate: D\r\nContent-Type: text/plain;charset=UTF-8\r\n"
            b"Content-Length: 5\r\nRetry-After: 3\r\nConnection: close\r\n\r\nbusy\n",
        )


class Handler:
    """Answers each request with its fields, at once or when the test says."""

    def __init__(self, later=False):
        self.later = later
        self.calls = []
        self.pending = []
        self.cancelled = []

    def answer(self, fields, method):
        self.calls.append((method, fields))
        body = b"%s %r" % (method, sorted(fields.items()))
        if not self.later:
            return Answer(200, b"text/plain", body, job=True)
        d = defer.Deferred(self.cancelled.append)
        self.pending.append((d, Answer(200, b"text/plain", body, job=True)))
        return d

    def finish(self):
        d, answer = self.pending.pop(0)
        d.callback(answer)


def post(body: bytes = b"input=1", extra: bytes = b"", path: bytes = b"/maxima") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


class ChannelTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.web = Recorder()
        self.handler = Handler()
        self.policy = None

    def connect(self, root=None, peer=PEER):
        site = Site(root or self.web, parsePOSTFormSubmission=False, reactor=self.clock)
        site.requestFactory = BoundedRequest
        site.max_body = 100
        site.lean_routes = {b"maxima": Route(self.handler, self.policy, 2)}
        site.startFactory()
        site.logFile = self.log = io.StringIO()
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def test_keep_alive_and_pipelining_in_order(self):
        self.handler.later = True
        channel, transport = self.connect()
        channel.dataReceived(post(b"input=1") + post(b"input=2"))
        self.assertEqual(len(self.handler.calls), 1)  # one at a time
        self.handler.finish()
        self.assertEqual(len(self.handler.calls), 2)
        self.handler.finish()
        out = transport.value()
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 2)
        self.assertLess(out.index(b"'1'"), out.index(b"'2'"))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.log.getvalue(), "")  # a job's log line stands for these

    def test_connection_close_and_http_1_0_end_the_connection(self):
        for extra, request in ((b"Connection: close\r\n", None), (b"", b"POST /maxima HTTP/1.0\r\n\r\n")):
            channel, transport = self.connect()
            channel.dataReceived(request or post(extra=extra))
            self.assertIn(b"Connection: close\r\n", transport.value())
            self.assertTrue(transport.disconnecting)

    def test_a_body_in_pieces(self):
        channel, transport = self.connect()
        data = post(b"input=x%2By&timeout=5")
        for i in range(len(data)):
            channel.dataReceived(data[i : i + 1])
        self.assertEqual(self.handler.calls, [(b"POST", {b"input": [b"x+y"], b"timeout": [b"5"]})])

    def test_a_large_body_in_many_pieces_then_the_next_request(self):
        channel, transport = self.connect()
        channel.site.max_body = 1 << 20
        value = b"x" * 500_000
        data = post(b"input=" + value) + post(b"input=next")
        for i in range(0, len(data), 1000):
            channel.dataReceived(data[i : i + 1000])
        self.assertEqual([f[b"input"] for _, f in self.handler.calls], [[value], [b"next"]])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)

    def test_other_requests_are_twisted_webs_on_the_same_connection(self):
        channel, transport = self.connect()
        channel.dataReceived(post() + b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(len(self.handler.calls), 1)
        self.assertEqual([r.uri for r in self.web.seen], [b"/health"])
        # From then on twisted.web has the connection, /maxima included.
        channel.dataReceived(post(b"input=2"))
        self.assertEqual(len(self.handler.calls), 1)
        self.assertEqual([r.uri for r in self.web.seen], [b"/health", b"/maxima"])
        self.assertIn(b"Server: TwistedWeb", transport.value())

    def test_chunked_and_expect_go_to_twisted_web(self):
        for extra in (b"Expect: 100-continue\r\n", b"Transfer-Encoding: chunked\r\n"):
            channel, transport = self.connect()
            head = b"POST /maxima HTTP/1.1\r\nHost: h\r\n" + extra
            body = b"3\r\nabc\r\n0\r\n\r\n" if b"chunked" in extra else b"Content-Length: 3\r\n\r\nabc"
            channel.dataReceived(head + (b"\r\n" if b"chunked" in extra else b"") + body)
            self.assertEqual(self.handler.calls, [])
            self.assertEqual(self.web.seen[-1].body, b"abc")

    def test_a_body_too_large_is_413_and_the_end(self):
        channel, transport = self.connect()
        channel.dataReceived(post(b"x" * 101))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertIn(b"at most 100", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.handler.calls, [])
        self.assertIn('"POST /maxima HTTP/1.1" 413', self.log.getvalue())

    def test_a_client_gone_cancels_its_request(self):
        self.handler.later = True
        channel, transport = self.connect()
        channel.dataReceived(post())
        ((d, _),) = self.handler.pending
        channel.connectionLost(None)
        self.assertEqual(self.handler.cancelled, [d])
        self.assertEqual(transport.value(), b"")

    def test_a_failing_handler_is_500_and_the_end(self):
        self.handler.later = True
        channel, transport = self.connect()
        channel.dataReceived(post())
        self.handler.pending[0][0].errback(RuntimeError("broken"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_basic_auth(self):
        checker = InMemoryUsernamePasswordDatabaseDontUse(stack="secret")
        channel, transport = self.connect(GuardedRoot(self.web, [checker]))
        channel.dataReceived(post())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))
        self.assertIn(b'WWW-Authenticate: basic realm="mathrun"\r\n', transport.value())
        self.assertEqual(self.handler.calls, [])
        self.assertIn('"POST /maxima HTTP/1.1" 401', self.log.getvalue())
        transport.clear()
        channel.dataReceived(post(extra=b"Authorization: Basic c3RhY2s6c2VjcmV0\r\n"))  # stack:secret
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(len(self.handler.calls), 1)

    def test_per_client_limit_is_429_with_retry_after(self):
        self.handler.later = True
        self.policy = PerClient(1)
        first, _ = self.connect()
        second, transport = self.connect()
        first.dataReceived(post())
        second.dataReceived(post())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 "))
        self.assertIn(b"Retry-After: 2\r\n", transport.value())
        self.assertEqual(len(self.handler.calls), 1)
        self.handler.finish()
        self.assertEqual(self.policy.held(PEER.host), 0)  # released with the answer
        other, transport = self.connect(peer=IPv4Address("TCP", "10.9.9.9", 1))
        other.dataReceived(post())
        self.assertEqual(len(self.handler.calls), 2)

    def test_answers_without_a_job_are_logged(self):
        self.handler.answer = lambda fields, method: text_answer(400, "bad\n")
        channel, transport = self.connect()
        channel.dataReceived(post(extra=b"User-Agent: moodle\r\n"))
        self.assertRegex(self.log.getvalue(), r'^"10.1.2.3" - - \[.*\] "POST /maxima HTTP/1.1" 400 4 "-" "moodle"\n$')

    def test_head_is_a_named_tuple_of_the_request(self):
        head = parse_head(b"POST /maxima?a=b HTTP/1.1\r\nContent-Length: 0")
        self.assertEqual(head, Head(b"POST", b"/maxima?a=b", b"/maxima", b"a=b", b"HTTP/1.1", head.headers, 0))
        self.assertEqual(form_fields(head, b""), {b"a": [b"b"]})


class SiteRoutesTests(unittest.SynchronousTestCase):
    def test_build_site_routes_the_front_ends_handlers(self):
        from mathrun.web.perclient import limit_maxima
        from mathrun.web.site import build_site

        class Front(resource.Resource):
            isLeaf = True
            handler = Handler()

        front = limit_maxima(Front(), 3)
        site = build_site(None, None, [("maxima", front), ("other", Recorder())])
        self.assertEqual(list(site.lean_routes), [b"maxima"])
        self.assertIs(site.lean_routes[b"maxima"].policy, front.policy)
        self.assertEqual(build_site(None, None, [("maxima", front)], lean=False).lean_routes, {})
        self.assertNotIsInstance(build_site(None, None, []).buildProtocol(PEER), LeanChannel)
