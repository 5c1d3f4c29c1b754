// Package testimage builds container images on real block devices for
// tests: a busybox root filesystem in an ext4 image attached to a loop device.
// It imports testing: only tests may import it.
package testimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Busybox is where busybox-static is installed (apt busybox-static).
const Busybox = "/bin/busybox"

// Require skips the test unless it runs as root with busybox, mkfs.ext4 and
// losetup at hand.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mounts)")
	}
	for _, bin := range []string{Busybox, "mkfs.ext4", "losetup"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
}

// BusyboxExt4 builds an ext4 image whose root is a busybox root filesystem
// and returns its path.
func BusyboxExt4(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "etc", "run", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/motd"), []byte("from the image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "rootfs.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-d", root, img, "32M")
	return img
}

// Loop attaches image read-only to a free loop device, detached at cleanup.
func Loop(t testing.TB, image string) string {
	t.Helper()
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", "--read-only", image))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
