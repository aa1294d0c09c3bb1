#!/usr/bin/env bash
# Builds the images the node tests run, with no registry:
#   build-images.sh BINARIES CLUSTER_BIN OUT
# - kube-lvs: the Dockerfile's `prebuilt` target, with kube-lvs-agent,
#   kube-lvs-operator and kubectl-lvs from BINARIES (cargo's output directory);
# - web: tests/cluster/images/web, the backend Pods' HTTP server;
# - pause: tests/cluster/images/pause, with CLUSTER_BIN/pause (build-binaries.sh).
# Each is written to OUT/NAME.tar as a docker archive named docker.io/local/NAME:test,
# for `ctr images import`. The Dockerfile's base images are local ones made with
# mmdebstrap from Debian's archive, once per machine (cached), and passed as its
# build arguments. Tests only; nothing here is shipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binaries=$1 cluster_bin=$2 out=$3
mirror=${KUBELVS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

cache=${KUBELVS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-lvs}/images
mkdir -p "$cache" "$out"
exec 9>"$cache/.lock"
flock 9
# buildah's own storage, away from any other user of it on the machine.
buildah=(buildah --root "$cache/storage" --runroot /run/kube-lvs-buildah --storage-driver overlay)

debian=localhost/kubelvs-test/debian:bookworm-minbase
runtime=localhost/kubelvs-test/runtime:bookworm
base_key=$( (cat "$0"; echo "$mirror") | sha256sum | cut -c1-16)

# A base image from a root file system tarball.
import_base() {
    local name=$1 tarball=$2 ctr
    ctr=$("${buildah[@]}" from scratch)
    "${buildah[@]}" add "$ctr" "$tarball" / >/dev/null
    "${buildah[@]}" commit --rm --format docker "$ctr" "$name" >/dev/null
}

if [ "$(cat "$cache/bases.key" 2>/dev/null)" != "$base_key" ] \
    || ! "${buildah[@]}" inspect --type image "$debian" >/dev/null 2>&1 \
    || ! "${buildah[@]}" inspect --type image "$runtime" >/dev/null 2>&1; then
    start=$SECONDS
    tmp=$(mktemp -d "$cache/.bases.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # The Dockerfile's TOOLS_IMAGE: Debian as debian:bookworm-slim has it (apt works
    # in it; the archive may be a snapshot whose Release files are past their date).
    mmdebstrap --quiet --variant=minbase --mode=root --skip=output/dev \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        bookworm "$tmp/debian.tar" "$mirror" >&2
    # The Dockerfile's RUNTIME_IMAGE, as distroless's cc-debian12:nonroot is: the C
    # and C++ runtimes and OpenSSL, unpacked without a package manager or a shell, real
    # /bin and /lib directories, and the user nonroot (65532).
    mmdebstrap --quiet --variant=extract --mode=root --skip=output/dev \
        --include=base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1,libstdc++6,libssl3 \
        --customize-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$1/etc/passwd"' \
        --customize-hook='printf "root:x:0:\nnonroot:x:65532:\n" > "$1/etc/group"' \
        --customize-hook='mkdir -p "$1/home/nonroot" && chown 65532:65532 "$1/home/nonroot"' \
        --customize-hook='rm -rf "$1/var/lib/apt" "$1/var/cache/apt" "$1/var/lib/dpkg"' \
        bookworm "$tmp/runtime.tar" "$mirror" >&2
    import_base "$debian" "$tmp/debian.tar"
    import_base "$runtime" "$tmp/runtime.tar"
    echo "$base_key" >"$cache/bases.key"
    rm -rf "$tmp"
    trap - EXIT
    echo "build-images: base images made in $((SECONDS - start)) s" >&2
fi

# NAME CONTEXT DOCKERFILE [buildah bud arguments]: builds and exports one image.
build() {
    local name=$1 context=$2 dockerfile=$3 ref="docker.io/local/$1:test"
    shift 3
    "${buildah[@]}" bud --quiet --layers --network host --format docker \
        --build-arg TOOLS_IMAGE="$debian" --build-arg RUNTIME_IMAGE="$runtime" \
        "$@" -f "$dockerfile" -t "$ref" "$context" >/dev/null
    rm -f "$out/$name.tar"
    "${buildah[@]}" push --quiet "$ref" "docker-archive:$out/$name.tar:$ref"
}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/kube-lvs/bin" "$ctx/web" "$ctx/pause"
# The suite's binaries are of the test profile: without their symbol tables too, they
# are a third the size.
for bin in kube-lvs-agent kube-lvs-operator kubectl-lvs; do
    strip --strip-all -o "$ctx/kube-lvs/bin/$bin" "$binaries/$bin"
done
build kube-lvs "$ctx/kube-lvs" "$repo/Dockerfile" --target prebuilt

cp /bin/busybox "$ctx/web/busybox"
build web "$ctx/web" "$here/images/web/Dockerfile"

cp "$cluster_bin/pause" "$ctx/pause/pause"
build pause "$ctx/pause" "$here/images/pause/Dockerfile"

# Layers of earlier builds that no image names any more.
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
