package qemu

// cpuid executes the CPUID instruction (cpuid_amd64.s): golang.org/x/sys/cpu
// reads feature bits but offers no raw leaves.
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)

const haveCPUID = true
