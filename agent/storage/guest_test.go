package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/internal/testenv"
	"github.com/contrast-vm/contrast/vmimage"
)

// TestGuestVerity runs twice. On the host it builds a dm-verity layer image
// with mkfs.ext4 and veritysetup, a tampered copy of it, and boots the guest
// kernel with this package's test binary as /init and both images as
// virtio-blk disks. In the guest (guestEnv set on the kernel command line,
// which the kernel passes to init as environment) it opens the layers with
// the real device-mapper code.
const (
	guestEnv       = "CONTRAST_STORAGE_GUEST"
	guestRootEnv   = "CONTRAST_LAYER_ROOT"
	guestBlocksEnv = "CONTRAST_LAYER_BLOCKS"
	guestExitMark  = "GUEST-TEST-EXIT "
	layerFileName  = "hello.txt"
)

// layerFileContent fills more than one block, so that a byte flipped in it
// lies in a data block the filesystem's metadata does not share.
var layerFileContent = bytes.Repeat([]byte("contrast layer content\n"), 1000)

func TestMain(m *testing.M) {
	if os.Getenv(guestEnv) == "" {
		os.Exit(m.Run())
	}
	// PID 1 of the guest: prepare the filesystems the kernel did not mount
	// into the initramfs, run the tests, and power off.
	for _, fs := range []struct{ dir, fstype string }{{"/proc", "proc"}, {"/sys", "sysfs"}, {"/dev", "devtmpfs"}, {"/run", "tmpfs"}} {
		os.MkdirAll(fs.dir, 0o755)
		if err := unix.Mount(fs.fstype, fs.dir, fs.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			fmt.Printf("mount %s: %v\n", fs.dir, err)
		}
	}
	code := m.Run()
	fmt.Printf("%s%d\n", guestExitMark, code)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	os.Exit(code)
}

func TestGuestVerity(t *testing.T) {
	if os.Getenv(guestEnv) != "" {
		guestVerity(t)
		return
	}
	hostBootGuest(t)
}

// hostBootGuest prepares the images and boots the guest.
func hostBootGuest(t *testing.T) {
	kernel := testenv.Kernel(t)
	tools := map[string]string{}
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "veritysetup", "go"} {
		tools[tool] = testenv.Command(t, tool, "qemu-system-x86, e2fsprogs, cryptsetup-bin")
	}
	dir := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(tools[name], args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// The layer: ext4 of 1 MiB (256 data blocks), its hash tree appended.
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, layerFileName), layerFileContent, 0o644); err != nil {
		t.Fatal(err)
	}
	data, hash := filepath.Join(dir, "data.img"), filepath.Join(dir, "hash.img")
	const dataBlocks = 256
	run("mkfs.ext4", "-q", "-b", "4096", "-E", "root_owner=0:0", "-d", src, data, fmt.Sprint(dataBlocks))
	out := run("veritysetup", "format", "--no-superblock", "--salt="+api.VeritySaltHex, "--hash="+api.VerityAlgorithm,
		"--data-block-size=4096", "--hash-block-size=4096", data, hash)
	var root string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Root hash:"); ok {
			root = strings.TrimSpace(v)
		}
	}
	if !isLowerHex(root, 64) {
		t.Fatalf("no root hash in veritysetup's output:\n%s", out)
	}
	img, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := os.ReadFile(hash)
	if err != nil {
		t.Fatal(err)
	}
	good := append(append([]byte(nil), img...), tree...)
	at := bytes.Index(good, layerFileContent[:100])
	if at < 0 {
		t.Fatal("the file's content is not in the ext4 image")
	}
	bad := append([]byte(nil), good...)
	bad[at+4096+10] ^= 0x01 // in the file's second block
	goodImg, badImg := filepath.Join(dir, "good.img"), filepath.Join(dir, "bad.img")
	for p, b := range map[string][]byte{goodImg: good, badImg: bad} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// This package's test binary, static, as the guest's /init.
	testBin := filepath.Join(dir, "storage.test")
	run("go", "test", "-c", "-o", testBin, ".")
	var initrd bytes.Buffer
	if err := vmimage.WriteInitramfs(&initrd, []vmimage.Entry{
		{Name: "dev", Mode: vmimage.ModeDir | 0o755},
		{Name: "dev/console", Mode: vmimage.ModeChar | 0o600, Major: 5, Minor: 1},
		{Name: "init", Mode: vmimage.ModeRegular | 0o755, Source: testBin},
	}); err != nil {
		t.Fatal(err)
	}
	initrdPath := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrdPath, initrd.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	consoleLog := filepath.Join(dir, "console.log")
	cmdline := fmt.Sprintf("console=ttyS0 panic=-1 %s=1 %s=%s %s=%d -- -test.run=^TestGuestVerity$ -test.v",
		guestEnv, guestRootEnv, root, guestBlocksEnv, dataBlocks)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	qemu := exec.CommandContext(ctx, tools["qemu-system-x86_64"],
		"-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256",
		"-nographic", "-nodefaults", "-no-reboot",
		"-serial", "file:"+consoleLog,
		"-kernel", kernel, "-initrd", initrdPath, "-append", cmdline,
		"-drive", "file="+goodImg+",if=none,id=good,format=raw,readonly=on",
		"-device", "virtio-blk-pci,drive=good,serial=layer-good",
		"-drive", "file="+badImg+",if=none,id=bad,format=raw,readonly=on",
		"-device", "virtio-blk-pci,drive=bad,serial=layer-bad")
	qout, qerr := qemu.CombinedOutput()
	console, _ := os.ReadFile(consoleLog)
	text := strings.ReplaceAll(string(console), "\r\n", "\n")
	if qerr != nil {
		t.Fatalf("qemu: %v\n%s\nconsole:\n%s", qerr, qout, text)
	}
	if !strings.Contains(text, guestExitMark+"0\n") || !strings.Contains(text, "--- PASS: TestGuestVerity") {
		t.Fatalf("the guest test did not pass; console:\n%s", text)
	}
	_, guestOut, _ := strings.Cut(text, "=== RUN")
	t.Logf("guest:\n=== RUN%s", guestOut)
}

// guestVerity is the part that runs in the guest.
func guestVerity(t *testing.T) {
	root := os.Getenv(guestRootEnv)
	blocks, err := strconv.ParseUint(os.Getenv(guestBlocksEnv), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", guestBlocksEnv, err)
	}
	ver, err := NewDeviceMapper("/run/dm-nodes").Version()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device-mapper interface %d.%d.%d", ver[0], ver[1], ver[2])

	ctx := context.Background()
	runDir := "/run/contrast"
	set := NewLayerSet(filepath.Join(runDir, "layers"), NewSysBlock())
	layer := Layer{Serial: "layer-good", Digest: "sha256:" + strings.Repeat("1", 64), RootHash: root, DataBlocks: blocks}

	dir, err := set.Acquire(ctx, layer)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, layerFileName)); err != nil || !bytes.Equal(b, layerFileContent) {
		t.Fatalf("file through dm-verity: %d bytes, %v", len(b), err)
	}
	// A second container shares the mount.
	dir2, err := set.Acquire(ctx, layer)
	if err != nil || dir2 != dir || set.Refs(root) != 2 {
		t.Fatalf("second Acquire: %s %v, %d references", dir2, err, set.Refs(root))
	}
	rootfs := NewRootfs(filepath.Join(runDir, "containers", "c1"))
	if err := rootfs.MountLayers([]string{dir}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs.Merged, layerFileName)); err != nil || !bytes.Equal(b, layerFileContent) {
		t.Fatalf("file through the overlay: %d bytes, %v", len(b), err)
	}
	if err := os.WriteFile(filepath.Join(rootfs.Merged, "new"), []byte("x"), 0o644); err != nil {
		t.Fatalf("rootfs over a layer is not writable: %v", err)
	}
	if err := rootfs.Unmount(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := set.Release(root); err != nil {
			t.Fatal(err)
		}
	}
	assertNoDMDevices(t)
	assertNoMountsUnder(t, runDir)

	// The tampered copy: same root hash, one flipped byte in the file.
	tampered := layer
	tampered.Serial = "layer-bad"
	dir, err = set.Acquire(ctx, tampered)
	if err != nil {
		t.Fatalf("tampered layer (its metadata blocks are intact, so it mounts): %v", err)
	}
	_, err = os.ReadFile(filepath.Join(dir, layerFileName))
	if !errors.Is(err, unix.EIO) {
		t.Errorf("reading the tampered file: %v, want EIO", err)
	} else {
		t.Logf("tampered file: %v", err)
	}
	if err := set.Release(root); err != nil {
		t.Fatal(err)
	}
	assertNoDMDevices(t)

	// A wrong root hash: the device opens, but nothing verifies.
	wrong := layer
	wrong.RootHash = strings.Repeat("0", 64)
	if _, err := set.Acquire(ctx, wrong); err == nil {
		t.Error("layer with a wrong root hash mounted")
	} else {
		t.Logf("wrong root hash: %v", err)
	}
	// Too few blocks on the device for the data and tree announced.
	big := layer
	big.DataBlocks = 1 << 20
	if _, err := set.Acquire(ctx, big); err == nil || !strings.Contains(err.Error(), "less than") {
		t.Errorf("layer larger than its device: %v", err)
	}
	assertNoDMDevices(t)
	assertNoMountsUnder(t, runDir)
}

func assertNoDMDevices(t *testing.T) {
	t.Helper()
	if left, _ := filepath.Glob("/sys/block/dm-*"); len(left) > 0 {
		t.Fatalf("device-mapper devices left: %v", left)
	}
}
