package snp

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// PageSize is the unit of SNP launch updates.
const PageSize = 4096

// fourGiB is where the firmware image ends in guest physical memory: QEMU
// maps the flash (or -bios) image so that its last byte sits just below 4 GiB.
const fourGiB = 1 << 32

// SectionType is the kind of an OVMF SEV metadata section: what the VMM puts
// into those pages before launch (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
type SectionType uint32

// The section types OVMF declares.
const (
	SectionSNPSecMem       SectionType = 1    // pre-validated memory for SEC: zero pages
	SectionSNPSecrets      SectionType = 2    // the SNP secrets page
	SectionCPUID           SectionType = 3    // the SNP CPUID page
	SectionSVSMCAA         SectionType = 4    // SVSM calling area: zero pages
	SectionSNPKernelHashes SectionType = 0x10 // the page holding the SEV hash table
)

func (t SectionType) String() string {
	switch t {
	case SectionSNPSecMem:
		return "SNP_SEC_MEM"
	case SectionSNPSecrets:
		return "SNP_SECRETS"
	case SectionCPUID:
		return "CPUID"
	case SectionSVSMCAA:
		return "SVSM_CAA"
	case SectionSNPKernelHashes:
		return "SNP_KERNEL_HASHES"
	}
	return fmt.Sprintf("section type %#x", uint32(t))
}

// Section is one entry of the OVMF SEV metadata: a guest-physical range the
// VMM fills (or zeroes) and measures before the first instruction runs.
type Section struct {
	GPA  uint32
	Size uint32
	Type SectionType
}

// Firmware is what an SNP launch measurement needs from an OVMF image: its
// pages and the facts its footer GUID table declares.
type Firmware struct {
	// Data is the whole image; Parse keeps the caller's slice, not a copy.
	// It is nil in a firmware described by its metadata alone (see
	// Launch.Metadata), whose pages' digest is given instead.
	Data []byte
	// Size is the image's length in bytes: where it starts below 4 GiB.
	Size uint64
	// Sections are the SEV metadata sections in the order the firmware lists
	// them, which is the order they are measured in.
	Sections []Section
	// HasResetBlock tells whether the firmware has an SEV-ES reset block;
	// ResetEIP is the address at which application processors start.
	HasResetBlock bool
	ResetEIP      uint32
	// HasHashTable tells whether the firmware reserves an area for the SEV
	// hash table of kernel, initrd and command line (without it, a directly
	// booted kernel is not measured); HashTableGPA and HashTableSize are
	// where QEMU writes the table.
	HasHashTable  bool
	HashTableGPA  uint32
	HashTableSize uint32
}

// GPA is the guest-physical address of the image's first byte.
func (fw *Firmware) GPA() uint64 { return fourGiB - fw.Size }

// Section returns the first metadata section of type t.
func (fw *Firmware) Section(t SectionType) (Section, bool) {
	for _, s := range fw.Sections {
		if s.Type == t {
			return s, true
		}
	}
	return Section{}, false
}

// Layout of the OVMF footer: the table ends 32 bytes before the end of the
// image with an entry of the footer GUID whose size covers the whole table.
// Every entry is its data followed by a 2-byte size (of data and header) and
// the 16-byte GUID, so the table is walked from its end.
const (
	footerOffsetFromEnd = 32
	entryHeaderSize     = 2 + 16
	metadataHeaderSize  = 16 // "ASEV", size, version, number of sections
	metadataEntrySize   = 12 // gpa, size, type
	maxFirmwareSize     = 1 << 30
)

// ParseFirmware reads an OVMF image: its footer GUID table, the SEV-ES reset
// block, the SEV hash table area and the SEV metadata sections. The image is
// untrusted input: every offset and size is checked, and errors name what is
// malformed or missing. Pieces a launch may not need (reset block, hash
// table) are reported missing by Measure, not here.
func ParseFirmware(b []byte) (*Firmware, error) {
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("firmware is empty")
	case len(b)%PageSize != 0:
		return nil, fmt.Errorf("firmware is %d bytes, not a whole number of %d-byte pages", len(b), PageSize)
	case len(b) > maxFirmwareSize:
		return nil, fmt.Errorf("firmware is %d bytes, more than the %d a flash image below 4 GiB can be", len(b), maxFirmwareSize)
	}
	fw := &Firmware{Data: b, Size: uint64(len(b))}
	table, err := parseFooterTable(b)
	if err != nil {
		return nil, err
	}
	if d, ok := table[guidSEVESReset]; ok {
		if len(d) < 4 {
			return nil, fmt.Errorf("firmware: SEV-ES reset block entry (%s) holds %d bytes, want at least 4", guidSEVESReset, len(d))
		}
		fw.ResetEIP = binary.LittleEndian.Uint32(d)
		fw.HasResetBlock = true
	}
	if d, ok := table[guidSEVHashTable]; ok {
		if len(d) < 8 {
			return nil, fmt.Errorf("firmware: SEV hash table entry (%s) holds %d bytes, want 8 (address and size)", guidSEVHashTable, len(d))
		}
		fw.HashTableGPA = binary.LittleEndian.Uint32(d)
		fw.HashTableSize = binary.LittleEndian.Uint32(d[4:])
		fw.HasHashTable = true
	}
	if d, ok := table[guidSEVMetadata]; ok {
		if len(d) < 4 {
			return nil, fmt.Errorf("firmware: SEV metadata entry (%s) holds %d bytes, want at least 4", guidSEVMetadata, len(d))
		}
		fw.Sections, err = parseMetadata(b, binary.LittleEndian.Uint32(d))
		if err != nil {
			return nil, err
		}
	}
	return fw, nil
}

// parseFooterTable returns the footer table's entries by GUID.
func parseFooterTable(b []byte) (map[GUID][]byte, error) {
	if len(b) < footerOffsetFromEnd+entryHeaderSize {
		return nil, fmt.Errorf("firmware is %d bytes, too short for an OVMF footer table", len(b))
	}
	footerStart := len(b) - footerOffsetFromEnd - entryHeaderSize
	footer := b[footerStart : footerStart+entryHeaderSize]
	if GUID(footer[2:]) != guidFooterTable {
		return nil, fmt.Errorf("firmware has no OVMF footer table (GUID %s, %d bytes before the end): not an OVMF image",
			guidFooterTable, footerOffsetFromEnd+entryHeaderSize)
	}
	tableSize := int(binary.LittleEndian.Uint16(footer))
	if tableSize < entryHeaderSize || tableSize-entryHeaderSize > footerStart {
		return nil, fmt.Errorf("firmware: OVMF footer table claims %d bytes, which does not fit before the footer", tableSize)
	}
	rest := b[footerStart-(tableSize-entryHeaderSize) : footerStart]
	table := map[GUID][]byte{}
	for len(rest) > 0 {
		if len(rest) < entryHeaderSize {
			return nil, fmt.Errorf("firmware: OVMF footer table has %d stray bytes at its start", len(rest))
		}
		hdr := rest[len(rest)-entryHeaderSize:]
		size := int(binary.LittleEndian.Uint16(hdr))
		guid := GUID(hdr[2:])
		if size < entryHeaderSize || size > len(rest) {
			return nil, fmt.Errorf("firmware: OVMF footer table entry %s claims %d bytes, %d are left", guid, size, len(rest))
		}
		if _, dup := table[guid]; dup {
			// Readers disagree on which of two entries wins; an image with
			// both is not one we can measure with confidence.
			return nil, fmt.Errorf("firmware: OVMF footer table lists %s twice", guid)
		}
		table[guid] = rest[len(rest)-size : len(rest)-entryHeaderSize]
		rest = rest[:len(rest)-size]
	}
	return table, nil
}

// parseMetadata reads the SEV metadata ("ASEV" header and sections) that
// starts offsetFromEnd bytes before the end of the image.
func parseMetadata(b []byte, offsetFromEnd uint32) ([]Section, error) {
	if offsetFromEnd < metadataHeaderSize || int64(offsetFromEnd) > int64(len(b)) {
		return nil, fmt.Errorf("firmware: SEV metadata offset %d lies outside the %d-byte image", offsetFromEnd, len(b))
	}
	start := len(b) - int(offsetFromEnd)
	hdr := b[start : start+metadataHeaderSize]
	if !bytes.Equal(hdr[0:4], []byte("ASEV")) {
		return nil, fmt.Errorf("firmware: SEV metadata signature is %q, want \"ASEV\"", hdr[0:4])
	}
	size := binary.LittleEndian.Uint32(hdr[4:])
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != 1 {
		return nil, fmt.Errorf("firmware: SEV metadata version %d, this build reads version 1", v)
	}
	n := binary.LittleEndian.Uint32(hdr[12:])
	if uint64(size) > uint64(offsetFromEnd) || uint64(size) < metadataHeaderSize+uint64(n)*metadataEntrySize {
		return nil, fmt.Errorf("firmware: SEV metadata of %d bytes cannot hold %d sections within the image", size, n)
	}
	sections := make([]Section, 0, n)
	for i := range int(n) {
		e := b[start+metadataHeaderSize+i*metadataEntrySize:]
		s := Section{
			GPA:  binary.LittleEndian.Uint32(e),
			Size: binary.LittleEndian.Uint32(e[4:]),
			Type: SectionType(binary.LittleEndian.Uint32(e[8:])),
		}
		if err := s.check(); err != nil {
			return nil, fmt.Errorf("firmware: SEV metadata section %d: %w", i, err)
		}
		sections = append(sections, s)
	}
	return sections, nil
}

func (s Section) check() error {
	switch s.Type {
	case SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSVSMCAA, SectionSNPKernelHashes:
	default:
		return fmt.Errorf("unknown %s at %#x", s.Type, s.GPA)
	}
	if s.GPA%PageSize != 0 || s.Size%PageSize != 0 || s.Size == 0 {
		return fmt.Errorf("%s at %#x, %#x bytes: not whole pages", s.Type, s.GPA, s.Size)
	}
	if uint64(s.GPA)+uint64(s.Size) > fourGiB {
		return fmt.Errorf("%s at %#x, %#x bytes: ends above 4 GiB", s.Type, s.GPA, s.Size)
	}
	return nil
}

// CheckDirectBoot checks that the firmware can launch an SEV-SNP guest whose
// directly booted kernel, initrd and command line are measured: what an
// OVMF AmdSevX64 build declares. Its metadata is untrusted input, like the
// image it came from; every error names the part that is missing or wrong.
func (fw *Firmware) CheckDirectBoot() error {
	if err := fw.checkSize(); err != nil {
		return err
	}
	if !fw.HasResetBlock {
		return fmt.Errorf("firmware has no SEV-ES reset block (GUID %s): not an SEV-capable OVMF build", guidSEVESReset)
	}
	if fw.ResetEIP == 0 {
		return fmt.Errorf("firmware's SEV-ES reset block gives no AP start address: it cannot start more than one vCPU")
	}
	if len(fw.Sections) == 0 {
		return fmt.Errorf("firmware has no SEV metadata (GUID %s): not an SEV-SNP-capable OVMF build", guidSEVMetadata)
	}
	count := map[SectionType]int{}
	for i, s := range fw.Sections {
		if err := s.check(); err != nil {
			return fmt.Errorf("firmware: SEV metadata section %d: %w", i, err)
		}
		count[s.Type]++
		end := uint64(s.GPA) + uint64(s.Size)
		if end > fw.GPA() {
			return fmt.Errorf("firmware: SEV metadata section %d (%s at %#x, %#x bytes) overlaps the firmware image at %#x",
				i, s.Type, s.GPA, s.Size, fw.GPA())
		}
		for j, o := range fw.Sections[:i] {
			if uint64(o.GPA) < end && uint64(s.GPA) < uint64(o.GPA)+uint64(o.Size) {
				return fmt.Errorf("firmware: SEV metadata sections %d (%s at %#x) and %d (%s at %#x) overlap",
					j, o.Type, o.GPA, i, s.Type, s.GPA)
			}
		}
	}
	for _, t := range []SectionType{SectionSNPSecrets, SectionCPUID, SectionSNPKernelHashes} {
		switch count[t] {
		case 1:
		case 0:
			if t == SectionSNPKernelHashes {
				return fmt.Errorf("firmware's SEV metadata has no %s section: it cannot measure a directly booted kernel "+
					"(an OvmfPkgX64 build? use OvmfPkg/AmdSev/AmdSevX64.dsc)", t)
			}
			return fmt.Errorf("firmware's SEV metadata has no %s section: not an SEV-SNP-capable OVMF build", t)
		default:
			return fmt.Errorf("firmware's SEV metadata lists %d %s sections, want one", count[t], t)
		}
	}
	s, _ := fw.Section(SectionSNPKernelHashes)
	_, err := (&KernelHashes{}).page(fw, s)
	return err
}

func (fw *Firmware) checkSize() error {
	switch {
	case fw.Size == 0:
		return fmt.Errorf("firmware is empty")
	case fw.Size%PageSize != 0:
		return fmt.Errorf("firmware is %d bytes, not a whole number of %d-byte pages", fw.Size, PageSize)
	case fw.Size > maxFirmwareSize:
		return fmt.Errorf("firmware is %d bytes, more than the %d a flash image below 4 GiB can be", fw.Size, maxFirmwareSize)
	case fw.Data != nil && uint64(len(fw.Data)) != fw.Size:
		return fmt.Errorf("firmware is %d bytes, its description says %d", len(fw.Data), fw.Size)
	}
	return nil
}

// ParseSectionType reads a section type's name as String writes it.
func ParseSectionType(name string) (SectionType, error) {
	for _, t := range []SectionType{SectionSNPSecMem, SectionSNPSecrets, SectionCPUID, SectionSVSMCAA, SectionSNPKernelHashes} {
		if t.String() == name {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown SEV metadata section type %q (known: SNP_SEC_MEM, SNP_SECRETS, CPUID, SVSM_CAA, SNP_KERNEL_HASHES)", name)
}
