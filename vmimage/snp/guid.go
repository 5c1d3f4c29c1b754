package snp

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is an EFI GUID as it is stored in firmware and in the SEV hash table:
// the first three groups little-endian, the last two as written.
type GUID [16]byte

// String formats g the way EFI and edk2 write GUIDs.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}

// parseGUID reads the textual form (8-4-4-4-12 hex digits).
func parseGUID(s string) (GUID, error) {
	var g GUID
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("GUID %q: not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	raw, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("GUID %q: %w", s, err)
	}
	// The first three groups are integers stored little-endian.
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g, nil
}

// mustGUID is parseGUID for the constants below.
func mustGUID(s string) GUID {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// GUIDs of the OVMF footer table entries (edk2 OvmfPkg/ResetVector) and of the
// SEV hash table QEMU writes for measured direct boot (QEMU target/i386/sev.c).
var (
	guidFooterTable   = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	guidSEVHashTable  = mustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454") // where QEMU puts the hash table
	guidSEVESReset    = mustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e") // AP reset address
	guidSEVMetadata   = mustGUID("dc886566-984a-4798-a75e-5585a7bf67cc") // offset of the SEV metadata
	guidHashTableHead = mustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	guidHashKernel    = mustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
	guidHashInitrd    = mustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	guidHashCmdline   = mustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)
