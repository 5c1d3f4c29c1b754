package attest

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-sev-guest/kds"
)

// TCB is an SEV-SNP TCB_VERSION by component: the security patch levels of
// the bootloader, the TEE (PSP OS), the SNP firmware and the microcode. It
// follows the Milan and Genoa layout that go-sev-guest v0.15 decodes;
// Turin's (with an FMC level) is not modelled.
type TCB struct {
	Bootloader uint8 `json:"bl"`
	TEE        uint8 `json:"tee"`
	SNP        uint8 `json:"snp"`
	Microcode  uint8 `json:"ucode"`
}

func tcbOf(v uint64) TCB {
	p := kds.DecomposeTCBVersion(kds.TCBVersion(v))
	return TCB{Bootloader: p.BlSpl, TEE: p.TeeSpl, SNP: p.SnpSpl, Microcode: p.UcodeSpl}
}

func (t TCB) parts() kds.TCBParts {
	return kds.TCBParts{BlSpl: t.Bootloader, TeeSpl: t.TEE, SnpSpl: t.SNP, UcodeSpl: t.Microcode}
}

// String is the form ParseTCB reads: bl=N,tee=N,snp=N,ucode=N.
func (t TCB) String() string {
	return fmt.Sprintf("bl=%d,tee=%d,snp=%d,ucode=%d", t.Bootloader, t.TEE, t.SNP, t.Microcode)
}

// ParseTCB reads a TCB as bl=N,tee=N,snp=N,ucode=N (every component, any
// order, as AMD's KDS names them in VCEK URLs: blSPL, teeSPL, snpSPL,
// ucodeSPL are accepted too) or as the 64-bit TCB_VERSION in hex (16
// digits, optionally 0x-prefixed), as a report holds it.
func ParseTCB(s string) (TCB, error) {
	if h, ok := strings.CutPrefix(s, "0x"); ok || !strings.Contains(s, "=") {
		if len(h) != 16 {
			return TCB{}, fmt.Errorf("TCB %q: want bl=N,tee=N,snp=N,ucode=N or the 64-bit TCB_VERSION as 16 hex digits", s)
		}
		v, err := strconv.ParseUint(h, 16, 64)
		if err != nil {
			return TCB{}, fmt.Errorf("TCB %q: %w", s, err)
		}
		return tcbOf(v), nil
	}
	var t TCB
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return TCB{}, fmt.Errorf("TCB %q: %q is not NAME=N", s, part)
		}
		n, err := strconv.ParseUint(value, 10, 8)
		if err != nil {
			return TCB{}, fmt.Errorf("TCB %q: %s: want a number from 0 to 255", s, name)
		}
		component := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(name, "SPL"), "spl"))
		var field *uint8
		switch component {
		case "bl":
			field = &t.Bootloader
		case "tee":
			field = &t.TEE
		case "snp":
			field = &t.SNP
		case "ucode":
			field = &t.Microcode
		default:
			return TCB{}, fmt.Errorf("TCB %q: unknown component %q (bl, tee, snp, ucode)", s, name)
		}
		if seen[component] {
			return TCB{}, fmt.Errorf("TCB %q: %s given twice", s, component)
		}
		seen[component] = true
		*field = uint8(n)
	}
	if len(seen) != 4 {
		return TCB{}, fmt.Errorf("TCB %q: give all of bl, tee, snp and ucode", s)
	}
	return t, nil
}
