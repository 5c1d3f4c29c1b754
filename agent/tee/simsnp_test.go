//go:build contrast_simsnp

package tee

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// fakeFwCfg writes a fw_cfg sysfs tree with the HOSTDATA item holding
// value, as the kernel shows `-fw_cfg name=opt/io.contrast/hostdata,string=value`.
func fakeFwCfg(t *testing.T, value string) string {
	t.Helper()
	root := t.TempDir()
	addFwCfg(t, root, HostDataFwCfgName, value)
	return root
}

// addFwCfg adds the item name to the fw_cfg sysfs tree at root.
func addFwCfg(t *testing.T, root, name, value string) {
	t.Helper()
	dir := filepath.Join(root, "by_name", filepath.FromSlash(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "raw"), []byte(value), 0o444); err != nil {
		t.Fatal(err)
	}
}

const measurementHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestSimulatedMeasurement checks the MEASUREMENT the device reports: the
// fw_cfg item when the launch set it, zeros when not, and a malformed item
// refused when the device is detected.
func TestSimulatedMeasurement(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		value   *string // nil: no item
		want    string
		wantErr string
	}{
		{name: "set", value: ptr(measurementHex), want: measurementHex},
		{name: "absent", want: strings.Repeat("00", abi.MeasurementSize)},
		{name: "short", value: ptr(measurementHex[:94]), wantErr: "exactly 96"},
		{name: "upper case", value: ptr(strings.ToUpper(measurementHex)), wantErr: "lower-case hex"},
		{name: "not hex", value: ptr("zz" + measurementHex[2:]), wantErr: "invalid byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeFwCfg(t, hostDataHex)
			if tc.value != nil {
				addFwCfg(t, root, MeasurementFwCfgName, *tc.value)
			}
			got, err := detectSimulatedAt(ctx, root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), MeasurementFwCfgName) {
					t.Fatalf("detect: %v, want an error naming %s and containing %q", err, MeasurementFwCfgName, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			raw, err := got.Report(ctx, [64]byte{})
			if err != nil {
				t.Fatal(err)
			}
			att, err := abi.ReportCertsToProto(raw)
			if err != nil {
				t.Fatal(err)
			}
			if m := hex.EncodeToString(att.Report.Measurement); m != tc.want {
				t.Errorf("report MEASUREMENT %s, want %s", m, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

const hostDataHex = "00112233445566778899aabbccddeeff0123456789abcdef0011223344556677"

func TestSimulatedHostData(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, value string
		wantErr     string
	}{
		{"good", hostDataHex, ""},
		{"upper case", strings.ToUpper(hostDataHex), "lower-case hex"},
		{"trailing newline", hostDataHex + "\n", "exactly 64"},
		{"short", hostDataHex[:62], "exactly 64"},
		{"not hex", "zz" + hostDataHex[2:], "invalid byte"},
		{"empty", "", "exactly 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := detectSimulatedAt(ctx, fakeFwCfg(t, tc.value))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("detect: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || got.Name() != NameSNPSimulated {
				t.Fatalf("detect: %v, want the simulated device", got)
			}
			hd, err := got.HostData(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if h := hex.EncodeToString(hd[:]); h != hostDataHex {
				t.Errorf("HOSTDATA %s, want %s", h, hostDataHex)
			}
		})
	}
}

func TestSimulatedNotConfigured(t *testing.T) {
	for name, root := range map[string]string{
		"no fw_cfg device": filepath.Join(t.TempDir(), "absent"),
		"no HOSTDATA item": t.TempDir(),
	} {
		got, err := detectSimulatedAt(context.Background(), root)
		if err != nil || got != nil {
			t.Errorf("%s: detect = %v, %v; want no TEE", name, got, err)
		}
	}
}

// TestSimulatedReport checks that the report parses with go-sev-guest,
// carries HOSTDATA and REPORT_DATA, and verifies against the test roots
// (and only against them: AMD's real roots reject it).
func TestSimulatedReport(t *testing.T) {
	ctx := context.Background()
	s := &SimulatedSNP{FwCfgRoot: fakeFwCfg(t, hostDataHex)}
	var nonce [64]byte
	copy(nonce[:], "a verifier's nonce")
	raw, err := s.Report(ctx, nonce)
	if err != nil {
		t.Fatal(err)
	}
	att, err := abi.ReportCertsToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	if h := hex.EncodeToString(att.Report.HostData); h != hostDataHex {
		t.Errorf("report HOSTDATA %s, want %s", h, hostDataHex)
	}
	if !bytes.Equal(att.Report.ReportData, nonce[:]) {
		t.Errorf("report REPORT_DATA %x, want %x", att.Report.ReportData, nonce)
	}
	hd, err := hostDataOf(raw)
	if err != nil || hex.EncodeToString(hd[:]) != hostDataHex {
		t.Errorf("hostDataOf: %x, %v", hd, err)
	}

	s.mu.Lock()
	signer, err := s.chainLocked()
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	line := kds.ProductLine(simProduct())
	testRoots := map[string][]*trust.AMDRootCerts{line: {{
		Product: line, ProductLine: line,
		ProductCerts: &trust.ProductCerts{Ark: signer.Ark, Ask: signer.Ask, Asvk: signer.Asvk},
	}}}
	if err := verify.SnpAttestation(att, &verify.Options{TrustedRoots: testRoots, DisableCertFetching: true}); err != nil {
		t.Errorf("verify against the test roots: %v", err)
	}
	if err := verify.SnpAttestation(att, &verify.Options{DisableCertFetching: true}); err == nil {
		t.Error("verify against AMD's roots accepted a simulated report")
	}
	// A changed HOSTDATA breaks the signature.
	tampered := bytes.Clone(raw)
	tampered[0xC0] ^= 1
	tatt, err := abi.ReportCertsToProto(tampered)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.SnpAttestation(tatt, &verify.Options{TrustedRoots: testRoots, DisableCertFetching: true}); err == nil {
		t.Error("verify accepted a report whose HOSTDATA was changed after signing")
	}
}

// TestSimulatedReportsConcurrently makes reports from several goroutines
// (run with -race): each verifies.
func TestSimulatedReportsConcurrently(t *testing.T) {
	s := &SimulatedSNP{FwCfgRoot: fakeFwCfg(t, hostDataHex)}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			var nonce [64]byte
			nonce[0] = byte(i)
			raw, err := s.Report(context.Background(), nonce)
			if err != nil {
				t.Error(err)
				return
			}
			att, err := abi.ReportCertsToProto(raw)
			if err != nil {
				t.Error(err)
				return
			}
			if att.Report.ReportData[0] != byte(i) {
				t.Errorf("report %d carries REPORT_DATA %x", i, att.Report.ReportData[:1])
			}
		})
	}
	wg.Wait()
}
