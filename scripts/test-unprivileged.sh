#!/usr/bin/env bash
# The unprivileged part of `make test`: the sandbox's hostile, job and Maxima
# tests run again as an unprivileged user (default `nobody`), the way a
# server started without root runs its jobs.  Run as root (by `make test`).
#
# A regression here once started ~32,000 processes and took the host down,
# so the run is bounded from outside, whatever the code under test does:
#   - a pids cgroup and a memory cgroup made for this run (and removed after),
#   - RLIMIT_NPROC for the user's processes (a second net: it also caps what
#     every job's user namespace may hold),
#   - a wall-clock timeout.
# The user gets a copy of the checkout it can read (the venv, the built ext/)
# and a HOME and TMPDIR of its own, under a directory made for the run.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_AS=${MATHRUN_CI_USER:-nobody}
MAX_PIDS=${MATHRUN_CI_MAX_PIDS:-2000}
MAX_MEMORY=${MATHRUN_CI_MAX_MEMORY:-$((6 << 30))}
TIMEOUT=${MATHRUN_CI_TIMEOUT:-900}
TESTS=${MATHRUN_CI_UNPRIVILEGED_TESTS:-tests/test_unprivileged.py tests/test_hostile.py tests/test_jobs.py tests/test_maxima_http.py}
CG=/sys/fs/cgroup
NAME=mathrun-ci-$$

if [ "$(id -u)" != 0 ]; then
    echo "test-unprivileged: needs root (it makes the cgroups and switches to $RUN_AS)" >&2
    exit 2
fi

# The cgroups that bound the run: v1 (separate pids and memory hierarchies)
# or v2 (one unified hierarchy).  No pids controller: no run.
cgroup_dirs=()
if [ -f "$CG/pids/cgroup.procs" ]; then
    mkdir "$CG/pids/$NAME"
    echo "$MAX_PIDS" > "$CG/pids/$NAME/pids.max"
    cgroup_dirs+=("$CG/pids/$NAME")
    if [ -f "$CG/memory/memory.limit_in_bytes" ]; then
        mkdir "$CG/memory/$NAME"
        echo "$MAX_MEMORY" > "$CG/memory/$NAME/memory.limit_in_bytes"
        cgroup_dirs+=("$CG/memory/$NAME")
    fi
elif grep -qw pids "$CG/cgroup.controllers" 2>/dev/null; then
    grep -qw pids "$CG/cgroup.subtree_control" || echo +pids > "$CG/cgroup.subtree_control"
    grep -qw memory "$CG/cgroup.subtree_control" || echo +memory > "$CG/cgroup.subtree_control" || true
    mkdir "$CG/$NAME"
    echo "$MAX_PIDS" > "$CG/$NAME/pids.max"
    [ -f "$CG/$NAME/memory.max" ] && echo "$MAX_MEMORY" > "$CG/$NAME/memory.max"
    cgroup_dirs+=("$CG/$NAME")
else
    echo "test-unprivileged: no pids cgroup controller: refusing to run without a bound" >&2
    exit 1
fi
pids_dir=${cgroup_dirs[0]}

RUN=$(mktemp -d /tmp/mathrun-unprivileged.XXXXXX)
cleanup() {
    # Everything left in the run's cgroup is the run's own: kill it by pid,
    # until none is left, then remove the cgroups and the run directory.
    for _ in $(seq 100); do
        left=$(cat "$pids_dir/cgroup.procs")
        [ -z "$left" ] && break
        kill -9 $left 2>/dev/null || true
        sleep 0.1
    done
    for d in "${cgroup_dirs[@]}"; do rmdir "$d" 2>/dev/null || echo "test-unprivileged: $d not removed" >&2; done
    rm -rf "$RUN"
}
trap cleanup EXIT

chmod 755 "$RUN"
mkdir "$RUN/src" "$RUN/home"
cp -a .venv mathrun tests twisted lisp pyproject.toml setup.cfg "$RUN/src/"
mkdir "$RUN/src/ext"
cp -a ext/mathrun-jail ext/mathrun-spawn ext/libmathrun-fork.so ext/maxima-nsinit "$RUN/src/ext/"
chown "$RUN_AS" "$RUN/home"
chmod 700 "$RUN/home"

echo "== the unprivileged tests, as $RUN_AS (pids <= $MAX_PIDS, memory <= $MAX_MEMORY bytes)"
set +e
(
    for d in "${cgroup_dirs[@]}"; do echo "$BASHPID" > "$d/cgroup.procs"; done
    ulimit -u "$MAX_PIDS"
    cd "$RUN/src"
    exec runuser -u "$RUN_AS" -- env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        HOME="$RUN/home" TMPDIR="$RUN/home" HYPOTHESIS_STORAGE_DIRECTORY="$RUN/home/.hypothesis" \
        MATHRUN_TEST_PREFIX="${MATHRUN_TEST_PREFIX:-mathrun-test}" \
        timeout "$TIMEOUT" .venv/bin/python -m pytest $TESTS
)
status=$?
set -e
events=$(cat "$pids_dir/pids.events" 2>/dev/null || echo "max ?")
echo "== unprivileged run: exit $status; the run's pids limit was hit ${events#max } times"
exit $status
