package vmimage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestBuildWithMke2fs: the optional mke2fs lands at GuestMke2fsPath, in the
// manifest's components and in the initramfs.
func TestBuildWithMke2fs(t *testing.T) {
	opts := testOptions(t)
	opts.Mke2fs = copyFile(t, staticBinary, "mke2fs")
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	m := res.Image.Manifest
	if len(m.Components) != 3 || m.Components[2].Name != "mke2fs" || m.Components[2].Path != GuestMke2fsPath {
		t.Fatalf("components %+v, want agent, runc and mke2fs at %s", m.Components, GuestMke2fsPath)
	}
	initrd, err := os.ReadFile(filepath.Join(res.Image.Dir, InitrdFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(initrd, []byte(GuestMke2fsPath[1:]+"\x00")) {
		t.Errorf("the initramfs has no %s", GuestMke2fsPath)
	}

	opts.Mke2fs = filepath.Join(t.TempDir(), "missing")
	opts.OutDir = filepath.Join(t.TempDir(), "image")
	if _, err := Build(context.Background(), opts); err == nil {
		t.Error("a missing mke2fs was accepted")
	}
}
