package shim

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// Pod-level resources CRI writes on the sandbox spec (from the pod's
// LinuxPodSandboxConfig.resources, which kubelet fills with the pod's limits).
const (
	annotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	annotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	annotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
)

// vmSize is what a pod VM is booted with. SEV-SNP has no CPU or memory
// hot-plug, so it is fixed at boot: the configured base plus the pod's limits.
type vmSize struct {
	VCPUs     int
	MemoryMiB int
}

// podVMSize adds the pod's CPU and memory limits to the configured base.
func podVMSize(h HypervisorConfig, annotations map[string]string) (vmSize, error) {
	size := vmSize{VCPUs: h.VCPUs, MemoryMiB: h.MemoryMiB}
	num := func(key string) (int64, error) {
		v, ok := annotations[key]
		if !ok || v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("annotation %s=%q is not a non-negative integer: %w", key, v, errdefs.ErrInvalidArgument)
		}
		return n, nil
	}
	period, err := num(annotationSandboxCPUPeriod)
	if err != nil {
		return vmSize{}, err
	}
	quota, err := num(annotationSandboxCPUQuota)
	if err != nil {
		return vmSize{}, err
	}
	memory, err := num(annotationSandboxMemory)
	if err != nil {
		return vmSize{}, err
	}
	if quota > 0 && period > 0 {
		size.VCPUs += int(math.Ceil(float64(quota) / float64(period)))
	}
	size.MemoryMiB += int((memory + 1<<20 - 1) >> 20)
	if size.VCPUs > 255 {
		return vmSize{}, fmt.Errorf("pod asks for %d vCPUs, more than a VM can have (255): %w", size.VCPUs, errdefs.ErrInvalidArgument)
	}
	return size, nil
}

// fits checks that a container's limits stay within the VM: inside the VM
// nothing can give it more.
func (s vmSize) fits(res *specs.LinuxResources) error {
	if res == nil {
		return nil
	}
	if m := res.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		if mib := (*m.Limit + 1<<20 - 1) >> 20; mib > int64(s.MemoryMiB) {
			return fmt.Errorf("memory limit of %d MiB exceeds the pod VM's %d MiB (set the pod's resources, or hypervisor.memory_mib): %w",
				mib, s.MemoryMiB, errdefs.ErrInvalidArgument)
		}
	}
	if c := res.CPU; c != nil && c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
		if cpus := float64(*c.Quota) / float64(*c.Period); cpus > float64(s.VCPUs) {
			return fmt.Errorf("CPU limit of %.2f CPUs exceeds the pod VM's %d vCPUs (set the pod's resources, or hypervisor.vcpus): %w",
				cpus, s.VCPUs, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// vmStats reports the VM monitor's CPU time and memory on the host, as
// metrics of the sandbox task (the sandbox stands for the VM).
func vmStats(pid uint32) (*anypb.Any, error) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(int(pid)), "stat"))
	if err != nil {
		return nil, err
	}
	// fields after the command name, which is in parentheses and may hold spaces
	rest := string(stat)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 22 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	rssPages, _ := strconv.ParseUint(f[21], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	toUsec := func(ticks uint64) uint64 { return ticks * 1_000_000 / ticksPerSecond }
	m := &stats.Metrics{
		CPU: &stats.CPUStat{
			UsageUsec:  toUsec(utime + stime),
			UserUsec:   toUsec(utime),
			SystemUsec: toUsec(stime),
		},
		Memory: &stats.MemoryStat{Usage: rssPages * uint64(os.Getpagesize())},
	}
	return typeurl.MarshalAnyToProto(m)
}
