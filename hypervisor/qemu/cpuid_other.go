//go:build !amd64

package qemu

// cpuid is x86 only: elsewhere every leaf reads as absent.
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32) { return 0, 0, 0, 0 }

const haveCPUID = false
