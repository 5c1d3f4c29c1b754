package guestinit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    logrus.Level
		wantErr string
	}{
		{cmdline: "console=ttyS0 quiet", want: logrus.InfoLevel},
		{cmdline: "console=ttyS0 contrast.log_level=debug panic=-1\n", want: logrus.DebugLevel},
		{cmdline: "contrast.log_level=warn contrast.log_level=error", want: logrus.ErrorLevel},
		{cmdline: "contrast.log_level=loud", wantErr: "contrast.log_level=loud"},
		{cmdline: "contrast.loglevel=debug", wantErr: "unknown option contrast.loglevel"},
	} {
		opts, err := ParseCmdline(tc.cmdline)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: error %v, want %q", tc.cmdline, err, tc.wantErr)
			}
			continue
		}
		if err != nil || opts.LogLevel != tc.want {
			t.Errorf("%q: %+v %v, want level %v", tc.cmdline, opts, err, tc.want)
		}
	}
}

func TestMoveTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mknod, chown, mount)")
	}
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	for _, d := range []string{src, dst, src + "/usr/bin", src + "/mnt", src + "/skipme"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(src+"/init", []byte("agent"), 0o755))
	must(os.WriteFile(src+"/usr/bin/runc", []byte("runc"), 0o750))
	big := bytes.Repeat([]byte("agent binary "), 1<<17)
	must(os.WriteFile(src+"/big", big, 0o755))
	t.Cleanup(func() { unix.Unmount(dst+"/big", unix.MNT_DETACH) })
	must(os.Chown(src+"/usr/bin/runc", 12, 34))
	must(os.Chmod(src+"/usr", 0o711))
	must(os.Symlink("usr/bin", src+"/bin"))
	must(unix.Mknod(src+"/null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(src+"/fifo", 0o600))
	// A mount inside is not part of the tree.
	must(unix.Mount("tmpfs", src+"/mnt", "tmpfs", 0, ""))
	t.Cleanup(func() { unix.Unmount(src+"/mnt", unix.MNT_DETACH) })
	must(os.WriteFile(src+"/mnt/other-fs", nil, 0o644))

	must(MoveTree(src, dst, func(p string) bool { return p == src+"/skipme" }, func(p string) bool { return p == src+"/big" }))

	if b, err := os.ReadFile(dst + "/usr/bin/runc"); err != nil || string(b) != "runc" {
		t.Fatalf("runc: %q %v", b, err)
	}
	// The file bind says so of is bind-mounted read-only, not copied.
	if b, err := os.ReadFile(dst + "/big"); err != nil || !bytes.Equal(b, big) {
		t.Fatalf("big file: %d bytes, %v", len(b), err)
	}
	if err := os.WriteFile(dst+"/big", []byte("changed"), 0o755); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to the bound big file: %v, want EROFS", err)
	}
	var st unix.Stat_t
	must(unix.Stat(dst+"/big", &st))
	if st.Mode&0o7777 != 0o755 {
		t.Errorf("big file mode %o", st.Mode&0o7777)
	}
	must(unix.Stat(dst+"/usr/bin/runc", &st))
	if st.Uid != 12 || st.Gid != 34 || st.Mode&0o7777 != 0o750 {
		t.Errorf("runc owner %d:%d mode %o", st.Uid, st.Gid, st.Mode&0o7777)
	}
	must(unix.Stat(dst+"/usr", &st))
	if st.Mode&0o7777 != 0o711 {
		t.Errorf("usr mode %o", st.Mode&0o7777)
	}
	if l, err := os.Readlink(dst + "/bin"); err != nil || l != "usr/bin" {
		t.Errorf("bin link %q %v", l, err)
	}
	must(unix.Lstat(dst+"/null", &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("null: mode %o rdev %x", st.Mode, st.Rdev)
	}
	must(unix.Lstat(dst+"/fifo", &st))
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo: mode %o", st.Mode)
	}
	if _, err := os.Stat(dst + "/mnt/other-fs"); err == nil {
		t.Error("copied a file from another filesystem")
	}
	if _, err := os.Stat(dst + "/skipme"); err == nil {
		t.Error("copied a skipped path")
	}
	// The source is emptied but for the mount and the skipped path.
	left, _ := os.ReadDir(src)
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "mnt,skipme" {
		t.Errorf("left in source: %v", names)
	}
}

func TestBringUpLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespace)")
	}
	errc := make(chan error, 1)
	var up bool
	go func() {
		// The thread enters a new network namespace and dies with the
		// goroutine (never unlocked), so no other goroutine runs in it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := BringUpLoopback(); err != nil {
			errc <- err
			return
		}
		fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		defer unix.Close(fd)
		ifr, _ := unix.NewIfreq("lo")
		err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr)
		up = ifr.Uint16()&unix.IFF_UP != 0
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !up {
		t.Fatal("lo is not up")
	}
}
