#!/usr/bin/env bash
# Builds Maxima on SBCL from the upstream tarball of Debian's own `maxima`
# source package (Debian's binary package is built on GCL, which cannot be
# forked cheaply nor limited sensibly).  The tarball comes through apt with a
# private deb-src list derived from this machine's apt sources; the system's
# apt configuration and state are not touched.
#
#   scripts/build-maxima.sh [PREFIX]     (default: /opt/mathrun/maxima)
#
# Idempotent: skipped in a second when PREFIX already holds this version.
set -euo pipefail

PREFIX=${1:-${MATHRUN_MAXIMA_PREFIX:-/opt/mathrun/maxima}}
VERSION=5.46.0
STAMP="$PREFIX/.mathrun-built-$VERSION"
[ -e "$STAMP" ] && exit 0

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mathrun-maxima.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { printf '== %s\n' "$*"; }

export DEBIAN_FRONTEND=noninteractive
for pkg in sbcl dpkg-dev make gcc texinfo; do
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -q '^installed$' \
        || apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
done

step "fetching Debian's maxima source (upstream tarball)"
mkdir -p "$WORK/apt/sources" "$WORK/apt/lists/partial" "$WORK/src"
# deb822 files: the same entries with Types: deb-src.
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    sed -e 's/^Types:.*/Types: deb-src/' "$f" >"$WORK/apt/sources/$(basename "$f")"
done
# One-line files and sources.list: each `deb` line again as `deb-src`.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$f" ] || continue
    grep -E '^deb ' "$f" | sed -e 's/^deb /deb-src /' >"$WORK/apt/sources/$(basename "$f").list" || true
done
APT=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$WORK/apt/sources"
    -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
apt-get "${APT[@]}" update -qq
(cd "$WORK/src" && apt-get "${APT[@]}" source --download-only -qq "maxima=$VERSION*" >/dev/null)
orig=$(ls "$WORK/src"/maxima_"$VERSION"*.orig.tar.* | head -n 1)
dsc=$(ls "$WORK/src"/maxima_*.dsc | head -n 1)
want=$(awk '/^Checksums-Sha256:/{f=1; next} f && /orig\.tar/ {print $1; exit}' "$dsc")
have=$(sha256sum "$orig" | cut -d' ' -f1)
if [ -z "$want" ] || [ "$want" != "$have" ]; then
    echo "checksum of $(basename "$orig") does not match its .dsc" >&2
    exit 1
fi

step "building Maxima $VERSION on SBCL into $PREFIX"
tar -xf "$orig" -C "$WORK"
cd "$WORK"/maxima-"$VERSION"*/
./configure -q --prefix="$PREFIX" --enable-sbcl-exec=no --enable-sbcl --disable-gcl >/dev/null
make -s -j"$(nproc)" >/dev/null 2>&1 || make -s >/dev/null
make -s install >/dev/null
"$PREFIX/bin/maxima" --very-quiet --batch-string='print(integrate(x^2,x))$' | grep -q 'x^3' \
    || { echo "the new Maxima does not integrate x^2" >&2; exit 1; }
touch "$STAMP"
step "Maxima $VERSION on SBCL is in $PREFIX"
