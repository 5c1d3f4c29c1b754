package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/deploy"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// kubeSuite is a single-node Kubernetes cluster on a private containerd
// (2.4) with the runc handler and, when asked for, contrast handlers
// configured directly (the installer test installs its own through the
// DaemonSet instead).
type kubeSuite struct {
	*suite
	k *harness.Kube
}

// contrastNodeLabel is the label deploy/'s RuntimeClass and DaemonSet
// select nodes by.
var contrastNodeLabel = map[string]string{"contrast.io/node": "true"}

// runcRuntimeClass is the baseline: the same pods with runtimeClassName
// runc run in runc containers on the same node.
const runcRuntimeClass = `apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: runc
handler: runc
`

// newKubeSuite starts containerd with handlers and a cluster on it, and
// registers the runc RuntimeClass and, when a contrast handler is there,
// deploy/'s contrast-cc RuntimeClass. Everything is gone when the test
// ends.
func newKubeSuite(t testing.TB, handlers ...handlerSpec) *kubeSuite {
	t.Helper()
	kt, err := harness.FindKubeTools()
	if err != nil {
		testenv.Missing(t, "kubernetes", "Kubernetes tests need the Kubernetes binaries:\n%v", err)
	}
	s := newSuite(t, handlers...)
	start := time.Now()
	k, err := harness.StartKube(s.ctx, s.c, harness.KubeOptions{Tools: kt, NodeLabels: contrastNodeLabel})
	if err != nil {
		t.Fatalf("start Kubernetes: %v", err)
	}
	t.Logf("node %s Ready after %s", k.NodeName, time.Since(start).Round(100*time.Millisecond))
	ks := &kubeSuite{suite: s, k: k}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
				t.Logf("%s log (last lines):\n%s", c, k.LogTail(c, 40))
			}
		}
		if err := k.Stop(context.Background()); err != nil {
			t.Errorf("tear down Kubernetes: %v", err)
		}
	})
	ks.apply(t, runcRuntimeClass)
	if len(handlers) > 0 {
		rc, err := deploy.Manifests.ReadFile("runtimeclass.yaml")
		if err != nil {
			t.Fatal(err)
		}
		ks.apply(t, string(rc))
	}
	return ks
}

// kubectl runs kubectl and fails the test on error.
func (ks *kubeSuite) kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ks.k.Kubectl(ks.ctx, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, cmdErrText(err))
	}
	return out
}

// apply applies a manifest and fails the test on error.
func (ks *kubeSuite) apply(t testing.TB, manifest string) {
	t.Helper()
	if out, err := ks.k.Apply(ks.ctx, manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s%s", err, out, cmdErrText(err))
	}
}

// wait waits until `kubectl wait --for=cond` holds for what (with flags
// such as -n); on timeout it fails the test with what's description.
func (ks *kubeSuite) wait(t testing.TB, what, cond string, timeout time.Duration, flags ...string) {
	t.Helper()
	args := append([]string{"wait", what, "--for=" + cond, fmt.Sprintf("--timeout=%s", timeout)}, flags...)
	if out, err := ks.k.Kubectl(ks.ctx, args...); err != nil {
		desc, _ := ks.k.Kubectl(ks.ctx, append([]string{"describe", what}, flags...)...)
		t.Fatalf("wait for %s %s: %v\n%s%s\n%s", what, cond, err, out, cmdErrText(err), desc)
	}
}

// podSpec renders a pod of the busybox test image under runtime class rc:
// automountServiceAccountToken is off until volumes reach the pod VM (issue 17).
func podSpec(name, rc, containers string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  runtimeClassName: %s
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 5
  containers:
%s`, name, rc, containers)
}

// busybox is one container of the test image; cmd is a shell command line.
func busybox(name, cmd string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    image: %s\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", %q]\n", name, harness.BusyboxImage, cmd)
	for _, e := range extra {
		for _, l := range strings.Split(strings.TrimRight(e, "\n"), "\n") {
			b.WriteString("    " + l + "\n")
		}
	}
	return b.String()
}

// kubeHandlers are the runtime classes every Kubernetes behaviour test
// runs side by side in one cluster.
var kubeHandlers = []string{"runc", contrastHandler}

func instanceHex(dir string) string { return strings.TrimPrefix(filepath.Base(dir), "c") }

func writeFileT(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitEvent waits for an event of reason about the pod named name and
// returns its message.
func (ks *kubeSuite) waitEvent(t testing.TB, name, reason string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := ks.k.Kubectl(ks.ctx, "get", "events", "--field-selector", "involvedObject.name="+name+",reason="+reason,
			"-o", "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}")
		if err == nil && strings.TrimSpace(out) != "" {
			return strings.TrimSpace(out)
		}
		if time.Now().After(deadline) {
			desc, _ := ks.k.Kubectl(ks.ctx, "describe", "pod", name)
			t.Fatalf("no %s event for pod %s after %s (%v)\n%s", reason, name, timeout, err, desc)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// generatePolicy runs `contrast policy generate` over a manifest (images
// read from the node's containerd; the test node's kubelet root directory
// in the settings) and returns the manifest with the policy annotation.
func (ks *kubeSuite) generatePolicy(t *testing.T, manifest string) string {
	t.Helper()
	dir := t.TempDir()
	settings := filepath.Join(dir, "settings.yaml")
	writeFileT(t, settings, "kubeletRootDir: "+ks.k.KubeletRoot+"\n")
	out := filepath.Join(dir, "policy.yaml")
	generatePolicyFile(t, ks.suite, manifest, out, "--settings", settings)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitLogs waits until `kubectl logs args...` contains want and returns
// the logs: a container's output reaches its log file a moment after the
// kubelet sees it running (through the VM's stdio stream, for contrast-cc).
func (ks *kubeSuite) waitLogs(t testing.TB, want string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := ks.k.Kubectl(ks.ctx, append([]string{"logs"}, args...)...)
		if err == nil && strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl logs %s: %q (%v), want %q", strings.Join(args, " "), out, err, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// portForwardGet runs `kubectl port-forward` to the pod's port and GETs
// path through it. The error says what failed, with kubectl's stderr.
func (ks *kubeSuite) portForwardGet(t *testing.T, pod string, port int, path string) (string, error) {
	t.Helper()
	s, err := ks.k.StartKubectlSession(ks.ctx, "port-forward", "pod/"+pod, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	if err := s.WaitOutput("Forwarding from 127.0.0.1:", 30*time.Second); err != nil {
		t.Fatalf("kubectl port-forward: %v; stderr %q", err, s.Stderr())
	}
	m := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`).FindStringSubmatch(s.Output())
	if m == nil {
		t.Fatalf("port-forward output: %q", s.Output())
	}
	body, err := harness.HTTPGet(ks.ctx, "http://127.0.0.1:"+m[1]+path, 10*time.Second)
	if err != nil {
		return body, fmt.Errorf("%w; kubectl: %q", err, s.Stderr())
	}
	return body, nil
}
