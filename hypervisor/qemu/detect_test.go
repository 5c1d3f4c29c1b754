package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCPUHasVirtFlags(t *testing.T) {
	tests := []struct {
		name, cpuinfo string
		want          bool
	}{
		{"intel", "processor\t: 0\nflags\t\t: fpu vme de pse vmx ssse3\n", true},
		{"amd", "processor\t: 0\nflags\t\t: fpu svm sse\nbugs\t\t: x\n", true},
		{"pvm", "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor\nvmx flags\t: whatever\n", false},
		{"no flags line", "processor\t: 0\n", false},
		{"substring is not a flag", "flags\t: svmx vmxx\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cpuHasVirtFlags(writeFile(t, "cpuinfo", tc.cpuinfo))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := cpuHasVirtFlags("/nonexistent/cpuinfo"); err == nil {
		t.Error("missing cpuinfo: no error")
	}
}

func TestKVMUsable(t *testing.T) {
	ok, why := kvmUsable("/nonexistent/kvm", cpuinfoPath)
	if ok || !strings.Contains(why, "cannot open /nonexistent/kvm") {
		t.Errorf("missing device: got %v, %q", ok, why)
	}
	// /dev/null opens but is no KVM: the ioctl must fail.
	ok, why = kvmUsable("/dev/null", cpuinfoPath)
	if ok || !strings.Contains(why, "KVM_GET_API_VERSION") {
		t.Errorf("/dev/null: got %v, %q", ok, why)
	}

	// This machine, whatever it is: the answer must agree with the CPU
	// flags whenever /dev/kvm answers the ioctl.
	ok, why = kvmUsable(kvmDevice, cpuinfoPath)
	t.Logf("KVM usable here: %v (%s)", ok, why)
	hasFlags, err := cpuHasVirtFlags(cpuinfoPath)
	if err != nil {
		t.Fatal(err)
	}
	if ok && !hasFlags {
		t.Error("KVM called usable without vmx/svm")
	}
	// Whether this machine's /dev/kvm opens and answers KVM's ioctl: it may
	// be missing, or exist and be no KVM.
	_, statErr := os.Stat(kvmDevice)
	answers := statErr == nil && !strings.HasPrefix(why, "cannot open") && !strings.Contains(why, "KVM_GET_API_VERSION")
	if answers && !hasFlags && !strings.Contains(why, "neither vmx nor svm") {
		t.Errorf("reason %q does not name the missing vmx/svm", why)
	}

	// A /dev/kvm that answers, with a CPU that has the flags, counts as usable.
	if statErr == nil {
		ok, why := kvmUsable(kvmDevice, writeFile(t, "cpuinfo", "flags\t: fpu vmx\n"))
		if !answers {
			if ok {
				t.Errorf("%s answers no KVM ioctl, yet with vmx it counts as usable: %s", kvmDevice, why)
			}
			t.Skipf("%s exists but is no KVM here (%s): the usable case needs one that answers", kvmDevice, why)
		}
		if !ok {
			t.Errorf("with vmx: not usable: %s", why)
		}
	}
}

func TestChooseAccel(t *testing.T) {
	tests := []struct {
		requested string
		kvmOK     bool
		want      string
		wantErr   bool
	}{
		{"", true, AccelKVM, false},
		{"", false, AccelTCG, false},
		{"auto", true, AccelKVM, false},
		{"auto", false, AccelTCG, false},
		{"kvm", false, AccelKVM, false},
		{"tcg", true, AccelTCG, false},
		{"hvf", true, "", true},
	}
	for _, tc := range tests {
		got, why, err := chooseAccel(tc.requested, tc.kvmOK, "probe says so")
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("chooseAccel(%q, %v) = %q, %v; want %q, error %v", tc.requested, tc.kvmOK, got, err, tc.want, tc.wantErr)
		}
		if err == nil && why == "" {
			t.Errorf("chooseAccel(%q, %v): no reason", tc.requested, tc.kvmOK)
		}
		if tc.requested == "auto" && !strings.Contains(why, "probe says so") {
			t.Errorf("auto reason %q does not carry the probe's", why)
		}
	}
	if m := defaultCPUModel(AccelKVM); m != "host" {
		t.Errorf("kvm cpu %q", m)
	}
	if m := defaultCPUModel(AccelTCG); m != "max,-erms,-fsrm" {
		t.Errorf("tcg cpu %q", m)
	}
}

func TestChooseVsock(t *testing.T) {
	tests := []struct {
		requested string
		kernelOK  bool
		want      string
		wantErr   bool
	}{
		{"", true, VsockKernel, false},
		{"auto", false, VsockVhostUser, false},
		{"kernel", false, VsockKernel, false},
		{"vhost-user", true, VsockVhostUser, false},
		{"hybrid", true, "", true},
	}
	for _, tc := range tests {
		got, _, err := chooseVsock(tc.requested, tc.kernelOK, "x")
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("chooseVsock(%q, %v) = %q, %v; want %q, error %v", tc.requested, tc.kernelOK, got, err, tc.want, tc.wantErr)
		}
	}
	ok, why := vhostVsockUsable("/nonexistent/vhost-vsock")
	if ok || !strings.Contains(why, "does not exist") {
		t.Errorf("missing device: %v, %q", ok, why)
	}
	ok, why = vhostVsockUsable(vhostVsockDevice)
	t.Logf("kernel vhost-vsock here: %v (%s)", ok, why)
}

func TestNewConfig(t *testing.T) {
	h, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	sel := h.Selection()
	t.Logf("selection: %s", sel)
	if sel.Binary == "" || sel.Accel == "" || sel.AccelReason == "" || sel.CPUModel == "" || sel.Vsock == "" || sel.VsockReason == "" {
		t.Errorf("incomplete selection %+v", sel)
	}
	if hasFlags, _ := cpuHasVirtFlags(cpuinfoPath); !hasFlags && sel.Accel != AccelTCG {
		t.Errorf("no vmx/svm here but accel %s", sel.Accel)
	}

	h, err = New(Config{Accel: "tcg", CPUModel: "qemu64", Vsock: "vhost-user"})
	if err != nil {
		t.Fatal(err)
	}
	if s := h.Selection(); s.Accel != AccelTCG || s.CPUModel != "qemu64" || s.Vsock != VsockVhostUser {
		t.Errorf("explicit config not honoured: %+v", s)
	}

	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Binary: "/nonexistent/qemu-system-x86_64"}, "/nonexistent/qemu-system-x86_64"},
		{Config{Binary: "no-such-qemu-binary"}, "no-such-qemu-binary"},
		{Config{Accel: "hvf"}, `accelerator "hvf"`},
		{Config{Vsock: "tcp"}, `vsock mode "tcp"`},
		{Config{HotplugPorts: 100}, "hot-plug ports 100"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) error %v, want one naming %q", tc.cfg, err, tc.want)
		}
	}
}
