package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/vmimage"
)

// BenchmarkImageFormat compares the two guest image formats in the same
// run: the image's root disk (rootfs.img through dm-verity) against an
// initramfs image built by the CLI from the same files (taken out of the
// root disk with debugfs) and the same kernel and command line base. For
// each: QEMU's start to the agent answering, and the Rss and Pss of the
// idle VM's QEMU process (/proc/<pid>/smaps_rollup) once the agent
// answered. Metrics: rootfs-boot-ms, initrd-boot-ms, rootfs-RSS-MiB,
// initrd-RSS-MiB, rootfs-PSS-MiB, initrd-PSS-MiB and the rootfs/initrd
// ratios of each.
func BenchmarkImageFormat(b *testing.B) {
	env := testEnv(b)
	rootDisk, err := vmimage.Load(env.ImageDir)
	if err != nil {
		b.Fatal(err)
	}
	if rootDisk.RootDisk() == "" {
		b.Fatalf("guest image %s has no %s: build it without --format initrd", env.ImageDir, vmimage.RootDiskFile)
	}
	initrd := initrdTwin(b, env.CLI, rootDisk)

	type totals struct {
		boot     time.Duration
		rss, pss int64
	}
	sums := map[string]*totals{vmimage.FormatRootDisk: {}, vmimage.FormatInitrd: {}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternating, so a load change on the host hits both alike.
		for _, f := range []struct {
			name string
			im   *vmimage.Image
		}{{vmimage.FormatRootDisk, rootDisk}, {vmimage.FormatInitrd, initrd}} {
			boot, m := bootIdleVM(b, env, f.im)
			s := sums[f.name]
			s.boot += boot
			s.rss += m.RSS
			s.pss += m.PSS
		}
	}
	b.StopTimer()
	n := float64(b.N)
	r, in := sums[vmimage.FormatRootDisk], sums[vmimage.FormatInitrd]
	for name, s := range sums {
		b.ReportMetric(float64(s.boot.Milliseconds())/n, name+"-boot-ms")
		b.ReportMetric(float64(s.rss)/1024/n, name+"-RSS-MiB")
		b.ReportMetric(float64(s.pss)/1024/n, name+"-PSS-MiB")
	}
	b.ReportMetric(r.boot.Seconds()/in.boot.Seconds(), "rootfs/initrd-boot")
	b.ReportMetric(float64(r.rss)/float64(in.rss), "rootfs/initrd-RSS")
	b.ReportMetric(float64(r.pss)/float64(in.pss), "rootfs/initrd-PSS")
}

// initrdTwin builds, with the CLI, the initramfs image of the same agent,
// runc and mke2fs as the root disk image im holds, the same kernel and
// the same command line without the root disk's arguments.
func initrdTwin(b *testing.B, cli string, im *vmimage.Image) *vmimage.Image {
	b.Helper()
	if _, err := exec.LookPath("debugfs"); err != nil {
		b.Fatalf("debugfs (e2fsprogs) takes the files out of the root disk: %v", err)
	}
	dir := b.TempDir()
	args := []string{"image", "build", "--format", vmimage.FormatInitrd, "--kernel", im.Kernel(),
		"--cmdline", strings.TrimSuffix(im.KernelCmdline(), " "+im.Manifest.RootDisk.Cmdline()), "-o", filepath.Join(dir, "image")}
	for _, c := range im.Manifest.Components {
		out := filepath.Join(dir, c.Name)
		if o, err := exec.Command("debugfs", "-R", "dump "+c.Path+" "+out, im.RootDisk()).CombinedOutput(); err != nil {
			b.Fatalf("debugfs dump %s: %v: %s", c.Path, err, o)
		}
		args = append(args, "--"+c.Name, out)
	}
	if o, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		b.Fatalf("contrast %s: %v: %s", strings.Join(args, " "), err, o)
	}
	twin, err := vmimage.Load(filepath.Join(dir, "image"))
	if err != nil {
		b.Fatal(err)
	}
	for i, c := range twin.Manifest.Components {
		if c.SHA256 != im.Manifest.Components[i].SHA256 {
			b.Fatalf("initramfs twin's %s differs from the root disk's", c.Name)
		}
	}
	return twin
}

// bootIdleVM boots im until the agent answers and returns how long that
// took and QEMU's memory a moment later; the VM is stopped.
func bootIdleVM(b *testing.B, env harness.Env, im *vmimage.Image) (time.Duration, harness.Memory) {
	b.Helper()
	v := startBareVM(b, env, bareSpec{name: "image", image: im})
	defer v.stop()
	// Idle: what the boot left behind, not its transient buffers.
	time.Sleep(2 * time.Second)
	m, err := harness.MemoryOf(v.vm.Pid())
	if err != nil {
		b.Fatal(err)
	}
	return v.boot, m
}
