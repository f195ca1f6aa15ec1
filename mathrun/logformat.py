"""twistd's log lines, written cheaper: the same text as twisted.logger's
``textFileLogObserver`` (``TIME [NAMESPACE#LEVEL] TEXT``), with the time
stamp formatted once per second and a line without fields (the job line,
one per request) written without Twisted's generic formatter.  Every other
event goes through Twisted's own formatting, unchanged.

twistd makes its file observer before the service starts; ``speed_up``
finds it in the global publisher and gives it this formatter (only an
observer made by ``textFileLogObserver`` with the default time format).
"""

from __future__ import annotations

import inspect

from twisted.logger import FileLogObserver, formatTime, globalLogPublisher
from twisted.logger._format import timeFormatRFC3339

_DEFAULT_FORMATTER = "textFileLogObserver.<locals>.formatEvent"


class ClassicLineFormat:
    """A FileLogObserver's ``formatEvent``: ``fallback`` (Twisted's) for any
    event but a plain one (a str format without braces, no failure, no
    system, no flattened fields), whose line is assembled here."""

    def __init__(self, fallback):
        self.fallback = fallback
        self._second = None
        self._stamp = ""

    def __call__(self, event):
        text = event.get("log_format")
        when = event.get("log_time")
        if (
            type(text) is not str
            or "{" in text
            or "}" in text
            or not text
            or "log_failure" in event
            or "log_system" in event
            or "log_flattened" in event
            or type(when) is not float
        ):
            return self.fallback(event)
        stamp = self._time(when)
        if stamp is None:
            return self.fallback(event)
        level = event.get("log_level")
        namespace = event.get("log_namespace", "-")
        return (
            f"{stamp} [{namespace}#{'-' if level is None else level.name}] {text.replace(chr(10), chr(10) + chr(9))}\n"
        )

    def _time(self, when: float) -> str | None:
        """The stamp of ``when``'s second, made once per second; None near a
        second's end, where datetime rounds the microseconds up into the
        next one (Twisted's formatter decides those)."""
        second = int(when)
        if when < 0 or when - second >= 0.9999995:
            return None
        if second != self._second:
            self._stamp = formatTime(float(second), timeFormatRFC3339)
            self._second = second
        return self._stamp


def is_default_text_observer(observer) -> bool:
    """An observer twistd made with ``textFileLogObserver`` and its default
    time format (the one whose lines ClassicLineFormat reproduces)."""
    if not isinstance(observer, FileLogObserver):
        return False
    formatter = observer.formatEvent
    if getattr(formatter, "__qualname__", "") != _DEFAULT_FORMATTER:
        return False
    try:
        return inspect.getclosurevars(formatter).nonlocals.get("timeFormat") == timeFormatRFC3339
    except (TypeError, ValueError):
        return False


def speed_up(publisher=globalLogPublisher) -> int:
    """Give twistd's text file observers the cheaper formatter; returns how
    many it found."""
    found = 0
    for observer in list(getattr(publisher, "_observers", ())):
        if is_default_text_observer(observer):
            observer.formatEvent = ClassicLineFormat(observer.formatEvent)
            found += 1
    return found
