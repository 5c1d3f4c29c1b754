package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/policy"
)

// longNamespace is a containerd namespace as long as some platforms use.
const longNamespace = "a-very-long-namespace-name-used-by-some-platform-team"

// TestLongStateDirAndNamespace runs a pod VM whose runtime state_dir is 60
// characters long, in a long containerd namespace, through ctr: the VM's
// unix sockets live under socket_dir whatever the state dir, namespace and
// pod id, and `contrast verify --pod` reaches the VM from its state dir.
func TestLongStateDirAndNamespace(t *testing.T) {
	fixture := snpFirmwareFixture(t)
	var stateDir string
	s := newSuite(t, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) {
		c.LogLevel = "info"
		c.SNPFirmware = fixture
		c.DefaultPolicy = "allow-all"
		// Inside the instance directory (found by its leftover checks),
		// padded to 60 characters.
		stateDir = c.StateDir + "/" + strings.Repeat("long-state-dir-", 5)
		stateDir = stateDir[:60]
		c.StateDir = stateDir
	}})
	if len(stateDir) != 60 {
		t.Fatalf("state dir %q is %d characters", stateDir, len(stateDir))
	}
	cfgPath, err := s.c.HandlerConfig(contrastHandler)
	if err != nil {
		t.Fatal(err)
	}
	images, err := harness.WriteTestImages(t.TempDir(), s.c.Tools().Busybox)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range images {
		if _, err := s.c.CtrIn(s.ctx, longNamespace, "images", "import", "--local", p); err != nil {
			t.Fatalf("import %s into %s: %v", p, longNamespace, err)
		}
	}
	id := fmt.Sprintf("long-%d", time.Now().UnixNano()%1e9)
	podDir := filepath.Join(stateDir, longNamespace, id)
	t.Logf("pod state dir %s (%d characters)", podDir, len(podDir))
	t.Cleanup(func() {
		// Whatever the test did: nothing of the pod may stay.
		_, _ = s.c.CtrIn(s.ctx, longNamespace, "tasks", "kill", "--signal", "SIGKILL", id)
		_, _ = s.c.CtrIn(s.ctx, longNamespace, "tasks", "delete", "--force", id)
		_, _ = s.c.CtrIn(s.ctx, longNamespace, "containers", "delete", id)
	})
	if out, err := s.c.CtrIn(s.ctx, longNamespace, "run", "-d", "--runtime", s.env.Shim, "--runtime-config-path", cfgPath,
		harness.BusyboxImage, id, "sh", "-c", "echo running; exec sleep 600"); err != nil {
		t.Fatalf("ctr run in namespace %s with state_dir %s: %v\n%s", longNamespace, stateDir, cmdErrText(err), out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := s.c.CtrIn(s.ctx, longNamespace, "tasks", "ls")
		if err == nil && strings.Contains(out, id) && strings.Contains(out, "RUNNING") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s not running: %q %v", id, out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	target, err := os.Readlink(filepath.Join(podDir, "sockets"))
	if err != nil {
		t.Fatalf("the pod's state dir has no sockets link: %v", err)
	}
	t.Logf("sockets in %s", target)
	if !strings.HasPrefix(target, harness.ShimSocketDir(s.c.ShimState)+"/") {
		t.Errorf("sockets in %s, want under socket_dir %s", target, harness.ShimSocketDir(s.c.ShimState))
	}

	allowAll := filepath.Join(t.TempDir(), "allow-all.rego")
	if err := os.WriteFile(allowAll, policy.AllowAll(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := verifyRun(t, s, "--pod", id, "--state-dir", stateDir, "--namespace", longNamespace,
		"--reference", filepath.Join(s.env.TestImageDir, "reference.json"), "--policy", allowAll,
		"--trusted-chain", simulatedChain(t))
	if code != 0 {
		t.Fatalf("contrast verify --pod failed (exit %d):\n%s", code, out)
	}

	if _, err := s.c.CtrIn(s.ctx, longNamespace, "tasks", "kill", "--signal", "SIGKILL", id); err != nil {
		t.Fatalf("kill: %v", err)
	}
	for {
		if _, err := s.c.CtrIn(s.ctx, longNamespace, "tasks", "delete", id); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("delete task: %v", cmdErrText(err))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := s.c.CtrIn(s.ctx, longNamespace, "containers", "delete", id); err != nil {
		t.Fatalf("delete container: %v", err)
	}
	for _, p := range []string{podDir, target} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after the pod ended (%v)", p, err)
		}
	}
}
