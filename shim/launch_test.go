package shim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

// snpFirmwareFixture is the last page of an OVMF AmdSevX64 build, with the
// SEV metadata and kernel-hashes section the measurement needs.
const snpFirmwareFixture = "../vmimage/snp/testdata/ovmf_AmdSev_suffix.bin"

// imageCmdline is the command line of fakeImage's manifest.
const imageCmdline = "console=ttyS0 quiet panic=-1 contrast.test=image"

// fakeImage writes an image directory (kernel, initrd, manifest) whose files
// are not bootable but whose manifest is what vmimage.Load checks.
func fakeImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	m := vmimage.Manifest{Schema: 1, KernelRelease: "6.12.0-contrast", KernelCmdline: imageCmdline}
	for _, f := range []struct{ name, content string }{
		{vmimage.InitrdFile, "initrd bytes"}, {vmimage.KernelFile, "kernel bytes"},
	} {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.content), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(f.content))
		m.Files = append(m.Files, vmimage.File{Name: f.name, Size: int64(len(f.content)), SHA256: hex.EncodeToString(sum[:])})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, vmimage.ManifestFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeTestFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func launchConfig(t *testing.T, imageDir string) Config {
	cfg := DefaultConfig()
	cfg.Hypervisor.Kernel = filepath.Join(imageDir, vmimage.KernelFile)
	cfg.Hypervisor.Initrd = filepath.Join(imageDir, vmimage.InitrdFile)
	fw, err := filepath.Abs(snpFirmwareFixture)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SNP.Firmware = fw
	return cfg
}

// measureFiles is the measurement computed the long way, from the files.
func measureFiles(t *testing.T, cfg Config, cmdline string, vcpus int) []byte {
	t.Helper()
	fw, err := os.ReadFile(cfg.SNP.Firmware)
	if err != nil {
		t.Fatal(err)
	}
	kh, err := snp.HashKernelFiles(cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd, cmdline)
	if err != nil {
		t.Fatal(err)
	}
	m, err := snp.Measure(snp.Launch{Firmware: fw, Kernel: kh, VCPUs: vcpus, VCPUType: cfg.SNP.CPUModel, GuestFeatures: 1})
	if err != nil {
		t.Fatal(err)
	}
	return m[:]
}

func TestPodVMSpec(t *testing.T) {
	img := fakeImage(t)
	doc := testInitdata(t, []byte("package contrast\n"))
	// HOSTDATA is the SHA-256 of the document's bytes, as they are.
	wantHostData := sha256.Sum256(doc.Raw())
	launch := podLaunch{ID: "p1", Size: vmSize{VCPUs: 2, MemoryMiB: 512}, Initdata: doc}
	ctx := context.Background()

	t.Run("plain", func(t *testing.T) {
		cfg := launchConfig(t, img)
		cfg.SNP.Firmware = ""
		cfg.Hypervisor.Firmware = "/fw/OVMF.fd"
		cfg.Hypervisor.KernelParams = "foo=bar"
		spec, err := podVMSpec(ctx, cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		// At the default log level nothing but kernel_params is appended.
		if want := imageCmdline + " foo=bar"; spec.KernelArgs != want {
			t.Errorf("command line %q, want %q", spec.KernelArgs, want)
		}
		cfg.LogLevel = "debug"
		if spec, err := podVMSpec(ctx, cfg, launch); err != nil || spec.KernelArgs != imageCmdline+" contrast.log_level=debug foo=bar" {
			t.Errorf("debug: command line %q (%v)", spec.KernelArgs, err)
		}
		cfg.LogLevel = "info"
		if spec.Confidential != nil || spec.LaunchMeasurement != nil || spec.Firmware != "/fw/OVMF.fd" {
			t.Errorf("plain VM spec %+v", spec)
		}
		if spec.HostData != wantHostData {
			t.Errorf("host data %x is not the initdata digest %x", spec.HostData, wantHostData)
		}
	})

	t.Run("plain with snp firmware", func(t *testing.T) {
		cfg := launchConfig(t, img)
		spec, err := podVMSpec(ctx, cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		if spec.Confidential != nil {
			t.Fatal("plain VM launched as confidential")
		}
		want := measureFiles(t, cfg, spec.KernelArgs, 2)
		if hex.EncodeToString(spec.LaunchMeasurement) != hex.EncodeToString(want) {
			t.Errorf("measurement %x, want %x", spec.LaunchMeasurement, want)
		}
		// Another vCPU count is another measurement.
		other := launch
		other.Size.VCPUs = 3
		spec3, err := podVMSpec(ctx, cfg, other)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(spec3.LaunchMeasurement) == hex.EncodeToString(spec.LaunchMeasurement) {
			t.Error("2 and 3 vCPUs measure the same")
		}
		// Without a manifest the files are hashed: the same result.
		bare := t.TempDir()
		for _, f := range []string{vmimage.KernelFile, vmimage.InitrdFile} {
			b, err := os.ReadFile(filepath.Join(img, f))
			if err != nil {
				t.Fatal(err)
			}
			writeTestFile(t, filepath.Join(bare, f), string(b))
		}
		cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd = filepath.Join(bare, vmimage.KernelFile), filepath.Join(bare, vmimage.InitrdFile)
		specBare, err := podVMSpec(ctx, cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		if specBare.KernelArgs != vmimage.DefaultKernelCmdline {
			t.Errorf("no manifest: command line %q", specBare.KernelArgs)
		}
		if want := measureFiles(t, cfg, specBare.KernelArgs, 2); hex.EncodeToString(specBare.LaunchMeasurement) != hex.EncodeToString(want) {
			t.Errorf("no manifest: measurement %x, want %x", specBare.LaunchMeasurement, want)
		}
	})

	t.Run("snp", func(t *testing.T) {
		cfg := launchConfig(t, img)
		cfg.Hypervisor.Confidential = ConfidentialSNP
		cfg.Hypervisor.Firmware = ""
		cfg.LogLevel = "debug"
		cfg.SNP.CPUModel, cfg.SNP.Policy, cfg.SNP.CBitPos = "EPYC-Milan", 0x30000, 51
		dir := t.TempDir()
		idBlock := base64.StdEncoding.EncodeToString(make([]byte, 96))
		idAuth := base64.StdEncoding.EncodeToString(make([]byte, 4096))
		cfg.SNP.IDBlock, cfg.SNP.IDAuth = filepath.Join(dir, "id-block.b64"), filepath.Join(dir, "id-auth.b64")
		writeTestFile(t, cfg.SNP.IDBlock, idBlock+"\n")
		writeTestFile(t, cfg.SNP.IDAuth, idAuth+"\n")
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		var logged bytes.Buffer
		logger := logrus.New()
		logger.SetOutput(&logged)
		spec, err := podVMSpec(log.WithLogger(ctx, logrus.NewEntry(logger)), cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		// The log names the measurement of exactly this launch.
		m := hex.EncodeToString(measureFiles(t, cfg, imageCmdline, 2))
		if !strings.Contains(logged.String(), "expected SEV-SNP launch measurement") || !strings.Contains(logged.String(), "measurement="+m) {
			t.Errorf("log %q lacks the expected measurement %s", logged.String(), m)
		}
		// Exactly the image's command line: no log level, nothing appended.
		if spec.KernelArgs != imageCmdline {
			t.Errorf("command line %q, want the image's %q", spec.KernelArgs, imageCmdline)
		}
		want := hypervisor.SNPLaunch{
			Firmware: cfg.SNP.Firmware, CPUModel: "EPYC-Milan", Policy: 0x30000, CBitPos: 51,
			IDBlock: idBlock, IDAuth: idAuth,
		}
		if spec.Confidential == nil || *spec.Confidential != want {
			t.Errorf("confidential launch %+v, want %+v", spec.Confidential, want)
		}
		if spec.Firmware != "" || spec.LaunchMeasurement != nil {
			t.Errorf("SNP spec carries firmware %q or measurement %x", spec.Firmware, spec.LaunchMeasurement)
		}
		if spec.HostData != wantHostData {
			t.Errorf("host data %x is not the initdata digest %x", spec.HostData, wantHostData)
		}
	})

	t.Run("snp refusals", func(t *testing.T) {
		snpCfg := func() Config {
			cfg := launchConfig(t, img)
			cfg.Hypervisor.Confidential = ConfidentialSNP
			return cfg
		}
		dir := t.TempDir()
		bad := writeTestFile(t, filepath.Join(dir, "bad.b64"), "not base64!")
		short := writeTestFile(t, filepath.Join(dir, "short.b64"), base64.StdEncoding.EncodeToString(make([]byte, 95)))
		good := writeTestFile(t, filepath.Join(dir, "good.b64"), base64.StdEncoding.EncodeToString(make([]byte, 96)))
		bare := t.TempDir()
		for _, f := range []string{vmimage.KernelFile, vmimage.InitrdFile} {
			writeTestFile(t, filepath.Join(bare, f), "x")
		}
		otherInitrd := writeTestFile(t, filepath.Join(dir, "initrd"), "initrd bytes")
		cases := []struct {
			name   string
			modify func(*Config)
			want   string
		}{
			{"no manifest", func(c *Config) {
				c.Hypervisor.Kernel, c.Hypervisor.Initrd = filepath.Join(bare, "kernel"), filepath.Join(bare, "initrd")
			}, "manifest.json is missing"},
			{"initrd not the image's", func(c *Config) { c.Hypervisor.Initrd = otherInitrd }, "must be the image's kernel and initrd"},
			{"id block not base64", func(c *Config) { c.SNP.IDBlock, c.SNP.IDAuth = bad, bad }, "snp.id_block: " + bad + " is not base64"},
			{"id block short", func(c *Config) { c.SNP.IDBlock, c.SNP.IDAuth = short, short }, "holds 95 bytes, want 96"},
			{"id auth missing", func(c *Config) { c.SNP.IDBlock, c.SNP.IDAuth = good, "/nonexistent/auth" }, "snp.id_auth: open /nonexistent/auth"},
			{"firmware missing", func(c *Config) { c.SNP.Firmware = "/nonexistent/ovmf.fd" }, "expected SEV-SNP launch measurement (snp.firmware /nonexistent/ovmf.fd)"},
			{"firmware without SEV metadata", func(c *Config) { c.SNP.Firmware = c.Hypervisor.Kernel }, "expected SEV-SNP launch measurement"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				cfg := snpCfg()
				tc.modify(&cfg)
				_, err := podVMSpec(ctx, cfg, launch)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want one containing %q", err, tc.want)
				}
			})
		}
	})
}

// fakeRootDiskImage writes an image directory with a root disk instead of
// an initrd (kernel, rootfs.img, manifest); the disk is not bootable.
func fakeRootDiskImage(t *testing.T) (dir string, cmdline string) {
	t.Helper()
	dir = t.TempDir()
	rd := vmimage.RootDisk{DataBlocks: 1, HashStartBlock: 1, RootHash: strings.Repeat("ab", 32), Salt: strings.Repeat("00", 32)}
	cmdline = imageCmdline + " " + rd.Cmdline()
	m := vmimage.Manifest{Schema: 1, KernelRelease: "6.12.0-contrast", KernelCmdline: cmdline, RootDisk: &rd}
	for _, f := range []struct{ name, content string }{
		{vmimage.KernelFile, "kernel bytes"}, {vmimage.RootDiskFile, strings.Repeat("d", 8192)},
	} {
		writeTestFile(t, filepath.Join(dir, f.name), f.content)
		sum := sha256.Sum256([]byte(f.content))
		m.Files = append(m.Files, vmimage.File{Name: f.name, Size: int64(len(f.content)), SHA256: hex.EncodeToString(sum[:])})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, vmimage.ManifestFile), string(raw))
	return dir, cmdline
}

func TestPodVMSpecRootDisk(t *testing.T) {
	img, cmdline := fakeRootDiskImage(t)
	launch := podLaunch{ID: "p1", Size: vmSize{VCPUs: 2, MemoryMiB: 512}, Initdata: testInitdata(t, []byte("package contrast\n"))}
	ctx := context.Background()
	rootDiskConfig := func() Config {
		cfg := launchConfig(t, img)
		cfg.Hypervisor.Initrd, cfg.Hypervisor.RootDisk = "", filepath.Join(img, vmimage.RootDiskFile)
		return cfg
	}

	t.Run("plain", func(t *testing.T) {
		cfg := rootDiskConfig()
		cfg.Hypervisor.KernelParams = "foo=bar"
		spec, err := podVMSpec(ctx, cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		if spec.RootDisk != cfg.Hypervisor.RootDisk || spec.Initrd != "" {
			t.Errorf("root disk %q, initrd %q", spec.RootDisk, spec.Initrd)
		}
		if want := cmdline + " foo=bar"; spec.KernelArgs != want {
			t.Errorf("command line %q, want %q", spec.KernelArgs, want)
		}
		// No initrd measured; the command line carries the root hash.
		if want := measureFiles(t, cfg, spec.KernelArgs, 2); hex.EncodeToString(spec.LaunchMeasurement) != hex.EncodeToString(want) {
			t.Errorf("measurement %x, want %x", spec.LaunchMeasurement, want)
		}
	})

	t.Run("snp", func(t *testing.T) {
		cfg := rootDiskConfig()
		cfg.Hypervisor.Confidential = ConfidentialSNP
		cfg.LogLevel = "debug"
		spec, err := podVMSpec(ctx, cfg, launch)
		if err != nil {
			t.Fatal(err)
		}
		if spec.KernelArgs != cmdline || spec.RootDisk != cfg.Hypervisor.RootDisk || spec.Confidential == nil {
			t.Errorf("SNP spec: command line %q, root disk %q, confidential %v", spec.KernelArgs, spec.RootDisk, spec.Confidential)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		other := writeTestFile(t, filepath.Join(t.TempDir(), vmimage.RootDiskFile), strings.Repeat("d", 8192))
		bare := t.TempDir()
		writeTestFile(t, filepath.Join(bare, vmimage.KernelFile), "kernel bytes")
		initrdImg := fakeImage(t)
		for _, tc := range []struct {
			name   string
			modify func(*Config)
			want   string
		}{
			{"another disk", func(c *Config) { c.Hypervisor.RootDisk = other }, "hypervisor.rootfs must be the image's rootfs.img"},
			{"no manifest", func(c *Config) { c.Hypervisor.Kernel = filepath.Join(bare, vmimage.KernelFile) }, "manifest.json is missing"},
			{"initrd image", func(c *Config) {
				c.Hypervisor.Kernel, c.Hypervisor.RootDisk = filepath.Join(initrdImg, vmimage.KernelFile), filepath.Join(initrdImg, vmimage.RootDiskFile)
			}, "hypervisor.rootfs must be the image's rootfs.img"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				cfg := rootDiskConfig()
				tc.modify(&cfg)
				if _, err := podVMSpec(ctx, cfg, launch); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want one containing %q", err, tc.want)
				}
			})
		}
	})
}
