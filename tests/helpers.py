"""Shared test helpers: a real sandbox per test, and process checks."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import defer, reactor

from mathrun.sandbox import Sandbox, SandboxConfig

ROOT = os.geteuid() == 0
# Python for code run inside jobs: the system's, since the project's venv may
# live under /tmp, which a job sees as its own private directory.
PYTHON = "/usr/bin/python3"
TIMEOUT = 60  # seconds any awaited Deferred in a test may take
# The suite's own job users (made by `make test`'s set-up), helper user and
# job root, so that it never disturbs a server using the default ones.
USER_PREFIX = os.environ.get("MATHRUN_TEST_PREFIX", "mathrun-test")
HELPER_USER = USER_PREFIX


def server_args() -> list[str]:
    """The ``twistd mathrun`` options that put a server on the suite's users."""
    return ["--user-prefix", USER_PREFIX, "--helper-user", HELPER_USER] if ROOT else []


def within(d: defer.Deferred, seconds: float = TIMEOUT) -> defer.Deferred:
    """A Deferred that never fires must fail the test, not hang the run."""
    return d.addTimeout(seconds, reactor)


async def until(condition, what: str, seconds: float = 20.0, step: float = 0.01) -> None:
    """Poll ``condition()`` until it holds; after ``seconds`` fail saying
    ``what`` never happened (a bare polling loop only hits the test's
    overall timeout, which does not say which wait hung)."""
    from twisted.internet import task

    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"after {seconds:g} s: {what}")
        await task.deferLater(reactor, step, lambda: None)


def stop_process(proc, seconds: float = 30) -> None:
    """SIGTERM, as an operator (or systemd) stops a server, so that it
    cleans up what it made; SIGKILL if it has not ended in ``seconds``."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def temp_dir(testcase, prefix="mathrun-test-") -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def make_sandbox(testcase, **config) -> Sandbox:
    """A started sandbox whose leases are all released after the test
    (unprivileged, in a temporary job root, when not run as root)."""
    config.setdefault("jobs", 4)
    config.setdefault("user_prefix", USER_PREFIX)
    config.setdefault("helper_user", HELPER_USER)
    if not ROOT and "job_root" not in config:
        config.update(privileged=False, job_root=os.path.join(temp_dir(testcase), "jobs"))
    sandbox = Sandbox(SandboxConfig(**config))
    sandbox.start()
    testcase.addCleanup(lambda: within(sandbox.stop()))
    return sandbox


async def assert_still_serving(testcase, sandbox) -> None:
    """After a hostile job: the sandbox still runs the next one."""
    from mathrun.sandbox import Status

    follow = await sandbox.run(["echo", "still here"])
    testcase.assertEqual((follow.status, follow.stdout), (Status.OK, b"still here\n"))


def make_unprivileged_sandbox(testcase, jobs: int = 2, **config) -> Sandbox:
    """A started sandbox in unprivileged mode (root or not), in a job root
    of its own."""
    root = temp_dir(testcase, "mathrun-unpriv-")
    return make_sandbox(testcase, jobs=jobs, privileged=False, job_root=os.path.join(root, "jobs"), **config)


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        if int(fields["Uid"].split()[0]) == uid:
            found.append(int(name))
    return found


def workspace_left(root: str) -> str | None:
    """What a released lease left in its workspace, or None: its tmpfs is
    unmounted, or kept mounted for the slot's next job with nothing in it
    but an empty ``work/`` and ``tmp/``."""
    if not os.path.exists(root):
        return None
    entries = sorted(os.listdir(root))
    if not os.path.ismount(root):
        return f"{root} holds {entries}" if entries else None
    if entries != ["tmp", "work"]:
        return f"the kept workspace {root} holds {entries}"
    for name in entries:
        inside = os.path.join(root, name)
        if os.path.islink(inside) or os.listdir(inside):
            return f"{inside} is not an empty directory"
    return None


def async_test(method=None, *, timeout: float = TIMEOUT):
    """Run an ``async def`` test method as a Deferred with a timeout."""

    def wrap(func):
        import functools

        @functools.wraps(func)
        def test(self, *args, **kwargs):
            return within(defer.ensureDeferred(func(self, *args, **kwargs)), timeout)

        return test

    return wrap(method) if method is not None else wrap


def pid_namespace(pid: int) -> str | None:
    """The PID namespace of a process (``pid:[inode]``), None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from their status, which anyone may
    read, even of a parent that made itself non-dumpable)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/status") as f:
                if f"\nPPid:\t{pid}\n" in f.read():
                    found.append(int(name))
        except OSError:
            pass
    return found


def children_named(pid: int, comm: str) -> list[int]:
    """The children of ``pid`` whose command name is ``comm`` (e.g. the
    keepers a spawn server or a Maxima mother started)."""
    found = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() == comm:
                    found.append(child)
        except OSError:
            pass
    return found


def namespace_members(namespace: str) -> list[int]:
    """Live (non-zombie) processes of a PID namespace, as this one sees them."""
    assert namespace is not None
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        if pid_namespace(int(name)) != namespace:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(name))
    return found


class PeakCounter:
    """Samples how many processes a PID namespace holds, every 10 ms, until
    ``stop``: a lower bound of the true peak, enough to show a limit held."""

    def __init__(self, namespace: str):
        from twisted.internet import task

        self.namespace = namespace
        self.peak = 0
        self._loop = task.LoopingCall(self._sample)
        self._loop.start(0.01)

    def _sample(self) -> None:
        self.peak = max(self.peak, len(namespace_members(self.namespace)))

    def stop(self) -> int:
        if self._loop.running:
            self._loop.stop()
        return self.peak
