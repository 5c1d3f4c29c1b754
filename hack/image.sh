#!/usr/bin/env bash
# Builds the guest image into ${OUT:-_output}/image (kernel, rootfs.img: the
# root file system as a dm-verity protected ext4 disk, manifest.json, and
# OVMF.fd with reference.json: the OVMF AmdSevX64 firmware of hack/ovmf.sh
# that SEV-SNP pod VMs boot with, and what their launch measurement is
# computed from) from the kernel of hack/kernel.sh, a static contrast-agent
# built here and the static runc of hack/deps.sh. Prints the image
# directory on stdout. AGENT=path uses
# that agent binary instead of building one. FORMAT=initrd builds the old
# initramfs image (initrd instead of rootfs.img), for comparisons.
# VARIANT=test builds the test image into ${OUT}/image-test instead: its agent
# has the simulated SNP device (build tag contrast_simsnp), which a release
# image must never contain, and its reference.json holds the SEV-SNP launch
# measurements computed against the firmware fixture of vmimage/snp/testdata
# (its last page, which measures like a one-page firmware), the same fixture
# the tests' runtime configuration names, so the simulated device and the
# references agree. FIRMWARE=path writes reference.json for another firmware.
# Quick when nothing changed: the Go build cache, the kernel cache and
# `contrast image build` leaving an identical image alone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
CACHE=${CONTRAST_CACHE:-$HOME/.cache/contrast}
OUT=${OUT:-_output}
case $OUT in /*) ;; *) OUT=$here/$OUT;; esac
VARIANT=${VARIANT:-release}
FORMAT=${FORMAT:-rootfs}
case $VARIANT in
  release) suffix=; tags=; firmware=${FIRMWARE:-$(hack/ovmf.sh)}; bundle=--bundle-firmware;;
  test) suffix=-test; tags=contrast_simsnp; firmware=${FIRMWARE:-$here/vmimage/snp/testdata/ovmf_AmdSev_suffix.bin}; bundle=;;
  *) echo "image: VARIANT=$VARIANT: want release or test" >&2; exit 1;;
esac

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

runc=$CACHE/bin/runc-static
if [ ! -x "$runc" ]; then
  echo "image: $runc is missing: run hack/deps.sh" >&2
  exit 1
fi
# busybox-static's mke2fs (ext2) makes the pods' encrypted scratch disks in the guest
mke2fs=${MKE2FS:-/bin/busybox}
if [ ! -x "$mke2fs" ]; then
  echo "image: $mke2fs (mke2fs for the guest) is missing: run hack/deps.sh" >&2
  exit 1
fi
kernel=$(hack/kernel.sh)

if [ -n "${AGENT:-}" ]; then
  agent=$AGENT
else
  mkdir -p "$OUT/bin"
  agent=$OUT/bin/contrast-agent$suffix
  log "building contrast-agent$suffix (static${tags:+, tags $tags})"
  # No build id, paths or VCS stamp: the same source gives the same agent bytes
  # (also from a tarball, and across commits that do not touch it), hence
  # the same root disk. The old file is kept when nothing changed.
  CGO_ENABLED=0 go build -trimpath -buildvcs=false -tags "$tags" -ldflags '-s -w -buildid=' -o "$agent.tmp" ./cmd/contrast-agent
  if cmp -s "$agent.tmp" "$agent"; then rm "$agent.tmp"; else mv "$agent.tmp" "$agent"; fi
fi

log "building guest image$suffix"
go run ./cmd/contrast image build --kernel "$kernel" --agent "$agent" --runc "$runc" --mke2fs "$mke2fs" --format "$FORMAT" ${firmware:+--firmware "$firmware"} $bundle -o "$OUT/image$suffix" >&2
echo "$OUT/image$suffix"
