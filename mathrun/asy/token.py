"""The runner back end and the queue authenticate each other with a shared
token (``--asy-runner-token-file``), sent by the queue as
``Authorization: Bearer TOKEN`` on the WebSocket upgrade; and a runner
refuses any browser (a request with an Origin header), since only a queue
may talk to it.

Refusals happen at the handshake (HTTP 403 with the reason), so a refused
peer never holds the runner's one connection; Autobahn clients see the
reason as the connection's close reason.  Tokens are compared in constant
time.
"""

from __future__ import annotations

import hmac

from autobahn.websocket.types import ConnectionDeny

MIN_TOKEN = 16  # bytes: a token shorter than this is a mistake, not a secret
ORIGIN_HEADERS = ("origin", "sec-websocket-origin")


class TokenError(ValueError):
    pass


def read_token(path: str) -> bytes:
    """The token in ``path``: its first line, without surrounding blanks."""
    try:
        with open(path, "rb") as f:
            token = f.readline().strip()
    except OSError as e:
        raise TokenError(f"cannot read the runner token file {path}: {e.strerror}") from None
    if len(token) < MIN_TOKEN:
        raise TokenError(f"runner token in {path} is shorter than {MIN_TOKEN} bytes")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise TokenError(f"runner token in {path} must be printable ASCII without blanks")
    return token


def bearer(token: bytes | None) -> dict:
    """The headers a queue sends to a runner."""
    return {"Authorization": "Bearer " + token.decode("ascii")} if token else {}


def presented(headers: dict) -> bytes | None:
    """The token in an upgrade request's Authorization header, if any."""
    value = headers.get("authorization")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip().encode("utf-8", "replace")


def check_runner_request(headers: dict, token: bytes | None) -> None:
    """Raise ConnectionDeny unless a queue (no Origin, the right token when one
    is set) is connecting."""
    for name in ORIGIN_HEADERS:
        if headers.get(name):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "runner back end: browsers (an Origin header) not allowed")
    if token is None:
        return
    given = presented(headers)
    if given is None:
        raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "runner back end: runner token missing")
    if not hmac.compare_digest(given, token):
        raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "runner back end: runner token wrong")


def runner_tls(url: str, ca_file: str | None = None):
    """Certificate-checking TLS options for a ``wss://`` runner (trusting
    ``ca_file`` when given, e.g. a self-signed runner's certificate, else the
    system's CAs); None for ``ws://``.  Imported only here, so that a server
    without TLS never loads pyOpenSSL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "wss":
        return None
    from twisted.internet import ssl

    if ca_file is None:
        return ssl.optionsForClientTLS(parts.hostname)
    with open(ca_file, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(parts.hostname, trustRoot=authority)
