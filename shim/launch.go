package shim

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/hypervisor"

	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

// guestKernelArgs is the guest command line: the image's own (from its
// manifest, which also proves kernel and initrd or root disk are the ones
// built together), the agent's log level, then the configured
// kernel_params. Under SEV-SNP the command line is measured, so it is
// exactly the image's own and the image must have a manifest; so must an
// image with a root disk, whose command line carries the disk's dm-verity
// root hash. It also returns the image when its manifest describes both
// the configured kernel and initrd or root disk, nil otherwise.
func guestKernelArgs(cfg Config) (string, *vmimage.Image, error) {
	confidential := cfg.Hypervisor.Confidential == ConfidentialSNP
	rootDisk := cfg.Hypervisor.RootDisk != ""
	args := vmimage.DefaultKernelCmdline
	dir := filepath.Dir(cfg.Hypervisor.Kernel)
	var im *vmimage.Image
	if _, err := os.Stat(filepath.Join(dir, vmimage.ManifestFile)); err == nil || confidential || rootDisk {
		loaded, err := vmimage.Load(dir)
		if err != nil {
			return "", nil, fmt.Errorf("guest image: %w", err)
		}
		sameRoot := loaded.Initrd() != "" && loaded.Initrd() == filepath.Clean(cfg.Hypervisor.Initrd)
		rootName, rootKey := vmimage.InitrdFile, "hypervisor.initrd"
		if rootDisk {
			sameRoot = loaded.RootDisk() != "" && loaded.RootDisk() == filepath.Clean(cfg.Hypervisor.RootDisk)
			rootName, rootKey = vmimage.RootDiskFile, "hypervisor.rootfs"
		}
		sameKernel := loaded.Kernel() == filepath.Clean(cfg.Hypervisor.Kernel)
		if rootDisk && !sameRoot {
			return "", nil, fmt.Errorf("guest image %s: hypervisor.rootfs must be the image's %s: its manifest holds the command line with the disk's root hash", dir, vmimage.RootDiskFile)
		}
		if confidential && !(sameRoot && sameKernel) {
			return "", nil, fmt.Errorf("guest image %s: hypervisor.kernel and %s must be the image's %s and %s "+
				"when hypervisor.confidential is snp: its manifest holds the measured command line", dir, rootKey, vmimage.KernelFile, rootName)
		}
		if sameRoot {
			args = loaded.KernelCmdline()
		}
		if sameRoot && sameKernel {
			im = loaded
		}
	}
	if confidential {
		// The guest's log level is the image's (its command line may set
		// contrast.log_level); log_level applies to the shim alone.
		return args, im, nil
	}
	// The guest logs at info unless told otherwise; only another level is
	// appended, so a plain VM at the default level boots the image's own
	// command line, whose measurement the image's reference values hold.
	if cfg.LogLevel != "info" {
		args += " contrast.log_level=" + cfg.LogLevel
	}
	if cfg.Hypervisor.KernelParams != "" {
		args += " " + cfg.Hypervisor.KernelParams
	}
	return args, im, nil
}

// snpGuestFeatures is the SEV_FEATURES value QEMU >= 9.1 puts into every
// VMSA: SNP active, nothing else.
const snpGuestFeatures = 0x1

// expectedMeasurement is the SEV-SNP launch measurement of booting the
// configured firmware, kernel and initrd with cmdline on vcpus vCPUs of the
// configured model: what the hardware reports under SNP. im, if not nil,
// supplies kernel and initrd hashes it has already checked.
func expectedMeasurement(cfg Config, im *vmimage.Image, cmdline string, vcpus int) ([snp.DigestSize]byte, error) {
	fail := func(err error) ([snp.DigestSize]byte, error) {
		return [snp.DigestSize]byte{}, fmt.Errorf("expected SEV-SNP launch measurement (snp.firmware %s): %w", cfg.SNP.Firmware, err)
	}
	fw, err := os.ReadFile(cfg.SNP.Firmware)
	if err != nil {
		return fail(err)
	}
	kh, err := imageKernelHashes(im, cmdline)
	if err != nil {
		return fail(err)
	}
	if kh == nil {
		if kh, err = snp.HashKernelFiles(cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd, cmdline); err != nil {
			return fail(err)
		}
	}
	m, err := snp.Measure(snp.Launch{
		Firmware:      fw,
		Kernel:        kh,
		VCPUs:         vcpus,
		VCPUType:      cfg.SNP.CPUModel,
		GuestFeatures: snpGuestFeatures,
	})
	if err != nil {
		return fail(err)
	}
	return m, nil
}

// imageKernelHashes takes the kernel and initrd hashes from the image's
// manifest, which vmimage.Load checked against the files; nil without an
// image. An image with a root disk boots without an initrd, whose hash is
// then that of nothing.
func imageKernelHashes(im *vmimage.Image, cmdline string) (*snp.KernelHashes, error) {
	if im == nil {
		return nil, nil
	}
	kh := &snp.KernelHashes{Cmdline: snp.CmdlineHash(cmdline), Initrd: sha256.Sum256(nil)}
	files := []struct {
		name string
		dst  *[sha256.Size]byte
	}{{vmimage.KernelFile, &kh.Kernel}}
	if im.Initrd() != "" {
		files = append(files, struct {
			name string
			dst  *[sha256.Size]byte
		}{vmimage.InitrdFile, &kh.Initrd})
	}
	for _, f := range files {
		entry, ok := im.Manifest.File(f.name)
		if !ok {
			return nil, fmt.Errorf("guest image %s: manifest lists no %s", im.Dir, f.name)
		}
		b, err := hex.DecodeString(entry.SHA256)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("guest image %s: manifest's sha256 of %s is malformed", im.Dir, f.name)
		}
		copy(f.dst[:], b)
	}
	return kh, nil
}

// snpLaunch is the configured SEV-SNP launch, with the ID block and auth
// files read.
func snpLaunch(cfg Config) (*hypervisor.SNPLaunch, error) {
	s := cfg.SNP
	l := &hypervisor.SNPLaunch{
		Firmware:        s.Firmware,
		CPUModel:        s.CPUModel,
		Policy:          uint64(s.Policy),
		CBitPos:         s.CBitPos,
		ReducedPhysBits: s.ReducedPhysBits,
	}
	for _, f := range []struct {
		key, path string
		dst       *string
		min, max  int
	}{
		{"snp.id_block", s.IDBlock, &l.IDBlock, idBlockSize, idBlockSize},
		{"snp.id_auth", s.IDAuth, &l.IDAuth, 1, maxIDAuthSize},
	} {
		if f.path == "" {
			continue
		}
		raw, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
		text := strings.TrimSpace(string(raw))
		b, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %s is not base64: %w", f.key, f.path, err)
		}
		if len(b) < f.min || len(b) > f.max {
			return nil, fmt.Errorf("%s: %s holds %d bytes, want %s", f.key, f.path, len(b), sizeRange(f.min, f.max))
		}
		*f.dst = text
	}
	return l, nil
}

// SNP structure sizes (SEV-SNP firmware ABI, SNP_LAUNCH_FINISH).
const (
	idBlockSize   = 96
	maxIDAuthSize = 4096
)

func sizeRange(min, max int) string {
	if min == max {
		return strconv.Itoa(min)
	}
	return fmt.Sprintf("%d to %d", min, max)
}

// podVMSpec is the VM a pod boots (without its state directory): the
// guest image with its command line, the initdata digest as host data, and
// under SEV-SNP the confidential launch; with snp.firmware set, the launch
// measurement SNP would report, which a plain VM passes on to the
// simulated SNP device.
func podVMSpec(ctx context.Context, cfg Config, l podLaunch) (hypervisor.VMSpec, error) {
	args, im, err := guestKernelArgs(cfg)
	if err != nil {
		return hypervisor.VMSpec{}, err
	}
	spec := hypervisor.VMSpec{
		ID:         l.ID,
		Kernel:     cfg.Hypervisor.Kernel,
		Initrd:     cfg.Hypervisor.Initrd,
		RootDisk:   cfg.Hypervisor.RootDisk,
		Firmware:   cfg.Hypervisor.Firmware,
		KernelArgs: args,
		VCPUs:      l.Size.VCPUs,
		MemoryMiB:  l.Size.MemoryMiB,
		HostData:   l.Initdata.HostData(),
	}
	confidential := cfg.Hypervisor.Confidential == ConfidentialSNP
	if confidential {
		if spec.Confidential, err = snpLaunch(cfg); err != nil {
			return hypervisor.VMSpec{}, err
		}
		spec.Firmware = ""
	}
	if cfg.SNP.Firmware == "" {
		return spec, nil
	}
	m, err := expectedMeasurement(cfg, im, args, spec.VCPUs)
	if err != nil {
		return hypervisor.VMSpec{}, err
	}
	entry := log.G(ctx).WithFields(log.Fields{
		"pod": l.ID, "measurement": hex.EncodeToString(m[:]), "vcpus": spec.VCPUs, "cpu_model": cfg.SNP.CPUModel,
		"host_data": hex.EncodeToString(spec.HostData[:]),
	})
	if confidential {
		entry.Info("expected SEV-SNP launch measurement")
	} else {
		spec.LaunchMeasurement = m[:]
		entry.Debug("plain VM: launch measurement for the simulated SNP device")
	}
	return spec, nil
}
