#!/usr/bin/env bash
# Builds the Kubernetes node the integration tests run against: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kubectl at one pinned
# version, and kine (etcd's API over SQLite, instead of etcd). Everything comes
# from the Go module proxy; the binaries are cached by version under
# $CONTRAST_CACHE/kubernetes/<version>/ (and kine under $CONTRAST_CACHE/bin), so
# a second run and CI's fresh clone on the same machine reuse them.
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces its staging
# modules with ./staging/src/...): it builds as a dependency of a scratch module
# that replaces each staging module with its published v0.x.y twin instead.
#
# Cold: about 29 CPU-minutes (15 min wall on 2 cores); binaries about 430 MiB.
# Prints the directory holding the binaries on stdout.
set -euo pipefail

CACHE=${CONTRAST_CACHE:-$HOME/.cache/contrast}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.34.2}
KINE_VERSION=${KINE_VERSION:-v0.17.5}
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

dir=$CACHE/kubernetes/$KUBERNETES_VERSION
mkdir -p "$CACHE/kubernetes" "$CACHE/bin"

complete=1
for c in "${KUBE_CMDS[@]}"; do [ -x "$dir/$c" ] || complete=0; done
if [ "$complete" = 0 ]; then
  log "build Kubernetes $KUBERNETES_VERSION (${KUBE_CMDS[*]}) in a scratch module"
  tmp=$(mktemp -d "$CACHE/kubernetes/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (
    cd "$tmp"
    # The staging modules are published at v0.<minor>.<patch> of the release.
    staging=v0.${KUBERNETES_VERSION#v1.}
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    [ -r "$gomod" ] || { echo "kubernetes.sh: no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; exit 1; }
    goversion=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
    {
      echo "module contrast.local/kubernetes"
      echo
      echo "go $goversion"
      # The same default GODEBUG settings as the release binaries.
      grep '^godebug ' "$gomod" || true
      echo
      echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
      echo
      # One replace per staging module: `k8s.io/x => ./staging/src/k8s.io/x`
      # becomes `k8s.io/x => k8s.io/x v0.y.z`.
      sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*$#replace \1 => \1 '"$staging"'#p' "$gomod"
    } >go.mod
    n=$(grep -c '^replace ' go.mod)
    [ "$n" -gt 20 ] || { echo "kubernetes.sh: only $n staging replaces found in $gomod" >&2; exit 1; }
    {
      echo "//go:build tools"
      echo
      echo "package tools"
      echo
      echo "import ("
      for c in "${KUBE_CMDS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
      echo ")"
    } >tools.go
    go mod tidy >/dev/null 2>&1 || go mod tidy
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
    mkdir out
    for c in "${KUBE_CMDS[@]}"; do
      log "go build k8s.io/kubernetes/cmd/$c"
      CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "out/$c" "k8s.io/kubernetes/cmd/$c"
    done
  )
  rm -rf "$dir"
  mv "$tmp/out" "$dir"
  rm -rf "$tmp"
  trap - EXIT
fi

# kine: plain `go install`, with cgo (SQLite).
kine=$CACHE/bin/kine-$KINE_VERSION
if [ ! -x "$kine" ]; then
  log "go install github.com/k3s-io/kine@$KINE_VERSION"
  tmp=$(mktemp -d "$CACHE/bin/.kine.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  GOBIN=$tmp CGO_ENABLED=1 go install -trimpath -ldflags "-s -w" "github.com/k3s-io/kine@$KINE_VERSION"
  mv "$tmp/kine" "$kine"
  rm -rf "$tmp"
  trap - EXIT
fi
ln -sf "$(basename "$kine")" "$CACHE/bin/kine"
echo "$dir"
