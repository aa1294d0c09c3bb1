# Shared by scripts/test and scripts/demo: installs the Debian packages of
# scripts/debian-packages.txt that are missing, and checks for cargo.
# Usage: source scripts/lib/deps.sh; install_deps NAME
install_deps() {
    local who=$1
    mapfile -t pkgs < <(grep -v '^\s*#' scripts/debian-packages.txt | grep -v '^\s*$')
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "$who: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null; then
        echo "$who: cargo not found; install Rust (rustup) first" >&2
        exit 1
    fi
}
