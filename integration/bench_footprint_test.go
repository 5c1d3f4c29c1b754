package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/vmimage"
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
		bare := startBareVM(b, s.env)
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
		bareBefore, ok := cpuSeconds(bare.qemu)
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
		bareAfter, ok := cpuSeconds(bare.qemu)
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
		bareMem := memoryOf(b, bare.qemu)
		if podQEMU.PID != 0 {
			b.Logf("largest mappings of a pod's QEMU: %s", largestMappings(b, podQEMU.PID, 8))
		}
		b.Logf("largest mappings of the bare VM's QEMU: %s", largestMappings(b, bare.qemu.PID, 8))
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

// bareVM is a QEMU booting the suite's image as a pod VM would, without
// containerd or a shim.
type bareVM struct {
	qemu harness.Process
	stop func()
}

// startBareVM boots the image of env with the pod VMs' default size and
// waits for its agent to answer.
func startBareVM(b *testing.B, env harness.Env) bareVM {
	ctx := context.Background()
	im, err := vmimage.Load(env.ImageDir)
	if err != nil {
		b.Fatal(err)
	}
	hv, err := qemu.New(qemu.Config{})
	if err != nil {
		b.Fatal(err)
	}
	stateDir, err := os.MkdirTemp("", "bare")
	if err != nil {
		b.Fatal(err)
	}
	def := harness.DefaultShimConfig(env, "")
	vm, err := hv.Start(ctx, hypervisor.VMSpec{
		ID: "bare-idle", StateDir: stateDir, Kernel: im.Kernel(), Initrd: im.Initrd(),
		KernelArgs: im.KernelCmdline(), VCPUs: def.VCPUs, MemoryMiB: def.MemoryMiB,
	})
	if err != nil {
		os.RemoveAll(stateDir)
		b.Fatal(err)
	}
	stop := func() {
		_ = vm.Stop(ctx)
		os.RemoveAll(stateDir)
	}
	b.Cleanup(stop) // after a failure; a second Stop is harmless
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if time.Now().After(deadline) {
			b.Fatal("bare VM: agent did not answer within 2 minutes")
		}
		if agentAnswers(ctx, vm) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	pidText, err := os.ReadFile(filepath.Join(stateDir, "qemu.pid"))
	if err != nil {
		b.Fatalf("bare VM: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		b.Fatalf("bare VM: pid file %q: %v", pidText, err)
	}
	ps, err := harness.Processes()
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range ps {
		if p.PID == pid {
			return bareVM{qemu: p, stop: stop}
		}
	}
	b.Fatalf("bare VM: QEMU (pid %d) is gone", pid)
	return bareVM{}
}

func agentAnswers(ctx context.Context, vm hypervisor.VM) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := vm.Dial(ctx, agentapi.AgentPort)
	if err != nil {
		return false
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	_, err = agentapi.NewAgentClient(client).Health(ctx, &agentapi.HealthRequest{})
	return err == nil
}

// cpuSeconds is the CPU time (user and system, all threads) a process has
// used so far; false if it is gone.
func cpuSeconds(p harness.Process) (float64, bool) {
	if !p.Alive() {
		return 0, false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return 0, false
	}
	// comm may hold spaces: utime and stime are the 12th and 13th fields
	// after its closing parenthesis (the 14th and 15th of the line).
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	if len(f) < 13 {
		return 0, false
	}
	var ticks uint64
	for _, v := range f[11:13] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, false
		}
		ticks += n
	}
	return float64(ticks) / clockTicksPerSecond, true
}

// clockTicksPerSecond is USER_HZ, the unit of /proc/<pid>/stat's times,
// which Linux fixes at 100 on every architecture the project runs on.
const clockTicksPerSecond = 100

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

// memoryOf reads a process's RSS and PSS from /proc/<pid>/smaps_rollup.
func memoryOf(b *testing.B, p harness.Process) memory {
	text, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p.PID))
	if err != nil {
		b.Fatalf("memory of %s: %v", p, err)
	}
	m := memory{n: 1}
	for _, line := range strings.Split(string(text), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok || (key != "Rss" && key != "Pss") {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			b.Fatalf("memory of %s: %q: %v", p, line, err)
		}
		if key == "Rss" {
			m.rss = kib
		} else {
			m.pss = kib
		}
	}
	return m
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
