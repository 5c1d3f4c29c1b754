#!/usr/bin/env bash
# Builds the guest kernel from Debian's linux-source-6.12 with tinyconfig plus
# vmimage/kernel/guest.config. The result is cached under
# $CONTRAST_CACHE/kernel/<key>/bzImage, keyed by source version and config, and
# its path printed on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CONTRAST_CACHE:-$HOME/.cache/contrast}
tarball=$(ls /usr/src/linux-source-6.12.tar.xz)
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
fragment=$here/vmimage/kernel/guest.config
# Reproducible build: a fixed timestamp, user, host and build number
# (without KBUILD_BUILD_VERSION the version string counts the builds of the
# tree, "#1", "#2", ..., so a rebuild differs in those bytes). They are part
# of the key: a kernel built without them is not taken for one built with.
KBUILD_BUILD_TIMESTAMP="1970-01-01" KBUILD_BUILD_USER=contrast KBUILD_BUILD_HOST=contrast KBUILD_BUILD_VERSION=1
build_id="$KBUILD_BUILD_TIMESTAMP $KBUILD_BUILD_USER $KBUILD_BUILD_HOST $KBUILD_BUILD_VERSION"
key=$( (echo "$srcver"; echo "$build_id"; cat "$fragment") | sha256sum | cut -c1-16)
out=$CACHE/kernel/$key
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi
mkdir -p "$CACHE/kernel"
# One build at a time: two make runs in the one build tree corrupt it. A
# second caller waits for the first and then finds its result.
exec 9>"$CACHE/kernel/.lock"
flock 9
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi
work=$CACHE/kernel/build-$srcver
if [ ! -d "$work/linux-source-6.12" ]; then
  echo "==> unpacking $tarball" >&2
  rm -rf "$work"; mkdir -p "$work"
  tar -C "$work" -xf "$tarball"
fi
cd "$work/linux-source-6.12"
echo "==> configuring kernel (tinyconfig + $(basename "$fragment"))" >&2
export KBUILD_BUILD_TIMESTAMP KBUILD_BUILD_USER KBUILD_BUILD_HOST KBUILD_BUILD_VERSION
make -s tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig >/dev/null
# every line of the fragment must have survived: a silently dropped option is a broken guest
missing=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue;; esac
  opt=${line%%=*}; val=${line#*=}
  if [ "$val" = n ]; then
    grep -q "^$opt=" .config && { echo "kernel config: $opt is set, fragment wants it off" >&2; missing=1; }
  else
    grep -qx "$line" .config || { echo "kernel config: $line did not take effect (have: $(grep "^$opt=\|$opt is not set" .config))" >&2; missing=1; }
  fi
done < "$fragment"
[ $missing = 0 ] || exit 1
echo "==> building bzImage ($(nproc) jobs; ~9 min cold)" >&2
make -s -j"$(nproc)" bzImage >&2
mkdir -p "$out.tmp"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
make -s kernelrelease > "$out.tmp/release"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out/bzImage"
