"""HTTP basic auth in front of the site, from Twisted's ``--auth`` checkers.

``--auth`` (``twisted.cred.strcred.AuthOptionMixin``) gives a list of
credential checkers.  Two traps are avoided here: Twisted's ``memory:``
checker keeps names and passwords as text while basic auth hands over bytes
(so the right password would get a 401), and a cred portal keeps one checker
per interface (so a second ``--auth`` would silently replace the first).
Every checker is therefore asked in turn, with bytes and then with text.
"""

from __future__ import annotations

import hmac

from twisted.cred import error
from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import failure
from twisted.web import guard, resource, util
from zope.interface import implementer

from .lean import TEXT, Answer

REALM = b"mathrun"
_log = Logger()


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


@implementer(ICredentialsChecker)
class MemoryChecker:
    """Names and passwords held as UTF-8 bytes, the password compared in
    constant time (Twisted's in-memory checker compares text with ``==``)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict):
        self.users = {_bytes(name): _bytes(password) for name, password in users.items()}

    def requestAvatarId(self, credentials):
        stored = self.users.get(_bytes(credentials.username))
        given = _bytes(credentials.password)
        # Compare even for an unknown name, so that its answer takes as long.
        match = hmac.compare_digest(given, stored if stored is not None else given + b"\0")
        if stored is not None and match:
            return defer.succeed(_bytes(credentials.username))
        return defer.fail(error.UnauthorizedLogin())


def _as_text(credentials):
    """The same credentials as text, or None if they are not UTF-8."""
    try:
        return UsernamePassword(credentials.username.decode("utf-8"), credentials.password.decode("utf-8"))
    except (AttributeError, UnicodeDecodeError):
        return None


@implementer(ICredentialsChecker)
class AnyChecker:
    """Accepts what any of its checkers accepts: each is asked with the
    credentials as basic auth gives them (bytes), then as text.  Plain
    callbacks, no inlineCallbacks: this runs for every request."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers):
        self.checkers = [normalize(c) for c in checkers]

    def requestAvatarId(self, credentials):
        text = _as_text(credentials)
        attempts = [(c, form) for c in self.checkers for form in (credentials, text) if form is not None]
        if not attempts:
            return defer.fail(error.UnauthorizedLogin())
        first, form = attempts[0]
        d = defer.maybeDeferred(first.requestAvatarId, form)
        for checker, form in attempts[1:]:
            d.addErrback(self._next, checker, form)
        return d

    @staticmethod
    def _next(reason, checker, form):
        """A refusal or a broken checker (a password file gone): ask the next."""
        if not reason.check(error.UnauthorizedLogin):
            _log.failure("auth: checker failed", reason)
        return defer.maybeDeferred(checker.requestAvatarId, form)


def normalize(checker):
    """Twisted's in-memory checker as a :class:`MemoryChecker`; its password
    file read again only when its mtime changes (not for every request:
    ~0.1 ms of CPU for 100 users, bench/auth_bench.py); others as they are."""
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        return MemoryChecker(checker.users)
    if isinstance(checker, FilePasswordDB):
        checker.cache = True
    return checker


class Unauthorized(resource.Resource):
    """401 with the challenge; nothing behind it is looked up or run."""

    isLeaf = True

    challenge = (b"WWW-Authenticate", b'basic realm="' + REALM + b'"')
    body = b"401 - unauthorized (basic auth with a known name and password needed)\n"

    def render(self, request):
        request.setResponseCode(401)
        request.setHeader(*self.challenge)
        request.setHeader(b"Content-Type", b"text/plain;charset=UTF-8")
        return self.body


UNAUTHORIZED = Unauthorized()
UNAUTHORIZED_ANSWER = Answer(401, TEXT, Unauthorized.body, (Unauthorized.challenge,))


class GuardedRoot(resource.Resource):
    """The site's root behind basic auth, except the paths in ``open_paths``
    (``/health`` for monitors, ``/metrics`` with ``--metrics-open``).

    Not Twisted's ``HTTPAuthSessionWrapper``: it makes a class per request
    (``proxyForInterface``) and renders through a ``DeferredResource``; with
    it (and an inlineCallbacks checker) ~0.4 ms of CPU a request was
    measured (bench/auth_bench.py), ~25 us without.  Here a checker
    that answers at once (memory:, file:) costs a header decode and a
    comparison; a slower one still works, through a DeferredResource."""

    def __init__(self, root, checkers, open_paths=()):
        super().__init__()
        self.root = root
        self.checker = AnyChecker(checkers)
        self.decoder = guard.BasicCredentialFactory(REALM)
        self.open_paths = frozenset(open_paths)

    unauthorized = UNAUTHORIZED_ANSWER  # the lean channel's 401

    def authorized(self, header: bytes | None) -> defer.Deferred:
        """Fires True when a checker accepts the Authorization header's
        credentials, else False (the lean channel's check, web/channel.py)."""
        return self._login_header(header).addBoth(lambda result: self._allowed(result) is self.root)

    def _login(self, request) -> defer.Deferred:
        return self._login_header(request.getHeader(b"authorization"))

    def _login_header(self, header: bytes | None) -> defer.Deferred:
        scheme, _, response = (header or b"").partition(b" ")
        if scheme.lower() != b"basic":
            return defer.fail(error.UnauthorizedLogin())
        try:
            credentials = self.decoder.decode(response.strip(), None)
        except error.LoginFailed:
            return defer.fail(error.UnauthorizedLogin())
        return self.checker.requestAvatarId(credentials)

    def getChildWithDefault(self, path, request):
        if path in self.open_paths:
            return self.root.getChildWithDefault(path, request)
        d = self._login(request)
        outcome = []
        d.addBoth(outcome.append)
        if not outcome:  # a checker that answers later: look the child up then
            request.postpath.insert(0, request.prepath.pop())
            d.addCallback(lambda _: self._allowed(outcome[0]))
            return util.DeferredResource(d)
        allowed = self._allowed(outcome[0])
        if allowed is UNAUTHORIZED:
            return UNAUTHORIZED
        return self.root.getChildWithDefault(path, request)

    def _allowed(self, result):
        if isinstance(result, failure.Failure):
            if not result.check(error.UnauthorizedLogin, error.LoginFailed):
                _log.failure("auth: checker failed", result)
            return UNAUTHORIZED
        return self.root

    def render(self, request):
        d = self._login(request)
        d.addBoth(self._allowed)
        return util.DeferredResource(d).render(request)


def open_paths(options) -> list[bytes]:
    """The paths served without credentials, from the options."""
    paths = []
    if not options["auth-health"]:
        paths.append(b"health")
    if options["metrics-open"]:
        paths.append(b"metrics")
    return paths


def protect_site(site, options) -> bool:
    """Put the site behind basic auth when ``--auth`` was given; True if it did."""
    checkers = options.get("credCheckers") or []
    if not checkers:
        return False
    site.resource = GuardedRoot(site.resource, checkers, open_paths(options))
    return True
