package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-sev-guest/abi"
)

// Evidence is a report and the certificate table that came with it. Its
// JSON form, {"tee":"snp","report":"<base64>","certs":"<base64 or empty>"},
// is what a container gets from the agent's attestation endpoint and what
// `contrast verify --save-report` writes.
type Evidence struct {
	// TEE is the TEE that signed ("snp", "snp-simulated"), if known.
	TEE    string `json:"tee"`
	Report []byte `json:"report"`
	// Certs is the certificate table; empty if none came with the report.
	Certs []byte `json:"certs"`
}

// MarshalJSON writes Certs as "" when there is none, never null.
func (e Evidence) MarshalJSON() ([]byte, error) {
	type plain Evidence
	if e.Certs == nil {
		e.Certs = []byte{}
	}
	return json.Marshal(plain(e))
}

// ReadEvidence reads evidence in its JSON form, or raw: a report of
// abi.ReportSize bytes, optionally followed by its certificate table (as
// the guest's TEE returns them).
func ReadEvidence(data []byte) (Evidence, error) {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		var e Evidence
		d := json.NewDecoder(bytes.NewReader(data))
		d.DisallowUnknownFields()
		if err := d.Decode(&e); err != nil {
			return Evidence{}, fmt.Errorf("evidence JSON: %w", err)
		}
		if _, err := d.Token(); !errors.Is(err, io.EOF) {
			return Evidence{}, errors.New("evidence JSON: trailing data after the object")
		}
		if len(e.Report) != abi.ReportSize {
			return Evidence{}, fmt.Errorf("evidence JSON: report is %d bytes, want %d", len(e.Report), abi.ReportSize)
		}
		return e, nil
	}
	if len(data) < abi.ReportSize {
		return Evidence{}, fmt.Errorf("raw report is %d bytes, want %d (or a JSON object with tee, report and certs)", len(data), abi.ReportSize)
	}
	return Evidence{Report: data[:abi.ReportSize:abi.ReportSize], Certs: data[abi.ReportSize:]}, nil
}
