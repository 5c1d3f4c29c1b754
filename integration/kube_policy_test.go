package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// kubePolicyPod is the pod TestKubePolicy generates a policy for: its exec
// liveness probe is the one command the policy lets the host exec.
const kubePolicyPod = `apiVersion: v1
kind: Pod
metadata:
  name: guarded
  namespace: default
spec:
  runtimeClassName: contrast-cc
  terminationGracePeriodSeconds: 5
  volumes:
  - {name: settings, configMap: {name: guarded-settings}}
  containers:
  - name: app
    image: ` + harness.BusyboxImage + `
    imagePullPolicy: Never
    volumeMounts: [{name: settings, mountPath: /etc/settings}]
    command: ["sh", "-c", "mkdir -p /tmp/pub /tmp/admin; echo public >/tmp/pub/index.html; echo admin >/tmp/admin/index.html; httpd -p 8080 -h /tmp/pub; httpd -p 127.0.0.1:9090 -h /tmp/admin; echo policy-ok $(cat /etc/settings/greeting) token-$(test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo ok); exec sleep 3600"]
    ports:
    - containerPort: 8080
    livenessProbe:
      exec:
        command: ["cat", "/etc/hostname"]
      periodSeconds: 2
`

// TestKubePolicy runs a pod under the policy `contrast policy generate`
// wrote into its YAML, on a deny-all node (the test image, whose simulated
// SNP device reports the launch's host data): the kubelet's exec probe
// runs, as the policy allows; `kubectl exec` of a command the policy does
// not list fails with the policy's denial; kubectl port-forward reaches the
// declared port but not a loopback-only one the pod does not declare; a
// pod without a policy fails with an event that says why.
func TestKubePolicy(t *testing.T) {
	ks := newKubeSuite(t, handlerSpec{name: contrastHandler, testImage: true, edit: func(c *harness.ShimConfig) { c.DefaultPolicy = "deny-all" }})

	t.Run("no-policy", func(t *testing.T) {
		ks.apply(t, podSpec("unguarded", contrastHandler, busybox("app", "sleep 3600")))
		msg := ks.waitEvent(t, "unguarded", "FailedCreatePodSandBox", 3*time.Minute)
		t.Logf("event: %s", msg)
		if !containsAny(msg, "no policy") || !containsAny(msg, "deny-all") {
			t.Errorf("the event does not say the pod has no policy and the node denies all: %s", msg)
		}
		ks.kubectl(t, "delete", "pod", "unguarded", "--wait=true", "--timeout=2m")
	})

	t.Run("generated", func(t *testing.T) {
		// The generated policy lets the host share the pod's ConfigMap
		// volume and its service-account token, and nothing else.
		ks.apply(t, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: guarded-settings\ndata:\n  greeting: hello\n")
		ks.apply(t, ks.generatePolicy(t, kubePolicyPod))
		ks.wait(t, "pod/guarded", "condition=Ready", 3*time.Minute)
		ks.waitLogs(t, "policy-ok hello token-ok", "guarded")
		if out := ks.kubectl(t, "exec", "guarded", "--", "cat", "/etc/hostname"); strings.TrimSpace(out) != "guarded" {
			t.Errorf("exec of the probe's command: %q", out)
		}
		_, err := ks.k.Kubectl(ks.ctx, "exec", "guarded", "--", "id")
		if err == nil {
			t.Fatal("kubectl exec of id, which the policy does not list, succeeded")
		}
		msg := cmdErrText(err)
		t.Logf("denied exec: %s", msg)
		if !containsAny(msg, "polic") || !containsAny(msg, "ExecProcess") {
			t.Errorf("kubectl exec's error does not show the policy's denial: %s", msg)
		}
		// The declared port forwards; the undeclared loopback-only admin
		// port, which a runc pod would expose to port-forward, does not.
		if body, err := ks.portForwardGet(t, "guarded", 8080, "/"); err != nil || strings.TrimSpace(body) != "public" {
			t.Errorf("port-forward to the declared port: %q, %v", body, err)
		}
		if body, err := ks.portForwardGet(t, "guarded", 9090, "/"); err == nil {
			t.Errorf("port-forward to the undeclared port 9090 got %q; the policy should deny it", body)
		}
		if denied := ks.c.LogGrep("policy denies PortForward"); !strings.Contains(denied, "port 9090") {
			t.Errorf("the shim's log does not show the policy's denial of port 9090: %q", denied)
		}
		// The liveness probe (ExecSync every 2 s) keeps passing.
		time.Sleep(5 * time.Second)
		if n := ks.kubectl(t, "get", "pod", "guarded", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"); n != "0" {
			t.Errorf("the container restarted %s times: the allowed probe failed", n)
		}
		ks.kubectl(t, "delete", "pod", "guarded", "--wait=true", "--timeout=2m")
	})
}
