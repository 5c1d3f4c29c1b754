package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// newRoot is where the tmpfs that replaces the initramfs is built.
const newRoot = "/.contrast-root"

// RootIsInitramfs reports whether / is the kernel's initramfs (rootfs), on
// which pivot_root(2), and so runc, cannot work. /proc must be mounted.
func RootIsInitramfs() (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[4] != "/" {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				// The last entry for "/" is the one on top.
				if fields[i+1] == "rootfs" {
					return true, nil
				}
				break
			}
		}
	}
	return false, sc.Err()
}

// SwitchRoot moves the contents of the initramfs to a tmpfs, makes that the
// root (as switch_root(8) does: MS_MOVE onto / and chroot) and re-executes
// the agent from it, which does not return. Each file is removed from the
// initramfs once copied, so memory is not held twice. The agent binary
// itself (self) is bind-mounted read-only instead of copied: it is most of
// the initramfs, and copying it under TCG took a quarter of the boot. runc
// is copied: bind-mounted, every runc exec got 0.7 s slower (165 -> 850 ms
// per crictl exec under TCG), as runc then copies its own binary to seal it.
// Only mounts of the initramfs itself are copied: call it before mounting
// anything but what it unmounts itself.
func SwitchRoot(self string) error {
	if err := os.Mkdir(newRoot, 0o755); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("switch root: mount tmpfs: %w", err)
	}
	bind := func(p string) bool { return p == filepath.Clean(self) }
	if err := MoveTree("/", newRoot, func(p string) bool { return p == newRoot }, bind); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move tmpfs onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Exec(self, os.Args, os.Environ()); err != nil {
		return fmt.Errorf("switch root: exec %s: %w", self, err)
	}
	return nil
}

// MoveTree copies every file under src that is on src's filesystem into
// dst (which must exist), keeping type, mode, owner and device numbers,
// and removes each source once copied. Paths for which skip is true are
// left alone; regular files for which bind is true are bind-mounted
// read-only instead of copied (the mount keeps the source inode alive
// after its name is removed). Hard links become separate copies.
func MoveTree(src, dst string, skip, bind func(path string) bool) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	return moveDir(src, dst, st.Dev, skip, bind)
}

func moveDir(src, dst string, dev uint64, skip, bind func(string) bool) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("read dir %s: %w", src, err)
	}
	for _, e := range entries {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if skip(s) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(s, &st); err != nil {
			return fmt.Errorf("stat %s: %w", s, err)
		}
		if st.Dev != dev {
			continue // a mount point: not part of the initramfs
		}
		if err := moveEntry(s, d, &st, dev, skip, bind); err != nil {
			return err
		}
	}
	return nil
}

func moveEntry(s, d string, st *unix.Stat_t, dev uint64, skip, bind func(string) bool) error {
	perm := st.Mode & 0o7777
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create %s: %w", d, err)
		}
		if err := moveDir(s, d, dev, skip, bind); err != nil {
			return err
		}
		if err := unix.Rmdir(s); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("remove %s: %w", s, err)
		}
	case unix.S_IFREG:
		if bind(s) {
			// The mount shows the initramfs inode itself: owner and mode
			// are already right, and it is read-only.
			if err := bindFile(s, d); err != nil {
				return err
			}
			if err := unix.Unlink(s); err != nil {
				return fmt.Errorf("remove %s: %w", s, err)
			}
			return nil
		}
		if err := copyFile(s, d); err != nil {
			return err
		}
		if err := unix.Unlink(s); err != nil {
			return fmt.Errorf("remove %s: %w", s, err)
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(s)
		if err != nil {
			return fmt.Errorf("read link %s: %w", s, err)
		}
		if err := os.Symlink(target, d); err != nil {
			return fmt.Errorf("create link %s: %w", d, err)
		}
		if err := unix.Unlink(s); err != nil {
			return fmt.Errorf("remove %s: %w", s, err)
		}
	default: // device nodes, fifos, sockets
		if err := unix.Mknod(d, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("create node %s: %w", d, err)
		}
		if err := unix.Unlink(s); err != nil {
			return fmt.Errorf("remove %s: %w", s, err)
		}
	}
	if err := unix.Lchown(d, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", d, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(d, perm); err != nil {
			return fmt.Errorf("chmod %s: %w", d, err)
		}
	}
	return nil
}

// bindFile makes d a read-only bind mount of the file s.
func bindFile(s, d string) error {
	f, err := os.OpenFile(d, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if err := unix.Mount(s, d, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s to %s: %w", s, d, err)
	}
	if err := unix.Mount("", d, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", d, err)
	}
	return nil
}

func copyFile(s, d string) error {
	in, err := os.Open(s)
	if err != nil {
		return fmt.Errorf("open %s: %w", s, err)
	}
	defer in.Close()
	out, err := os.OpenFile(d, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", s, err)
	}
	return nil
}
