"""What ``twistd mathrun`` leaves unimported: pyOpenSSL (and cryptography
behind it) when no option asks for TLS.

Twisted imports pyOpenSSL wherever it might use it (its TCP transport's
startTLS, the endpoints, the reactor's listenSSL), whether or not a TLS
endpoint is ever made: ~12 MB of the server's memory (PSS) for a server
that listens on plain TCP behind a proxy, as STACK's set-ups do.  Twisted
runs without pyOpenSSL installed, so the server starts as if it were not,
unless an option needs it.
"""

from __future__ import annotations

import sys

TLS_MODULES = ("OpenSSL",)
_TLS_ENDPOINTS = ("ssl:", "tls:", "le:", "lets:")


def needs_tls(options) -> bool:
    """Whether an option asks for TLS: an ssl:/tls: endpoint for the site
    or the Asymptote runner, wss:// back ends or their CA file, or
    ``MATHRUN_TLS=1`` in the environment (a checker plugin that needs it)."""
    import os

    if os.environ.get("MATHRUN_TLS") == "1":
        return True
    for name in ("http", "asy-runner"):
        if (options.get(name) or "").strip().lower().startswith(_TLS_ENDPOINTS):
            return True
    if options.get("asy-backends-ca"):
        return True
    return "wss:" in (options.get("asy-backends") or "").lower()


def leave_out_tls(options) -> bool:
    """Make pyOpenSSL unimportable for this process unless an option needs
    it or something imported it already; True if it did."""
    if needs_tls(options) or any(sys.modules.get(name) is not None for name in TLS_MODULES):
        return False
    if "twisted.internet.tcp" in sys.modules:
        return False  # too late: the transport has it already
    for name in TLS_MODULES:
        sys.modules[name] = None  # an import of it raises ImportError, as if it were not installed
    return True
