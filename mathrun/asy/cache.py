"""Recently uploaded files by SHA-256, so that a client can ``restore`` them.

Bounded in bytes and in age; the oldest use is evicted first.  Pure: the
clock is injected.
"""

from __future__ import annotations

import collections
import hashlib


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 that names an uploaded file in the protocol and the cache."""
    return hashlib.sha256(data).hexdigest()


class FileCache:
    """Recently uploaded files by hash, bounded in bytes and age, so that a
    client re-running a task need not upload its files again."""

    def __init__(self, max_bytes: int, ttl_seconds: float, clock):
        self.max_bytes = max_bytes
        self.ttl = ttl_seconds
        self.clock = clock
        self._entries: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, digest: str, data: bytes) -> None:
        """Remember ``data`` (whose hash the caller has verified)."""
        if len(data) > self.max_bytes:
            return
        self._drop(digest)
        self._entries[digest] = (data, self.clock())
        self.size += len(data)
        self._expire()
        while self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def get(self, digest: str) -> bytes | None:
        """The file, if still here; a hit counts as a fresh use."""
        self._expire()
        entry = self._entries.get(digest)
        if entry is None:
            return None
        self._entries[digest] = (entry[0], self.clock())
        self._entries.move_to_end(digest)
        return entry[0]

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self.size -= len(entry[0])

    def _expire(self) -> None:
        deadline = self.clock() - self.ttl
        while self._entries:
            digest, (_, used) = next(iter(self._entries.items()))
            if used > deadline:
                break
            self._drop(digest)
