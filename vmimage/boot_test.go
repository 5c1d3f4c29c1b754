package vmimage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/internal/testenv"
)

// TestBootImage boots an image built by Build, with a test program as /init,
// in QEMU under TCG and checks from the console log that the kernel ran it:
// the marker from the command line, the kernel release, /dev/console and a
// working runc inside the guest; for the root disk format, that / is the
// read-only dm-verity device.
func TestBootImage(t *testing.T) {
	for _, format := range []string{FormatRootDisk, FormatInitrd} {
		t.Run(format, func(t *testing.T) { testBootImage(t, format) })
	}
}

func testBootImage(t *testing.T, format string) {
	kernel := testenv.Kernel(t)
	runc := os.Getenv("CONTRAST_RUNC")
	if runc == "" {
		runc = testenv.CachedBinary(t, "runc-static")
	}
	qemu := testenv.Command(t, "qemu-system-x86_64", "qemu-system-x86")

	ctx := context.Background()
	res, err := Build(ctx, Options{Kernel: kernel, Agent: staticBinary, Runc: runc, OutDir: filepath.Join(t.TempDir(), "image"), Format: format})
	if err != nil {
		t.Fatal(err)
	}
	im, err := Load(res.Image.Dir)
	if err != nil {
		t.Fatal(err)
	}
	root := []string{"-initrd", im.Initrd()}
	wantRoot := []string{"rootfs=rootfs rootfs "}
	if format == FormatRootDisk {
		root = []string{
			"-drive", "file=" + im.RootDisk() + ",if=none,id=root,format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=root",
		}
		wantRoot = []string{"rootfs=/dev/root ext4 ro,", "dm-0=root ro=1\n"}
	}

	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	marker := hex.EncodeToString(nonce[:])
	consoleLog := filepath.Join(t.TempDir(), "console.log")
	cmd := exec.Command(qemu,
		"-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256",
		"-nographic", "-nodefaults", "-no-reboot",
		"-serial", "file:"+consoleLog,
		"-kernel", im.Kernel())
	cmd.Args = append(cmd.Args, root...)
	cmd.Args = append(cmd.Args, "-append", im.KernelCmdline()+" contrast.test.marker="+marker)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	running := true
	defer func() {
		if running {
			cmd.Process.Kill()
			<-exited
		}
	}()

	// Poll the console for the marker, which the guest prints last.
	var markerSeen time.Duration
	var waitErr error
	deadline := time.After(2 * time.Minute)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case waitErr = <-exited:
			running = false
			break wait
		case <-deadline:
			log, _ := os.ReadFile(consoleLog)
			t.Fatalf("guest did not power off within 2 minutes\nqemu: %s\nconsole:\n%s", out, log)
		case <-tick.C:
			if markerSeen == 0 {
				if b, _ := os.ReadFile(consoleLog); strings.Contains(string(b), "BOOTINIT marker="+marker) {
					markerSeen = time.Since(start)
				}
			}
		}
	}
	exitedAfter := time.Since(start)
	if markerSeen == 0 {
		// QEMU exited between two polls.
		markerSeen = exitedAfter
	}
	if waitErr != nil {
		t.Errorf("qemu: %v\n%s", waitErr, out)
	}

	b, err := os.ReadFile(consoleLog)
	if err != nil {
		t.Fatal(err)
	}
	// The guest tty turns "\n" into "\r\n".
	console := strings.ReplaceAll(string(b), "\r\n", "\n")
	for _, want := range []string{
		"BOOTINIT release=" + im.Manifest.KernelRelease + "\n",
		"BOOTINIT console=5,1\n",
		"BOOTINIT runc=runc version 1.",
		"BOOTINIT marker=" + marker + "\n",
		"BOOTINIT " + wantRoot[0],
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console log lacks %q", want)
		}
	}
	for _, want := range wantRoot[1:] {
		if !strings.Contains(console, want) {
			t.Errorf("console log lacks %q", want)
		}
	}
	if strings.Contains(console, "BOOTINIT error") || t.Failed() {
		t.Fatalf("console:\n%s\nqemu: %s", console, out)
	}
	// The firmware's escape sequences may share a line with the first report.
	value := func(key string) string {
		_, rest, ok := strings.Cut(console, "BOOTINIT "+key+"=")
		if !ok {
			return "?"
		}
		v, _, _ := strings.Cut(rest, "\n")
		return v
	}
	t.Logf("kernel %s booted to /init and powered off: marker on the console %.2fs after QEMU started (guest uptime %ss at /init start, %ss at marker), QEMU exited after %.2fs",
		im.Manifest.KernelRelease, markerSeen.Seconds(), value("init uptime"), value("uptime"), exitedAfter.Seconds())
}
