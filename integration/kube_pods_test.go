package integration

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestKubePods drives runc and contrast-cc pods side by side through a real
// kubelet on one node: each subtest applies the same pod under both
// runtime classes and makes the same assertions on both.
func TestKubePods(t *testing.T) {
	ks := newKubeSuite(t, handlerSpec{name: contrastHandler})

	// sideBySide applies spec(name, rc) for both runtime classes, waits
	// until both are Ready, runs f on each, and deletes them.
	sideBySide := func(t *testing.T, base string, spec func(name, rc string) string, f func(t *testing.T, name, rc string)) {
		t.Helper()
		for _, rc := range kubeHandlers {
			ks.apply(t, spec(base+"-"+rc, rc))
		}
		for _, rc := range kubeHandlers {
			ks.wait(t, "pod/"+base+"-"+rc, "condition=Ready", 3*time.Minute)
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) { f(t, base+"-"+rc, rc) })
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "pod", base+"-"+rc, "--wait=true", "--timeout=2m")
		}
	}

	// The streaming pod: a ticking log, an HTTP server on 8080, and a
	// second container reading its stdin (for attach).
	streaming := func(name, rc string) string {
		return podSpec(name, rc,
			busybox("app", "mkdir -p /tmp/www; echo served by $(hostname) >/tmp/www/index.html; httpd -p 8080 -h /tmp/www; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
				"ports: [{containerPort: 8080}]")+
				busybox("reader", "while read -r l; do echo \"attached: $l\"; done; echo stdin closed", "stdin: true"))
	}
	t.Run("streaming", func(t *testing.T) {
		sideBySide(t, "stream", streaming, func(t *testing.T, name, rc string) {
			t.Run("logs", func(t *testing.T) {
				out := ks.kubectl(t, "logs", name, "-c", "app")
				if !strings.Contains(out, "tick 0\n") {
					t.Errorf("kubectl logs: %q", out)
				}
				s, err := ks.k.StartKubectlSession(ks.ctx, "logs", "-f", name, "-c", "app", "--since=1s")
				if err != nil {
					t.Fatal(err)
				}
				defer s.Kill()
				// Lines written after the follow started arrive.
				last := lastTickIn(out)
				if err := s.WaitOutput(fmt.Sprintf("tick %d\n", last+3), 30*time.Second); err != nil {
					t.Error(err)
				}
			})
			t.Run("exec", func(t *testing.T) {
				out := ks.kubectl(t, "exec", name, "-c", "app", "--", "sh", "-c", "echo $((6*7)) $(hostname)")
				if want := "42 " + name; strings.TrimSpace(out) != want {
					t.Errorf("kubectl exec: %q, want %q", out, want)
				}
				_, err := ks.k.Kubectl(ks.ctx, "exec", name, "-c", "app", "--", "sh", "-c", "exit 3")
				if code := exitCode(err); code != 3 {
					t.Errorf("kubectl exec of exit 3: exit code %d (%v)", code, err)
				}
			})
			t.Run("exec-stdin", func(t *testing.T) {
				out, err := ks.k.KubectlStdin(ks.ctx, strings.NewReader("one\ntwo\n"), "exec", "-i", name, "-c", "app", "--", "sh", "-c", "while read -r l; do echo \"got $l\"; done")
				if err != nil || out != "got one\ngot two\n" {
					t.Errorf("kubectl exec -i: %q, %v", out, cmdErrText(err))
				}
			})
			t.Run("exec-tty", func(t *testing.T) {
				s, err := ks.k.StartKubectlTerminal(ks.ctx, 30, 100, "exec", "-it", name, "-c", "app", "--", "sh")
				if err != nil {
					t.Fatal(err)
				}
				defer s.Kill()
				if err := s.Write("tty; stty size; echo tty-$((1+1))\r"); err != nil {
					t.Fatal(err)
				}
				if err := s.WaitOutput("tty-2", 30*time.Second); err != nil {
					t.Fatal(err)
				}
				if out := s.Output(); !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "30 100") {
					t.Errorf("exec -it: no terminal of 30x100: %q", out)
				}
				if err := s.Write("exit 5\r"); err != nil {
					t.Fatal(err)
				}
				if code, err := s.Wait(30 * time.Second); err != nil || code != 5 {
					t.Errorf("exec -it exit: %d, %v", code, err)
				}
			})
			t.Run("attach", func(t *testing.T) {
				s, err := ks.k.StartKubectlSession(ks.ctx, "attach", "-i", name, "-c", "reader")
				if err != nil {
					t.Fatal(err)
				}
				defer s.Kill()
				// attach -i connects asynchronously: repeat until a line comes back.
				deadline := time.Now().Add(30 * time.Second)
				for {
					if err := s.Write("ping\n"); err != nil {
						t.Fatalf("write to attach: %v; stderr %q", err, s.Stderr())
					}
					if s.WaitOutput("attached: ping", 2*time.Second) == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("attach -i: no echo; stdout %q stderr %q", s.Output(), s.Stderr())
					}
				}
			})
			t.Run("port-forward", func(t *testing.T) {
				s, err := ks.k.StartKubectlSession(ks.ctx, "port-forward", "pod/"+name, ":8080")
				if err != nil {
					t.Fatal(err)
				}
				defer s.Kill()
				if err := s.WaitOutput("Forwarding from 127.0.0.1:", 30*time.Second); err != nil {
					t.Fatal(err)
				}
				m := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`).FindStringSubmatch(s.Output())
				if m == nil {
					t.Fatalf("port-forward output: %q", s.Output())
				}
				body, err := harness.HTTPGet(ks.ctx, "http://127.0.0.1:"+m[1]+"/", 30*time.Second)
				if err != nil || strings.TrimSpace(body) != "served by "+name {
					t.Errorf("GET through port-forward: %q, %v; kubectl: %q", body, err, s.Stderr())
				}
			})
		})
	})

	t.Run("probes", func(t *testing.T) {
		// Exec readiness, HTTP liveness, TCP readiness on a second
		// server; removing the liveness file makes the kubelet restart the
		// container, inside the same VM for contrast-cc.
		probed := func(name, rc string) string {
			return podSpec(name, rc, busybox("app",
				"mkdir -p /tmp/www; echo ok >/tmp/www/alive; httpd -p 8080 -h /tmp/www; httpd -p 9090 -h /tmp/www; touch /tmp/ready; exec sleep 3600",
				"readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}",
				"livenessProbe: {httpGet: {path: /alive, port: 8080}, periodSeconds: 1, failureThreshold: 1}",
			)+busybox("tcp", "exec httpd -f -p 9091 -h /tmp",
				"readinessProbe: {tcpSocket: {port: 9091}, periodSeconds: 1}"))
		}
		sideBySide(t, "probes", probed, func(t *testing.T, name, rc string) {
			vms := ks.vmPIDs(t)
			ks.kubectl(t, "exec", name, "-c", "app", "--", "rm", "/tmp/www/alive")
			ks.wait(t, "pod/"+name, "jsonpath={.status.containerStatuses[0].restartCount}=1", 2*time.Minute)
			ks.wait(t, "pod/"+name, "condition=Ready", 2*time.Minute)
			if out := ks.kubectl(t, "get", "events", "--field-selector", "involvedObject.name="+name+",reason=Unhealthy", "-o", "name"); out == "" {
				t.Errorf("no Unhealthy event for the failed liveness probe")
			}
			if now := ks.vmPIDs(t); !equalInts(now, vms) {
				t.Errorf("VM monitors %v before the restart, %v after: want the same VM", vms, now)
			}
		})
	})

	t.Run("restart-policy", func(t *testing.T) {
		for _, rc := range kubeHandlers {
			ks.apply(t, strings.Replace(podSpec("onfailure-"+rc, rc, busybox("app", "echo run; exit 1")), "  containers:", "  restartPolicy: OnFailure\n  containers:", 1))
			ks.apply(t, strings.Replace(podSpec("never-"+rc, rc, busybox("app", "exit 1")), "  containers:", "  restartPolicy: Never\n  containers:", 1))
			ks.apply(t, strings.Replace(podSpec("done-"+rc, rc, busybox("app", "exit 0")), "  containers:", "  restartPolicy: OnFailure\n  containers:", 1))
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				ks.wait(t, "pod/onfailure-"+rc, "jsonpath={.status.containerStatuses[0].restartCount}=2", 3*time.Minute)
				ks.wait(t, "pod/never-"+rc, "jsonpath={.status.phase}=Failed", 3*time.Minute)
				ks.wait(t, "pod/done-"+rc, "jsonpath={.status.phase}=Succeeded", 3*time.Minute)
				if n := ks.kubectl(t, "get", "pod", "never-"+rc, "-o", "jsonpath={.status.containerStatuses[0].restartCount}"); n != "0" {
					t.Errorf("restartPolicy Never: restarted %s times", n)
				}
				if code := ks.kubectl(t, "get", "pod", "never-"+rc, "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"); code != "1" {
					t.Errorf("restartPolicy Never: exit code %q, want 1", code)
				}
			})
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "pod", "onfailure-"+rc, "never-"+rc, "done-"+rc, "--wait=true", "--timeout=2m")
		}
	})

	t.Run("termination-message", func(t *testing.T) {
		for _, rc := range kubeHandlers {
			never := "  restartPolicy: Never\n  containers:"
			ks.apply(t, strings.Replace(podSpec("fallback-"+rc, rc, busybox("app", "echo some output; echo last words; exit 2",
				"terminationMessagePolicy: FallbackToLogsOnError")), "  containers:", never, 1))
			ks.apply(t, strings.Replace(podSpec("msgfile-"+rc, rc, busybox("app", "echo written to the file >/dev/termination-log; exit 0")), "  containers:", never, 1))
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				ks.wait(t, "pod/fallback-"+rc, "jsonpath={.status.phase}=Failed", 3*time.Minute)
				msg := ks.kubectl(t, "get", "pod", "fallback-"+rc, "-o", "jsonpath={.status.containerStatuses[0].state.terminated.message}")
				if !strings.Contains(msg, "last words") {
					t.Errorf("FallbackToLogsOnError: message %q, want the log's tail", msg)
				}
				ks.wait(t, "pod/msgfile-"+rc, "jsonpath={.status.phase}=Succeeded", 3*time.Minute)
				msg = ks.kubectl(t, "get", "pod", "msgfile-"+rc, "-o", "jsonpath={.status.containerStatuses[0].state.terminated.message}")
				if strings.TrimSpace(msg) != "written to the file" {
					t.Errorf("terminationMessagePath: message %q, want what the container wrote to /dev/termination-log", msg)
				}
			})
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "pod", "fallback-"+rc, "msgfile-"+rc, "--wait=true", "--timeout=2m")
		}
	})

	t.Run("graceful-deletion", func(t *testing.T) {
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				// SIGTERM reaches the container, which ends in its own time.
				name := "graceful-" + rc
				ks.apply(t, podSpec(name, rc, busybox("app", "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.2; done")))
				ks.wait(t, "pod/"+name, "condition=Ready", 3*time.Minute)
				s, err := ks.k.StartKubectlSession(ks.ctx, "logs", "-f", name)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Kill()
				if err := s.WaitOutput("started", 30*time.Second); err != nil {
					t.Fatal(err)
				}
				ks.kubectl(t, "delete", "pod", name, "--wait=true", "--timeout=2m")
				if err := s.WaitOutput("got TERM", 30*time.Second); err != nil {
					t.Error(err)
				}
				// A container that ignores SIGTERM is killed after the grace period.
				name = "stubborn-" + rc
				ks.apply(t, strings.Replace(podSpec(name, rc, busybox("app", "trap '' TERM; while true; do sleep 0.2; done")),
					"terminationGracePeriodSeconds: 5", "terminationGracePeriodSeconds: 2", 1))
				ks.wait(t, "pod/"+name, "condition=Ready", 3*time.Minute)
				ks.kubectl(t, "delete", "pod", name, "--wait=true", "--timeout=2m")
				ks.expectRuntimePodGone(t, name)
				// --force: the API object goes at once; the runtime follows.
				name = "forced-" + rc
				ks.apply(t, podSpec(name, rc, busybox("app", "trap '' TERM; while true; do sleep 0.2; done")))
				ks.wait(t, "pod/"+name, "condition=Ready", 3*time.Minute)
				ks.kubectl(t, "delete", "pod", name, "--force", "--grace-period=0")
				ks.expectRuntimePodGone(t, name)
			})
		}
	})
}

// lastTickIn is the highest "tick N" in a log.
func lastTickIn(log string) int {
	n := -1
	for _, m := range regexp.MustCompile(`tick (\d+)`).FindAllStringSubmatch(log, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	return n
}

// exitCode is the exit code of a failed kubectl call (0 for success, -1
// when it did not run).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ce *harness.CmdError
	if errors.As(err, &ce) {
		return ce.ExitCode
	}
	return -1
}

// vmPIDs lists the PIDs of the instance's VM monitors.
func (ks *kubeSuite) vmPIDs(t testing.TB) []int {
	t.Helper()
	ps, err := ks.c.InstanceProcesses()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range ps {
		if strings.Contains(p.Cmdline, "qemu-system") {
			pids = append(pids, p.PID)
		}
	}
	return pids
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// expectRuntimePodGone waits until containerd holds no ready sandbox of
// the pod named name (the kubelet stops it once the containers are gone;
// it removes stopped sandboxes later, in its garbage collection) and no VM
// runs in the instance (the callers run nothing else at that moment).
func (ks *kubeSuite) expectRuntimePodGone(t testing.TB, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, _, err := ks.cri.Run(ks.ctx, "pods", "--name", "^"+name+"$", "--state", "ready", "-q")
		vms := ks.vmPIDs(t)
		if err == nil && strings.TrimSpace(out) == "" && len(vms) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: ready sandboxes %q (%v), VM monitors %v", name, out, err, vms)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
