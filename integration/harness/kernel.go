package harness

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// GuestKernelRelease is what `uname -r` prints inside a pod VM booted from
// the image in imageDir: manifest.json's kernel release when the image
// records it, otherwise the version string embedded in the kernel file.
func GuestKernelRelease(imageDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(imageDir, "manifest.json"))
	switch {
	case err == nil:
		// vmimage writes kernelRelease; kernel_release is the spelling
		// of the original contract.
		var m struct {
			KernelRelease  string `json:"kernelRelease"`
			KernelRelease2 string `json:"kernel_release"`
		}
		if err := json.Unmarshal(data, &m); err != nil {
			return "", fmt.Errorf("parse %s: %w", filepath.Join(imageDir, "manifest.json"), err)
		}
		for _, r := range []string{m.KernelRelease, m.KernelRelease2} {
			if r != "" {
				return r, nil
			}
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read guest image manifest: %w", err)
	}
	return KernelFileRelease(filepath.Join(imageDir, "kernel"))
}

// KernelFileRelease reads the release from an x86 bzImage. The boot
// protocol (Documentation/arch/x86/boot.rst) puts "HdrS" at 0x202 and, at
// 0x20E, the offset minus 0x200 of a NUL-terminated string that starts
// with the release ("6.12.117 (user@host) #1 ...").
func KernelFileRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open kernel: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return "", fmt.Errorf("read boot header of %s: %w", path, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("%s is not an x86 bzImage (no HdrS boot header)", path)
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20E:])) + 0x200
	buf := make([]byte, 256)
	n, err := f.ReadAt(buf, off)
	if n == 0 {
		return "", fmt.Errorf("read kernel version string of %s: %w", path, err)
	}
	buf = buf[:n]
	if i := bytes.IndexAny(buf, " \x00"); i > 0 {
		return string(buf[:i]), nil
	}
	return "", fmt.Errorf("%s: no kernel version string at offset %#x", path, off)
}
