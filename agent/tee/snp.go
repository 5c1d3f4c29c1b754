package tee

import (
	"context"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
)

// SNP is AMD SEV-SNP hardware, reached through go-sev-guest's quote
// provider (configfs-tsm, else the /dev/sev-guest ioctls).
type SNP struct {
	quotes client.QuoteProvider
}

var _ TEE = (*SNP)(nil)

func openSNP(ctx context.Context) (*SNP, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	qp, err := client.GetQuoteProvider()
	if err != nil {
		return nil, fmt.Errorf("open SEV-SNP quote provider: %w", err)
	}
	return &SNP{quotes: qp}, nil
}

// Name is NameSNP.
func (*SNP) Name() string { return NameSNP }

// HostData reads HOSTDATA from a fresh attestation report.
func (s *SNP) HostData(ctx context.Context) ([32]byte, error) {
	var zero [64]byte
	raw, err := s.Report(ctx, zero)
	if err != nil {
		return [32]byte{}, fmt.Errorf("read HOSTDATA: %w", err)
	}
	return hostDataOf(raw)
}

// Report asks the AMD secure processor for a signed attestation report.
func (s *SNP) Report(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := s.quotes.GetRawQuote(reportData)
	if err != nil {
		return nil, fmt.Errorf("get SEV-SNP attestation report: %w", err)
	}
	if len(raw) < abi.ReportSize {
		return nil, fmt.Errorf("SEV-SNP attestation report is %d bytes, want at least %d", len(raw), abi.ReportSize)
	}
	return raw, nil
}

// hostDataOf parses a raw report (with or without a certificate table) and
// returns its HOSTDATA.
func hostDataOf(raw []byte) ([32]byte, error) {
	var hd [32]byte
	if len(raw) < abi.ReportSize {
		return hd, fmt.Errorf("attestation report is %d bytes, want at least %d", len(raw), abi.ReportSize)
	}
	report, err := abi.ReportToProto(raw[:abi.ReportSize])
	if err != nil {
		return hd, fmt.Errorf("parse attestation report: %w", err)
	}
	if len(report.HostData) != len(hd) {
		return hd, fmt.Errorf("attestation report: HOSTDATA is %d bytes, want %d", len(report.HostData), len(hd))
	}
	copy(hd[:], report.HostData)
	return hd, nil
}
