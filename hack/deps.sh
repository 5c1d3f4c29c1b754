#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently. Build products
# are cached under $CONTRAST_CACHE (default ~/.cache/contrast), keyed by version,
# so a second run and CI's fresh clone on the same machine reuse them.
set -euo pipefail

CACHE=${CONTRAST_CACHE:-$HOME/.cache/contrast}
BIN=$CACHE/bin
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
# The latest 1.7 on the module proxy (`go list -m -versions github.com/containerd/containerd`):
# the integration tests run every lifecycle test against both versions.
CONTAINERD17_VERSION=${CONTAINERD17_VERSION:-v1.7.35}
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}
RUNC_VERSION=${RUNC_VERSION:-v1.4.3}
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_TTRPC_VERSION=v1.2.10
# make vet's linter; a new version may report new findings, so it moves on purpose.
STATICCHECK_VERSION=v0.8.2
mkdir -p "$BIN"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_packages=(
  qemu-system-x86 qemu-utils e2fsprogs erofs-utils cpio cryptsetup-bin
  runc containernetworking-plugins iptables busybox-static iproute2
  libseccomp-dev flex bison libelf-dev bc libssl-dev
  linux-source-6.12 xz-utils protobuf-compiler psmisc
)
. "$(dirname "$0")/apt-archive.sh"
apt_install_missing "${apt_packages[@]}"

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

# go_build_scratch NAME VERSION PKG: builds PKG@VERSION once into
# $BIN/NAME-VERSION inside a scratch module, for modules `go install` refuses
# (containerd 1.7's go.mod has exclude directives).
go_build_scratch() {
  local name=$1 version=$2 pkg=$3
  local out=$BIN/$name-$version
  if [ ! -x "$out" ]; then
    log "go build $pkg@$version (scratch module)"
    local tmp; tmp=$(mktemp -d)
    (
      cd "$tmp"
      go mod init contrast.local/scratch >/dev/null 2>&1
      go get "$pkg@$version" >/dev/null
      go build -o "$tmp/out" "$pkg"
    )
    mv "$tmp/out" "$out"
    rm -rf "$tmp"
  fi
  ln -sf "$(basename "$out")" "$BIN/$name"
}

go_install_cached containerd "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/containerd
go_install_cached ctr "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/ctr
# the runc shim: the baseline handler the tests and benchmarks compare against
go_install_cached containerd-shim-runc-v2 "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
go_build_scratch containerd17 "$CONTAINERD17_VERSION" github.com/containerd/containerd/cmd/containerd
# 2.4's runc shim refuses 1.7's flag-only start ("started through the deprecated API"):
# containerd 1.7 gets its own, which the tests put first on its PATH.
go_build_scratch containerd-shim-runc-v2-17 "$CONTAINERD17_VERSION" github.com/containerd/containerd/cmd/containerd-shim-runc-v2
go_install_cached crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
# runc for the guest: static, with seccomp.
CGO_ENABLED=1 go_install_cached runc-static "$RUNC_VERSION" github.com/opencontainers/runc \
  -tags "seccomp netgo osusergo" -ldflags '-extldflags "-static" -s -w'
go_install_cached protoc-gen-go "$PROTOC_GEN_GO_VERSION" google.golang.org/protobuf/cmd/protoc-gen-go
go_install_cached protoc-gen-go-ttrpc "$PROTOC_GEN_TTRPC_VERSION" github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
go_install_cached staticcheck "$STATICCHECK_VERSION" honnef.co/go/tools/cmd/staticcheck

# QEMU >= 9.1 parses the SEV-SNP arguments (Debian 12's QEMU is 7.2). QEMU 10
# from <release>-backports is unpacked (dpkg -x) into the cache, keyed by its
# version, and never installed: the system keeps its own QEMU. It runs through
# a wrapper that points QEMU at its modules and data files:
# $CACHE/qemu10/bin/qemu-system-x86_64 (the tests' CONTRAST_QEMU_SNP).
QEMU10_VERSION=${QEMU10_VERSION:-1:10.0.2+ds-2+deb13u1~bpo12+1}
install_qemu10() {
  local dir=$CACHE/qemu10 version=$QEMU10_VERSION
  local root=$dir/${version//[:~+]/_}
  if [ ! -x "$root/usr/bin/qemu-system-x86_64" ]; then
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || { echo "deps: no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
    local uri key
    read -r uri key < <(debian_archive "$codename") || true
    if [ -z "${uri:-}" ]; then
      echo "deps: no apt source for Debian $codename in /etc/apt/sources.list{,.d/*.sources}: cannot find the archive for $codename-backports" >&2
      return 1
    fi
    log "QEMU $version from $codename-backports ($uri), unpacked into $root"
    # A private apt state: the machine's sources and lists stay as they are.
    local apt=$dir/apt
    mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial"
    {
      echo "Types: deb"
      echo "URIs: $uri"
      echo "Suites: $codename-backports"
      echo "Components: main"
      [ "$key" = "-" ] || echo "Signed-By: $key"
    } >"$apt/sources/backports.sources"
    local opts=(
      -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
      -o APT::Sandbox::User=root -q
    )
    apt-get "${opts[@]}" update >/dev/null
    local tmp; tmp=$(mktemp -d "$dir/.unpack.XXXXXX")
    local pkgs=(qemu-system-x86 qemu-system-common qemu-system-data)
    if ! (cd "$tmp" && apt-get "${opts[@]}" download "${pkgs[@]/%/=$version}" >/dev/null); then
      rm -rf "$tmp"
      echo "deps: QEMU $version is not in $codename-backports (any more?); available:" >&2
      apt-cache "${opts[@]}" madison qemu-system-x86 >&2 || true
      echo "deps: set QEMU10_VERSION to one of them" >&2
      return 1
    fi
    mkdir "$tmp/root"
    local deb
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
    rm -rf "$root"
    mv "$tmp/root" "$root"
    rm -rf "$tmp"
  fi
  mkdir -p "$dir/bin"
  cat >"$dir/bin/qemu-system-x86_64.tmp" <<WRAPPER
#!/bin/sh
# QEMU $version, unpacked by hack/deps.sh: its modules and firmware data
# live next to it, not where the binary was built to look.
QEMU_MODULE_DIR='$root/usr/lib/x86_64-linux-gnu/qemu' exec '$root/usr/bin/qemu-system-x86_64' -L '$root/usr/share/qemu' "\$@"
WRAPPER
  chmod +x "$dir/bin/qemu-system-x86_64.tmp"
  mv "$dir/bin/qemu-system-x86_64.tmp" "$dir/bin/qemu-system-x86_64"
}
install_qemu10

log "dependencies ready in $BIN"
