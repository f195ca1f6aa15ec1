"""Recent renders by the SHA-256 of their files and options, so that the same
request (the page's live mode re-sending an unchanged program, a class of
students rendering the same example) comes back without running asy.

Bounded in entries and in bytes (least recently used first out) and in age
(an entry expires ``ttl`` seconds after it was stored, however often it is
used).  Pure: the clock is injected; the queue (:mod:`.queue`) decides what
is stored (successful, non-interactive runs) and counts what it serves.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass, field

# What changes asy's output besides the files.  The timeout does not: a run
# that succeeded within one limit gives the same result under any other.
KEY_OPTIONS = ("format", "stderr", "verbosity")


def render_key(hashes: dict[str, str], main: str | None, options) -> str:
    """The SHA-256 (hex) of the file names and contents' hashes, the main file
    and the options that shape the output."""
    described = {
        "files": dict(sorted(hashes.items())),
        "main": main,
        "options": {name: getattr(options, name) for name in KEY_OPTIONS},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Render:
    """What a run sent, in order: ``("output", stream, bytes)`` and
    ``("result", format, bytes)``; and how long it took."""

    events: tuple
    time_ms: int

    @property
    def size(self) -> int:
        return sum(len(event[2]) for event in self.events)


@dataclass
class Recorder:
    """Collects one run's events while it runs, up to ``limit`` bytes; past
    that the run is not worth keeping (it would push out many others)."""

    limit: int
    events: list = field(default_factory=list)
    size: int = 0
    overflow: bool = False

    def add(self, kind: str, name: str, data: bytes) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow, self.events = True, []
            return
        self.events.append((kind, name, bytes(data)))

    def render(self, time_ms) -> Render | None:
        return None if self.overflow else Render(tuple(self.events), int(time_ms or 0))


class RenderCache:
    """At most ``max_entries`` renders of at most ``max_bytes`` together, each
    at most ``max_entry`` bytes (default a quarter of the total) and kept
    ``ttl`` seconds.  ``max_entries == 0`` switches it off."""

    def __init__(self, max_entries: int, max_bytes: int, ttl: float, clock, max_entry: int | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 4 if max_entry is None else min(max_entry, max_bytes)
        self.ttl = ttl
        self.clock = clock
        self._entries: collections.OrderedDict[str, Render] = collections.OrderedDict()  # by last use
        self._stored: collections.OrderedDict[str, float] = collections.OrderedDict()  # by time stored
        self.size = 0
        self.hits = self.misses = self.stores = self.evictions = self.expiries = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0 and self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Render | None:
        """The render, if stored less than ``ttl`` ago; counted as a hit or a miss."""
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, render: Render) -> bool:
        """Keep ``render``, pushing out the least recently used ones over the
        bounds; False when it is too large to keep or the cache is off."""
        if not self.enabled or render.size > self.max_entry:
            return False
        self._drop(key)
        self._entries[key] = render
        self._stored[key] = self.clock()
        self.size += render.size
        self.stores += 1
        self._expire()
        while self.size > self.max_bytes or len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        return True

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry.size
            del self._stored[key]

    def _expire(self) -> None:
        """Drop what was stored ``ttl`` or more ago, oldest first."""
        deadline = self.clock() - self.ttl
        while self._stored:
            key, stored = next(iter(self._stored.items()))
            if stored > deadline:
                break
            self._drop(key)
            self.expiries += 1
