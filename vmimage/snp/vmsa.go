package snp

import (
	"encoding/binary"
	"fmt"
)

// VMM is the hypervisor that launches the guest: each sets up the initial
// vCPU state (and orders a few launch updates) slightly differently.
type VMM int

// The VMMs whose launches are known (sev-snp-measure's --vmm-type).
const (
	VMMQEMU VMM = iota // QEMU/KVM, what Contrast runs
	VMMEC2             // Amazon EC2
	VMMGCE             // Google Compute Engine
)

func (v VMM) String() string {
	switch v {
	case VMMQEMU:
		return "QEMU"
	case VMMEC2:
		return "ec2"
	case VMMGCE:
		return "gce"
	}
	return fmt.Sprintf("VMM(%d)", int(v))
}

// ParseVMM reads the names sev-snp-measure uses: QEMU, ec2, gce.
func ParseVMM(s string) (VMM, error) {
	for _, v := range []VMM{VMMQEMU, VMMEC2, VMMGCE} {
		if s == v.String() {
			return v, nil
		}
	}
	return 0, fmt.Errorf("unknown VMM type %q (known: QEMU, ec2, gce)", s)
}

// bspEIP is where the bootstrap processor starts: the x86 reset vector.
const bspEIP = 0xfffffff0

// Offsets into the VMSA (the SEV-ES save area, AMD APM vol. 2, table B-4;
// struct sev_es_save_area in Linux's arch/x86/include/asm/svm.h).
const (
	vmsaES          = 0x000 // segments: selector u16, attrib u16, limit u32, base u64
	vmsaCS          = 0x010
	vmsaSS          = 0x020
	vmsaDS          = 0x030
	vmsaFS          = 0x040
	vmsaGS          = 0x050
	vmsaGDTR        = 0x060
	vmsaLDTR        = 0x070
	vmsaIDTR        = 0x080
	vmsaTR          = 0x090
	vmsaEFER        = 0x0d0
	vmsaCR4         = 0x148
	vmsaCR0         = 0x158
	vmsaDR7         = 0x160
	vmsaDR6         = 0x168
	vmsaRFLAGS      = 0x170
	vmsaRIP         = 0x178
	vmsaGPAT        = 0x268
	vmsaRDX         = 0x310
	vmsaSEVFeatures = 0x3b0
	vmsaXCR0        = 0x3e8
	vmsaMXCSR       = 0x408 // u32
	vmsaX87FCW      = 0x410 // u16
)

// defaultPAT is the power-on value of the PAT MSR (AMD APM vol. 2, A.3).
const defaultPAT = 0x0007040600070406

// vmsaPage is the initial state of a vCPU that starts at eip, as the VMM
// hands it to the firmware for measurement. The CPU signature goes into RDX,
// where the reset state of x86 puts the processor's family, model and
// stepping.
func vmsaPage(vmm VMM, eip uint32, sevFeatures uint64, vcpuSig uint32) (*[PageSize]byte, error) {
	csAttr, ssAttr, trAttr := uint16(0x9b), uint16(0x93), uint16(0x8b)
	gPAT := uint64(defaultPAT)
	rdx := uint64(vcpuSig)
	mxcsr, fcw := uint32(0x1f80), uint16(0x37f)
	switch vmm {
	case VMMQEMU:
	case VMMEC2:
		if eip == bspEIP {
			csAttr = 0x9a
		}
		ssAttr, trAttr = 0x92, 0x83
		rdx, mxcsr, fcw = 0x600, 0, 0
	case VMMGCE:
		gPAT = 0x00070106 // GCE's hypervisor sets its own PAT
		rdx, mxcsr, fcw = 0x600, 0, 0
	default:
		return nil, fmt.Errorf("unknown %s", vmm)
	}

	var p [PageSize]byte
	le := binary.LittleEndian
	seg := func(off int, selector, attrib uint16, limit uint32, base uint64) {
		le.PutUint16(p[off:], selector)
		le.PutUint16(p[off+2:], attrib)
		le.PutUint32(p[off+4:], limit)
		le.PutUint64(p[off+8:], base)
	}
	// Real mode: CS:IP is split so that CS base + IP = eip.
	seg(vmsaES, 0, 0x93, 0xffff, 0)
	seg(vmsaCS, 0xf000, csAttr, 0xffff, uint64(eip&0xffff0000))
	seg(vmsaSS, 0, ssAttr, 0xffff, 0)
	seg(vmsaDS, 0, 0x93, 0xffff, 0)
	seg(vmsaFS, 0, 0x93, 0xffff, 0)
	seg(vmsaGS, 0, 0x93, 0xffff, 0)
	seg(vmsaGDTR, 0, 0, 0xffff, 0)
	seg(vmsaLDTR, 0, 0x82, 0xffff, 0)
	seg(vmsaIDTR, 0, 0, 0xffff, 0)
	seg(vmsaTR, 0, trAttr, 0xffff, 0)
	le.PutUint64(p[vmsaEFER:], 0x1000) // EFER.SVME, set by KVM
	le.PutUint64(p[vmsaCR4:], 0x40)    // CR4.MCE, set by KVM
	le.PutUint64(p[vmsaCR0:], 0x10)    // CR0.ET
	le.PutUint64(p[vmsaDR7:], 0x400)
	le.PutUint64(p[vmsaDR6:], 0xffff0ff0)
	le.PutUint64(p[vmsaRFLAGS:], 0x2)
	le.PutUint64(p[vmsaRIP:], uint64(eip&0xffff))
	le.PutUint64(p[vmsaGPAT:], gPAT)
	le.PutUint64(p[vmsaRDX:], rdx)
	le.PutUint64(p[vmsaSEVFeatures:], sevFeatures)
	le.PutUint64(p[vmsaXCR0:], 0x1)
	le.PutUint32(p[vmsaMXCSR:], mxcsr)
	le.PutUint16(p[vmsaX87FCW:], fcw)
	return &p, nil
}
