package snp

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// KernelHashes are the SHA-256 digests QEMU puts into the SEV hash table
// when it boots a kernel directly (kernel-hashes=on): OVMF checks the kernel,
// initrd and command line it is handed against them, and the page holding
// the table is part of the launch measurement.
type KernelHashes struct {
	Kernel  [sha256.Size]byte // of the bzImage file as given to -kernel
	Initrd  [sha256.Size]byte // of the -initrd file; of nothing without one
	Cmdline [sha256.Size]byte // of the -append string and its terminating NUL
}

// CmdlineHash is the hash QEMU measures for a kernel command line: the
// string with its terminating NUL (an empty command line is a lone NUL).
func CmdlineHash(cmdline string) [sha256.Size]byte {
	return sha256.Sum256(append([]byte(cmdline), 0))
}

// HashKernel reads kernel and initrd (nil: no initrd) and hashes them with
// the command line.
func HashKernel(kernel, initrd io.Reader, cmdline string) (*KernelHashes, error) {
	kh := &KernelHashes{Cmdline: CmdlineHash(cmdline)}
	h := sha256.New()
	if _, err := io.Copy(h, kernel); err != nil {
		return nil, fmt.Errorf("hash kernel: %w", err)
	}
	h.Sum(kh.Kernel[:0])
	h.Reset()
	if initrd != nil {
		if _, err := io.Copy(h, initrd); err != nil {
			return nil, fmt.Errorf("hash initrd: %w", err)
		}
	}
	h.Sum(kh.Initrd[:0])
	return kh, nil
}

// HashKernelFiles is HashKernel for files; initrd "" means none.
func HashKernelFiles(kernel, initrd, cmdline string) (*KernelHashes, error) {
	k, err := os.Open(kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	defer k.Close()
	var ir io.Reader
	if initrd != "" {
		f, err := os.Open(initrd)
		if err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
		defer f.Close()
		ir = f
	}
	return HashKernel(k, ir, cmdline)
}

// Layout of QEMU's SEV hash table: a header (GUID, u16 length of the whole
// table) followed by three entries (GUID, u16 entry length, SHA-256) for the
// command line, the initrd and the kernel, in that order, padded with zeros
// to a multiple of 16 bytes.
const (
	hashEntrySize       = 16 + 2 + sha256.Size
	hashTableSize       = 16 + 2 + 3*hashEntrySize
	paddedHashTableSize = (hashTableSize + 15) &^ 15
)

// table returns the padded SEV hash table.
func (kh *KernelHashes) table() [paddedHashTableSize]byte {
	var t [paddedHashTableSize]byte
	copy(t[0:], guidHashTableHead[:])
	binary.LittleEndian.PutUint16(t[16:], hashTableSize)
	off := 18
	for _, e := range []struct {
		guid GUID
		hash *[sha256.Size]byte
	}{
		{guidHashCmdline, &kh.Cmdline},
		{guidHashInitrd, &kh.Initrd},
		{guidHashKernel, &kh.Kernel},
	} {
		copy(t[off:], e.guid[:])
		binary.LittleEndian.PutUint16(t[off+16:], hashEntrySize)
		copy(t[off+18:], e.hash[:])
		off += hashEntrySize
	}
	return t
}

// page returns the page QEMU measures for the SNP_KERNEL_HASHES section:
// zeros, with the hash table at the offset of the firmware's hash table
// address within its page.
func (kh *KernelHashes) page(fw *Firmware, section Section) (*[PageSize]byte, error) {
	if !fw.HasHashTable {
		return nil, fmt.Errorf("firmware has no SEV hash table entry (GUID %s) saying where the kernel hashes go", guidSEVHashTable)
	}
	if section.Size != PageSize {
		return nil, fmt.Errorf("firmware's %s section is %d bytes, QEMU fills exactly one page", section.Type, section.Size)
	}
	if fw.HashTableGPA < section.GPA || fw.HashTableGPA-section.GPA >= section.Size {
		return nil, fmt.Errorf("firmware's SEV hash table at %#x lies outside its %s section (%#x, %d bytes)",
			fw.HashTableGPA, section.Type, section.GPA, section.Size)
	}
	if fw.HashTableSize < paddedHashTableSize {
		return nil, fmt.Errorf("firmware's SEV hash table area is %d bytes, the table needs %d", fw.HashTableSize, paddedHashTableSize)
	}
	off := int(fw.HashTableGPA % PageSize)
	if off+paddedHashTableSize > PageSize {
		return nil, fmt.Errorf("firmware's SEV hash table at %#x would cross a page boundary", fw.HashTableGPA)
	}
	var p [PageSize]byte
	t := kh.table()
	copy(p[off:], t[:])
	return &p, nil
}
