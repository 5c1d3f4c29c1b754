package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
)

// bundleRecordName is written into the bundle directory of the task that
// booted the pod VM (and only that one), so that `delete` can clean up after
// a shim that died.
const bundleRecordName = "contrast.json"

// bundleRecord is what a pod VM holds on the host: everything teardown
// needs to release it, with or without the shim that booted it.
type bundleRecord struct {
	// PodStateDir is the pod's state directory, recorded by the task whose
	// deletion ends the pod VM.
	PodStateDir string `json:"pod_state_dir"`
	// ConfigPath is the runtime configuration the pod was booted with,
	// whose hypervisor finds the VM again ("" for the default).
	ConfigPath string `json:"config_path,omitempty"`
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

// teardown releases everything a pod holds on the host, in one order for a
// pod stopped by its shim and for one whose shim died: the VM (stopVM),
// then the layer cache entries (nil after a dead shim: its locks died with
// it), the tap, the cgroup and the state directory, all of which the VM
// holds until it is gone. It goes on after an error and returns them all.
func teardown(ctx context.Context, stopVM func(context.Context) error, rec bundleRecord, layers *podLayers) error {
	var errs []error
	if err := stopVM(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop VM: %w", err))
	}
	if layers != nil {
		layers.close()
	}
	if err := cleanupNetwork(rec.NetNS, rec.Tap); err != nil {
		errs = append(errs, fmt.Errorf("remove network: %w", err))
	}
	if rec.Cgroup != "" {
		if err := removeHostCgroup(rec.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	if rec.PodStateDir != "" {
		if err := os.RemoveAll(rec.PodStateDir); err != nil {
			errs = append(errs, fmt.Errorf("remove state: %w", err))
		}
	}
	return errors.Join(errs...)
}

// cleanupBundle kills the VM and removes the state of the pod a bundle's
// task owned, through the hypervisor of the pod's configuration. A task
// that owned nothing leaves nothing to clean.
func cleanupBundle(ctx context.Context, bundle string, newHypervisor HypervisorFactory) error {
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
	cfg := DefaultConfig()
	if rec.ConfigPath != "" {
		if cfg, err = LoadConfig(rec.ConfigPath); err != nil {
			return fmt.Errorf("runtime configuration of the pod in %s: %w", rec.PodStateDir, err)
		}
	}
	hv, err := newHypervisor(ctx, cfg)
	if err != nil {
		return fmt.Errorf("hypervisor of the pod in %s: %w", rec.PodStateDir, err)
	}
	log.G(ctx).WithField("state", rec.PodStateDir).Info("cleaning up pod VM after its shim is gone")
	stopVM := func(ctx context.Context) error { return hv.Cleanup(ctx, rec.PodStateDir) }
	return teardown(ctx, stopVM, rec, nil)
}
