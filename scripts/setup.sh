#!/usr/bin/env bash
# The set-up step shared by `make run` and `make test`: Debian packages, the
# Python environment in .venv/, the C helpers in ext/, the page's bundle in
# web/static/ (npm, esbuild), the job users, and
# Maxima on SBCL with its mother core (in /opt/mathrun/maxima, outside the
# checkout, so that every clone on the machine shares one build).
# Idempotent: each step is skipped when already done, so a second run takes
# a few seconds.  With --test, also what the tests need.  Run as root on Debian 12 (without root, only the Python
# environment and the C helpers are made, for unprivileged mode).
# With --no-venv (mathrun-setup, for an installed package, runs it so from
# its state directory), no Python environment: the package is installed.
set -euo pipefail

TEST=false
VENV=true
for arg in "$@"; do
    case $arg in
        --test) TEST=true ;;
        --no-venv) VENV=false ;;
        *) echo "usage: $0 [--test] [--no-venv]" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
JOB_USERS=${MATHRUN_JOB_USERS:-32}
USER_PREFIX=${MATHRUN_USER_PREFIX:-mathrun}
APT_PACKAGES=(
    python3 python3-venv python3-dev gcc make libc6-dev
    sbcl gnuplot-nox asymptote dvisvgm why3 z3 cvc4 maxima
    procps iproute2 curl libseccomp-dev
)

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# What only the tests need: the page's tests drive a real headless Chromium;
# the scale-out test puts HAProxy in front of three nodes.
TEST_APT_PACKAGES=(chromium chromium-driver haproxy)

if [ "$(id -u)" = 0 ]; then
    install_missing "${APT_PACKAGES[@]}"
    if $TEST; then
        install_missing "${TEST_APT_PACKAGES[@]}"
    fi
    # The page's bundler: Debian's node and npm, only where none is installed
    # (a machine may have its own node, e.g. from nodesource, with npm in it);
    # not for an installed package, which carries the bundle.
    if [ -f web/package.json ] && { ! command -v node >/dev/null || ! command -v npm >/dev/null; }; then
        install_missing nodejs npm
    fi
fi

# The Python environment: rebuilt only when requirements.txt or the
# packaging changes.
stamp=.venv/.requirements.sha256
want=none
$VENV && want=$(cat requirements.txt setup.cfg setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
if $VENV && { [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; }; then
    step "making the Python environment in .venv/"
    /usr/bin/python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    # compat mode puts the project root on sys.path, where twistd finds
    # twisted/plugins/mathrun_plugin.py.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
        -e . --config-settings editable_mode=compat
    echo "$want" > "$stamp"
fi

make -s -C ext

# The page (web/): CodeMirror and esbuild from npm, bundled into
# web/static/app.js.  Rebuilt only when the lock file or a source changed.
# (An installed package has no web/ sources: its wheel carries the bundle.)
web_stamp=web/.build-stamp
web_want=none
[ -f web/package.json ] && web_want=$(cat web/package.json web/package-lock.json web/src/*.js | sha256sum | cut -d' ' -f1)
if [ -f web/package.json ] && { [ ! -f web/static/app.js ] || [ "$(cat "$web_stamp" 2>/dev/null)" != "$web_want" ]; }; then
    if command -v npm >/dev/null; then
        step "bundling the page (web/static/app.js)"
        (cd web && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run -s build >/dev/null)
        echo "$web_want" > "$web_stamp"
    else
        echo "setup: no npm: the page (web/static/app.js) is not built" >&2
    fi
fi

if [ "$(id -u)" = 0 ]; then
    add_user() {
        getent passwd "$1" >/dev/null && return 0
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$1"
    }
    # A helper user PREFIX and job users PREFIX-1..N.
    add_user_set() {
        if [ "$(getent passwd "$1" "$1-$2" | wc -l)" != 2 ]; then
            step "creating the helper user $1 and job users $1-1..$2"
            add_user "$1"
            for n in $(seq 1 "$2"); do add_user "$1-$n"; done
        fi
    }
    add_user_set "$USER_PREFIX" "$JOB_USERS"
    # `make test` runs on its own users, so that it never disturbs a server
    # on this host (MATHRUN_TEST_PREFIX picks another set, one per parallel run).
    if $TEST; then
        add_user_set "${MATHRUN_TEST_PREFIX:-mathrun-test}" "$JOB_USERS"
        # The scale-out test's three nodes (tests/test_scale_out.py), a few each.
        for node in a b c; do add_user_set "${MATHRUN_TEST_PREFIX:-mathrun-test}-$node" 4; done
    fi
    install -d -m 0755 /run/mathrun
    # Must match MAXIMA_HOME in mathrun/maxima/config.py.
    scripts/save-maxima-core.sh "${MATHRUN_MAXIMA_HOME:-/opt/mathrun/maxima}"
fi
