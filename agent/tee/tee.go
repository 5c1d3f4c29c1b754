// Package tee is the guest's view of the trusted execution environment it
// runs in: the HOSTDATA the VM was launched with (the SHA-256 of the pod
// policy) and attestation reports that carry it.
//
// In production that is AMD SEV-SNP (SNP). Test images may compile in a
// simulated SNP device (build tag contrast_simsnp, see SimulatedSNP) that
// takes HOSTDATA from QEMU fw_cfg; a release binary does not contain it.
// A development VM has no TEE at all: Detect returns nil.
package tee

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// TEE is a trusted execution environment the guest can ask for launch data
// and attestation reports.
type TEE interface {
	// Name identifies the TEE: NameSNP or NameSNPSimulated.
	Name() string
	// HostData is the 32-byte HOSTDATA the VM was launched with.
	HostData(ctx context.Context) ([32]byte, error)
	// Report returns a raw SNP attestation report (abi.ReportSize bytes,
	// go-sev-guest abi layout) carrying reportData, followed by the
	// certificate table when one is available; abi.ReportCertsToProto
	// parses both.
	Report(ctx context.Context, reportData [64]byte) ([]byte, error)
}

// Names of the TEEs, as SetPolicy reports them.
const (
	NameSNP          = "snp"
	NameSNPSimulated = "snp-simulated"
)

// Where the kernel's SEV-SNP guest driver appears.
const (
	tsmReportDir = "/sys/kernel/config/tsm/report"
	sevGuestDev  = "/dev/sev-guest"
)

// Detect finds the TEE the guest runs in: SEV-SNP hardware if the kernel
// offers it (a configfs-tsm report provider "sev_guest", or
// /dev/sev-guest), else the simulated device if it is compiled in and the
// launch configured it, else none (nil, nil): a development VM where
// nothing is attested. Another configfs-tsm provider (a TEE this agent does
// not support) is an error, not "none".
func Detect(ctx context.Context) (TEE, error) {
	provider, err := tsmProvider(tsmReportDir)
	if err != nil {
		return nil, err
	}
	var via string
	switch provider {
	case "sev_guest":
		via = "configfs-tsm provider sev_guest"
	case "":
		if _, err := os.Stat(sevGuestDev); err == nil {
			via = sevGuestDev
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("look for the SEV-SNP guest device: %w", err)
		}
	default:
		return nil, fmt.Errorf("the guest's TEE is configfs-tsm provider %q, which this agent does not support (only sev_guest)", provider)
	}
	if via != "" {
		snp, err := openSNP(ctx)
		if err != nil {
			return nil, fmt.Errorf("SEV-SNP guest interface (%s): %w", via, err)
		}
		return snp, nil
	}
	return detectSimulated(ctx)
}

// tsmProvider names the configfs-tsm report provider ("sev_guest",
// "tdx_guest"), or "" if configfs-tsm is absent (not built in, configfs not
// mounted) or no TEE driver registered with it. The kernel shows the
// provider only in a report entry, so one is made and removed.
func tsmProvider(reportDir string) (string, error) {
	if _, err := os.Stat(reportDir); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	entry, err := os.MkdirTemp(reportDir, "contrast-probe-")
	if errors.Is(err, unix.ENXIO) {
		return "", nil // configfs-tsm without a provider: not a TEE guest
	}
	if err != nil {
		return "", fmt.Errorf("probe configfs-tsm: %w", err)
	}
	name, readErr := os.ReadFile(filepath.Join(entry, "provider"))
	if err := os.Remove(entry); err != nil {
		return "", fmt.Errorf("probe configfs-tsm: %w", err)
	}
	if readErr != nil {
		return "", fmt.Errorf("probe configfs-tsm: %w", readErr)
	}
	return strings.TrimSpace(string(name)), nil
}
