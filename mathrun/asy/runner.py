"""One Asymptote run in the sandbox, independent of how it was asked for.

The runner WebSocket protocol and the queue's local back ends both drive an
:class:`AsyRun`: files go in, options are set, ``start`` runs ``asy`` as a
job user, and the run reports to a sink as it goes (``output``), at the end
(``result`` for each image, then ``complete``).  Success means "an image was
written": asy exits 0 when it fails to render (3D without ``-render 0``).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IAsyHandle
from ..sandbox import Status
from ..sandbox.workspace import FileTooLarge
from .config import RunnerConfig
from .protocol import FileEntry, FileSet, ProtocolError, RunOptions

__all__ = ["AsyRun", "RunnerConfig", "asy_command", "asy_environment", "output_limit_message"]

OUTPUT_DIR = "out"


def output_limit_message(limit: int) -> str:
    """The design's error for output (text or images) over a limit."""
    return f"Execution aborted due to the output limit ({limit}B)"


def asy_command(config: RunnerConfig, options: RunOptions, main: str | None) -> list[str]:
    """A command line that keeps asy to its directory and off any viewer."""
    argv = [config.asy, "-noV", "-safe", "-noglobalread", "-noglobalwrite", "-render", "0"]
    if options.interactive:
        argv.append("-q")  # no welcome text; in file mode -q would also swallow write()
    argv += ["-v"] * options.verbosity
    argv += ["-f", options.format, "-o", f"{OUTPUT_DIR}/output"]
    if main is not None:
        argv.append(main)
    return argv


def asy_environment() -> dict:
    """TeX may read and write only below the working directory, and never
    run commands; asy's own settings live in the workspace."""
    return {
        "ASYMPTOTE_HOME": ".asy",
        "openin_any": "p",
        "openout_any": "p",
        "shell_escape": "f",
        "TEXMFOUTPUT": OUTPUT_DIR,
    }


@implementer(IAsyHandle)
class AsyRun:
    """Files, options and at most one execution of asy.

    ``sink`` gets ``output(stream, data)``, ``result(format, data)`` and
    ``complete(success, error, time_ms)``; ``complete`` is called exactly
    once after ``start`` (also when the run is aborted).
    """

    log = Logger()

    def __init__(self, sandbox, sink, config: RunnerConfig | None = None, clock=time.monotonic):
        self.sandbox = sandbox
        self.sink = sink
        self.config = config or RunnerConfig()
        self.clock = clock
        self.fileset = FileSet(self.config.max_files, self.config.max_upload)
        self.options = RunOptions()
        self.job = None
        self.started = False
        self.finished = False
        self._timeout_ms = None
        self._aborted = None

    # -- set-up ---------------------------------------------------------------
    def add(self, entry: FileEntry, data: bytes) -> None:
        """A file for the run (only before it starts)."""
        if self.started:
            raise ProtocolError("add after run")
        self.fileset.add(entry, data)

    @property
    def files(self) -> dict[str, bytes]:
        """The files added, by name."""
        return self.fileset.files

    @property
    def main(self) -> str | None:
        """The main file's name, if one was marked."""
        return self.fileset.main

    def timeout_ms(self) -> int:
        """The run's time: the client's, capped by the operator's maximum."""
        if self.options.interactive and self.options.timeout is None:
            return self.config.interactive_timeout_ms
        return min(self.options.timeout or self.config.default_timeout_ms, self.config.max_timeout_ms)

    # -- running ----------------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Run asy; the Deferred fires (with None) after ``complete``."""
        if self.started:
            raise ProtocolError("run twice")
        if not self.options.interactive and self.main is None:
            raise ProtocolError("no main file: add one with main: true")
        self.started = True
        self._t0 = self.clock()
        return defer.ensureDeferred(self._run())

    def lower_timeout(self, timeout_ms: int) -> None:
        """A later ``options {timeout}``: only ever shortens the run."""
        if self.finished:
            return
        total = min(self._timeout_ms or timeout_ms, timeout_ms)
        self._timeout_ms = total
        if self.job is not None:
            elapsed = self.clock() - self._t0
            self.job.lower_wall_limit(max(0.0, total / 1000 - elapsed))

    def write_input(self, data: bytes) -> None:
        """Bytes to an interactive run's stdin."""
        if not self.options.interactive:
            raise ProtocolError("input is for interactive runs")
        if self.job is not None and not self.finished:
            self.job.write(data)

    def abort(self, reason: str = "aborted") -> None:
        """Stop the run (client gone, halted by the queue); files are removed."""
        self._aborted = reason
        if self.job is not None and not self.finished:
            self.job.stop(Status.CANCELLED)

    async def _run(self):
        self._timeout_ms = min(self._timeout_ms or self.timeout_ms(), self.timeout_ms())
        lease = None
        try:
            lease = await self.sandbox.acquire(self.config.limits.workspace_bytes)
            for name, data in self.files.items():
                lease.workspace.write_file(name, data)
            lease.workspace.make_dir(OUTPUT_DIR)
            limits = self._limits()
            if self._aborted:
                return self._complete(False, f"Execution {self._aborted}")
            argv = asy_command(self.config, self.options, None if self.options.interactive else self.main)
            self.job = lease.spawn(argv, limits, env=asy_environment(), on_output=self._output, frontend="asy")
            if not self.options.interactive:
                self.job.close_stdin()
            result = await self.job.done
            self._finish(result, lease)
        except Exception as e:
            self.log.failure("asy run failed")  # the Failure of the exception being handled
            if not self.finished:
                self._complete(False, f"Internal error: {e}")
        finally:
            if lease is not None:
                await lease.release()

    def _limits(self):
        """The operator's run limits, with this run's time; an image over
        ``max_image`` must be written whole to be refused with the
        output-limit message, not killed by SIGXFSZ."""
        base = self.config.limits
        return replace(
            base,
            cpu_seconds=self._timeout_ms / 1000,
            wall_seconds=max(0.001, self._timeout_ms / 1000 - (self.clock() - self._t0)),
            file_size_bytes=max(base.workspace_bytes, self.config.max_image + 1),
        )

    def _output(self, stream: str, data: bytes) -> None:
        if self.options.stderr == "stdout":
            stream = "stdout"
        self.sink.output(stream, data)

    def _finish(self, result, lease) -> None:
        if self._aborted:
            return self._complete(False, f"Execution {self._aborted}")
        if result.status is Status.TIME_LIMIT:
            return self._complete(False, f"Execution aborted due to the time limit ({self._timeout_ms}ms)")
        if result.status is Status.OUTPUT_LIMIT:
            return self._complete(False, output_limit_message(self.config.limits.output_bytes))
        if result.status is Status.MEMORY_LIMIT:
            return self._complete(
                False, f"Execution aborted due to the memory limit ({self.config.limits.memory_bytes}B)"
            )
        if result.status is Status.SIGNALLED:
            return self._complete(False, f"Execution failed with code {128 + result.signal}")
        if result.status is Status.NONZERO_EXIT:
            return self._complete(False, f"Execution failed with code {result.exit_code}")
        if result.status is not Status.OK:
            return self._complete(False, f"Internal error: {result.describe()}")
        try:
            images = self._images(lease)
        except FileTooLarge as e:
            self.log.warn(
                "asy run: images over the image limit of {limit} B: {why}", limit=self.config.max_image, why=e
            )
            return self._complete(False, output_limit_message(self.config.max_image))
        if not images:
            return self._complete(False, "No image output")
        for data in images:
            self.sink.result(self.options.format, data)
        self._complete(True, None)

    def _images(self, lease) -> list[bytes]:
        """Every image of the requested format in the output directory,
        ``output`` first, then the other shipouts by name; FileTooLarge when
        they are more than ``max_image`` bytes together."""
        suffix = "." + self.options.format
        out = lease.workspace.path + "/" + OUTPUT_DIR
        try:
            names = sorted(n for n in os.listdir(out) if n.endswith(suffix))
        except FileNotFoundError:
            return []
        names.sort(key=lambda n: n != "output" + suffix)
        images, left = [], self.config.max_image
        for name in names:
            images.append(lease.workspace.read_file(f"{OUTPUT_DIR}/{name}", left))
            left -= len(images[-1])
        return images

    def _complete(self, success: bool, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.sink.complete(success, error, int((self.clock() - self._t0) * 1000))
