package qemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/internal/testenv"
)

// snpQEMUEnv names a QEMU >= 9.1 binary (hack/deps.sh unpacks QEMU 10 from
// Debian backports to $CONTRAST_CACHE/qemu10/bin/qemu-system-x86_64).
const snpQEMUEnv = "CONTRAST_QEMU_SNP"

// hostLacksSNP matches a line of QEMU's complaint when the host, not the
// command line, is what stops an SNP launch: no KVM at all, a /dev/kvm that
// is no KVM, KVM without the SNP VM type, or no AMD secure processor device.
var hostLacksSNP = regexp.MustCompile(`^qemu-system-x86_64: (-accel kvm: )?(` +
	`vm-type SEV-SNP not supported by KVM` +
	`|Could not access KVM kernel module: .*` +
	`|kvm version too old` +
	`|failed to initialize kvm: .*` +
	`|sev_common_kvm_init: Failed to open /dev/sev .*` +
	`)$`)

// onlyHostLacksSNP tells whether every line QEMU printed blames the host.
func onlyHostLacksSNP(msg string) bool {
	msg = strings.TrimSpace(msg)
	if msg == "" {
		return false
	}
	for _, line := range strings.Split(msg, "\n") {
		if !hostLacksSNP.MatchString(line) {
			return false
		}
	}
	return true
}

func snpQEMU(t *testing.T) string {
	t.Helper()
	bin := testenv.Path(t, snpQEMUEnv, "deps", "a QEMU >= 9.1: hack/deps.sh unpacks QEMU 10 to $CONTRAST_CACHE/qemu10/bin/qemu-system-x86_64")
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -version: %v\n%s", bin, err, out)
	}
	m := regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s -version says %q", bin, out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	if major < 9 || major == 9 && minor < 1 {
		t.Fatalf("%s is QEMU %d.%d: SEV-SNP needs 9.1 or later", bin, major, minor)
	}
	t.Logf("%s", bytes.TrimSpace(bytes.SplitN(out, []byte("\n"), 2)[0]))
	return bin
}

// snpTestLaunch is a complete SNP launch whose files and sockets exist, so
// that QEMU gets as far as it can: the real OVMF AmdSevX64 firmware of the
// release image and the real guest kernel; the initrd is a stand-in, which
// QEMU loads as it is.
func snpTestLaunch(t *testing.T, vsockMode string) (launchParams, *os.File) {
	t.Helper()
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("not read before KVM is set up"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	listen := func(name string) *net.UnixListener {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	qmp, err := listen("qmp.sock").File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qmp.Close() })
	p := snpParams()
	p.Kernel, p.Initrd, p.Firmware = testenv.Kernel(t), file("initrd"), testenv.Firmware(t)
	p.ConsoleLog, p.PIDFile = filepath.Join(dir, "console.log"), filepath.Join(dir, "qemu.pid")
	p.VsockMode = vsockMode
	switch vsockMode {
	case VsockKernel:
		p.GuestCID, p.VhostUserSocket = 3, ""
	case VsockVhostUser:
		// QEMU connects to the backend when it creates the chardev.
		listen("vhost-user-vsock.sock")
		p.VhostUserSocket = filepath.Join(dir, "vhost-user-vsock.sock")
	}
	return p, qmp
}

// runQEMU starts QEMU with args (fd 3 is qmp) and returns its stderr once it
// has exited; QEMU that keeps running fails the test.
func runQEMU(t *testing.T, bin string, args []string, qmp *os.File) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.ExtraFiles = []*os.File{qmp}
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("QEMU still ran after 30 s: %s", stderr.String())
	}
	return strings.TrimSpace(stderr.String()), err
}

// TestSNPArgsAcceptedByQEMU10 runs a real QEMU >= 9.1 with the SNP command
// line buildArgs writes, in two ways that need no KVM:
//
//   - as it is: QEMU parses every option and creates the sev-snp-guest
//     object and the memory backend's options, and resolves the machine's
//     confidential-guest-support link, before it sets up the accelerator;
//     it must then fail only because this host cannot run SEV-SNP guests
//     (no /dev/kvm, a KVM without SEV-SNP, or no /dev/sev);
//   - under TCG, paused, without what only KVM with SEV-SNP can realize
//     (the sev-snp-guest object and the machine's link to it) and without
//     the files only a booting guest reads: QEMU then creates the memory
//     backend, the machine, the CPU model and every device with every
//     property value (iommu_platform, disable-legacy, the root ports, the
//     vhost-user vsock device against our own backend), and must get as
//     far as answering QMP.
//
// What needs KVM with SEV-SNP itself (the launch) is skipped, saying so.
func TestSNPArgsAcceptedByQEMU10(t *testing.T) {
	bin := snpQEMU(t)
	if len(snpHostMissing(sevSNPParam, sevDevice)) == 0 {
		t.Skip("this host has SEV-SNP: the launch would succeed, and this test wants QEMU's failure on a host without it")
	}
	for _, vsockMode := range []string{VsockKernel, VsockVhostUser} {
		t.Run(vsockMode, func(t *testing.T) {
			p, qmp := snpTestLaunch(t, vsockMode)
			p.SNP.IDBlock, p.SNP.IDAuth = "", ""
			args, err := buildArgs(p)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := runQEMU(t, bin, args, qmp)
			if err == nil {
				t.Fatalf("QEMU exited 0 with the SNP command line on a host without SEV-SNP: %s", msg)
			}
			if !onlyHostLacksSNP(msg) {
				t.Fatalf("QEMU failed for another reason than the host's missing SEV-SNP:\n%s\ncommand: %s", msg, quoteCommand(bin, args))
			}
			t.Logf("QEMU: %s", msg)
			checkLateArgs(t, bin, args)
			if msg := runLateArgs(t, bin, args); msg != "" {
				t.Errorf("QEMU under TCG refused the devices, CPU or memory of the SNP command line:\n%s", msg)
			}
			t.Run("launch", func(t *testing.T) {
				t.Skipf("launching under SEV-SNP needs KVM with SEV-SNP: %s", strings.Join(snpHostMissing(sevSNPParam, sevDevice), "; "))
			})
		})
	}

	t.Run("signed launch", func(t *testing.T) {
		p, qmp := snpTestLaunch(t, VsockKernel)
		p.SNP.IDBlock = base64.StdEncoding.EncodeToString(make([]byte, 96))
		p.SNP.IDAuth = base64.StdEncoding.EncodeToString(make([]byte, 4096))
		args, err := buildArgs(p)
		if err != nil {
			t.Fatal(err)
		}
		if msg, _ := runQEMU(t, bin, args, qmp); !onlyHostLacksSNP(msg) {
			t.Fatalf("QEMU refused the ID block or auth: %s", msg)
		}
	})

	// QEMU itself needs KVM for SNP: under TCG it refuses the private
	// memory SNP needs, which is why the backend refuses TCG first.
	t.Run("tcg refused by QEMU too", func(t *testing.T) {
		p, qmp := snpTestLaunch(t, VsockKernel)
		args, err := buildArgs(p)
		if err != nil {
			t.Fatal(err)
		}
		// The SNP command line with the accelerator swapped (validate
		// refuses to build it).
		for i := range args {
			if args[i] == "-accel" {
				args[i+1] = AccelTCG
			}
		}
		msg, err := runQEMU(t, bin, args, qmp)
		if err == nil || !strings.Contains(msg, "cannot set up private guest memory for sev-snp-guest: KVM required") {
			t.Fatalf("QEMU under TCG with sev-snp-guest: %v: %s", err, msg)
		}
	})

	// The test can fail: each of these breaks one argument, and QEMU must
	// say so instead of reaching KVM.
	broken := []struct{ from, to, want string }{
		{"cbitpos=51,", "cbitpoz=51,", "Invalid parameter 'cbitpoz'"},
		{",share=on", ",share=maybe", "Parameter 'share' expects 'on' or 'off'"},
		{",kernel-hashes=on,", ",kernel-hashes=yes please,", "Parameter 'kernel-hashes' expects 'on' or 'off'"},
		{"policy=0x30000", "policy=0x3000z", "Parameter 'policy' expects a uint64 value"},
		{"host-data=AKurq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=", "host-data=AKurq6urq6urq6urq6urq6urq6urq6urq6urq6urqw==", "parameter length of 31 not equal to 32"},
		{"confidential-guest-support=sev0,", "confidential-guest-support=sev1,", "Device 'sev1' not found"},
		{"memory-backend-memfd,", "memory-backend-mfd,", "Parameter 'qom-type' does not accept value 'memory-backend-mfd'"},
	}
	for _, b := range broken {
		t.Run("broken "+b.to, func(t *testing.T) {
			p, qmp := snpTestLaunch(t, VsockKernel)
			args := brokenArgs(t, p, b.from, b.to)
			msg, err := runQEMU(t, bin, args, qmp)
			if err == nil || onlyHostLacksSNP(msg) || !strings.Contains(msg, b.want) {
				t.Fatalf("with %q QEMU said %q (exit %v), want %q", b.to, msg, err, b.want)
			}
		})
	}
	// The late checks can fail too: each case breaks one device, CPU or
	// global argument, by name or by value, and the TCG run must stop at it.
	lateBroken := []struct{ from, to, want string }{
		{"iommu_platform=on", "iommu_platfrom=on", "iommu_platfrom"},
		{"iommu_platform=on", "iommu_platform=maybe", "iommu_platform"},
		{"disable-legacy=on", "disable-legacy=of", "disable-legacy"},
		{"EPYC-v4", "EPYC-v0", "EPYC-v0"},
		{"io-reserve=0", "io-reserve=lots", "io-reserve"},
		{"acpi-pci-hotplug-with-bridge-support=off", "acpi-pci-hotplug-with-bridge-support=of", "acpi-pci-hotplug-with-bridge-support"},
		{"size=512M,share=on", "size=512Q,share=on", "size"},
	}
	for _, b := range lateBroken {
		t.Run("broken late "+b.to, func(t *testing.T) {
			p, _ := snpTestLaunch(t, VsockVhostUser)
			msg := runLateArgs(t, bin, brokenArgs(t, p, b.from, b.to))
			if msg == "" || !strings.Contains(msg, b.want) {
				t.Fatalf("with %q the TCG run said %q, want an error naming %q", b.to, msg, b.want)
			}
		})
	}
	// The firmware and kernel are read in the TCG run: a firmware of a size
	// no flash image has, or a kernel that is no bzImage, stops it.
	for _, bad := range []struct {
		name, content, want string
		field               func(p *launchParams) *string
	}{
		{"firmware", strings.Repeat("x", 1000), "could not load PC BIOS", func(p *launchParams) *string { return &p.Firmware }},
		{"kernel", "not a kernel", "linux kernel", func(p *launchParams) *string { return &p.Kernel }},
	} {
		t.Run("broken late "+bad.name, func(t *testing.T) {
			p, _ := snpTestLaunch(t, VsockVhostUser)
			f := filepath.Join(t.TempDir(), bad.name)
			if err := os.WriteFile(f, []byte(bad.content), 0o644); err != nil {
				t.Fatal(err)
			}
			*bad.field(&p) = f
			args, err := buildArgs(p)
			if err != nil {
				t.Fatal(err)
			}
			if msg := runLateArgs(t, bin, args); msg == "" || !strings.Contains(strings.ToLower(msg), strings.ToLower(bad.want)) {
				t.Fatalf("with a bad %s the TCG run said %q, want %q", bad.name, msg, bad.want)
			}
		})
	}
	t.Run("broken late args by help", func(t *testing.T) {
		p, _ := snpTestLaunch(t, VsockKernel)
		args, err := buildArgs(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, a := range args {
			args[i] = strings.NewReplacer("iommu_platform=on", "iommu_platfrom=on", "EPYC-v4", "EPYC-v0").Replace(a)
		}
		ft := &fakeT{}
		checkLateArgs(ft, bin, args)
		for _, want := range []string{"iommu_platfrom", "EPYC-v0"} {
			if !strings.Contains(ft.errors.String(), want) {
				t.Errorf("late-argument check missed %s: %q", want, ft.errors.String())
			}
		}
	})
}

// brokenArgs is p's command line with from replaced by to in every
// argument that holds it (at least one must).
func brokenArgs(t *testing.T, p launchParams, from, to string) []string {
	t.Helper()
	args, err := buildArgs(p)
	if err != nil {
		t.Fatal(err)
	}
	replaced := false
	for i, a := range args {
		if strings.Contains(a, from) {
			args[i], replaced = strings.Replace(a, from, to, 1), true
		}
	}
	if !replaced {
		t.Fatalf("no argument contains %q: %q", from, args)
	}
	return args
}

// runLateArgs runs QEMU under TCG, paused, with the SNP command line args
// less what only KVM with SEV-SNP realizes (the sev-snp-guest object, the
// machine's confidential-guest-support). QEMU then maps the firmware (-bios:
// its size must suit a flash image below 4 GiB), loads the kernel for
// fw_cfg (it must be a bzImage QEMU can boot) and the initrd, creates the
// memory backend, machine, CPU and every device, checking each property's
// name and value, and answers QMP only once all exist; the run ends with
// QMP's quit. The vhost-user vsock device is realized against our own
// backend; the kernel's vhost-vsock device only where /dev/vhost-vsock
// works (otherwise checkLateArgs checks it against QEMU's help). It returns
// QEMU's complaint, or "" when QEMU got as far as QMP and quit cleanly.
func runLateArgs(t *testing.T, bin string, args []string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "late")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	var late []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-object" && i+1 < len(args) && strings.HasPrefix(args[i+1], "sev-snp-guest,"):
			i++
			continue
		case a == "-accel" && i+1 < len(args):
			late = append(late, a, AccelTCG)
			i++
			continue
		case a == "-machine" && i+1 < len(args):
			m := strings.Replace(args[i+1], "confidential-guest-support="+sevID+",", "", 1)
			late = append(late, a, m)
			i++
			continue
		case a == "-device" && i+1 < len(args) && strings.HasPrefix(args[i+1], "vhost-vsock-pci,"):
			if ok, why := vhostVsockUsable(vhostVsockDevice); !ok {
				t.Logf("vhost-vsock-pci not realized under TCG (checked against QEMU's help only): %s", why)
				i++
				continue
			}
		case a == "-chardev" && i+1 < len(args) && strings.HasPrefix(args[i+1], "socket,id="+vsockCharID+",path="):
			// Our own backend answers the device's vhost-user handshake.
			sock := filepath.Join(dir, "vu.sock")
			b, err := newVhostUserVsock(vhostUserGuestCID, sock, filepath.Join(dir, "hy.sock"))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			late = append(late, a, "socket,id="+vsockCharID+",path="+sock)
			i++
			continue
		}
		late = append(late, a)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "qmp.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	qmpFile, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer qmpFile.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(late, "-S")...)
	// Read only once QEMU has exited (exec's copying is then done).
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.ExtraFiles = []*os.File{qmpFile}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// QEMU serves QMP from its main loop, which runs once every device
	// exists; a QEMU that refused an argument exits instead, which ends
	// the wait for its greeting.
	qctx, stopQMP := context.WithCancel(ctx)
	defer stopQMP()
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		stopQMP()
		exited <- err
	}()
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	qmp, err := newQMPClient(qctx, conn)
	if err != nil {
		cmd.Process.Kill()
		if werr := <-exited; werr != nil && stderr.Len() > 0 {
			return strings.TrimSpace(stderr.String())
		}
		t.Fatalf("qmp: %v (QEMU: %s)", err, stderr.String())
	}
	defer qmp.Close()
	var status struct {
		Status string `json:"status"`
	}
	if err := qmp.execute(ctx, "query-status", nil, &status); err != nil || status.Status != "prelaunch" {
		t.Errorf("paused QEMU under TCG: status %q, %v", status.Status, err)
	}
	if err := qmp.execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("quit: %v", err)
	}
	if err := <-exited; err != nil {
		return fmt.Sprintf("QEMU ended with %v after quit: %s", err, strings.TrimSpace(stderr.String()))
	}
	t.Logf("QEMU under TCG realized every device of the SNP command line and quit (%s)", strings.Join(late, " "))
	return ""
}

// lateT is what checkLateArgs reports to: the test, or fakeT to prove the
// check can fail.
type lateT interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

type fakeT struct{ errors strings.Builder }

func (*fakeT) Helper() {}
func (f *fakeT) Errorf(format string, args ...any) {
	f.errors.WriteString(strings.TrimSpace(fmt.Sprintf(format, args...)) + "\n")
}
func (f *fakeT) Fatalf(format string, args ...any) { f.Errorf(format, args...) }

// checkLateArgs checks what QEMU only reads after KVM is set up against
// QEMU's help: each -device driver and its property names, the -global
// property, and the -cpu model.
func checkLateArgs(t lateT, bin string, args []string) {
	t.Helper()
	help := func(what ...string) string {
		out, err := exec.Command(bin, what...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", bin, what, err, out)
		}
		return string(out)
	}
	props := func(driver string) map[string]bool {
		names := map[string]bool{}
		for _, line := range strings.Split(help("-device", driver+",help"), "\n") {
			if name, _, ok := strings.Cut(strings.TrimSpace(line), "=<"); ok {
				names[name] = true
			}
		}
		return names
	}
	for _, d := range argsAfter(args, "-device") {
		fields := strings.Split(d, ",")
		known := props(fields[0])
		if len(known) == 0 {
			t.Errorf("-device %s: QEMU knows no such driver", fields[0])
			continue
		}
		for _, f := range fields[1:] {
			name, _, _ := strings.Cut(f, "=")
			// id and bus belong to every device and are not listed.
			if !known[name] && name != "id" && name != "bus" {
				t.Errorf("-device %s: QEMU's %s has no property %q", d, fields[0], name)
			}
		}
	}
	for _, g := range argsAfter(args, "-global") {
		driver, rest, _ := strings.Cut(g, ".")
		name, _, _ := strings.Cut(rest, "=")
		if !props(driver)[name] {
			t.Errorf("-global %s: QEMU's %s has no property %q", g, driver, name)
		}
	}
	models := help("-cpu", "help")
	for _, cpu := range argsAfter(args, "-cpu") {
		if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(cpu) + `\s`).MatchString(models) {
			t.Errorf("-cpu %s: QEMU knows no such CPU model", cpu)
		}
	}
}

// TestAmdSevFirmwareRefusesUnmeasuredKernel boots the release image's OVMF
// AmdSevX64 firmware in a plain VM under TCG with the guest kernel handed
// over directly (fw_cfg), as a pod VM without SEV-SNP would be booted. The
// firmware checks each directly booted blob against the SEV hash table that
// QEMU writes only for an SNP launch with kernel-hashes=on; without the
// table its blob verifier refuses the kernel (fail closed: a host that
// drops SNP cannot get an unmeasured kernel past it). The kernel never
// starts, the boot manager's only other option is the AmdSev build's GRUB,
// which ours leaves out, and it stops with "No bootable option". Plain
// development VMs therefore boot without this firmware.
func TestAmdSevFirmwareRefusesUnmeasuredKernel(t *testing.T) {
	bin := snpQEMU(t)
	fw, kernel := testenv.Firmware(t), testenv.Kernel(t)
	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", "512M",
		"-nodefaults", "-nographic", "-no-reboot", "-bios", fw, "-kernel", kernel,
		"-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1", "-serial", "file:"+serial)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	const refused = "BdsDxe: No bootable option was found."
	for {
		out, _ := os.ReadFile(serial)
		if bytes.Contains(out, []byte("Linux version")) {
			t.Fatalf("the AmdSev firmware started a kernel without SEV hash table:\n%s", out)
		}
		if bytes.Contains(out, []byte(refused)) {
			t.Logf("serial console:\n%s", out)
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("QEMU exited (%v) before the firmware gave up: %s\nserial: %s", err, stderr.String(), out)
		case <-ctx.Done():
			t.Fatalf("no %q within 3 minutes; serial:\n%s", refused, out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
