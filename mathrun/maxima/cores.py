"""Mother cores with an operator's libraries saved in.

Loading STACK's library takes seconds and leaves its code in SBCL's young
heap, which every child's garbage collector then scans; saved into a core
(``save-lisp-and-die``, as goemaxima and STACK's "Optimising Maxima" page
do) it is loaded once and lives in the core's pseudo-static space.

A core is built from the base core (the set-up step's, with mathrun's Lisp
in it) by a Maxima session that loads the library set and saves itself. It
is cached under the SHA-256 of everything that went into it (the base core,
the packages, every file of the libraries and of their
tracked directories), so an unchanged set starts at once and a changed file
gives a new core.  Any error while loading fails the build, with Maxima's
message.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer, protocol
from twisted.logger import Logger

from .libraries import LibrarySet
from .mother import maxima_string

FAILED_MARKER = "mathrun-core-failed"
MAX_TRACKED_FILES = 5000  # files of a tracked directory that make up the key, at most
_LOG_TAIL = 4000  # characters of Maxima's output kept for an error message


class CoreBuildFailed(Exception):
    """A library set could not be loaded and saved; the message is Maxima's."""


def _tracked_files(directory: str) -> list[str]:
    found = []
    for top, dirs, files in os.walk(directory):
        dirs.sort()
        found += [os.path.join(top, name) for name in sorted(files)]
        if len(found) > MAX_TRACKED_FILES:
            raise CoreBuildFailed(f"{directory} has more than {MAX_TRACKED_FILES} files: not a library directory")
    return found


def core_key(base_core: str, libraries: LibrarySet) -> str:
    """SHA-256 of everything a saved core depends on."""
    h = hashlib.sha256()
    st = os.stat(base_core)
    h.update(f"base {os.path.realpath(base_core)} {st.st_size} {st.st_mtime_ns}\n".encode())
    h.update(("loads " + "\0".join(libraries.loads) + "\n").encode())
    files = [name for name in libraries.loads if os.path.isabs(name)]
    for directory in libraries.tracked:
        files += _tracked_files(directory)
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CoreBuildFailed(f"cannot read {path}: {e.strerror}") from None
        h.update(f"file {path} {len(data)}\n".encode() + data)
    return h.hexdigest()


def build_script(libraries: LibrarySet, target: str) -> bytes:
    """The Maxima session that loads the set and saves it as ``target``.

    Each load runs under ``errcatch``; the first failure stops the rest and
    the session exits with a marker instead of saving.  The flag is a Lisp
    variable, since a library may kill Maxima's own (STACK does).  The save
    undoes what the session itself set (labels, line number, the started
    flag), as scripts/save-maxima-core.sh does for the base core."""
    lines = [":lisp (progn (defvar cl-user::*mathrun-failed* nil) (values))"]
    for name in libraries.loads:
        label = maxima_string(f"{'library' if os.path.isabs(name) else 'package'} {name}")
        lines.append(
            ":lisp (progn (unless cl-user::*mathrun-failed*"
            f" (unless (cdr (maxima::meval '((maxima::$errcatch) ((maxima::$load) {maxima_string(name)}))))"
            f" (setq cl-user::*mathrun-failed* {label}))) (values))"
        )
    lines.append("kill(labels)$")
    save = (
        "(if cl-user::*mathrun-failed*"
        f' (progn (format t "~%{FAILED_MARKER}: ~A~%" cl-user::*mathrun-failed*) (finish-output)'
        " (sb-ext:exit :code 3 :abort t))"
        " (progn (setq maxima::*maxima-started* nil maxima::*maxima-quiet* nil"
        " maxima::*display-labels-p* t maxima::$linenum 0)"
        f" (sb-ext:save-lisp-and-die {maxima_string(target)}"
        " :toplevel (lambda () (cl-user::run) (mathrun-mother::finish)))))"
    )
    lines.append(":lisp " + save)
    return ("\n".join(lines) + "\n").encode()


class _BuildProtocol(protocol.ProcessProtocol):
    def __init__(self, script: bytes):
        self.script = script
        self.output = []
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.script)
        self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        self.output.append(data)

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def tail(self) -> str:
        """The end of the build's output, for the error when a library fails."""
        return b"".join(self.output).decode(errors="replace")[-_LOG_TAIL:]


class CoreCache:
    """Builds and finds saved cores, one per library set, in ``directory``."""

    log = Logger()

    def __init__(self, config, reactor, directory: str):
        self.config = config
        self.reactor = reactor
        self.directory = directory
        self._building: dict[str, list[defer.Deferred]] = {}  # key -> its waiters
        self._running: set[_BuildProtocol] = set()

    def path(self, key: str) -> str:
        """Where the core of a library set's key lives."""
        return os.path.join(self.directory, f"{key}.core")

    def core_for(self, libraries: LibrarySet) -> defer.Deferred:
        """Fires with the path of a core holding ``libraries`` (the base core
        when the set is empty), building it first if need be; fails with
        CoreBuildFailed."""
        if libraries.empty:
            return defer.succeed(self.config.core)
        try:
            key = core_key(self.config.core, libraries)
        except (OSError, CoreBuildFailed) as e:
            return defer.fail(CoreBuildFailed(str(e)))
        if os.path.exists(self.path(key)):
            return defer.succeed(self.path(key))
        waiter = defer.Deferred()
        if key in self._building:
            self._building[key].append(waiter)
        else:
            # Waiters first: a build that fails at once still reaches them.
            self._building[key] = [waiter]
            defer.ensureDeferred(self._build(key, libraries)).addBoth(self._built, key)
        return waiter

    def _built(self, result, key: str) -> None:
        """Every caller waiting for this build gets its own result."""
        for d in self._building.pop(key):
            if isinstance(result, defer.Failure):
                d.errback(result)
            else:
                d.callback(result)

    def stop(self) -> defer.Deferred:
        """Kill the builds in progress (the server is stopping)."""
        running = list(self._running)
        for proto in running:
            _kill(proto.transport)
        return defer.DeferredList([proto.ended for proto in running])

    async def _build(self, key: str, libraries: LibrarySet) -> str:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        target = self.path(key)
        tmp = f"{target}.tmp.{os.getpid()}"
        started = self.reactor.seconds()
        self.log.info("maxima: saving a core with {libs} into {path}", libs=_describe(libraries), path=target)
        proto = _BuildProtocol(build_script(libraries, tmp))
        argv = self.config.argv()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"}
        self.reactor.spawnProcess(proto, argv[0], argv, env=env)
        self._running.add(proto)
        killer = self.reactor.callLater(self.config.start_timeout, _kill, proto.transport)
        try:
            await proto.ended
        finally:
            self._running.discard(proto)
            if killer.active():
                killer.cancel()
        tail = proto.tail()
        if not os.path.exists(tmp) or FAILED_MARKER in tail:
            _unlink(tmp)
            raise CoreBuildFailed(_failure_message(tail))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        self.log.info("maxima: saved {path} in {s:.1f}s", path=target, s=self.reactor.seconds() - started)
        return target


def _describe(libraries: LibrarySet) -> str:
    return ", ".join(os.path.basename(name) for name in libraries.loads)


def _failure_message(tail: str) -> str:
    """Maxima's own words: what it printed up to the failure marker."""
    before, marker, after = tail.partition(FAILED_MARKER)
    lines = [line.strip() for line in before.splitlines() if line.strip()]
    what = after.lstrip(": ").splitlines()[0].strip() if marker else "the core was not saved"
    context = " / ".join(lines[-6:])
    return f"loading {what} failed: {context}" if context else f"loading {what} failed"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _kill(transport) -> None:
    try:
        transport.signalProcess("KILL")
    except OSError:
        pass
