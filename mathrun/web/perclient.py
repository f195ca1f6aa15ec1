"""At most N things at once per client address: Maxima requests (429) and
Asymptote connections (the queue's ``denied``), so that one client cannot
take every job user.

The counting is :class:`PerClient`, pure; the wrappers only acquire on the
way in and release once on every way out (answer, error, disconnect).
"""

from __future__ import annotations

from twisted.web import resource

TEXT = b"text/plain;charset=UTF-8"


class PerClient:
    """Counts what each address holds; ``limit`` 0 means no limit (the count
    is still kept, for the tests and for /health)."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError("limit must be 0 (off) or more")
        self.limit = limit
        self.counts: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        held = self.counts.get(client, 0)
        if self.limit and held >= self.limit:
            return False
        self.counts[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self.counts.get(client, 0)
        if held <= 1:
            self.counts.pop(client, None)  # no entry left behind per address seen
        else:
            self.counts[client] = held - 1

    def held(self, client: str) -> int:
        return self.counts.get(client, 0)


def client_of(address) -> str:
    """The key of a peer address: its host (a unix socket's peers share one)."""
    return getattr(address, "host", None) or "local"


def too_many(client: str, limit: int) -> str:
    """The 429's body."""
    return f"429 - too many requests at once from {client} (at most {limit})\n"


class Lease:
    """One acquisition, released at most once whatever calls it."""

    def __init__(self, policy: PerClient, client: str):
        self.policy, self.client, self.live = policy, client, True

    def release(self, _=None) -> None:
        """Also a callback: swallows what it is given (a client gone away is
        no error to log)."""
        if self.live:
            self.live = False
            self.policy.release(self.client)


class PerClientResource(resource.Resource):
    """A leaf resource in front of another: beyond ``policy.limit`` requests
    in progress from one address, 429 with Retry-After, nothing run."""

    isLeaf = True

    def __init__(self, inner, policy: PerClient, retry_after: int = 1):
        super().__init__()
        self.inner = inner
        self.policy = policy
        self.retry_after = retry_after

    def render(self, request):
        client = client_of(request.getClientAddress())
        if not self.policy.acquire(client):
            request.setResponseCode(429)
            request.setHeader(b"Content-Type", TEXT)
            request.setHeader(b"Retry-After", str(self.retry_after).encode())
            return too_many(client, self.policy.limit).encode()
        lease = Lease(self.policy, client)
        request.notifyFinish().addBoth(lease.release)  # answered, failed or the client went away
        return self.inner.render(request)


def limit_maxima(inner, limit: int):
    """``inner`` itself when there is no limit, else it behind one."""
    return inner if not limit else PerClientResource(inner, PerClient(limit))


class PerClientProtocol:
    """Mixin for the queue's protocol: a connection beyond the address's
    limit is told ``denied`` at once; the count is released when it closes."""

    per_client_lease = None

    def onOpen(self):
        super().onOpen()
        policy = self.factory.per_client
        client = client_of(self.transport.getPeer())
        if not policy.acquire(client):
            self.denied(f"too many connections from {client} (at most {policy.limit})")
            return
        self.per_client_lease = Lease(policy, client)

    def onClose(self, wasClean, code, reason):
        try:
            super().onClose(wasClean, code, reason)
        finally:
            if self.per_client_lease is not None:
                self.per_client_lease.release()


def limit_asy(factory, limit: int) -> None:
    """At most ``limit`` open connections per address on the queue's factory."""
    if not limit:
        return
    factory.per_client = PerClient(limit)
    factory.protocol = type("PerClient" + factory.protocol.__name__, (PerClientProtocol, factory.protocol), {})
