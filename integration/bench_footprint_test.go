package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// Idle pods: how many, how long they settle after the last one started
// (the guest hands back freed pages a few seconds after it freed them),
// and the window their CPU time is measured over.
const (
	idlePods   = 10
	idleSettle = 20 * time.Second
	idleWindow = 60 * time.Second
)

// BenchmarkIdlePod measures what idle pods cost the host: the memory of
// each contrast-cc pod's QEMU and shim, beside a bare QEMU booting the
// same image with the same size (no containerd, no shim, its vsock backend
// in the benchmark's process), and the host CPU time of 10 idle pods (each
// with a sleeping container) over a minute, beside 10 runc pods and the
// bare VM, all in the same run and the same window. Memory metrics are
// means over the pods (RSS counts the guest RAM pages the shim's vsock
// backend maps in both processes; PSS splits them). CPU is in CPU-seconds
// per pod and minute. Run it with -benchtime 1x: 11 VMs on 2 cores take
// minutes (it measures once at any -benchtime).
func BenchmarkIdlePod(b *testing.B) {
	// Each pod boots while the ones before it idle, on a machine that may
	// be busy: boot time is not what this measures.
	s := newSuite(b, handlerSpec{name: contrastHandler, edit: func(c *harness.ShimConfig) {
		c.AgentReady = 3 * time.Minute
	}})
	// One measurement, whatever b.N (make bench asks for 3x): the pods
	// are the repetition, and another round would add minutes, not
	// precision.
	for i := 0; i < min(b.N, 1); i++ {
		bare := startBareVM(b, s.env, bareSpec{name: "idle"})
		bareQEMU, err := harness.ProcessOf(bare.vm.Pid())
		if err != nil {
			b.Fatal(err)
		}
		type pod struct {
			handler string
			procs   []harness.Process
		}
		var pods []pod
		for _, h := range handlers {
			for j := 0; j < idlePods; j++ {
				p := s.runPod(b, h, fmt.Sprintf("idle-%d-%d", i, j))
				c := s.startContainer(b, p, "sleeper", "sleep", "100000")
				tr, err := s.c.TracePod(p.ID, c.ID)
				if err != nil {
					b.Fatal(err)
				}
				pods = append(pods, pod{handler: h, procs: tr.Processes})
			}
		}
		time.Sleep(idleSettle)

		before := map[harness.Process]float64{}
		for _, p := range pods {
			for _, proc := range p.procs {
				if t, ok := cpuSeconds(proc); ok {
					before[proc] = t
				}
			}
		}
		bareBefore, ok := cpuSeconds(bareQEMU)
		if !ok {
			b.Fatal("the bare VM's QEMU is gone")
		}
		time.Sleep(idleWindow)
		perPodMinute := map[string]float64{}
		for _, p := range pods {
			for _, proc := range p.procs {
				// A process that came or went within the window (a runc
				// call just ending) is left out: it did not idle.
				t0, ok0 := before[proc]
				t1, ok1 := cpuSeconds(proc)
				if ok0 && ok1 {
					perPodMinute[p.handler] += (t1 - t0) / idlePods / idleWindow.Minutes()
				}
			}
		}
		bareAfter, ok := cpuSeconds(bareQEMU)
		if !ok {
			b.Fatal("the bare VM's QEMU is gone")
		}
		bareCPU := (bareAfter - bareBefore) / idleWindow.Minutes()

		// Memory after the window: what an idle pod settles at.
		var vmm, shim memory
		var podQEMU harness.Process
		for _, p := range pods {
			if p.handler != contrastHandler {
				continue
			}
			for _, proc := range p.procs {
				switch name := filepath.Base(strings.Fields(proc.Cmdline)[0]); {
				case strings.HasPrefix(name, "containerd-shim"):
					shim.add(memoryOf(b, proc))
				case strings.HasPrefix(name, "qemu"):
					vmm.add(memoryOf(b, proc))
					podQEMU = proc
				}
			}
		}
		bareMem := memoryOf(b, bareQEMU)
		if podQEMU.PID != 0 {
			b.Logf("largest mappings of a pod's QEMU: %s", largestMappings(b, podQEMU.PID, 8))
		}
		b.Logf("largest mappings of the bare VM's QEMU: %s", largestMappings(b, bareQEMU.PID, 8))
		bare.stop()

		if vmm.n != idlePods || shim.n != idlePods {
			b.Fatalf("found %d QEMU and %d shim processes for %d contrast-cc pods", vmm.n, shim.n, idlePods)
		}
		b.ReportMetric(vmm.rssMiB(), "vmm-RSS-MiB")
		b.ReportMetric(vmm.pssMiB(), "vmm-PSS-MiB")
		b.ReportMetric(shim.rssMiB(), "shim-RSS-MiB")
		b.ReportMetric(shim.pssMiB(), "shim-PSS-MiB")
		b.ReportMetric(bareMem.rssMiB(), "bare-vmm-RSS-MiB")
		b.ReportMetric(bareMem.pssMiB(), "bare-vmm-PSS-MiB")
		b.ReportMetric(vmm.rssMiB()/bareMem.rssMiB(), "vmm-RSS/bare")
		b.ReportMetric((vmm.pssMiB()+shim.pssMiB())/bareMem.pssMiB(), "pod-PSS/bare")
		b.ReportMetric(perPodMinute[contrastHandler], "contrast-cpu-s/pod-min")
		b.ReportMetric(perPodMinute["runc"], "runc-cpu-s/pod-min")
		b.ReportMetric(bareCPU, "bare-vm-cpu-s/min")
		b.ReportMetric(perPodMinute[contrastHandler]/bareCPU, "contrast/bare-cpu")
	}
}

// cpuSeconds is the CPU time a process has used so far, in seconds;
// false if it is gone.
func cpuSeconds(p harness.Process) (float64, bool) {
	if !p.Alive() {
		return 0, false
	}
	t, err := harness.CPUTime(p.PID)
	return t.Seconds(), err == nil
}

// memory sums the resident (RSS) and proportional (PSS) set sizes of n
// processes, in KiB.
type memory struct {
	rss, pss int64
	n        int
}

func (m *memory) add(o memory) {
	m.rss += o.rss
	m.pss += o.pss
	m.n += o.n
}

func (m memory) rssMiB() float64 { return float64(m.rss) / 1024 / float64(max(m.n, 1)) }
func (m memory) pssMiB() float64 { return float64(m.pss) / 1024 / float64(max(m.n, 1)) }

// memoryOf is one process's memory.
func memoryOf(b *testing.B, p harness.Process) memory {
	m, err := harness.MemoryOf(p.PID)
	if err != nil {
		b.Fatalf("memory of %s: %v", p, err)
	}
	return memory{rss: m.RSS, pss: m.PSS, n: 1}
}

// largestMappings lists the n mappings of a process with the most resident
// memory (same-named mappings summed), to show where its RSS goes.
func largestMappings(b *testing.B, pid, n int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatalf("mappings of pid %d: %v", pid, err)
	}
	defer f.Close()
	rss := map[string]int64{}
	var name string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") {
			// A mapping's header: range, perms, offset, dev, inode, path.
			if len(fields) >= 6 {
				name = strings.Join(fields[5:], " ")
			} else {
				// Anonymous: told apart by size (the TCG translation
				// cache is one mapping of its own size).
				var lo, hi uint64
				_, _ = fmt.Sscanf(fields[0], "%x-%x", &lo, &hi)
				name = fmt.Sprintf("[anonymous %d MiB]", (hi-lo)>>20)
			}
			continue
		}
		if fields[0] == "Rss:" && len(fields) >= 2 {
			kib, _ := strconv.ParseInt(fields[1], 10, 64)
			rss[name] += kib
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatalf("mappings of pid %d: %v", pid, err)
	}
	names := make([]string, 0, len(rss))
	for k := range rss {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return rss[names[i]] > rss[names[j]] })
	// One line: a benchmark's log is cut after a few lines unless -v.
	var out []string
	for _, k := range names[:min(n, len(names))] {
		out = append(out, fmt.Sprintf("%.1f MiB %s", float64(rss[k])/1024, k))
	}
	return strings.Join(out, "; ")
}
