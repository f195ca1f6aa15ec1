"""Clients of a mathrun server, for scripts and for the ``mathrun`` command.

Each takes the reactor; nothing is global::

    from mathrun.client import AsyClient, MaximaClient, health

    answer = await MaximaClient(reactor, "http://127.0.0.1:8080").evaluate("integrate(x^2,x);")
    print(answer.output)
"""

from .asy import MAX_MESSAGE, TIMEOUT_CLASSES, AsyClient, AsyDenied, AsyResult, Location, Progress
from .common import DEFAULT_URL, AuthRequired, ClientError, ConnectionFailed, endpoint, split_url
from .health import Health, health
from .maxima import (
    MaximaAnswer,
    MaximaBusy,
    MaximaClient,
    MaximaError,
    MaximaRefused,
    MaximaServerError,
    strip_prompts,
)

__all__ = [
    "DEFAULT_URL",
    "MAX_MESSAGE",
    "TIMEOUT_CLASSES",
    "AsyClient",
    "AsyDenied",
    "AsyResult",
    "AuthRequired",
    "ClientError",
    "ConnectionFailed",
    "Health",
    "Location",
    "MaximaAnswer",
    "MaximaBusy",
    "MaximaClient",
    "MaximaError",
    "MaximaRefused",
    "MaximaServerError",
    "Progress",
    "endpoint",
    "health",
    "split_url",
    "strip_prompts",
]
