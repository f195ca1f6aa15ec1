#!/usr/bin/env bash
# Builds Maxima on SBCL from the upstream tarball of Debian's own `maxima`
# source package and installs it under a prefix the project owns:
#
#     scripts/build-maxima.sh [BUILD_DIR]
#
# BUILD_DIR (or $MATHRUN_BUILD_DIR) defaults to .build/ in the repository
# root.  The build tree goes to BUILD_DIR/src/, the install prefix is
# BUILD_DIR/maxima/ ($MATHRUN_MAXIMA_PREFIX overrides), and a stamp file in
# the prefix records what was built, so a second run is skipped at once.
#
# Run as root on Debian 12.  The source is fetched with `apt-get source`
# through a private deb-src list derived from the machine's own apt sources
# (the mirror is read from the configuration at run time), with private
# lists, so /etc/apt and the system's apt state are left untouched.
set -euo pipefail

MAXIMA_VERSION=5.46.0
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${1:-${MATHRUN_BUILD_DIR:-$ROOT/.build}}
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
PREFIX=${MATHRUN_MAXIMA_PREFIX:-$BUILD_DIR/maxima}
SRC_DIR=$BUILD_DIR/src
APT_DIR=$SRC_DIR/apt
STAMP=$PREFIX/.mathrun-build-stamp
# Everything from the tarball that ends up in the prefix: no GCL, no manual
# rebuilt (the release tarball ships the info manual already made).
CONFIGURE_FLAGS=(--enable-sbcl --disable-gcl --disable-build-docs)
APT_PACKAGES=(sbcl make gcc libc6-dev dpkg-dev gnuplot-nox)

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
step() { printf '== maxima: %s\n' "$*"; }
die() { printf 'build-maxima: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- skip
sbcl_version() { command -v sbcl >/dev/null && sbcl --version 2>/dev/null || echo none; }
want_stamp() {
    printf 'maxima %s\n%s\nconfigure %s\nprefix %s\n' \
        "$MAXIMA_VERSION" "$(sbcl_version)" "${CONFIGURE_FLAGS[*]}" "$PREFIX"
}
if [ -x "$PREFIX/bin/maxima" ] && [ -f "$STAMP" ] \
    && [ "$(cat "$STAMP")" = "$(want_stamp)" ]; then
    step "$MAXIMA_VERSION on $(sbcl_version) already built in $PREFIX"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages)"
start=$(date +%s)

# ---------------------------------------------------------------- packages
install_missing "${APT_PACKAGES[@]}"

# ---------------------------------------------------------------- deb-src
# The private deb-src entry, in deb822 form: the first enabled `deb` entry of
# the machine's own sources for this release's main suite, preferring one
# whose URI ends in /debian, with its Signed-By kept.
# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$CODENAME" ] || die "no VERSION_CODENAME in /etc/os-release"
derive_deb_src() {
    local files=() f SL='' SP=''
    # Where apt itself reads its sources (normally /etc/apt/sources.list and
    # /etc/apt/sources.list.d/); only *.list and *.sources count there.
    eval "$(apt-config shell SL Dir::Etc::SourceList/f SP Dir::Etc::SourceParts/d)"
    if [ -n "$SL" ] && [ -f "$SL" ]; then files+=("$SL"); fi
    for f in "${SP%/}"/*.list "${SP%/}"/*.sources; do
        if [ -f "$f" ]; then files+=("$f"); fi
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v codename="$CODENAME" '
        function lc(s) { return tolower(s) }
        function usable(uri) { return uri ~ /^(https?|ftp|file|mirror(\+[a-z]+)?|tor\+https?):/ }
        # One candidate: uri, signed-by (may hold newlines), trusted.
        function add(uri, signed, trusted) {
            if (!usable(uri)) return
            n++; cu[n] = uri; cs[n] = signed; ct[n] = trusted
        }
        function has(list, word,   a, k, m) {
            m = split(list, a, /[ \t]+/)
            for (k = 1; k <= m; k++) if (a[k] == word) return 1
            return 0
        }
        function flush(   k, m, u) {
            if (p_seen && lc(p_enabled) != "no" && has(p_types, "deb") \
                && has(p_suites, codename) && has(p_comps, "main")) {
                m = split(p_uris, u, /[ \t]+/)
                for (k = 1; k <= m; k++) if (u[k] != "") add(u[k], p_signed, p_trusted)
            }
            p_seen = 0; p_types = p_uris = p_suites = p_comps = p_signed = p_trusted = p_enabled = ""
            field = ""
        }
        FNR == 1 { if (deb822) flush(); deb822 = (FILENAME ~ /\.sources$/) }
        # ---- deb822 paragraphs
        deb822 && /^[ \t]*#/ { next }
        deb822 && /^[ \t]*$/ { flush(); next }
        deb822 && /^[ \t]/ {            # continuation line
            if (field == "signed-by") p_signed = p_signed "\n" $0
            else if (field != "") {
                line = $0; sub(/^[ \t]+/, "", line)
                if (field == "types") p_types = p_types " " line
                else if (field == "uris") p_uris = p_uris " " line
                else if (field == "suites") p_suites = p_suites " " line
                else if (field == "components") p_comps = p_comps " " line
            }
            next
        }
        deb822 {
            p_seen = 1
            i = index($0, ":"); if (i == 0) next
            field = lc(substr($0, 1, i - 1)); val = substr($0, i + 1)
            sub(/^[ \t]+/, "", val); sub(/[ \t]+$/, "", val)
            if (field == "types") p_types = val
            else if (field == "uris") p_uris = val
            else if (field == "suites") p_suites = val
            else if (field == "components") p_comps = val
            else if (field == "signed-by") p_signed = val
            else if (field == "trusted") p_trusted = val
            else if (field == "enabled") p_enabled = val
            next
        }
        # ---- one-line entries: deb [ opt=val ... ] uri suite component...
        {
            line = $0; sub(/#.*/, "", line)
            m = split(line, w, /[ \t]+/); k = 1
            if (w[k] == "") k++
            if (w[k] != "deb") next
            k++; signed = ""; trusted = ""
            if (substr(w[k], 1, 1) == "[") {
                opts = ""
                while (k <= m) { opts = opts " " w[k]; if (w[k] ~ /\]$/) { k++; break }; k++ }
                gsub(/[\[\]]/, " ", opts)
                o = split(opts, ov, /[ \t]+/)
                for (j = 1; j <= o; j++) {
                    if (ov[j] ~ /^signed-by=/) signed = substr(ov[j], 11)
                    if (ov[j] ~ /^trusted=/) trusted = substr(ov[j], 9)
                }
            }
            uri = w[k]; suite = w[k + 1]
            if (suite != codename) next
            comps = ""; for (j = k + 2; j <= m; j++) comps = comps " " w[j]
            if (has(comps, "main")) add(uri, signed, trusted)
        }
        END {
            if (deb822) flush()
            pick = 0
            for (k = 1; k <= n; k++) if (cu[k] ~ /\/debian\/?$/) { pick = k; break }
            if (!pick && n) pick = 1
            if (!pick) exit
            print "Types: deb-src"
            print "URIs: " cu[pick]
            print "Suites: " codename
            print "Components: main"
            if (cs[pick] != "") print "Signed-By:" (cs[pick] ~ /^\n/ ? "" : " ") cs[pick]
            if (ct[pick] != "") print "Trusted: " ct[pick]
        }
    ' "${files[@]}"
}

mkdir -p "$APT_DIR/lists/partial"
entry=$(derive_deb_src)
[ -n "$entry" ] || die "no enabled 'deb' entry for $CODENAME main in the apt sources"
need_update=0
if [ ! -f "$APT_DIR/debian-src.sources" ] || [ "$(cat "$APT_DIR/debian-src.sources")" != "$entry" ]; then
    printf '%s\n' "$entry" > "$APT_DIR/debian-src.sources"
    rm -rf "$APT_DIR/lists"; mkdir -p "$APT_DIR/lists/partial"
    need_update=1
fi
ls "$APT_DIR/lists/"*Sources* >/dev/null 2>&1 || need_update=1
private_apt=(
    -o "Dir::Etc::SourceList=$APT_DIR/debian-src.sources"
    -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Sandbox::User=root
    -o Acquire::Languages=none
)
private_update() {
    step "apt-get update of the private deb-src list ($(sed -n 's/^URIs: //p' "$APT_DIR/debian-src.sources") $CODENAME)"
    apt-get -qq "${private_apt[@]}" update
}
[ "$need_update" = 0 ] || private_update

# ---------------------------------------------------------------- source
# The orig tarball, checked against the sha256 the .dsc lists for it.
orig_tarball() {
    local f
    for f in "$SRC_DIR"/maxima_"$MAXIMA_VERSION".orig.tar.*; do
        case $f in *.asc) continue ;; esac
        if [ -f "$f" ]; then echo "$f"; return 0; fi
    done
    return 0
}
dsc_file() {
    local f last=
    for f in "$SRC_DIR"/maxima_"$MAXIMA_VERSION"-*.dsc; do [ -f "$f" ] && last=$f; done
    echo "$last"
}
verify_orig() {
    local dsc=$1 tar=$2 name want
    name=$(basename "$tar")
    want=$(awk -v name="$name" '
        /^Checksums-Sha256:/ { in_sha = 1; next }
        /^[^ \t]/ { in_sha = 0 }
        in_sha && $3 == name { print $1 }' "$dsc")
    [ -n "$want" ] || die "$name is not listed in $(basename "$dsc")"
    (cd "$(dirname "$tar")" && printf '%s  %s\n' "$want" "$name" | sha256sum --quiet -c -)
}
# Only the .dsc and the orig tarball are needed: a failure to fetch the rest
# (the Debian packaging tarball) is ignored.  apt itself checks each file it
# keeps against the hashes of the signed Sources index.
fetch_source() {
    (cd "$SRC_DIR" && apt-get -qq "${private_apt[@]}" source --download-only maxima \
        >"$APT_DIR/source.log" 2>&1) \
        || { orig=$(orig_tarball); dsc=$(dsc_file); [ -n "$orig" ] && [ -n "$dsc" ]; }
}
orig=$(orig_tarball); dsc=$(dsc_file)
if [ -z "$orig" ] || [ -z "$dsc" ] || ! verify_orig "$dsc" "$orig" >/dev/null 2>&1; then
    [ -z "$orig" ] || step "$(basename "$orig") does not match its .dsc: fetching it again"
    step "fetching the source of Debian's maxima with apt-get source"
    rm -f "$SRC_DIR"/maxima_"$MAXIMA_VERSION"*
    if ! fetch_source; then
        # Stale private lists (the mirror moved on): refresh them once.
        private_update
        fetch_source || { cat "$APT_DIR/source.log" >&2; die "apt-get source maxima failed"; }
    fi
    orig=$(orig_tarball); dsc=$(dsc_file)
    [ -n "$dsc" ] || die "apt-get source gave no maxima_$MAXIMA_VERSION-*.dsc (another version in $CODENAME?)"
    [ -n "$orig" ] || die "apt-get source gave no maxima_$MAXIMA_VERSION.orig.tar.*"
    verify_orig "$dsc" "$orig"
fi
step "$(basename "$orig") matches the sha256 in $(basename "$dsc")"

# ---------------------------------------------------------------- build
tree=$SRC_DIR/maxima-$MAXIMA_VERSION
rm -rf "$tree"
step "unpacking into ${tree#"$ROOT"/}"
tar --no-same-owner -xf "$orig" -C "$SRC_DIR"
[ -x "$tree/configure" ] || die "no configure script in $tree"
log=$SRC_DIR/build.log
: > "$log"
run_logged() {
    if ! "$@" >> "$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "'$*' failed; the whole log is $log"
    fi
}
cd "$tree"
step "configure ${CONFIGURE_FLAGS[*]} --prefix=$PREFIX"
run_logged ./configure "${CONFIGURE_FLAGS[@]}" --prefix="$PREFIX"
step "make (log: $log)"
run_logged make -j"$(nproc)"
# A fresh prefix: all of it when it is the project's own, else only
# Maxima's directories in it.
case $PREFIX in
    "$BUILD_DIR"/*) rm -rf "$PREFIX" ;;
    *) rm -rf "$PREFIX/lib/maxima" "$PREFIX/share/maxima" "$STAMP" ;;
esac
step "make install"
run_logged make install
# --disable-build-docs installs no manual, and then every start warns that
# the help system cannot be set up: the release tarball ships the manual
# already made, so its info files and index go in as they are.
install -d "$PREFIX/share/info"
install -m 0644 doc/info/maxima.info* doc/info/maxima-index.lisp "$PREFIX/share/info/"

# ---------------------------------------------------------------- check
step "checking the installed maxima"
lisp=$("$PREFIX/bin/maxima" --very-quiet --batch-string='print(build_info()@lisp_name)$' 2>&1)
case $lisp in *SBCL*) ;; *) die "maxima does not run on SBCL: $lisp" ;; esac
result=$("$PREFIX/bin/maxima" --very-quiet --batch-string='string(integrate(x^2,x));' 2>&1 | tr -d ' \n')
case $result in *WARNING*|*rror*) die "integrate(x^2,x) gave: $result" ;; *x^3/3*) ;;
    *) die "integrate(x^2,x) gave: $result" ;; esac
want_stamp > "$STAMP"
end=$(date +%s)
step "built in $((end - start)) s; $PREFIX takes $(du -sh "$PREFIX" | cut -f1)"
