package qemu

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/contrast-vm/contrast/hypervisor"
)

// Where the host tells whether it can run SEV-SNP guests.
const (
	// sevSNPParam is kvm_amd's module parameter: Y when KVM can run SNP
	// guests (CPU, BIOS, AMD secure processor firmware and host kernel agree).
	sevSNPParam = "/sys/module/kvm_amd/parameters/sev_snp"
	// sevDevice is the AMD secure processor's device, which QEMU opens to
	// launch an SEV guest (sev-snp-guest's sev-device).
	sevDevice = "/dev/sev"
)

// snpHostErrorPrefix begins every reason a host cannot run an SNP guest.
const snpHostErrorPrefix = "confidential mode needs a host with SEV-SNP"

// snpHostMissing lists what keeps this host from launching SEV-SNP guests;
// none means nothing does. param and dev are sevSNPParam and sevDevice
// (parameters for tests).
func snpHostMissing(param, dev string) []string {
	var missing []string
	b, err := os.ReadFile(param)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		missing = append(missing, param+" does not exist (kvm_amd is not loaded: not an AMD host with AMD-V, or KVM is unavailable)")
	case err != nil:
		missing = append(missing, fmt.Sprintf("cannot read %s: %v", param, err))
	default:
		if v := strings.TrimSpace(string(b)); v != "Y" && v != "1" {
			missing = append(missing, fmt.Sprintf("%s is %q (SEV-SNP is disabled in the BIOS, the secure processor firmware or kvm_amd)", param, v))
		}
	}
	if fi, err := os.Stat(dev); err != nil {
		missing = append(missing, fmt.Sprintf("%s: %v (no AMD secure processor driver, ccp)", dev, err))
	} else if fi.Mode()&fs.ModeCharDevice == 0 {
		missing = append(missing, dev+" is not a character device")
	}
	return missing
}

// snpHostError says why a host cannot launch SEV-SNP guests.
func snpHostError(missing []string) error {
	return fmt.Errorf("%s: %s", snpHostErrorPrefix, strings.Join(missing, "; "))
}

// memEncryptionLeaf is CPUID Fn8000_001F, AMD's memory encryption
// capabilities; EBX[5:0] is the C-bit position.
const memEncryptionLeaf = 0x8000001F

// hostCBitPos reads the C-bit position from the host's CPUID. QEMU refuses
// any other value for an SEV guest.
func hostCBitPos() (int, error) {
	if !haveCPUID {
		return 0, errors.New("CPUID: not an x86-64 host")
	}
	maxExt, _, _, _ := cpuid(0x80000000, 0)
	if maxExt < memEncryptionLeaf {
		return 0, fmt.Errorf("CPUID leaf %#x is absent (highest extended leaf %#x): the CPU has no AMD memory encryption", memEncryptionLeaf, maxExt)
	}
	_, ebx, _, _ := cpuid(memEncryptionLeaf, 0)
	pos := int(ebx & 0x3f)
	if pos == 0 {
		return 0, fmt.Errorf("CPUID leaf %#x reports no C-bit position: memory encryption is not enabled", memEncryptionLeaf)
	}
	return pos, nil
}

// defaultReducedPhysBits is what QEMU's query-sev-capabilities reports on
// every host ("we lose one bit in guest physical addressing") and what
// AMD's and Kata's launchers pass. The host's own CPUID value describes the
// host's address space, not the guest's, and is not what QEMU checks.
const defaultReducedPhysBits = 1

// snpSettings is an SNP launch with every host-dependent value resolved.
type snpSettings struct {
	CBitPos         int
	ReducedPhysBits int
	Policy          uint64
	IDBlock         string // base64, optional
	IDAuth          string // base64, optional
}

// policyReservedMustBeOne is bit 16 of the SNP guest policy, which the
// secure processor requires set.
const policyReservedMustBeOne = 1 << 16

// SNP structure sizes (SEV-SNP firmware ABI, SNP_LAUNCH_FINISH).
const (
	idBlockSize  = 96
	maxIDAuthLen = 4096
)

// resolveSNP fills the host's values into l; hostCBit supplies the C-bit
// position (hostCBitPos, a parameter for tests).
func resolveSNP(l *hypervisor.SNPLaunch, hostCBit func() (int, error)) (snpSettings, error) {
	s := snpSettings{CBitPos: l.CBitPos, ReducedPhysBits: l.ReducedPhysBits, Policy: l.Policy, IDBlock: l.IDBlock, IDAuth: l.IDAuth}
	if s.CBitPos == 0 {
		pos, err := hostCBit()
		if err != nil {
			return snpSettings{}, fmt.Errorf("%s: %w", snpHostErrorPrefix, err)
		}
		s.CBitPos = pos
	}
	if s.ReducedPhysBits == 0 {
		s.ReducedPhysBits = defaultReducedPhysBits
	}
	return s, s.validate()
}

func (s snpSettings) validate() error {
	var errs []error
	if s.CBitPos < 1 || s.CBitPos > 63 {
		errs = append(errs, fmt.Errorf("cbitpos %d: want 1 to 63", s.CBitPos))
	}
	if s.ReducedPhysBits < 1 || s.ReducedPhysBits > 63 {
		errs = append(errs, fmt.Errorf("reduced-phys-bits %d: want 1 to 63", s.ReducedPhysBits))
	}
	if s.Policy&policyReservedMustBeOne == 0 {
		errs = append(errs, fmt.Errorf("guest policy %#x: bit 16 must be set (the SNP ABI reserves it as one)", s.Policy))
	}
	if s.IDBlock != "" {
		if b, err := base64.StdEncoding.DecodeString(s.IDBlock); err != nil || len(b) != idBlockSize {
			errs = append(errs, fmt.Errorf("ID block: want base64 of exactly %d bytes", idBlockSize))
		}
	}
	if (s.IDBlock == "") != (s.IDAuth == "") {
		// The firmware checks an ID block only with the signature over it.
		errs = append(errs, errors.New("an ID block and an ID auth structure go together: give both or neither"))
	}
	if s.IDAuth != "" {
		if b, err := base64.StdEncoding.DecodeString(s.IDAuth); err != nil || len(b) == 0 || len(b) > maxIDAuthLen {
			errs = append(errs, fmt.Errorf("ID auth: want base64 of 1 to %d bytes", maxIDAuthLen))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("SEV-SNP launch: %w", err)
	}
	return nil
}
