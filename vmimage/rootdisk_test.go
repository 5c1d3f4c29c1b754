package vmimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/vmimage/snp"
)

// rootDiskOptions are testOptions for the default format.
func rootDiskOptions(t *testing.T) Options {
	opts := testOptions(t)
	opts.Format = ""
	return opts
}

func TestBuildRootDiskReproducible(t *testing.T) {
	ctx := context.Background()
	opts := rootDiskOptions(t)
	a, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.OutDir = filepath.Join(t.TempDir(), "image")
	b, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{KernelFile, RootDiskFile, ManifestFile}
	filesA, filesB := readFiles(t, a.Image.Dir, names...), readFiles(t, b.Image.Dir, names...)
	for _, name := range names {
		if !bytes.Equal(filesA[name], filesB[name]) {
			t.Errorf("%s differs between two builds from the same inputs", name)
		}
	}
	if _, err := os.Stat(filepath.Join(a.Image.Dir, InitrdFile)); !os.IsNotExist(err) {
		t.Errorf("root disk image has an initrd: %v", err)
	}

	// A changed agent changes the disk, its root hash and so the command line.
	opts.Agent = copyFile(t, staticBinary, "changed")
	opts.OutDir = filepath.Join(t.TempDir(), "image")
	c, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	diskA, _ := a.Image.Manifest.File(RootDiskFile)
	diskC, _ := c.Image.Manifest.File(RootDiskFile)
	if diskA.SHA256 == diskC.SHA256 || a.Image.Manifest.RootDisk.RootHash == c.Image.Manifest.RootDisk.RootHash {
		t.Errorf("root disk (sha256 %s, root hash %s) did not change with the agent", diskA.SHA256, a.Image.Manifest.RootDisk.RootHash)
	}
	if a.Image.KernelCmdline() == c.Image.KernelCmdline() {
		t.Errorf("command line did not change with the agent: %s", a.Image.KernelCmdline())
	}
}

func TestBuildRootDiskManifest(t *testing.T) {
	res, err := Build(context.Background(), rootDiskOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	m := res.Image.Manifest
	rd := m.RootDisk
	if rd == nil {
		t.Fatalf("manifest has no rootDisk: %+v", m)
	}
	if len(m.Files) != 2 || m.Files[0].Name != KernelFile || m.Files[1].Name != RootDiskFile {
		t.Errorf("files %+v, want kernel and %s", m.Files, RootDiskFile)
	}
	disk, _ := m.File(RootDiskFile)
	st, err := os.Stat(filepath.Join(res.Image.Dir, RootDiskFile))
	if err != nil {
		t.Fatal(err)
	}
	// The hash tree follows the data right away (no verity superblock) and
	// holds at least one 4096-byte block of hashes.
	if rd.HashStartBlock != rd.DataBlocks || disk.Size != st.Size() || st.Size() <= int64(rd.DataBlocks)*4096 || st.Size()%4096 != 0 {
		t.Errorf("root disk of %d bytes (manifest: %d), %d data blocks, hash tree at block %d", st.Size(), disk.Size, rd.DataBlocks, rd.HashStartBlock)
	}
	if rd.Salt != strings.Repeat("00", 32) {
		t.Errorf("salt %s, want hcsshim's 32 zero bytes", rd.Salt)
	}
	want := fmt.Sprintf(DefaultKernelCmdline+` dm-mod.create="root,,,ro,0 %d verity 1 /dev/vda /dev/vda 4096 4096 %d %d sha256 %s %s" root=/dev/dm-0 rootfstype=ext4 ro init=/init`,
		rd.DataBlocks*8, rd.DataBlocks, rd.DataBlocks, rd.RootHash, rd.Salt)
	if m.KernelCmdline != want {
		t.Errorf("command line\n%s\nwant\n%s", m.KernelCmdline, want)
	}

	im, err := Load(res.Image.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if im.Initrd() != "" || im.RootDisk() != filepath.Join(res.Image.Dir, RootDiskFile) {
		t.Errorf("initrd %q, root disk %q", im.Initrd(), im.RootDisk())
	}

	// A --cmdline replaces the default part; the root arguments stay.
	opts := rootDiskOptions(t)
	opts.KernelCmdline = "console=ttyS0 contrast.log_level=debug"
	res, err = Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Image.KernelCmdline(); got != opts.KernelCmdline+" "+res.Image.Manifest.RootDisk.Cmdline() {
		t.Errorf("command line with --cmdline: %s", got)
	}
}

// debugfs runs a debugfs request against an ext4 image.
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", request, err)
	}
	return string(out)
}

// TestRootDiskTree reads the ext4 file system of a built root disk back
// with debugfs and checks it holds exactly the initramfs's tree: names,
// types, modes, owners, device numbers and file contents.
func TestRootDiskTree(t *testing.T) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("no debugfs (e2fsprogs)")
	}
	opts := rootDiskOptions(t)
	opts.Mke2fs = copyFile(t, staticBinary, "mke2fs")
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(res.Image.Dir, RootDiskFile)
	entries := guestEntries(opts.Agent, opts.Runc, opts.Mke2fs)

	type inode struct {
		mode     uint32
		uid, gid string
	}
	got := map[string]inode{}
	dirs := []string{""}
	for len(dirs) > 0 {
		dir := dirs[0]
		dirs = dirs[1:]
		// "  12   40755 (2)      0      0    4096  1-Jan-1970 00:00 dev"
		for _, line := range strings.Split(debugfs(t, img, "ls -l /"+dir), "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || f[8] == "." || f[8] == ".." || (dir == "" && f[8] == "lost+found") {
				continue
			}
			mode, err := strconv.ParseUint(f[1], 8, 32)
			if err != nil {
				t.Fatalf("debugfs ls line %q: %v", line, err)
			}
			name := strings.TrimPrefix(dir+"/"+f[8], "/")
			got[name] = inode{uint32(mode), f[3], f[4]}
			if uint32(mode)&modeTypeMask == ModeDir {
				dirs = append(dirs, name)
			}
		}
	}
	if len(got) != len(entries) {
		t.Errorf("file system holds %d files, the tree has %d: %v", len(got), len(entries), got)
	}
	for _, e := range entries {
		g, ok := got[e.Name]
		if !ok {
			t.Errorf("%s missing from the file system", e.Name)
			continue
		}
		if g.mode != e.Mode || g.uid != "0" || g.gid != "0" {
			t.Errorf("%s: mode %#o owner %s:%s, want %#o 0:0", e.Name, g.mode, g.uid, g.gid, e.Mode)
		}
		switch e.Mode & modeTypeMask {
		case ModeChar:
			want := fmt.Sprintf("Device major/minor number: %02d:%02d", e.Major, e.Minor)
			if s := debugfs(t, img, "stat /"+e.Name); !strings.Contains(s, want) {
				t.Errorf("%s: stat lacks %q:\n%s", e.Name, want, s)
			}
		case ModeRegular:
			want := e.Data
			if e.Source != "" {
				if want, err = os.ReadFile(e.Source); err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(t.TempDir(), "dump")
			debugfs(t, img, "dump /"+e.Name+" "+out)
			if b, err := os.ReadFile(out); err != nil || !bytes.Equal(b, want) {
				t.Errorf("%s: content differs from its source (%d bytes, want %d; %v)", e.Name, len(b), len(want), err)
			}
		}
	}
}

// TestRootDiskVerity checks the appended hash tree with cryptsetup's own
// verifier, as the kernel will read it with the command line's table, and
// that a flipped byte in the file system fails it.
func TestRootDiskVerity(t *testing.T) {
	if _, err := exec.LookPath("veritysetup"); err != nil {
		t.Skip("no veritysetup (cryptsetup)")
	}
	res, err := Build(context.Background(), rootDiskOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	rd := res.Image.Manifest.RootDisk
	img := filepath.Join(res.Image.Dir, RootDiskFile)
	verify := func(img, rootHash string) error {
		out, err := exec.Command("veritysetup", "verify", img, img, rootHash, "--no-superblock",
			"--data-blocks="+strconv.FormatUint(rd.DataBlocks, 10),
			"--hash-offset="+strconv.FormatUint(rd.HashStartBlock*4096, 10),
			"--data-block-size=4096", "--hash-block-size=4096", "--hash=sha256", "--salt="+rd.Salt).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := verify(img, rd.RootHash); err != nil {
		t.Fatalf("veritysetup verify of a built root disk: %v", err)
	}
	other := sha256.Sum256([]byte("another root"))
	if err := verify(img, hex.EncodeToString(other[:])); err == nil {
		t.Errorf("veritysetup verify accepted another root hash")
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	b[int64(rd.DataBlocks-1)*4096/2] ^= 1 // inside the data area
	flipped := filepath.Join(t.TempDir(), RootDiskFile)
	if err := os.WriteFile(flipped, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := verify(flipped, rd.RootHash); err == nil {
		t.Errorf("veritysetup verify accepted a root disk with a flipped byte")
	}
}

// TestBuildRootDiskReference checks the reference measurements of a root
// disk image: the launch has no initrd (the hash of nothing) and measures
// the command line, which carries the root hash.
func TestBuildRootDiskReference(t *testing.T) {
	opts := rootDiskOptions(t)
	opts.Reference = &ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 2}
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ref := res.Reference
	empty := sha256.Sum256(nil)
	if ref.InitrdSHA256 != hex.EncodeToString(empty[:]) {
		t.Errorf("initrdSHA256 %s, want the hash of nothing", ref.InitrdSHA256)
	}
	if !strings.Contains(ref.KernelCmdline, res.Image.Manifest.RootDisk.RootHash) {
		t.Errorf("measured command line %q lacks the root hash", ref.KernelCmdline)
	}
	fw, err := os.ReadFile(testFirmware)
	if err != nil {
		t.Fatal(err)
	}
	// What the shim or `contrast measure` computes from the files: kernel,
	// no initrd, the manifest's command line.
	kh, err := snp.HashKernelFiles(res.Image.Kernel(), "", res.Image.KernelCmdline())
	if err != nil {
		t.Fatal(err)
	}
	for _, vcpus := range []int{1, 2} {
		want, err := snp.Measure(snp.Launch{Firmware: fw, Kernel: kh, VCPUs: vcpus, VCPUType: DefaultVCPUType, GuestFeatures: DefaultGuestFeatures})
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := ref.Measurement(vcpus); !ok || got != want {
			t.Errorf("%d vCPUs: reference %x, want %x", vcpus, got, want)
		}
	}
	if _, err := LoadReference(res.Image.Dir); err != nil {
		t.Errorf("LoadReference: %v", err)
	}
}

func TestLoadRefusesRootDiskWithoutParameters(t *testing.T) {
	res, err := Build(context.Background(), rootDiskOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	// A manifest without its rootDisk block.
	raw, err := os.ReadFile(filepath.Join(res.Image.Dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(raw, []byte(`  "rootDisk": {`))
	end := bytes.Index(raw, []byte(`  "components"`))
	if start < 0 || end < start {
		t.Fatalf("manifest layout:\n%s", raw)
	}
	edited := append(append([]byte(nil), raw[:start]...), raw[end:]...)
	if err := os.WriteFile(filepath.Join(res.Image.Dir, ManifestFile), edited, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(res.Image.Dir); err == nil || !strings.Contains(err.Error(), "without rootDisk") {
		t.Errorf("Load of a manifest without rootDisk: %v", err)
	}
	// A command line that does not open the disk described.
	if err := os.WriteFile(filepath.Join(res.Image.Dir, ManifestFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	editManifest(t, res.Image.Dir, "root=/dev/dm-0", "root=/dev/vda")
	if _, err := Load(res.Image.Dir); err == nil || !strings.Contains(err.Error(), "lacks the root disk's arguments") {
		t.Errorf("Load of a manifest whose command line does not open the disk: %v", err)
	}
}
