#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently. Build products
# are cached under $CONTRAST_CACHE (default ~/.cache/contrast), keyed by version,
# so a second run and CI's fresh clone on the same machine reuse them.
set -euo pipefail

CACHE=${CONTRAST_CACHE:-$HOME/.cache/contrast}
BIN=$CACHE/bin
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}
RUNC_VERSION=${RUNC_VERSION:-v1.4.3}
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_TTRPC_VERSION=v1.2.10
mkdir -p "$BIN"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_packages=(
  qemu-system-x86 qemu-utils e2fsprogs erofs-utils cpio
  runc containernetworking-plugins iptables busybox-static iproute2
  libseccomp-dev flex bison libelf-dev bc libssl-dev
  linux-source-6.12 xz-utils protobuf-compiler psmisc
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# go_install_cached NAME VERSION PKG [extra go flags...]: builds PKG@VERSION once into $BIN/NAME-VERSION.
go_install_cached() {
  local name=$1 version=$2 pkg=$3; shift 3
  local out=$BIN/$name-$version
  if [ ! -x "$out" ]; then
    log "go install $pkg@$version"
    local tmp; tmp=$(mktemp -d)
    GOBIN=$tmp go install "$@" "$pkg@$version"
    mv "$tmp/$(basename "$pkg")" "$out"
    rm -rf "$tmp"
  fi
  ln -sf "$(basename "$out")" "$BIN/$name"
}

go_install_cached containerd "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/containerd
go_install_cached ctr "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/ctr
# the runc shim: the baseline handler the tests and benchmarks compare against
go_install_cached containerd-shim-runc-v2 "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
go_install_cached crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
# runc for the guest: static, with seccomp.
CGO_ENABLED=1 go_install_cached runc-static "$RUNC_VERSION" github.com/opencontainers/runc \
  -tags "seccomp netgo osusergo" -ldflags '-extldflags "-static" -s -w'
go_install_cached protoc-gen-go "$PROTOC_GEN_GO_VERSION" google.golang.org/protobuf/cmd/protoc-gen-go
go_install_cached protoc-gen-go-ttrpc "$PROTOC_GEN_TTRPC_VERSION" github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
log "dependencies ready in $BIN"
