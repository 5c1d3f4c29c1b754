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
// offers it (configfs-tsm or /dev/sev-guest), else the simulated device if
// it is compiled in and the launch configured it, else none (nil, nil): a
// development VM where nothing is attested.
func Detect(ctx context.Context) (TEE, error) {
	found, err := snpInterfaces(tsmReportDir, sevGuestDev)
	if err != nil {
		return nil, err
	}
	if len(found) > 0 {
		snp, err := openSNP(ctx)
		if err != nil {
			return nil, fmt.Errorf("SEV-SNP guest interface %v present: %w", found, err)
		}
		return snp, nil
	}
	return detectSimulated(ctx)
}

// snpInterfaces lists which of the kernel's TEE interfaces exist.
func snpInterfaces(paths ...string) ([]string, error) {
	var found []string
	for _, p := range paths {
		_, err := os.Stat(p)
		switch {
		case err == nil:
			found = append(found, p)
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, fmt.Errorf("look for the SEV-SNP guest interface: %w", err)
		}
	}
	return found, nil
}
