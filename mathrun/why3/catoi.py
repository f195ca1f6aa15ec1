"""C ``atoi``, as the C server reads every number (``2.9`` → 2, ``21.`` → 21,
``abc`` → 0).  Free of Twisted: the standalone server parses ``-j`` with it
before it binds its socket."""

import re

_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def atoi(text: str) -> int:
    """glibc ``atoi``: optional blanks and sign, then digits, anything else
    stops; ``strtol``'s saturation, then the cast to ``int``."""
    m = _ATOI.match(text)
    if not m:
        return 0
    value = max(-(2**63), min(2**63 - 1, int(m.group(1))))
    return (value + 2**31) % 2**32 - 2**31
