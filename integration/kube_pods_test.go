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
