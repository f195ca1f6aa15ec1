"""The spawn server's frames (ext/mathrun-spawn.c), pure: no I/O, so any
chunking of the stream is testable.

Frames, both ways: a 4-byte little-endian length, then NUL-terminated fields,
the verb first.  A frame with an ``fds=N`` field owns the next N descriptors
received (they arrive with its first byte).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

MAX_FRAME = 1 << 20


class FrameError(ValueError):
    """The peer sent something that is not a frame: the stream is lost.
    ``messages``: the whole frames that came before it."""

    messages: list = []


@dataclass(frozen=True)
class Message:
    verb: bytes
    fields: tuple[bytes, ...]
    fds: tuple[int, ...] = ()

    def value(self, key: bytes) -> bytes | None:
        """The value of the first ``key=value`` field, or None."""
        prefix = key + b"="
        for f in self.fields:
            if f.startswith(prefix):
                return f[len(prefix) :]
        return None


def encode(fields: list[bytes]) -> bytes:
    """One frame of fields (none may hold a NUL)."""
    payload = b"\0".join(fields) + b"\0"
    if payload.count(b"\0") != len(fields):  # (one scan in C, not one per field)
        bad = next(f for f in fields if b"\0" in f)
        raise ValueError(f"a NUL in a spawn request field: {bad[:60]!r}")
    return len(payload).to_bytes(4, "little") + payload


def option_fields(options: list[str]) -> list[bytes]:
    """``--key value`` (or a bare ``--flag``) as ``key=value`` fields: the
    request carries the same settings as a ``mathrun-jail run`` command line."""
    fields, i = [], 0
    while i < len(options):
        key = options[i].removeprefix("--")
        if i + 1 < len(options) and not options[i + 1].startswith("--"):
            fields.append(f"{key}={options[i + 1]}".encode())
            i += 2
        else:
            fields.append(f"{key}=1".encode())
            i += 1
    return fields


def spawn_request(job_id: int, argv: list[str], env: dict[str, str], options: list[str] | list[bytes]) -> bytes:
    """``options``: the jail's ``--key value`` list, or its fields already."""
    fields = [b"spawn", b"%d" % job_id]
    fields += options if options and isinstance(options[0], bytes) else option_fields(options)
    fields += [f"env={k}={v}".encode() for k, v in env.items()]
    fields += [b"arg=" + os.fsencode(a) for a in argv]
    return encode(fields)


class FrameParser:
    """Frames out of a byte stream cut anywhere, with the descriptors that
    came along; pure (no I/O), so any chunking is testable."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._fds: collections.deque[int] = collections.deque()

    def fds_received(self, fds) -> None:
        self._fds.extend(fds)

    def feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += data
        messages, start = [], 0
        try:
            while len(buffer) - start >= 4:
                size = int.from_bytes(buffer[start : start + 4], "little")
                if size > self.max_frame:
                    raise FrameError(f"frame of {size} bytes")
                if len(buffer) - start < 4 + size:
                    break
                messages.append(self._message(bytes(buffer[start + 4 : start + 4 + size])))
                start += 4 + size
        except (FrameError, ValueError) as e:
            broken = e if isinstance(e, FrameError) else FrameError(str(e))
            broken.messages = messages
            raise broken from None
        del buffer[:start]
        return messages

    def _message(self, payload: bytes) -> Message:
        if not payload.endswith(b"\0"):
            raise FrameError(f"frame without its final NUL: {payload[:60]!r}")
        verb, *fields = payload[:-1].split(b"\0")
        message = Message(verb, tuple(fields))
        count = message.value(b"fds")
        if count is not None:
            n = int(count)
            if n > len(self._fds):
                raise FrameError(f"{verb!r} frame announces {n} fds, {len(self._fds)} came")
            message = Message(verb, tuple(fields), tuple(self._fds.popleft() for _ in range(n)))
        return message

    def close_fds(self) -> None:
        """Descriptors no frame took (the stream ended)."""
        while self._fds:
            os.close(self._fds.popleft())
