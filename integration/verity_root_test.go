package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/vmimage"
)

// TestVerityRoot boots pods from copies of the guest image's root disk:
// the intact copy starts; one with a byte flipped in the first block of
// the agent (/init, which the kernel reads to start it) and one whose
// command line carries another root hash fail to start, with a dm-verity
// error from the guest console in the error. The manifest's file hashes
// are fixed up each time, as a host that tampers with the image would: the
// guest's check is what is tested, not the shim's.
func TestVerityRoot(t *testing.T) {
	env := testEnv(t)
	if env.ImageRootDisk() == "" {
		t.Fatalf("guest image %s has no %s: build it without --format initrd", env.ImageDir, vmimage.RootDiskFile)
	}
	intact := copyImage(t, env.ImageDir)
	flipped := copyImage(t, env.ImageDir)
	off := flipInitBlock(t, flipped)
	otherHash := copyImage(t, env.ImageDir)
	replaceRootHash(t, otherHash)

	useImage := func(dir string) func(*harness.ShimConfig) {
		return func(c *harness.ShimConfig) {
			c.Kernel, c.Initrd, c.RootDisk = filepath.Join(dir, vmimage.KernelFile), "", filepath.Join(dir, vmimage.RootDiskFile)
		}
	}
	s := newSuite(t,
		handlerSpec{name: "contrast-intact", edit: useImage(intact)},
		handlerSpec{name: "contrast-flipped", edit: useImage(flipped)},
		handlerSpec{name: "contrast-otherhash", edit: useImage(otherHash)},
	)

	t.Run("intact", func(t *testing.T) {
		pod := s.runPod(t, "contrast-intact", "verity-intact")
		s.stopAndRemovePod(t, pod)
	})
	for _, tc := range []struct{ name, handler, why string }{
		{"flipped-byte", "contrast-flipped", fmt.Sprintf("the byte at offset %d (in /init) flipped", off)},
		{"other-root-hash", "contrast-otherhash", "another root hash on the command line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.snapshot(t)
			pod, err := s.cri.RunPod(s.ctx, harness.PodConfig{Name: "verity-" + tc.name, Handler: tc.handler})
			if err == nil {
				s.cleanupPod(pod)
				t.Fatalf("pod from a root disk with %s started", tc.why)
			}
			msg := cmdErrText(err)
			t.Logf("crictl runp failed (%s):\n%s", tc.why, msg)
			for _, want := range []string{"stopped while booting", "device-mapper: verity", "is corrupted"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q", want)
				}
			}
			s.expectNoLeftovers(t, tc.name, func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
		})
	}
}

// copyImage copies the image files the shim reads into a new directory.
func copyImage(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, name := range []string{vmimage.KernelFile, vmimage.RootDiskFile, vmimage.ManifestFile} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// flipInitBlock flips a byte in the first block of /init's data and fixes
// the manifest's hash of the disk; it returns the byte's offset. /init is
// the first executable in name order, and the ext4 writer lays out file
// data in that order: its ELF header is the first one at a block boundary.
func flipInitBlock(t *testing.T, dir string) int64 {
	t.Helper()
	p := filepath.Join(dir, vmimage.RootDiskFile)
	disk, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, dir)
	data := disk[:m.RootDisk.DataBlocks*4096]
	off := int64(-1)
	for i := 0; i+4 <= len(data); i += 4096 {
		if bytes.Equal(data[i:i+4], []byte("\x7fELF")) {
			off = int64(i) + 100 // inside the program headers
			break
		}
	}
	if off < 0 {
		t.Fatal("no ELF header at a block boundary in the root disk")
	}
	disk[off] ^= 0xff
	if err := os.WriteFile(p, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(disk)
	for i := range m.Files {
		if m.Files[i].Name == vmimage.RootDiskFile {
			m.Files[i].SHA256 = hex.EncodeToString(sum[:])
		}
	}
	writeManifest(t, dir, m)
	return off
}

// replaceRootHash puts another root hash on the manifest's command line
// (and in its rootDisk, which must agree).
func replaceRootHash(t *testing.T, dir string) {
	t.Helper()
	m := readManifest(t, dir)
	sum := sha256.Sum256([]byte("not the root hash of this disk"))
	other := hex.EncodeToString(sum[:])
	if !strings.Contains(m.KernelCmdline, m.RootDisk.RootHash) {
		t.Fatalf("command line %q lacks the root hash %s", m.KernelCmdline, m.RootDisk.RootHash)
	}
	m.KernelCmdline = strings.ReplaceAll(m.KernelCmdline, m.RootDisk.RootHash, other)
	m.RootDisk.RootHash = other
	writeManifest(t, dir, m)
	if _, err := vmimage.Load(dir); err != nil {
		t.Fatalf("the edited manifest: %v", err)
	}
}

func readManifest(t *testing.T, dir string) vmimage.Manifest {
	t.Helper()
	im, err := vmimage.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if im.Manifest.RootDisk == nil {
		t.Fatalf("image %s has no root disk", dir)
	}
	return im.Manifest
}

func writeManifest(t *testing.T, dir string, m vmimage.Manifest) {
	t.Helper()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, vmimage.ManifestFile), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
