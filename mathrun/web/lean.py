"""The head and form body of a plain HTTP/1.x request, parsed for the lean
channel (web/channel.py), and its answer framed: pure functions.

Only the common shape is taken: ``GET`` or ``POST``, HTTP/1.0 or 1.1, each
header once where it matters, the body's length from ``Content-Length``.
Anything else (chunked bodies, ``Expect``, folded lines, a header Twisted
would refuse) gives None, and twisted.web answers the request instead:
whatever the lean parser takes, Twisted would have parsed the same way
(tests/test_web_head.py checks that on generated requests).
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from twisted.web.http import RESPONSES
from twisted.web.http import parse_qs as parse_query_qs

MAX_HEAD = 16384  # Twisted's totalHeadersSize: a longer head is Twisted's 400
MAX_HEADERS = 500  # Twisted's maxHeaders
METHODS = (b"GET", b"POST")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
FORM = b"application/x-www-form-urlencoded"
MULTIPART = b"multipart/form-data"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Headers the lean path reads: a second copy of one is left to Twisted.
SINGLE = frozenset((b"content-length", b"content-type", b"authorization", b"connection"))
# Headers that change how the body is framed or answered: left to Twisted.
REFUSED = frozenset((b"transfer-encoding", b"expect", b"upgrade"))


class Head(NamedTuple):
    """A request's line and the headers the lean path uses (names in lower case)."""

    method: bytes
    target: bytes  # as sent: path and query
    path: bytes
    query: bytes
    version: bytes
    headers: dict
    length: int  # of the body

    @property
    def persistent(self) -> bool:
        """As Twisted's checkPersistence: HTTP/1.1 unless ``Connection: close``."""
        if self.version != b"HTTP/1.1":
            return False
        tokens = self.headers.get(b"connection", b"").lower().split(b" ")
        return b"close" not in tokens


def parse_head(data: bytes) -> Head | None:
    """The head (request line and header lines, CRLF-separated, without the
    blank line) or None when twisted.web must take the request."""
    if len(data) > MAX_HEAD:
        return None
    bare = data.replace(b"\r\n", b"")
    if b"\r" in bare or b"\n" in bare:
        return None  # a line ended otherwise than by CRLF
    lines = data.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or lines[0].split() != parts or len(lines) > MAX_HEADERS + 1:
        return None
    if parts[0] not in METHODS or parts[2] not in VERSIONS or not parts[1].startswith(b"/"):
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return None
        name = name.lower()
        value = value.strip(b" \t")
        if b"\0" in value or name in REFUSED or (name in SINGLE and name in headers):
            return None
        headers[name] = value
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or not length.isascii():
        return None
    path, _, query = parts[1].partition(b"?")
    return Head(parts[0], parts[1], path, query, parts[2], headers, int(length))


def parse_form(body: bytes) -> dict[bytes, list[bytes]]:
    """An urlencoded body's fields, bytes to bytes, as ``urllib.parse.parse_qs``
    with blank values kept, in Latin-1 (byte for byte).  urllib itself,
    handed bytes, fails on any non-ASCII character once unquoted: a body
    with ``%C3%A9`` (é) raised instead of being read."""
    fields: dict[bytes, list[bytes]] = {}
    for item in body.split(b"&"):
        if not item:
            continue
        name, _, value = item.partition(b"=")
        if b"+" in item:
            name, value = name.replace(b"+", b" "), value.replace(b"+", b" ")
        if b"%" in item:
            name, value = unquote_to_bytes(name), unquote_to_bytes(value)
        if name in fields:
            fields[name].append(value)
        else:
            fields[name] = [value]
    return fields


def form_fields(head: Head, body: bytes) -> dict[bytes, list[bytes]] | None:
    """The fields of the query string and of a form body, as twisted.web and
    BoundedRequest give them (the body's replace the query's of the same
    name); None for a multipart body that is not one."""
    fields = parse_query_qs(head.query, 1) if head.query else {}
    if not body or head.method != b"POST":
        return fields
    ctype = head.headers.get(b"content-type", b"")
    kind = ctype.split(b";", 1)[0].strip().lower()
    if kind == FORM:
        fields.update(parse_form(body))
    elif kind == MULTIPART:
        from .site import multipart_fields

        parts = multipart_fields(ctype, body)
        if parts is None:
            return None
        fields.update(parts)
    return fields


class Answer(NamedTuple):
    """A status, its body and headers; ``job``: a job ran, and its log line
    stands for the request's access-log line."""

    code: int
    content_type: bytes
    body: bytes
    headers: tuple = ()
    job: bool = False


TEXT = b"text/plain;charset=UTF-8"


def text_answer(code: int, body: str, headers: tuple = ()) -> Answer:
    return Answer(code, TEXT, body.encode(), headers)


def response_bytes(answer: Answer, version: bytes, date: bytes, persistent: bool) -> bytes:
    """The status line, headers and body, as twisted.web would send them
    (the status line in the request's version, ``Connection: close`` when
    the connection ends after it)."""
    lines = [
        b"%s %d %s" % (version, answer.code, RESPONSES.get(answer.code, b"Unknown Status")),
        b"Date: " + date,
        b"Content-Type: " + answer.content_type,
        b"Content-Length: %d" % len(answer.body),
    ]
    lines += [name + b": " + value for name, value in answer.headers]
    if not persistent:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + answer.body


def first_segment(path: bytes) -> bytes:
    """The path's first segment, as twisted.web's root looks it up (raw:
    a quoted one never matches a route, and twisted.web takes it)."""
    return path[1:].split(b"/", 1)[0]
