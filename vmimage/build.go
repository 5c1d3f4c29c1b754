// Package vmimage builds and reads the guest image a pod VM boots: our kernel
// (built by hack/kernel.sh from Debian's source and vmimage/kernel/guest.config)
// and the guest's root file system holding the agent as /init and a static
// runc: by default a read-only ext4 disk image with its dm-verity hash tree
// (rootfs.img), which the kernel opens by the root hash on its command line,
// or an initramfs (FormatInitrd). Builds are
// reproducible: the same inputs give byte-identical files, so the launch
// measurement of a VM can be computed from the inputs alone.
package vmimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// DefaultKernelCmdline is the command line images are built with. It is part
// of the SEV-SNP launch measurement, so it holds only what the guest needs:
//   - console=ttyS0: the console log the runtime keeps for debugging;
//   - quiet: no boot chatter through the emulated UART (measured under TCG:
//     about 0.05 s to /init);
//   - panic=-1: a dead agent (PID 1) reboots at once, and QEMU started with
//     -no-reboot exits, so the runtime sees the VM end instead of a hang;
//   - tsc=reliable: no clocksource watchdog, which under TCG on a loaded host
//     can declare the TSC unstable and move the guest to a clock that costs an
//     emulated I/O access per read;
//   - no_timer_check: no check at boot that the IO-APIC delivers the timer
//     within a few ticks of a busy wait. Under TCG on a loaded host QEMU's
//     timer can lag the spinning vCPU, and the guest panicked ("IO-APIC +
//     timer doesn't work!"); the timer works, it was only late.
//
// Measured without effect on boot time under TCG, hence left out:
// rcupdate.rcu_expedited=1, 8250.nr_uarts=1, i8042.noaux.
const DefaultKernelCmdline = "console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check"

// Options are the inputs of Build.
type Options struct {
	// Kernel is the bzImage (hack/kernel.sh prints its path).
	Kernel string
	// Agent is the static contrast-agent binary; it becomes /init.
	Agent string
	// Runc is a static runc binary; it becomes /usr/bin/runc.
	Runc string
	// Mke2fs, optional, is a static mke2fs (busybox's will do: it picks
	// its applet by the name it runs as); it becomes /usr/sbin/mke2fs, with
	// which the agent makes the file system of a pod's encrypted scratch
	// disk. Without it, containers with emptyDir volumes on disk fail.
	Mke2fs string
	// OutDir receives kernel, rootfs.img (or initrd) and manifest.json. It is created if
	// missing; if it exists it must be an image directory (or empty).
	OutDir string
	// KernelCmdline overrides DefaultKernelCmdline. With FormatRootDisk the
	// arguments that open the root disk are appended to it.
	KernelCmdline string
	// Format is FormatRootDisk (default, also for "") or FormatInitrd.
	Format string
	// Reference, if set, makes Build write the image's SEV-SNP reference
	// measurements (reference.json) for that firmware and those vCPUs.
	Reference *ReferenceOptions
	// Progress, if set, is told about each step: done = 0 when it starts,
	// done = total when it ends, and in between for long steps.
	Progress func(step string, done, total int64)
}

// BuildResult is what Build made.
type BuildResult struct {
	Image *Image
	// Reference is what reference.json holds; nil when none was asked for.
	Reference *Reference
	// Unchanged is true when OutDir already held this exact image; it was left
	// untouched.
	Unchanged bool
}

// Build writes a guest image to opts.OutDir. It builds in a temporary
// directory beside OutDir and renames it into place, so a failed or cancelled
// build leaves OutDir as it was.
func Build(ctx context.Context, opts Options) (*BuildResult, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64, int64) {}
	}
	cmdline := opts.KernelCmdline
	if cmdline == "" {
		cmdline = DefaultKernelCmdline
	}
	release, err := KernelRelease(opts.Kernel)
	if err != nil {
		return nil, fmt.Errorf("build guest image: kernel: %w", err)
	}
	kernelInfo, err := os.Stat(opts.Kernel)
	if err != nil {
		return nil, fmt.Errorf("build guest image: kernel: %w", err)
	}
	agent, err := describeBinary("agent", GuestAgentPath, opts.Agent)
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	runc, err := describeBinary("runc", GuestRuncPath, opts.Runc)
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	components := []Component{agent, runc}
	initrdSize := agent.Size + runc.Size
	if opts.Mke2fs != "" {
		mke2fs, err := describeBinary("mke2fs", GuestMke2fsPath, opts.Mke2fs)
		if err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
		components = append(components, mke2fs)
		initrdSize += mke2fs.Size
	}
	// The firmware is checked before the long part of the build.
	var refFirmware *referenceFirmware
	if opts.Reference != nil {
		if refFirmware, err = loadReferenceFirmware(*opts.Reference); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
	}
	out, err := filepath.Abs(opts.OutDir)
	if err != nil {
		return nil, fmt.Errorf("build guest image: output %s: %w", opts.OutDir, err)
	}
	exists, err := checkOutDir(out)
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}

	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	// Removes the temporary directory, or after the exchange below the old image.
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}

	m := Manifest{
		Schema:        manifestSchema,
		KernelRelease: release,
		KernelCmdline: cmdline,
		Components:    components,
	}
	kernel, err := writeFile(ctx, filepath.Join(tmp, KernelFile), progress, kernelInfo.Size(), func(w io.Writer) error {
		f, err := os.Open(opts.Kernel)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("build guest image: copy kernel %s: %w", opts.Kernel, err)
	}
	entries := guestEntries(opts.Agent, opts.Runc, opts.Mke2fs)
	var root File
	if opts.Format == FormatInitrd {
		root, err = writeFile(ctx, filepath.Join(tmp, InitrdFile), progress, initrdSize, func(w io.Writer) error {
			return WriteInitramfs(w, entries)
		})
		if err != nil {
			return nil, fmt.Errorf("build guest image: write initrd: %w", err)
		}
		m.Files = []File{root, kernel} // sorted by name
	} else {
		var rd RootDisk
		if root, rd, err = writeRootDiskFile(ctx, filepath.Join(tmp, RootDiskFile), progress, initrdSize, entries); err != nil {
			return nil, fmt.Errorf("build guest image: write %s: %w", RootDiskFile, err)
		}
		m.Files = []File{kernel, root} // sorted by name
		m.RootDisk = &rd
		m.KernelCmdline = cmdline + " " + rd.Cmdline()
		if err := checkCmdline(m.KernelCmdline); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
	}
	var ref *Reference
	var refRaw []byte
	if refFirmware != nil {
		if ref, err = refFirmware.reference(&m); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
		if refRaw, err = ref.Marshal(); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
		if _, err := writeFile(ctx, filepath.Join(tmp, ReferenceFile), progress, int64(len(refRaw)), func(w io.Writer) error {
			_, err := w.Write(refRaw)
			return err
		}); err != nil {
			return nil, fmt.Errorf("build guest image: write %s: %w", ReferenceFile, err)
		}
	}
	var bundled []byte
	if refFirmware != nil && refFirmware.opts.Bundle {
		bundled = refFirmware.image
		if _, err := writeFile(ctx, filepath.Join(tmp, FirmwareFile), progress, int64(len(bundled)), func(w io.Writer) error {
			_, err := w.Write(bundled)
			return err
		}); err != nil {
			return nil, fmt.Errorf("build guest image: write %s: %w", FirmwareFile, err)
		}
	}
	raw, err := m.marshal()
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	if _, err := writeFile(ctx, filepath.Join(tmp, ManifestFile), progress, int64(len(raw)), func(w io.Writer) error {
		_, err := w.Write(raw)
		return err
	}); err != nil {
		return nil, fmt.Errorf("build guest image: write manifest: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}

	if exists {
		// Same inputs, same bytes: keep the old files (and their mtimes) when
		// they still are what their manifest says.
		if old, err := os.ReadFile(filepath.Join(out, ManifestFile)); err == nil && bytes.Equal(old, raw) && sameFile(out, ReferenceFile, refRaw) && sameFile(out, FirmwareFile, bundled) {
			if im, err := Load(out); err == nil {
				log.G(ctx).WithField("dir", out).Debug("guest image up to date")
				return &BuildResult{Image: im, Reference: ref, Unchanged: true}, nil
			}
		}
		// Atomic swap: readers see the old image or the new one, never a mix.
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, out, unix.RENAME_EXCHANGE); err != nil {
			return nil, fmt.Errorf("build guest image: replace %s: %w", out, err)
		}
	} else if err := os.Rename(tmp, out); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	if err := syncDir(filepath.Dir(out)); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	log.G(ctx).WithField("dir", out).WithField(root.Name, root.SHA256).Debug("guest image built")
	return &BuildResult{Image: &Image{Dir: out, Manifest: m}, Reference: ref}, nil
}

// sameFile tells whether the image in dir has the file name with content
// want, or, for want nil, none.
func sameFile(dir, name string, want []byte) bool {
	old, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return want == nil
	}
	return err == nil && want != nil && bytes.Equal(old, want)
}

func (o *Options) validate() error {
	for _, f := range []struct{ name, val string }{
		{"kernel", o.Kernel}, {"agent", o.Agent}, {"runc", o.Runc}, {"output directory", o.OutDir},
	} {
		if f.val == "" {
			return fmt.Errorf("no %s given", f.name)
		}
	}
	switch o.Format {
	case "", FormatRootDisk, FormatInitrd:
	default:
		return fmt.Errorf("image format %q: want %q or %q", o.Format, FormatRootDisk, FormatInitrd)
	}
	if o.KernelCmdline != "" {
		if err := checkCmdline(o.KernelCmdline); err != nil {
			return err
		}
	}
	if o.Reference != nil {
		return o.Reference.validate()
	}
	return nil
}

// maxCmdline is COMMAND_LINE_SIZE on x86, including the terminating NUL.
const maxCmdline = 2048

// checkCmdline refuses a command line the kernel would truncate, or that
// holds control characters (the measured command line is NUL-terminated).
func checkCmdline(s string) error {
	if len(s) >= maxCmdline {
		return fmt.Errorf("kernel command line is %d bytes, the kernel takes at most %d", len(s), maxCmdline-1)
	}
	for i, c := range []byte(s) {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("kernel command line: control character %#x at byte %d", c, i)
		}
	}
	return nil
}

// checkOutDir tells whether out exists, and refuses to replace a directory
// that holds anything but an image: replacing it deletes its contents.
func checkOutDir(out string) (bool, error) {
	entries, err := os.ReadDir(out)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("output %s: %w", out, err)
	}
	for _, e := range entries {
		switch e.Name() {
		case KernelFile, InitrdFile, RootDiskFile, ManifestFile, ReferenceFile, FirmwareFile:
		default:
			return false, fmt.Errorf("output %s holds %s: it is not an image directory, refusing to replace it", out, e.Name())
		}
	}
	return true, nil
}

// describeBinary checks that p is a static x86-64 executable (the guest has
// no dynamic loader or libc, and a PID 1 that cannot exec panics the kernel
// with little explanation) and reads what its Go build information says.
func describeBinary(name, guestPath, p string) (Component, error) {
	c := Component{Name: name, Path: guestPath}
	f, err := elf.Open(p)
	if err != nil {
		return c, fmt.Errorf("%s %s: not an ELF executable: %w", name, p, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return c, fmt.Errorf("%s %s: built for %s, the guest is x86-64", name, p, f.Machine)
	}
	if (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) || f.Entry == 0 {
		return c, fmt.Errorf("%s %s: not an executable (ELF type %s)", name, p, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(prog.Open(), 256))
			return c, fmt.Errorf("%s %s: dynamically linked (interpreter %s), but the guest has no libc: link it statically (CGO_ENABLED=0)",
				name, p, bytes.TrimRight(interp, "\x00"))
		}
	}
	h := sha256.New()
	r, err := os.Open(p)
	if err != nil {
		return c, fmt.Errorf("%s: %w", name, err)
	}
	defer r.Close()
	if c.Size, err = io.Copy(h, r); err != nil {
		return c, fmt.Errorf("%s: read %s: %w", name, p, err)
	}
	c.SHA256 = hex.EncodeToString(h.Sum(nil))
	// Not every binary is a Go program; then its version stays unknown.
	if bi, err := buildinfo.ReadFile(p); err == nil {
		c.GoVersion = bi.GoVersion
		c.Module = bi.Main.Path
		c.Version = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				c.VCSRevision = s.Value
			case "vcs.modified":
				c.VCSModified = s.Value == "true"
			}
		}
	}
	return c, nil
}

// writeRootDiskFile writes the root disk of entries to p, syncs it and
// hashes it as the manifest lists it.
func writeRootDiskFile(ctx context.Context, p string, progress func(string, int64, int64), treeSize int64, entries []Entry) (File, RootDisk, error) {
	name := filepath.Base(p)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return File{}, RootDisk{}, err
	}
	defer f.Close()
	progress(name, 0, treeSize)
	rd, err := WriteRootDisk(ctx, f, entries)
	if err != nil {
		return File{}, RootDisk{}, err
	}
	if err := f.Sync(); err != nil {
		return File{}, RootDisk{}, err
	}
	h := sha256.New()
	size, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return File{}, RootDisk{}, fmt.Errorf("hash %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return File{}, RootDisk{}, err
	}
	progress(name, size, size)
	return File{Name: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, rd, nil
}

// writeFile creates p, lets fill write it through a buffer that hashes,
// counts and reports progress, and syncs it to disk.
func writeFile(ctx context.Context, p string, progress func(string, int64, int64), total int64, fill func(io.Writer) error) (File, error) {
	name := filepath.Base(p)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	pw := &progressWriter{ctx: ctx, step: name, total: total, progress: progress, h: sha256.New()}
	bw := bufio.NewWriterSize(io.MultiWriter(f, pw), 1<<20)
	progress(name, 0, total)
	if err := fill(bw); err != nil {
		return File{}, err
	}
	if err := bw.Flush(); err != nil {
		return File{}, err
	}
	if err := f.Sync(); err != nil {
		return File{}, err
	}
	if err := f.Close(); err != nil {
		return File{}, err
	}
	progress(name, pw.n, pw.n)
	return File{Name: name, Size: pw.n, SHA256: hex.EncodeToString(pw.h.Sum(nil))}, nil
}

// progressWriter hashes and counts what is written, reports progress every
// few MiB and stops the copy when ctx is cancelled.
type progressWriter struct {
	ctx      context.Context
	step     string
	n, total int64
	last     int64
	progress func(string, int64, int64)
	h        hash.Hash
}

func (pw *progressWriter) Write(p []byte) (int, error) {
	if err := pw.ctx.Err(); err != nil {
		return 0, err
	}
	pw.h.Write(p)
	pw.n += int64(len(p))
	if pw.n-pw.last >= 4<<20 {
		pw.last = pw.n
		total := pw.total
		if total < pw.n {
			total = pw.n
		}
		pw.progress(pw.step, pw.n, total)
	}
	return len(p), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
