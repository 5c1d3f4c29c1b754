//go:build contrast_simsnp

package attest

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/contrast-vm/contrast/agent/tee"
	"github.com/google/go-sev-guest/abi"
)

// TestSimulatedDevice verifies reports of the agent's simulated SNP device
// (test images only), launched with HOSTDATA and MEASUREMENT in fw_cfg as
// the QEMU backend sets them: they pass against the test chain and the
// launch's values, and fail the signature against AMD's roots.
func TestSimulatedDevice(t *testing.T) {
	measurement := [48]byte{0xaa, 47: 0x55}
	policyHash := [32]byte{0xbb, 31: 0x66}
	root := t.TempDir()
	for name, value := range map[string][]byte{tee.HostDataFwCfgName: policyHash[:], tee.MeasurementFwCfgName: measurement[:]} {
		dir := filepath.Join(root, "by_name", filepath.FromSlash(name))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "raw"), []byte(hex.EncodeToString(value)), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	dev := &tee.SimulatedSNP{FwCfgRoot: root}
	nonce := [64]byte{1, 2, 3}
	raw, err := dev.Report(context.Background(), nonce)
	if err != nil {
		t.Fatal(err)
	}
	report, certs := raw[:abi.ReportSize], raw[abi.ReportSize:]
	opts := Options{
		References:    []Reference{{Measurement: measurement}},
		HostData:      &policyHash,
		ReportData:    &nonce,
		TrustedChains: []Chain{testChain(t).chain},
	}
	res, err := Verify(report, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, nil)

	opts.TrustedChains = nil
	res, err = Verify(report, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, map[string]want{CheckSignature: {Fail, "trusted: AMD's roots"}})
}
