package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestVMSizing: a pod whose resources (what kubelet sets to the sum of its
// containers' limits) ask for more than the configured base gets a VM
// sized for them (base plus the pod's limits, fixed at boot), so its
// container sees at least the CPUs and memory it asked for, as on runc.
// A container whose limits exceed what its pod's VM can give fails with
// an error saying so (runc has no VM bound: that part is contrast's).
func TestVMSizing(t *testing.T) {
	const (
		cpus   = 2
		memMiB = 1024
		mib    = 1 << 20
	)
	matrix(t, func(t *testing.T, s *suite, handler string) {
		res := &harness.Resources{CPUPeriod: 100000, CPUQuota: cpus * 100000, MemoryLimit: memMiB * mib}
		pod := s.runPodWith(t, harness.PodConfig{Name: "big", Handler: handler, Resources: res})
		c := s.startWith(t, pod, harness.ContainerConfig{Name: "big", Command: []string{"sleep", "100000"}, Resources: res})
		r, err := s.cri.Exec(s.ctx, c.ID, false, "sh", "-c", `echo "$(nproc) $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"`)
		if err != nil || r.ExitCode != 0 {
			t.Fatalf("exec nproc: %v exit %d %q", err, r.ExitCode, r.Stderr)
		}
		var nproc, memKiB int
		if _, err := fmt.Sscan(r.Stdout, &nproc, &memKiB); err != nil {
			t.Fatalf("parse %q: %v", r.Stdout, err)
		}
		t.Logf("the container sees %d CPUs and %d MiB", nproc, memKiB/1024)
		if nproc < cpus || memKiB < memMiB*1024 {
			t.Errorf("a container of a pod that asks for %d CPUs and %d MiB sees %d CPUs and %d MiB (VM not sized from the pod's resources)",
				cpus, memMiB, nproc, memKiB/1024)
		}
		if handler == "runc" {
			return
		}
		base := harness.DefaultShimConfig(s.env, "")
		wantCPUs, wantMiB := base.VCPUs+cpus, base.MemoryMiB+memMiB
		if nproc != wantCPUs {
			t.Errorf("pod VM has %d vCPUs, want the base %d plus the pod's %d", nproc, base.VCPUs, cpus)
		}
		// The guest kernel keeps some memory to itself; MemTotal is a bit
		// under what the VM has.
		if memKiB > wantMiB*1024 || memKiB < wantMiB*1024*85/100 {
			t.Errorf("pod VM has MemTotal %d MiB, want a little under the base %d MiB plus the pod's %d MiB", memKiB/1024, base.MemoryMiB, memMiB)
		}

		t.Run("limits-beyond-vm", func(t *testing.T) {
			small := s.runPod(t, handler, "small")
			for _, tc := range []struct {
				name string
				res  harness.Resources
				want string
			}{
				{"memory", harness.Resources{MemoryLimit: int64(base.MemoryMiB+256) * mib}, "memory"},
				{"cpu", harness.Resources{CPUPeriod: 100000, CPUQuota: int64(base.VCPUs+2) * 100000}, "cpu"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					// CRI creates the task, which the limits concern, at start.
					c, err := s.cri.CreateContainer(s.ctx, small, harness.ContainerConfig{
						Name: "greedy-" + tc.name, Command: []string{"sleep", "100000"}, Resources: &tc.res,
					})
					if err == nil {
						defer func() {
							if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
								t.Errorf("crictl rm: %v", err)
							}
						}()
						err = s.cri.StartContainer(s.ctx, c.ID)
					}
					if err == nil {
						t.Fatalf("a container asking for more %s than its pod's VM (%d vCPUs, %d MiB) has was started", tc.name, base.VCPUs, base.MemoryMiB)
					}
					msg := cmdErrText(err)
					t.Logf("refused: %s", strings.TrimSpace(msg))
					if !containsAny(msg, tc.want) || !containsAny(msg, "VM", "exceeds") {
						t.Errorf("error %q does not say that the %s limit exceeds the pod VM", strings.TrimSpace(msg), tc.name)
					}
				})
			}
			// The pod itself is unharmed.
			ok := s.startContainer(t, small, "modest", "echo", "fits")
			if st := s.waitExited(t, ok, time.Minute); st.ExitCode != 0 {
				t.Errorf("a container within the VM's size after the refusals: exit %d", st.ExitCode)
			}
		})
	})
}
