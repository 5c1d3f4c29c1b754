package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/attest"
	"github.com/contrast-vm/contrast/policy"
	"github.com/google/go-sev-guest/abi"
	"google.golang.org/grpc/codes"
)

// reportingTEE stands in for the secure processor at the TEE boundary: its
// "report" is abi.ReportSize bytes holding the report data at REPORT_DATA's
// offset, followed by a fixed certificate table. The agent passes reports
// through without reading them, so nothing here needs to be signed.
type reportingTEE struct {
	hostData [32]byte
	certs    []byte
	err      error // returned by Report
	calls    *atomic.Int32
}

func (t reportingTEE) Name() string { return tee.NameSNP }

func (t reportingTEE) HostData(context.Context) ([32]byte, error) { return t.hostData, nil }

// reportDataOffset is where an SNP report holds REPORT_DATA.
const reportDataOffset = 0x50

func (t reportingTEE) Report(_ context.Context, reportData [64]byte) ([]byte, error) {
	if t.calls != nil {
		t.calls.Add(1)
	}
	if t.err != nil {
		return nil, t.err
	}
	raw := make([]byte, abi.ReportSize, abi.ReportSize+len(t.certs))
	copy(raw[reportDataOffset:], reportData[:])
	return append(raw, t.certs...), nil
}

var testCerts = []byte("a certificate table")

func nonceOf(s string) []byte {
	n := make([]byte, ReportDataSize)
	copy(n, s)
	return n
}

// denyGetReport is a generated-style policy whose data denies GetReport.
func denyGetReport(t *testing.T) []byte {
	t.Helper()
	module, err := policy.Build(policy.Data{
		Version:    policy.DataVersion,
		Pod:        policy.Pod{HostnamePattern: ".*"},
		Containers: map[string]policy.Container{},
		Requests:   map[policy.Kind]bool{policy.WaitOOM: true, policy.GetReport: false},
	})
	if err != nil {
		t.Fatal(err)
	}
	return module
}

func TestGetReport(t *testing.T) {
	allow := policy.AllowAll()
	deny := denyGetReport(t)
	for _, tc := range []struct {
		name       string
		tee        tee.TEE // nil: no TEE
		module     []byte  // nil: no policy installed
		reportData []byte
		// on success
		wantCerts []byte
		// on failure
		code  codes.Code
		parts []string
	}{
		{name: "report", tee: reportingTEE{hostData: hostDataOf(allow), certs: testCerts}, module: allow,
			reportData: nonceOf("nonce 1"), wantCerts: testCerts},
		{name: "report without certificate table", tee: reportingTEE{hostData: hostDataOf(allow)}, module: allow,
			reportData: nonceOf("nonce 2"), wantCerts: []byte{}},
		{name: "before the policy", tee: reportingTEE{hostData: hostDataOf(allow)},
			reportData: nonceOf("n"), code: codes.PermissionDenied, parts: []string{"GetReport denied: no policy installed yet"}},
		{name: "policy denies", tee: reportingTEE{hostData: hostDataOf(deny)}, module: deny,
			reportData: nonceOf("n"), code: codes.PermissionDenied, parts: []string{"policy denies GetReport: rule get_report.request"}},
		{name: "no TEE", module: allow,
			reportData: nonceOf("n"), code: codes.FailedPrecondition, parts: []string{"no TEE: this pod VM cannot attest"}},
		{name: "short report data", tee: reportingTEE{hostData: hostDataOf(allow)}, module: allow,
			reportData: make([]byte, 63), code: codes.InvalidArgument, parts: []string{"report data is 63 bytes, want exactly 64"}},
		{name: "no report data", tee: reportingTEE{hostData: hostDataOf(allow)}, module: allow,
			code: codes.InvalidArgument, parts: []string{"report data is 0 bytes"}},
		{name: "TEE fails", tee: reportingTEE{hostData: hostDataOf(allow), err: errors.New("firmware busy")}, module: allow,
			reportData: nonceOf("n"), code: codes.Internal, parts: []string{"snp TEE: firmware busy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			client := gateClient(t, tc.tee)
			if tc.module != nil {
				if _, err := client.SetPolicy(ctx, setPolicy(tc.module)); err != nil {
					t.Fatal(err)
				}
			}
			resp, err := client.GetReport(ctx, &api.GetReportRequest{ReportData: tc.reportData})
			if tc.code != codes.OK {
				wantStatus(t, "GetReport", err, tc.code, tc.parts...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The host's nonce is bound in a domain of its own, never carried
			// verbatim as a container's is.
			want := api.HostReportData(tc.reportData)
			if len(resp.Report) != abi.ReportSize || !bytes.Equal(resp.Report[reportDataOffset:reportDataOffset+ReportDataSize], want[:]) {
				t.Errorf("report of %d bytes with REPORT_DATA %x, want %d bytes with %x", len(resp.Report), resp.Report[reportDataOffset:][:ReportDataSize], abi.ReportSize, want)
			}
			if !bytes.Equal(resp.Certs, tc.wantCerts) || resp.Tee != tee.NameSNP {
				t.Errorf("certs %q, tee %q; want %q, %q", resp.Certs, resp.Tee, tc.wantCerts, tee.NameSNP)
			}
		})
	}
}

// attestationClient serves a Service with TEE tt (nil: none) and returns an
// HTTP client that reaches its attestation endpoint, and the socket.
func attestationClient(t *testing.T, tt tee.TEE) (*http.Client, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := hostTestConfig(dir, testBinary(t))
	cfg.TEE = tt
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agent, _, _ := serveOverUnix(t, svc, dir, nil)
	// Serve listens on the endpoint before it serves the Agent API: once
	// Health answers, the socket is there.
	if _, err := agent.Health(context.Background(), &api.HealthRequest{}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(cfg.RunDir, "attestation", AttestationSocketName)
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		},
	}
	t.Cleanup(client.CloseIdleConnections)
	return client, sock
}

func TestAttestationEndpoint(t *testing.T) {
	nonce := nonceOf("a container's nonce")
	nonceHex := hex.EncodeToString(nonce)
	calls := new(atomic.Int32)
	withTEE, sock := attestationClient(t, reportingTEE{certs: testCerts, calls: calls})
	noTEE, _ := attestationClient(t, nil)
	failing, _ := attestationClient(t, reportingTEE{err: errors.New("firmware busy")})

	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket %s: %v, %v; want a socket every user may connect to (0666)", sock, fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("socket directory: %v, %v; want 0755", fi.Mode(), err)
	}

	for _, tc := range []struct {
		name         string
		client       *http.Client
		method, path string
		wantCode     int
		wantErr      string // in the JSON error
	}{
		{"report", withTEE, http.MethodGet, "/v1/report?nonce=" + nonceHex, http.StatusOK, ""},
		{"upper-case nonce", withTEE, http.MethodGet, "/v1/report?nonce=" + strings.ToUpper(nonceHex), http.StatusOK, ""},
		{"no nonce", withTEE, http.MethodGet, "/v1/report", http.StatusBadRequest, "want exactly one nonce parameter"},
		{"two nonces", withTEE, http.MethodGet, "/v1/report?nonce=" + nonceHex + "&nonce=" + nonceHex, http.StatusBadRequest, "got 2"},
		{"short nonce", withTEE, http.MethodGet, "/v1/report?nonce=" + nonceHex[2:], http.StatusBadRequest, "nonce is 126 characters, want exactly 128 hex digits (64 bytes)"},
		{"nonce not hex", withTEE, http.MethodGet, "/v1/report?nonce=zz" + nonceHex[2:], http.StatusBadRequest, "nonce: encoding/hex: invalid byte"},
		{"other parameter", withTEE, http.MethodGet, "/v1/report?nonce=" + nonceHex + "&format=pem", http.StatusBadRequest, `unknown parameter "format"`},
		{"POST", withTEE, http.MethodPost, "/v1/report?nonce=" + nonceHex, http.StatusMethodNotAllowed, "takes GET"},
		{"other path", withTEE, http.MethodGet, "/v2/report?nonce=" + nonceHex, http.StatusNotFound, `no resource "/v2/report"`},
		{"no TEE", noTEE, http.MethodGet, "/v1/report?nonce=" + nonceHex, http.StatusNotImplemented, "no TEE: this pod VM cannot attest"},
		{"TEE fails", failing, http.MethodGet, "/v1/report?nonce=" + nonceHex, http.StatusInternalServerError, "firmware busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "http://localhost"+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%d %s %s, want %d application/json", resp.StatusCode, resp.Header.Get("Content-Type"), body, tc.wantCode)
			}
			if tc.wantCode != http.StatusOK {
				var e ErrorResponse
				if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, tc.wantErr) {
					t.Errorf("error body %s (%v), want an error containing %q", body, err, tc.wantErr)
				}
				return
			}
			// The documented format, field by field.
			var doc map[string]string
			if err := json.Unmarshal(body, &doc); err != nil || len(doc) != 3 {
				t.Fatalf("body %s (%v), want an object of tee, report and certs", body, err)
			}
			var got ReportResponse
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if got.TEE != tee.NameSNP || len(got.Report) != abi.ReportSize || !bytes.Equal(got.Certs, testCerts) {
				t.Errorf("tee %q, %d-byte report, certs %q", got.TEE, len(got.Report), got.Certs)
			}
			if rd := got.Report[reportDataOffset : reportDataOffset+ReportDataSize]; !bytes.Equal(rd, nonce) {
				t.Errorf("REPORT_DATA %x, want the nonce %x", rd, nonce)
			}
			// What a container gets, contrast verify --report reads.
			ev, err := attest.ReadEvidence(body)
			if err != nil || ev.TEE != got.TEE || !bytes.Equal(ev.Report, got.Report) || !bytes.Equal(ev.Certs, got.Certs) {
				t.Errorf("attest.ReadEvidence: %+v, %v", ev, err)
			}
		})
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("the TEE made %d reports, want 2 (only for well-formed requests)", n)
	}
}

// TestAttestationEndpointNoCerts checks that a report without a certificate
// table answers certs "" rather than null.
func TestAttestationEndpointNoCerts(t *testing.T) {
	client, _ := attestationClient(t, reportingTEE{})
	resp, err := client.Get("http://localhost/v1/report?nonce=" + strings.Repeat("00", ReportDataSize))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"certs":""`)) {
		t.Errorf("%d %s, want certs \"\"", resp.StatusCode, body)
	}
}

// TestAttestationEndpointOff checks that a service without the endpoint
// makes no socket.
func TestAttestationEndpointOff(t *testing.T) {
	dir := t.TempDir()
	cfg := hostTestConfig(dir, testBinary(t))
	cfg.AttestationEndpoint = false
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, _, _ := serveOverUnix(t, svc, dir, nil)
	if _, err := client.Health(context.Background(), &api.HealthRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, "attestation")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("attestation directory: %v, want none", err)
	}
}

// TestAttestationMountInContainer runs a container with runc and checks
// that it finds the endpoint's socket at the documented path, read-only,
// and that the host's end of the same socket answers.
func TestAttestationMountInContainer(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.TEE = reportingTEE{hostData: hostDataOf(policy.AllowAll())} })
	h.sandbox()
	sock := AttestationMountPoint + "/" + AttestationSocketName
	h.create("att", podSpec("/bin/sh", "-c", `test -S `+sock+` || exit 10; touch `+AttestationMountPoint+`/x 2>/dev/null && exit 11; exit 0`), &api.Stdio{})
	h.start("att")
	h.waitExit("att", "", 0)
	h.remove("att")
}
