#!/usr/bin/env bash
# kvm-as.sh absent|broken COMMAND...: runs COMMAND where /dev/kvm is absent,
# or exists but is no KVM (the device of /dev/null), whatever this machine
# has: the two kinds of machine `make test` must pass on, shown on one.
#
# It needs root. COMMAND runs in a mount namespace of its own whose /dev is
# an overlay on the host's /dev: devices the host adds later (loop devices)
# still appear, and the host's /dev is never written.
set -euo pipefail
mode=${1:-}
shift || true
case "$mode" in absent|broken) ;; *) echo "usage: $0 absent|broken COMMAND..." >&2; exit 2 ;; esac
[ $# -gt 0 ] || { echo "usage: $0 absent|broken COMMAND..." >&2; exit 2; }

exec unshare --mount --propagation private bash -euo pipefail -c '
  mode=$1; shift
  work=$(mktemp -d /tmp/kvm-as.XXXXXX)
  mount -t tmpfs kvm-as "$work"
  mkdir "$work/upper" "$work/work" "$work/dev"
  if [ "$mode" = absent ]; then
    mknod "$work/upper/kvm" c 0 0          # an overlay whiteout hides the entry
  else
    mknod -m 666 "$work/upper/kvm" c 1 3   # /dev/null'"'"'s device: opens, answers no KVM ioctl
  fi
  mount -t overlay kvm-as -o "lowerdir=/dev,upperdir=$work/upper,workdir=$work/work" "$work/dev"
  # The mounts under /dev (pts, shm, mqueue, ...) come along.
  for m in $(awk '"'"'$2 ~ "^/dev/." {print $2}'"'"' /proc/self/mounts); do
    mkdir -p "$work$m" 2>/dev/null || true
    mount --bind "$m" "$work$m"
  done
  mount --move "$work/dev" /dev
  # The overlay keeps its upper layer alive; nothing stays in the host'"'"'s /tmp.
  umount -l "$work"
  rmdir "$work"
  if [ "$mode" = absent ]; then
    [ ! -e /dev/kvm ] || { echo "kvm-as: /dev/kvm still visible" >&2; exit 1; }
  fi
  exec "$@"
' kvm-as "$mode" "$@"
