package snp

import (
	"fmt"
	"slices"
	"strings"
)

// CPUSignature is the CPUID Fn0000_0001_EAX value of a processor family,
// model and stepping (AMD CPUID specification, publication #25481): families
// above 0xF are stored as 0xF plus an extended family.
func CPUSignature(family, model, stepping uint8) uint32 {
	famLow, famHigh := uint32(family), uint32(0)
	if family > 0xf {
		famLow, famHigh = 0xf, uint32(family)-0xf
	}
	return famHigh<<20 | uint32(model>>4)<<16 | famLow<<8 | uint32(model&0xf)<<4 | uint32(stepping&0xf)
}

// vcpuType is one of QEMU's AMD EPYC CPU models. Model versions change
// features, never family, model or stepping.
type vcpuType struct {
	name                    string
	family, model, stepping uint8
}

// vcpuTypes are the EPYC models of QEMU's builtin_x86_defs that an SNP guest
// can use, as sev-snp-measure lists them, plus EPYC-Rome-v4 which QEMU 10.0
// offers too.
var vcpuTypes = []vcpuType{
	{"EPYC", 23, 1, 2},
	{"EPYC-v1", 23, 1, 2},
	{"EPYC-v2", 23, 1, 2},
	{"EPYC-IBPB", 23, 1, 2},
	{"EPYC-v3", 23, 1, 2},
	{"EPYC-v4", 23, 1, 2},
	{"EPYC-Rome", 23, 49, 0},
	{"EPYC-Rome-v1", 23, 49, 0},
	{"EPYC-Rome-v2", 23, 49, 0},
	{"EPYC-Rome-v3", 23, 49, 0},
	{"EPYC-Rome-v4", 23, 49, 0},
	{"EPYC-Milan", 25, 1, 1},
	{"EPYC-Milan-v1", 25, 1, 1},
	{"EPYC-Milan-v2", 25, 1, 1},
	{"EPYC-Genoa", 25, 17, 0},
	{"EPYC-Genoa-v1", 25, 17, 0},
	{"EPYC-Turin", 26, 0, 0},
}

// VCPUTypes lists the vCPU type names VCPUSignature knows.
func VCPUTypes() []string {
	names := make([]string, len(vcpuTypes))
	for i, t := range vcpuTypes {
		names[i] = t.name
	}
	return names
}

// VCPUSignature is the CPU signature of a QEMU CPU model (its -cpu name).
// The error for an unknown name lists the known ones.
func VCPUSignature(name string) (uint32, error) {
	i := slices.IndexFunc(vcpuTypes, func(t vcpuType) bool { return t.name == name })
	if i < 0 {
		return 0, fmt.Errorf("unknown vCPU type %q (known: %s)", name, strings.Join(VCPUTypes(), ", "))
	}
	t := vcpuTypes[i]
	return CPUSignature(t.family, t.model, t.stepping), nil
}
