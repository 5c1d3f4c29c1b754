// Package integration holds the end-to-end tests: a private containerd
// (2.4 and 1.7, each test on both) with the runc baseline handler and the
// contrast handlers, driven by crictl (and ctr where crictl has no verb),
// checked for what they leave on the host. Every behaviour test runs the
// same assertions against runc and contrast-cc. Tests run one after
// another: at most two VMs run at a time, except in TestFivePods.
package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// suite is one private containerd instance for one (sub)test.
type suite struct {
	ctx context.Context
	c   *harness.Containerd
	cri *harness.CRI
	env harness.Env // set for suites with contrast handlers
}

// contrastHandler is the runtime handler under test.
const contrastHandler = "contrast-cc"

// handlers are the runtime handlers every behaviour test runs against:
// runc is the baseline, with the same test and the same assertions.
var handlers = []string{"runc", contrastHandler}

// matrix runs f once per containerd version and runtime handler, as
// subtests named containerd-<version>/<handler>, each with its own
// containerd instance (with only the runc handler for runc, so the
// baseline runs without the contrast build). Run one cell with
// -run 'TestX/containerd-1.7/contrast-cc'.
func matrix(t *testing.T, f func(t *testing.T, s *suite, handler string)) {
	matrixWith(t, nil, f)
}

// matrixWith is matrix with the contrast handler's shim configuration
// changed by edit (nil: the default).
func matrixWith(t *testing.T, edit func(*harness.ShimConfig), f func(t *testing.T, s *suite, handler string)) {
	for _, v := range harness.Versions {
		t.Run("containerd-"+string(v), func(t *testing.T) {
			for _, h := range handlers {
				t.Run(h, func(t *testing.T) {
					var s *suite
					if h == "runc" {
						s = newSuiteVersion(t, v)
					} else {
						s = newSuiteVersion(t, v, handlerSpec{name: h, edit: edit})
					}
					f(t, s, h)
				})
			}
		})
	}
}

// versions runs f once per containerd version, as subtests named
// containerd-<version>.
func versions(t *testing.T, f func(t *testing.T, v harness.Version)) {
	for _, v := range harness.Versions {
		t.Run("containerd-"+string(v), func(t *testing.T) { f(t, v) })
	}
}

// handlerSpec is a contrast runtime handler a suite registers.
type handlerSpec struct {
	name string
	// edit changes the default shim configuration.
	edit func(*harness.ShimConfig)
	// raw, when set, is written as the configuration instead.
	raw string
	// testImage boots the test image (simulated SNP device) instead of
	// the release image.
	testImage bool
}

// testTools finds the host tools hack/deps.sh provides; without them the
// test is skipped (a bare go test) or fails (under make).
func testTools(t testing.TB) harness.Tools {
	t.Helper()
	tools, err := harness.FindTools()
	if err != nil {
		testenv.Missing(t, "deps", "the end-to-end tests need containerd, crictl and the rest:\n%v", err)
	}
	return tools
}

// testEnv is what make builds for the contrast tests: the shim, the CLI and
// the guest images. Without CONTRAST_SHIM (a bare go test) the test is
// skipped; a partial environment fails it.
func testEnv(t testing.TB) harness.Env {
	t.Helper()
	env, err := harness.EnvFromOS()
	if err != nil {
		if os.Getenv("CONTRAST_SHIM") == "" {
			testenv.Missing(t, "integration", "the contrast tests need the built shim and guest images: %v", err)
		}
		t.Fatalf("the contrast tests need the built shim and guest images:\n%v", err)
	}
	return env
}

// newSuite starts containerd with the runc handler and, when contrast
// handlers are asked for, those too (which needs CONTRAST_SHIM and the
// guest image: their absence fails the test). Everything it starts is gone
// when the test ends, whatever happened.
func newSuite(t testing.TB, handlers ...handlerSpec) *suite {
	t.Helper()
	return newSuiteVersion(t, harness.Containerd24, handlers...)
}

// newSuiteVersion is newSuite with a chosen containerd version.
func newSuiteVersion(t testing.TB, version harness.Version, handlers ...handlerSpec) *suite {
	t.Helper()
	ctx := t.Context()
	tools := testTools(t)
	s := &suite{ctx: ctx}
	var hs []harness.Handler
	if len(handlers) > 0 {
		s.env = testEnv(t)
	}
	// The shim configurations go into the instance directory; the state
	// dir they name is only known once it exists, and containerd reads
	// them only when a pod starts.
	for _, h := range handlers {
		hs = append(hs, harness.Handler{Name: h.name, Shim: s.env.Shim})
	}
	c, err := harness.Start(ctx, harness.Options{Tools: tools, Handlers: hs, Version: version})
	if err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	s.c, s.cri = c, c.CRI()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log %s (last lines):\n%s", c.Log, c.LogTail(80))
			keepLog(t, c.Log)
		}
		// Background context: t.Context is already cancelled here.
		if err := c.Stop(context.Background()); err != nil {
			t.Errorf("tear down containerd: %v", err)
		}
	})
	for i, h := range handlers {
		env := s.env
		if h.testImage {
			env = env.WithTestImage()
		}
		cfg := harness.DefaultShimConfig(env, c.ShimState)
		if h.edit != nil {
			h.edit(&cfg)
		}
		data := cfg.TOML()
		if h.raw != "" {
			data = h.raw
		}
		if err := os.WriteFile(c.Handlers[i].ConfigPath, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ImportImages(ctx, t.TempDir()); err != nil {
		t.Fatalf("import test images: %v", err)
	}
	return s
}

// runPod starts a pod and registers its removal (a no-op once the test
// removed it itself).
func (s *suite) runPod(t testing.TB, handler, name string) *harness.Pod {
	t.Helper()
	return s.runPodWith(t, harness.PodConfig{Name: name, Handler: handler})
}

// runPodWith starts a pod from a full configuration and registers its
// removal.
func (s *suite) runPodWith(t testing.TB, pc harness.PodConfig) *harness.Pod {
	t.Helper()
	pod, err := s.cri.RunPod(s.ctx, pc)
	if err != nil {
		t.Fatalf("runp %s with handler %s: %v", pc.Name, pc.Handler, err)
	}
	t.Cleanup(func() { s.cleanupPod(pod) })
	return pod
}

// cleanupPod stops and removes a pod the test did not remove itself.
func (s *suite) cleanupPod(pod *harness.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, _ := s.cri.PodIDs(ctx)
	for _, id := range ids {
		if id == pod.ID {
			_ = s.cri.StopPod(ctx, pod.ID) // Stop of the suite forces what this misses
			_ = s.cri.RemovePod(ctx, pod.ID)
		}
	}
}

// startWith creates and starts a container from a full configuration.
func (s *suite) startWith(t testing.TB, pod *harness.Pod, cc harness.ContainerConfig) *harness.Container {
	t.Helper()
	c, err := s.cri.CreateContainer(s.ctx, pod, cc)
	if err != nil {
		t.Fatalf("create container %s: %v", cc.Name, err)
	}
	if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
		t.Fatalf("start container %s: %v", cc.Name, err)
	}
	return c
}

// removeContainer stops (SIGKILL after 1s) and removes a container.
func (s *suite) removeContainer(t testing.TB, c *harness.Container) {
	t.Helper()
	if err := s.cri.StopContainer(s.ctx, c.ID, time.Second); err != nil {
		t.Errorf("crictl stop %s: %v", c.Config.Name, err)
	}
	if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
		t.Errorf("crictl rm %s: %v", c.Config.Name, err)
	}
}

// startContainer creates and starts a busybox container in pod.
func (s *suite) startContainer(t testing.TB, pod *harness.Pod, name string, command ...string) *harness.Container {
	t.Helper()
	c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{Name: name, Command: command})
	if err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
	if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
		t.Fatalf("start container %s: %v", name, err)
	}
	return c
}

// waitExited waits for a container to exit and returns its status.
func (s *suite) waitExited(t testing.TB, c *harness.Container, timeout time.Duration) harness.ContainerStatus {
	t.Helper()
	st, err := s.cri.WaitContainerState(s.ctx, c.ID, "CONTAINER_EXITED", timeout)
	if err != nil {
		t.Fatalf("container %s: %v", c.Config.Name, err)
	}
	return st
}

// removePod stops and removes a pod through CRI and checks that nothing
// of it remains: no process of the trace (shim, VM monitor, device
// backend, container processes), no mount, no state directory.
// With before (a snapshot from before the pod started, when no other pod
// runs), it also checks that the instance holds nothing new: no network
// namespace, snapshot, IP reservation or CNI cache entry.
func (s *suite) removePod(t *testing.T, pod *harness.Pod, trace harness.PodTrace, before *harness.Snapshot) {
	t.Helper()
	s.stopAndRemovePod(t, pod)
	s.checkRemoved(t, pod, trace, before)
}

// stopAndRemovePod stops and removes a pod, as `crictl stopp` and `rmp`.
func (s *suite) stopAndRemovePod(t testing.TB, pod *harness.Pod) {
	t.Helper()
	if err := s.cri.StopPod(s.ctx, pod.ID); err != nil {
		t.Fatalf("stopp: %v", err)
	}
	if err := s.cri.RemovePod(s.ctx, pod.ID); err != nil {
		t.Fatalf("rmp: %v", err)
	}
}

// checkRemoved checks that nothing of a removed pod remains (see removePod).
func (s *suite) checkRemoved(t *testing.T, pod *harness.Pod, trace harness.PodTrace, before *harness.Snapshot) {
	t.Helper()
	s.expectNoLeftovers(t, "pod "+pod.Config.Name, func() (harness.Leftovers, error) { return s.c.PodLeftovers(trace) })
	if before != nil {
		s.expectNoLeftovers(t, "pod "+pod.Config.Name+" (instance state)", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	}
}

// snapshot records the instance's state before a pod starts.
func (s *suite) snapshot(t *testing.T) *harness.Snapshot {
	t.Helper()
	snap, err := s.c.Snapshot()
	if err != nil {
		t.Fatalf("snapshot instance state: %v", err)
	}
	return &snap
}

// expectNoLeftovers polls check for a while: a process that was sent
// SIGKILL may take a moment to be reaped, and containerd removes
// snapshots in its garbage collection, which it paces (seconds on a busy
// machine; once, on CI's loaded 2 cores, more than 15 s for containerd 1.7).
// Nothing is waited for when nothing is left.
func (s *suite) expectNoLeftovers(t *testing.T, what string, check func() (harness.Leftovers, error)) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	// garbage collection of our own, should containerd's have missed a
	// deletion (see CollectGarbage)
	nextGC := time.Now().Add(5 * time.Second)
	for {
		l, err := check()
		if err != nil {
			t.Fatalf("look for leftovers of %s: %v", what, err)
		}
		if l.Empty() {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s left behind:\n%s", what, l)
			return
		}
		if time.Now().After(nextGC) {
			if err := s.c.CollectGarbage(s.ctx); err != nil {
				t.Logf("look for leftovers of %s: %v", what, err)
			}
			nextGC = time.Now().Add(5 * time.Second)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// trace records what a running pod holds; it fails the test when the pod
// has no shim process (then the leftover check would prove nothing).
func (s *suite) trace(t *testing.T, pod *harness.Pod, ctrs ...*harness.Container) harness.PodTrace {
	t.Helper()
	var ids []string
	for _, c := range ctrs {
		ids = append(ids, c.ID)
	}
	tr, err := s.c.TracePod(pod.ID, ids...)
	if err != nil {
		t.Fatalf("trace pod: %v", err)
	}
	shim := false
	for _, p := range tr.Processes {
		if strings.Contains(p.Cmdline, "containerd-shim") {
			shim = true
		}
	}
	if !shim {
		t.Fatalf("found no shim process for pod %s among %v", pod.ID, tr.Processes)
	}
	return tr
}

// logs returns a container's stdout as `crictl logs` shows it.
func (s *suite) logs(t testing.TB, c *harness.Container) string {
	t.Helper()
	out, _, err := s.cri.Logs(s.ctx, c.ID)
	if err != nil {
		t.Fatalf("crictl logs %s: %v", c.Config.Name, err)
	}
	return out
}

// cmdErrText is the text a user sees for a failed crictl or ctr call.
func cmdErrText(err error) string {
	var ce *harness.CmdError
	if errors.As(err, &ce) {
		return ce.Stderr
	}
	return err.Error()
}

// containsAny reports whether s contains one of subs, ignoring case.
func containsAny(s string, subs ...string) bool {
	ls := strings.ToLower(s)
	for _, sub := range subs {
		if strings.Contains(ls, strings.ToLower(sub)) {
			return true
		}
	}
	return false
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// keepLog copies a failed test's containerd log (which carries the shims'
// logs) into $CONTRAST_TEST_ARTIFACTS, when set, before the instance
// directory goes away.
func keepLog(t testing.TB, log string) {
	dir := os.Getenv("CONTRAST_TEST_ARTIFACTS")
	if dir == "" {
		return
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Logf("keep containerd log: %v", err)
		return
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-containerd.log"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("keep containerd log: %v", err)
		return
	}
	dst := filepath.Join(dir, name)
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Logf("keep containerd log: %v", err)
		return
	}
	t.Logf("containerd log kept in %s", dst)
}
