#!/usr/bin/env bash
# Builds OVMF's AmdSevX64 platform (OvmfPkg/AmdSev/AmdSevX64.dsc), the
# firmware SEV-SNP pod VMs boot with: its SEV metadata has the SNP
# kernel-hashes page, so QEMU's kernel-hashes=on puts the SHA-256 of the
# directly booted kernel, initrd and command line into the launch
# measurement, and the firmware refuses a kernel that does not match them.
#
# The source is the edk2 package of the Debian archive the machine's apt
# sources already use (apt's source mechanism with a private apt state; no
# mirror is named here), pinned by version: 2025.02 from trixie, the newest
# the archive serves whose files can be fetched (sid lists 2026.08+ds, but
# its files are not on the archive these machines reach) and whose AmdSev
# build has the kernel-hashes section (type 0x10, edk2 >= 2022.08). Debian's
# patches are applied as dpkg-source would, and the build uses Debian's
# build dependencies (nasm, acpica-tools, uuid-dev, python3).
#
# The AmdSev platform bundles a GRUB for booting an encrypted disk with an
# injected secret; a pod VM boots its kernel directly, so the build gets an
# empty grub.efi, as Kata Containers' and Contrast's AmdSev builds do: the
# firmware file is then empty, never started, and no GRUB is measured.
#
# The result is cached under $CONTRAST_CACHE/ovmf/<key>/OVMF.fd, keyed by
# version and recipe, and its path printed on stdout. Two builds give the
# same bytes, also under another $CONTRAST_CACHE (hack/ovmf.sh
# --check-reproducible builds twice and compares; docs/firmware.md).
# A failed build leaves its workspace (and logs) under $CONTRAST_CACHE/ovmf/work.
set -euo pipefail
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${CONTRAST_CACHE:-$HOME/.cache/contrast}
EDK2_VERSION=${EDK2_VERSION:-2025.02-8+deb13u1}
EDK2_SUITE=${EDK2_SUITE:-trixie}
# At most 2 jobs: the machines have 2 cores, shared.
JOBS=${OVMF_JOBS:-2}
# The length of the workspace's path, which the firmware depends on (see
# build_ovmf).
WS_LEN=128
# The recipe: everything besides the source version that changes the
# firmware's bytes. Change it with the build below, so a cached firmware
# built another way is not taken for this one.
RECIPE="AmdSevX64 RELEASE GCC5 empty-grub workspace-path-length-$WS_LEN v2"
key=$( (echo "$EDK2_VERSION"; echo "$RECIPE") | sha256sum | cut -c1-16)
dir=$CACHE/ovmf
out=$dir/$key

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

check=0
case "${1:-}" in
  --check-reproducible) check=1;;
  "") ;;
  *) echo "usage: $0 [--check-reproducible]" >&2; exit 2;;
esac

if [ $check = 0 ] && [ -f "$out/OVMF.fd" ]; then echo "$out/OVMF.fd"; exit 0; fi

mkdir -p "$dir"
# One build at a time: the fixed workspace below is shared.
exec 9>"$dir/.lock"
flock 9
if [ $check = 0 ] && [ -f "$out/OVMF.fd" ]; then echo "$out/OVMF.fd"; exit 0; fi

# Debian's build dependencies of edk2 for an x86-64 OVMF (g++ for
# BaseTools' VfrCompile), installed once.
pkgs=(nasm acpica-tools uuid-dev python3 gcc g++ make patch xz-utils)
. "$here/apt-archive.sh"
apt_install_missing "${pkgs[@]}"

# fetch_source DEST: the orig and debian tarballs of edk2 $EDK2_VERSION in
# DEST, checked against the archive's signed index.
fetch_source() {
  local dest=$1
  local codename uri key
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  read -r uri key < <(debian_archive "$codename") || true
  if [ -z "${uri:-}" ]; then
    echo "ovmf: no apt source for Debian $codename in /etc/apt/sources.list{,.d/*.sources}: cannot find the archive" >&2
    return 1
  fi
  local apt=$dir/apt
  mapfile -t opts < <(private_apt "$apt")
  {
    echo "Types: deb-src"
    echo "URIs: $uri"
    echo "Suites: $EDK2_SUITE"
    echo "Components: main"
    [ "$key" = "-" ] || echo "Signed-By: $key"
  } >"$apt/sources/edk2.sources"
  log "edk2 $EDK2_VERSION source from $EDK2_SUITE ($uri)"
  apt-get "${opts[@]}" update >/dev/null
  local uris
  if ! uris=$(cd "$dest" && apt-get "${opts[@]}" source --print-uris "edk2=$EDK2_VERSION" 2>/dev/null | grep "^'"); then
    echo "ovmf: edk2 $EDK2_VERSION is not in $EDK2_SUITE (any more?); available:" >&2
    apt-cache "${opts[@]}" madison edk2 >&2 || true
    echo "ovmf: set EDK2_VERSION (and EDK2_SUITE) to one of them" >&2
    return 1
  fi
  # The archive these machines reach serves the tarballs but not always the
  # .dsc; the tarballs are all an unpack needs, and apt checks each file it
  # fetches against the index's SHA-256, checked again here.
  (cd "$dest" && apt-get "${opts[@]}" source --download-only "edk2=$EDK2_VERSION" >/dev/null 2>&1) || true
  local name size sum ok=1
  while read -r _ name size sum; do
    case $name in *.dsc) continue;; esac
    if [ ! -f "$dest/$name" ] || [ "$(sha256sum "$dest/$name" | cut -d' ' -f1)" != "${sum#SHA256:}" ]; then
      echo "ovmf: $name did not arrive intact from the archive" >&2
      ok=0
    fi
  done <<<"$uris"
  [ $ok = 1 ]
}

# build_ovmf SRC WORKSPACE: unpacks, patches and builds in WORKSPACE; prints the
# firmware's path. The firmware depends on the length of WORKSPACE's path:
# GenFw gives each PE image a CodeView debug entry naming its .dll by
# absolute path, and although the RELEASE build zeroes those bytes, their
# space stays, so a longer path grows 26 of the 88 modules by 64 bytes (the
# others have alignment slack) and changes the compressed firmware volume.
# The workspace's path is therefore padded to WS_LEN characters, whatever
# $CONTRAST_CACHE is; its content does not matter.
build_ovmf() {
  local src=$1 ws=$2
  rm -rf "$ws"; mkdir -p "$ws"
  tar -C "$ws" --strip-components=1 -xf "$src"/edk2_*.orig.tar.*
  tar -C "$ws" -xf "$src"/edk2_*.debian.tar.*
  local p
  while read -r p; do
    case "$p" in ''|'#'*) continue;; esac
    patch -d "$ws" -p1 -s --no-backup-if-mismatch <"$ws/debian/patches/$p"
  done <"$ws/debian/patches/series"
  # No GRUB (see above). The AmdSev build's PREBUILD step, grub.sh, keeps
  # an existing grub.efi when it is newer than grub.cfg and grub.sh: those
  # two get an old date, so it never tries to build a GRUB.
  : >"$ws/OvmfPkg/AmdSev/Grub/grub.efi"
  touch -d @0 "$ws/OvmfPkg/AmdSev/Grub/grub.cfg" "$ws/OvmfPkg/AmdSev/Grub/grub.sh"
  (
    cd "$ws"
    export PYTHON_COMMAND=/usr/bin/python3 PYTHON3_ENABLE=TRUE
    unset WORKSPACE EDK_TOOLS_PATH CONF_PATH PACKAGES_PATH
    log "building edk2 BaseTools"
    make -s -C BaseTools -j"$JOBS" >"$ws/basetools.log" 2>&1 || { tail -20 "$ws/basetools.log" >&2; exit 1; }
    # edksetup.sh reads variables it does not set, and may fail a test
    # under errexit, so it runs without either; it parses the positional
    # parameters, which a sourced file shares with its caller.
    set +eu --
    # shellcheck disable=SC1091
    . ./edksetup.sh >/dev/null || { echo "ovmf: edksetup.sh failed" >&2; exit 1; }
    log "building OVMF AmdSevX64 ($JOBS jobs; 5-9 min cold)"
    build -a X64 -t GCC5 -b RELEASE -p OvmfPkg/AmdSev/AmdSevX64.dsc -n "$JOBS" >"$ws/build.log" 2>&1 ||
      { tail -30 "$ws/build.log" >&2; exit 1; }
  )
  echo "$ws/Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd"
}

src=$dir/src-$EDK2_VERSION
if ! ls "$src"/edk2_*.orig.tar.* >/dev/null 2>&1 || ! ls "$src"/edk2_*.debian.tar.* >/dev/null 2>&1; then
  rm -rf "$src.tmp"; mkdir -p "$src.tmp"
  fetch_source "$src.tmp"
  rm -rf "$src"; mv "$src.tmp" "$src"
fi

base=$dir/work/edk2-
if [ ${#base} -gt $((WS_LEN - 1)) ]; then
  echo "ovmf: $dir is too long a path: the workspace's path must be $WS_LEN characters (see build_ovmf)" >&2
  exit 1
fi
ws=$base$(printf '%*s' $((WS_LEN - ${#base})) '' | tr ' ' x)
[ ${#ws} = "$WS_LEN" ]
trap 'rm -rf "$out.tmp"' EXIT
fw=$(build_ovmf "$src" "$ws")
mkdir -p "$out.tmp"
cp "$fw" "$out.tmp/OVMF.fd"
echo "edk2 $EDK2_VERSION ($EDK2_SUITE), $RECIPE" >"$out.tmp/VERSION"
if [ $check = 1 ]; then
  rm -rf "$dir/work/build-1"
  mv "$ws/Build" "$dir/work/build-1"
  log "second build, to compare"
  fw2=$(build_ovmf "$src" "$ws")
  if ! cmp "$out.tmp/OVMF.fd" "$fw2" >&2; then
    echo "ovmf: two builds differ: $out.tmp/OVMF.fd and $fw2; modules that differ:" >&2
    (cd "$dir/work/build-1" && find . -name '*.efi' -path '*/OUTPUT/*' | sort | while read -r f; do
      cmp -s "$f" "$ws/Build/$f" || echo "  $f" >&2
    done)
    echo "ovmf: the first build's tree is in $dir/work/build-1, the second's in $ws/Build" >&2
    exit 1
  fi
  rm -rf "$dir/work/build-1"
  log "two builds gave the same bytes: $(sha256sum "$fw2" | cut -d' ' -f1)"
fi
rm -rf "$ws"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out/OVMF.fd"
