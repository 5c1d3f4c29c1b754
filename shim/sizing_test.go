package shim

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestPodVMSize(t *testing.T) {
	base := HypervisorConfig{VCPUs: 1, MemoryMiB: 512}
	cases := []struct {
		ann     map[string]string
		want    vmSize
		wantErr string
	}{
		{nil, vmSize{1, 512}, ""},
		{map[string]string{annotationSandboxCPUPeriod: "100000", annotationSandboxCPUQuota: "150000"}, vmSize{3, 512}, ""},
		{map[string]string{annotationSandboxCPUPeriod: "100000", annotationSandboxCPUQuota: "0"}, vmSize{1, 512}, ""},
		{map[string]string{annotationSandboxMemory: "268435456"}, vmSize{1, 768}, ""},
		{map[string]string{annotationSandboxMemory: "1"}, vmSize{1, 513}, ""},
		{map[string]string{annotationSandboxMemory: "lots"}, vmSize{}, annotationSandboxMemory},
		{map[string]string{annotationSandboxCPUQuota: "-5"}, vmSize{}, annotationSandboxCPUQuota},
		{map[string]string{annotationSandboxCPUPeriod: "1", annotationSandboxCPUQuota: "1000"}, vmSize{}, "255"},
	}
	for _, c := range cases {
		got, err := podVMSize(base, c.ann)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%v: error %v, want one naming %q", c.ann, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%v: got %+v, %v; want %+v", c.ann, got, err, c.want)
		}
	}
}

func TestVMSizeFits(t *testing.T) {
	size := vmSize{VCPUs: 2, MemoryMiB: 512}
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	cases := []struct {
		res  *specs.LinuxResources
		want string
	}{
		{nil, ""},
		{&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(512 << 20)}}, ""},
		{&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(513 << 20)}}, "memory limit of 513 MiB exceeds the pod VM's 512 MiB"},
		{&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000)}}, ""},
		{&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(250000), Period: u64(100000)}}, "CPU limit of 2.50 CPUs exceeds the pod VM's 2 vCPUs"},
		{&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}}, ""},
	}
	for _, c := range cases {
		err := size.fits(c.res)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: error %v, want %q", c.res, err, c.want)
		}
	}
}

func TestVMStats(t *testing.T) {
	a, err := vmStats(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := v.(*stats.Metrics)
	if !ok {
		t.Fatalf("metrics of type %T", v)
	}
	if m.Memory.Usage == 0 {
		t.Errorf("no memory usage in %+v", m)
	}
	if _, err := vmStats(0x7ffffff0); err == nil {
		t.Error("stats of a process that does not exist")
	}
}

// TestRefuseHostIPC: a sandbox without an IPC namespace of its own (CRI's
// hostIPC) is refused, naming why; one with its own is not.
func TestRefuseHostIPC(t *testing.T) {
	own := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace}, {Type: specs.NetworkNamespace}}}}
	if err := refuseHostIPC("p", own); err != nil {
		t.Errorf("a pod with its own IPC namespace: %v", err)
	}
	for _, spec := range []*specs.Spec{
		{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}},
		{Linux: &specs.Linux{}},
		{},
	} {
		err := refuseHostIPC("p", spec)
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "hostIPC") {
			t.Errorf("a pod in the node's IPC namespace: %v", err)
		}
	}
}
