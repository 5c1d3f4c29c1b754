package vmimage

import (
	"bytes"
	"context"
	"encoding/hex"
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
	if ref.VCPUType != "EPYC-v4" || ref.VCPUSignature != 0x800f12 || ref.GuestFeatures != 0x1 || len(ref.Measurements) != 3 {
		t.Errorf("reference %+v: want EPYC-v4 (0x800f12), features 0x1, 3 measurements", ref)
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
		t.Errorf("a measurement for 4 vCPUs, only 1 to 3 were asked for")
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

func TestParseReference(t *testing.T) {
	good := func() map[string]any {
		return map[string]any{
			"schema":        1,
			"firmware":      map[string]any{"size": 4096, "sha256": strings.Repeat("a", 64)},
			"kernelSHA256":  strings.Repeat("b", 64),
			"initrdSHA256":  strings.Repeat("c", 64),
			"kernelCmdline": "console=ttyS0",
			"vcpuType":      "EPYC-Milan",
			"vcpuSignature": "0xa00f11",
			"guestFeatures": "0x1",
			"measurements": []any{
				map[string]any{"vcpus": 1, "measurement": strings.Repeat("d", 96)},
				map[string]any{"vcpus": 2, "measurement": strings.Repeat("e", 96)},
			},
		}
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
	if m, ok := r.Measurement(2); !ok || hex.EncodeToString(m[:]) != strings.Repeat("e", 96) {
		t.Errorf("Measurement(2) = %x, %v", m, ok)
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

	for _, tc := range []struct {
		name   string
		change func(v map[string]any)
		want   string
	}{
		{"schema", func(v map[string]any) { v["schema"] = 2 }, "schema 2"},
		{"unknown field", func(v map[string]any) { v["extra"] = 1 }, `unknown field "extra"`},
		{"firmware digest", func(v map[string]any) { v["firmware"] = map[string]any{"size": 1, "sha256": "xyz"} }, "firmware sha256"},
		{"upper-case digest", func(v map[string]any) { v["kernelSHA256"] = strings.Repeat("B", 64) }, "kernelSHA256"},
		{"signature of another type", func(v map[string]any) { v["vcpuSignature"] = "0x800f12" }, "is not that of vCPU type EPYC-Milan"},
		{"signature as number", func(v map[string]any) { v["vcpuSignature"] = 8392466 }, `want a hex string like "0x1"`},
		{"unknown vcpu type", func(v map[string]any) { v["vcpuType"] = "Icelake" }, `unknown vCPU type "Icelake"`},
		{"no measurements", func(v map[string]any) { v["measurements"] = []any{} }, "no measurements"},
		{"repeated vcpu count", func(v map[string]any) {
			v["measurements"] = []any{
				map[string]any{"vcpus": 2, "measurement": strings.Repeat("d", 96)},
				map[string]any{"vcpus": 2, "measurement": strings.Repeat("e", 96)},
			}
		}, "out of order or repeated"},
		{"short measurement", func(v map[string]any) {
			v["measurements"] = []any{map[string]any{"vcpus": 1, "measurement": "dd"}}
		}, "is not 96 lower-case hex digits"},
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
	ref.Measurements = nil
	if err := WriteReference(p, ref); err == nil || !strings.Contains(err.Error(), "no measurements") {
		t.Errorf("WriteReference of no measurements: %v", err)
	}
}
