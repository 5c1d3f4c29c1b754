package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Env names the artifacts under test. The Makefile sets the variables; a
// missing one is an error (never a reason to skip), because a test run that
// silently skips the runtime under test proves nothing.
type Env struct {
	// Shim is the absolute path of containerd-shim-contrast-v2 (CONTRAST_SHIM).
	Shim string
	// CLI is the absolute path of the contrast command (CONTRAST_CLI).
	CLI string
	// ImageDir is the guest image directory with kernel, initrd and
	// manifest.json (CONTRAST_IMAGE).
	ImageDir string
	// TestImageDir is the test build of the guest image, whose agent has
	// the simulated SNP device (CONTRAST_TEST_IMAGE).
	TestImageDir string
	// Kernel is the guest bzImage (CONTRAST_KERNEL).
	Kernel string
}

// EnvFromOS reads CONTRAST_SHIM, CONTRAST_CLI, CONTRAST_IMAGE,
// CONTRAST_TEST_IMAGE and CONTRAST_KERNEL and checks that each names an
// existing file or directory.
func EnvFromOS() (Env, error) {
	var errs []error
	get := func(name, what string, dir bool) string {
		v := os.Getenv(name)
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is not set: it must name %s (run the tests through `make test`, which sets it)", name, what))
			return ""
		}
		abs, err := filepath.Abs(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			return ""
		}
		st, err := os.Stat(abs)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s=%q: %w (build it with `make build image`)", name, v, err))
		case dir && !st.IsDir():
			errs = append(errs, fmt.Errorf("%s=%q is not a directory", name, v))
		case !dir && st.IsDir():
			errs = append(errs, fmt.Errorf("%s=%q is a directory, want a file", name, v))
		}
		return abs
	}
	e := Env{
		Shim:     get("CONTRAST_SHIM", "the containerd-shim-contrast-v2 binary", false),
		CLI:      get("CONTRAST_CLI", "the contrast command", false),
		ImageDir: get("CONTRAST_IMAGE", "the guest image directory (kernel, initrd, manifest.json)", true),
		Kernel:   get("CONTRAST_KERNEL", "the guest kernel bzImage", false),
		TestImageDir: get("CONTRAST_TEST_IMAGE",
			"the test guest image directory, with the simulated SNP device", true),
	}
	if err := errors.Join(errs...); err != nil {
		return Env{}, err
	}
	for _, dir := range []string{e.ImageDir, e.TestImageDir} {
		if _, err := os.Stat(filepath.Join(dir, "kernel")); err != nil {
			return Env{}, fmt.Errorf("guest image %s: %w", dir, err)
		}
		// The guest's root: rootfs.img, or initrd (--format initrd).
		if rootDisk(dir) == "" {
			if _, err := os.Stat(filepath.Join(dir, "initrd")); err != nil {
				return Env{}, fmt.Errorf("guest image %s has neither rootfs.img nor initrd: %w", dir, err)
			}
		}
	}
	return e, nil
}

// WithTestImage is the same environment booting the test image (simulated
// SNP device) instead of the release image.
func (e Env) WithTestImage() Env {
	e.ImageDir = e.TestImageDir
	return e
}

// ImageKernel is the kernel file of the guest image.
func (e Env) ImageKernel() string { return filepath.Join(e.ImageDir, "kernel") }

// ImageInitrd is the initrd file of the guest image; "" for an image with
// a root disk.
func (e Env) ImageInitrd() string {
	if rootDisk(e.ImageDir) != "" {
		return ""
	}
	return filepath.Join(e.ImageDir, "initrd")
}

// ImageRootDisk is the root disk (rootfs.img) of the guest image; "" for
// an image with an initrd.
func (e Env) ImageRootDisk() string { return rootDisk(e.ImageDir) }

func rootDisk(dir string) string {
	p := filepath.Join(dir, "rootfs.img")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// Tools are the host binaries the harness drives.
type Tools struct {
	Containerd string
	// Containerd17 is containerd 1.7 (hack/deps.sh builds it as
	// containerd17): the oldest version the runtime supports.
	Containerd17 string
	Ctr          string
	Crictl       string
	// RuncShim is containerd-shim-runc-v2, which containerd finds on PATH
	// for the runc baseline handler.
	RuncShim string
	// RuncShim17 is containerd 1.7's containerd-shim-runc-v2 (built as
	// containerd-shim-runc-v2-17): 2.4's refuses 1.7's start dialect.
	RuncShim17 string
	Runc       string
	QEMU       string
	Busybox    string
	CNIBinDir  string
}

// FindTools looks the tools up on PATH (containerd, ctr and crictl come
// from ~/.cache/contrast/bin, which the Makefile puts on PATH) and at the
// fixed Debian locations for the rest.
func FindTools() (Tools, error) {
	var errs []error
	look := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s not found on PATH (hack/deps.sh builds it into ~/.cache/contrast/bin): %w", name, err))
		}
		return p
	}
	fixed := func(p, pkg string) string {
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("%s missing (apt package %s): %w", p, pkg, err))
		}
		return p
	}
	t := Tools{
		Containerd:   look("containerd"),
		Containerd17: look("containerd17"),
		Ctr:          look("ctr"),
		Crictl:       look("crictl"),
		RuncShim:     look("containerd-shim-runc-v2"),
		RuncShim17:   look("containerd-shim-runc-v2-17"),
		Runc:         fixed("/usr/sbin/runc", "runc"),
		QEMU:         fixed("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
		Busybox:      fixed("/bin/busybox", "busybox-static"),
		CNIBinDir:    fixed("/usr/lib/cni", "containernetworking-plugins"),
	}
	if err := errors.Join(errs...); err != nil {
		return Tools{}, err
	}
	return t, nil
}

// HostKernelRelease is `uname -r` of the host.
func HostKernelRelease() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "", fmt.Errorf("read host kernel release: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// DemoEnv is what the demos (hack/demo, hack/demo-k8s) run with: the
// environment EnvFromOS reads, each variable defaulting to what `make build
// image` writes into this checkout's _output (extra adds more such
// defaults, name then path), and the host tools. target names the make
// target that builds it all, for the error.
func DemoEnv(target string, extra ...string) (Env, Tools, error) {
	defaults := append([]string{
		"CONTRAST_SHIM", "_output/bin/containerd-shim-contrast-v2",
		"CONTRAST_CLI", "_output/bin/contrast",
		"CONTRAST_IMAGE", "_output/image",
		"CONTRAST_TEST_IMAGE", "_output/image-test",
	}, extra...)
	var errs []error
	for i := 0; i+1 < len(defaults); i += 2 {
		if os.Getenv(defaults[i]) == "" {
			errs = append(errs, os.Setenv(defaults[i], defaults[i+1]))
		}
	}
	if os.Getenv("CONTRAST_KERNEL") == "" {
		errs = append(errs, os.Setenv("CONTRAST_KERNEL", filepath.Join(os.Getenv("CONTRAST_IMAGE"), "kernel")))
	}
	if err := errors.Join(errs...); err != nil {
		return Env{}, Tools{}, err
	}
	env, err := EnvFromOS()
	if err != nil {
		return Env{}, Tools{}, fmt.Errorf("%w\n(run `make build image` first; `make %s` does)", err, target)
	}
	tools, err := FindTools()
	if err != nil {
		return Env{}, Tools{}, fmt.Errorf("%w\n(run `make deps`)", err)
	}
	return env, tools, nil
}
