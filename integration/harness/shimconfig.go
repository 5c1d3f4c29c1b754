package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ShimConfig is the contrast shim's TOML runtime configuration (what a
// handler's options.ConfigPath names).
type ShimConfig struct {
	LogLevel string
	// StateDir is where the shim keeps per-pod state; tests point it into
	// the containerd instance's directory so leftovers are easy to find.
	StateDir string
	// SocketDir is socket_dir, where the shim keeps each pod VM's unix
	// sockets (ShimSocketDir of the state dir).
	SocketDir string
	Binary    string
	Accel     string
	Kernel    string
	Initrd    string
	// RootDisk is the image's rootfs.img, which replaces Initrd.
	RootDisk     string
	Firmware     string
	KernelParams string
	VCPUs        int
	MemoryMiB    int
	AgentReady   time.Duration
	Stop         time.Duration
	// DefaultPolicy is policy.default: what pods without a policy
	// annotation run under ("deny-all" or "allow-all").
	DefaultPolicy string
	// SNPFirmware is snp.firmware: in a plain VM, the firmware the shim
	// computes the expected launch measurement with, for the simulated
	// SNP device of the test image.
	SNPFirmware string
	// Confidential is hypervisor.confidential ("" leaves the default, none).
	Confidential string
	// LayerCache is layers.cache_dir, where converted image layers are
	// kept: by default the build cache's (shared by test runs, as a node's
	// is by its pods); a test that corrupts a layer uses its own.
	LayerCache string
	// ScratchMiB is volumes.scratch_mib, the size of each pod's scratch
	// disk for its emptyDir volumes (0 leaves the default).
	ScratchMiB int
}

// DefaultLayerCache is $CONTRAST_CACHE/layers, ~/.cache/contrast/layers
// without it.
func DefaultLayerCache() string {
	root := os.Getenv("CONTRAST_CACHE")
	if root == "" {
		root = filepath.Join(os.Getenv("HOME"), ".cache", "contrast")
	}
	return filepath.Join(root, "layers")
}

// ShimSocketDir is the socket_dir the tests give a shim whose state_dir is
// stateDir: inside it, where leftovers are found, and short (the instance
// directory is), so that the sockets' paths fit. Empty for an empty stateDir.
func ShimSocketDir(stateDir string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, "s")
}

// DefaultShimConfig boots the guest image of env with the host's QEMU.
func DefaultShimConfig(env Env, stateDir string) ShimConfig {
	accel := os.Getenv("CONTRAST_ACCEL")
	if accel == "" {
		accel = "auto"
	}
	return ShimConfig{
		LogLevel:   "debug",
		StateDir:   stateDir,
		SocketDir:  ShimSocketDir(stateDir),
		Binary:     "/usr/bin/qemu-system-x86_64",
		Accel:      accel,
		Kernel:     env.ImageKernel(),
		Initrd:     env.ImageInitrd(),
		RootDisk:   env.ImageRootDisk(),
		VCPUs:      1,
		MemoryMiB:  512,
		AgentReady: 30 * time.Second,
		Stop:       10 * time.Second,
		// Most tests exercise runtime features with pods that carry no
		// policy; the policy tests write their own configuration.
		DefaultPolicy: "allow-all",
		LayerCache:    DefaultLayerCache(),
	}
}

// TOML renders the configuration.
func (s ShimConfig) TOML() string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by integration/harness.\nlog_level = %s\n", q(s.LogLevel))
	if s.StateDir != "" {
		fmt.Fprintf(&b, "state_dir = %s\n", q(s.StateDir))
	}
	if s.SocketDir != "" {
		fmt.Fprintf(&b, "socket_dir = %s\n", q(s.SocketDir))
	}
	fmt.Fprintf(&b, "\n[hypervisor]\nbinary = %s\naccel = %s\nkernel = %s\n", q(s.Binary), q(s.Accel), q(s.Kernel))
	if s.RootDisk != "" {
		fmt.Fprintf(&b, "rootfs = %s\n", q(s.RootDisk))
	} else {
		fmt.Fprintf(&b, "initrd = %s\n", q(s.Initrd))
	}
	fmt.Fprintf(&b, "firmware = %s\nkernel_params = %s\nvcpus = %d\nmemory_mib = %d\n",
		q(s.Firmware), q(s.KernelParams), s.VCPUs, s.MemoryMiB)
	if s.Confidential != "" {
		fmt.Fprintf(&b, "confidential = %s\n", q(s.Confidential))
	}
	fmt.Fprintf(&b, "\n[timeouts]\nagent_ready = %s\nstop = %s\n", q(s.AgentReady.String()), q(s.Stop.String()))
	if s.DefaultPolicy != "" {
		fmt.Fprintf(&b, "\n[policy]\ndefault = %s\n", q(s.DefaultPolicy))
	}
	if s.SNPFirmware != "" {
		fmt.Fprintf(&b, "\n[snp]\nfirmware = %s\n", q(s.SNPFirmware))
	}
	if s.LayerCache != "" {
		fmt.Fprintf(&b, "\n[layers]\ncache_dir = %s\n", q(s.LayerCache))
	}
	if s.ScratchMiB != 0 {
		fmt.Fprintf(&b, "\n[volumes]\nscratch_mib = %d\n", s.ScratchMiB)
	}
	return b.String()
}

// Write writes the configuration to path.
func (s ShimConfig) Write(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create shim config dir: %w", err)
	}
	if err := os.WriteFile(path, []byte(s.TOML()), 0o644); err != nil {
		return fmt.Errorf("write shim config: %w", err)
	}
	return nil
}
