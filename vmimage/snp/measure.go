// Package snp computes the launch measurement of an AMD SEV-SNP guest that
// QEMU (>= 9.1) boots with an OVMF AmdSev firmware and a directly loaded
// kernel (kernel-hashes=on), and signs ID blocks for such launches.
//
// The measurement is the MEASUREMENT field of the guest's attestation
// reports: a SHA-384 chain over every launch update the VMM makes, in order:
//  1. the firmware image, page by page, mapped to end at 4 GiB;
//  2. the firmware's SEV metadata sections in the order it lists them: zero
//     pages, the secrets page, the CPUID page, and the page holding the SEV
//     hash table (SHA-256 of kernel, initrd and command line);
//  3. one VMSA page (initial register state) per vCPU, which carries the
//     vCPU model's CPU signature, the reset address and the SEV features.
//
// The facts (byte layouts, GUIDs, register values) follow the virtee project's
// sev-snp-measure tool and QEMU's target/i386/sev.c; the tests reproduce
// sev-snp-measure's own test vectors.
package snp

import (
	"fmt"
)

// Launch describes an SNP launch as QEMU performs it.
type Launch struct {
	// Firmware is the whole OVMF image (-bios).
	Firmware []byte
	// FirmwareDigest, if set, is a precomputed digest of the firmware pages
	// (see FirmwareDigest); the firmware's pages are then not hashed again,
	// but Firmware or Metadata still supplies its metadata.
	FirmwareDigest *[DigestSize]byte
	// Metadata, used when Firmware is nil, describes the firmware without
	// its pages (Data nil; FirmwareDigest required): what a reference value
	// records of it. It is checked with CheckDirectBoot.
	Metadata *Firmware
	// Kernel holds the hashes of a directly booted kernel, initrd and command
	// line; nil when the guest boots from the firmware alone.
	Kernel *KernelHashes
	// VCPUs is the number of vCPUs (-smp).
	VCPUs int
	// VCPUType is the QEMU CPU model (-cpu), which gives the CPU signature;
	// if empty, VCPUSig is used as is.
	VCPUType string
	VCPUSig  uint32
	// GuestFeatures is the VMSA's SEV_FEATURES: QEMU >= 9.1 sets 0x1 (SNP
	// active) unless told otherwise.
	GuestFeatures uint64
	// VMM is the hypervisor; the zero value is QEMU.
	VMM VMM
}

// maxVCPUs bounds the vCPU count so a mistaken count fails instead of
// hashing for a long time; QEMU's q35 allows at most 4096 vCPUs.
const maxVCPUs = 4096

// Measure computes the launch digest of l: the MEASUREMENT an SNP report of
// that guest carries.
func Measure(l Launch) ([DigestSize]byte, error) {
	if l.VCPUs < 1 || l.VCPUs > maxVCPUs {
		return [DigestSize]byte{}, fmt.Errorf("vCPU count %d: want 1 to %d", l.VCPUs, maxVCPUs)
	}
	ds, err := MeasureVCPUs(l, l.VCPUs)
	if err != nil {
		return [DigestSize]byte{}, err
	}
	return ds[l.VCPUs-1], nil
}

// MeasureVCPUs computes the launch digests of l for 1 to maxCount vCPUs
// (l.VCPUs is ignored): element i is the MEASUREMENT of a guest with i+1
// vCPUs. The launches differ only in their trailing VMSA pages, so this
// costs little more than the largest alone.
func MeasureVCPUs(l Launch, maxCount int) ([][DigestSize]byte, error) {
	if maxCount < 1 || maxCount > maxVCPUs {
		return nil, fmt.Errorf("vCPU count %d: want 1 to %d", maxCount, maxVCPUs)
	}
	sig := l.VCPUSig
	if l.VCPUType != "" {
		s, err := VCPUSignature(l.VCPUType)
		if err != nil {
			return nil, err
		}
		if l.VCPUSig != 0 && l.VCPUSig != s {
			return nil, fmt.Errorf("vCPU signature %#x contradicts vCPU type %s (%#x)", l.VCPUSig, l.VCPUType, s)
		}
		sig = s
	}
	var fw *Firmware
	switch {
	case l.Firmware != nil:
		var err error
		if fw, err = ParseFirmware(l.Firmware); err != nil {
			return nil, err
		}
	case l.Metadata != nil:
		if l.FirmwareDigest == nil {
			return nil, fmt.Errorf("firmware described by its metadata alone needs the digest of its pages")
		}
		if err := l.Metadata.CheckDirectBoot(); err != nil {
			return nil, err
		}
		fw = l.Metadata
	default:
		return nil, fmt.Errorf("no firmware given")
	}

	var ld launchDigest
	if l.FirmwareDigest != nil {
		ld = *l.FirmwareDigest
	} else {
		ld.normalPages(fw.GPA(), fw.Data)
	}
	if err := measureMetadata(&ld, fw, l.Kernel, l.VMM); err != nil {
		return nil, err
	}
	return measureVMSAs(&ld, fw, maxCount, sig, l.GuestFeatures, l.VMM)
}

// FirmwareDigest is the launch digest after the firmware's pages alone:
// what sev-snp-measure calls the OVMF hash (--mode snp:ovmf-hash), which a
// Launch can start from instead of hashing the firmware again.
func FirmwareDigest(firmware []byte) ([DigestSize]byte, error) {
	fw, err := ParseFirmware(firmware)
	if err != nil {
		return [DigestSize]byte{}, err
	}
	var ld launchDigest
	ld.normalPages(fw.GPA(), fw.Data)
	return ld, nil
}

func measureMetadata(ld *launchDigest, fw *Firmware, kernel *KernelHashes, vmm VMM) error {
	if kernel != nil {
		if _, ok := fw.Section(SectionSNPKernelHashes); !ok {
			return fmt.Errorf("a kernel is given, but the firmware's SEV metadata has no %s section: "+
				"it cannot measure a directly booted kernel (use an OVMF AmdSevX64 build)", SectionSNPKernelHashes)
		}
	}
	for _, s := range fw.Sections {
		switch s.Type {
		case SectionSNPSecMem:
			if vmm == VMMGCE {
				ld.emptyPages(pageUnmeasured, uint64(s.GPA), s.Size)
			} else {
				ld.emptyPages(pageZero, uint64(s.GPA), s.Size)
			}
		case SectionSNPSecrets:
			ld.emptyPages(pageSecrets, uint64(s.GPA), PageSize)
		case SectionCPUID:
			// EC2 adds the CPUID page after all other sections.
			if vmm != VMMEC2 {
				ld.emptyPages(pageCPUID, uint64(s.GPA), PageSize)
			}
		case SectionSNPKernelHashes:
			if kernel == nil {
				ld.emptyPages(pageZero, uint64(s.GPA), s.Size)
				continue
			}
			page, err := kernel.page(fw, s)
			if err != nil {
				return err
			}
			ld.normalPages(uint64(s.GPA), page[:])
		case SectionSVSMCAA:
			ld.emptyPages(pageZero, uint64(s.GPA), s.Size)
		default:
			return fmt.Errorf("firmware: unknown SEV metadata %s", s.Type)
		}
	}
	if vmm == VMMEC2 {
		for _, s := range fw.Sections {
			if s.Type == SectionCPUID {
				ld.emptyPages(pageCPUID, uint64(s.GPA), PageSize)
			}
		}
	}
	return nil
}

// measureVMSAs adds the VMSA pages of 1 to maxCount vCPUs and returns the
// digest after each count.
func measureVMSAs(ld *launchDigest, fw *Firmware, maxCount int, sig uint32, features uint64, vmm VMM) ([][DigestSize]byte, error) {
	if !fw.HasResetBlock {
		return nil, fmt.Errorf("firmware has no SEV-ES reset block (GUID %s): not an SEV-capable OVMF build", guidSEVESReset)
	}
	bsp, err := vmsaPage(vmm, bspEIP, features, sig)
	if err != nil {
		return nil, err
	}
	ld.vmsaPage(bsp)
	out := make([][DigestSize]byte, 0, maxCount)
	out = append(out, *ld)
	if maxCount == 1 {
		return out, nil
	}
	if fw.ResetEIP == 0 {
		return nil, fmt.Errorf("firmware's SEV-ES reset block gives no AP start address, so it cannot start %d vCPUs", maxCount)
	}
	ap, err := vmsaPage(vmm, fw.ResetEIP, features, sig)
	if err != nil {
		return nil, err
	}
	for range maxCount - 1 {
		ld.vmsaPage(ap)
		out = append(out, *ld)
	}
	return out, nil
}
