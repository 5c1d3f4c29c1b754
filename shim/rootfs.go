package shim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// rootfsSerial is the virtio-blk serial of a container's rootfs disk: at most
// 20 bytes, derived from the container id so the agent can find the disk.
func rootfsSerial(containerID string) string {
	sum := sha256.Sum256([]byte(containerID))
	return "r" + hex.EncodeToString(sum[:])[:19]
}

// buildRootfsImage turns the rootfs containerd prepared (snapshot mounts)
// into an ext4 image the guest mounts read-only. Until image layers reach the
// guest through dm-verity, this is how a container's files get there.
func buildRootfsImage(ctx context.Context, mounts []*types.Mount, image string) error {
	if len(mounts) == 0 {
		return fmt.Errorf("no rootfs mounts: containers need a snapshot rootfs")
	}
	return mount.WithTempMount(ctx, mount.FromProto(mounts), func(root string) error {
		return mkfsExt4(ctx, root, image)
	})
}

// rootfsFromBundle builds the image from the spec's root.path directory,
// for bundles that come without snapshot mounts.
func rootfsFromBundle(ctx context.Context, bundle string, spec *specs.Spec, image string) error {
	if spec.Root == nil || spec.Root.Path == "" {
		return fmt.Errorf("no rootfs: neither snapshot mounts nor root.path in the bundle spec")
	}
	root := spec.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(bundle, root)
	}
	info, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("root.path: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("root.path %s is not a directory", root)
	}
	return mkfsExt4(ctx, root, image)
}

// mkfsExt4 writes dir into a new sparse ext4 image sized for its content.
func mkfsExt4(ctx context.Context, dir, image string) error {
	bytes, inodes, err := treeSize(dir)
	if err != nil {
		return fmt.Errorf("measure rootfs: %w", err)
	}
	// room for metadata and the journal-less block groups, rounded to MiB
	sizeMiB := (bytes*5/4)>>20 + 16
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-O", "^has_journal",
		"-N", strconv.FormatInt(inodes*2+256, 10), "-d", dir, image, strconv.FormatInt(sizeMiB, 10)+"M")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(image)
		return fmt.Errorf("mkfs.ext4 -d %s: %w: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// treeSize sums what a directory tree needs in 4 KiB blocks, and its entries.
func treeSize(dir string) (bytes, entries int64, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		info, err := d.Info()
		if err != nil {
			return err
		}
		bytes += (info.Size() + 4095) &^ 4095
		if info.IsDir() {
			bytes += 4096
		}
		return nil
	})
	return bytes, entries, err
}
