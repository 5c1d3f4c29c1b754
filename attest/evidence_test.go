package attest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
)

func TestEvidence(t *testing.T) {
	f := testChain(t)
	report, certs := f.make(t, simReport{})
	withCerts, err := json.Marshal(Evidence{TEE: "snp-simulated", Report: report, Certs: certs})
	if err != nil {
		t.Fatal(err)
	}
	noCerts, err := json.Marshal(Evidence{TEE: "snp", Report: report})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(noCerts, []byte(`"certs":""`)) {
		t.Errorf("no certificate table marshals as %s, want certs \"\"", noCerts)
	}
	for _, tc := range []struct {
		name      string
		in        []byte
		wantTEE   string
		wantCerts []byte
		wantErr   string
	}{
		{name: "JSON", in: withCerts, wantTEE: "snp-simulated", wantCerts: certs},
		{name: "JSON, indented", in: append([]byte("\n  "), withCerts...), wantTEE: "snp-simulated", wantCerts: certs},
		{name: "JSON without certificate table", in: noCerts, wantTEE: "snp"},
		{name: "raw report", in: report},
		{name: "raw report and table", in: append(bytes.Clone(report), certs...), wantCerts: certs},
		{name: "short raw report", in: report[:1000], wantErr: "raw report is 1000 bytes, want 1184"},
		{name: "JSON, short report", in: []byte(`{"tee":"snp","report":"AAAA","certs":""}`), wantErr: "report is 3 bytes"},
		{name: "JSON, unknown field", in: []byte(`{"tee":"snp","nonce":"x"}`), wantErr: `unknown field "nonce"`},
		{name: "JSON, trailing data", in: append(bytes.Clone(withCerts), []byte(` {}`)...), wantErr: "trailing data"},
		{name: "JSON, not base64", in: []byte(`{"report":"!!"}`), wantErr: "evidence JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := ReadEvidence(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("%v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.TEE != tc.wantTEE || !bytes.Equal(e.Report, report) || len(e.Report) != abi.ReportSize || !bytes.Equal(e.Certs, tc.wantCerts) {
				t.Errorf("evidence tee %q, %d-byte report, %d-byte certs; want %q, the report, %d-byte certs", e.TEE, len(e.Report), len(e.Certs), tc.wantTEE, len(tc.wantCerts))
			}
		})
	}
}
