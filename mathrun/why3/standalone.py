"""``mathrun-why3server``: a drop-in for why3's ``why3server``.

    mathrun-why3server --socket PATH [-j N] [--logging] [--single-client] [--time-format 1.5|1.7]

The socket is bound before Twisted is imported.  If a ``twistd mathrun``
with the Why3 front end runs on the host, the bound socket is handed to it
(handoff_client.py) and its provers run as job users; else it goes to this
process's reactor: ``why3`` tries to connect at once, then after 0.1 s, then only
after 0.5 s, so binding fast saves every ``why3`` run 0.4 s.  Provers run as
the user who started the server (as with the C server), confined by the
sandbox's jail: rlimits from each request, a wall-clock backstop, an output
cap, and everything they start killed when they end.
"""

import _socket  # not socket: its enums cost 10 ms before the bind
import os
import sys

from .catoi import atoi

LONG = {"socket": True, "logging": False, "single-client": False, "time-format": True}  # name: takes a value


def fail(message: str, stream=None):
    """Exit 1 with a message: the C server's own go to stdout, getopt's to stderr."""
    print(message, file=stream or sys.stdout)
    sys.exit(1)


def getopt_long(argv: list[str], prog: str) -> tuple[list[tuple[str, str]], list[str]]:
    """glibc's getopt_long for ``-j:`` and LONG, with its messages (Python's
    getopt module would cost 20 ms of imports before the bind)."""
    opts, rest, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            rest += args
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            matches = [n for n in LONG if n.startswith(name)]
            if name in LONG:
                matches = [name]
            if not matches:
                fail(f"{prog}: unrecognized option '{arg}'", sys.stderr)
            if len(matches) > 1:
                options = " ".join(f"'--{n}'" for n in matches)
                fail(f"{prog}: option '{arg}' is ambiguous; possibilities: {options}", sys.stderr)
            name = matches[0]
            if LONG[name] and not eq:
                if not args:
                    fail(f"{prog}: option '--{name}' requires an argument", sys.stderr)
                value = args.pop(0)
            elif not LONG[name] and eq:
                fail(f"{prog}: option '--{name}' doesn't allow an argument", sys.stderr)
            opts.append(("--" + name, value))
        elif arg.startswith("-") and arg != "-":
            letter, value = arg[1], arg[2:]
            if letter != "j":
                fail(f"{prog}: invalid option -- '{letter}'", sys.stderr)
            if not value:
                if not args:
                    fail(f"{prog}: option requires an argument -- 'j'", sys.stderr)
                value = args.pop(0)
            opts.append(("-j", value))
        else:
            rest.append(arg)
    return opts, rest


def parse(argv: list[str], prog: str = "why3server") -> dict:
    """why3server's command line, with its error messages."""
    options = {"socket": None, "jobs": 1, "logging": False, "single_client": False, "time_format": "1.5"}
    opts, rest = getopt_long(argv, prog)
    for opt, value in opts:
        if opt == "-j":
            options["jobs"] = atoi(value)
            if options["jobs"] <= 0:
                fail("-j requires a positive number")
        elif opt == "--socket":
            options["socket"] = value
        elif opt == "--logging":
            options["logging"] = True
        elif opt == "--single-client":
            options["single_client"] = True
        elif opt == "--time-format":
            if value not in ("1.5", "1.7"):
                fail("--time-format: 1.5 (%.2f) or 1.7 (%.6f)", sys.stderr)
            options["time_format"] = value
    if rest:
        fail(f"extra arguments, stopping [opt_index={len(argv) + 1 - len(rest)},argc={len(argv) + 1}]")
    if options["socket"] is None:
        fail("need to specify a socket name using --socket")
    return options


def bind(path: str):
    """Unlink whatever is there, bind, listen: as the C server does."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def main(argv=None) -> None:
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "why3server"
    options = parse(sys.argv[1:] if argv is None else argv, prog)
    try:
        sock = bind(options["socket"])
    except OSError:
        sys.exit(1)  # the C server says nothing here either
    if not options["logging"]:  # (the C server's log goes to its directory: served here)
        from .handoff_client import hand_off

        hand_off(sock, options)  # exits if a mathrun daemon serves the session
    sys.exit(serve(sock, options))


def _start_logging(enabled: bool) -> None:
    """Like the C server: with --logging, why3server.log in the working
    directory; else no log at all."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observers = []
    if enabled:
        logfile = open("why3server.log", "a", buffering=1)  # noqa: SIM115 - open for the whole run
        observers.append(FilteringLogObserver(textFileLogObserver(logfile), [LogLevelFilterPredicate(LogLevel.debug)]))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)


def _own_sandbox(job_root: str, reactor):
    """An unprivileged sandbox of this process's own, under ``job_root``:
    the provers' limits come from each request, none from an operator."""
    from ..sandbox import Limits, Sandbox, SandboxConfig

    unlimited = Limits(**{name: None for name in Limits.__dataclass_fields__})
    config = SandboxConfig(
        jobs=64,
        privileged=False,
        job_root=os.path.join(job_root, "jobs"),
        max_limits=unlimited,
        server_lock=False,  # its job root is its own: any number of these may run
    )
    return Sandbox(config, reactor)


def serve(sock, options: dict) -> int:
    """Serve in this process (no daemon took the session); the exit status."""
    import shutil
    import signal
    import socket
    import tempfile

    from twisted.internet import reactor
    from twisted.internet.error import ReactorNotRunning

    from . import protocol as wire
    from .server import Why3Config, Why3Server

    status = [0]

    def stop():
        """Once: the last client leaving and a signal may both ask."""
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def last_client_left():
        status[0] = 1  # what the C server exits with then
        stop()

    _start_logging(options["logging"])
    path = options["socket"]
    job_root = tempfile.mkdtemp(prefix="mathrun-why3-")
    try:
        sandbox = _own_sandbox(job_root, reactor)
        sandbox.start()
        config = Why3Config(
            jobs=options["jobs"], time_format=wire.TIME_FORMATS[options["time_format"]], output_dir=os.getcwd()
        )
        server = Why3Server(sandbox, config, reactor, on_empty=last_client_left if options["single_client"] else None)
        server.log_queries = options["logging"]
        port = reactor.adoptStreamPort(sock.fileno(), socket.AF_UNIX, server)
        sock.close()
    except BaseException:
        shutil.rmtree(job_root, ignore_errors=True)
        os.unlink(path)
        raise

    def shutdown():
        server.stop()
        port.stopListening()
        if os.path.lexists(path):
            os.unlink(path)
        return sandbox.stop().addBoth(lambda _: shutil.rmtree(job_root, ignore_errors=True))

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    # The reactor handles SIGTERM and SIGINT; SIGHUP means the same here.
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(stop))
    reactor.run()
    return status[0]


if __name__ == "__main__":
    main()
