"""The standalone server's side of the hand-off (the daemon's is handoff.py).

If a ``twistd mathrun`` with the Why3 front end runs on this host, the
standalone passes its bound socket to the daemon's control socket and waits:
the daemon serves the session with provers sandboxed as job users, and says
when to exit and with which status.  Imports nothing but built-in modules:
this runs before anything heavy, on every ``why3 prove``.
"""

import _signal
import _socket
import os
import sys

DEFAULT_CONTROL = "/run/mathrun/why3-control.sock"
STOP_WAIT = 10.0  # seconds the daemon gets to end a session we were told to stop


class _Stop(Exception):
    """A signal asked the standalone to end."""


def control_path() -> str:
    """``MATHRUN_WHY3_CONTROL`` (``none``: never hand off), else the default."""
    return os.environ.get("MATHRUN_WHY3_CONTROL") or DEFAULT_CONTROL


_buffer = [b""]


def _read_line(control) -> bytes:
    """The next line from the daemon (b"" at its end)."""
    while b"\n" not in _buffer[0]:
        chunk = control.recv(4096)
        if not chunk:
            return b""
        _buffer[0] += chunk
    line, _buffer[0] = _buffer[0].split(b"\n", 1)
    return line.strip()


def _offer(control, sock, options: dict) -> bool:
    """Send the socket and our directory; whether the daemon took them."""
    try:
        cwd = os.fsencode(os.getcwd()).hex()
        here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    jobs, single, time_format = options["jobs"], int(options["single_client"]), options["time_format"]
    line = f"handoff jobs={jobs} single-client={single} time-format={time_format} cwd={cwd}\n"
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (sock.fileno(), here))
    try:
        control.sendmsg([line.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        return _read_line(control) == b"ok"
    except OSError:
        return False
    finally:
        os.close(here)


def _raise_stop(signum, frame):
    raise _Stop


def _wait(control) -> bytes:
    """The daemon's ``end`` line (b"" if it went away), sending ``stop`` if
    a signal comes first."""
    for signum in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(signum, _raise_stop)
    try:
        return _read_line(control)
    except _Stop:
        pass
    except OSError:
        return b""
    for signum in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(signum, _signal.SIG_IGN)
    control.settimeout(STOP_WAIT)
    try:
        control.sendall(b"stop\n")
        _read_line(control)
    except OSError:
        pass
    return b"end code=0"  # as the standalone ends on a signal when it serves itself


def hand_off(sock, options: dict) -> None:
    """Hand the session to the daemon if one takes it, then exit as it says;
    return (to serve in-process) if there is none or it refuses."""
    path = control_path()
    if path == "none":
        return
    control = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        control.connect(path)
    except OSError:
        control.close()
        return
    if not _offer(control, sock, options):
        control.close()
        return
    sock.close()  # the daemon holds it now: when it dies, connections are refused
    end = _wait(control)
    control.close()
    try:
        os.unlink(options["socket"])
    except OSError:
        pass
    if not end.startswith(b"end code="):
        # The daemon died mid-session: as the C server would, this one dies.
        os.write(2, b"mathrun-why3server: the mathrun daemon went away during the session\n")
        os.kill(os.getpid(), _signal.SIGKILL)
    sys.exit(int(end[len(b"end code=") :]))
