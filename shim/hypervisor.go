package shim

import (
	"context"

	"github.com/containerd/log"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
)

// NewQEMU is the HypervisorFactory for QEMU.
func NewQEMU(ctx context.Context, cfg Config) (hypervisor.Hypervisor, error) {
	hv, err := qemu.New(qemu.Config{
		Binary:      cfg.Hypervisor.Binary,
		Accel:       cfg.Hypervisor.Accel,
		StopTimeout: cfg.Timeouts.Stop.Duration,
	})
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("selection", hv.Selection().String()).Debug("hypervisor chosen")
	return hv, nil
}
