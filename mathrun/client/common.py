"""What the clients share: the default server, URLs of its front ends,
credentials (HTTP basic auth) and TLS trust, and the errors raised when the
server cannot be reached at all or will not let the client in."""

from __future__ import annotations

import base64
import os
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

# The server of `make run` on this machine; $MATHRUN_URL overrides it.
DEFAULT_URL = "http://127.0.0.1:8080"

Credentials = tuple[str, str]  # (user, password) for HTTP basic auth


def default_url() -> str:
    """The server's URL: the environment's, else this host's default port."""
    return os.environ.get("MATHRUN_URL") or DEFAULT_URL


class ClientError(Exception):
    """Anything that kept a request from giving an answer."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke mid-answer."""


class AuthRequired(ClientError):
    """401: the server wants credentials (``sent`` false) or refused those sent."""

    def __init__(self, sent: bool):
        self.sent = sent
        super().__init__("credentials refused" if sent else NO_CREDENTIALS)


NO_CREDENTIALS = "the server wants credentials: use --user or user:pass@ in the URL"


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its userinfo, and the user and password it held
    (percent-decoded; None when absent), so that neither reaches a message."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return urlunsplit(parts), None, None
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=host))
    return clean, unquote(user), unquote(password) if colon else None


def check_credentials(credentials: Credentials | None) -> Credentials | None:
    """Credentials basic auth can carry (a user name without ``:``), or None."""
    if credentials is None:
        return None
    user, password = credentials
    if not user:
        raise ValueError("credentials without a user name")
    if ":" in user:
        raise ValueError("a user name with ':' cannot be sent by HTTP basic auth")
    return user, password


def basic_header(credentials: Credentials | None) -> dict:
    """The ``Authorization`` header for ``credentials`` (UTF-8), or none."""
    if credentials is None:
        return {}
    token = base64.b64encode(":".join(credentials).encode("utf-8")).decode("ascii")
    return {"Authorization": "Basic " + token}


def client_credentials(url: str, credentials: Credentials | None) -> tuple[str, Credentials | None]:
    """A client's URL and credentials: ``credentials`` when given, else the URL's user:pass."""
    clean, user, password = split_url(url)
    if credentials is None and user:
        credentials = (user, password or "")
    return clean, check_credentials(credentials)


def endpoint(url: str, path: str, websocket: bool = False) -> str:
    """The URL of the front end at ``path`` ("/maxima", "/asy", "/health").

    ``url`` is the server's base URL (``http://host:8080``); a URL that
    already names a path is taken as it is, so that a proxy's path works.
    ``ws``/``wss`` are derived from ``http``/``https`` for WebSockets.  Any
    ``user:pass@`` is left out (credentials travel in a header)."""
    parts = urlsplit(split_url(url)[0])
    scheme = parts.scheme
    if websocket:
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    elif scheme in ("ws", "wss"):
        scheme = "http" if scheme == "ws" else "https"
    if scheme not in (("ws", "wss") if websocket else ("http", "https")):
        raise ValueError(f"not a server URL: {urlunsplit(parts)!r}")
    route = parts.path if parts.path not in ("", "/") else path
    return urlunsplit((scheme, parts.netloc, route, parts.query, ""))


def http_agent(reactor, ca_file: str | None = None):
    """A treq client on ``reactor`` whose https trusts ``ca_file`` (a
    self-signed server's certificate) when given, else the system's CAs."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    if ca_file is None:
        return HTTPClient(Agent(reactor))
    return HTTPClient(Agent(reactor, contextFactory=_Trust(ca_file)))


@implementer(IPolicyForHTTPS)
class _Trust:
    """An Agent's https policy: the server's name checked against a
    certificate from a file (mathrun.asy.token's, shared with the queue)."""

    def __init__(self, ca_file: str):
        from mathrun.asy.token import load_ca

        self.authority = load_ca(ca_file)

    def creatorForNetloc(self, hostname: bytes, port: int):
        from mathrun.asy.token import client_tls

        return client_tls(hostname.decode("ascii"), self.authority)


def ws_tls(url: str, ca_file: str | None = None):
    """TLS options for a ``wss://`` URL (trusting ``ca_file`` when given), None for ``ws://``."""
    from mathrun.asy.token import runner_tls

    return runner_tls(url, ca_file)
