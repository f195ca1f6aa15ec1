"""``mathrun-setup``: the set-up step of an installed package.

The wheel carries ``ext/``, ``lisp/`` and ``scripts/`` as package data.  This
copies them into a state directory (the package itself stays as pip left
it) and runs the checkout's own set-up script there with ``--no-venv``: the
Debian packages, the C helpers built in ``STATE/ext``, the job users, and
the Maxima build with its mother core.  Nothing of that logic lives here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import paths

PARTS = ("ext", "lisp", "scripts")


def sync_tree(source: str, target: str) -> list[str]:
    """Copy the files of ``source`` whose contents differ into ``target``,
    scripts executable; an unchanged file keeps its time, so ``make`` rebuilds
    only what changed.  Returns the names copied."""
    copied = []
    for part in PARTS:
        src_dir, dst_dir = os.path.join(source, part), os.path.join(target, part)
        os.makedirs(dst_dir, mode=0o755, exist_ok=True)
        for name in sorted(os.listdir(src_dir)):
            src = os.path.join(src_dir, name)
            if not os.path.isfile(src) or name.endswith((".pyc", ".py")):
                continue
            with open(src, "rb") as f:
                data = f.read()
            dst = os.path.join(dst_dir, name)
            try:
                with open(dst, "rb") as f:
                    same = f.read() == data
            except FileNotFoundError:
                same = False
            if not same:
                tmp = f"{dst}.tmp.{os.getpid()}"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, dst)
                copied.append(f"{part}/{name}")
            os.chmod(dst, 0o755 if name.endswith(".sh") else 0o644)
    return copied


def write_plugin_cache() -> None:
    """Twisted's plugin cache (twisted/plugins/dropin.cache), written now by
    the installer: a service whose file system is read-only cannot."""
    from twisted.plugin import IPlugin, getPlugins

    list(getPlugins(IPlugin))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mathrun-setup",
        description="Set up an installed mathrun: Debian packages, C helpers, job users, Maxima (as root).",
    )
    parser.add_argument(
        "--state-dir",
        default=paths.default_state_dir(),
        help="where the helpers are built (default: %(default)s; elsewhere, start twistd mathrun "
        "with --jail STATE/ext/mathrun-jail)",
    )
    parser.add_argument("--user-prefix", default="mathrun", help="job users PREFIX-1..N (default: %(default)s)")
    parser.add_argument("--job-users", type=int, default=32, help="how many job users (default: %(default)s)")
    parser.add_argument(
        "--maxima-home",
        default=None,
        help="where Maxima is built (default: /opt/mathrun/maxima; elsewhere, start the server with --maxima-core)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    source = paths.package_data()
    if source is None:
        print("mathrun-setup: this mathrun runs from a checkout: use `make setup` there", file=sys.stderr)
        return 2
    state = os.path.abspath(args.state_dir)
    os.makedirs(state, mode=0o755, exist_ok=True)
    copied = sync_tree(source, state)
    if copied:
        print(f"== copied {len(copied)} files into {state}")
    env = dict(os.environ, MATHRUN_USER_PREFIX=args.user_prefix, MATHRUN_JOB_USERS=str(args.job_users))
    if args.maxima_home:
        env["MATHRUN_MAXIMA_HOME"] = args.maxima_home
    status = subprocess.call(["bash", os.path.join(state, "scripts", "setup.sh"), "--no-venv"], cwd=state, env=env)
    if status == 0:
        write_plugin_cache()
        jail = os.path.join(state, "ext", paths.JAIL)
        hint = "" if state == paths.default_state_dir() else f" --jail {jail}"
        if args.user_prefix != "mathrun":
            hint += f" --user-prefix {args.user_prefix} --helper-user {args.user_prefix}"
        print(f"== set up: start the server with  twistd -n mathrun{hint}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
