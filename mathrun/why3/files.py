"""The files of a why3 request: its inputs (the files named on the prover's
command line, the ``runstdin`` file) and its output file.

Unprivileged (the standalone server), provers run as the server's own user,
as the C server's do: arguments are passed on as they are and the output
file goes to the server's directory.  As root, provers run as job users: the
files a request names are opened *as the connecting client* by the spawn
server (its file-system uid, gid and groups for the open alone: the kernel
makes the whole check, and the server never changes its effective ids) and
copied into the job's workspace; the output file belongs to the client.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import socket
import struct
import tempfile
from dataclasses import dataclass

from twisted.internet import defer


@dataclass(frozen=True)
class Credentials:
    """Who a client is, for opening files on its behalf."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, uid: int, gid: int) -> Credentials:
        try:
            groups = tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except KeyError:
            groups = (gid,)
        return cls(uid, gid, groups)


def peer_credentials(sock) -> tuple[int, int, int] | None:
    """The connected process's (pid, uid, gid), from SO_PEERCRED: the
    kernel's word, not the client's."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_names = random.SystemRandom(), random.Random(random.SystemRandom().getrandbits(64))


def output_name() -> str:
    """``why3XXXXXX`` as the C server's mkstemp names them (tempfile's name
    drawing costs more than the open itself)."""
    bits = _names[1].getrandbits(36)
    return "why3" + "".join(_LETTERS[(bits >> (6 * i)) % 62] for i in range(6))


def make_output_file(directory: str) -> tuple[int, str]:
    """A new ``why3XXXXXX`` file (0600, O_EXCL, as the C server's mkstemp)."""
    for _ in range(16):
        path = os.path.join(directory, output_name())
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            _names[1].seed(_names[0].getrandbits(64))  # someone guesses our names: draw anew
    fd, path = tempfile.mkstemp(prefix="why3", dir=directory)
    return fd, path


def read_fd(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes of an open regular file, which is closed."""
    try:
        chunks, total = [], 0
        while total < limit:
            chunk = os.read(fd, min(1 << 20, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class OwnFiles:
    """Provers of the server's own user (unprivileged): nothing to stage;
    output files in ``output_dir``, owned by the server's user."""

    synchronous = True

    def __init__(self, sandbox, limit: int, output_dir: str):
        self.output_dir = output_dir
        self.limit = limit

    def inputs(self, lease, client, run) -> tuple[list[str], bytes]:
        stdin = b""
        if run.stdin is not None:
            try:
                with open(run.stdin, "rb") as f:
                    stdin = f.read(self.limit)
            except OSError:
                pass
        return list(run.args), stdin

    def output(self, client) -> tuple[int, str]:
        return make_output_file(self.output_dir)

    def spawn_output(self, client) -> None:
        """No output file made by the spawn server (see ClientFiles)."""
        return None

    def discard(self, path: str) -> None:
        """An output file nobody will read (its client left)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class ClientFiles:
    """Provers of job users (privileged): the request's files read as the
    client by the spawn server and copied into the workspace.  Output files
    either in ``output_dir`` (root's, mode 1733), given to the client's uid,
    or (``caller_dir``: a directory descriptor and its path, the hand-off)
    created in the caller's own directory as the caller."""

    synchronous = False

    def __init__(self, sandbox, limit: int, output_dir: str | None = None, caller_dir: tuple[int, str] | None = None):
        self.sandbox = sandbox
        self.limit = limit
        self.output_dir = output_dir
        self.caller_dir = caller_dir

    def _read(self, creds, path: str) -> defer.Deferred:
        """The file's bytes as the client may read them, or None."""
        d = self.sandbox.starter.open_as(creds, path=path)
        d.addCallbacks(read_fd, lambda _: None, callbackArgs=(self.limit,))
        return d

    def inputs(self, lease, client, run):
        """(args, stdin bytes), or a Deferred of them when there are files to
        read: absolute paths the client may read are copied into the
        workspace (the job's /tmp is private, so the client's are not seen);
        one it may not read is passed on unread."""
        creds = client.creds
        wanted = [(n, arg) for n, arg in enumerate(run.args) if arg.startswith("/")]
        if creds is None or (not wanted and run.stdin is None):
            return list(run.args), b""
        reads = [self._read(creds, arg) for _n, arg in wanted]
        if run.stdin is not None:
            reads.append(self._read(creds, run.stdin))
        d = defer.gatherResults(reads, consumeErrors=True)
        d.addCallback(self._staged, lease, run, wanted)
        return d

    def _staged(self, contents, lease, run, wanted) -> tuple[list[str], bytes]:
        args = list(run.args)
        for (n, arg), data in zip(wanted, contents, strict=False):
            if data is not None:
                name = f"in{n}-{os.path.basename(arg)}"
                lease.workspace.write_file(name, data)
                args[n] = os.path.join(lease.workspace.path, name)
        stdin = contents[-1] if run.stdin is not None else b""
        return args, stdin or b""

    def output(self, client) -> defer.Deferred:
        """(fd, path) of a new output file that belongs to the client."""
        creds = client.creds
        if self.caller_dir is None:
            fd, path = make_output_file(self.output_dir)
            if creds is not None and creds.uid != 0:
                os.fchown(fd, creds.uid, -1)
            return defer.succeed((fd, path))
        return self._create(creds, 8)

    def spawn_output(self, client) -> tuple[int, object, str] | None:
        """After a hand-off: the output file is made by the spawn server,
        as the caller, in the caller's directory, with the spawn request
        itself (IJobStarter.spawn's ``output_create``); None otherwise."""
        if self.caller_dir is None or client.creds is None:
            return None
        return self.caller_dir[0], client.creds, "why3"

    def created_path(self, name: str) -> str:
        """The path of an output file the spawn server made (spawn_output)."""
        return os.path.join(self.caller_dir[1], name)

    def discard(self, path: str) -> None:
        """An output file nobody will read (its client left): in the
        caller's directory, by name in the directory we were handed."""
        with contextlib.suppress(FileNotFoundError):
            if self.caller_dir is None:
                os.unlink(path)
            else:
                os.unlink(os.path.basename(path), dir_fd=self.caller_dir[0])

    def _create(self, creds, tries: int) -> defer.Deferred:
        directory, path = self.caller_dir
        name = output_name()
        d = self.sandbox.starter.open_as(creds, directory=directory, name=name)

        def made(fd):
            return fd, os.path.join(path, name)

        def exists(reason):
            if tries > 1 and isinstance(reason.value, FileExistsError):
                _names[1].seed(_names[0].getrandbits(64))
                return self._create(creds, tries - 1)
            return reason

        return d.addCallbacks(made, exists)
