package integration

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

func TestTwoPods(t *testing.T) {
	matrix(t, func(t *testing.T, s *suite, handler string) { s.twoPods(t, handler) })
}

// twoPods starts two pods at once (two VMs booting side by side for
// contrast), checks each answers as itself, stops one and checks the other
// is unaffected, then stops the second.
func (s *suite) twoPods(t *testing.T, handler string) {
	before := s.snapshot(t)
	names := []string{"alpha", "beta"}
	pods := make([]*harness.Pod, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pods[i], errs[i] = s.cri.RunPod(s.ctx, harness.PodConfig{Name: name, Handler: handler})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("runp %s: %v", names[i], err)
		}
	}
	ctrs := make([]*harness.Container, 2)
	traces := make([]harness.PodTrace, 2)
	for i, p := range pods {
		ctrs[i] = s.startContainer(t, p, "main", "sleep", "100000")
		traces[i] = s.trace(t, p, ctrs[i])
	}
	// Nothing of one pod may show up in the other's trace.
	for _, p := range traces[0].Processes {
		for _, q := range traces[1].Processes {
			if p.PID == q.PID {
				t.Fatalf("process %s belongs to both pods", p)
			}
		}
	}
	hostnameIs := func(i int) {
		t.Helper()
		r, err := s.cri.Exec(s.ctx, ctrs[i].ID, false, "hostname")
		if err != nil || strings.TrimSpace(r.Stdout) != names[i] || r.ExitCode != 0 {
			t.Errorf("hostname in pod %s: %q exit %d %v", names[i], r.Stdout, r.ExitCode, err)
		}
	}
	hostnameIs(0)
	hostnameIs(1)

	// Stop alpha; beta runs on.
	if err := s.cri.StopContainer(s.ctx, ctrs[0].ID, time.Second); err != nil {
		t.Fatalf("stop alpha's container: %v", err)
	}
	s.removePod(t, pods[0], traces[0], nil)
	st, err := s.cri.InspectContainer(s.ctx, ctrs[1].ID)
	if err != nil || st.State != "CONTAINER_RUNNING" {
		t.Fatalf("beta's container after alpha stopped: %s %v", st.State, err)
	}
	for _, p := range traces[1].Processes {
		if !p.Alive() {
			t.Errorf("beta's process %s died when alpha stopped", p)
		}
	}
	hostnameIs(1)
	ps, err := s.cri.InspectPod(s.ctx, pods[1].ID)
	if err != nil || ps.State != "SANDBOX_READY" {
		t.Errorf("beta after alpha stopped: %s %v", ps.State, err)
	}

	if err := s.cri.StopContainer(s.ctx, ctrs[1].ID, time.Second); err != nil {
		t.Fatalf("stop beta's container: %v", err)
	}
	s.removePod(t, pods[1], traces[1], before)
}

// TestRuncLeftoverDetection proves the leftover checks can fail: while a
// pod runs, they must see it.
func TestRuncLeftoverDetection(t *testing.T) {
	versions(t, func(t *testing.T, v harness.Version) { leftoverDetection(t, newSuiteVersion(t, v)) })
}

func leftoverDetection(t *testing.T, s *suite) {
	before := s.snapshot(t)
	pod := s.runPod(t, "runc", "seen")
	c := s.startContainer(t, pod, "main", "sleep", "100000")
	trace := s.trace(t, pod, c)
	l, err := s.c.PodLeftovers(trace)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Processes) < 3 || len(l.Mounts) == 0 || len(l.Paths) == 0 {
		t.Errorf("PodLeftovers of a running pod should list its shim, pause and sleep processes, its mounts and state directories; got:\n%s", l)
	}
	n, err := s.c.NewSince(*before)
	if err != nil {
		t.Fatal(err)
	}
	var netns, snap, cgroup bool
	for _, p := range n.Paths {
		netns = netns || strings.Contains(p, "/netns/")
		snap = snap || strings.Contains(p, "/snapshots/")
		cgroup = cgroup || strings.HasPrefix(p, "/sys/fs/cgroup/")
	}
	if !netns || !snap || !cgroup || len(n.Mounts) == 0 || len(n.Processes) == 0 || len(n.Sockets) == 0 || len(n.Netdevs) == 0 {
		t.Errorf("NewSince should see the running pod's network namespace, snapshots, cgroups, mounts, processes, shim socket and veth; got:\n%s", n)
	}
	if err := s.cri.StopContainer(s.ctx, c.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	s.removePod(t, pod, trace, before)
}

// TestRuncHarnessTeardown proves the teardown a failed test relies on:
// Stop with a pod still running leaves no process, mount, directory or
// bridge of the instance.
func TestRuncHarnessTeardown(t *testing.T) {
	versions(t, func(t *testing.T, v harness.Version) {
		for _, crash := range []bool{false, true} {
			t.Run(fmt.Sprintf("containerd-crashed=%v", crash), func(t *testing.T) { testTeardown(t, v, crash) })
		}
	})
}

// testTeardown runs a pod and tears the instance down; with crash,
// containerd is killed first, as if it had crashed, so the pod's shim and
// processes are orphans that Stop must find and kill.
func testTeardown(t *testing.T, v harness.Version, crash bool) {
	s := newSuiteVersion(t, v)
	pod := s.runPod(t, "runc", "orphan")
	c := s.startContainer(t, pod, "main", "sleep", "100000")
	trace := s.trace(t, pod, c)
	if crash {
		if err := syscall.Kill(s.c.PID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	err := s.c.Stop(context.Background())
	if !crash && err != nil {
		t.Fatalf("stop: %v", err)
	}
	if crash {
		if err == nil || !strings.Contains(err.Error(), "killed processes") {
			t.Errorf("stop after a crash: %v, want a report of the processes it killed", err)
		}
		t.Logf("stop after a crash reported: %v", err)
	}
	for _, p := range trace.Processes {
		if p.Alive() {
			t.Errorf("%s survived teardown", p)
		}
	}
	ms, err := harness.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Point, s.c.Dir) {
			t.Errorf("mount survived teardown: %s", m)
		}
	}
	if fileExists(s.c.Dir) {
		t.Errorf("%s survived teardown", s.c.Dir)
	}
	if _, err := net.InterfaceByName(s.c.Bridge); err == nil {
		t.Errorf("bridge %s survived teardown", s.c.Bridge)
	}
	// libcni's cache lies outside the instance directory.
	for _, name := range []string{s.c.Network + "-" + pod.ID + "-eth0", "cni-loopback-" + pod.ID + "-lo"} {
		if p := filepath.Join("/var/lib/cni/results", name); fileExists(p) {
			t.Errorf("CNI cache entry %s survived teardown", p)
		}
	}
	roots, err := filepath.Glob("/sys/fs/cgroup/*" + s.c.CgroupParent)
	if err != nil || len(roots) != 0 {
		t.Errorf("cgroups survived teardown: %v %v", roots, err)
	}
}
