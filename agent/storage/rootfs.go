package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Filesystems a container image device may hold, and the options that keep
// a read-only mount from writing (ext4 would otherwise replay its journal).
var fsOptions = map[string]string{
	"ext4":     "noload",
	"erofs":    "",
	"xfs":      "norecovery",
	"squashfs": "",
}

// ValidateFSType checks that the agent can mount a filesystem type.
func ValidateFSType(fstype string) error {
	if _, ok := fsOptions[fstype]; !ok {
		types := make([]string, 0, len(fsOptions))
		for t := range fsOptions {
			types = append(types, t)
		}
		slices.Sort(types)
		return fmt.Errorf("filesystem type %q is not supported for a container image (supported: %v)", fstype, types)
	}
	return nil
}

// Rootfs is a container root filesystem: the image device mounted read-only
// (Lower) under an overlay (Merged) whose upper and work directories live on
// a tmpfs of its own (Scratch), so the container can write like under runc
// on a host, and removing the container frees what it wrote.
type Rootfs struct {
	Lower   string
	Scratch string
	Merged  string
}

// NewRootfs returns the layout under dir; nothing is mounted yet.
func NewRootfs(dir string) *Rootfs {
	return &Rootfs{
		Lower:   filepath.Join(dir, "lower"),
		Scratch: filepath.Join(dir, "scratch"),
		Merged:  filepath.Join(dir, "rootfs"),
	}
}

// Mount mounts the image device and the overlay. On error nothing stays mounted.
func (r *Rootfs) Mount(device, fstype string) (err error) {
	if err := ValidateFSType(fstype); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if uerr := r.Unmount(); uerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, uerr)
			}
		}
	}()
	for _, d := range []string{r.Lower, r.Scratch, r.Merged} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
	}
	if err := unix.Mount(device, r.Lower, fstype, unix.MS_RDONLY|unix.MS_NODEV, fsOptions[fstype]); err != nil {
		return fmt.Errorf("mount %s (%s) read-only at %s: %w", device, fstype, r.Lower, err)
	}
	return r.mountOverlay([]string{r.Lower})
}

// MountLayers mounts the overlay over image layers already mounted at
// layerDirs, lowest layer first; Lower stays unused. On error nothing stays
// mounted.
func (r *Rootfs) MountLayers(layerDirs []string) (err error) {
	if len(layerDirs) == 0 {
		return errors.New("no image layers to stack")
	}
	defer func() {
		if err != nil {
			if uerr := r.Unmount(); uerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, uerr)
			}
		}
	}()
	return r.mountOverlay(overlayLowerDirs(layerDirs))
}

// overlayLowerDirs turns layers listed lowest first into overlayfs's
// lowerdir order, top first. overlayfs refuses a directory twice, yet an
// image may repeat a layer: only its topmost occurrence is kept, which
// gives the same tree, as the top one redoes all that the lower one did.
func overlayLowerDirs(layerDirs []string) []string {
	seen := map[string]bool{}
	top := make([]string, 0, len(layerDirs))
	for _, d := range slices.Backward(layerDirs) {
		if !seen[d] {
			seen[d] = true
			top = append(top, d)
		}
	}
	return top
}

// mountOverlay mounts the scratch tmpfs and the overlay over the lower
// directories, top first.
func (r *Rootfs) mountOverlay(lowerTopFirst []string) error {
	for _, d := range []string{r.Scratch, r.Merged} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
	}
	if err := unix.Mount("tmpfs", r.Scratch, "tmpfs", unix.MS_NODEV, "mode=0700"); err != nil {
		return fmt.Errorf("mount tmpfs at %s: %w", r.Scratch, err)
	}
	upper, work := filepath.Join(r.Scratch, "upper"), filepath.Join(r.Scratch, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create overlay dir: %w", err)
		}
	}
	if err := mountOverlayFS(r.Merged, lowerTopFirst, upper, work); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", r.Merged, err)
	}
	return nil
}

// mountOverlayFS mounts an overlay through the new mount API, which takes
// each lower directory as an option of its own ("lowerdir+", Linux 6.8):
// with mount(2) all of them share one page of options, which bounds an
// image to about 40 layers.
func mountOverlayFS(target string, lowerTopFirst []string, upper, work string) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	set := func(key, value string) error {
		if err := unix.FsconfigSetString(fsfd, key, value); err != nil {
			return fmt.Errorf("option %s=%s: %w%s", key, value, err, fsContextLog(fsfd))
		}
		return nil
	}
	for _, d := range lowerTopFirst {
		if err := set("lowerdir+", d); err != nil {
			return err
		}
	}
	if err := set("upperdir", upper); err != nil {
		return err
	}
	if err := set("workdir", work); err != nil {
		return err
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("create overlay over %d lower directories (top first: %s): %w%s", len(lowerTopFirst), strings.Join(lowerTopFirst, ", "), err, fsContextLog(fsfd))
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsmount overlay: %w%s", err, fsContextLog(fsfd))
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount overlay to %s: %w", target, err)
	}
	return nil
}

// fsContextLog returns what the filesystem said about a failed fsconfig
// (the kernel queues its messages on the context), as " (kernel: ...)".
func fsContextLog(fsfd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 8 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (kernel: " + strings.Join(msgs, "; ") + ")"
}

// Unmount undoes Mount, in reverse order; it is safe on a partly mounted or
// already unmounted Rootfs. Mount points are removed too.
func (r *Rootfs) Unmount() error {
	var errs []error
	for _, d := range []string{r.Merged, r.Scratch, r.Lower} {
		if err := unmount(d); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove mount point: %w", err))
		}
	}
	return errors.Join(errs...)
}

// unmount unmounts everything stacked at dir; not mounted is fine.
func unmount(dir string) error {
	for {
		err := unix.Unmount(dir, 0)
		switch {
		case err == nil:
			continue // something may be stacked below
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		case errors.Is(err, unix.EBUSY):
			// A process still holds it (a container mount namespace leaking
			// it): detach so that it goes away with its last user.
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount %s (lazily): %w", dir, err)
			}
			continue
		default:
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
}
