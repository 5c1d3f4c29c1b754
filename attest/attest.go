// Package attest verifies a pod VM's SEV-SNP attestation report: that AMD
// signed it, and that it names the launch (firmware, kernel, initrd,
// command line: the MEASUREMENT), the pod policy (HOSTDATA, its SHA-256) and
// the verifier's nonce (REPORT_DATA) the verifier expects. It is what
// `contrast verify` runs, and works offline: the AMD root keys are the ones
// go-sev-guest embeds (Milan, Genoa, Turin), and the chip's VCEK comes from
// the report's certificate table or the caller, never from the network.
//
// Verify runs every check and returns each one's outcome by name (Check*),
// so a failure says which property does not hold; a check whose expected
// value was not given is skipped, not passed.
//
// Trust: a report verifies only against AMD's roots unless
// Options.TrustedChains names others. That exists for go-sev-guest's
// test-only key chain, which the simulated SNP device of test images signs
// with, and for pinning a chain from a file (AMD KDS cert_chain format):
// a report the simulated device signed never verifies against AMD's roots.
package attest

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// The checks, in the order Verify runs and reports them.
const (
	// CheckSignature: the VCEK chains to a trusted ARK through its ASK,
	// and the report's signature verifies with the VCEK.
	CheckSignature = "signature"
	// CheckMeasurement: MEASUREMENT is one of the reference values.
	CheckMeasurement = "measurement"
	// CheckHostData: HOSTDATA is the expected initdata digest.
	CheckHostData = "host_data"
	// CheckReportData: REPORT_DATA is the verifier's nonce.
	CheckReportData = "report_data"
	// CheckDebug: the guest policy forbids debugging the VM.
	CheckDebug = "debug"
	// CheckTCB: the reported TCB is the VCEK's, firmware is committed, the
	// CHIP_ID is the VCEK's, and the TCB is at least the minimum.
	CheckTCB = "tcb"
)

// Checks lists every check by name, in the order Verify reports them.
var Checks = []string{CheckSignature, CheckMeasurement, CheckHostData, CheckReportData, CheckDebug, CheckTCB}

// Status is a check's outcome.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "fail"
	// Skip: the expected value was not given, so nothing was checked.
	Skip Status = "skip"
)

// MeasurementSize is the size of a launch MEASUREMENT (SHA-384).
const MeasurementSize = abi.MeasurementSize

// Reference is an acceptable launch MEASUREMENT.
type Reference struct {
	Measurement [MeasurementSize]byte
	// Label says where the value comes from (for example "reference.json,
	// 2 vCPUs"); a passing check names it.
	Label string
}

// ParseMeasurement reads a MEASUREMENT in hex (96 digits).
func ParseMeasurement(s string) ([MeasurementSize]byte, error) {
	var m [MeasurementSize]byte
	if len(s) != 2*MeasurementSize {
		return m, fmt.Errorf("measurement %q is %d characters, want %d hex digits", truncate(s, 100), len(s), 2*MeasurementSize)
	}
	if _, err := hex.Decode(m[:], []byte(s)); err != nil {
		return m, fmt.Errorf("measurement %q: %w", truncate(s, 100), err)
	}
	return m, nil
}

// Options are what the report must show, and whom to trust.
type Options struct {
	// References are the acceptable MEASUREMENTs (one per vCPU count the
	// runtime may choose: the report does not say which it ran with).
	// None skips CheckMeasurement.
	References []Reference
	// HostData is the expected HOSTDATA: the digest of the pod's initdata
	// document, which carries its policy, cut to 32 bytes
	// (initdata.Document.HostData). Nil skips CheckHostData.
	HostData *[32]byte
	// ReportData is the expected REPORT_DATA: the verifier's nonce. Nil
	// skips CheckReportData (a report read from a file proves nothing about
	// when it was made).
	ReportData *[abi.ReportDataSize]byte
	// MinimumTCB is the lowest acceptable reported TCB, component-wise;
	// nil checks only the TCB's consistency.
	MinimumTCB *TCB
	// VCEK is the chip's VCEK certificate (DER or PEM), used instead of the
	// one in the report's certificate table.
	VCEK []byte
	// Product is the processor line ("Milan", "Genoa", "Turin") the report
	// must come from; empty takes it from the report and its VCEK.
	Product string
	// TrustedChains replace AMD's roots embedded in go-sev-guest. Only for
	// a chain that is not AMD's: go-sev-guest's test-only chain (simulated
	// SNP device, tests) or a chain pinned from a file (ParseChain).
	TrustedChains []Chain
	// Now is when the certificates must be valid; zero is time.Now().
	Now time.Time
}

// Chain is a trust anchor: a product line's ARK and the ASK it signed.
type Chain struct {
	ProductLine string
	ARK, ASK    *x509.Certificate
}

// ParseChain reads a chain in the format of AMD KDS's cert_chain (PEM, the
// ASK then the ARK, as https://kdsintf.amd.com/vcek/v1/Milan/cert_chain
// serves it). The product line comes from the ARK's common name
// ("ARK-Milan").
func ParseChain(pemBytes []byte) (Chain, error) {
	askDER, arkDER, err := kds.ParseProductCertChain(pemBytes)
	if err != nil {
		return Chain{}, fmt.Errorf("certificate chain: %w", err)
	}
	ask, err := x509.ParseCertificate(askDER)
	if err != nil {
		return Chain{}, fmt.Errorf("certificate chain: ASK: %w", err)
	}
	ark, err := x509.ParseCertificate(arkDER)
	if err != nil {
		return Chain{}, fmt.Errorf("certificate chain: ARK: %w", err)
	}
	line, ok := strings.CutPrefix(ark.Subject.CommonName, "ARK-")
	if !ok || line == "" {
		return Chain{}, fmt.Errorf("certificate chain: the second certificate's common name is %q, want an ARK's (ARK-<product line>)", ark.Subject.CommonName)
	}
	return Chain{ProductLine: line, ARK: ark, ASK: ask}, nil
}

// CheckResult is one check's outcome.
type CheckResult struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Reason says what was compared, or why the check failed or was skipped.
	Reason string `json:"reason"`
}

// Result is the outcome of every check, and what the report says.
type Result struct {
	Checks []CheckResult `json:"checks"`
	Report Summary       `json:"report"`
}

// OK reports whether no check failed (skipped checks do not count).
func (r *Result) OK() bool { return len(r.Failed()) == 0 }

// Failed names the checks that failed.
func (r *Result) Failed() []string { return r.named(Fail) }

// Skipped names the checks that were skipped.
func (r *Result) Skipped() []string { return r.named(Skip) }

// Check returns the named check's outcome.
func (r *Result) Check(name string) (CheckResult, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return CheckResult{}, false
}

func (r *Result) named(s Status) []string {
	var names []string
	for _, c := range r.Checks {
		if c.Status == s {
			names = append(names, c.Name)
		}
	}
	return names
}

// Summary is what a report says, for people (hex where the report has bytes).
type Summary struct {
	Version     uint32 `json:"version"`
	Measurement string `json:"measurement"`
	HostData    string `json:"host_data"`
	ReportData  string `json:"report_data"`
	// Policy is the guest policy (the 64-bit field, in hex).
	Policy      string `json:"policy"`
	VMPL        uint32 `json:"vmpl"`
	ReportedTCB TCB    `json:"reported_tcb"`
	ChipID      string `json:"chip_id"`
	// Signer is the key that signed: "VCEK" or "VLEK".
	Signer string `json:"signer"`
}

// Verify parses a raw report (abi.ReportSize bytes) and its certificate
// table (empty if none) and runs every check. It returns an error only for
// input it cannot read; a report that does not verify is a Result whose
// failed checks say why.
func Verify(report, certs []byte, opts Options) (*Result, error) {
	if len(report) != abi.ReportSize {
		return nil, fmt.Errorf("attestation report is %d bytes, want %d", len(report), abi.ReportSize)
	}
	rep, err := abi.ReportToProto(report)
	if err != nil {
		return nil, fmt.Errorf("parse attestation report: %w", err)
	}
	chain := &spb.CertificateChain{}
	if len(certs) > 0 {
		table := new(abi.CertTable)
		if err := table.Unmarshal(certs); err != nil {
			return nil, fmt.Errorf("parse certificate table: %w", err)
		}
		chain = table.Proto()
	}
	if len(opts.VCEK) > 0 {
		vcek, err := trust.ParseCert(opts.VCEK)
		if err != nil {
			return nil, fmt.Errorf("VCEK certificate: %w", err)
		}
		chain.VcekCert = vcek.Raw
	}
	att := &spb.Attestation{Report: rep, CertificateChain: chain}
	signer, err := abi.ParseSignerInfo(rep.GetSignerInfo())
	if err != nil {
		return nil, fmt.Errorf("attestation report: %w", err)
	}

	res := &Result{Report: Summary{
		Version:     rep.GetVersion(),
		Measurement: hex.EncodeToString(rep.GetMeasurement()),
		HostData:    hex.EncodeToString(rep.GetHostData()),
		ReportData:  hex.EncodeToString(rep.GetReportData()),
		Policy:      fmt.Sprintf("%#x", rep.GetPolicy()),
		VMPL:        rep.GetVmpl(),
		ReportedTCB: tcbOf(rep.GetReportedTcb()),
		ChipID:      hex.EncodeToString(rep.GetChipId()),
		Signer:      signerName(signer.SigningKey),
	}}
	res.add(CheckSignature, checkSignature(att, signer.SigningKey, opts))
	res.add(CheckMeasurement, checkMeasurement(rep, opts.References))
	res.add(CheckHostData, checkHostData(rep, opts.HostData))
	res.add(CheckReportData, checkReportData(rep, opts.ReportData))
	res.add(CheckDebug, checkDebug(rep))
	res.add(CheckTCB, checkTCB(att, signer.SigningKey, opts.MinimumTCB))
	return res, nil
}

func (r *Result) add(name string, c outcome) {
	r.Checks = append(r.Checks, CheckResult{Name: name, Status: c.status, Reason: c.reason})
}

type outcome struct {
	status Status
	reason string
}

func pass(format string, args ...any) outcome { return outcome{Pass, fmt.Sprintf(format, args...)} }
func fail(format string, args ...any) outcome { return outcome{Fail, fmt.Sprintf(format, args...)} }
func skip(format string, args ...any) outcome { return outcome{Skip, fmt.Sprintf(format, args...)} }

func signerName(k abi.ReportSigner) string {
	switch k {
	case abi.VcekReportSigner:
		return "VCEK"
	case abi.VlekReportSigner:
		return "VLEK"
	}
	return k.String()
}

// endorsementKey returns the DER certificate of the key that signed.
func endorsementKey(chain *spb.CertificateChain, key abi.ReportSigner) []byte {
	switch key {
	case abi.VcekReportSigner:
		return chain.GetVcekCert()
	case abi.VlekReportSigner:
		return chain.GetVlekCert()
	}
	return nil
}

func checkSignature(att *spb.Attestation, key abi.ReportSigner, opts Options) outcome {
	if len(endorsementKey(att.GetCertificateChain(), key)) == 0 {
		return fail("no %s certificate: the report came without a certificate table holding one, and none was given", signerName(key))
	}
	vopts := &verify.Options{DisableCertFetching: true, Now: opts.Now}
	if vopts.Now.IsZero() {
		vopts.Now = time.Now()
	}
	if opts.Product != "" {
		p, err := kds.ParseProductLine(opts.Product)
		if err != nil {
			return fail("product %q: %v", opts.Product, err)
		}
		vopts.Product = p
	}
	anchors := "AMD's roots (embedded in go-sev-guest)"
	if len(opts.TrustedChains) > 0 {
		vopts.TrustedRoots = map[string][]*trust.AMDRootCerts{}
		var lines []string
		for _, c := range opts.TrustedChains {
			r := trust.AMDRootCertsProduct(c.ProductLine)
			r.ProductCerts = &trust.ProductCerts{Ark: c.ARK, Ask: c.ASK}
			vopts.TrustedRoots[c.ProductLine] = append(vopts.TrustedRoots[c.ProductLine], r)
			lines = append(lines, c.ProductLine)
		}
		anchors = fmt.Sprintf("a given chain (%s), not AMD's roots", strings.Join(lines, ", "))
	}
	// verify fills in the product it finds; keep the caller's report intact.
	if err := verify.SnpAttestation(cloneAttestation(att), vopts); err != nil {
		return fail("%v (trusted: %s)", err, anchors)
	}
	return pass("the report is signed by the %s, which chains to %s", signerName(key), anchors)
}

func cloneAttestation(att *spb.Attestation) *spb.Attestation {
	c := *att.GetCertificateChain()
	if c.Extras != nil {
		extras := make(map[string][]byte, len(c.Extras))
		for k, v := range c.Extras {
			extras[k] = v
		}
		c.Extras = extras
	}
	return &spb.Attestation{Report: att.GetReport(), CertificateChain: &c}
}

func checkMeasurement(rep *spb.Report, refs []Reference) outcome {
	if len(refs) == 0 {
		return skip("no reference measurements given")
	}
	got := rep.GetMeasurement()
	for _, r := range refs {
		if bytes.Equal(got, r.Measurement[:]) {
			if r.Label == "" {
				return pass("MEASUREMENT %x is a reference value", got)
			}
			return pass("MEASUREMENT %x is the reference for %s", got, r.Label)
		}
	}
	return fail("MEASUREMENT %x is none of the %d reference values: the VM was not launched with the expected firmware, kernel, initrd, command line or vCPUs", got, len(refs))
}

func checkHostData(rep *spb.Report, want *[32]byte) outcome {
	if want == nil {
		return skip("no policy given")
	}
	got := rep.GetHostData()
	if !bytes.Equal(got, want[:]) {
		return fail("HOSTDATA %x is not the initdata digest %x: the pod VM was launched with another policy", got, want[:])
	}
	return pass("HOSTDATA is the initdata digest %x", got)
}

func checkReportData(rep *spb.Report, want *[abi.ReportDataSize]byte) outcome {
	if want == nil {
		return skip("no nonce given: nothing shows the report is fresh")
	}
	got := rep.GetReportData()
	if !bytes.Equal(got, want[:]) {
		return fail("REPORT_DATA %x is not the nonce %x: the report was made for another request (replayed?)", got, want[:])
	}
	return pass("REPORT_DATA is the nonce")
}

func checkDebug(rep *spb.Report) outcome {
	p, err := abi.ParseSnpPolicy(rep.GetPolicy())
	if err != nil {
		return fail("guest policy %#x: %v", rep.GetPolicy(), err)
	}
	if p.Debug {
		return fail("the guest policy %#x allows debugging: the host can read and change the VM's memory", rep.GetPolicy())
	}
	return pass("the guest policy %#x forbids debugging", rep.GetPolicy())
}

func checkTCB(att *spb.Attestation, key abi.ReportSigner, minimum *TCB) outcome {
	if len(endorsementKey(att.GetCertificateChain(), key)) == 0 {
		return fail("no %s certificate to compare the reported TCB with", signerName(key))
	}
	vopts := &validate.Options{
		// Only the TCB and what binds it to the VCEK is checked here: the
		// guest policy bits are not, and debug is CheckDebug's.
		GuestPolicy: abi.SnpPolicy{SMT: true, MigrateMA: true, Debug: true, CXLAllowed: true},
	}
	if minimum != nil {
		vopts.MinimumTCB = minimum.parts()
	}
	if err := validate.SnpAttestation(att, vopts); err != nil {
		return fail("%v", err)
	}
	reported := tcbOf(att.GetReport().GetReportedTcb())
	if minimum == nil {
		return pass("reported TCB %s is the %s's, firmware committed (no minimum given)", reported, signerName(key))
	}
	return pass("reported TCB %s is the %s's and at least %s", reported, signerName(key), *minimum)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
