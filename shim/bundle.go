package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"

	"github.com/contrast-vm/contrast/hypervisor/qemu"
)

// bundleRecordName is written into the bundle directory of the task that
// booted the pod VM (and only that one), so that `delete` can clean up after
// a shim that died.
const bundleRecordName = "contrast.json"

type bundleRecord struct {
	// PodStateDir is the pod's state directory, recorded by the task whose
	// deletion ends the pod VM.
	PodStateDir string `json:"pod_state_dir"`
	// Cgroup is the host cgroup the VM ran in.
	Cgroup string `json:"cgroup,omitempty"`
	// NetNS and Tap: the tap device the shim added to the sandbox's
	// network namespace.
	NetNS string `json:"netns,omitempty"`
	Tap   string `json:"tap,omitempty"`
}

func writeBundleRecord(bundle string, rec bundleRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, bundleRecordName), data, 0o600); err != nil {
		return fmt.Errorf("record pod state in bundle: %w", err)
	}
	return nil
}

// cleanupBundle kills the VM and removes the state of the pod a bundle's
// task owned. A task that owned nothing leaves nothing to clean.
func cleanupBundle(ctx context.Context, bundle string) error {
	data, err := os.ReadFile(filepath.Join(bundle, bundleRecordName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rec bundleRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("malformed %s: %w", bundleRecordName, err)
	}
	if rec.PodStateDir == "" {
		return nil
	}
	log.G(ctx).WithField("state", rec.PodStateDir).Info("cleaning up pod VM after its shim is gone")
	if err := qemu.Cleanup(ctx, rec.PodStateDir); err != nil {
		return fmt.Errorf("kill VM: %w", err)
	}
	if err := os.RemoveAll(rec.PodStateDir); err != nil {
		return fmt.Errorf("remove pod state: %w", err)
	}
	if err := cleanupNetwork(rec.NetNS, rec.Tap); err != nil {
		return fmt.Errorf("remove pod network: %w", err)
	}
	if rec.Cgroup != "" {
		return removeHostCgroup(rec.Cgroup)
	}
	return nil
}
