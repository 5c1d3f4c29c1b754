package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

// measure is `contrast measure`: the expected SEV-SNP launch measurement of
// a pod VM, with the flags of virtee's sev-snp-measure tool, and optionally
// an ID block and ID auth signed for it.
func measure(ctx context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast measure",
		"--mode snp --ovmf FILE [--kernel FILE [--initrd FILE] [--append CMDLINE]] --vcpus N|MIN-MAX (--vcpu-type TYPE | --vcpu-sig SIG | --vcpu-family F --vcpu-model M --vcpu-stepping S)\n"+
			"       [--guest-features 0x1] [--vmm-type QEMU] [--snp-ovmf-hash HEX] [--output-format hex|base64]\n"+
			"       [--id-key KEY.pem [--author-key KEY.pem] [--policy 0x30000] [--family-id HEX] [--image-id HEX] --id-block-out FILE --id-auth-out FILE]\n"+
			"       | --reference REF.json|IMAGE_DIR [--vcpus N|MIN-MAX] [--output-format hex|base64]",
		"Prints the SEV-SNP launch MEASUREMENT (SHA-384 launch digest) of a guest QEMU\n"+
			"boots with the OVMF AmdSevX64 firmware, a directly booted kernel (kernel-hashes=on),\n"+
			"initrd and command line, N vCPUs of a CPU model and the guest features:\n"+
			"96 hex digits by default. --mode snp:ovmf-hash prints the firmware's part alone.\n"+
			"With a range of vCPU counts (--vcpus 1-8) it prints one line per count: the count,\n"+
			"a space, the measurement.\n\n"+
			"--reference computes the same from an image's reference.json instead of the files,\n"+
			"for each vCPU count it allows (or --vcpus): what `contrast verify --reference` accepts.\n\n"+
			"With --id-key (an ECDSA P-384 key, openssl ecparam -name secp384r1 -genkey -noout)\n"+
			"it also writes the ID block and ID auth structure, base64 on one line without a\n"+
			"newline, as QEMU's sev-snp-guest takes them (id-block=, id-auth=; with --author-key\n"+
			"also author-key-enabled=on); the launch then fails unless it measures as printed.\n\n"+
			"vCPU types: "+strings.Join(snp.VCPUTypes(), ", "))
	mode := fs.String("mode", "", "guest mode: snp, or snp:ovmf-hash (the firmware's digest alone)")
	ovmf := fs.String("ovmf", "", "OVMF firmware (AmdSevX64 build) to measure")
	kernel := fs.String("kernel", "", "kernel (bzImage) booted directly")
	initrd := fs.String("initrd", "", "initrd (needs --kernel)")
	cmdline := fs.String("append", "", "kernel command line (needs --kernel)")
	vcpusFlag := fs.String("vcpus", "", "number of vCPUs, or a range MIN-MAX")
	referencePath := fs.String("reference", "", "compute from an image's reference.json (or the image directory) instead")
	vcpuType := fs.String("vcpu-type", "", "QEMU CPU model of the vCPUs (-cpu; vCPU types above)")
	var vcpuSig, family, model, stepping *uint64
	fs.Func("vcpu-sig", "vCPU signature (CPUID 1 EAX), e.g. 0x800f12", uintFlag(&vcpuSig, 32))
	fs.Func("vcpu-family", "vCPU family (with --vcpu-model and --vcpu-stepping)", uintFlag(&family, 8))
	fs.Func("vcpu-model", "vCPU model", uintFlag(&model, 8))
	fs.Func("vcpu-stepping", "vCPU stepping", uintFlag(&stepping, 8))
	vmmType := fs.String("vmm-type", "QEMU", "hypervisor: QEMU, ec2 or gce")
	features := uint64(0x1)
	fs.Func("guest-features", "SEV_FEATURES of the vCPUs (default 0x1, QEMU >= 9.1's)", func(s string) error {
		v, err := strconv.ParseUint(s, 0, 64)
		features = v
		return err
	})
	ovmfHash := fs.String("snp-ovmf-hash", "", "precomputed firmware digest (hex, from --mode snp:ovmf-hash) instead of hashing the firmware's pages")
	format := fs.String("output-format", "hex", "measurement format: hex or base64")
	idKeyPath := fs.String("id-key", "", "ECDSA P-384 private key (PEM) to sign an ID block with")
	authorKeyPath := fs.String("author-key", "", "ECDSA P-384 private key (PEM) that signs the ID key (optional)")
	policy := uint64(0x30000)
	fs.Func("policy", "guest policy of the launch, as given to QEMU (default 0x30000)", func(s string) error {
		v, err := strconv.ParseUint(s, 0, 64)
		policy = v
		return err
	})
	var familyID, imageID [16]byte
	fs.Func("family-id", "ID block family ID, 32 hex digits (default zeros)", hexFlag(familyID[:]))
	fs.Func("image-id", "ID block image ID, 32 hex digits (default zeros)", hexFlag(imageID[:]))
	idBlockOut := fs.String("id-block-out", "", "write the ID block (base64) to this file")
	idAuthOut := fs.String("id-auth-out", "", "write the ID auth structure (base64) to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	if *format != "hex" && *format != "base64" {
		return usagef("--output-format %q: hex or base64", *format)
	}
	vcpus, err := parseVCPUsFlag(*vcpusFlag)
	if err != nil {
		return err
	}
	if *referencePath != "" {
		others := false
		fs.Visit(func(f *flag.Flag) {
			others = others || (f.Name != "reference" && f.Name != "vcpus" && f.Name != "output-format")
		})
		if others {
			return usagef("--reference takes only --vcpus and --output-format: the launch is the reference's")
		}
		return measureReference(sio, *referencePath, vcpus, *format)
	}

	switch *mode {
	case "snp", "snp:ovmf-hash":
	case "":
		return usagef("missing --mode (snp)")
	case "sev", "seves", "snp:svsm":
		return usagef("--mode %s is not supported: contrast measures SEV-SNP launches (--mode snp)", *mode)
	default:
		return usagef("unknown --mode %q (snp, snp:ovmf-hash)", *mode)
	}
	if *ovmf == "" {
		return usagef("missing --ovmf")
	}
	firmware, err := os.ReadFile(*ovmf)
	if err != nil {
		return fmt.Errorf("--ovmf: %w", err)
	}
	if *mode == "snp:ovmf-hash" {
		d, err := snp.FirmwareDigest(firmware)
		if err != nil {
			return fmt.Errorf("--ovmf %s: %w", *ovmf, err)
		}
		fmt.Fprintln(sio.stdout, hex.EncodeToString(d[:]))
		return nil
	}

	if *kernel == "" && (*initrd != "" || *cmdline != "") {
		return usagef("--initrd and --append need --kernel")
	}
	if vcpus == nil {
		return usagef("missing --vcpus N (N >= 1)")
	}
	vmm, err := snp.ParseVMM(*vmmType)
	if err != nil {
		return usagef("--vmm-type: %v", err)
	}
	l := snp.Launch{Firmware: firmware, VCPUs: vcpus.Max, GuestFeatures: features, VMM: vmm}
	switch {
	case family != nil || model != nil || stepping != nil:
		if family == nil || model == nil || stepping == nil {
			return usagef("--vcpu-family, --vcpu-model and --vcpu-stepping go together")
		}
		if *vcpuType != "" || vcpuSig != nil {
			return usagef("give one of --vcpu-type, --vcpu-sig, --vcpu-family")
		}
		l.VCPUSig = snp.CPUSignature(uint8(*family), uint8(*model), uint8(*stepping))
	case *vcpuType != "" && vcpuSig != nil:
		return usagef("give one of --vcpu-type, --vcpu-sig, --vcpu-family")
	case *vcpuType != "":
		if _, err := snp.VCPUSignature(*vcpuType); err != nil {
			return usagef("--vcpu-type: %v", err)
		}
		l.VCPUType = *vcpuType
	case vcpuSig != nil:
		l.VCPUSig = uint32(*vcpuSig)
	case vmm == snp.VMMQEMU:
		// EC2 and GCE put a fixed value in RDX; QEMU the CPU model's signature.
		return usagef("missing --vcpu-type, --vcpu-sig or --vcpu-family (vCPU types: %s)", strings.Join(snp.VCPUTypes(), ", "))
	}
	if *ovmfHash != "" {
		b, err := hex.DecodeString(*ovmfHash)
		if err != nil || len(b) != snp.DigestSize {
			return usagef("--snp-ovmf-hash: want %d hex digits", 2*snp.DigestSize)
		}
		l.FirmwareDigest = (*[snp.DigestSize]byte)(b)
	}
	if *kernel != "" {
		if l.Kernel, err = snp.HashKernelFiles(*kernel, *initrd, *cmdline); err != nil {
			return err
		}
	}

	signing := *idKeyPath != "" || *authorKeyPath != "" || *idBlockOut != "" || *idAuthOut != ""
	if signing && (*idKeyPath == "" || *idBlockOut == "" || *idAuthOut == "") {
		return usagef("an ID block needs --id-key, --id-block-out and --id-auth-out")
	}
	if signing && vcpus.Min != vcpus.Max {
		return usagef("an ID block is for one vCPU count: --vcpus N")
	}

	all, err := snp.MeasureVCPUs(l, vcpus.Max)
	if err != nil {
		return fmt.Errorf("--ovmf %s: %w", *ovmf, err)
	}
	if vcpus.Min != vcpus.Max {
		var ms []vmimage.ReferenceMeasurement
		for n := vcpus.Min; n <= vcpus.Max; n++ {
			ms = append(ms, vmimage.ReferenceMeasurement{VCPUs: n, Measurement: all[n-1]})
		}
		printMeasurements(sio, ms, *format)
		return nil
	}
	digest := all[vcpus.Max-1]
	if signing {
		req := idBlockRequest{
			policy: policy, familyID: familyID, imageID: imageID,
			idKey: *idKeyPath, authorKey: *authorKeyPath, blockOut: *idBlockOut, authOut: *idAuthOut,
		}
		if err := req.write(sio, digest); err != nil {
			return err
		}
	}
	fmt.Fprintln(sio.stdout, formatDigest(digest, *format))
	return nil
}

func formatDigest(d [snp.DigestSize]byte, format string) string {
	if format == "base64" {
		return base64.StdEncoding.EncodeToString(d[:])
	}
	return hex.EncodeToString(d[:])
}

// printMeasurements prints one line per vCPU count: the count, a space, the
// measurement.
func printMeasurements(sio *stdio, ms []vmimage.ReferenceMeasurement, format string) {
	for _, m := range ms {
		fmt.Fprintf(sio.stdout, "%d %s\n", m.VCPUs, formatDigest(m.Measurement, format))
	}
}

// measureReference prints the measurements an image's reference allows,
// computed from what it records: one per vCPU count of vcpus (nil: the
// reference's whole range), each line the count and the measurement.
func measureReference(sio *stdio, path string, vcpus *vmimage.VCPURange, format string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("--reference: %w", err)
	}
	var ref *vmimage.Reference
	if fi.IsDir() {
		ref, err = vmimage.LoadReference(path)
	} else {
		ref, err = vmimage.ReadReference(path)
	}
	if err != nil {
		return err
	}
	want := ref.VCPUs
	if vcpus != nil {
		want = *vcpus
	}
	ms, err := ref.Measurements(want)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	printMeasurements(sio, ms, format)
	return nil
}

// idBlockRequest is what the ID block flags ask for.
type idBlockRequest struct {
	policy            uint64
	familyID, imageID [16]byte
	idKey, authorKey  string // PEM files; authorKey optional
	blockOut, authOut string
}

// write signs an ID block for digest and writes it and the ID auth
// structure base64-encoded; it reports the key digests reports will carry.
func (r idBlockRequest) write(sio *stdio, digest [snp.DigestSize]byte) error {
	idKey, err := readSigningKey(r.idKey, "--id-key")
	if err != nil {
		return err
	}
	block, auth, err := snp.SignIDBlock(digest, r.policy, r.familyID, r.imageID, idKey)
	if err != nil {
		return err
	}
	idDigest, err := snp.KeyDigest(&idKey.PublicKey)
	if err != nil {
		return err
	}
	fmt.Fprintf(sio.stderr, "ID_KEY_DIGEST     %s\n", hex.EncodeToString(idDigest[:]))
	if r.authorKey != "" {
		author, err := readSigningKey(r.authorKey, "--author-key")
		if err != nil {
			return err
		}
		if err := snp.AddAuthorKey(auth, author); err != nil {
			return err
		}
		authorDigest, err := snp.KeyDigest(&author.PublicKey)
		if err != nil {
			return err
		}
		fmt.Fprintf(sio.stderr, "AUTHOR_KEY_DIGEST %s (launch with author-key-enabled=on)\n", hex.EncodeToString(authorDigest[:]))
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{r.blockOut, block}, {r.authOut, auth}} {
		if err := os.WriteFile(f.path, []byte(base64.StdEncoding.EncodeToString(f.data)), 0o644); err != nil {
			return fmt.Errorf("write ID block: %w", err)
		}
	}
	return nil
}

func readSigningKey(path, flagName string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagName, err)
	}
	k, err := snp.ParsePrivateKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flagName, path, err)
	}
	return k, nil
}

// uintFlag parses an unsigned number (decimal, 0x hex) of at most bits bits
// into *dst, which stays nil while the flag is not given.
func uintFlag(dst **uint64, bits int) func(string) error {
	return func(s string) error {
		v, err := strconv.ParseUint(s, 0, bits)
		if err != nil {
			return err
		}
		*dst = &v
		return nil
	}
}

// hexFlag parses exactly len(dst) bytes of hex into dst.
func hexFlag(dst []byte) func(string) error {
	return func(s string) error {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != len(dst) {
			return fmt.Errorf("want %d hex digits", 2*len(dst))
		}
		copy(dst, b)
		return nil
	}
}

// parseVCPUsFlag parses --vcpus (N or MIN-MAX) of measure and verify; nil
// when it is not given.
func parseVCPUsFlag(value string) (*vmimage.VCPURange, error) {
	if value == "" {
		return nil, nil
	}
	v, err := vmimage.ParseVCPURange(value)
	if err != nil {
		return nil, usagef("--vcpus: %v", err)
	}
	return &v, nil
}
