package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/testdata"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/contrast-vm/contrast/vmimage"
)

// The real, AMD-signed sample report go-sev-guest ships (verify/testdata:
// a Milan report without a certificate table, and its chip's VCEK).
var (
	sampleReport = testdata.AttestationBytes
	sampleVCEK   = testdata.VcekBytes
)

// What the sample report says.
const (
	sampleMeasurement = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
	sampleTCB         = "bl=2,tee=0,snp=5,ucode=68"
)

// sampleTime is within the validity of the sample's VCEK (2022-2029).
var sampleTime = time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)

func sampleNonce() *[64]byte {
	var n [64]byte
	copy(n[:], []byte{1, 2, 3, 4, 5})
	return &n
}

func mustMeasurement(t *testing.T, s string) [MeasurementSize]byte {
	t.Helper()
	m, err := ParseMeasurement(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustTCB(t *testing.T, s string) *TCB {
	t.Helper()
	tcb, err := ParseTCB(s)
	if err != nil {
		t.Fatal(err)
	}
	return &tcb
}

// want is a check's expected status and a part of its reason.
type want struct {
	status Status
	reason string
}

func checkResult(t *testing.T, res *Result, wants map[string]want) {
	t.Helper()
	if got := len(res.Checks); got != len(Checks) {
		t.Fatalf("%d checks, want %d", got, len(Checks))
	}
	for i, c := range res.Checks {
		if c.Name != Checks[i] {
			t.Errorf("check %d is %q, want %q", i, c.Name, Checks[i])
		}
		w, ok := wants[c.Name]
		if !ok {
			w = want{status: Pass}
		}
		if c.Status != w.status || !strings.Contains(c.Reason, w.reason) {
			t.Errorf("%s: %s (%s), want %s containing %q", c.Name, c.Status, c.Reason, w.status, w.reason)
		}
	}
	var failed []string
	for _, name := range Checks {
		if wants[name].status == Fail {
			failed = append(failed, name)
		}
	}
	if !slices.Equal(res.Failed(), failed) || res.OK() != (len(failed) == 0) {
		t.Errorf("Failed() = %v, OK() = %v; want %v", res.Failed(), res.OK(), failed)
	}
}

// TestSampleReport verifies go-sev-guest's real AMD-signed report offline
// against the AMD roots go-sev-guest embeds, and shows each check failing
// on its own when what is expected differs.
func TestSampleReport(t *testing.T) {
	zero := [32]byte{}
	otherHash := [32]byte{0xab}
	otherNonce := *sampleNonce()
	otherNonce[0] ^= 0xff
	good := func() Options {
		return Options{
			References: []Reference{{Measurement: mustMeasurement(t, sampleMeasurement), Label: "the sample"}},
			HostData:   &zero,
			ReportData: sampleNonce(),
			MinimumTCB: mustTCB(t, sampleTCB),
			VCEK:       sampleVCEK,
			Now:        sampleTime,
		}
	}
	// The sample's guest policy allows debugging: CheckDebug says so in
	// every case.
	debugFails := want{Fail, "guest policy 0xb0000 allows debugging"}
	tamper := func(offset int) []byte {
		r := bytes.Clone(sampleReport)
		r[offset] ^= 1
		return r
	}
	for _, tc := range []struct {
		name   string
		report []byte
		opts   func(*Options)
		wants  map[string]want
	}{
		{name: "as expected", wants: map[string]want{
			CheckSignature:   {Pass, "signed by the VCEK, which chains to AMD's roots"},
			CheckMeasurement: {Pass, "the reference for the sample"},
			CheckTCB:         {Pass, "reported TCB " + sampleTCB + " is the VCEK's and at least " + sampleTCB},
			CheckDebug:       debugFails,
		}},
		{name: "VCEK as PEM", opts: func(o *Options) {
			o.VCEK = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sampleVCEK})
		}, wants: map[string]want{CheckDebug: debugFails}},
		{name: "product named", opts: func(o *Options) { o.Product = "Milan" }, wants: map[string]want{CheckDebug: debugFails}},
		{name: "nothing expected", opts: func(o *Options) {
			o.References, o.HostData, o.ReportData, o.MinimumTCB = nil, nil, nil, nil
		}, wants: map[string]want{
			CheckMeasurement: {Skip, "no reference measurements"},
			CheckHostData:    {Skip, "no policy"},
			CheckReportData:  {Skip, "no nonce"},
			CheckTCB:         {Pass, "no minimum given"},
			CheckDebug:       debugFails,
		}},
		{name: "measurement changed after signing", report: tamper(0x90), wants: map[string]want{
			CheckSignature:   {Fail, "signature"},
			CheckMeasurement: {Fail, "none of the 1 reference values"},
			CheckDebug:       debugFails,
		}},
		{name: "HOSTDATA changed after signing", report: tamper(0xC0), wants: map[string]want{
			CheckSignature: {Fail, "signature"},
			CheckHostData:  {Fail, "is not the initdata digest"},
			CheckDebug:     debugFails,
		}},
		{name: "other nonce (replayed report)", opts: func(o *Options) { o.ReportData = &otherNonce }, wants: map[string]want{
			CheckReportData: {Fail, "is not the nonce " + hex.EncodeToString(otherNonce[:])},
			CheckDebug:      debugFails,
		}},
		{name: "other policy", opts: func(o *Options) { o.HostData = &otherHash }, wants: map[string]want{
			CheckHostData: {Fail, "another policy"},
			CheckDebug:    debugFails,
		}},
		{name: "unknown measurement", opts: func(o *Options) {
			o.References = []Reference{{Measurement: [48]byte{1}}, {Measurement: [48]byte{2}}}
		}, wants: map[string]want{
			CheckMeasurement: {Fail, "MEASUREMENT " + sampleMeasurement + " is none of the 2 reference values"},
			CheckDebug:       debugFails,
		}},
		{name: "one of several measurements", opts: func(o *Options) {
			o.References = append([]Reference{{Measurement: [48]byte{1}, Label: "1 vCPU"}}, o.References...)
		}, wants: map[string]want{CheckDebug: debugFails}},
		{name: "TCB below the minimum", opts: func(o *Options) { o.MinimumTCB = mustTCB(t, "bl=2,tee=0,snp=6,ucode=68") }, wants: map[string]want{
			CheckTCB:   {Fail, "TCB"},
			CheckDebug: debugFails,
		}},
		{name: "no VCEK", opts: func(o *Options) { o.VCEK = nil }, wants: map[string]want{
			CheckSignature: {Fail, "no VCEK certificate"},
			CheckTCB:       {Fail, "no VCEK certificate"},
			CheckDebug:     debugFails,
		}},
		{name: "other product", opts: func(o *Options) { o.Product = "Genoa" }, wants: map[string]want{
			CheckSignature: {Fail, "is not name:SEV_PRODUCT_GENOA"},
			CheckDebug:     debugFails,
		}},
		{name: "VCEK expired", opts: func(o *Options) { o.Now = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }, wants: map[string]want{
			CheckSignature: {Fail, "expired"},
			CheckDebug:     debugFails,
		}},
		{name: "only a test chain trusted", opts: func(o *Options) { o.TrustedChains = []Chain{testChain(t).chain} }, wants: map[string]want{
			CheckSignature: {Fail, "trusted: a given chain (Milan), not AMD's roots"},
			CheckDebug:     debugFails,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := good()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			report := sampleReport
			if tc.report != nil {
				report = tc.report
			}
			res, err := Verify(report, nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, res, tc.wants)
			for _, c := range res.Checks {
				t.Logf("%-11s %-4s %s", c.Name, c.Status, c.Reason)
			}
		})
	}
}

func TestSampleSummary(t *testing.T) {
	res, err := Verify(sampleReport, nil, Options{VCEK: sampleVCEK, Now: sampleTime})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Report
	if s.Version != 2 || s.Measurement != sampleMeasurement || s.HostData != strings.Repeat("00", 32) ||
		s.ReportData != "0102030405"+strings.Repeat("00", 59) || s.Policy != "0xb0000" || s.Signer != "VCEK" ||
		s.ReportedTCB.String() != sampleTCB || s.VMPL != 0 {
		t.Errorf("summary %+v", s)
	}
}

// chainFixture is go-sev-guest's test-only key chain, as the simulated SNP
// device signs with it.
type chainFixture struct {
	signer *sevtest.AmdSigner
	chain  Chain
}

var simCertTime = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func testChain(t *testing.T) chainFixture {
	t.Helper()
	signer, err := sevtest.DefaultTestOnlyCertChain(kds.ProductName(abi.DefaultSevProduct()), simCertTime)
	if err != nil {
		t.Fatal(err)
	}
	return chainFixture{signer: signer, chain: Chain{ProductLine: "Milan", ARK: signer.Ark, ASK: signer.Ask}}
}

// simReport is a report as the simulated SNP device makes it.
type simReport struct {
	measurement [48]byte
	hostData    [32]byte
	reportData  [64]byte
	policy      abi.SnpPolicy
	// signWith signs with another key than the chain's VCEK.
	signWith *ecdsa.PrivateKey
}

func (f chainFixture) make(t *testing.T, r simReport) (report, certs []byte) {
	t.Helper()
	s := f.signer
	rep := &spb.Report{
		Version:         2,
		Policy:          abi.SnpPolicyToBytes(r.policy),
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		ReportData:      r.reportData[:],
		Measurement:     r.measurement[:],
		HostData:        r.hostData[:],
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        make([]byte, abi.ReportIDSize),
		ReportIdMa:      make([]byte, abi.ReportIDMASize),
		ChipId:          s.HWID[:],
		Signature:       make([]byte, abi.SignatureSize),
		CurrentTcb:      uint64(s.TCB),
		ReportedTcb:     uint64(s.TCB),
		CommittedTcb:    uint64(s.TCB),
		LaunchTcb:       uint64(s.TCB),
	}
	raw, err := abi.ReportToAbiBytes(rep)
	if err != nil {
		t.Fatal(err)
	}
	var sigR, sigS *big.Int
	if r.signWith != nil {
		sigR, sigS, err = signReport(r.signWith, abi.SignedComponent(raw))
	} else {
		sigR, sigS, err = s.Sign(abi.SignedComponent(raw))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(sigR, sigS, raw); err != nil {
		t.Fatal(err)
	}
	certs, err = s.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	return raw, certs
}

// signReport signs as the secure processor does: ECDSA P-384 over the
// SHA-384 of the signed part.
func signReport(key *ecdsa.PrivateKey, signed []byte) (*big.Int, *big.Int, error) {
	h := sha384(signed)
	return ecdsa.Sign(rand.Reader, key, h[:])
}

// TestSimulatedReports verifies reports signed with go-sev-guest's test key
// chain, as the simulated SNP device makes them: they verify when the test
// chain is trusted explicitly and never against AMD's roots, and a report
// signed by a key outside the chain fails.
func TestSimulatedReports(t *testing.T) {
	f := testChain(t)
	measurement := [48]byte{0x11, 47: 0x99}
	policyHash := [32]byte{0x22, 31: 0x88}
	nonce := [64]byte{0x33, 63: 0x77}
	outsider, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A chain of the same names whose keys are not the test chain's.
	foreign, err := (&sevtest.AmdSignerBuilder{
		ProductName: kds.ProductName(abi.DefaultSevProduct()), ArkCreationTime: simCertTime, AskCreationTime: simCertTime,
		AsvkCreationTime: simCertTime, VcekCreationTime: simCertTime, VlekCreationTime: simCertTime,
		Keys: freshKeys(t),
	}).TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	good := simReport{measurement: measurement, hostData: policyHash, reportData: nonce, policy: abi.SnpPolicy{SMT: true}}
	expect := Options{
		References:    []Reference{{Measurement: measurement, Label: "2 vCPUs"}},
		HostData:      &policyHash,
		ReportData:    &nonce,
		TrustedChains: []Chain{f.chain},
		Now:           simCertTime.Add(24 * time.Hour),
	}
	for _, tc := range []struct {
		name  string
		sign  chainFixture
		r     simReport
		opts  func(*Options)
		wants map[string]want
	}{
		{name: "test chain trusted", sign: f, r: good, wants: map[string]want{
			CheckSignature:   {Pass, "which chains to a given chain (Milan), not AMD's roots"},
			CheckMeasurement: {Pass, "the reference for 2 vCPUs"},
		}},
		{name: "AMD's roots", sign: f, r: good, opts: func(o *Options) { o.TrustedChains = nil }, wants: map[string]want{
			CheckSignature: {Fail, "trusted: AMD's roots"},
		}},
		{name: "signed outside the chain", sign: f, r: func() simReport { r := good; r.signWith = outsider; return r }(), wants: map[string]want{
			CheckSignature: {Fail, "signature verification error"},
		}},
		{name: "VCEK of another chain", sign: chainFixture{signer: foreign}, r: good, wants: map[string]want{
			CheckSignature: {Fail, "could not be verified by any trusted roots"},
			CheckTCB:       {Pass, ""},
		}},
		{name: "debug allowed", sign: f, r: func() simReport { r := good; r.policy.Debug = true; return r }(), wants: map[string]want{
			CheckDebug: {Fail, "allows debugging"},
		}},
		{name: "other kernel command line", sign: f, r: func() simReport { r := good; r.measurement[0] ^= 1; return r }(), wants: map[string]want{
			CheckMeasurement: {Fail, "none of the 1 reference values"},
		}},
		{name: "other policy", sign: f, r: func() simReport { r := good; r.hostData[0] ^= 1; return r }(), wants: map[string]want{
			CheckHostData: {Fail, "another policy"},
		}},
		{name: "replayed nonce", sign: f, r: func() simReport { r := good; r.reportData[0] ^= 1; return r }(), wants: map[string]want{
			CheckReportData: {Fail, "replayed"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			report, certs := tc.sign.make(t, tc.r)
			opts := expect
			if tc.opts != nil {
				tc.opts(&opts)
			}
			res, err := Verify(report, certs, opts)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, res, tc.wants)
			for _, c := range res.Checks {
				t.Logf("%-11s %-4s %s", c.Name, c.Status, c.Reason)
			}
		})
	}
}

// freshKeys are the test chain's keys but for the ASK and VCEK: a VCEK
// certified by them does not chain to the test chain's ASK.
func freshKeys(t *testing.T) *sevtest.AmdKeys {
	t.Helper()
	k := sevtest.DefaultAmdKeys()
	ask, err := rsaKey(2048) // smaller than AMD's: only speed matters here
	if err != nil {
		t.Fatal(err)
	}
	vcek, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &sevtest.AmdKeys{Ark: k.Ark, Ask: ask, Asvk: k.Asvk, Vcek: vcek, Vlek: k.Vlek}
}

func TestVerifyRefusesUnreadableInput(t *testing.T) {
	f := testChain(t)
	report, certs := f.make(t, simReport{})
	for _, tc := range []struct {
		name          string
		report, certs []byte
		opts          Options
		want          string
	}{
		{"short report", report[:100], nil, Options{}, "attestation report is 100 bytes, want 1184"},
		{"report with its table appended", append(bytes.Clone(report), certs...), nil, Options{}, "want 1184"},
		{"garbage certificate table", report, []byte("not a table"), Options{}, "parse certificate table"},
		{"garbage VCEK", report, nil, Options{VCEK: []byte("not a certificate")}, "VCEK certificate"},
		{"reserved bits set", func() []byte { r := bytes.Clone(report); r[0x08] = 0; r[0x0a] = 0; return r }(), nil, Options{}, "parse attestation report"},
	} {
		if _, err := Verify(tc.report, tc.certs, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestParseChain(t *testing.T) {
	f := testChain(t)
	pemOf := func(certs ...[]byte) []byte {
		var b []byte
		for _, c := range certs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
		}
		return b
	}
	for _, tc := range []struct {
		name     string
		in       []byte
		wantLine string
		wantErr  string
	}{
		{"AMD's Milan cert_chain", trust.AskArkMilanVcekBytes, "Milan", ""},
		{"AMD's Genoa cert_chain", trust.AskArkGenoaVcekBytes, "Genoa", ""},
		{"test chain", pemOf(f.signer.Ask.Raw, f.signer.Ark.Raw), "Milan", ""},
		{"ARK first", pemOf(f.signer.Ark.Raw, f.signer.Ask.Raw), "", `common name is "SEV-Milan", want an ARK's`},
		{"one certificate", pemOf(f.signer.Ask.Raw), "", "ARK"},
		{"not PEM", []byte("nothing"), "", "could not find"},
	} {
		c, err := ParseChain(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || c.ProductLine != tc.wantLine || c.ARK == nil || c.ASK == nil {
			t.Errorf("%s: %+v, %v; want product line %s", tc.name, c, err, tc.wantLine)
		}
	}
	// A chain read from a file verifies what the test chain signed.
	chain, err := ParseChain(pemOf(f.signer.Ask.Raw, f.signer.Ark.Raw))
	if err != nil {
		t.Fatal(err)
	}
	report, certs := f.make(t, simReport{})
	res, err := Verify(report, certs, Options{TrustedChains: []Chain{chain}, Now: simCertTime.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := res.Check(CheckSignature); c.Status != Pass {
		t.Errorf("signature with the parsed chain: %+v", c)
	}
}

func TestParseTCB(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    TCB
		wantErr string
	}{
		{in: "bl=2,tee=0,snp=5,ucode=68", want: TCB{2, 0, 5, 68}},
		{in: "ucode=68,snp=5,tee=0,bl=2", want: TCB{2, 0, 5, 68}},
		{in: "blSPL=2,teeSPL=0,snpSPL=5,ucodeSPL=68", want: TCB{2, 0, 5, 68}},
		{in: "4405000000000002", want: TCB{2, 0, 5, 68}},
		{in: "0x4405000000000002", want: TCB{2, 0, 5, 68}},
		{in: "bl=2,tee=0,snp=5", wantErr: "give all of"},
		{in: "bl=2,bl=3,snp=5,ucode=1", wantErr: "bl given twice"},
		{in: "bl=2,tee=0,snp=5,ucode=256", wantErr: "0 to 255"},
		{in: "bl=2,tee=0,snp=5,fmc=1", wantErr: `unknown component "fmc"`},
		{in: "bl=2,tee", wantErr: "not NAME=N"},
		{in: "44050000", wantErr: "16 hex digits"},
		{in: "zz05000000000002", wantErr: "invalid syntax"},
	} {
		got, err := ParseTCB(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseTCB(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseTCB(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, err := ParseTCB(got.String()); err != nil || back != got {
			t.Errorf("ParseTCB(%q) = %v, %v", got.String(), back, err)
		}
	}
}

func TestParseMeasurement(t *testing.T) {
	if m, err := ParseMeasurement(sampleMeasurement); err != nil || hex.EncodeToString(m[:]) != sampleMeasurement {
		t.Errorf("%x, %v", m, err)
	}
	for in, want := range map[string]string{
		sampleMeasurement[:94]:       "94 characters, want 96",
		"zz" + sampleMeasurement[2:]: "invalid byte",
		"":                           "0 characters",
	} {
		if _, err := ParseMeasurement(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMeasurement(%q): %v, want %q", in, err, want)
		}
	}
}

func TestImageReferences(t *testing.T) {
	m := &vmimage.Manifest{KernelCmdline: "console=ttyS0", Files: []vmimage.File{{Name: vmimage.KernelFile, SHA256: strings.Repeat("ab", 32)}}}
	ref, err := vmimage.ComputeReference(m, vmimage.ReferenceOptions{Firmware: "../vmimage/snp/testdata/ovmf_AmdSev_suffix.bin", MaxVCPUs: 8})
	if err != nil {
		t.Fatal(err)
	}
	refs, err := ImageReferences(ref, "image/reference.json", vmimage.VCPURange{Min: 2, Max: 3})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ref.Measurement(3)
	if len(refs) != 2 || refs[1].Label != "image/reference.json, 3 vCPUs" || refs[1].Measurement != want {
		t.Fatalf("%+v", refs)
	}
	// The sample report's launch is none of them.
	res, err := Verify(sampleReport, nil, Options{References: refs, VCEK: sampleVCEK, Now: sampleTime})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := res.Check(CheckMeasurement); c.Status != Fail {
		t.Errorf("measurement: %+v", c)
	}
	if _, err := ImageReferences(ref, "r", vmimage.VCPURange{Min: 1, Max: 9}); err == nil || !strings.Contains(err.Error(), "outside the reference's 1-8") {
		t.Errorf("counts beyond the reference: %v", err)
	}
}
