package snp

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// emptyKernel is what sev-snp-measure's tests pass as kernel and initrd:
// /dev/null, an empty file, with the given command line.
func emptyKernel(t testing.TB, cmdline string) *KernelHashes {
	t.Helper()
	kh, err := HashKernel(strings.NewReader(""), strings.NewReader(""), cmdline)
	if err != nil {
		t.Fatal(err)
	}
	return kh
}

// ovmfHashAmdSev is the digest of ovmf_AmdSev_suffix.bin's page, from
// sev-snp-measure's tests/test_guest.py (test_snp_ovmf_hash_full_default).
const ovmfHashAmdSev = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"

// snpVector is one test of sev-snp-measure's tests/test_guest.py (virtee,
// commit 8f2b337e38bc83f87cd30f3253cdfe8e3e12cc3a) in SNP mode. Every SNP
// test there that uses ovmf_AmdSev_suffix.bin is here, plus the two that use
// ovmf_OvmfX64_suffix.bin; SVSM mode is out of scope, and test_snp_dump_vmsa
// checks files, not a digest. "/dev/null" kernel and initrd are empty files.
type snpVector struct {
	name          string // the Python test's name
	firmware      string
	vcpus         int
	vcpuType      string // "" with vmm gce: the Python test passes no signature
	kernel        bool   // kernel and initrd /dev/null
	cmdline       string
	guestFeatures uint64
	vmm           VMM
	ovmfHash      string // snp_ovmf_hash_str
	want          string
}

var snpVectors = []snpVector{
	{name: "test_snp_ovmf_hash_gen_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, guestFeatures: 0x21, ovmfHash: ovmfHashAmdSev,
		want: "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"},
	{name: "test_snp_ovmf_hash_gen_feature_snp_only", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, guestFeatures: 0x1, ovmfHash: ovmfHashAmdSev,
		want: "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"},
	{name: "test_snp_ovmf_hash_full_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, cmdline: "console=ttyS0 loglevel=7", guestFeatures: 0x21, ovmfHash: ovmfHashAmdSev,
		want: "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"},
	{name: "test_snp_ovmf_hash_full_feature_snp_only", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, cmdline: "console=ttyS0 loglevel=7", guestFeatures: 0x1, ovmfHash: ovmfHashAmdSev,
		want: "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"},
	{name: "test_snp_ec2_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, guestFeatures: 0x21, vmm: VMMEC2,
		want: "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb"},
	{name: "test_snp_ec2_feature_snp_only", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, guestFeatures: 0x1, vmm: VMMEC2,
		want: "0883bd0eeb716e65b7b977a321c278d1e51b33b5c655fab985443bbcc65c086b9c15e8a0bd8811050dec7e24964e5056"},
	{name: "test_snp_gce_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, kernel: true, guestFeatures: 0x1, vmm: VMMGCE,
		want: "5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e"},
	{name: "test_snp_gce_with_multiple_vcpus_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 4, kernel: true, guestFeatures: 0x1, vmm: VMMGCE,
		want: "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d"},
	{name: "test_snp_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, cmdline: "console=ttyS0 loglevel=7", guestFeatures: 0x21,
		want: "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"},
	{name: "test_snp_guest_feature_snp_only", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", kernel: true, cmdline: "console=ttyS0 loglevel=7", guestFeatures: 0x1,
		want: "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"},
	{name: "test_snp_without_kernel_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", guestFeatures: 0x21,
		want: "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"},
	{name: "test_snp_without_kernel_feature_snp_only", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", guestFeatures: 0x1,
		want: "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"},
	{name: "test_snp_with_multiple_vcpus_default", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 4, vcpuType: "EPYC-v4", kernel: true, guestFeatures: 0x21,
		want: "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"},
	{name: "test_snp_with_multiple_vcpus_feature_snp_only", firmware: "ovmf_AmdSev_suffix.bin", vcpus: 4, vcpuType: "EPYC-v4", kernel: true, guestFeatures: 0x1,
		want: "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"},
	{name: "test_snp_with_ovmfx64_without_default", firmware: "ovmf_OvmfX64_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", guestFeatures: 0x21,
		want: "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"},
	{name: "test_snp_with_ovmfx64_without_kernel_feature_snp_only", firmware: "ovmf_OvmfX64_suffix.bin", vcpus: 1, vcpuType: "EPYC-v4", guestFeatures: 0x1,
		want: "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"},
}

func (v snpVector) launch(t testing.TB) Launch {
	l := Launch{
		Firmware:      readFixture(t, v.firmware),
		VCPUs:         v.vcpus,
		VCPUType:      v.vcpuType,
		GuestFeatures: v.guestFeatures,
		VMM:           v.vmm,
	}
	if v.kernel {
		l.Kernel = emptyKernel(t, v.cmdline)
	}
	if v.ovmfHash != "" {
		l.FirmwareDigest = (*[DigestSize]byte)(mustHex(t, v.ovmfHash))
	}
	return l
}

func TestMeasureSevSnpMeasureVectors(t *testing.T) {
	for _, v := range snpVectors {
		t.Run(v.name, func(t *testing.T) {
			got, err := Measure(v.launch(t))
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got[:]) != v.want {
				t.Errorf("measurement\n got %x\nwant %s", got, v.want)
			}
			// The vectors given an OVMF hash also hold when the firmware's
			// pages are hashed instead.
			if v.ovmfHash != "" {
				l := v.launch(t)
				l.FirmwareDigest = nil
				got, err := Measure(l)
				if err != nil {
					t.Fatal(err)
				}
				if hex.EncodeToString(got[:]) != v.want {
					t.Errorf("measurement hashing the firmware\n got %x\nwant %s", got, v.want)
				}
			}
		})
	}
}

// TestFirmwareDigest is test_snp_ovmf_hash_full_default's first assertion.
func TestFirmwareDigest(t *testing.T) {
	got, err := FirmwareDigest(readFixture(t, "ovmf_AmdSev_suffix.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got[:]) != ovmfHashAmdSev {
		t.Errorf("firmware digest %x, want %s", got, ovmfHashAmdSev)
	}
}

// TestMeasureEveryInputCounts changes one input at a time from a launch of
// the vectors and requires the measurement to change: each part of the
// chain (firmware bytes, kernel, initrd, command line, vCPU count, CPU
// signature, SEV features, VMM) is really measured.
func TestMeasureEveryInputCounts(t *testing.T) {
	base := snpVectors[8] // test_snp_default
	want := mustHex(t, base.want)
	kh := func(kernel, initrd, cmdline string) *KernelHashes {
		k, err := HashKernel(strings.NewReader(kernel), strings.NewReader(initrd), cmdline)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	for _, tc := range []struct {
		name   string
		change func(l *Launch)
	}{
		{"firmware byte", func(l *Launch) { l.Firmware = bytes.Clone(l.Firmware); l.Firmware[100] ^= 1 }},
		{"firmware digest", func(l *Launch) { d := [DigestSize]byte{1}; l.FirmwareDigest = &d }},
		{"kernel", func(l *Launch) { l.Kernel = kh("x", "", "console=ttyS0 loglevel=7") }},
		{"initrd", func(l *Launch) { l.Kernel = kh("", "x", "console=ttyS0 loglevel=7") }},
		{"cmdline", func(l *Launch) { l.Kernel = kh("", "", "console=ttyS0 loglevel=8") }},
		{"no kernel", func(l *Launch) { l.Kernel = nil }},
		{"vcpus", func(l *Launch) { l.VCPUs = 2 }},
		{"vcpu type", func(l *Launch) { l.VCPUType = "EPYC-Milan" }},
		{"vcpu signature", func(l *Launch) { l.VCPUType = ""; l.VCPUSig = 0x800f13 }},
		{"guest features", func(l *Launch) { l.GuestFeatures = 0x1 }},
		{"vmm", func(l *Launch) { l.VMM = VMMEC2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := base.launch(t)
			tc.change(&l)
			got, err := Measure(l)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got[:], want) {
				t.Errorf("measurement unchanged: %x", got)
			}
		})
	}
	// The same launch given by signature instead of type measures the same.
	l := base.launch(t)
	l.VCPUType, l.VCPUSig = "", 0x800f12
	got, err := Measure(l)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:], want) {
		t.Errorf("EPYC-v4 given as signature 0x800f12: %x, want %x", got, want)
	}
}

func TestMeasureErrors(t *testing.T) {
	amd := readFixture(t, "ovmf_AmdSev_suffix.bin")
	x64 := readFixture(t, "ovmf_OvmfX64_suffix.bin")
	// In the fixture, the hash table entry's address is at 0xf84 and the
	// reset block's AP address at 0xfb8.
	hashTableMoved := bytes.Clone(amd)
	copy(hashTableMoved[0xf84:], []byte{0, 0, 0x70, 0})
	noAPReset := bytes.Clone(amd)
	copy(noAPReset[0xfb8:], []byte{0, 0, 0, 0})
	for _, tc := range []struct {
		name string
		l    Launch
		want string
	}{
		// test_snp_with_ovmfx64_and_kernel_should_fail: the Python tool says
		// "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section".
		{"kernel without kernel-hashes section", Launch{Firmware: x64, VCPUs: 1, VCPUType: "EPYC-v4", Kernel: emptyKernel(t, "")}, "no SNP_KERNEL_HASHES section"},
		{"hash table outside its section", Launch{Firmware: hashTableMoved, VCPUs: 1, VCPUType: "EPYC-v4", Kernel: emptyKernel(t, "")}, "lies outside its SNP_KERNEL_HASHES section"},
		{"no AP reset address", Launch{Firmware: noAPReset, VCPUs: 2, VCPUType: "EPYC-v4"}, "no AP start address"},
		{"unknown vcpu type", Launch{Firmware: amd, VCPUs: 1, VCPUType: "EPYC-v9"}, "known: EPYC, EPYC-v1"},
		{"type and signature disagree", Launch{Firmware: amd, VCPUs: 1, VCPUType: "EPYC-v4", VCPUSig: 1}, "contradicts"},
		{"no vcpus", Launch{Firmware: amd, VCPUType: "EPYC-v4"}, "vCPU count 0"},
		{"no firmware", Launch{VCPUs: 1, VCPUType: "EPYC-v4"}, "no firmware given"},
		{"empty firmware", Launch{Firmware: []byte{}, VCPUs: 1, VCPUType: "EPYC-v4"}, "firmware is empty"},
		{"metadata without digest", Launch{Metadata: &Firmware{Size: PageSize}, VCPUs: 1, VCPUType: "EPYC-v4"}, "needs the digest of its pages"},
		{"not ovmf", Launch{Firmware: make([]byte, PageSize), VCPUs: 1, VCPUType: "EPYC-v4"}, "no OVMF footer table"},
		{"unknown vmm", Launch{Firmware: amd, VCPUs: 1, VCPUType: "EPYC-v4", VMM: 7}, "unknown VMM(7)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Measure(tc.l)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestVCPUSignature(t *testing.T) {
	for _, tc := range []struct {
		name string
		want uint32
	}{
		// tests/test_vcpu_types.py: family 23, model 1, stepping 2.
		{"EPYC-v4", 0x800f12},
		{"EPYC-Rome", 0x830f10},
		{"EPYC-Milan", 0xa00f11},
		{"EPYC-Genoa", 0xa10f10},
		{"EPYC-Turin", 0xb00f00},
	} {
		got, err := VCPUSignature(tc.name)
		if err != nil || got != tc.want {
			t.Errorf("VCPUSignature(%s) = %#x, %v; want %#x", tc.name, got, err, tc.want)
		}
	}
	// tests/test_vcpu_types.py
	if got := CPUSignature(14, 1, 2); got != 0x0e12 {
		t.Errorf("CPUSignature(14, 1, 2) = %#x, want 0xe12", got)
	}
	if got := CPUSignature(23, 1, 2); got != 0x800f12 {
		t.Errorf("CPUSignature(23, 1, 2) = %#x, want 0x800f12", got)
	}
}

func TestParseFirmwareFixture(t *testing.T) {
	fw, err := ParseFirmware(readFixture(t, "ovmf_AmdSev_suffix.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !fw.HasResetBlock || fw.ResetEIP == 0 {
		t.Errorf("no AP reset address: %+v", fw)
	}
	if !fw.HasHashTable {
		t.Errorf("no SEV hash table area")
	}
	for _, st := range []SectionType{SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSNPKernelHashes} {
		if _, ok := fw.Section(st); !ok {
			t.Errorf("no %s section in %+v", st, fw.Sections)
		}
	}
	t.Logf("reset EIP %#x, hash table %#x+%#x, sections %+v", fw.ResetEIP, fw.HashTableGPA, fw.HashTableSize, fw.Sections)
}
