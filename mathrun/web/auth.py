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
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.web import guard, resource
from zope.interface import implementer

REALM = b"mathrun"


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
    credentials as basic auth gives them (bytes), then as text."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers):
        self.checkers = [normalize(c) for c in checkers]

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials):
        text = _as_text(credentials)
        for checker in self.checkers:
            for form in (credentials, text):
                if form is None:
                    continue
                try:
                    avatar = yield defer.maybeDeferred(checker.requestAvatarId, form)
                except error.UnauthorizedLogin:
                    continue
                return avatar
        raise error.UnauthorizedLogin()


def normalize(checker):
    """Twisted's in-memory checker as a :class:`MemoryChecker`; others as they are."""
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        return MemoryChecker(checker.users)
    return checker


@implementer(IRealm)
class SiteRealm:
    """Every user gets the whole site."""

    def __init__(self, root):
        self.root = root

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if resource.IResource not in interfaces:
            raise NotImplementedError("only IResource")
        return resource.IResource, self.root, lambda: None


class GuardedRoot(resource.Resource):
    """The site's root behind basic auth, except the paths in ``open_paths``
    (``/health`` for monitors, ``/metrics`` with ``--metrics-open``)."""

    def __init__(self, root, checkers, open_paths=()):
        super().__init__()
        self.root = root
        portal = Portal(SiteRealm(root), [AnyChecker(checkers)])
        self.wrapper = guard.HTTPAuthSessionWrapper(portal, [guard.BasicCredentialFactory(REALM)])
        self.open_paths = frozenset(open_paths)

    def getChildWithDefault(self, path, request):
        if path in self.open_paths:
            return self.root.getChildWithDefault(path, request)
        return self.wrapper.getChildWithDefault(path, request)

    def render(self, request):
        return self.wrapper.render(request)


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
