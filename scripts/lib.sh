# Shared by the set-up scripts: sourced, not run.

step() { printf '== %s\n' "$*"; }

# Install the Debian packages among "$@" that are missing.  apt-get update
# runs only when the install fails without it (a fresh machine's lists are
# empty or stale), so a machine that has everything costs one dpkg-query.
install_missing() {
    local pkg status missing=()
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    step "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
