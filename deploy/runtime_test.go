package deploy

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/contrast-vm/contrast/installer"
	"github.com/contrast-vm/contrast/shim"
)

// TestRuntimeTemplate installs a payload with the shipped runtime.toml
// and checks the shim accepts what the installer rendered, with and
// without a firmware in the payload.
func TestRuntimeTemplate(t *testing.T) {
	tmpl, err := os.ReadFile("runtime.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name         string
		firmware     bool
		initrd       bool // an image built with --format initrd
		confidential string
	}{
		{"plain", false, false, shim.ConfidentialNone},
		{"snp", true, false, shim.ConfidentialSNP},
		{"initrd", false, true, shim.ConfidentialNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, host := t.TempDir(), t.TempDir()
			files := map[string]string{
				installer.ShimPath: "shim", installer.KernelPath: "k",
				installer.RuntimeConfigPath: string(tmpl),
			}
			root := installer.RootDiskPath
			if tc.initrd {
				root = installer.InitrdPath
			}
			files[root] = "root"
			if tc.firmware {
				files[installer.FirmwarePath] = "ovmf"
			}
			paths := map[string]string{filepath.Join(host, "etc/containerd/config.toml"): "version = 3\n"}
			for rel, data := range files {
				paths[filepath.Join(src, rel)] = data
			}
			for p, data := range paths {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			res, err := installer.Install(context.Background(), installer.Options{HostRoot: host, Source: src})
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := shim.LoadConfig(filepath.Join(host, res.Dir, installer.RuntimeConfigPath))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Hypervisor.Kernel != filepath.Join(res.Dir, installer.KernelPath) || cfg.Hypervisor.Confidential != tc.confidential {
				t.Errorf("rendered config: kernel %s, confidential %s", cfg.Hypervisor.Kernel, cfg.Hypervisor.Confidential)
			}
			gotRoot, other := cfg.Hypervisor.RootDisk, cfg.Hypervisor.Initrd
			if tc.initrd {
				gotRoot, other = other, gotRoot
			}
			if gotRoot != filepath.Join(res.Dir, root) || other != "" {
				t.Errorf("rendered config: rootfs %q, initrd %q; want only %s", cfg.Hypervisor.RootDisk, cfg.Hypervisor.Initrd, root)
			}
			if tc.firmware && cfg.SNP.Firmware != filepath.Join(res.Dir, installer.FirmwarePath) {
				t.Errorf("snp.firmware %q, want the installed firmware", cfg.SNP.Firmware)
			}
			def := shim.DefaultConfig().Hypervisor
			if cfg.Hypervisor.MemoryMiB != def.MemoryMiB || cfg.Hypervisor.VCPUs != def.VCPUs {
				t.Errorf("shipped VM size %d MiB/%d vCPUs differs from the defaults the RuntimeClass overhead is checked against", cfg.Hypervisor.MemoryMiB, cfg.Hypervisor.VCPUs)
			}
		})
	}
}
