package qemu

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/hypervisor"
)

func TestSNPHostSupport(t *testing.T) {
	dir := t.TempDir()
	param := func(content string) string {
		p := filepath.Join(dir, "sev_snp-"+strings.TrimSpace(content))
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// /dev/null is a character device like /dev/sev; a regular file is not.
	regular := param("regular")
	tests := []struct {
		name       string
		param, dev string
		want       []string // nil: supported
	}{
		{"supported", param("Y\n"), "/dev/null", nil},
		{"supported, numeric", param("1\n"), "/dev/null", nil},
		{"snp off", param("N\n"), "/dev/null", []string{`is "N"`}},
		{"no kvm_amd", filepath.Join(dir, "missing"), "/dev/null", []string{"does not exist (kvm_amd is not loaded"}},
		{"no /dev/sev", param("Y\n"), filepath.Join(dir, "sev"), []string{"no AMD secure processor driver"}},
		{"sev not a device", param("Y\n"), regular, []string{"not a character device"}},
		{"nothing", filepath.Join(dir, "missing"), filepath.Join(dir, "sev"), []string{"kvm_amd is not loaded", "no AMD secure processor driver"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			missing := snpHostMissing(tc.param, tc.dev)
			if len(missing) != len(tc.want) {
				t.Fatalf("missing %q, want %d reasons", missing, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(missing[i], w) {
					t.Errorf("reason %q does not say %q", missing[i], w)
				}
			}
		})
	}
	if err := snpHostError([]string{"a", "b"}).Error(); err != "confidential mode needs a host with SEV-SNP: a; b" {
		t.Errorf("error text %q", err)
	}
	// This machine, whatever it is: supported exactly when both signs are there.
	missing := snpHostMissing(sevSNPParam, sevDevice)
	t.Logf("SEV-SNP host here: missing %q", missing)
	b, _ := os.ReadFile(sevSNPParam)
	_, devErr := os.Stat(sevDevice)
	signs := strings.TrimSpace(string(b)) == "Y" && devErr == nil
	if (len(missing) == 0) != signs {
		t.Errorf("snpHostMissing says %q, but %s = %q and %s: %v", missing, sevSNPParam, b, sevDevice, devErr)
	}
}

// TestCPUID checks the assembly against the kernel's view of the same CPU.
func TestCPUID(t *testing.T) {
	if !haveCPUID {
		t.Skip("CPUID exists on x86-64 only")
	}
	_, ebx, ecx, edx := cpuid(0, 0)
	var vendor [12]byte
	binary.LittleEndian.PutUint32(vendor[0:], ebx)
	binary.LittleEndian.PutUint32(vendor[4:], edx)
	binary.LittleEndian.PutUint32(vendor[8:], ecx)
	want := cpuinfoField(t, "vendor_id")
	if string(vendor[:]) != want {
		t.Errorf("CPUID vendor %q, /proc/cpuinfo says %q", vendor, want)
	}

	pos, err := hostCBitPos()
	t.Logf("host C-bit position: %d, %v", pos, err)
	maxExt, _, _, _ := cpuid(0x80000000, 0)
	switch {
	case maxExt < memEncryptionLeaf:
		if err == nil || !strings.Contains(err.Error(), "CPUID leaf 0x8000001f is absent") {
			t.Errorf("leaf absent (highest %#x) but error %v", maxExt, err)
		}
	case err == nil && (pos < 1 || pos > 63):
		t.Errorf("C-bit position %d out of range", pos)
	}
	// The kernel lists sme/sev when the leaf reports memory encryption.
	if flags := " " + cpuinfoField(t, "flags") + " "; strings.Contains(flags, " sev_snp ") && err != nil {
		t.Errorf("CPU flags list sev_snp but hostCBitPos fails: %v", err)
	}
}

func cpuinfoField(t *testing.T, key string) string {
	t.Helper()
	f, err := os.Open(cpuinfoPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no %s", cpuinfoPath, key)
	return ""
}

func TestResolveSNP(t *testing.T) {
	host51 := func() (int, error) { return 51, nil }
	noLeaf := func() (int, error) { return 0, errors.New("CPUID leaf 0x8000001f is absent") }
	tests := []struct {
		name    string
		launch  hypervisor.SNPLaunch
		cbit    func() (int, error)
		want    snpSettings
		wantErr string
	}{
		{"host values", hypervisor.SNPLaunch{Policy: 0x30000}, host51, snpSettings{CBitPos: 51, ReducedPhysBits: 1, Policy: 0x30000}, ""},
		{"configured values win", hypervisor.SNPLaunch{Policy: 0x30000, CBitPos: 47, ReducedPhysBits: 5}, noLeaf, snpSettings{CBitPos: 47, ReducedPhysBits: 5, Policy: 0x30000}, ""},
		{"leaf absent", hypervisor.SNPLaunch{Policy: 0x30000}, noLeaf, snpSettings{}, "confidential mode needs a host with SEV-SNP: CPUID leaf 0x8000001f is absent"},
		{"bad policy", hypervisor.SNPLaunch{Policy: 0x20000}, host51, snpSettings{}, "bit 16 must be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.launch
			got, err := resolveSNP(&l, tc.cbit)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestStartVMConfidentialRefused goes through StartVM: a host that cannot
// run SNP guests gets the error that says why, and nothing is started.
func TestStartVMConfidentialRefused(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	state := filepath.Join(dir, "vm")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.VMSpec{
		ID: "snp", StateDir: state, Kernel: file("kernel"), Initrd: file("initrd"), KernelArgs: "console=ttyS0",
		VCPUs: 1, MemoryMiB: 256,
		Confidential: &hypervisor.SNPLaunch{Firmware: file("ovmf.fd"), CPUModel: "EPYC-v4", Policy: 0x30000},
	}

	// This host as it is.
	h, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.StartVM(context.Background(), spec)
	if h.Selection().Accel == AccelKVM && len(snpHostMissing(sevSNPParam, sevDevice)) == 0 {
		t.Skip("this host can launch SEV-SNP guests: the refusals are tested with fake probes below")
	}
	if err == nil || !strings.Contains(err.Error(), "confidential mode needs a host with SEV-SNP: ") {
		t.Fatalf("StartVM on a host without SEV-SNP: %v", err)
	}
	t.Logf("refused here: %v", err)

	tests := []struct {
		name   string
		accel  string
		host   []string
		modify func(*hypervisor.VMSpec)
		want   string
	}{
		{"tcg", AccelTCG, nil, nil, "the accelerator is tcg (configured), and only KVM can run SEV-SNP guests"},
		{"no snp", AccelKVM, []string{`sev_snp is "N"`}, nil, `confidential mode needs a host with SEV-SNP: sev_snp is "N"`},
		{"tcg and no snp", AccelTCG, []string{"no /dev/sev"}, nil, "only KVM can run SEV-SNP guests; no /dev/sev"},
		{"plain firmware too", AccelKVM, nil, func(s *hypervisor.VMSpec) { s.Firmware = s.Kernel }, "names its own"},
		{"no firmware", AccelKVM, nil, func(s *hypervisor.VMSpec) { s.Confidential.Firmware = "" }, "confidential launch without firmware"},
		{"missing firmware", AccelKVM, nil, func(s *hypervisor.VMSpec) { s.Confidential.Firmware = filepath.Join(dir, "none") }, "firmware: stat"},
		{"measurement given", AccelKVM, nil, func(s *hypervisor.VMSpec) { s.LaunchMeasurement = make([]byte, 48) }, "the hardware measures it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(Config{Accel: tc.accel})
			if err != nil {
				t.Fatal(err)
			}
			missing := tc.host
			h.snpHostMissing = func() []string { return missing }
			h.hostCBitPos = func() (int, error) { return 51, nil }
			s := spec
			l := *spec.Confidential
			s.Confidential = &l
			if tc.modify != nil {
				tc.modify(&s)
			}
			_, err = h.StartVM(context.Background(), s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(state); len(entries) != 0 {
				t.Errorf("state dir not empty after refusal: %v", entries)
			}
		})
	}

	// A plain VM's measurement must be a whole digest.
	plain := spec
	plain.Confidential, plain.LaunchMeasurement = nil, make([]byte, 47)
	if _, err := h.StartVM(context.Background(), plain); err == nil || !strings.Contains(err.Error(), "launch measurement of 47 bytes") {
		t.Errorf("47-byte measurement: %v", err)
	}
}
