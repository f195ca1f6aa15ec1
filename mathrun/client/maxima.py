"""A client of the Maxima front end (goemaxima's HTTP API at /maxima).

The answer comes in Maxima's REPL form (prompts, labels, 2D results
centred on the line); :func:`strip_prompts` turns it into what a person
wants to read, and :class:`MaximaAnswer` keeps both.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field

import treq
from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.web.client import RequestTransmissionFailed, ResponseFailed

from .common import (
    AuthRequired,
    ClientError,
    ConnectionFailed,
    Credentials,
    basic_header,
    client_credentials,
    default_url,
    endpoint,
    http_agent,
)

PROMPTS = re.compile(r"(?:\(%i\d+\) ?)+")
LABEL = re.compile(r"^\(%o\d+\) ")


class MaximaError(ClientError):
    """The server answered, but not with Maxima's output: ``status`` is the
    HTTP status, ``message`` the server's text, ``retry_after`` seconds (503)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(f"{status}: {message}" if message else str(status))
        self.status, self.message, self.retry_after = status, message, retry_after


class MaximaRefused(MaximaError):
    """400 or 413: the request itself was refused (bad timeout, input too long)."""


class MaximaServerError(MaximaError):
    """500: output or memory limit, or the plot files could not be read."""


class MaximaBusy(MaximaError):
    """503: no Maxima child became free in time; try again after ``retry_after``."""


@dataclass
class MaximaAnswer:
    """A 200 (the job ended) or a 416 (``timed_out``: output so far)."""

    status: int
    body: str  # Maxima's text as the server sent it
    plots: dict[str, bytes] = field(default_factory=dict)

    @property
    def timed_out(self) -> bool:
        """The evaluation hit its timeout (goemaxima's 416)."""
        return self.status == 416

    @property
    def output(self) -> str:
        """Maxima's text without its REPL labels and prompts."""
        return strip_prompts(self.body)


def strip_prompts(body: str) -> str:
    """Maxima's output without the ``(%iN)`` prompts and ``(%oN)`` labels.

    A label is replaced by spaces, then each run of indented lines that holds
    a result is dedented together: a 2D result (centred by Maxima on its line
    width, its label at the left of the middle line) keeps its shape, at the
    left margin.  The quiet form (no prompts) comes back unchanged but for
    blank lines at either end."""
    lines = []
    for line in body.split("\n"):
        prompt = PROMPTS.match(line)
        if prompt:
            line = line[prompt.end() :].lstrip()  # text after a prompt (e.g. gnuplot's)
            if not line:
                continue
        labelled = bool(LABEL.match(line))
        if labelled:
            line = " " * LABEL.match(line).end() + line[LABEL.match(line).end() :]
        lines.append([line.rstrip(), labelled])
    _dedent_results(lines)
    text = "\n".join(line for line, _ in lines).strip("\n")
    return text + "\n" if text else ""


def _dedent_results(lines: list[list]) -> None:
    """Dedent each run of indented lines that holds a result; in a run, a
    label line next to no other line of its own (a 1D result) goes alone."""
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and (lines[j][1] or lines[j][0].startswith(" ")):
            j += 1
        if any(labelled for _, labelled in lines[i:j]):
            start = i
            for k in range(i, j + 1):
                alone = k < j and lines[k][1] and all(n in (i - 1, j) or lines[n][1] for n in (k - 1, k + 1))
                if k == j or alone:
                    _dedent(lines[start:k])
                    if alone:
                        _dedent(lines[k : k + 1])
                    start = k + 1
        i = max(j, i + 1)


def _dedent(block: list[list]) -> None:
    indents = [len(s) - len(s.lstrip(" ")) for s, _ in block if s.strip()]
    cut = min(indents, default=0)
    for entry in block:
        entry[0] = entry[0][cut:]


def read_zip(data: bytes) -> tuple[str, dict[str, bytes]]:
    """A zip answer: OUTPUT's text and the plot files by their names."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        plots = {n: archive.read(n) for n in archive.namelist() if n != "OUTPUT"}
        text = archive.read("OUTPUT").decode("utf-8", "replace") if "OUTPUT" in archive.namelist() else ""
    return text, plots


ERRORS = {400: MaximaRefused, 413: MaximaRefused, 500: MaximaServerError, 503: MaximaBusy}


class MaximaClient:
    """Evaluates Maxima text on a mathrun (or goemaxima) server.

    ``http`` is a treq-like client (``treq.testing.StubTreq`` in tests);
    by default an HTTP client on ``reactor``'s own Agent, whose https trusts
    ``ca_file`` when given.  ``credentials`` (user, password), else the
    URL's ``user:pass@``, go with each request as HTTP basic auth."""

    def __init__(self, reactor, url: str | None = None, http=None, version: str | None = None,
                 credentials: Credentials | None = None, ca_file: str | None = None):  # fmt: skip
        url, self.credentials = client_credentials(url or default_url(), credentials)
        self.url = endpoint(url, "/maxima")
        self.reactor = reactor
        self.http = http if http is not None else http_agent(reactor, ca_file)
        self._content = getattr(self.http, "content", treq.content)
        self.version = version

    async def evaluate(self, text: str, timeout_ms: int = 10000) -> MaximaAnswer:
        """Maxima's answer to ``text``; raises :class:`MaximaError` for an
        answer that is not Maxima's output, :class:`ConnectionFailed` when
        there is no answer."""
        fields = {"input": text, "timeout": str(int(timeout_ms)), "ploturlbase": "!ploturl!"}
        if self.version is not None:
            fields["version"] = self.version
        # The server's own timer ends the job; this bound is for a server that hangs.
        wait = timeout_ms / 1000 + 60
        try:
            response = await self.http.post(self.url, data=fields, headers=basic_header(self.credentials),
                                            timeout=wait, reactor=self.reactor)  # fmt: skip
            data = await self._content(response)
        except defer.CancelledError as e:
            raise ConnectionFailed(f"no answer from {self.url} within {wait:g} s") from e
        except (neterror.ConnectError, neterror.DNSLookupError, ResponseFailed, RequestTransmissionFailed) as e:
            raise ConnectionFailed(f"cannot reach {self.url}: {describe(e)}") from e
        if response.code == 401:
            raise AuthRequired(self.credentials is not None)
        return answer_from(response.code, response.headers, data)


def answer_from(code: int, headers, data: bytes) -> MaximaAnswer:
    """The answer, or the error, that an HTTP response from /maxima means."""
    kind = (headers.getRawHeaders("content-type") or [""])[0]
    if code == 200 and kind.startswith("application/zip"):
        try:
            text, plots = read_zip(data)
        except zipfile.BadZipFile as e:
            raise MaximaServerError(code, f"a zip that cannot be read: {e}") from e
        return MaximaAnswer(code, text, plots)
    text = data.decode("utf-8", "replace")
    if code in (200, 416):
        return MaximaAnswer(code, text)
    retry = (headers.getRawHeaders("retry-after") or [None])[0]
    retry_after = int(retry) if retry is not None and retry.strip().isdigit() else None
    raise ERRORS.get(code, MaximaError)(code, text.strip(), retry_after)


def describe(e: Exception) -> str:
    """A one-line reason for a failed connection."""
    if isinstance(e, (ResponseFailed, RequestTransmissionFailed)):  # why the request or the answer failed
        return "; ".join(r.getErrorMessage() for r in e.reasons) or "the connection broke"
    return str(e).strip() or type(e).__name__
