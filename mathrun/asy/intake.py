"""One queue client's files and options until it runs: the queue's policy for
uploads (each SHA-256 checked, restores from the recent files, the list of
files to upload again), kept out of the WebSocket protocol, which only
parses and frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cache import FileCache, sha256_hex
from .protocol import FileEntry, FileSet, ProtocolError, RunOptions, parse_options

QUEUE_TIMEOUTS = (3000, 10000, 30000, None)


@dataclass(frozen=True)
class Request:
    """What a task renders: the files by name, their SHA-256 (hex) by name,
    the main file and the options."""

    files: dict[str, bytes]
    hashes: dict[str, str]
    main: str | None
    options: RunOptions


class Intake:
    def __init__(self, files: FileCache, max_files: int, max_upload: int):
        self.recent = files
        self.fileset = FileSet(max_files, max_upload)
        self.hashes: dict[str, str] = {}
        self.options = RunOptions()
        self.missing: list[dict] = []

    def add(self, entry: FileEntry, payload: bytes | None) -> None:
        """A file with its contents (checked against its hash), or a restore
        by hash (noted as missing when no longer at hand)."""
        if entry.restore:
            data = self.recent.get(entry.hash)
            if data is None:
                self.missing.append({"filename": entry.filename, "hash": entry.hash})
                return
        else:
            data = payload
            if sha256_hex(data) != entry.hash:
                raise ProtocolError(f"hash of {entry.filename} does not match its contents")
            self.recent.put(entry.hash, data)
        self.fileset.add(entry, data)
        self.hashes[entry.filename] = entry.hash

    def set_options(self, body) -> None:
        self.options = parse_options(body, self.options, QUEUE_TIMEOUTS)

    def take(self) -> Request | list[dict]:
        """On ``run``: the files to upload again, if some restores failed
        (then a second ``run`` may follow), else the request."""
        if self.missing:
            missing, self.missing = self.missing, []
            return missing
        if not self.options.interactive and self.fileset.main is None:
            raise ProtocolError("no main file: add one with main: true")
        files = dict(self.fileset.files)
        return Request(files, {name: self.hashes[name] for name in files}, self.fileset.main, self.options)
