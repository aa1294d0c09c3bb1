#!/usr/bin/env bash
# Builds the test cluster (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet, kubectl, etcd,
# helm, and kubelet's pause) from the Go modules pinned under tests/cluster/go, once per machine: the binaries
# are cached under a key made of those modules' go.mod/go.sum and this script.
# Prints the directory that holds them. Tests only; nothing here is shipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$here"/go/*/go.mod "$here"/go/*/go.sum "$here/build-binaries.sh" | sha256sum | cut -c1-16)
cache=${KUBELVS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-lvs}/cluster-bin
out=$cache/$key
bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl etcd helm pause)

complete() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if complete; then echo "$out"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if complete; then echo "$out"; exit 0; fi

if ! command -v go >/dev/null; then
    echo "build-binaries: 'go' not found: the test control plane is built from Go modules (Go >= 1.25)" >&2
    exit 1
fi

# Module version of a dependency, as pinned by our go.mod.
modver() { (cd "$here/go/$1" && go list -m -f '{{.Version}}' "$2"); }

fail() {
    echo "build-binaries: $1 failed. The test control plane is built from the Go module proxy" >&2
    echo "  (GOPROXY=$(go env GOPROXY)); if it cannot be reached, the cluster tests cannot run." >&2
    echo "  See the go output above; rerun this script to retry: $0" >&2
    exit 1
}

tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

kver=$(modver kubernetes k8s.io/kubernetes) || fail "resolving k8s.io/kubernetes"
major=${kver#v}; major=${major%%.*}
minor=${kver#v*.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
kflags="-s -w -X $vpkg.gitVersion=$kver -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
kflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$kver -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl; do
    echo "build-binaries: go build $cmd ($kver)" >&2
    (cd "$here/go/kubernetes" && go build -trimpath -ldflags "$kflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd") >&2 \
        || fail "go build k8s.io/kubernetes/cmd/$cmd"
done

# The Pod sandbox ("pause") that kubelet runs for every Pod, from the module's own C source.
kdir=$(cd "$here/go/kubernetes" && go mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
echo "build-binaries: gcc pause" >&2
gcc -static -Os -o "$tmp/pause" "$kdir/build/pause/linux/pause.c" >&2 || fail "gcc build/pause/linux/pause.c"

echo "build-binaries: go build etcd" >&2
(cd "$here/go/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3) >&2 \
    || fail "go build go.etcd.io/etcd/server/v3"

hver=$(modver helm helm.sh/helm/v3) || fail "resolving helm.sh/helm/v3"
echo "build-binaries: go build helm ($hver)" >&2
(cd "$here/go/helm" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$hver -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    -o "$tmp/helm" helm.sh/helm/v3/cmd/helm) >&2 || fail "go build helm.sh/helm/v3/cmd/helm"

# Builds for other keys are stale: drop them so the cache does not grow.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name '.build.*' ! -name "$key" -exec rm -rf {} +
mv "$tmp" "$out"
trap - EXIT
echo "build-binaries: built in $((SECONDS - start)) s into $out" >&2
echo "$out"
