"""``mathrun-why3server``: a drop-in for why3's ``why3server``.

    mathrun-why3server --socket PATH [-j N] [--logging] [--single-client]

The socket is bound before Twisted is imported: ``why3`` tries to connect at
once, then after 0.1 s, then only after 0.5 s, so binding fast saves every
``why3`` run 0.4 s.  Provers run as the user who started the server (as with
the C server), confined by the sandbox's jail: rlimits from each request,
a wall-clock backstop, and everything they start killed when they end.
"""

import os
import socket
import sys

USAGE = "usage: why3server --socket NAME [-j N] [--logging] [--single-client] [--time-format 1.5|1.7]"


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(message, file=sys.stderr)
    sys.exit(1)


def parse(argv: list[str]) -> dict:
    """why3server's command line, with its error messages."""
    options = {"socket": None, "jobs": 1, "logging": False, "single_client": False, "time_format": "1.5"}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-j", "--socket", "--time-format"):
            if not args:
                fail(f"option {arg} needs an argument\n{USAGE}")
            value = args.pop(0)
            if arg == "-j":
                if not value.isdigit() or int(value) < 1:
                    fail(f"-j: expected a positive number, got '{value}'")
                options["jobs"] = int(value)
            elif arg == "--socket":
                options["socket"] = value
            else:
                if value not in ("1.5", "1.7"):
                    fail("--time-format: 1.5 (%.2f) or 1.7 (%.6f)")
                options["time_format"] = value
        elif arg == "--logging":
            options["logging"] = True
        elif arg == "--single-client":
            options["single_client"] = True
        elif arg in ("-help", "--help", "-h"):
            print(USAGE)
            sys.exit(0)
        else:
            fail(f"unknown option: {arg}\n{USAGE}")
    if options["socket"] is None:
        fail("need to specify a socket name using --socket")
    return options


def bind(path: str) -> socket.socket:
    if os.path.lexists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def main(argv=None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        sock = bind(options["socket"])
    except OSError as e:
        fail(f"cannot bind socket {options['socket']}: {e.strerror}")
    serve(sock, options)


def serve(sock: socket.socket, options: dict) -> None:
    import shutil
    import signal
    import tempfile

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ..sandbox import Limits, Sandbox, SandboxConfig
    from . import protocol as wire
    from .server import Why3Config, Why3Server

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)] if options["logging"] else [], redirectStandardIO=False
    )
    job_root = tempfile.mkdtemp(prefix="mathrun-why3-")
    unlimited = Limits(**{name: None for name in Limits.__dataclass_fields__})
    sandbox = Sandbox(
        SandboxConfig(jobs=64, privileged=False, job_root=os.path.join(job_root, "jobs"), max_limits=unlimited), reactor
    )
    sandbox.start()
    config = Why3Config(
        jobs=options["jobs"], time_format=wire.TIME_FORMATS[options["time_format"]], output_dir=os.getcwd()
    )
    server = Why3Server(sandbox, config, reactor, on_empty=reactor.stop if options["single_client"] else None)
    port = reactor.adoptStreamPort(sock.fileno(), socket.AF_UNIX, server)
    sock.close()
    path = options["socket"]

    def shutdown():
        server.stop()
        port.stopListening()
        if os.path.lexists(path):
            os.unlink(path)
        return sandbox.stop().addBoth(lambda _: shutil.rmtree(job_root, ignore_errors=True))

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


if __name__ == "__main__":
    main()
