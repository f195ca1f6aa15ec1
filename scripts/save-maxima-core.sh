#!/usr/bin/env bash
# Saves a "mother" SBCL core of the Maxima built by build-maxima.sh, with the
# packages every job may want already loaded (loading them at each start
# costs about 3 s):
#
#     scripts/save-maxima-core.sh [BUILD_DIR]
#
# BUILD_DIR (or $MATHRUN_BUILD_DIR) is the one of build-maxima.sh; the core
# goes to BUILD_DIR/maxima/mother-KEY.core, KEY the start of the SHA-256 of
# lisp/mathrun-mother.lisp ($MATHRUN_MAXIMA_CORE overrides).
# Idempotent: skipped when the core is there for the same Maxima and the
# same packages.  Start it with the sbcl that built Maxima:
#
#     sbcl --core mother.core --noinform --end-runtime-options \
#         --very-quiet --batch-string='1+1;'
#
# The core's toplevel is Maxima's own cl-user::run (then exit), so SBCL reads
# no sbclrc and takes no toplevel options: unlike the maxima launcher's
# command, no `--eval '(cl-user::run)' --end-toplevel-options` (Maxima would
# warn about them).  Runtime options such as --dynamic-space-size go before
# --end-runtime-options.
set -euo pipefail

# stringproc too: every STACK question uses it, and its autoload costs a
# second per job.
PACKAGES=(stats distrib descriptive simplex draw stringproc)
VERSIONED=(stats distrib descriptive simplex draw)  # these put a version on their name
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${1:-${MATHRUN_BUILD_DIR:-$ROOT/.build}}
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
export MATHRUN_BUILD_DIR=$BUILD_DIR
PREFIX=${MATHRUN_MAXIMA_PREFIX:-$BUILD_DIR/maxima}
MOTHER_LISP=$ROOT/lisp/mathrun-mother.lisp
# Named by the mother's Lisp, as mathrun/maxima/config.py finds it: checkouts
# with different Lisp on one machine each get their own core.
KEY=$(sha256sum < "$MOTHER_LISP" | cut -c1-16)
CORE=${MATHRUN_MAXIMA_CORE:-$PREFIX/mother-$KEY.core}
STAMP=$CORE.stamp

step() { printf '== maxima core: %s\n' "$*"; }
die() { printf 'save-maxima-core: %s\n' "$*" >&2; exit 1; }

"$ROOT/scripts/build-maxima.sh" "$BUILD_DIR"
want=$(printf '%s\npackages %s\nmother %s\n' "$(cat "$PREFIX/.mathrun-build-stamp")" "${PACKAGES[*]}" \
    "$(sha256sum < "$MOTHER_LISP" | cut -d' ' -f1)")
if [ -f "$CORE" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    step "$CORE is up to date"
    exit 0
fi

start=$EPOCHREALTIME
step "loading ${PACKAGES[*]} and saving $CORE"
tmp=$CORE.tmp.$$
log=$BUILD_DIR/src/save-maxima-core.log
mkdir -p "$BUILD_DIR/src"
rm -f "$tmp" "$STAMP"
trap 'rm -f "$tmp"' EXIT
loads=""
for p in "${PACKAGES[@]}"; do loads+="load(\"$p\")\$ "; done
# Saved from inside a Maxima session, once the packages and the mother's
# own code (lisp/mathrun-mother.lisp) are loaded: first
# undo what this session itself set (the labels and line number of these
# loads, the "already started" flag that would print "Maxima restarted.",
# and --very-quiet), so the core starts as a fresh Maxima would.
# The toplevel runs Maxima and, when it returns, mathrun-mother::finish
# closes the output and exits at once.
"$PREFIX/bin/maxima" --very-quiet --batch-string="$loads
kill(labels)\$
:lisp (load \"$MOTHER_LISP\")
:lisp (progn (setq *maxima-started* nil *maxima-quiet* nil *display-labels-p* t \$linenum 0) (sb-ext:save-lisp-and-die \"$tmp\" :toplevel (lambda () (cl-user::run) (mathrun-mother::finish))))
" > "$log" 2>&1 || { cat "$log" >&2; die "saving the core failed"; }
[ -s "$tmp" ] || { cat "$log" >&2; die "no core was saved"; }
mv -f "$tmp" "$CORE"

# The check: SBCL, each package loaded (each puts its version on its name),
# and labels that start again at %o1.
pkgs=$(IFS=,; echo "${VERSIONED[*]}")
out=$(sbcl --core "$CORE" --noinform --end-runtime-options --batch-string="[build_info()@lisp_name, \
every(lambda([p], get(p, version) # false), [$pkgs]), mean([1,2,3]), maximize_lp(x, [x<=1]), \
printf(false, \"~a\", 7)];" 2>&1) \
    || die "the saved core does not start: $out"
case $out in
    *'(%o1)'*'[SBCL, true, 2, [1, [x = 1]], 7]'*) ;;
    *) die "the saved core gave: $out" ;;
esac
printf '%s\n' "$want" > "$STAMP"
step "saved in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s; $(du -h "$CORE" | cut -f1)"
