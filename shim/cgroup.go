package shim

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// usableCgroupPath returns the sandbox's cgroupfs path, or "" when there is
// none to join (no path, or a systemd slice, which this runtime does not
// manage yet).
func usableCgroupPath(spec *specs.Spec) string {
	if spec.Linux == nil || spec.Linux.CgroupsPath == "" || strings.Contains(spec.Linux.CgroupsPath, ":") {
		return ""
	}
	return spec.Linux.CgroupsPath
}

// joinHostCgroup creates the cgroup (in every hierarchy on cgroup v1) and
// moves pid, the VM, into it: the sandbox's cgroup, under the pod's cgroup
// parent, so that kubelet and CRI account the VM to the pod (`crictl
// statsp` reads the parent).
func joinHostCgroup(path string, pid int) error {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.NewManager("/sys/fs/cgroup", path, &cgroup2.Resources{})
		if err != nil {
			return fmt.Errorf("create cgroup %s: %w", path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			_ = m.Delete()
			return fmt.Errorf("move VM into cgroup %s: %w", path, err)
		}
		return nil
	}
	c, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
	if err != nil {
		return fmt.Errorf("create cgroup %s: %w", path, err)
	}
	if err := c.AddProc(uint64(pid)); err != nil {
		_ = c.Delete()
		return fmt.Errorf("move VM into cgroup %s: %w", path, err)
	}
	return nil
}

// removeHostCgroup deletes a cgroup, retrying for a few seconds while a
// process that was just killed (the VM) is still listed in it.
func removeHostCgroup(path string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := deleteHostCgroup(path)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func deleteHostCgroup(path string) error {
	var err error
	if cgroups.Mode() == cgroups.Unified {
		var m *cgroup2.Manager
		if m, err = cgroup2.Load(path); err == nil {
			err = m.Delete()
		}
	} else {
		var c cgroup1.Cgroup
		if c, err = cgroup1.Load(cgroup1.StaticPath(path)); err == nil {
			err = c.Delete()
		}
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	return nil
}
