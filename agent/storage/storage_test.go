package storage

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/agent/testimage"
)

// A sysfs-shaped directory: the serial file is what virtio-blk exposes.
func TestSysBlockFind(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	mk := func(name, serial string) {
		if err := os.MkdirAll(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if serial != "" {
			if err := os.WriteFile(filepath.Join(sys, name, "serial"), []byte(serial+"\n"), 0o444); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dev, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk("loop0", "")
	mk("vda", "boot")
	f := &SysBlock{SysDir: sys, DevDir: dev, Poll: 5 * time.Millisecond}

	// Appears while we wait.
	go func() { time.Sleep(50 * time.Millisecond); mk("vdb", "ctr-1") }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := f.Find(ctx, "ctr-1")
	if err != nil || got != filepath.Join(dev, "vdb") {
		t.Fatalf("Find = %q, %v", got, err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = f.Find(ctx, "missing")
	if err == nil || !strings.Contains(err.Error(), `serial "missing"`) || !strings.Contains(err.Error(), `vda="boot"`) {
		t.Fatalf("Find of a missing serial: %v", err)
	}
	if _, err := f.Find(context.Background(), "bad/serial"); err == nil {
		t.Fatal("serial with a slash accepted")
	}
	if _, err := f.Find(context.Background(), strings.Repeat("x", 21)); err == nil {
		t.Fatal("serial longer than 20 bytes accepted")
	}
}

func TestRootfsMount(t *testing.T) {
	testimage.Require(t)
	dev := testimage.Loop(t, nil, testimage.BusyboxExt4(t, nil))
	dir := t.TempDir()
	r := NewRootfs(dir)
	if err := r.Mount(dev, "ext4"); err != nil {
		t.Fatal(err)
	}
	motd := filepath.Join(r.Merged, "etc/motd")
	if b, err := os.ReadFile(motd); err != nil || string(b) != "from the image\n" {
		t.Fatalf("image file through the overlay: %q %v", b, err)
	}
	if err := os.WriteFile(motd, []byte("changed\n"), 0o644); err != nil {
		t.Fatalf("rootfs not writable: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(r.Lower, "etc/motd")); string(b) != "from the image\n" {
		t.Fatalf("write reached the image: %q", b)
	}
	if err := r.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := r.Unmount(); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
	assertNoMountsUnder(t, dir)
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left behind in %s: %v", dir, entries)
	}
}

func TestRootfsMountFails(t *testing.T) {
	testimage.Require(t)
	dev := testimage.Loop(t, nil, testimage.BusyboxExt4(t, nil))
	dir := t.TempDir()
	r := NewRootfs(dir)
	err := r.Mount(dev, "erofs") // wrong type for the device
	if err == nil || !strings.Contains(err.Error(), dev) {
		t.Fatalf("mount of ext4 as erofs: %v", err)
	}
	if err := r.Mount(dev, "vfat"); err == nil || !strings.Contains(err.Error(), `"vfat"`) {
		t.Fatalf("unsupported fstype: %v", err)
	}
	assertNoMountsUnder(t, dir)
}

func assertNoMountsUnder(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), dir) {
		t.Fatalf("mounts left under %s:\n%s", dir, b)
	}
}

// TestSysBlockFindWakesOnUevent: with uevents, a device that appears is
// found when the kernel announces one, long before the next rescan: the
// poll here is an hour, while the test gives up after 30 s. The
// announcement is a synthetic one of a loop device of this test.
func TestSysBlockFindWakesOnUevent(t *testing.T) {
	testimage.Require(t)
	loop := testimage.Loop(t, nil, testimage.BusyboxExt4(t, nil))
	sys, dev := t.TempDir(), t.TempDir()
	f := &SysBlock{SysDir: sys, DevDir: dev, Poll: time.Hour, Uevents: true}
	go func() {
		time.Sleep(100 * time.Millisecond) // Find is waiting by now, most likely; if not, its first scan finds the device
		if err := os.MkdirAll(filepath.Join(sys, "vdz"), 0o755); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(filepath.Join(sys, "vdz", "serial"), []byte("hotplugged\n"), 0o444); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(filepath.Join(dev, "vdz"), nil, 0o600); err != nil {
			t.Error(err)
		}
		uevent := filepath.Join("/sys/class/block", filepath.Base(loop), "uevent")
		if err := os.WriteFile(uevent, []byte("change"), 0o200); err != nil {
			t.Errorf("announce a device: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := f.Find(ctx, "hotplugged")
	if err != nil || got != filepath.Join(dev, "vdz") {
		t.Fatalf("Find = %q, %v", got, err)
	}
}
