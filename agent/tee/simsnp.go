//go:build contrast_simsnp

package tee

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
)

// The fw_cfg items the launch sets for the simulated device (see api/agent):
// the HOSTDATA, and the launch MEASUREMENT to report (what SNP firmware would
// have computed from the firmware, kernel, initrd and command line; without
// it the device reports zeros).
const (
	HostDataFwCfgName    = api.FwCfgHostData
	MeasurementFwCfgName = api.FwCfgLaunchMeasurement
)

// DefaultFwCfgRoot is where the kernel (CONFIG_FW_CFG_SYSFS) shows fw_cfg.
const DefaultFwCfgRoot = "/sys/firmware/qemu_fw_cfg"

// simCertTime is when the simulated device's certificates begin to be
// valid: fixed, so that every boot presents the same chain.
var simCertTime = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// SimulatedSNP stands in for SEV-SNP hardware in test images: it takes
// HOSTDATA from QEMU fw_cfg and signs SNP reports with go-sev-guest's
// test-only key chain, so everything above it runs as on SNP while a
// verifier that trusts only AMD's roots rejects its reports.
type SimulatedSNP struct {
	// FwCfgRoot is the sysfs directory of QEMU's fw_cfg device.
	FwCfgRoot string

	mu     sync.Mutex         // guards signer and signing
	signer *sevtest.AmdSigner // made on first use: signing a chain takes a while under TCG
}

var _ TEE = (*SimulatedSNP)(nil)

// detectSimulated returns the simulated device if the launch configured
// HOSTDATA in fw_cfg, and nil if it did not.
func detectSimulated(ctx context.Context) (TEE, error) {
	return detectSimulatedAt(ctx, DefaultFwCfgRoot)
}

func detectSimulatedAt(ctx context.Context, fwCfgRoot string) (TEE, error) {
	s := &SimulatedSNP{FwCfgRoot: fwCfgRoot}
	if _, err := os.Stat(s.hostDataPath()); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	// A malformed value is a broken launch: say so now, not at SetPolicy.
	if _, err := s.HostData(ctx); err != nil {
		return nil, err
	}
	if _, err := s.Measurement(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *SimulatedSNP) hostDataPath() string { return s.fwCfgPath(HostDataFwCfgName) }

func (s *SimulatedSNP) fwCfgPath(name string) string {
	return filepath.Join(s.FwCfgRoot, "by_name", filepath.FromSlash(name), "raw")
}

// Name is NameSNPSimulated.
func (*SimulatedSNP) Name() string { return NameSNPSimulated }

// HostData reads HOSTDATA from fw_cfg.
func (s *SimulatedSNP) HostData(context.Context) ([32]byte, error) {
	var hd [32]byte
	raw, err := os.ReadFile(s.hostDataPath())
	if err != nil {
		return hd, fmt.Errorf("simulated SNP: read HOSTDATA from fw_cfg: %w", err)
	}
	if err := decodeFwCfgHex(HostDataFwCfgName, raw, hd[:]); err != nil {
		return hd, err
	}
	return hd, nil
}

// Measurement reads the launch MEASUREMENT from fw_cfg: zero when the
// launch configured none.
func (s *SimulatedSNP) Measurement(context.Context) ([abi.MeasurementSize]byte, error) {
	var m [abi.MeasurementSize]byte
	raw, err := os.ReadFile(s.fwCfgPath(MeasurementFwCfgName))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("simulated SNP: read MEASUREMENT from fw_cfg: %w", err)
	}
	if err := decodeFwCfgHex(MeasurementFwCfgName, raw, m[:]); err != nil {
		return m, err
	}
	return m, nil
}

// decodeFwCfgHex decodes the fw_cfg item name, which must be exactly
// 2*len(dst) lower-case hex characters, into dst.
func decodeFwCfgHex(name string, raw, dst []byte) error {
	text := string(raw)
	if len(text) != 2*len(dst) || strings.ToLower(text) != text {
		return fmt.Errorf("simulated SNP: fw_cfg %s holds %q: want exactly %d lower-case hex characters", name, truncate(text, 80), 2*len(dst))
	}
	if _, err := hex.Decode(dst, raw); err != nil {
		return fmt.Errorf("simulated SNP: fw_cfg %s: %w", name, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Report builds an SNP report (version 2, go-sev-guest abi layout) with the
// fw_cfg HOSTDATA and MEASUREMENT and reportData, signs it with the test
// VCEK and appends
// the test certificate table (ARK, ASK, VCEK, ...) and the platform info a
// verifier needs to pick the product.
func (s *SimulatedSNP) Report(ctx context.Context, reportData [64]byte) ([]byte, error) {
	hd, err := s.HostData(ctx)
	if err != nil {
		return nil, err
	}
	measurement, err := s.Measurement(ctx)
	if err != nil {
		return nil, err
	}
	// go-sev-guest's test signer draws from one unsynchronized random
	// source: sign one report at a time.
	s.mu.Lock()
	defer s.mu.Unlock()
	signer, err := s.chainLocked()
	if err != nil {
		return nil, err
	}
	report := &spb.Report{
		Version:         2,
		Policy:          abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true}),
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		ReportData:      reportData[:],
		Measurement:     measurement[:],
		HostData:        hd[:],
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        make([]byte, abi.ReportIDSize),
		ReportIdMa:      make([]byte, abi.ReportIDMASize),
		ChipId:          signer.HWID[:],
		Signature:       make([]byte, abi.SignatureSize),
		CurrentTcb:      uint64(signer.TCB),
		ReportedTcb:     uint64(signer.TCB),
		CommittedTcb:    uint64(signer.TCB),
		LaunchTcb:       uint64(signer.TCB),
	}
	raw, err := abi.ReportToAbiBytes(report)
	if err != nil {
		return nil, fmt.Errorf("simulated SNP: encode report: %w", err)
	}
	r, sig, err := signer.Sign(abi.SignedComponent(raw))
	if err != nil {
		return nil, fmt.Errorf("simulated SNP: sign report: %w", err)
	}
	if err := abi.SetSignature(r, sig, raw); err != nil {
		return nil, fmt.Errorf("simulated SNP: sign report: %w", err)
	}
	certs, err := signer.CertTableBytes()
	if err != nil {
		return nil, fmt.Errorf("simulated SNP: certificate table: %w", err)
	}
	certs, err = abi.ExtendPlatformCertTable(certs, &abi.ExtraPlatformInfo{
		Size:      abi.ExtraPlatformInfoV0Size,
		Cpuid1Eax: abi.MaskedCpuid1EaxFromSevProduct(simProduct()),
	})
	if err != nil {
		return nil, fmt.Errorf("simulated SNP: certificate table: %w", err)
	}
	return append(raw, certs...), nil
}

// simProduct is the processor the simulated device claims to be.
func simProduct() *spb.SevProduct { return abi.DefaultSevProduct() }

// chainLocked returns the test-only AMD key chain, made once; s.mu is held.
func (s *SimulatedSNP) chainLocked() (*sevtest.AmdSigner, error) {
	if s.signer != nil {
		return s.signer, nil
	}
	signer, err := sevtest.DefaultTestOnlyCertChain(kds.ProductName(simProduct()), simCertTime)
	if err != nil {
		return nil, fmt.Errorf("simulated SNP: test certificate chain: %w", err)
	}
	s.signer = signer
	return signer, nil
}
