package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/google/go-sev-guest/abi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ReportDataSize is the size of the caller's data (a verifier's nonce) that
// a report carries verbatim in REPORT_DATA.
const ReportDataSize = abi.ReportDataSize

// errNoTEE is the answer of a VM that has nothing to attest with.
var errNoTEE = errors.New("no TEE: this pod VM cannot attest")

// attestationReport is a report as the TEE returned it, split into the
// signed report and the certificate table that came with it.
type attestationReport struct {
	tee    string
	report []byte
	certs  []byte
}

// badReportDataError is reportData of the wrong size: the caller's mistake.
type badReportDataError struct{ size int }

func (e badReportDataError) Error() string {
	return fmt.Sprintf("report data is %d bytes, want exactly %d", e.size, ReportDataSize)
}

// getAttestationReport asks t for a report carrying reportData. Its errors
// are errNoTEE, a badReportDataError, or the TEE's failure.
func getAttestationReport(ctx context.Context, t tee.TEE, reportData []byte) (*attestationReport, error) {
	if len(reportData) != ReportDataSize {
		return nil, badReportDataError{len(reportData)}
	}
	if t == nil {
		return nil, errNoTEE
	}
	raw, err := t.Report(ctx, [ReportDataSize]byte(reportData))
	if err != nil {
		return nil, fmt.Errorf("%s TEE: %w", t.Name(), err)
	}
	if len(raw) < abi.ReportSize {
		return nil, fmt.Errorf("%s TEE: report is %d bytes, want at least %d", t.Name(), len(raw), abi.ReportSize)
	}
	// The TEE appends the certificate table to the report (see tee.TEE).
	return &attestationReport{
		tee:    t.Name(),
		report: raw[:abi.ReportSize:abi.ReportSize],
		certs:  raw[abi.ReportSize:],
	}, nil
}

// GetReport returns a fresh attestation report bound to the caller's nonce (see api.AgentService). The policy gate has decided it already.
//
// The report carries api.HostReportData of the host's nonce, never the
// nonce itself: REPORT_DATA of the host's choosing could pass for what a
// workload's report asserts (see api.HostReportDataPrefix).
func (s *Service) GetReport(ctx context.Context, req *api.GetReportRequest) (*api.GetReportResponse, error) {
	if len(req.ReportData) != ReportDataSize {
		return nil, invalid("get report: %v", badReportDataError{len(req.ReportData)})
	}
	data := api.HostReportData(req.ReportData)
	r, err := getAttestationReport(ctx, s.cfg.TEE, data[:])
	var bad badReportDataError
	switch {
	case errors.As(err, &bad):
		return nil, invalid("get report: %v", err)
	case errors.Is(err, errNoTEE):
		return nil, precondition("get report: %v", err)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "get report: %v", err)
	}
	return &api.GetReportResponse{Report: r.report, Certs: r.certs, Tee: r.tee}, nil
}
