"""``/health`` of a mathrun server: its status and its front ends' states."""

from __future__ import annotations

import json
from dataclasses import dataclass

import treq
from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.web.client import RequestTransmissionFailed, ResponseFailed

from .common import (
    AuthRequired,
    ClientError,
    ConnectionFailed,
    Credentials,
    basic_header,
    client_credentials,
    default_url,
    endpoint,
    http_agent,
)
from .maxima import describe


@dataclass
class Health:
    """The answer of /health: its HTTP status and the report."""

    code: int  # 200 when the server can serve, else 503
    report: dict  # the server's JSON: status, job_users, maxima, …

    @property
    def ok(self) -> bool:
        """The server can serve (200 and status ok)."""
        return self.code == 200 and self.report.get("status") == "ok"

    def summary(self) -> str:
        """One line: the status, the job users, each Maxima mother's state."""
        parts = [str(self.report.get("status", "unknown"))]
        users = self.report.get("job_users")
        if isinstance(users, dict):
            parts.append(f"job users {users.get('busy')} busy / {users.get('free')} free")
        maxima = self.report.get("maxima")
        if isinstance(maxima, dict):
            mothers = ", ".join(f"{v}: {s.get('mother')}" for v, s in maxima.items() if isinstance(s, dict))
            parts.append(f"maxima {mothers}")
        if self.report.get("error"):
            parts.append(str(self.report["error"]))
        return "; ".join(parts)


async def health(reactor, url: str | None = None, deep: bool = False, http=None, wait: float = 30,
                 credentials: Credentials | None = None, ca_file: str | None = None) -> Health:  # fmt: skip
    """The server's health; ``deep`` also runs a job in its sandbox.
    ``credentials`` (else the URL's ``user:pass@``) for a server with
    ``--auth-health``; ``ca_file`` for a self-signed https server."""
    http = http if http is not None else http_agent(reactor, ca_file)
    content = getattr(http, "content", treq.content)
    url, credentials = client_credentials(url or default_url(), credentials)
    target = endpoint(url, "/health")
    try:
        response = await http.get(target, params={"deep": "1"} if deep else None, headers=basic_header(credentials),
                                  timeout=wait, reactor=reactor)  # fmt: skip
        data = await content(response)
    except defer.CancelledError as e:
        raise ConnectionFailed(f"no answer from {target} within {wait:g} s") from e
    except (neterror.ConnectError, neterror.DNSLookupError, ResponseFailed, RequestTransmissionFailed) as e:
        raise ConnectionFailed(f"cannot reach {target}: {describe(e)}") from e
    if response.code == 401:
        raise AuthRequired(credentials is not None)
    try:
        report = json.loads(data)
    except ValueError as e:
        raise ClientError(f"{target} answered {response.code} without JSON: {data[:80]!r}") from e
    return Health(response.code, report if isinstance(report, dict) else {"status": repr(report)})
