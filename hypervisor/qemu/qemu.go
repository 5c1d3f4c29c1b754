// Package qemu runs pod VMs with QEMU (q35, direct kernel boot), controls
// them over QMP and reaches the guest over vsock: kernel vhost-vsock where
// the host has it, our Go vhost-user-vsock backend otherwise.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/contrast-vm/contrast/hypervisor"
)

// Config selects the QEMU binary and how VMs run. The zero value works:
// every field has a default.
type Config struct {
	// Binary is the QEMU system emulator, a path or a name in PATH
	// (default qemu-system-x86_64).
	Binary string
	// Accel is "auto" (default: KVM when it can really boot a guest, TCG
	// otherwise), "kvm" or "tcg".
	Accel string
	// CPUModel is QEMU's -cpu (default: host under KVM, max under TCG). A
	// confidential VM names its own (hypervisor.SNPLaunch.CPUModel).
	CPUModel string
	// Vsock is "auto" (default: kernel vhost-vsock when /dev/vhost-vsock
	// opens, our vhost-user backend otherwise), "kernel" or "vhost-user".
	Vsock string
	// HotplugPorts is the number of PCIe root ports for disk hot-plug, which
	// is the most disks a VM can have attached at once (default 16, at
	// most 64).
	HotplugPorts int
	// StartTimeout bounds QEMU's start until QMP answers (default 30s).
	StartTimeout time.Duration
	// StopTimeout bounds a graceful quit before QEMU is killed (default 5s).
	StopTimeout time.Duration
	// UnplugTimeout bounds the guest's release of a detached disk when the
	// caller's context has no deadline (default 30s; Linux waits 5 s after
	// the hot-plug attention button before it acts).
	UnplugTimeout time.Duration
}

const (
	defaultBinary        = "qemu-system-x86_64"
	defaultHotplugPorts  = 16
	defaultStartTimeout  = 30 * time.Second
	defaultStopTimeout   = 5 * time.Second
	defaultUnplugTimeout = 30 * time.Second
)

// Selection is what New decided, and why, for the caller to log.
type Selection struct {
	Binary      string
	Accel       string
	AccelReason string
	CPUModel    string
	Vsock       string
	VsockReason string
}

func (s Selection) String() string {
	return fmt.Sprintf("qemu %s, accel %s (%s), cpu %s, vsock %s (%s)",
		s.Binary, s.Accel, s.AccelReason, s.CPUModel, s.Vsock, s.VsockReason)
}

// Hypervisor starts QEMU pod VMs.
type Hypervisor struct {
	cfg Config
	sel Selection
	// snpHostMissing lists what keeps this host from launching SEV-SNP
	// guests and hostCBitPos reads its C-bit position; tests replace them.
	snpHostMissing func() []string
	hostCBitPos    func() (int, error)
}

var _ hypervisor.Hypervisor = (*Hypervisor)(nil)

// New checks the configuration, finds the QEMU binary and decides the
// accelerator and vsock transport once for all VMs it starts.
func New(cfg Config) (*Hypervisor, error) {
	if cfg.Binary == "" {
		cfg.Binary = defaultBinary
	}
	if cfg.HotplugPorts == 0 {
		cfg.HotplugPorts = defaultHotplugPorts
	}
	if cfg.HotplugPorts < 0 || cfg.HotplugPorts > maxHotplugPorts {
		return nil, fmt.Errorf("qemu config: hot-plug ports %d: want 1 to %d", cfg.HotplugPorts, maxHotplugPorts)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = defaultStopTimeout
	}
	if cfg.UnplugTimeout <= 0 {
		cfg.UnplugTimeout = defaultUnplugTimeout
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu config: binary %q: %w", cfg.Binary, err)
	}

	var errs []error
	kvmOK, kvmWhy := false, ""
	if cfg.Accel == "" || cfg.Accel == AccelAuto {
		kvmOK, kvmWhy = kvmUsable(kvmDevice, cpuinfoPath)
	}
	accel, accelWhy, err := chooseAccel(cfg.Accel, kvmOK, kvmWhy)
	errs = append(errs, err)
	vhostOK, vhostWhy := false, ""
	if cfg.Vsock == "" || cfg.Vsock == VsockAuto {
		vhostOK, vhostWhy = vhostVsockUsable(vhostVsockDevice)
	}
	vmode, vsockWhy, err := chooseVsock(cfg.Vsock, vhostOK, vhostWhy)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("qemu config: %w", err)
	}
	cpu := cfg.CPUModel
	if cpu == "" {
		cpu = defaultCPUModel(accel)
	}
	return &Hypervisor{
		cfg: cfg,
		sel: Selection{
			Binary:      bin,
			Accel:       accel,
			AccelReason: accelWhy,
			CPUModel:    cpu,
			Vsock:       vmode,
			VsockReason: vsockWhy,
		},
		snpHostMissing: func() []string { return snpHostMissing(sevSNPParam, sevDevice) },
		hostCBitPos:    hostCBitPos,
	}, nil
}

// Selection tells which binary, accelerator, CPU model and vsock transport
// VMs use, and why.
func (h *Hypervisor) Selection() Selection { return h.sel }

// Cleanup kills the QEMU of a pod whose shim died, found from its state
// directory, and removes its sockets.
func (h *Hypervisor) Cleanup(ctx context.Context, stateDir string) error {
	return Cleanup(ctx, stateDir)
}
