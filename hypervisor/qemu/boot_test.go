package qemu

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// testInitramfs builds testdata/init statically and packs it as /init of
// an uncompressed newc initramfs.
func testInitramfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "init")
	// go test puts its own GOROOT/bin first on the test's PATH.
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build test init: %v\n%s", err, out)
	}
	initBytes, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for _, d := range []string{"dev", "proc", "sys"} {
		if err := w.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WriteHeader(&cpio.Header{Name: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(initBytes))}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(initBytes); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// console follows a console log file.
type console struct {
	t    *testing.T
	path string
	off  int
}

// wait returns the first line containing want that appeared since the last
// match, failing the test after timeout.
func (c *console) wait(want string, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(c.path)
		if c.off <= len(b) {
			if i := bytes.Index(b[c.off:], []byte(want)); i >= 0 {
				start := c.off + i
				end := bytes.IndexByte(b[start:], '\n')
				if end < 0 {
					end = len(b) - start
				}
				c.off = start + end
				return strings.TrimSpace(string(b[start : start+end]))
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("console: no %q within %s; console log:\n%s", want, timeout, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBoot boots the real guest kernel with a test /init, talks to it over
// vsock and hot-plugs disks that the guest must see come and go.
func TestBoot(t *testing.T) {
	kernel := testenv.Kernel(t)
	h := testHypervisor(t, Config{})
	t.Logf("%s", h.Selection())
	spec := testSpec(t, kernel)
	spec.Initrd = testInitramfs(t)
	spec.KernelArgs = "console=ttyS0 rdinit=/init panic=-1 quiet"
	spec.MemoryMiB = 256
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	start := time.Now()
	vm := startVM(t, h, spec)
	con := &console{t: t, path: vm.ConsoleLog()}
	con.wait("INIT: ready", 90*time.Second)
	t.Logf("guest /init running %s after start", time.Since(start).Round(time.Millisecond))

	// the listener may come up before or after INIT: ready: search the whole log
	(&console{t: t, path: vm.ConsoleLog()}).wait("VSOCK: listening on 1024", 10*time.Second)
	if c, err := vm.Dial(ctx, 1024); err != nil {
		t.Errorf("vsock dial: %v", err)
	} else {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := []byte("hello through vsock")
		if _, err := c.Write(msg); err != nil {
			t.Errorf("vsock write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("vsock echo: %q, %v", got, err)
		}
		c.Close()
	}

	t0 := time.Now()
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "contrast-test-1", Path: markedDisk(t, "CONTRAST-DISK-ONE"), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	added := con.wait("DISK-ADDED", 30*time.Second)
	if added != "DISK-ADDED vda contrast-test-1" {
		t.Errorf("guest saw %q", added)
	}
	if data := con.wait("DISK-DATA", 10*time.Second); data != "DISK-DATA vda CONTRAST-DISK-ONE" {
		t.Errorf("guest read %q", data)
	}
	t.Logf("disk visible in the guest %s after AttachDisk", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	dctx, dcancel := context.WithTimeout(ctx, 60*time.Second)
	if err := vm.DetachDisk(dctx, "contrast-test-1"); err != nil {
		t.Fatal(err)
	}
	dcancel()
	t.Logf("DetachDisk took %s (Linux waits 5 s after the attention button)", time.Since(t0).Round(time.Millisecond))
	con.wait("DISK-REMOVED vda", 10*time.Second)

	// The freed root port takes the next disk.
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "contrast-test-2", Path: markedDisk(t, "CONTRAST-DISK-TWO")}); err != nil {
		t.Fatal(err)
	}
	if added := con.wait("DISK-ADDED", 30*time.Second); !strings.HasSuffix(added, " contrast-test-2") {
		t.Errorf("guest saw %q", added)
	}
	if data := con.wait("DISK-DATA", 10*time.Second); !strings.HasSuffix(data, " CONTRAST-DISK-TWO") {
		t.Errorf("guest read %q", data)
	}

	pid := vm.Pid()
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Err(); err != nil {
		t.Errorf("Err after Stop: %v", err)
	}
	if !processGone(pid) {
		t.Errorf("qemu %d still running", pid)
	}
	checkOnlyLogs(t, spec.StateDir)
}

// TestBootRootDisk boots with a root disk (VMSpec.RootDisk): the guest
// names it vda, reads it, and sees its serial; a disk hot-plugged later is
// vdb, found by its own serial.
func TestBootRootDisk(t *testing.T) {
	kernel := testenv.Kernel(t)
	h := testHypervisor(t, Config{})
	spec := testSpec(t, kernel)
	spec.Initrd = testInitramfs(t)
	spec.KernelArgs = "console=ttyS0 rdinit=/init panic=-1 quiet"
	spec.MemoryMiB = 256
	spec.RootDisk = markedDisk(t, "CONTRAST-ROOT-DISK")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	vm := startVM(t, h, spec)
	con := &console{t: t, path: vm.ConsoleLog()}
	if added := con.wait("DISK-ADDED", 90*time.Second); added != "DISK-ADDED vda "+RootDiskSerial {
		t.Errorf("guest saw %q at boot, want the root disk as vda", added)
	}
	if data := con.wait("DISK-DATA", 10*time.Second); data != "DISK-DATA vda CONTRAST-ROOT-DISK" {
		t.Errorf("guest read %q", data)
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "contrast-test-1", Path: markedDisk(t, "CONTRAST-DISK-ONE"), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if added := con.wait("DISK-ADDED", 30*time.Second); added != "DISK-ADDED vdb contrast-test-1" {
		t.Errorf("guest saw %q after the hot-plug", added)
	}
	if data := con.wait("DISK-DATA", 10*time.Second); data != "DISK-DATA vdb CONTRAST-DISK-ONE" {
		t.Errorf("guest read %q", data)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	checkOnlyLogs(t, spec.StateDir)
}

// markedDisk is a 1 MiB disk image that starts with marker, for a guest to
// tell which disk it sees.
func markedDisk(t *testing.T, marker string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, 1<<20)
	copy(b, marker)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
