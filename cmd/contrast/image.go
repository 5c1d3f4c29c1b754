package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

func imageBuild(ctx context.Context, sio *stdio, args []string) error {
	fs := newFlagSet(sio, "contrast image build", "--kernel PATH --agent PATH --runc PATH [--mke2fs PATH] [--format rootfs|initrd] -o DIR [--firmware OVMF.fd [--bundle-firmware] [--vcpus-max N] [--vcpu-type TYPE]]",
		"Builds the guest image: copies the kernel, writes the guest's root file system\n"+
			"(the agent as /init, runc as /usr/bin/runc) reproducibly, and manifest.json into DIR.\n"+
			"The root file system is by default rootfs.img, a read-only ext4 disk with its\n"+
			"dm-verity hash tree appended, which the kernel command line in the manifest opens\n"+
			"by its root hash; --format initrd writes an initramfs instead.\n"+
			"DIR is replaced atomically; it is left alone when it already holds this image.\n\n"+
			"With --firmware (the OVMF AmdSevX64 build the runtime boots SEV-SNP pod VMs\n"+
			"with), it also writes "+vmimage.ReferenceFile+": what the launch MEASUREMENT of the\n"+
			"image is computed from (the firmware's page digest and SEV metadata, the kernel,\n"+
			"initrd and command line digests, the CPU model, guest features 0x1 as QEMU >= 9.1\n"+
			"sets them) and the vCPU counts 1 to N it accepts; `contrast verify --reference`\n"+
			"computes the measurement for each count and checks reports against them.\n"+
			"--bundle-firmware copies the firmware into DIR as "+vmimage.FirmwareFile+".")
	kernel := fs.String("kernel", "", "guest kernel bzImage (hack/kernel.sh prints its path)")
	agent := fs.String("agent", "", "static contrast-agent binary")
	runc := fs.String("runc", "", "static runc binary")
	mke2fs := fs.String("mke2fs", "", "static mke2fs (busybox's will do) for the pods' encrypted scratch disks; without it emptyDir volumes on disk fail")
	out := fs.String("o", "", "output directory")
	format := fs.String("format", vmimage.FormatRootDisk, "root file system: "+vmimage.FormatRootDisk+" (dm-verity disk image "+vmimage.RootDiskFile+") or "+vmimage.FormatInitrd+" (initramfs)")
	cmdline := fs.String("cmdline", "", "kernel command line (default: "+vmimage.DefaultKernelCmdline+")")
	firmware := fs.String("firmware", "", "OVMF AmdSevX64 firmware: write the image's SEV-SNP reference measurements")
	vcpusMax := fs.Int("vcpus-max", vmimage.DefaultMaxVCPUs, "the reference accepts 1 to this many vCPUs (with --firmware)")
	bundle := fs.Bool("bundle-firmware", false, "copy the firmware into the image as "+vmimage.FirmwareFile+" (with --firmware)")
	vcpuType := fs.String("vcpu-type", vmimage.DefaultVCPUType, "QEMU CPU model of the vCPUs (with --firmware)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var missing []string
	for _, f := range []struct{ name, val string }{{"--kernel", *kernel}, {"--agent", *agent}, {"--runc", *runc}, {"-o", *out}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return usagef("missing %s", strings.Join(missing, ", "))
	}
	if *format != vmimage.FormatRootDisk && *format != vmimage.FormatInitrd {
		return usagef("--format %q: want %s or %s", *format, vmimage.FormatRootDisk, vmimage.FormatInitrd)
	}
	var ref *vmimage.ReferenceOptions
	if *firmware != "" {
		if *vcpusMax < 1 {
			return usagef("--vcpus-max %d: want at least 1", *vcpusMax)
		}
		if _, err := snp.VCPUSignature(*vcpuType); err != nil {
			return usagef("--vcpu-type: %v", err)
		}
		ref = &vmimage.ReferenceOptions{Firmware: *firmware, VCPUType: *vcpuType, MaxVCPUs: *vcpusMax, Bundle: *bundle}
	} else if flagSet(fs, "vcpus-max") || flagSet(fs, "vcpu-type") || *bundle {
		return usagef("--vcpus-max, --vcpu-type and --bundle-firmware need --firmware")
	}

	p := newProgress(sio.stderr)
	res, err := vmimage.Build(ctx, vmimage.Options{
		Kernel:        *kernel,
		Agent:         *agent,
		Runc:          *runc,
		Mke2fs:        *mke2fs,
		OutDir:        *out,
		KernelCmdline: *cmdline,
		Format:        *format,
		Reference:     ref,
		Progress:      p.report,
	})
	if err != nil {
		return err
	}
	m := res.Image.Manifest
	state := "built"
	if res.Unchanged {
		state = "up to date"
	}
	if m.RootDisk != nil {
		disk, _ := m.File(vmimage.RootDiskFile)
		fmt.Fprintf(sio.stdout, "guest image %s %s: kernel %s, %s sha256 %s, dm-verity root hash %s\n",
			res.Image.Dir, state, m.KernelRelease, vmimage.RootDiskFile, disk.SHA256, m.RootDisk.RootHash)
	} else {
		initrd, _ := m.File(vmimage.InitrdFile)
		fmt.Fprintf(sio.stdout, "guest image %s %s: kernel %s, initrd sha256 %s\n", res.Image.Dir, state, m.KernelRelease, initrd.SHA256)
	}
	if res.Reference == nil {
		fmt.Fprintf(sio.stderr, "no --firmware given: no SEV-SNP reference measurements (%s) written\n", vmimage.ReferenceFile)
		return nil
	}
	r := res.Reference
	fmt.Fprintf(sio.stdout, "reference measurements %s: firmware sha256 %s, %s, %s vCPUs\n",
		filepath.Join(res.Image.Dir, vmimage.ReferenceFile), r.Firmware.SHA256, r.VCPUType, r.VCPUs)
	return nil
}

// flagSet tells whether the named flag was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
