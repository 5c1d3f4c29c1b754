package tee

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

func TestHostDataOf(t *testing.T) {
	want := [32]byte{1, 2, 3, 31: 0xff}
	raw, err := abi.ReportToAbiBytes(&spb.Report{
		Version:         2,
		Policy:          abi.SnpPolicyToBytes(abi.SnpPolicy{}),
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		ReportData:      make([]byte, abi.ReportDataSize),
		Measurement:     make([]byte, abi.MeasurementSize),
		HostData:        want[:],
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        make([]byte, abi.ReportIDSize),
		ReportIdMa:      make([]byte, abi.ReportIDMASize),
		ChipId:          make([]byte, abi.ChipIDSize),
		Signature:       make([]byte, abi.SignatureSize),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		raw     []byte
		wantErr string
	}{
		{"report", raw, ""},
		{"report and certificate table", append(raw, make([]byte, 64)...), ""},
		{"short", raw[:abi.ReportSize-1], "want at least"},
		{"bad policy", func() []byte { r := slices.Clone(raw); r[0x08] = 0; r[0x0a] = 0; return r }(), "policy"},
	} {
		got, err := hostDataOf(tc.raw)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%s: %x, %v; want %x", tc.name, got, err, want)
		}
	}
}

func TestTSMProvider(t *testing.T) {
	if p, err := tsmProvider(filepath.Join(t.TempDir(), "absent")); p != "" || err != nil {
		t.Errorf("no configfs-tsm: %q, %v; want none", p, err)
	}
	// A directory that is not configfs: the entry lacks the provider file,
	// and the probe removes the entry it made.
	dir := t.TempDir()
	if p, err := tsmProvider(dir); err == nil || !strings.Contains(err.Error(), "provider") {
		t.Errorf("entry without a provider: %q, %v; want an error naming the provider file", p, err)
	}
	if left, _ := os.ReadDir(dir); len(left) > 0 {
		t.Errorf("probe entry left behind: %v", left)
	}
}

// TestDetectWithoutSNP runs where the host has no SEV-SNP guest interface
// (every machine of this project): Detect finds no TEE, with or without
// the simulated device compiled in, since nothing configured it.
func TestDetectWithoutSNP(t *testing.T) {
	for _, p := range []string{tsmReportDir, sevGuestDev} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("this machine has a TEE guest interface (%s)", p)
		}
	}
	got, err := Detect(context.Background())
	if err != nil || got != nil {
		t.Fatalf("Detect = %v, %v; want no TEE", got, err)
	}
}

// TestSimulatedDeviceOnlyInTaggedBuilds checks that a build without the
// contrast_simsnp tag contains neither the simulated device nor the test
// key chain it signs with.
func TestSimulatedDeviceOnlyInTaggedBuilds(t *testing.T) {
	// go test puts its own GOROOT/bin first on the test's PATH.
	const gobin = "go"
	list := func(tags string, args ...string) string {
		t.Helper()
		cmd := exec.Command(gobin, append([]string{"list", "-tags=" + tags}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		return string(out)
	}
	const agent = "github.com/contrast-vm/contrast/cmd/contrast-agent"
	const testKeys = "github.com/google/go-sev-guest/testing"
	for _, tc := range []struct {
		tags string
		want bool
	}{{"", false}, {"contrast_simsnp", true}} {
		deps := strings.Fields(list(tc.tags, "-deps", agent))
		if got := slices.Contains(deps, testKeys); got != tc.want {
			t.Errorf("tags %q: the agent depends on %s: %v, want %v", tc.tags, testKeys, got, tc.want)
		}
		files := strings.Fields(list(tc.tags, "-f", `{{join .GoFiles " "}}`, "."))
		if got := slices.Contains(files, "simsnp.go"); got != tc.want {
			t.Errorf("tags %q: package files %v: simsnp.go included %v, want %v", tc.tags, files, got, tc.want)
		}
	}
}
