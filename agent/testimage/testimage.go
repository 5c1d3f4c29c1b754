// Package testimage builds container images on real block devices for
// tests: a busybox root filesystem in an ext4 image attached to a loop device.
// It imports testing: only tests may import it.
package testimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/agent/reaper"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// Runner runs a command to the end and returns its combined output. A test
// process with a reaper must run commands through it (ReaperRunner):
// exec.Cmd.Wait would race with the reaper for the exit.
type Runner func(cmd *exec.Cmd) ([]byte, error)

// ReaperRunner runs commands through r.
func ReaperRunner(r *reaper.Reaper) Runner {
	return func(cmd *exec.Cmd) ([]byte, error) {
		out, err := os.CreateTemp("", "testimage-out-")
		if err != nil {
			return nil, err
		}
		defer os.Remove(out.Name())
		defer out.Close()
		cmd.Stdout, cmd.Stderr = out, out
		e, err := r.Run(context.Background(), cmd)
		b, _ := os.ReadFile(out.Name())
		if err == nil && e.Code() != 0 {
			err = fmt.Errorf("%v", e)
		}
		return b, err
	}
}

func plainRunner(cmd *exec.Cmd) ([]byte, error) { return cmd.CombinedOutput() }

// Busybox is where busybox-static is installed (apt busybox-static).
const Busybox = "/bin/busybox"

// Require skips the test unless it runs as root with busybox, mkfs.ext4 and
// losetup at hand.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mounts)")
	}
	testenv.Command(t, Busybox, "busybox-static")
	testenv.Command(t, "mkfs.ext4", "e2fsprogs")
	testenv.Command(t, "losetup", "mount")
}

// BusyboxExt4 builds an ext4 image whose root is a busybox root filesystem
// and returns its path. run may be nil when the test has no reaper.
func BusyboxExt4(t testing.TB, run Runner) string {
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
	for _, applet := range strings.Fields(runOK(t, run, Busybox, "--list")) {
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
	runOK(t, run, "mkfs.ext4", "-q", "-F", "-d", root, img, "32M")
	return img
}

// Loop attaches image read-only to a free loop device, detached at cleanup.
// run may be nil when the test has no reaper.
func Loop(t testing.TB, run Runner, image string) string {
	t.Helper()
	dev := strings.TrimSpace(runOK(t, run, "losetup", "--find", "--show", "--read-only", image))
	t.Cleanup(func() { runOK(t, run, "losetup", "--detach", dev) })
	return dev
}

func runOK(t testing.TB, run Runner, name string, args ...string) string {
	t.Helper()
	if run == nil {
		run = plainRunner
	}
	out, err := run(exec.Command(name, args...))
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
