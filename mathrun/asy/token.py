"""The runner back end and the queue authenticate each other with a shared
token (``--asy-runner-token-file``): the queue sends
``Authorization: Bearer TOKEN`` on the WebSocket upgrade, and the runner
answers with ``X-Mathrun-Runner-Proof``, an HMAC of the upgrade's
``Sec-WebSocket-Key`` under the token, so that a queue never hands a task
to a host that merely listens at a back end's address.  A runner refuses
any browser (a request with an Origin header): only a queue talks to it.

Refusals happen at the handshake (HTTP 403 with the reason), so a refused
peer never holds the runner's one connection; Autobahn clients see the
reason as the connection's close reason.  Tokens and proofs are compared in
constant time.  Nothing else of the design's protocol changes.
"""

from __future__ import annotations

import hashlib
import hmac

from autobahn.websocket.types import ConnectionDeny

MIN_TOKEN = 16  # bytes: a token shorter than this is a mistake, not a secret
ORIGIN_HEADERS = ("origin", "sec-websocket-origin")
PROOF_HEADER = "X-Mathrun-Runner-Proof"


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


def proof(token: bytes, key: str | bytes) -> str:
    """The runner's answer to an upgrade with this Sec-WebSocket-Key."""
    key = key.encode("ascii", "replace") if isinstance(key, str) else key
    return hmac.new(token, b"mathrun asy runner " + key.strip(), hashlib.sha256).hexdigest()


def accept(headers: dict, token: bytes | None):
    """What a runner's onConnect returns once the request passed
    :func:`check_runner_request`: no subprotocol, and its proof if it has a token."""
    if token is None:
        return None
    return None, {PROOF_HEADER: proof(token, headers.get("sec-websocket-key", ""))}


def runner_refusal(response_headers: dict, key: bytes, token: bytes | None) -> str | None:
    """Why a queue must not use this runner (None: it may): with a token,
    the runner must have proved that it holds it."""
    if token is None:
        return None
    given = response_headers.get(PROOF_HEADER.lower())
    if not given:
        return "the runner sent no proof of the runner token (started without --asy-runner-token-file?)"
    if not hmac.compare_digest(given.strip().encode("ascii", "replace"), proof(token, key).encode()):
        return "the runner's proof of the runner token is wrong (another token?)"
    return None


def load_ca(ca_file: str):
    """The certificate (a self-signed server's, or a CA's) in the PEM file
    ``ca_file``; raises OSError or pyOpenSSL's error for a bad file."""
    from twisted.internet import ssl

    with open(ca_file, "rb") as f:
        return ssl.Certificate.loadPEM(f.read())


def client_tls(hostname: str, authority=None):
    """Certificate- and name-checking TLS options for a connection to
    ``hostname``, trusting ``authority`` (from :func:`load_ca`) when given,
    else the system's CAs.  Shared by the queue and ``mathrun.client``."""
    from twisted.internet import ssl

    if authority is None:
        return ssl.optionsForClientTLS(hostname)
    return ssl.optionsForClientTLS(hostname, trustRoot=authority)


def runner_tls(url: str, ca_file: str | None = None):
    """TLS options for a ``wss://`` runner (trusting ``ca_file`` when given,
    e.g. a self-signed runner's certificate, else the system's CAs); None for
    ``ws://``.  Imported only here, so that a server without TLS never loads
    pyOpenSSL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "wss":
        return None
    return client_tls(parts.hostname, None if ca_file is None else load_ca(ca_file))
