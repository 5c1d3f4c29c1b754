package vmimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/vmimage/snp"
)

// testFirmware is the last page of an OVMF AmdSevX64 build, which measures
// like a one-page firmware (see snp/testdata/README.md).
const testFirmware = "snp/testdata/ovmf_AmdSev_suffix.bin"

func TestBuildReference(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t)
	opts.Reference = &ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 3}
	res, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := LoadReference(res.Image.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if ref.VCPUType != "EPYC-v4" || ref.VCPUSignature != 0x800f12 || ref.GuestFeatures != 0x1 || ref.VCPUs != (VCPURange{1, 3}) {
		t.Errorf("reference %+v: want EPYC-v4 (0x800f12), features 0x1, vCPUs 1-3", ref)
	}
	if ref.KernelCmdline != res.Image.KernelCmdline() {
		t.Errorf("cmdline %q, the image's is %q", ref.KernelCmdline, res.Image.KernelCmdline())
	}

	// Each measurement is what the calculator gives for the image's files
	// as QEMU would be handed them.
	fw, err := os.ReadFile(testFirmware)
	if err != nil {
		t.Fatal(err)
	}
	kh, err := snp.HashKernelFiles(res.Image.Kernel(), res.Image.Initrd(), res.Image.KernelCmdline())
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		want, err := snp.Measure(snp.Launch{Firmware: fw, Kernel: kh, VCPUs: n, VCPUType: "EPYC-v4", GuestFeatures: 1})
		if err != nil {
			t.Fatal(err)
		}
		got, ok := ref.Measurement(n)
		if !ok || got != want {
			t.Errorf("%d vCPUs: %x, want %x", n, got, want)
		}
		if v, ok := ref.Match(want); !ok || v != n {
			t.Errorf("Match(%d vCPUs' measurement) = %d, %v", n, v, ok)
		}
	}
	if _, ok := ref.Measurement(4); ok {
		t.Errorf("a measurement for 4 vCPUs, only 1 to 3 are allowed")
	}
	if _, ok := ref.Match([snp.DigestSize]byte{}); ok {
		t.Errorf("the zero measurement matches")
	}

	// Same inputs, same bytes.
	first, err := os.ReadFile(filepath.Join(res.Image.Dir, ReferenceFile))
	if err != nil {
		t.Fatal(err)
	}
	opts2 := opts
	opts2.OutDir = filepath.Join(t.TempDir(), "image")
	res2, err := Build(ctx, opts2)
	if err != nil {
		t.Fatal(err)
	}
	second, err := os.ReadFile(filepath.Join(res2.Image.Dir, ReferenceFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("reference.json differs between two builds:\n%s\n%s", first, second)
	}

	// Rebuilding the same image leaves it alone; another vCPU type or no
	// firmware replaces reference.json or removes it.
	again, err := Build(ctx, opts)
	if err != nil || !again.Unchanged {
		t.Fatalf("rebuild: %+v, %v; want unchanged", again, err)
	}
	opts.Reference = &ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 3, VCPUType: "EPYC-Genoa"}
	genoa, err := Build(ctx, opts)
	if err != nil || genoa.Unchanged {
		t.Fatalf("rebuild for EPYC-Genoa: %+v, %v; want a new build", genoa, err)
	}
	if ref, err := LoadReference(genoa.Image.Dir); err != nil || ref.VCPUType != "EPYC-Genoa" {
		t.Errorf("after rebuild for EPYC-Genoa: %+v, %v", ref, err)
	}
	opts.Reference = nil
	plain, err := Build(ctx, opts)
	if err != nil || plain.Unchanged || plain.Reference != nil {
		t.Fatalf("rebuild without firmware: %+v, %v", plain, err)
	}
	if _, err := os.Stat(filepath.Join(plain.Image.Dir, ReferenceFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("reference.json left behind by a build without firmware: %v", err)
	}
	if _, err := LoadReference(plain.Image.Dir); err == nil || !strings.Contains(err.Error(), "has no reference.json") {
		t.Errorf("LoadReference without reference.json: %v", err)
	}
}

func TestBuildReferenceBadFirmware(t *testing.T) {
	for _, tc := range []struct {
		name string
		ref  ReferenceOptions
		want string
	}{
		{"missing", ReferenceOptions{Firmware: "/nonexistent/OVMF.fd"}, "no such file"},
		{"no kernel hashes", ReferenceOptions{Firmware: "snp/testdata/ovmf_OvmfX64_suffix.bin"}, "no SNP_KERNEL_HASHES section"},
		{"not a firmware", ReferenceOptions{Firmware: "snp/testdata/README.md"}, "firmware"},
		{"unknown vcpu type", ReferenceOptions{Firmware: testFirmware, VCPUType: "Skylake"}, `unknown vCPU type "Skylake" (known: EPYC`},
		{"too many vcpus", ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 5000}, "maximum vCPU count 5000"},
		{"corrupt metadata", ReferenceOptions{Firmware: corruptFirmware(t)}, "overlap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t)
			opts.Reference = &tc.ref
			_, err := Build(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if _, err := os.Stat(opts.OutDir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a failed build left %s: %v", opts.OutDir, err)
			}
			entries, _ := os.ReadDir(filepath.Dir(opts.OutDir))
			if len(entries) != 0 {
				t.Errorf("a failed build left %v", entries)
			}
		})
	}
}

// corruptFirmware is the fixture with its first SEV metadata section
// grown over the second.
func corruptFirmware(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(testFirmware)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := snp.ParseFirmware(b)
	if err != nil {
		t.Fatal(err)
	}
	first := fw.Sections[0]
	var entry [8]byte
	binary.LittleEndian.PutUint32(entry[:], first.GPA)
	binary.LittleEndian.PutUint32(entry[4:], first.Size)
	i := bytes.Index(b, entry[:])
	if i < 0 {
		t.Fatal("first section not found in the fixture")
	}
	binary.LittleEndian.PutUint32(b[i+4:], first.Size+2*snp.PageSize)
	p := filepath.Join(t.TempDir(), "corrupt.fd")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fixtureReference is the reference of a made-up image with the fixture
// firmware, as JSON values.
func fixtureReference(t *testing.T) map[string]any {
	t.Helper()
	opts := testOptions(t)
	opts.Reference = &ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 4, VCPUType: "EPYC-Milan"}
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := res.Reference.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	v["kernelSHA256"] = strings.Repeat("b", 64)
	v["initrdSHA256"] = strings.Repeat("c", 64)
	v["kernelCmdline"] = "console=ttyS0"
	return v
}

func TestParseReference(t *testing.T) {
	base := fixtureReference(t)
	good := func() map[string]any {
		// a deep copy
		b, _ := json.Marshal(base)
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	encode := func(v map[string]any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	r, err := ParseReference(encode(good()))
	if err != nil {
		t.Fatal(err)
	}
	if r.VCPUSignature != 0xa00f11 || r.GuestFeatures != 1 {
		t.Errorf("hex fields %#x %#x", uint64(r.VCPUSignature), uint64(r.GuestFeatures))
	}
	// The measurement the reference computes for 3 vCPUs is what the
	// calculator gives for the firmware image itself.
	fw, err := os.ReadFile(testFirmware)
	if err != nil {
		t.Fatal(err)
	}
	kh := &snp.KernelHashes{Cmdline: snp.CmdlineHash("console=ttyS0")}
	copy(kh.Kernel[:], bytes.Repeat([]byte{0xbb}, 32))
	copy(kh.Initrd[:], bytes.Repeat([]byte{0xcc}, 32))
	want, err := snp.Measure(snp.Launch{Firmware: fw, Kernel: kh, VCPUs: 3, VCPUType: "EPYC-Milan", GuestFeatures: 1})
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := r.Measurement(3); !ok || m != want {
		t.Errorf("Measurement(3) = %x, %v; want %x", m, ok, want)
	}
	if n, ok := r.Match(want); !ok || n != 3 {
		t.Errorf("Match = %d, %v; want 3", n, ok)
	}
	if _, err := r.Measurements(VCPURange{2, 5}); err == nil || !strings.Contains(err.Error(), "outside the reference's 1-4") {
		t.Errorf("Measurements(2-5) of a 1-4 reference: %v", err)
	}
	// What Marshal writes, ParseReference reads back the same.
	raw, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if r2, err := ParseReference(raw); err != nil {
		t.Errorf("re-read: %v", err)
	} else if raw2, _ := r2.Marshal(); !bytes.Equal(raw, raw2) {
		t.Errorf("round trip changed:\n%s\n%s", raw, raw2)
	}

	section := func(v map[string]any, i int) map[string]any {
		return v["firmware"].(map[string]any)["sections"].([]any)[i].(map[string]any)
	}
	for _, tc := range []struct {
		name   string
		change func(v map[string]any)
		want   string
	}{
		{"schema", func(v map[string]any) { v["schema"] = 1 }, "schema 1, this build reads schema 2"},
		{"unknown field", func(v map[string]any) { v["extra"] = 1 }, `unknown field "extra"`},
		{"old table", func(v map[string]any) { v["measurements"] = []any{} }, `unknown field "measurements"`},
		{"firmware digest", func(v map[string]any) { v["firmware"].(map[string]any)["sha256"] = "xyz" }, "firmware sha256"},
		{"pages digest", func(v map[string]any) { v["firmware"].(map[string]any)["pagesDigest"] = "ab" }, "pagesDigest"},
		{"upper-case digest", func(v map[string]any) { v["kernelSHA256"] = strings.Repeat("B", 64) }, "kernelSHA256"},
		{"signature of another type", func(v map[string]any) { v["vcpuSignature"] = "0x800f12" }, "is not that of vCPU type EPYC-Milan"},
		{"signature as number", func(v map[string]any) { v["vcpuSignature"] = 8392466 }, `want a hex string like "0x1"`},
		{"unknown vcpu type", func(v map[string]any) { v["vcpuType"] = "Icelake" }, `unknown vCPU type "Icelake"`},
		{"no vcpus", func(v map[string]any) { delete(v, "vcpus") }, "vcpus: vCPU counts 0 to 0"},
		{"vcpus reversed", func(v map[string]any) { v["vcpus"] = map[string]any{"min": 4, "max": 2} }, "vCPU counts 4 to 2"},
		{"no sections", func(v map[string]any) { v["firmware"].(map[string]any)["sections"] = []any{} }, "no SEV metadata"},
		{"unknown section type", func(v map[string]any) { section(v, 0)["type"] = "BOGUS" }, `unknown SEV metadata section type "BOGUS"`},
		{"section not pages", func(v map[string]any) { section(v, 0)["size"] = "0x10" }, "not whole pages"},
		{"section above 4 GiB", func(v map[string]any) { section(v, 0)["address"] = "0x100000000" }, "above 4 GiB"},
		{"no AP reset address", func(v map[string]any) { v["firmware"].(map[string]any)["apResetAddress"] = "0x0" }, "no AP start address"},
		{"hash table elsewhere", func(v map[string]any) {
			v["firmware"].(map[string]any)["hashTable"] = map[string]any{"address": "0x100", "size": "0x400"}
		}, "lies outside its SNP_KERNEL_HASHES section"},
		{"control character in cmdline", func(v map[string]any) { v["kernelCmdline"] = "a\nb" }, "control character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good()
			tc.change(v)
			_, err := ParseReference(encode(v))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseVCPURange(t *testing.T) {
	for in, want := range map[string]VCPURange{"3": {3, 3}, "1-64": {1, 64}, "2-2": {2, 2}} {
		if got, err := ParseVCPURange(in); err != nil || got != want {
			t.Errorf("ParseVCPURange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "a", "3-1", "1-5000", "-1", "1-2-3", "1,2"} {
		if got, err := ParseVCPURange(in); err == nil {
			t.Errorf("ParseVCPURange(%q) = %v, want an error", in, got)
		}
	}
}

func TestLoadReferenceOfAnotherImage(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t)
	opts.Reference = &ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 1}
	res, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(res.Image.Dir, ReferenceFile)
	ref, err := ReadReference(p)
	if err != nil {
		t.Fatal(err)
	}
	// reference.json of an image with another command line.
	ref.KernelCmdline = "console=ttyS0"
	if err := WriteReference(p, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadReference(res.Image.Dir); err == nil || !strings.Contains(err.Error(), "does not belong to this image: kernel command line") {
		t.Errorf("error %v, want a command line mismatch", err)
	}
	// WriteReference refuses what ReadReference would.
	ref.VCPUs = VCPURange{}
	if err := WriteReference(p, ref); err == nil || !strings.Contains(err.Error(), "vCPU counts 0 to 0") {
		t.Errorf("WriteReference of no vCPU counts: %v", err)
	}
}

// TestBuildBundlesFirmware checks ReferenceOptions.Bundle: the firmware is
// copied into the image beside reference.json, a rebuild leaves the image
// alone, and a build without Bundle takes the copy away.
func TestBuildBundlesFirmware(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t)
	opts.Reference = &ReferenceOptions{Firmware: testFirmware, MaxVCPUs: 2, Bundle: true}
	res, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(testFirmware)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(res.Image.Dir, FirmwareFile)); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("bundled firmware: %d bytes, %v; want the %d of %s", len(got), err, len(want), testFirmware)
	}
	if again, err := Build(ctx, opts); err != nil || !again.Unchanged {
		t.Fatalf("rebuild: %+v, %v; want unchanged", again, err)
	}
	opts.Reference.Bundle = false
	if res, err = Build(ctx, opts); err != nil || res.Unchanged {
		t.Fatalf("rebuild without bundle: %+v, %v; want a new build", res, err)
	}
	if _, err := os.Stat(filepath.Join(res.Image.Dir, FirmwareFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("firmware left in the image after a build without bundle: %v", err)
	}
}
