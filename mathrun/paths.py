"""Where mathrun finds its C helpers and its Lisp: in a git checkout, or in
an installed package.

A checkout has ``ext/`` (built in place by ``make -C ext``) and ``lisp/``
beside the ``mathrun`` package.  An installed wheel carries the same files
as package data (``mathrun/_data/{ext,lisp,scripts}``); its set-up step
(``mathrun-setup``) copies them into a state directory and builds the
helpers there, so that the installed package itself is never written to.
"""

from __future__ import annotations

import os
import sys
from importlib import resources

JAIL = "mathrun-jail"
SPAWN = "mathrun-spawn"
FORK_LIBRARY = "libmathrun-fork.so"  # finds mathrun-jail beside itself (nsinit)


def package_data() -> str | None:
    """The wheel's data directory, or None in a checkout (whose editable
    install leaves the files where they are)."""
    path = resources.files("mathrun").joinpath("_data")
    return os.fspath(path) if path.is_dir() else None


def checkout_root() -> str:
    """The directory above the package: a checkout's root (or a copy of its
    parts, as scripts/test-unprivileged.sh makes) when no package data is
    installed."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_state_dir() -> str:
    """An installed package's set-up output, one per environment (venv), so
    that two installs of different versions never share helpers."""
    return os.path.join(sys.prefix, "var", "mathrun")


def source_root() -> str:
    """The directory holding the ``ext/``, ``lisp/`` and ``scripts/`` sources."""
    return package_data() or checkout_root()


def ext_dir() -> str:
    """Where the built helpers are by default: an installed package's state
    directory, else the checkout's ``ext/`` (``--jail`` points elsewhere)."""
    return os.path.join(default_state_dir() if package_data() else checkout_root(), "ext")


def helper(name: str, jail: str | None = None) -> str:
    """A helper by name: beside ``jail`` when one is given, else in the
    default place."""
    directory = os.path.dirname(os.path.abspath(jail)) if jail else ext_dir()
    return os.path.join(directory, name)


def mother_lisp() -> str:
    """The Maxima mother's Lisp source (it names the mother core)."""
    return os.path.join(source_root(), "lisp", "mathrun-mother.lisp")
