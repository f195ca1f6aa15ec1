"""Whether a server needs TLS at all.

Twisted's TCP transport imports pyOpenSSL (and with it ``cryptography``)
whenever it is installed: ~17 MB of the twistd process's PSS measured here,
a third of it.  A server on plain endpoints without the Asymptote front end
(whose back ends and browsers may speak ``wss://``) never uses it, so it is
left unloaded; Twisted then runs as it does without pyOpenSSL installed.
"""

from __future__ import annotations

import sys

PLAIN_ENDPOINTS = ("tcp", "tcp6", "unix")


def needs_tls(options) -> bool:
    """A TLS endpoint, or a front end that may reach out over TLS."""
    endpoints = [] if options["no-http"] else [options["http"]]
    if options["asy-runner"]:
        endpoints.append(options["asy-runner"])
    if any(e.split(":", 1)[0].strip().lower() not in PLAIN_ENDPOINTS for e in endpoints):
        return True
    return not options["no-asy"]


def leave_tls_unloaded(options) -> bool:
    """Make pyOpenSSL unimportable for this process when nothing needs it
    and nothing has loaded Twisted's transports yet (as twistd, before the
    service is made); True if it did."""
    if needs_tls(options) or "OpenSSL" in sys.modules or "twisted.internet.tcp" in sys.modules:
        return False
    sys.modules["OpenSSL"] = None  # an import of it raises ImportError
    return True
