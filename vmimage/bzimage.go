package vmimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
)

// Offsets in the x86 boot protocol's setup header
// (Documentation/arch/x86/boot.rst).
const (
	bootFlagOffset      = 0x1fe // 0xAA55
	headerMagicOffset   = 0x202 // "HdrS"
	protocolOffset      = 0x206 // boot protocol version
	kernelVersionOffset = 0x20e // pointer to the version string, minus 0x200
)

// KernelRelease reads the kernel release ("6.12.117-contrast") from the
// version string a bzImage carries in its setup header, so the image can be
// described without booting or unpacking it.
func KernelRelease(bzImage string) (string, error) {
	f, err := os.Open(bzImage)
	if err != nil {
		return "", fmt.Errorf("read kernel release: %w", err)
	}
	defer f.Close()
	rel, err := kernelRelease(f)
	if err != nil {
		return "", fmt.Errorf("read kernel release of %s: %w", bzImage, err)
	}
	return rel, nil
}

func kernelRelease(r io.ReaderAt) (string, error) {
	var hdr [kernelVersionOffset + 2]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return "", fmt.Errorf("not a bzImage: setup header: %w", err)
	}
	if binary.LittleEndian.Uint16(hdr[bootFlagOffset:]) != 0xaa55 || string(hdr[headerMagicOffset:headerMagicOffset+4]) != "HdrS" {
		return "", fmt.Errorf("not a bzImage: no boot flag and HdrS signature")
	}
	// kernel_version exists since boot protocol 2.00.
	if proto := binary.LittleEndian.Uint16(hdr[protocolOffset:]); proto < 0x200 {
		return "", fmt.Errorf("boot protocol %#x has no version string", proto)
	}
	ptr := binary.LittleEndian.Uint16(hdr[kernelVersionOffset:])
	if ptr == 0 {
		return "", fmt.Errorf("bzImage has no version string")
	}
	buf := make([]byte, 256)
	n, err := r.ReadAt(buf, 0x200+int64(ptr))
	if n == 0 {
		return "", fmt.Errorf("version string at %#x: %w", 0x200+int(ptr), err)
	}
	buf = buf[:n]
	end := bytes.IndexByte(buf, 0)
	if end < 0 {
		return "", fmt.Errorf("version string at %#x is not terminated", 0x200+int(ptr))
	}
	// "6.12.117-contrast (contrast@contrast) #1 SMP ..."
	fields := strings.Fields(string(buf[:end]))
	if len(fields) == 0 {
		return "", fmt.Errorf("version string is empty")
	}
	return fields[0], nil
}
