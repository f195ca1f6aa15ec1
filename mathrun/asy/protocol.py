"""The Asymptote WebSocket framing, shared by the runner and the queue.

A message is a text frame ``verb`` or ``verb {json}``; ``add``, ``input``,
``result`` and ``output`` are followed by one binary frame with their
payload.  Parsing and validation are pure; the Autobahn protocols only move
frames.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

WITH_PAYLOAD = frozenset({"add", "input", "result", "output"})
FORMATS = ("svg", "pdf", "png")
STDERR_MODES = ("stdout", "separate")
FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\.asy$")
MAX_TEXT_FRAME = 64 * 1024


class ProtocolError(ValueError):
    """A client's message that the server refuses, with a reason to send back."""


@dataclass(frozen=True)
class Message:
    """One protocol message: a verb, its JSON body, and the payload of the
    binary frame that follows it (for ``add``, ``input``, ``output``, ``result``)."""

    verb: str
    body: object = None
    payload: bytes | None = None

    @property
    def needs_payload(self) -> bool:
        """Whether a binary frame must follow before the message is whole."""
        return self.verb in WITH_PAYLOAD and self.payload is None


def parse_text(text: str) -> Message:
    """``verb`` or ``verb {json}`` into a Message (payload not yet attached)."""
    if len(text) > MAX_TEXT_FRAME:
        raise ProtocolError("message too long")
    verb, _, rest = text.strip().partition(" ")
    if not verb.isalpha():
        raise ProtocolError(f"bad message {text[:40]!r}")
    body = None
    if rest.strip():
        try:
            body = json.loads(rest)
        except ValueError:
            raise ProtocolError(f"bad JSON in {verb!r} message") from None
    return Message(verb, body)


def encode(verb: str, body=None) -> str:
    """The text frame of a message."""
    return verb if body is None else f"{verb} {json.dumps(body, separators=(',', ':'))}"


@dataclass(frozen=True)
class FileEntry:
    """An ``add``: a file's name, whether it is the main file, and (queue) its hash."""

    filename: str
    main: bool
    hash: str | None = None
    restore: bool = False


def parse_add(body, require_hash: bool = False) -> FileEntry:
    """The fields of an ``add`` message, checked (a name without directories)."""
    if not isinstance(body, dict):
        raise ProtocolError("add needs {filename, main}")
    name = body.get("filename")
    if not isinstance(name, str) or not FILENAME.match(name):
        raise ProtocolError(f"bad file name {name!r}: letters, digits, _ and - ending in .asy")
    main = body.get("main", False)
    if not isinstance(main, bool):
        raise ProtocolError("main must be true or false")
    digest = body.get("hash")
    if require_hash or digest is not None:
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ProtocolError(f"bad hash for {name}: 64 lowercase hex digits of SHA-256")
    restore = body.get("restore", False)
    if not isinstance(restore, bool):
        raise ProtocolError("restore must be true or false")
    return FileEntry(name, main, digest, restore)


@dataclass(frozen=True)
class RunOptions:
    """A run's ``options``, validated: what every hop passes on unchanged."""

    interactive: bool = False
    timeout: int | None = None  # ms; None: the server's default
    format: str = "svg"
    stderr: str = "stdout"
    verbosity: int = 0


def parse_options(body, current: RunOptions, allowed_timeouts=None) -> RunOptions:
    """Merge an ``options`` message into ``current``, checking each field."""
    if not isinstance(body, dict):
        raise ProtocolError("options needs a JSON object")
    unknown = set(body) - {"interactive", "timeout", "format", "stderr", "verbosity"}
    if unknown:
        raise ProtocolError(f"unknown option {sorted(unknown)[0]!r}")
    changes = {}
    if "interactive" in body:
        if not isinstance(body["interactive"], bool):
            raise ProtocolError("interactive must be true or false")
        changes["interactive"] = body["interactive"]
    if "timeout" in body:
        t = body["timeout"]
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t <= 0):
            raise ProtocolError("timeout must be a positive whole number of milliseconds")
        if allowed_timeouts is not None and t not in allowed_timeouts:
            shown = ", ".join("none" if a is None else str(a) for a in allowed_timeouts)
            raise ProtocolError(f"timeout must be one of {shown}")
        changes["timeout"] = t
    if "format" in body:
        if body["format"] not in FORMATS:
            raise ProtocolError(f"format must be one of {', '.join(FORMATS)}")
        changes["format"] = body["format"]
    if "stderr" in body:
        if body["stderr"] not in STDERR_MODES:
            raise ProtocolError('stderr must be "separate" or "stdout"')
        changes["stderr"] = body["stderr"]
    if "verbosity" in body:
        v = body["verbosity"]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 3:
            raise ProtocolError("verbosity must be 0, 1, 2 or 3")
        changes["verbosity"] = v
    return RunOptions(**{**current.__dict__, **changes})


def parse_timeout_update(body) -> int:
    """The ``options {timeout}`` a client may send while its job runs."""
    if not isinstance(body, dict) or set(body) != {"timeout"}:
        raise ProtocolError("while running, options may only carry a timeout")
    t = body["timeout"]
    if not isinstance(t, int) or isinstance(t, bool) or t <= 0:
        raise ProtocolError("timeout must be a positive whole number of milliseconds")
    return t


class FileSet:
    """A client's files: at most ``max_files``, ``max_upload`` bytes in all,
    and at most one main file."""

    def __init__(self, max_files: int, max_upload: int):
        self.max_files = max_files
        self.max_upload = max_upload
        self.files: dict[str, bytes] = {}
        self.main: str | None = None

    def add(self, entry: FileEntry, data: bytes) -> None:
        """One file more, within the count and size limits."""
        if entry.filename not in self.files and len(self.files) >= self.max_files:
            raise ProtocolError(f"more than {self.max_files} files")
        total = sum(map(len, self.files.values())) - len(self.files.get(entry.filename, b"")) + len(data)
        if total > self.max_upload:
            raise ProtocolError(f"files larger than {self.max_upload} bytes in all")
        self.files[entry.filename] = data
        if entry.main:
            self.main = entry.filename
        elif self.main == entry.filename:
            self.main = None


class Reassembler:
    """Pairs each text frame that announces a payload with the binary frame
    after it; ``feed`` returns a complete Message or None."""

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        self._pending: Message | None = None

    def feed(self, data: bytes, is_binary: bool) -> Message | None:
        """One WebSocket message in; a whole protocol Message out, or None while
        its payload frame is still due."""
        if is_binary:
            if self._pending is None:
                raise ProtocolError("binary frame without a message before it")
            if len(data) > self.max_payload:
                raise ProtocolError(f"payload larger than {self.max_payload} bytes")
            message, self._pending = self._pending, None
            return Message(message.verb, message.body, data)
        if self._pending is not None:
            raise ProtocolError(f"{self._pending.verb} message without its binary frame")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text frame is not UTF-8") from None
        message = parse_text(text)
        if message.verb in WITH_PAYLOAD and not (message.verb == "add" and _is_restore(message.body)):
            self._pending = message
            return None
        return message


def _is_restore(body) -> bool:
    return isinstance(body, dict) and body.get("restore") is True
