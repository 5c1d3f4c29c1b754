package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/internal/testenv"
	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

const (
	fixtureOVMF    = "../../vmimage/snp/testdata/ovmf_AmdSev_suffix.bin"
	fixtureOVMFX64 = "../../vmimage/snp/testdata/ovmf_OvmfX64_suffix.bin"
	fixtureIDKey   = "../../vmimage/snp/testdata/id_key_test.pem"
	fixtureAuthor  = "../../vmimage/snp/testdata/author_key_test.pem"
)

// TestMeasureCLI runs sev-snp-measure's test vectors (tests/test_guest.py)
// through the command line, with the tool's own flags: its tests pass
// /dev/null as kernel and initrd, here empty files.
func TestMeasureCLI(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const snpDefault = "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"
	b64 := func(h string) string {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"test_snp_default", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--append", "console=ttyS0 loglevel=7", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x21"}, snpDefault},
		{"test_snp_default, signature", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--append", "console=ttyS0 loglevel=7", "--vcpus", "1", "--vcpu-sig", "0x800f12", "--guest-features", "0x21"}, snpDefault},
		{"test_snp_default, family", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--append", "console=ttyS0 loglevel=7", "--vcpus", "1", "--vcpu-family", "23", "--vcpu-model", "1", "--vcpu-stepping", "2", "--guest-features", "0x21"}, snpDefault},
		{"test_snp_default, base64", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--append", "console=ttyS0 loglevel=7", "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x21", "--output-format", "base64"}, b64(snpDefault)},
		// The default guest features are 0x1.
		{"test_snp_with_multiple_vcpus_feature_snp_only", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--vcpus", "4", "--vcpu-type", "EPYC-v4"}, "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"},
		{"test_snp_without_kernel_feature_snp_only", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--vcpus", "1", "--vcpu-type", "EPYC-v4"},
			"19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"},
		{"test_snp_ovmf_hash_gen_default", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x21",
			"--snp-ovmf-hash", "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"},
			"329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"},
		{"test_snp_gce_with_multiple_vcpus_default", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--vcpus", "4", "--vmm-type", "gce"},
			"5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d"},
		{"test_snp_ec2_default", []string{"--mode", "snp", "--ovmf", fixtureOVMF, "--kernel", empty, "--initrd", empty,
			"--vcpus", "1", "--vcpu-type", "EPYC-v4", "--guest-features", "0x21", "--vmm-type", "ec2"},
			"0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb"},
		{"snp:ovmf-hash", []string{"--mode", "snp:ovmf-hash", "--ovmf", fixtureOVMF},
			"086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"measure"}, tc.args...)...)
			if code != 0 || stdout != tc.want+"\n" {
				t.Errorf("exit %d\nstdout %q\nwant   %q\nstderr %s", code, stdout, tc.want+"\n", stderr)
			}
		})
	}
}

func TestMeasureCLIErrors(t *testing.T) {
	base := []string{"measure", "--mode", "snp", "--ovmf", fixtureOVMF}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no mode", []string{"measure", "--ovmf", fixtureOVMF}, 2, "missing --mode"},
		{"sev mode", []string{"measure", "--mode", "sev", "--ovmf", fixtureOVMF}, 2, "--mode sev is not supported"},
		{"svsm mode", []string{"measure", "--mode", "snp:svsm", "--ovmf", fixtureOVMF}, 2, "--mode snp:svsm is not supported"},
		{"unknown mode", []string{"measure", "--mode", "tdx", "--ovmf", fixtureOVMF}, 2, `unknown --mode "tdx"`},
		{"no ovmf", []string{"measure", "--mode", "snp"}, 2, "missing --ovmf"},
		{"no vcpus", append(base, "--vcpu-type", "EPYC-v4"), 2, "missing --vcpus"},
		{"no vcpu type", append(base, "--vcpus", "1"), 2, "missing --vcpu-type, --vcpu-sig or --vcpu-family (vCPU types: EPYC, "},
		{"unknown vcpu type", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v9"), 2, `unknown vCPU type "EPYC-v9" (known: EPYC, EPYC-v1,`},
		{"type and signature", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--vcpu-sig", "1"), 2, "give one of"},
		{"partial family", append(base, "--vcpus", "1", "--vcpu-family", "25"), 2, "go together"},
		{"signature too wide", append(base, "--vcpus", "1", "--vcpu-sig", "0x100000000"), 2, "value out of range"},
		{"initrd without kernel", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--initrd", "x"), 2, "need --kernel"},
		{"output format", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--output-format", "raw"), 2, "--output-format"},
		{"bad ovmf hash", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--snp-ovmf-hash", "abc"), 2, "--snp-ovmf-hash: want 96 hex digits"},
		{"vmm type", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--vmm-type", "xen"), 2, `unknown VMM type "xen"`},
		{"id key without outputs", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--id-key", fixtureIDKey), 2, "an ID block needs --id-key, --id-block-out and --id-auth-out"},
		{"bad family id", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--family-id", "00"), 2, "want 32 hex digits"},
		{"missing firmware", []string{"measure", "--mode", "snp", "--ovmf", "/nonexistent", "--vcpus", "1", "--vcpu-type", "EPYC-v4"}, 1, "--ovmf: open /nonexistent"},
		{"missing kernel", append(base, "--vcpus", "1", "--vcpu-type", "EPYC-v4", "--kernel", "/nonexistent"), 1, "kernel: open /nonexistent"},
		{"firmware without kernel hashes", []string{"measure", "--mode", "snp", "--ovmf", fixtureOVMFX64, "--kernel", fixtureOVMF,
			"--vcpus", "1", "--vcpu-type", "EPYC-v4"}, 1, "no SNP_KERNEL_HASHES section"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, stdout, stderr, tc.code, tc.want)
			}
		})
	}
}

func TestMeasureCLIIDBlock(t *testing.T) {
	dir := t.TempDir()
	blockOut, authOut := filepath.Join(dir, "id-block"), filepath.Join(dir, "id-auth")
	for _, author := range []bool{false, true} {
		args := []string{"measure", "--mode", "snp", "--ovmf", fixtureOVMF, "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
			"--id-key", fixtureIDKey, "--policy", "0x30000", "--family-id", strings.Repeat("ab", 16),
			"--id-block-out", blockOut, "--id-auth-out", authOut}
		if author {
			args = append(args, "--author-key", fixtureAuthor)
		}
		code, stdout, stderr := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		// sev-snp-measure's tests/test_id_block.py: the test ID key's digest.
		if !strings.Contains(stderr, "ID_KEY_DIGEST     870b7e35c53f8a72d0d322f75ab2af8262792aaf6579622ce4131c3f21f289e77cb0560a5e3b90b3932e674ec709cb14") {
			t.Errorf("stderr lacks the ID key digest: %s", stderr)
		}
		if got := strings.Contains(stderr, "AUTHOR_KEY_DIGEST 63111c34"); got != author {
			t.Errorf("author key digest reported: %v, want %v: %s", got, author, stderr)
		}
		measurement, err := hex.DecodeString(strings.TrimSpace(stdout))
		if err != nil {
			t.Fatal(err)
		}
		var files [2][]byte
		for i, p := range []string{blockOut, authOut} {
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.ContainsAny(raw, "\n ") {
				t.Errorf("%s holds white space; QEMU wants bare base64", p)
			}
			if files[i], err = base64.StdEncoding.DecodeString(string(raw)); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
		}
		block, auth := files[0], files[1]
		if len(block) != snp.IDBlockSize || len(auth) != snp.IDAuthSize {
			t.Fatalf("ID block %d bytes, ID auth %d", len(block), len(auth))
		}
		if !bytes.Equal(block[:snp.DigestSize], measurement) {
			t.Errorf("ID block digest %x, printed measurement %x", block[:snp.DigestSize], measurement)
		}
		if !bytes.Equal(block[0x30:0x40], bytes.Repeat([]byte{0xab}, 16)) {
			t.Errorf("family ID %x", block[0x30:0x40])
		}
		if _, err := snp.VerifyIDBlock(block, auth); err != nil {
			t.Errorf("author %v: %v", author, err)
		}
	}
	code, _, stderr := runCLI(t, "measure", "--mode", "snp", "--ovmf", fixtureOVMF, "--vcpus", "1", "--vcpu-type", "EPYC-v4",
		"--id-key", fixtureIDKey, "--policy", "0x10000", "--id-block-out", blockOut, "--id-auth-out", authOut)
	if code != 1 || !strings.Contains(stderr, "guest policy 0x10000") {
		t.Errorf("policy without reserved bit 17: exit %d, %s", code, stderr)
	}
}

// TestImageBuildReference builds an image with --firmware and checks that
// reference.json holds what `contrast measure` prints for the image's files,
// for each vCPU count, and that a rebuild gives the same bytes. The image
// has a root disk: the launch has no initrd, the command line carries the
// disk's root hash.
func TestImageBuildReference(t *testing.T) {
	dir := t.TempDir()
	kernel, static := imageInputs(t, dir, "6.12.0-ref")
	out := filepath.Join(dir, "image")
	args := []string{"image", "build", "--kernel", kernel, "--agent", static, "--runc", static, "-o", out,
		"--firmware", fixtureOVMF, "--vcpus-max", "3", "--vcpu-type", "EPYC-Genoa"}
	code, stdout, stderr := runCLI(t, args...)
	if code != 0 || !strings.Contains(stdout, "reference measurements "+filepath.Join(out, "reference.json")) ||
		!strings.Contains(stdout, "EPYC-Genoa, 1-3 vCPUs") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	first, err := os.ReadFile(filepath.Join(out, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := vmimage.LoadReference(out)
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		code, stdout, stderr := runCLI(t, "measure", "--mode", "snp", "--ovmf", fixtureOVMF,
			"--kernel", filepath.Join(out, "kernel"), "--append", ref.KernelCmdline,
			"--vcpus", strconv.Itoa(n), "--vcpu-type", "EPYC-Genoa")
		if code != 0 {
			t.Fatalf("measure: %s", stderr)
		}
		want, ok := ref.Measurement(n)
		if !ok || strings.TrimSpace(stdout) != hex.EncodeToString(want[:]) {
			t.Errorf("%d vCPUs: contrast measure says %s, reference.json %x", n, stdout, want)
		}
	}
	// A range prints one line per count, from the files and from the
	// reference alike.
	code, fromFiles, stderr := runCLI(t, "measure", "--mode", "snp", "--ovmf", fixtureOVMF,
		"--kernel", filepath.Join(out, "kernel"), "--append", ref.KernelCmdline, "--vcpus", "2-3", "--vcpu-type", "EPYC-Genoa")
	if code != 0 {
		t.Fatalf("measure --vcpus 2-3: %s", stderr)
	}
	code, fromRef, stderr := runCLI(t, "measure", "--reference", out, "--vcpus", "2-3")
	m2, _ := ref.Measurement(2)
	m3, _ := ref.Measurement(3)
	if want := fmt.Sprintf("2 %x\n3 %x\n", m2, m3); code != 0 || fromFiles != want || fromRef != want {
		t.Errorf("--vcpus 2-3: from the files %q, from the reference %q (exit %d, %s); want %q", fromFiles, fromRef, code, stderr, want)
	}
	if code, _, stderr := runCLI(t, "measure", "--reference", out, "--vcpus", "4"); code != 1 || !strings.Contains(stderr, "outside the reference's 1-3") {
		t.Errorf("--reference --vcpus 4 of a 1-3 reference: exit %d, %s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "measure", "--reference", out, "--ovmf", fixtureOVMF); code != 2 || !strings.Contains(stderr, "--reference takes only") {
		t.Errorf("--reference with --ovmf: exit %d, %s", code, stderr)
	}

	// Rebuilding elsewhere gives the same reference.json.
	args[9] = filepath.Join(dir, "image2")
	if code, _, stderr := runCLI(t, args...); code != 0 {
		t.Fatalf("second build: %s", stderr)
	}
	second, err := os.ReadFile(filepath.Join(dir, "image2", "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("reference.json differs between builds:\n%s\n%s", first, second)
	}

	// Without --firmware: none, and stderr says so.
	code, _, stderr = runCLI(t, "image", "build", "--kernel", kernel, "--agent", static, "--runc", static, "-o", filepath.Join(dir, "image3"))
	if code != 0 || !strings.Contains(stderr, "no --firmware given: no SEV-SNP reference measurements (reference.json) written") {
		t.Errorf("exit %d, stderr %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "image3", "reference.json")); !os.IsNotExist(err) {
		t.Errorf("reference.json written without --firmware: %v", err)
	}

	for _, tc := range []struct {
		extra []string
		code  int
		want  string
	}{
		{[]string{"--vcpus-max", "4"}, 2, "--vcpus-max, --vcpu-type and --bundle-firmware need --firmware"},
		{[]string{"--bundle-firmware"}, 2, "--vcpus-max, --vcpu-type and --bundle-firmware need --firmware"},
		{[]string{"--firmware", fixtureOVMF, "--vcpu-type", "Skylake"}, 2, `unknown vCPU type "Skylake"`},
		{[]string{"--firmware", fixtureOVMF, "--vcpus-max", "0"}, 2, "--vcpus-max 0"},
		{[]string{"--firmware", fixtureOVMFX64}, 1, "no SNP_KERNEL_HASHES section"},
	} {
		args := append([]string{"image", "build", "--kernel", kernel, "--agent", static, "--runc", static, "-o", filepath.Join(dir, "bad")}, tc.extra...)
		code, _, stderr := runCLI(t, args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %s; want %d and %q", tc.extra, code, stderr, tc.code, tc.want)
		}
		if _, err := os.Stat(filepath.Join(dir, "bad")); !os.IsNotExist(err) {
			t.Errorf("%q: failed build left its output: %v", tc.extra, err)
		}
	}
}

// TestMeasureReleaseImage checks the release image `make image` built with
// the AmdSev firmware of hack/ovmf.sh: its OVMF.fd is the firmware
// reference.json names, passes the SNP metadata checks, and `contrast
// measure` on the firmware and kernel prints, for every vCPU count, the
// measurement the reference gives (computed from its recorded metadata).
func TestMeasureReleaseImage(t *testing.T) {
	dir := testenv.Path(t, "CONTRAST_IMAGE", "image", "the release guest image")
	fwPath := testenv.Firmware(t)
	ref, err := vmimage.LoadReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := os.ReadFile(fwPath)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(fw); hex.EncodeToString(sum[:]) != ref.Firmware.SHA256 || int64(len(fw)) != ref.Firmware.Size {
		t.Fatalf("%s: sha256 %x (%d bytes), reference.json names %s (%d bytes)", fwPath, sum, len(fw), ref.Firmware.SHA256, ref.Firmware.Size)
	}
	parsed, err := snp.ParseFirmware(fw)
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.CheckDirectBoot(); err != nil {
		t.Fatal(err)
	}
	if ref.VCPUs != (vmimage.VCPURange{Min: 1, Max: vmimage.DefaultMaxVCPUs}) {
		t.Errorf("release reference accepts %s vCPUs, want 1-%d", ref.VCPUs, vmimage.DefaultMaxVCPUs)
	}
	span := ref.VCPUs.String()
	code, fromFiles, stderr := runCLI(t, "measure", "--mode", "snp", "--ovmf", fwPath, "--kernel", filepath.Join(dir, vmimage.KernelFile),
		"--append", ref.KernelCmdline, "--vcpu-type", ref.VCPUType, "--vcpus", span)
	if code != 0 {
		t.Fatalf("measure from the files: %s", stderr)
	}
	code, fromRef, stderr := runCLI(t, "measure", "--reference", dir)
	if code != 0 {
		t.Fatalf("measure --reference: %s", stderr)
	}
	if lines := strings.Count(fromRef, "\n"); fromFiles != fromRef || lines != ref.VCPUs.Max {
		t.Fatalf("from the files:\n%s\nfrom reference.json (%d lines):\n%s", fromFiles, lines, fromRef)
	}
	t.Logf("firmware %s, %d vCPU counts agree; 1 to 3 vCPUs:\n%s", ref.Firmware.SHA256, ref.VCPUs.Max, strings.Join(strings.Split(fromRef, "\n")[:3], "\n"))
}
