package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/guestspec"
)

// The container attestation endpoint (see the package documentation).
const (
	// AttestationMountPoint is where every container finds the endpoint's
	// directory (read-only).
	AttestationMountPoint = guestspec.AttestationMountPoint
	// AttestationSocketName is the endpoint's unix socket in that directory.
	AttestationSocketName = "attest.sock"
	// AttestationReportPath is the one resource the endpoint serves.
	AttestationReportPath = "/v1/report"
)

// attestationDirName is the endpoint's directory below Config.RunDir.
const attestationDirName = "attestation"

// ReportResponse is the endpoint's answer to GET /v1/report.
type ReportResponse struct {
	// TEE is the TEE that signed: "snp" or "snp-simulated".
	TEE string `json:"tee"`
	// Report is the raw signed report (SEV-SNP ATTESTATION_REPORT).
	Report []byte `json:"report"`
	// Certs is the certificate table the TEE returned with it; "" (never
	// null) if none.
	Certs []byte `json:"certs"`
}

// ErrorResponse is the endpoint's answer to a request it cannot serve.
type ErrorResponse struct {
	Error string `json:"error"`
}

// attestationDir is the guest directory of the endpoint's socket, or ""
// when the endpoint is off.
func (s *Service) attestationDir() string {
	if !s.cfg.AttestationEndpoint {
		return ""
	}
	return filepath.Join(s.cfg.RunDir, attestationDirName)
}

// listenAttestation creates the endpoint's socket, replacing a stale one
// from an earlier run of the agent. Every container user may connect: the
// containers are the pod's own, and the policy decided what runs in them.
func listenAttestation(dir string) (net.Listener, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("attestation endpoint: %w", err)
	}
	// MkdirAll leaves an existing directory's mode (and the umask applies).
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("attestation endpoint: %w", err)
	}
	sock := filepath.Join(dir, AttestationSocketName)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attestation endpoint: remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("attestation endpoint: %w", err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("attestation endpoint: %w", err)
	}
	return l, nil
}

// serveAttestation serves the endpoint on l until ctx ends (then it returns
// nil) or l fails. It closes l.
func (s *Service) serveAttestation(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.attestationHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		// A report takes the secure processor milliseconds; a slow
		// reader must not pin a connection for ever.
		WriteTimeout: time.Minute,
		IdleTimeout:  time.Minute,
		BaseContext:  func(net.Listener) context.Context { return ctx },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	log.G(ctx).Infof("attestation endpoint for the containers on %v", l.Addr())
	select {
	case err := <-done:
		return fmt.Errorf("attestation endpoint: %w", err)
	case <-ctx.Done():
	}
	if err := srv.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("close attestation endpoint")
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("attestation endpoint: %w", err)
	}
	return nil
}

// attestationHandler serves GET /v1/report?nonce=<128 hex digits>.
func (s *Service) attestationHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != AttestationReportPath {
			writeJSON(w, http.StatusNotFound, ErrorResponse{fmt.Sprintf("no resource %q: the endpoint serves GET %s?nonce=<%d hex digits>", r.URL.Path, AttestationReportPath, 2*ReportDataSize)})
			return
		}
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeJSON(w, http.StatusMethodNotAllowed, ErrorResponse{fmt.Sprintf("method %s: %s takes GET", r.Method, AttestationReportPath)})
			return
		}
		query := r.URL.Query()
		nonces := query["nonce"]
		if len(nonces) != 1 {
			writeJSON(w, http.StatusBadRequest, ErrorResponse{fmt.Sprintf("want exactly one nonce parameter (%d hex digits), got %d", 2*ReportDataSize, len(nonces))})
			return
		}
		for k := range query {
			if k != "nonce" {
				writeJSON(w, http.StatusBadRequest, ErrorResponse{fmt.Sprintf("unknown parameter %q (only nonce)", k)})
				return
			}
		}
		nonce, err := decodeNonce(nonces[0])
		if err != nil {
			writeJSON(w, http.StatusBadRequest, ErrorResponse{err.Error()})
			return
		}
		rep, err := getAttestationReport(r.Context(), s.cfg.TEE, nonce)
		switch {
		case errors.Is(err, errNoTEE):
			// Not a passing condition: retrying does not help.
			writeJSON(w, http.StatusNotImplemented, ErrorResponse{err.Error()})
			return
		case err != nil:
			log.G(r.Context()).WithError(err).Warn("attestation endpoint: report failed")
			writeJSON(w, http.StatusInternalServerError, ErrorResponse{err.Error()})
			return
		}
		certs := rep.certs
		if certs == nil {
			certs = []byte{} // "", not null
		}
		writeJSON(w, http.StatusOK, ReportResponse{TEE: rep.tee, Report: rep.report, Certs: certs})
	})
}

// decodeNonce reads the nonce parameter: exactly ReportDataSize bytes in hex.
func decodeNonce(s string) ([]byte, error) {
	if len(s) != 2*ReportDataSize {
		return nil, fmt.Errorf("nonce is %d characters, want exactly %d hex digits (%d bytes)", len(s), 2*ReportDataSize, ReportDataSize)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return b, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own fixed types get here.
		code, body = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}
