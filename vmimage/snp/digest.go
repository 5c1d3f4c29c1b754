package snp

import (
	"crypto/sha512"
	"encoding/binary"
)

// DigestSize is the size of a launch digest (SHA-384), the MEASUREMENT
// field of an attestation report.
const DigestSize = sha512.Size384

// Page types of SNP_LAUNCH_UPDATE (SNP firmware ABI, PAGE_INFO).
const (
	pageNormal     = 0x01
	pageVMSA       = 0x02
	pageZero       = 0x03
	pageUnmeasured = 0x04
	pageSecrets    = 0x05
	pageCPUID      = 0x06
)

// vmsaGPA is the address the firmware records for VMSA pages: -1 made
// page-aligned, with the bits above 51 cleared.
const vmsaGPA = 0xFFFFFFFFF000

// pageInfoSize is the length of the PAGE_INFO structure hashed at each step.
const pageInfoSize = 0x70

// launchDigest is the running launch digest of an SNP guest context: every
// launch update replaces it with the SHA-384 of a PAGE_INFO structure that
// holds the previous digest, the page's contents digest, its type and its
// guest-physical address.
type launchDigest [DigestSize]byte

func (d *launchDigest) update(pageType byte, gpa uint64, contents *[DigestSize]byte) {
	var info [pageInfoSize]byte
	copy(info[0:], d[:])
	copy(info[48:], contents[:])
	binary.LittleEndian.PutUint16(info[96:], pageInfoSize)
	info[98] = pageType
	// 99: IMI_PAGE, 100-102: VMPL3..1 permissions, 103: reserved, all zero.
	binary.LittleEndian.PutUint64(info[104:], gpa)
	*d = sha512.Sum384(info[:])
}

// normalPages measures data (whole pages) loaded at gpa.
func (d *launchDigest) normalPages(gpa uint64, data []byte) {
	for off := 0; off < len(data); off += PageSize {
		sum := sha512.Sum384(data[off : off+PageSize])
		d.update(pageNormal, gpa+uint64(off), &sum)
	}
}

// emptyPages measures size bytes of pages whose contents do not enter the
// digest (zero, unmeasured, secrets and CPUID pages).
func (d *launchDigest) emptyPages(pageType byte, gpa uint64, size uint32) {
	var zero [DigestSize]byte
	for off := uint64(0); off < uint64(size); off += PageSize {
		d.update(pageType, gpa+off, &zero)
	}
}

func (d *launchDigest) vmsaPage(page *[PageSize]byte) {
	sum := sha512.Sum384(page[:])
	d.update(pageVMSA, vmsaGPA, &sum)
}
