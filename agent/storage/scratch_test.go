package storage

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCryptTable(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, scratchKeySize)
	tb := cryptTable("/dev/vdc", 2048, key)
	want := "aes-xts-plain64 " + strings.Repeat("ab", scratchKeySize) + " 0 /dev/vdc 0"
	if tb.Type != "crypt" || tb.SectorStart != 0 || tb.Length != 2048 || tb.Params != want {
		t.Errorf("cryptTable = %+v, want crypt over 2048 sectors with params %q", tb, want)
	}
}

// TestMountMemoryFull: the tmpfs of a Memory emptyDir takes what its size
// allows and refuses the rest with ENOSPC.
func TestMountMemoryFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "vol")
	const size = 1 << 20
	if err := MountMemory(dir, size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o777 {
		t.Errorf("mode %v, want every user's to write (0777)", info.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(dir, "fits"), make([]byte, size/2), 0o644); err != nil {
		t.Fatalf("writing half the size: %v", err)
	}
	err = os.WriteFile(filepath.Join(dir, "too-much"), make([]byte, size), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing past the size: %v, want ENOSPC", err)
	}
}

func TestMountMemoryRefusesSizeZero(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	if err := MountMemory(dir, 0); err == nil {
		t.Fatal("a tmpfs of size 0 (no limit) was mounted")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the mount point was left behind: %v", err)
	}
}

func TestMemTotal(t *testing.T) {
	n, err := MemTotal()
	if err != nil {
		t.Fatal(err)
	}
	if n < 64<<20 {
		t.Errorf("MemTotal = %d bytes: implausibly small (parsed in the wrong unit?)", n)
	}
}
