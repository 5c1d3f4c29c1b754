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
	return r.mountOverlay(r.Lower)
}

// maxMountData is the size of the page the kernel copies a mount's option
// string into, its terminating NUL included.
const maxMountData = 4096

// MountLayers mounts the overlay over image layers already mounted at
// layerDirs, lowest layer first; Lower stays unused. On error nothing stays
// mounted.
func (r *Rootfs) MountLayers(layerDirs []string) (err error) {
	if len(layerDirs) == 0 {
		return errors.New("no image layers to stack")
	}
	for _, d := range layerDirs {
		// overlayfs splits lowerdir at ':' and treats ',' as the next option.
		if strings.ContainsAny(d, ":,\\") {
			return fmt.Errorf("layer directory %q has a character overlayfs options cannot carry", d)
		}
	}
	defer func() {
		if err != nil {
			if uerr := r.Unmount(); uerr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, uerr)
			}
		}
	}()
	// overlayfs lists lower directories top first.
	top := slices.Clone(layerDirs)
	slices.Reverse(top)
	return r.mountOverlay(strings.Join(top, ":"))
}

// mountOverlay mounts the scratch tmpfs and the overlay over lowerdir.
func (r *Rootfs) mountOverlay(lowerdir string) error {
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
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lowerdir, upper, work)
	if len(opts) >= maxMountData {
		return fmt.Errorf("overlay options for %s are %d bytes, more than the %d the kernel takes (too many layers)", r.Merged, len(opts), maxMountData-1)
	}
	if err := unix.Mount("overlay", r.Merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay at %s (%s): %w", r.Merged, opts, err)
	}
	return nil
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
