"""What the clients share: the default server, URLs of its front ends, and
the error raised when the server cannot be reached at all."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

# The server of `make run` on this machine; $MATHRUN_URL overrides it.
DEFAULT_URL = "http://127.0.0.1:8080"


def default_url() -> str:
    """The server's URL: the environment's, else this host's default port."""
    return os.environ.get("MATHRUN_URL") or DEFAULT_URL


class ClientError(Exception):
    """Anything that kept a request from giving an answer."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke mid-answer."""


def endpoint(url: str, path: str, websocket: bool = False) -> str:
    """The URL of the front end at ``path`` ("/maxima", "/asy", "/health").

    ``url`` is the server's base URL (``http://host:8080``); a URL that
    already names a path is taken as it is, so that a proxy's path works.
    ``ws``/``wss`` are derived from ``http``/``https`` for WebSockets."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = parts.scheme
    if websocket:
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    elif scheme in ("ws", "wss"):
        scheme = "http" if scheme == "ws" else "https"
    if scheme not in (("ws", "wss") if websocket else ("http", "https")):
        raise ValueError(f"not a server URL: {url!r}")
    route = parts.path if parts.path not in ("", "/") else path
    return urlunsplit((scheme, parts.netloc, route, parts.query, ""))
