"""The ``mathrun`` command: Maxima, Asymptote and health from a shell.

Exit status (also in docs/client.md):

==  =========================================================================
0   done
1   the job ran and failed (asy's error), or the server is not healthy
2   bad usage (arguments, a file that cannot be read)
3   the time limit passed (Maxima's 416, asy's time limit)
4   refused before running (Maxima's 400/413, the asy queue's ``denied``)
5   the server could not finish the job (Maxima's 500: output or memory
    limit; asy's output or memory limit, a failed back end)
6   busy: no Maxima child free in time (503; Retry-After is printed)
7   no answer: the server cannot be reached or the connection broke
8   credentials: the server wants them (401) or refused those sent
==  =========================================================================
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from twisted.internet import defer, task

from .asy import TIMEOUT_CLASSES, AsyClient, AsyDenied, AsyResult
from .common import (
    AuthRequired,
    ClientError,
    ConnectionFailed,
    Credentials,
    check_credentials,
    default_url,
    endpoint,
    split_url,
)
from .health import Health, health
from .maxima import MaximaAnswer, MaximaBusy, MaximaClient, MaximaError, MaximaRefused, MaximaServerError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REFUSED, EXIT_SERVER, EXIT_BUSY, EXIT_CONNECTION = range(8)
EXIT_AUTH = 8
FORMATS = ("svg", "pdf", "png")
EPILOG = """exit status: 0 done; 1 the job failed (asy's error) or the server is unhealthy;
2 bad usage; 3 time limit (Maxima's 416, asy's); 4 refused (Maxima's 400/413,
asy denied); 5 the server could not finish (Maxima's 500, asy's output or
memory limit); 6 busy (Maxima's 503); 7 no answer (cannot connect);
8 credentials wanted or refused (401).
credentials: --user USER (password from $MATHRUN_PASSWORD, else asked on the
terminal), or https://user:pass@host in the URL, or $MATHRUN_USER."""


def exit_code(outcome) -> int:
    """The exit status for what a command got: an answer, a result or an error."""
    if isinstance(outcome, MaximaAnswer):
        return EXIT_TIMEOUT if outcome.timed_out else EXIT_OK
    if isinstance(outcome, AsyResult):
        if outcome.success:
            return EXIT_OK
        error = outcome.error or ""
        if "time limit" in error:
            return EXIT_TIMEOUT
        if "output limit" in error or "memory limit" in error or error.startswith("Back end failed"):
            return EXIT_SERVER
        return EXIT_FAILED
    if isinstance(outcome, Health):
        return EXIT_OK if outcome.ok else EXIT_FAILED
    for kind, code in ((MaximaRefused, EXIT_REFUSED), (AsyDenied, EXIT_REFUSED), (MaximaServerError, EXIT_SERVER),
                       (MaximaBusy, EXIT_BUSY), (ConnectionFailed, EXIT_CONNECTION), (AuthRequired, EXIT_AUTH)):  # fmt: skip
        if isinstance(outcome, kind):
            return code
    return EXIT_SERVER if isinstance(outcome, MaximaError) else EXIT_FAILED


def parser() -> argparse.ArgumentParser:
    """The ``mathrun`` command's arguments: one subcommand per front end."""
    p = argparse.ArgumentParser(
        prog="mathrun",
        description="Use a mathrun server: Maxima, Asymptote, health.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("maxima", help="evaluate Maxima text, print the output, save plots")
    server_options(m)
    m.add_argument("--timeout", type=int, default=10000, metavar="MS", help="time limit in ms (default 10000)")
    m.add_argument("--raw", action="store_true", help="print the answer as sent (prompts and labels)")
    m.add_argument("-d", "--dir", default=".", help="where plot files go (default: here)")
    m.add_argument("expr", metavar="EXPR|-", help="Maxima text, or - to read it from standard input")
    a = sub.add_parser("asy", help="render Asymptote files through the queue")
    server_options(a)
    a.add_argument("-f", "--format", choices=FORMATS, help="image format (default: from -o, else svg)")
    a.add_argument("-o", "--output", metavar="OUT", help="the image file (default: MAIN.FORMAT here)")
    a.add_argument("--timeout", choices=list(TIMEOUT_CLASSES), default="default", help="the task class")
    a.add_argument("--restore", action="store_true", help="send hashes first; upload only what the server lacks")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    a.add_argument("files", nargs="+", metavar="FILE", help="the main file first (- reads it from standard input)")
    h = sub.add_parser("health", help="the server's health (exit 0 when ok)")
    server_options(h)
    h.add_argument("--deep", action="store_true", help="also run a job in the server's sandbox")
    h.add_argument("--json", action="store_true", help="print the server's JSON report")
    return p


def server_options(p: argparse.ArgumentParser) -> None:
    """Which server, as whom, trusting which certificate: every command's."""
    p.add_argument(
        "--url", default=None, help=f"the server's base URL (default: $MATHRUN_URL or {split_url(default_url())[0]})"
    )
    p.add_argument("--user", default=None, help="HTTP basic auth as USER (password: $MATHRUN_PASSWORD or asked)")
    p.add_argument("--ca", default=None, metavar="FILE", help="trust this PEM certificate for https/wss (self-signed)")


class Console:
    """Where a command writes: text streams, standard input, the directory;
    the environment and the terminal's password prompt (credentials)."""

    def __init__(self, stdout=None, stderr=None, stdin=None, environ=None, ask=None):
        self.stdout, self.stderr, self.stdin = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
        self.environ = os.environ if environ is None else environ
        self.ask = ask or getpass.getpass

    def say(self, text: str) -> None:
        """A line for the user, on stderr (stdout is the result's)."""
        self.stderr.write(f"mathrun: {text}\n")
        self.stderr.flush()

    def write_bytes(self, stream, data: bytes) -> None:
        """Raw output (an image, Maxima's text) to a stream."""
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()


async def run(reactor, argv, console: Console | None = None) -> int:
    """Run one command; the exit status."""
    console = console or Console()
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    command = {"maxima": run_maxima, "asy": run_asy, "health": run_health}[args.command]
    try:
        try:
            endpoint(args.url or default_url(), "/")
            args.credentials = credentials_of(args, console)
        except ValueError as e:
            raise UsageError(str(e)) from e
        check_ca(args.ca)
        return await command(reactor, args, console)
    except UsageError as e:
        console.say(str(e))
        return EXIT_USAGE
    except ClientError as e:
        console.say(f"{args.command}: {message_of(e, getattr(args, 'credentials', None))}")
        return exit_code(e)


class UsageError(Exception):
    """Bad arguments: exit status 2, as argparse's own."""

    pass


def credentials_of(args, console: Console) -> Credentials | None:
    """(user, password) from --user, the URL's user:pass@ or $MATHRUN_USER;
    the password from the URL (its own user's), $MATHRUN_PASSWORD, or the
    terminal.  None: no credentials."""
    _, url_user, url_password = split_url(args.url or default_url())
    user = args.user or url_user or console.environ.get("MATHRUN_USER") or None
    if user is None:
        if url_password:
            raise UsageError("a password without a user name in the URL")
        return None
    if user == url_user and url_password is not None:
        password = url_password
    elif "MATHRUN_PASSWORD" in console.environ:
        password = console.environ["MATHRUN_PASSWORD"]
    elif console.stdin.isatty():
        password = console.ask(f"mathrun: password for {user}: ")
    else:
        raise UsageError(f"no password for {user}: set $MATHRUN_PASSWORD, put user:pass@ in the URL, or use a terminal")
    return check_credentials((user, password))


def check_ca(path: str | None) -> None:
    """A --ca file that cannot be used is bad usage, found before connecting."""
    if path is None:
        return
    from mathrun.asy.token import load_ca

    try:
        load_ca(path)
    except OSError as e:
        raise UsageError(f"cannot read --ca {path}: {e.strerror}") from e
    except Exception as e:  # pyOpenSSL's error for a file that holds no certificate
        raise UsageError(f"--ca {path} holds no PEM certificate") from e


def message_of(e: ClientError, credentials: Credentials | None = None) -> str:
    """One line for the user from a client error."""
    if isinstance(e, AuthRequired) and e.sent and credentials:
        return f"{e} (user {credentials[0]})"
    if isinstance(e, MaximaError):
        text = e.message.splitlines()[0] if e.message else str(e.status)
        text = text if text.startswith(str(e.status)) else f"{e.status}: {text}"
        return text + (f" (retry after {e.retry_after} s)" if e.retry_after is not None else "")
    return str(e)


async def run_maxima(reactor, args, console: Console) -> int:
    """``mathrun maxima``: one evaluation; the exit status says how it went."""
    text = console.stdin.read() if args.expr == "-" else args.expr
    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of ms")
    client = MaximaClient(reactor, args.url, credentials=args.credentials, ca_file=args.ca)
    answer = await client.evaluate(text, args.timeout)
    console.stdout.write(answer.body if args.raw else answer.output)
    console.stdout.flush()
    for name, data in answer.plots.items():
        path = save(args.dir, name, data)
        console.say(f"saved {path}")
    if answer.timed_out:
        console.say(f"maxima: timed out after {args.timeout} ms (the output so far is above)")
    return exit_code(answer)


def save(directory: str, name: str, data: bytes) -> str:
    """A file from the server, by its base name only: never outside ``directory``."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or base.startswith("."):
        base = "plot-" + base.lstrip(".") if base.strip(".") else "plot"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, base)
    with open(path, "wb") as f:
        f.write(data)
    return path


async def run_asy(reactor, args, console: Console) -> int:
    """``mathrun asy``: one render; images to files or stdout."""
    files = read_files(args.files, console)
    main = next(iter(files))
    fmt = args.format or output_format(args.output) or "svg"
    out = args.output or os.path.splitext(main)[0] + "." + fmt

    def progress(event):
        if args.quiet:
            return
        if event.passed:
            console.say("running")
            return
        place = f" (position {event.position})" if event.position is not None else ""
        if event.estimate_ms is not None:
            console.say(f"queued{place}, expected wait {event.estimate_ms / 1000:.1f} s")
        else:
            console.say(f"queued{place}")

    client = AsyClient(reactor, args.url, credentials=args.credentials, ca_file=args.ca)
    result = await client.render(files, main, fmt, args.timeout, progress, restore=args.restore)
    console.write_bytes(console.stdout, result.stdout)
    console.write_bytes(console.stderr, result.stderr)
    if result.success:
        for i, (_, data) in enumerate(result.images):
            path = out if i == 0 else f"{os.path.splitext(out)[0]}-{i + 1}.{fmt}"
            with open(path, "wb") as f:
                f.write(data)
            if not args.quiet:
                console.say(f"wrote {path} ({len(data)} bytes)")
    else:
        where = result.location
        console.say(f"asy: {result.error or 'failed'}" + (f"; {where}" if where else ""))
    return exit_code(result)


def read_files(paths, console: Console) -> dict[str, bytes]:
    """Name → contents, in order (the main file first); names are base names."""
    files = {}
    for path in paths:
        name = "main.asy" if path == "-" else os.path.basename(path)
        if name in files:
            raise UsageError(f"two files named {name}: the server sees base names only")
        try:
            files[name] = read_stdin(console.stdin) if path == "-" else open(path, "rb").read()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from e
    return files


def read_stdin(stream) -> bytes:
    """The input when the command line names none."""
    raw = getattr(stream, "buffer", None)
    return raw.read() if raw is not None else stream.read().encode()


def output_format(path: str | None) -> str | None:
    """The image format: the option's, else the output file's suffix."""
    ext = os.path.splitext(path or "")[1].lstrip(".").lower()
    return ext if ext in FORMATS else None


async def run_health(reactor, args, console: Console) -> int:
    """``mathrun health``: the server's state; exit 0 only when it is ok."""
    report = await health(reactor, args.url, deep=args.deep, credentials=args.credentials, ca_file=args.ca)
    if args.json:
        import json

        console.stdout.write(json.dumps(report.report, indent=2) + "\n")
    else:
        console.stdout.write(report.summary() + "\n")
    console.stdout.flush()
    return exit_code(report)


def main(argv=None) -> None:
    """The console script: runs the reactor for one command, exits with its
    status (130 when interrupted: the reactor stopped before the answer)."""
    finished = []

    async def once(reactor):
        code = await run(reactor, sys.argv[1:] if argv is None else argv)
        finished.append(code)
        if code:
            raise SystemExit(code)

    try:
        task.react(lambda reactor: defer.ensureDeferred(once(reactor)))
    except SystemExit:
        if not finished:
            raise SystemExit(130) from None
        raise
