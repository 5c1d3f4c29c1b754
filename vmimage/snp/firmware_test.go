package snp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
)

// Offsets in ovmf_AmdSev_suffix.bin (a 4096-byte image), read off its footer.
const (
	fixtureFooterSize = 4096 - 32 - 18         // size field of the footer entry
	fixtureResetEntry = fixtureFooterSize - 18 // size field of the SEV-ES reset block entry
)

func TestParseFirmwareMalformed(t *testing.T) {
	amd := readFixture(t, "ovmf_AmdSev_suffix.bin")
	fw, err := ParseFirmware(amd)
	if err != nil {
		t.Fatal(err)
	}
	// Where the metadata header sits in the fixture.
	table, err := parseFooterTable(amd)
	if err != nil {
		t.Fatal(err)
	}
	metaStart := len(amd) - int(binary.LittleEndian.Uint32(table[guidSEVMetadata]))
	if !bytes.Equal(amd[metaStart:metaStart+4], []byte("ASEV")) || len(fw.Sections) == 0 {
		t.Fatalf("fixture's metadata not found at %#x", metaStart)
	}

	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(amd)) }
	put16 := func(off int, v uint16) []byte {
		return edit(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[off:], v); return b })
	}
	put32 := func(off int, v uint32) []byte {
		return edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b })
	}
	for _, tc := range []struct {
		name string
		fw   []byte
		want string
	}{
		{"empty", nil, "firmware is empty"},
		{"not whole pages", amd[:4000], "not a whole number of 4096-byte pages"},
		{"no footer", make([]byte, PageSize), "no OVMF footer table"},
		{"footer table too large", put16(fixtureFooterSize, 0xffff), "does not fit before the footer"},
		{"footer table smaller than its header", put16(fixtureFooterSize, 3), "does not fit before the footer"},
		{"entry size below header", put16(fixtureResetEntry, 2), "claims 2 bytes"},
		{"entry size beyond table", put16(fixtureResetEntry, 0x4000), "claims 16384 bytes"},
		{"metadata signature", edit(func(b []byte) []byte { b[metaStart] = 'X'; return b }), `signature is "XSEV"`},
		{"metadata version", put32(metaStart+8, 2), "version 2"},
		{"metadata too many sections", put32(metaStart+12, 1000), "cannot hold 1000 sections"},
		{"metadata size beyond image", put32(metaStart+4, 0x10000), "cannot hold"},
		{"section type unknown", put32(metaStart+16+8, 9), "unknown section type 0x9"},
		{"section not page aligned", put32(metaStart+16, 0x800001), "not whole pages"},
		{"section empty", put32(metaStart+16+4, 0), "not whole pages"},
		{"section above 4 GiB", put32(metaStart+16, 0xfffff000), "ends above 4 GiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFirmware(tc.fw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestGUID(t *testing.T) {
	const s = "96b582de-1fb2-45f7-baea-a366c55a082d"
	g, err := parseGUID(s)
	if err != nil {
		t.Fatal(err)
	}
	// Stored mixed-endian, as in the firmware's last bytes.
	want := []byte{0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d}
	if !bytes.Equal(g[:], want) {
		t.Errorf("parseGUID = % x, want % x", g, want)
	}
	if g.String() != s {
		t.Errorf("String() = %s, want %s", g, s)
	}
	for _, bad := range []string{"", "96b582de1fb245f7baeaa366c55a082d", "96b582de-1fb2-45f7-baea-a366c55a082g"} {
		if _, err := parseGUID(bad); err == nil {
			t.Errorf("parseGUID(%q) accepted", bad)
		}
	}
}

// FuzzParseFirmware feeds arbitrary images to the parser and, when one is
// accepted, measures launches with it: untrusted firmware must give an
// error, never a panic or an out-of-range read.
//
// An input is the end of an image: it is measured as given and also padded
// in front with zeros to whole pages, since everything the parser reads
// hangs off the image's last bytes. The seeds are the fixtures with their SEV
// metadata moved next to the footer table (compactFirmware), a few hundred
// bytes each: the fuzzer minimizes interesting inputs in time quadratic in
// their length, which for a whole 4 KiB page takes about a minute each.
func FuzzParseFirmware(f *testing.F) {
	for _, name := range []string{"ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin", "ovmf_AmdSev_debian_suffix.bin"} {
		f.Add(compactFirmware(f, readFixture(f, name)))
	}
	kernel := emptyKernel(f, "console=ttyS0")
	check := func(t *testing.T, b []byte) {
		fw, err := ParseFirmware(b)
		if err != nil {
			if fw != nil {
				t.Fatal("firmware returned with an error")
			}
			return
		}
		if fw.GPA()+uint64(len(fw.Data)) != fourGiB {
			t.Fatalf("firmware at %#x does not end at 4 GiB", fw.GPA())
		}
		var pages uint64
		for _, s := range fw.Sections {
			if s.GPA%PageSize != 0 || s.Size%PageSize != 0 || uint64(s.GPA)+uint64(s.Size) > fourGiB {
				t.Fatalf("section accepted out of bounds: %+v", s)
			}
			pages += uint64(s.Size) / PageSize
		}
		// Keep the work per input small: large sections are many pages.
		if pages > 1<<12 {
			return
		}
		for _, l := range []Launch{
			{Firmware: b, VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: 1},
			{Firmware: b, VCPUs: 3, VCPUType: "EPYC-Milan", GuestFeatures: 1, Kernel: kernel},
			{Firmware: b, VCPUs: 2, VMM: VMMEC2, Kernel: kernel},
			{Firmware: b, VCPUs: 2, VMM: VMMGCE},
		} {
			d1, err1 := Measure(l)
			d2, err2 := Measure(l)
			if (err1 == nil) != (err2 == nil) || d1 != d2 {
				t.Fatalf("Measure is not deterministic: %x %v, %x %v", d1, err1, d2, err2)
			}
		}
		// A firmware fit for measured direct boot measures the same from its
		// metadata alone (what reference values carry) as from its pages,
		// for every vCPU count at once as one by one.
		if fw.CheckDirectBoot() != nil {
			return
		}
		digest, err := FirmwareDigest(b)
		if err != nil {
			t.Fatalf("firmware passes CheckDirectBoot, but: %v", err)
		}
		meta := *fw
		meta.Data = nil
		l := Launch{Firmware: b, VCPUType: "EPYC-v4", GuestFeatures: 1, Kernel: kernel}
		all, err := MeasureVCPUs(l, 3)
		if err != nil {
			t.Fatalf("firmware passes CheckDirectBoot, but: %v", err)
		}
		l.Firmware, l.Metadata, l.FirmwareDigest = nil, &meta, &digest
		fromMeta, err := MeasureVCPUs(l, 3)
		if err != nil {
			t.Fatalf("metadata alone: %v", err)
		}
		for i := range all {
			l.VCPUs = i + 1
			one, err := Measure(l)
			if err != nil || one != all[i] || fromMeta[i] != all[i] {
				t.Fatalf("%d vCPUs: image %x, metadata %x, alone %x %v", i+1, all[i], fromMeta[i], one, err)
			}
		}
	}
	f.Fuzz(func(t *testing.T, tail []byte) {
		check(t, tail)
		if len(tail) > 2*PageSize || len(tail)%PageSize == 0 {
			return
		}
		img := make([]byte, (len(tail)+PageSize-1)/PageSize*PageSize)
		copy(img[len(img)-len(tail):], tail)
		check(t, img)
	})
}

// compactFirmware returns the end of an OVMF image from the SEV metadata
// on, with the code between the metadata and the footer table cut out and
// the metadata's offset adjusted: padded to a page it parses and measures
// like the original.
func compactFirmware(t testing.TB, img []byte) []byte {
	t.Helper()
	footerStart := len(img) - footerOffsetFromEnd - entryHeaderSize
	tableStart := footerStart - (int(binary.LittleEndian.Uint16(img[footerStart:])) - entryHeaderSize)
	table, err := parseFooterTable(img)
	if err != nil {
		t.Fatal(err)
	}
	entry, ok := table[guidSEVMetadata]
	if !ok {
		return bytes.Clone(img[tableStart:])
	}
	metaStart := len(img) - int(binary.LittleEndian.Uint32(entry))
	metaSize := int(binary.LittleEndian.Uint32(img[metaStart+4:]))
	out := append(bytes.Clone(img[metaStart:metaStart+metaSize]), img[tableStart:]...)
	// The entry's data precedes its size and GUID; it keeps its distance
	// from the end.
	guidAt := bytes.LastIndex(img, guidSEVMetadata[:])
	entryAt := len(out) - (len(img) - (guidAt - 2 - len(entry)))
	binary.LittleEndian.PutUint32(out[entryAt:], uint32(len(out)))
	return out
}

func TestCompactFirmwareMeasuresAlike(t *testing.T) {
	for _, v := range snpVectors {
		if v.firmware != "ovmf_AmdSev_suffix.bin" {
			continue
		}
		l := v.launch(t)
		tail := compactFirmware(t, l.Firmware)
		img := make([]byte, PageSize)
		copy(img[PageSize-len(tail):], tail)
		l.Firmware = img
		l.FirmwareDigest = (*[DigestSize]byte)(mustHex(t, ovmfHashAmdSev)) // the page itself differs
		got, err := Measure(l)
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if hex.EncodeToString(got[:]) != v.want {
			t.Errorf("%s on the compacted firmware: %x, want %s", v.name, got, v.want)
		}
	}
}

func TestCheckDirectBoot(t *testing.T) {
	parse := func(name string) *Firmware {
		fw, err := ParseFirmware(readFixture(t, name))
		if err != nil {
			t.Fatal(err)
		}
		return fw
	}
	if err := parse("ovmf_AmdSev_suffix.bin").CheckDirectBoot(); err != nil {
		t.Fatalf("AmdSev fixture: %v", err)
	}
	for _, tc := range []struct {
		name   string
		fw     *Firmware
		modify func(fw *Firmware)
		want   string
	}{
		{"OvmfX64", parse("ovmf_OvmfX64_suffix.bin"), nil, "no SNP_KERNEL_HASHES section"},
		{"no reset block", nil, func(fw *Firmware) { fw.HasResetBlock = false }, "no SEV-ES reset block"},
		{"no AP address", nil, func(fw *Firmware) { fw.ResetEIP = 0 }, "no AP start address"},
		{"no metadata", nil, func(fw *Firmware) { fw.Sections = nil }, "has no SEV metadata"},
		{"no hash table", nil, func(fw *Firmware) { fw.HasHashTable = false }, "no SEV hash table entry"},
		{"hash table too small", nil, func(fw *Firmware) { fw.HashTableSize = 16 }, "the table needs"},
		{"size not pages", nil, func(fw *Firmware) { fw.Size = 100 }, "not a whole number"},
		{"size disagrees with data", nil, func(fw *Firmware) { fw.Size = 2 * PageSize }, "its description says"},
		{"two secrets pages", nil, func(fw *Firmware) {
			s, _ := fw.Section(SectionSNPSecrets)
			s.GPA = 0x100000
			fw.Sections = append(fw.Sections, s)
		}, "2 SNP_SECRETS sections"},
		{"no CPUID page", nil, func(fw *Firmware) {
			fw.Sections = slices.DeleteFunc(fw.Sections, func(s Section) bool { return s.Type == SectionCPUID })
		}, "no CPUID section"},
		{"overlap", nil, func(fw *Firmware) {
			s := fw.Sections[0]
			s.Type = SectionSVSMCAA
			fw.Sections = append(fw.Sections, s)
		}, "overlap"},
		{"over the image", nil, func(fw *Firmware) {
			fw.Sections = append(fw.Sections, Section{GPA: uint32(fw.GPA()), Size: PageSize, Type: SectionSVSMCAA})
		}, "overlaps the firmware image"},
		{"unknown type", nil, func(fw *Firmware) {
			fw.Sections = append(fw.Sections, Section{GPA: 0x100000, Size: PageSize, Type: 9})
		}, "unknown section type 0x9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw := tc.fw
			if fw == nil {
				fw = parse("ovmf_AmdSev_suffix.bin")
			}
			if tc.modify != nil {
				tc.modify(fw)
			}
			err := fw.CheckDirectBoot()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestParseDebianFirmware pins the SEV metadata of the firmware hack/ovmf.sh
// builds (Debian's edk2 2025.02): seven sections, among them the SVSM
// calling area edk2 added after the sev-snp-measure fixture's version, the
// kernel-hashes page with the hash table at 0x810c00, and the AP reset
// address.
func TestParseDebianFirmware(t *testing.T) {
	fw, err := ParseFirmware(readFixture(t, "ovmf_AmdSev_debian_suffix.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.CheckDirectBoot(); err != nil {
		t.Fatal(err)
	}
	want := []Section{
		{0x800000, 0x9000, SectionSNPSecMem},
		{0x80a000, 0x3000, SectionSNPSecMem},
		{0x80d000, 0x1000, SectionSNPSecrets},
		{0x80e000, 0x1000, SectionCPUID},
		{0x80f000, 0x1000, SectionSVSMCAA},
		{0x811000, 0xf000, SectionSNPSecMem},
		{0x810000, 0x1000, SectionSNPKernelHashes},
	}
	if !slices.Equal(fw.Sections, want) {
		t.Errorf("sections %+v, want %+v", fw.Sections, want)
	}
	if fw.ResetEIP != 0x80b004 || fw.HashTableGPA != 0x810c00 || fw.HashTableSize != 0x400 {
		t.Errorf("AP reset %#x, hash table %#x (%#x bytes); want 0x80b004, 0x810c00 (0x400)", fw.ResetEIP, fw.HashTableGPA, fw.HashTableSize)
	}
}
