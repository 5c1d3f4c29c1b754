package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/agent/guestspec"
)

// bindSubPaths binds, for each subPath mount of res, the path inside its
// volume's guest directory to a mount point of the container's own
// (RunDir/subpaths/<id>/<n>), and points the mount there. The path is
// opened component by component without following symlinks, so a symlink
// a container planted in a shared volume (an emptyDir) cannot make another
// container's subPath bind a directory outside the volume; runc then binds
// what was opened, not a path that could change in between. In a volume
// the containers may write, missing directories are made, as the kubelet
// makes them; in a read-only volume copy they must exist.
func (s *Service) bindSubPaths(c *container, res *guestspec.Result) error {
	if len(res.SubPaths) == 0 {
		return nil
	}
	dir := filepath.Join(s.cfg.RunDir, "subpaths", c.id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	c.subPathDir = dir
	for k, sp := range res.SubPaths {
		m := &res.Spec.Mounts[sp.Index]
		create := !strings.HasPrefix(m.Source, s.volumes.dir+"/")
		f, err := openBeneath(m.Source, sp.Path, create)
		if err != nil {
			return fmt.Errorf("subPath %s of the volume mounted at %s: %w", sp.Path, m.Destination, err)
		}
		target := filepath.Join(dir, strconv.Itoa(k))
		err = os.Mkdir(target, 0o700)
		if err == nil {
			err = unix.Mount(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), target, "", unix.MS_BIND, "")
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("subPath %s of the volume mounted at %s: bind: %w", sp.Path, m.Destination, err)
		}
		c.subPathMounts = append(c.subPathMounts, target)
		m.Source = target
	}
	return nil
}

// openBeneath opens the directory rel below root (an O_PATH descriptor),
// following no symlink on the way.
func openBeneath(root, rel string, create bool) (*os.File, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the volume: %w", err)
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			unix.Close(fd)
			return nil, fmt.Errorf("path component %q", c)
		}
		next, err := unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		unix.Close(fd)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink or not a directory", c)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c, err)
		}
		fd = next
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, rel)), nil
}

// unbindSubPaths undoes bindSubPaths; the mount points are removed one by
// one (never recursively: a mount left would take the volume's files with
// it).
func (c *container) unbindSubPaths() error {
	for len(c.subPathMounts) > 0 {
		last := c.subPathMounts[len(c.subPathMounts)-1]
		if err := unix.Unmount(last, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount subPath %s: %w", last, err)
		}
		if err := os.Remove(last); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove subPath mount point %s: %w", last, err)
		}
		c.subPathMounts = c.subPathMounts[:len(c.subPathMounts)-1]
	}
	if c.subPathDir != "" {
		if err := os.Remove(c.subPathDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", c.subPathDir, err)
		}
		c.subPathDir = ""
	}
	return nil
}
