package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/deploy"
	"github.com/contrast-vm/contrast/installer"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// TestKubeInstaller deploys the runtime the way a user does: the node
// installer image (written by the harness: installer, shim, guest image,
// deploy/runtime.toml; no container engine involved) is imported into the
// node's containerd and `kubectl apply -f deploy/contrast.yaml` runs the
// real DaemonSet, which installs the handler and restarts containerd
// through --restart-cmd. The harness stands in for systemd there (see
// harness.Supervisor): containerd is its child, and the restart command
// asks it to restart containerd. Then a contrast-cc pod runs under the
// RuntimeClass; a pod without a policy is refused on this deny-all node
// with an event that says why; the DaemonSet applied again (a new pod)
// changes nothing and restarts nothing; deleted, and uninstalled by a pod
// running the same image, it leaves containerd's configuration as it was
// and no file of the handler.
func TestKubeInstaller(t *testing.T) {
	env := testEnv(t)
	ks := newKubeSuite(t)
	ks.env = env // for contrast policy generate
	ctx := ks.ctx
	original, err := os.ReadFile(ks.c.ConfigToml)
	if err != nil {
		t.Fatal(err)
	}
	sup, err := ks.c.Supervise()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sup.Stop(); err != nil {
			t.Errorf("stop supervisor: %v", err)
		}
	})

	// The installer image.
	installerBin := testenv.Path(t, "CONTRAST_NODE_INSTALLER", "build", "the static contrast-node-installer")
	tmpl, err := os.ReadFile("../deploy/runtime.toml")
	if err != nil {
		t.Fatal(err)
	}
	tools := testTools(t)
	archive := filepath.Join(t.TempDir(), "node-installer.tar")
	if err := harness.WriteInstallerImage(archive, harness.InstallerPayload{
		Installer: installerBin, Shim: env.Shim, ImageDir: env.ImageDir,
		RuntimeTOML: harness.TestNodeRuntimeConfig(tmpl, ks.c.ShimState), Busybox: tools.Busybox,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.c.Ctr(ctx, "images", "import", "--local", archive); err != nil {
		t.Fatalf("import the installer image: %v", err)
	}

	manifest, err := deploy.Manifests.ReadFile("contrast.yaml")
	if err != nil {
		t.Fatal(err)
	}
	applyInstaller := func(rev string) {
		t.Helper()
		m, err := harness.NodeInstallerManifest(ks.c, sup, manifest, map[string]string{"contrast.io/test-revision": rev})
		if err != nil {
			t.Fatal(err)
		}
		ks.apply(t, string(m))
		ks.kubectl(t, "-n", "kube-system", "rollout", "status", "daemonset/contrast-node-installer", "--timeout=3m")
	}
	installerLog := func(want string) string {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			out, err := ks.k.Kubectl(ctx, "-n", "kube-system", "logs", "daemonset/contrast-node-installer")
			if err == nil && strings.Contains(out, want) {
				return out
			}
			if time.Now().After(deadline) {
				desc, _ := ks.k.Kubectl(ctx, "-n", "kube-system", "describe", "pods")
				t.Fatalf("installer log never says %q: %q %v\n%s", want, out, err, desc)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	applyInstaller("1")
	out := installerLog("alias: contrast-cc")
	t.Logf("installer:\n%s", out)
	if !strings.Contains(out, "installed: handler") {
		t.Fatalf("first install did not install: %s", out)
	}
	m := regexp.MustCompile(`handler (contrast-cc-[0-9a-f]+) in (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("installer log names no handler: %s", out)
	}
	handler, dir := m[1], m[2]
	if sup.Restarts() != 1 {
		t.Errorf("the install restarted containerd %d times, want once", sup.Restarts())
	}
	handlers, err := installer.CRIHandlers(ctx, ks.c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{handler, contrastHandler} {
		if !slices.Contains(handlers, h) {
			t.Errorf("containerd serves %v, not %s", handlers, h)
		}
	}

	t.Run("no-policy-refused", func(t *testing.T) {
		ks.apply(t, podSpec("no-policy", contrastHandler, busybox("app", "sleep 3600")))
		msg := ks.waitEvent(t, "no-policy", "FailedCreatePodSandBox", 3*time.Minute)
		t.Logf("event: %s", msg)
		if !containsAny(msg, "no policy") || !containsAny(msg, "deny-all") {
			t.Errorf("the event does not say the pod has no policy and the node denies all: %s", msg)
		}
		ks.kubectl(t, "delete", "pod", "no-policy", "--wait=true", "--timeout=2m")
	})

	t.Run("pod-with-policy", func(t *testing.T) {
		pod := ks.generatePolicy(t, podSpec("installed", contrastHandler, busybox("app", "echo hello from the installed handler; sleep 3600")))
		ks.apply(t, pod)
		ks.wait(t, "pod/installed", "condition=Ready", 3*time.Minute)
		ks.waitLogs(t, "hello from the installed handler", "installed")
		ks.kubectl(t, "delete", "pod", "installed", "--wait=true", "--timeout=2m")
	})

	// Applied again with a changed pod template: a new installer pod, which
	// finds everything in place and restarts nothing.
	pid := ks.c.PID()
	applyInstaller("2")
	out = installerLog("unchanged: handler " + handler)
	t.Logf("second installer:\n%s", out)
	if strings.Contains(out, "installed: handler") || !strings.Contains(out, "unchanged: handler "+handler+" in "+dir+"\n") {
		t.Errorf("second install: the log says it installed, or names another directory than %s: %s", dir, out)
	}
	if sup.Restarts() != 1 || ks.c.PID() != pid {
		t.Errorf("second install: %d restarts, containerd pid %d (was %d); want no restart", sup.Restarts(), ks.c.PID(), pid)
	}

	// Deleted (the installer pod ends; the handler stays), then
	// uninstalled by a pod of the same image.
	ks.kubectl(t, "-n", "kube-system", "delete", "daemonset/contrast-node-installer", "--wait=true", "--timeout=2m")
	ks.kubectl(t, "-n", "kube-system", "wait", "pod", "-l", "app.kubernetes.io/name=contrast-node-installer", "--for=delete", "--timeout=2m")
	if handlers, err := installer.CRIHandlers(ctx, ks.c.Socket); err != nil || !slices.Contains(handlers, handler) {
		t.Errorf("after deleting the DaemonSet containerd serves %v (%v), want %s still", handlers, err, handler)
	}
	ks.apply(t, uninstallPod(ks.c, sup, handler))
	ks.wait(t, "pod/contrast-node-uninstall", "jsonpath={.status.phase}=Succeeded", 3*time.Minute, "-n", "kube-system")
	t.Logf("uninstall:\n%s", ks.kubectl(t, "-n", "kube-system", "logs", "contrast-node-uninstall"))
	ks.kubectl(t, "-n", "kube-system", "delete", "pod", "contrast-node-uninstall", "--wait=true")
	if sup.Restarts() != 2 {
		t.Errorf("uninstall: %d restarts in all, want 2 (install, uninstall)", sup.Restarts())
	}
	handlers, err = installer.CRIHandlers(ctx, ks.c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{handler, contrastHandler} {
		if slices.Contains(handlers, h) {
			t.Errorf("after uninstall containerd still serves %s (%v)", h, handlers)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("handler directory %s after uninstall: %v", dir, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(ks.c.Dir, "conf.d")); len(ents) > 0 {
		t.Errorf("drop-ins left after uninstall: %v", ents)
	}
	if now, err := os.ReadFile(ks.c.ConfigToml); err != nil || !bytes.Equal(now, original) {
		t.Errorf("containerd config after uninstall differs from the original (%v):\n%s", err, now)
	}
}

// uninstallPod runs the installer image's uninstall for handler with the
// flags NodeInstallerManifest gives the DaemonSet.
func uninstallPod(c *harness.Containerd, sup *harness.Supervisor, handler string) string {
	args := []string{
		// The alias named as the DaemonSet names it (uninstall also drops an
		// alias that points at the removed handler without being named).
		"/contrast-node-installer", "uninstall", "--host-root=/host", "--handler=" + handler, "--alias=" + contrastHandler,
		"--prefix=" + filepath.Join(c.Dir, "opt", "contrast"),
		"--containerd-config=" + c.ConfigToml,
		"--drop-in-dir=" + filepath.Join(c.Dir, "conf.d"),
		"--cri-socket=" + c.Socket,
		"--restart-cmd=/bin/sh /host" + sup.Script,
	}
	var cmd bytes.Buffer
	for _, a := range args {
		fmt.Fprintf(&cmd, "%q, ", a)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: contrast-node-uninstall
  namespace: kube-system
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: uninstall
    image: %s
    imagePullPolicy: Never
    command: [%s]
    securityContext: {privileged: true}
    volumeMounts: [{name: host, mountPath: /host}]
  volumes:
  - name: host
    hostPath: {path: /, type: Directory}
`, harness.InstallerImage, strings.TrimSuffix(cmd.String(), ", "))
}
