package qemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// snpQEMUEnv names a QEMU >= 9.1 binary (hack/deps.sh unpacks QEMU 10 from
// Debian backports to $CONTRAST_CACHE/qemu10/bin/qemu-system-x86_64).
const snpQEMUEnv = "CONTRAST_QEMU_SNP"

// hostLacksSNP matches QEMU's whole complaint when the host, not the
// command line, is what stops an SNP launch: KVM without the SNP VM type,
// no KVM at all, or no AMD secure processor device.
var hostLacksSNP = regexp.MustCompile(`^qemu-system-x86_64: (` +
	`vm-type SEV-SNP not supported by KVM` +
	`|Could not access KVM kernel module: .*` +
	`|-accel kvm: failed to initialize kvm: .*` +
	`|failed to initialize kvm: .*` +
	`|sev_common_kvm_init: Failed to open /dev/sev .*` +
	`)$`)

func snpQEMU(t *testing.T) string {
	t.Helper()
	bin := os.Getenv(snpQEMUEnv)
	if bin == "" {
		t.Fatalf("%s is not set: set it to a QEMU >= 9.1 (hack/deps.sh unpacks QEMU 10 to $CONTRAST_CACHE/qemu10/bin/qemu-system-x86_64; the Makefile sets it)", snpQEMUEnv)
	}
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
// that QEMU gets as far as it can.
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
	p.Kernel, p.Initrd, p.Firmware = file("bzImage"), file("initrd"), file("OVMF.amdsev.fd")
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
// line buildArgs writes and requires that it fails only because this host
// cannot run SEV-SNP guests. QEMU reads -object and -machine options before
// it sets up KVM, so every option of the sev-snp-guest object and the memory
// backend is checked by running it; it creates devices and the CPU after
// KVM, so their driver, property and model names are checked against QEMU's
// own help output.
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
			if !hostLacksSNP.MatchString(msg) {
				t.Fatalf("QEMU failed for another reason than the host's missing SEV-SNP:\n%s\ncommand: %s", msg, quoteCommand(bin, args))
			}
			t.Logf("QEMU: %s", msg)
			checkLateArgs(t, bin, args)
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
		if msg, _ := runQEMU(t, bin, args, qmp); !hostLacksSNP.MatchString(msg) {
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
		for i, a := range args {
			args[i] = strings.Replace(a, "accel=kvm,", "accel=tcg,", 1)
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
			args, err := buildArgs(p)
			if err != nil {
				t.Fatal(err)
			}
			replaced := false
			for i, a := range args {
				if strings.Contains(a, b.from) {
					args[i], replaced = strings.Replace(a, b.from, b.to, 1), true
				}
			}
			if !replaced {
				t.Fatalf("no argument contains %q: %q", b.from, args)
			}
			msg, err := runQEMU(t, bin, args, qmp)
			if err == nil || hostLacksSNP.MatchString(msg) || !strings.Contains(msg, b.want) {
				t.Fatalf("with %q QEMU said %q (exit %v), want %q", b.to, msg, err, b.want)
			}
		})
	}
	t.Run("broken late args", func(t *testing.T) {
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
