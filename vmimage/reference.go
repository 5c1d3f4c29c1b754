package vmimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/contrast-vm/contrast/vmimage/snp"
)

// ReferenceFile is the image directory's file of SEV-SNP reference
// measurements, written by Build when it is given a firmware.
const ReferenceFile = "reference.json"

// referenceSchema is bumped when a reader of an older reference would
// misunderstand a newer one. Schema 1 listed one measurement per vCPU count
// (1 to 8); schema 2 holds what the measurement is computed from, so a
// verifier computes it for whatever count a pod was given.
const referenceSchema = 2

// Reference holds what the SEV-SNP launch measurement of a pod VM booted
// from an image is computed from: the firmware (the digest of its pages and
// its SEV metadata, which is all the launch takes from it besides its
// pages), the kernel, initrd and command line (by their digests, as the
// firmware's kernel-hashes page holds them), the vCPU type and the guest
// features; and the range of vCPU counts a verifier accepts. The
// measurement for n vCPUs is Measurement(n); a verifier accepts an
// attestation report whose MEASUREMENT is that of a count in the range.
//
// It is written as reference.json next to the image, indented, fields in
// this order, and depends only on the build's inputs:
//
//	{
//	  "schema": 2,
//	  "firmware": {
//	    "size": 2097152, "sha256": "<64 hex>", "pagesDigest": "<96 hex>",
//	    "apResetAddress": "0xffffe004",
//	    "hashTable": {"address": "0x80fc00", "size": "0x400"},
//	    "sections": [{"address": "0x800000", "size": "0x9000", "type": "SNP_SEC_MEM"}, ...]
//	  },
//	  "kernelSHA256": "<64 hex>",
//	  "initrdSHA256": "<64 hex>",
//	  "kernelCmdline": "console=ttyS0 ...",
//	  "vcpuType": "EPYC-v4",
//	  "vcpuSignature": "0x800f12",
//	  "guestFeatures": "0x1",
//	  "vcpus": {"min": 1, "max": 64}
//	}
type Reference struct {
	Schema int `json:"schema"`
	// Firmware is the OVMF AmdSevX64 image (QEMU -bios) measured.
	Firmware ReferenceFirmware `json:"firmware"`
	// KernelSHA256 and InitrdSHA256 are the image's kernel and initrd, as in
	// its manifest; the launch measures their SHA-256.
	KernelSHA256 string `json:"kernelSHA256"`
	InitrdSHA256 string `json:"initrdSHA256"`
	// KernelCmdline is the manifest's command line, measured with its NUL.
	KernelCmdline string `json:"kernelCmdline"`
	// VCPUType is the QEMU CPU model (-cpu) and VCPUSignature its CPUID
	// signature, which each vCPU's initial state (VMSA) carries.
	VCPUType      string    `json:"vcpuType"`
	VCPUSignature HexUint64 `json:"vcpuSignature"`
	// GuestFeatures is the VMSA's SEV_FEATURES (QEMU >= 9.1: 0x1).
	GuestFeatures HexUint64 `json:"guestFeatures"`
	// VCPUs is the range of vCPU counts whose measurements are accepted.
	VCPUs VCPURange `json:"vcpus"`
}

// ReferenceFirmware identifies the firmware a reference was computed for
// and carries what the launch measurement takes from it.
type ReferenceFirmware struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// PagesDigest is the launch digest after the firmware's pages, 96 hex
	// digits (sev-snp-measure's --snp-ovmf-hash; contrast measure --mode
	// snp:ovmf-hash).
	PagesDigest string `json:"pagesDigest"`
	// APResetAddress is where the firmware's SEV-ES reset block starts the
	// application processors; every VMSA but the first carries it.
	APResetAddress HexUint64 `json:"apResetAddress"`
	// HashTable is where QEMU writes the SEV hash table (kernel, initrd and
	// command line digests) within the kernel-hashes page.
	HashTable ReferenceRange `json:"hashTable"`
	// Sections are the firmware's SEV metadata sections in its order, the
	// order they are measured in.
	Sections []ReferenceSection `json:"sections"`
}

// ReferenceRange is a guest-physical range.
type ReferenceRange struct {
	Address HexUint64 `json:"address"`
	Size    HexUint64 `json:"size"`
}

// ReferenceSection is one SEV metadata section of the firmware.
type ReferenceSection struct {
	Address HexUint64 `json:"address"`
	Size    HexUint64 `json:"size"`
	Type    string    `json:"type"`
}

// VCPURange is an inclusive range of vCPU counts.
type VCPURange struct {
	Min int `json:"min"`
	Max int `json:"max"`
}

func (v VCPURange) String() string {
	if v.Min == v.Max {
		return strconv.Itoa(v.Min)
	}
	return fmt.Sprintf("%d-%d", v.Min, v.Max)
}

// ParseVCPURange reads "N" or "MIN-MAX".
func ParseVCPURange(s string) (VCPURange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	min, err1 := strconv.Atoi(lo)
	max, err2 := strconv.Atoi(hi)
	if err1 != nil || err2 != nil {
		return VCPURange{}, fmt.Errorf("vCPU counts %q: want N or MIN-MAX", s)
	}
	r := VCPURange{Min: min, Max: max}
	return r, r.validate()
}

func (v VCPURange) validate() error {
	if v.Min < 1 || v.Max < v.Min || v.Max > maxReferenceVCPUs {
		return fmt.Errorf("vCPU counts %d to %d: want 1 <= min <= max <= %d", v.Min, v.Max, maxReferenceVCPUs)
	}
	return nil
}

// Contains tells whether o lies within v.
func (v VCPURange) Contains(o VCPURange) bool { return v.Min <= o.Min && o.Max <= v.Max }

// ReferenceMeasurement is the launch MEASUREMENT of a VM with VCPUs vCPUs.
type ReferenceMeasurement struct {
	VCPUs       int
	Measurement [snp.DigestSize]byte
}

// HexUint64 is a number written in JSON as a hex string ("0x1"), the way
// CPU signatures, feature masks and addresses are read.
type HexUint64 uint64

func (h HexUint64) MarshalJSON() ([]byte, error) {
	return json.Marshal("0x" + strconv.FormatUint(uint64(h), 16))
}

func (h *HexUint64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a hex string like \"0x1\": %w", err)
	}
	if !strings.HasPrefix(s, "0x") {
		return fmt.Errorf("%q: want a hex string like \"0x1\"", s)
	}
	v, err := strconv.ParseUint(s[2:], 16, 64)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	*h = HexUint64(v)
	return nil
}

// launch is the SNP launch the reference describes, the vCPU count aside.
func (r *Reference) launch() (snp.Launch, error) {
	f := r.Firmware
	fw := &snp.Firmware{
		Size:          uint64(f.Size),
		HasResetBlock: true,
		ResetEIP:      uint32(f.APResetAddress),
		HasHashTable:  true,
		HashTableGPA:  uint32(f.HashTable.Address),
		HashTableSize: uint32(f.HashTable.Size),
	}
	if uint64(f.APResetAddress) > math.MaxUint32 || uint64(f.HashTable.Address) > math.MaxUint32 || uint64(f.HashTable.Size) > math.MaxUint32 {
		return snp.Launch{}, errors.New("firmware: an address or size above 4 GiB")
	}
	for i, s := range f.Sections {
		t, err := snp.ParseSectionType(s.Type)
		if err != nil {
			return snp.Launch{}, fmt.Errorf("firmware section %d: %w", i, err)
		}
		if uint64(s.Address) > math.MaxUint32 || uint64(s.Size) > math.MaxUint32 {
			return snp.Launch{}, fmt.Errorf("firmware section %d (%s): address or size above 4 GiB", i, s.Type)
		}
		fw.Sections = append(fw.Sections, snp.Section{GPA: uint32(s.Address), Size: uint32(s.Size), Type: t})
	}
	if err := fw.CheckDirectBoot(); err != nil {
		return snp.Launch{}, err
	}
	digest, err := parseDigest(f.PagesDigest)
	if err != nil {
		return snp.Launch{}, fmt.Errorf("firmware pagesDigest: %w", err)
	}
	kh := &snp.KernelHashes{Cmdline: snp.CmdlineHash(r.KernelCmdline)}
	if err := decodeHex(kh.Kernel[:], r.KernelSHA256); err != nil {
		return snp.Launch{}, fmt.Errorf("kernelSHA256: %w", err)
	}
	if err := decodeHex(kh.Initrd[:], r.InitrdSHA256); err != nil {
		return snp.Launch{}, fmt.Errorf("initrdSHA256: %w", err)
	}
	return snp.Launch{
		Metadata:       fw,
		FirmwareDigest: &digest,
		Kernel:         kh,
		VCPUType:       r.VCPUType,
		VCPUSig:        uint32(r.VCPUSignature),
		GuestFeatures:  uint64(r.GuestFeatures),
	}, nil
}

// Measurements computes the launch measurements for the vCPU counts of
// want, which must lie within the reference's range.
func (r *Reference) Measurements(want VCPURange) ([]ReferenceMeasurement, error) {
	if err := want.validate(); err != nil {
		return nil, err
	}
	if !r.VCPUs.Contains(want) {
		return nil, fmt.Errorf("vCPU counts %s lie outside the reference's %s", want, r.VCPUs)
	}
	l, err := r.launch()
	if err != nil {
		return nil, fmt.Errorf("reference measurements: %w", err)
	}
	all, err := snp.MeasureVCPUs(l, want.Max)
	if err != nil {
		return nil, fmt.Errorf("reference measurements: %w", err)
	}
	out := make([]ReferenceMeasurement, 0, want.Max-want.Min+1)
	for n := want.Min; n <= want.Max; n++ {
		out = append(out, ReferenceMeasurement{VCPUs: n, Measurement: all[n-1]})
	}
	return out, nil
}

// Measurement returns the reference measurement for a vCPU count; false
// when the count lies outside the reference's range.
func (r *Reference) Measurement(vcpus int) ([snp.DigestSize]byte, bool) {
	ms, err := r.Measurements(VCPURange{Min: vcpus, Max: vcpus})
	if err != nil {
		return [snp.DigestSize]byte{}, false
	}
	return ms[0].Measurement, true
}

// Match tells which vCPU count's reference measurement equals m.
func (r *Reference) Match(m [snp.DigestSize]byte) (vcpus int, ok bool) {
	ms, err := r.Measurements(r.VCPUs)
	if err != nil {
		return 0, false
	}
	for _, ref := range ms {
		if ref.Measurement == m {
			return ref.VCPUs, true
		}
	}
	return 0, false
}

// ReferenceOptions make Build compute the image's reference measurements.
type ReferenceOptions struct {
	// Firmware is the OVMF AmdSevX64 image the runtime boots the image with.
	Firmware string
	// VCPUType is the QEMU CPU model (default DefaultVCPUType).
	VCPUType string
	// MaxVCPUs: the reference accepts 1 to MaxVCPUs vCPUs (default
	// DefaultMaxVCPUs).
	MaxVCPUs int
	// GuestFeatures is the VMSA's SEV_FEATURES (0: DefaultGuestFeatures).
	GuestFeatures uint64
	// Bundle copies the firmware into the image as FirmwareFile, so that a
	// release carries the firmware its reference was computed for.
	Bundle bool
}

// FirmwareFile is the image directory's copy of the firmware its
// reference.json was computed for (ReferenceOptions.Bundle).
const FirmwareFile = "OVMF.fd"

// Defaults of ReferenceOptions.
const (
	DefaultVCPUType = "EPYC-v4"
	DefaultMaxVCPUs = 64
	// DefaultGuestFeatures is what QEMU >= 9.1 sets for an SNP guest unless
	// told otherwise: SNPActive only.
	DefaultGuestFeatures = 0x1
	// maxReferenceVCPUs bounds MaxVCPUs (QEMU's q35 limit).
	maxReferenceVCPUs = 4096
)

func (o *ReferenceOptions) withDefaults() ReferenceOptions {
	r := *o
	if r.VCPUType == "" {
		r.VCPUType = DefaultVCPUType
	}
	if r.MaxVCPUs == 0 {
		r.MaxVCPUs = DefaultMaxVCPUs
	}
	if r.GuestFeatures == 0 {
		r.GuestFeatures = DefaultGuestFeatures
	}
	return r
}

func (o *ReferenceOptions) validate() error {
	if o.Firmware == "" {
		return errors.New("reference measurements: no firmware given")
	}
	if o.MaxVCPUs < 0 || o.MaxVCPUs > maxReferenceVCPUs {
		return fmt.Errorf("reference measurements: maximum vCPU count %d: want 1 to %d", o.MaxVCPUs, maxReferenceVCPUs)
	}
	if o.VCPUType != "" {
		if _, err := snp.VCPUSignature(o.VCPUType); err != nil {
			return fmt.Errorf("reference measurements: %w", err)
		}
	}
	return nil
}

// ComputeReference computes the reference measurements of an image with
// the given manifest for the firmware and vCPU settings of opts.
func ComputeReference(m *Manifest, opts ReferenceOptions) (*Reference, error) {
	fw, err := loadReferenceFirmware(opts)
	if err != nil {
		return nil, err
	}
	return fw.reference(m)
}

// referenceFirmware is a firmware read and checked for reference
// measurements, with the options to measure it with.
type referenceFirmware struct {
	opts   ReferenceOptions // with defaults
	image  []byte
	digest [snp.DigestSize]byte // of its pages: hashed once for all vCPU counts
}

func loadReferenceFirmware(opts ReferenceOptions) (*referenceFirmware, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	fw := &referenceFirmware{opts: opts.withDefaults()}
	var err error
	if fw.image, err = os.ReadFile(fw.opts.Firmware); err != nil {
		return nil, fmt.Errorf("reference measurements: firmware: %w", err)
	}
	parsed, err := snp.ParseFirmware(fw.image)
	if err == nil {
		err = parsed.CheckDirectBoot()
	}
	if err != nil {
		return nil, fmt.Errorf("reference measurements: firmware %s: %w", fw.opts.Firmware, err)
	}
	if fw.digest, err = snp.FirmwareDigest(fw.image); err != nil {
		return nil, fmt.Errorf("reference measurements: firmware %s: %w", fw.opts.Firmware, err)
	}
	return fw, nil
}

func (fw *referenceFirmware) reference(m *Manifest) (*Reference, error) {
	o := fw.opts
	kernel, okK := m.File(KernelFile)
	if !okK {
		return nil, errors.New("reference measurements: the manifest lists no kernel")
	}
	initrdSHA256 := m.initrdSHA256()
	kh := &snp.KernelHashes{Cmdline: snp.CmdlineHash(m.KernelCmdline)}
	if err := decodeHex(kh.Kernel[:], kernel.SHA256); err != nil {
		return nil, fmt.Errorf("reference measurements: kernel sha256: %w", err)
	}
	if err := decodeHex(kh.Initrd[:], initrdSHA256); err != nil {
		return nil, fmt.Errorf("reference measurements: initrd sha256: %w", err)
	}
	sig, err := snp.VCPUSignature(o.VCPUType)
	if err != nil {
		return nil, fmt.Errorf("reference measurements: %w", err)
	}
	parsed, err := snp.ParseFirmware(fw.image)
	if err != nil {
		return nil, fmt.Errorf("reference measurements: firmware %s: %w", o.Firmware, err)
	}
	fwSum := sha256.Sum256(fw.image)
	ref := &Reference{
		Schema: referenceSchema,
		Firmware: ReferenceFirmware{
			Size:           int64(len(fw.image)),
			SHA256:         hex.EncodeToString(fwSum[:]),
			PagesDigest:    hex.EncodeToString(fw.digest[:]),
			APResetAddress: HexUint64(parsed.ResetEIP),
			HashTable:      ReferenceRange{Address: HexUint64(parsed.HashTableGPA), Size: HexUint64(parsed.HashTableSize)},
		},
		KernelSHA256:  kernel.SHA256,
		InitrdSHA256:  initrdSHA256,
		KernelCmdline: m.KernelCmdline,
		VCPUType:      o.VCPUType,
		VCPUSignature: HexUint64(sig),
		GuestFeatures: HexUint64(o.GuestFeatures),
		VCPUs:         VCPURange{Min: 1, Max: o.MaxVCPUs},
	}
	for _, s := range parsed.Sections {
		ref.Firmware.Sections = append(ref.Firmware.Sections, ReferenceSection{Address: HexUint64(s.GPA), Size: HexUint64(s.Size), Type: s.Type.String()})
	}
	// The reference's own computation, from the metadata it records, must
	// give what the firmware's whole image gives.
	fromImage, err := snp.Measure(snp.Launch{
		Firmware: fw.image, FirmwareDigest: &fw.digest, Kernel: kh,
		VCPUs: o.MaxVCPUs, VCPUType: o.VCPUType, GuestFeatures: o.GuestFeatures,
	})
	if err != nil {
		return nil, fmt.Errorf("reference measurements: firmware %s: %w", o.Firmware, err)
	}
	if got, ok := ref.Measurement(o.MaxVCPUs); !ok || got != fromImage {
		return nil, fmt.Errorf("reference measurements: firmware %s: its recorded metadata measures differently from its image", o.Firmware)
	}
	return ref, nil
}

// Marshal encodes r as reference.json holds it.
func (r *Reference) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode reference: %w", err)
	}
	return append(b, '\n'), nil
}

// WriteReference writes r to path.
func WriteReference(path string, r *Reference) error {
	if err := r.validate(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	b, err := r.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write reference: %w", err)
	}
	return nil
}

// ReadReference reads and checks a reference.json file, which may have
// been copied away from its image.
func ReadReference(path string) (*Reference, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reference measurements: %w", err)
	}
	r, err := ParseReference(raw)
	if err != nil {
		return nil, fmt.Errorf("reference measurements %s: %w", path, err)
	}
	return r, nil
}

// ParseReference decodes and checks the contents of a reference.json.
func ParseReference(raw []byte) (*Reference, error) {
	r := &Reference{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(r); err != nil {
		return nil, fmt.Errorf("malformed: %w", err)
	}
	if dec.More() {
		return nil, errors.New("malformed: data after the JSON object")
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// LoadReference reads the reference measurements of the image in dir and
// checks that they are for that image's kernel, initrd and command line.
// The image's files are not read; Load checks those against the manifest.
func LoadReference(dir string) (*Reference, error) {
	p := filepath.Join(dir, ReferenceFile)
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest image %s has no %s (build it with `contrast image build --firmware`)", dir, ReferenceFile)
	}
	r, err := ReadReference(p)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("guest image %s: %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("guest image %s: %s is malformed: %w", dir, ManifestFile, err)
	}
	if err := r.matches(&m); err != nil {
		return nil, fmt.Errorf("guest image %s: %s does not belong to this image: %w", dir, ReferenceFile, err)
	}
	return r, nil
}

func (r *Reference) matches(m *Manifest) error {
	kernel, _ := m.File(KernelFile)
	switch {
	case r.KernelCmdline != m.KernelCmdline:
		return fmt.Errorf("kernel command line %q, the manifest says %q", r.KernelCmdline, m.KernelCmdline)
	case r.KernelSHA256 != kernel.SHA256:
		return fmt.Errorf("kernel sha256 %s, the manifest says %s", r.KernelSHA256, kernel.SHA256)
	case r.InitrdSHA256 != m.initrdSHA256():
		return fmt.Errorf("initrd sha256 %s, the manifest says %s", r.InitrdSHA256, m.initrdSHA256())
	}
	return nil
}

// noInitrdSHA256 is the SHA-256 of no bytes: what the launch measures as
// the initrd of a VM booted without one (a root disk image).
const noInitrdSHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// initrdSHA256 is the initrd hash the launch measures: the initrd's, or
// that of nothing for an image with a root disk instead. The root disk is
// measured through the command line, which carries its root hash.
func (m *Manifest) initrdSHA256() string {
	if initrd, ok := m.File(InitrdFile); ok {
		return initrd.SHA256
	}
	return noInitrdSHA256
}

func (r *Reference) validate() error {
	if r.Schema != referenceSchema {
		return fmt.Errorf("schema %d, this build reads schema %d", r.Schema, referenceSchema)
	}
	for _, h := range []struct{ name, val string }{
		{"firmware sha256", r.Firmware.SHA256}, {"kernelSHA256", r.KernelSHA256}, {"initrdSHA256", r.InitrdSHA256},
	} {
		if !isLowerHex(h.val, sha256.Size) {
			return fmt.Errorf("%s %q is not %d lower-case hex digits", h.name, h.val, 2*sha256.Size)
		}
	}
	if r.Firmware.Size <= 0 {
		return fmt.Errorf("firmware size %d", r.Firmware.Size)
	}
	if err := checkCmdline(r.KernelCmdline); err != nil {
		return err
	}
	sig, err := snp.VCPUSignature(r.VCPUType)
	if err != nil {
		return fmt.Errorf("vcpuType: %w", err)
	}
	if uint64(r.VCPUSignature) != uint64(sig) {
		return fmt.Errorf("vcpuSignature %#x is not that of vCPU type %s (%#x)", uint64(r.VCPUSignature), r.VCPUType, sig)
	}
	if err := r.VCPUs.validate(); err != nil {
		return fmt.Errorf("vcpus: %w", err)
	}
	if !isLowerHex(r.Firmware.PagesDigest, snp.DigestSize) {
		return fmt.Errorf("firmware pagesDigest %q is not %d lower-case hex digits", r.Firmware.PagesDigest, 2*snp.DigestSize)
	}
	if _, err := r.launch(); err != nil {
		return err
	}
	return nil
}

func isLowerHex(s string, size int) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == size && strings.ToLower(s) == s
}

func parseDigest(s string) ([snp.DigestSize]byte, error) {
	var d [snp.DigestSize]byte
	err := decodeHex(d[:], s)
	return d, err
}

func decodeHex(dst []byte, s string) error {
	b, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	if len(b) != len(dst) {
		return fmt.Errorf("%d bytes, want %d", len(b), len(dst))
	}
	copy(dst, b)
	return nil
}
