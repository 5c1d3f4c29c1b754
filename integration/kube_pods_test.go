package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

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
				out := ks.waitLogs(t, "tick 1\n", name, "-c", "app")
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
			// kubectl cp runs tar in the container through exec, both ways.
			t.Run("cp", func(t *testing.T) {
				dir := t.TempDir()
				got := filepath.Join(dir, "index.html")
				ks.kubectl(t, "cp", "-c", "app", name+":/tmp/www/index.html", got)
				if b, err := os.ReadFile(got); err != nil || string(b) != "served by "+name+"\n" {
					t.Errorf("kubectl cp from the pod: %q, %v", b, err)
				}
				upload := filepath.Join(dir, "upload.txt")
				if err := os.WriteFile(upload, []byte("uploaded to "+rc+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				ks.kubectl(t, "cp", "-c", "app", upload, name+":/tmp/upload.txt")
				if out := ks.kubectl(t, "exec", name, "-c", "app", "--", "cat", "/tmp/upload.txt"); out != "uploaded to "+rc+"\n" {
					t.Errorf("kubectl cp into the pod: the container reads %q", out)
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
			// containerd's CRI dials localhost:8080 in the sandbox's
			// network namespace; for contrast-cc the shim takes that
			// connection there and carries it to the agent, which the
			// policy lets connect to the declared port in the VM.
			t.Run("port-forward", func(t *testing.T) {
				body, err := ks.portForwardGet(t, name, 8080, "/")
				if err != nil || strings.TrimSpace(body) != "served by "+name {
					t.Errorf("GET through port-forward: %q, %v", body, err)
				}
			})
		})
	})

	// Kubelet-managed volumes: a ConfigMap, a Secret and the default
	// service-account token, read in the container and kept live.
	t.Run("volumes", func(t *testing.T) {
		objects := func(rc, greeting string, extra bool) string {
			other := ""
			if extra {
				other = "\n  other: soon gone"
			}
			return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings-%[1]s\ndata:\n  greeting: %[2]s%[3]s\n---\n"+
				"apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds-%[1]s\nstringData:\n  password: s3cret-%[1]s\n", rc, greeting, other)
		}
		mounted := func(name, rc string) string {
			spec := podSpec(name, rc, busybox("app", "exec sleep 3600",
				"volumeMounts: [{name: settings, mountPath: /etc/settings}, {name: creds, mountPath: /etc/creds}, {name: settings, mountPath: /etc/greeting.txt, subPath: greeting}]"))
			spec = strings.Replace(spec, "automountServiceAccountToken: false", "automountServiceAccountToken: true", 1)
			return spec + fmt.Sprintf("  volumes:\n  - {name: settings, configMap: {name: settings-%[1]s}}\n  - {name: creds, secret: {secretName: creds-%[1]s}}\n", rc)
		}
		for _, rc := range kubeHandlers {
			ks.apply(t, objects(rc, "hello", true))
		}
		sideBySide(t, "volumes", mounted, func(t *testing.T, name, rc string) {
			read := func(p string) string {
				return ks.kubectl(t, "exec", name, "--", "cat", p)
			}
			if got := read("/etc/settings/greeting"); got != "hello" {
				t.Errorf("ConfigMap key: %q", got)
			}
			if got := read("/etc/creds/password"); got != "s3cret-"+rc {
				t.Errorf("Secret key: %q", got)
			}
			// A subPath file is the key's content at the container's start.
			if got := read("/etc/greeting.txt"); got != "hello" {
				t.Errorf("subPath file: %q", got)
			}
			uid := ks.kubectl(t, "get", "pod", name, "-o", "jsonpath={.metadata.uid}")
			tokens, _ := filepath.Glob(filepath.Join(ks.k.KubeletRoot, "pods", uid, "volumes", "kubernetes.io~projected", "kube-api-access-*", "token"))
			if len(tokens) != 1 {
				t.Fatalf("the kubelet's token file: %v", tokens)
			}
			hostToken, err := os.ReadFile(tokens[0])
			if err != nil {
				t.Fatal(err)
			}
			if got := read("/var/run/secrets/kubernetes.io/serviceaccount/token"); got != string(hostToken) || got == "" {
				t.Errorf("the container's token (%d bytes) is not the kubelet's (%d bytes)", len(got), len(hostToken))
			}
			if got := read("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); got != "default" {
				t.Errorf("service-account namespace: %q", got)
			}

			// An update: the kubelet rewrites the volume on the host at
			// its next sync; from then the container sees it shortly. A
			// watcher in the container, started before, ends when it
			// reads the new value and the removed key is gone.
			watcher, err := ks.k.StartKubectlSession(ks.ctx, "exec", name, "--", "sh", "-c",
				"until [ \"$(cat /etc/settings/greeting)\" = bonjour ] && ! [ -e /etc/settings/other ]; do sleep 0.05; done; echo seen")
			if err != nil {
				t.Fatal(err)
			}
			defer watcher.Kill()
			time.Sleep(time.Second) // the exec is running
			ks.apply(t, objects(rc, "bonjour", false))
			hostKey := filepath.Join(ks.k.KubeletRoot, "pods", uid, "volumes", "kubernetes.io~configmap", "settings", "greeting")
			deadline := time.Now().Add(3 * time.Minute)
			for {
				if b, _ := os.ReadFile(hostKey); string(b) == "bonjour" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the kubelet did not update the ConfigMap volume on the host")
				}
				time.Sleep(20 * time.Millisecond)
			}
			onHost := time.Now()
			if err := watcher.WaitOutput("seen", 30*time.Second); err != nil {
				t.Fatalf("30 s after the kubelet's update the container has not seen it: %v", err)
			}
			t.Logf("%s: the ConfigMap update reached the container %s after the kubelet wrote it", rc, time.Since(onHost).Round(time.Millisecond))
		})
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "configmap", "settings-"+rc)
			ks.kubectl(t, "delete", "secret", "creds-"+rc)
		}
	})

	// A Deployment whose two containers share a disk emptyDir (one of them
	// through a subPath directory) and a Memory emptyDir, with a ConfigMap
	// file by subPath: the same on runc and contrast-cc.
	t.Run("deployment-volumes", func(t *testing.T) {
		deployment := func(rc string) string {
			return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: dv-%[1]s
data:
  motd: welcome
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: dv-%[1]s
spec:
  replicas: 1
  selector: {matchLabels: {app: dv-%[1]s}}
  template:
    metadata:
      labels: {app: dv-%[1]s}
    spec:
      runtimeClassName: %[1]s
      terminationGracePeriodSeconds: 5
      containers:
      - name: writer
        image: %[2]s
        imagePullPolicy: Never
        command: ["sh", "-c", "echo from-writer >/data/marker; echo in-sub >/sub/file; echo in-memory >/mem/marker; exec sleep 3600"]
        volumeMounts:
        - {name: data, mountPath: /data}
        - {name: data, mountPath: /sub, subPath: nested/dir}
        - {name: mem, mountPath: /mem}
      - name: reader
        image: %[2]s
        imagePullPolicy: Never
        command: ["sh", "-c", "exec sleep 3600"]
        volumeMounts:
        - {name: data, mountPath: /data}
        - {name: mem, mountPath: /mem}
        - {name: motd, mountPath: /etc/motd, subPath: motd}
      volumes:
      - {name: data, emptyDir: {}}
      - {name: mem, emptyDir: {medium: Memory, sizeLimit: 1Mi}}
      - {name: motd, configMap: {name: dv-%[1]s}}
`, rc, harness.BusyboxImage)
		}
		for _, rc := range kubeHandlers {
			ks.apply(t, deployment(rc))
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				ks.wait(t, "deployment/dv-"+rc, "condition=Available", 3*time.Minute)
				pod := strings.TrimPrefix(strings.TrimSpace(ks.kubectl(t, "get", "pods", "-l", "app=dv-"+rc, "-o", "name")), "pod/")
				read := func(p string) string {
					deadline := time.Now().Add(30 * time.Second)
					for {
						out, err := ks.k.Kubectl(ks.ctx, "exec", pod, "-c", "reader", "--", "cat", p)
						if err == nil || time.Now().After(deadline) {
							return strings.TrimSpace(out)
						}
						time.Sleep(300 * time.Millisecond)
					}
				}
				for p, want := range map[string]string{
					"/data/marker":          "from-writer",
					"/data/nested/dir/file": "in-sub",
					"/mem/marker":           "in-memory",
					"/etc/motd":             "welcome",
				} {
					if got := read(p); got != want {
						t.Errorf("reader's %s: %q, want %q", p, got, want)
					}
				}
				// The Memory emptyDir holds at most its sizeLimit.
				if _, err := ks.k.Kubectl(ks.ctx, "exec", pod, "-c", "writer", "--", "dd", "if=/dev/zero", "of=/mem/big", "bs=1024", "count=2048"); err == nil {
					t.Errorf("2 MiB written into a Memory emptyDir of sizeLimit 1Mi")
				}
			})
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "deployment", "dv-"+rc, "--wait=true", "--timeout=2m")
			ks.kubectl(t, "delete", "configmap", "dv-"+rc)
		}
	})

	t.Run("probes", func(t *testing.T) {
		// Exec readiness, HTTP liveness, TCP readiness on a second
		// server; killing the HTTP server makes the kubelet restart the
		// container, inside the same VM for contrast-cc.
		probed := func(name, rc string) string {
			return podSpec(name, rc, busybox("app",
				"mkdir -p /tmp/www; echo ok >/tmp/www/alive; httpd -f -p 8080 -h /tmp/www & echo $! >/tmp/httpd.pid; echo >/tmp/ready; exec sleep 3600",
				"readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}",
				"livenessProbe: {httpGet: {path: /alive, port: 8080}, periodSeconds: 1, failureThreshold: 1}",
			)+busybox("tcp", "exec httpd -f -p 9091 -h /tmp",
				"readinessProbe: {tcpSocket: {port: 9091}, periodSeconds: 1}"))
		}
		sideBySide(t, "probes", probed, func(t *testing.T, name, rc string) {
			vms := ks.vmPIDs(t)
			ks.kubectl(t, "exec", name, "-c", "app", "--", "sh", "-c", "kill $(cat /tmp/httpd.pid)")
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

	// One pod at a time (one VM at a time for contrast-cc): apply, wait
	// for cond, check, delete.
	one := func(t *testing.T, name, spec, cond string, check func(t *testing.T)) {
		t.Helper()
		ks.apply(t, spec)
		ks.wait(t, "pod/"+name, cond, 3*time.Minute)
		check(t)
		ks.kubectl(t, "delete", "pod", name, "--wait=true", "--timeout=2m")
	}
	withPolicy := func(spec, policy string) string {
		return strings.Replace(spec, "  containers:", "  restartPolicy: "+policy+"\n  containers:", 1)
	}
	status := func(t *testing.T, name, path string) string {
		return ks.kubectl(t, "get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0]."+path+"}")
	}

	t.Run("restart-policy", func(t *testing.T) {
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				name := "onfailure-" + rc
				one(t, name, withPolicy(podSpec(name, rc, busybox("app", "echo run; exit 1")), "OnFailure"),
					"jsonpath={.status.containerStatuses[0].restartCount}=2", func(t *testing.T) {})
				name = "never-" + rc
				one(t, name, withPolicy(podSpec(name, rc, busybox("app", "exit 1")), "Never"),
					"jsonpath={.status.phase}=Failed", func(t *testing.T) {
						if n := status(t, name, "restartCount"); n != "0" {
							t.Errorf("restartPolicy Never: restarted %s times", n)
						}
						if code := status(t, name, "state.terminated.exitCode"); code != "1" {
							t.Errorf("restartPolicy Never: exit code %q, want 1", code)
						}
					})
				name = "done-" + rc
				one(t, name, withPolicy(podSpec(name, rc, busybox("app", "exit 0")), "OnFailure"),
					"jsonpath={.status.phase}=Succeeded", func(t *testing.T) {
						if n := status(t, name, "restartCount"); n != "0" {
							t.Errorf("restartPolicy OnFailure, exit 0: restarted %s times", n)
						}
					})
			})
		}
	})

	t.Run("termination-message", func(t *testing.T) {
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				name := "fallback-" + rc
				one(t, name, withPolicy(podSpec(name, rc, busybox("app", "echo some output; echo last words; exit 2",
					"terminationMessagePolicy: FallbackToLogsOnError")), "Never"),
					"jsonpath={.status.phase}=Failed", func(t *testing.T) {
						if msg := status(t, name, "state.terminated.message"); !strings.Contains(msg, "last words") {
							t.Errorf("FallbackToLogsOnError: message %q, want the log's tail", msg)
						}
					})
				// In a pod VM the file lies in the guest: the agent hands it
				// back with the container's exit, as the generated policy
				// marks the termination-message mount write_back.
				name = "msgfile-" + rc
				one(t, name, withPolicy(podSpec(name, rc, busybox("app", "echo written to the file >/dev/termination-log; exit 0")), "Never"),
					"jsonpath={.status.phase}=Succeeded", func(t *testing.T) {
						if msg := status(t, name, "state.terminated.message"); strings.TrimSpace(msg) != "written to the file" {
							t.Errorf("terminationMessagePath: message %q, want what the container wrote to /dev/termination-log", msg)
						}
					})
			})
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

	t.Run("resources", func(t *testing.T) {
		// The RuntimeClass's overhead joins the pod's requests in
		// scheduling; the pod's limits size the VM on top of the
		// configured base (512 MiB, 1 vCPU), as the overhead says.
		sized := func(name, rc string) string {
			return podSpec(name, rc, busybox("app", "exec sleep 3600",
				"resources: {requests: {cpu: 500m, memory: 256Mi}, limits: {cpu: 500m, memory: 256Mi}}"))
		}
		sideBySide(t, "sized", sized, func(t *testing.T, name, rc string) {
			overhead := ks.kubectl(t, "get", "pod", name, "-o", "jsonpath={.spec.overhead}")
			// cgroup v1 on this host, v2 in the guest.
			limit := strings.TrimSpace(ks.kubectl(t, "exec", name, "--", "sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"))
			if limit != strconv.Itoa(256<<20) {
				t.Errorf("container memory limit %s, want 256 MiB", limit)
			}
			if rc == "runc" {
				if overhead != "" {
					t.Errorf("runc pod has overhead %s", overhead)
				}
				return
			}
			if overhead != `{"cpu":"1","memory":"512Mi"}` {
				t.Errorf("contrast-cc pod's overhead %s, want the RuntimeClass's", overhead)
			}
			nproc := strings.TrimSpace(ks.kubectl(t, "exec", name, "--", "nproc"))
			mem := ks.kubectl(t, "exec", name, "--", "grep", "MemTotal", "/proc/meminfo")
			var kib int
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(mem, "MemTotal:")), "%d", &kib)
			t.Logf("VM: %s vCPUs, MemTotal %d KiB", nproc, kib)
			if nproc != "2" {
				t.Errorf("VM has %s vCPUs, want 2 (1 base + 1 for the 500m limit)", nproc)
			}
			if kib > 768<<10 || kib < 640<<10 {
				t.Errorf("VM has %d KiB of memory, want about 768 MiB (512 base + 256 limit)", kib)
			}
		})
		// Pods that request all the node's CPUs but the RuntimeClass's
		// overhead (1 CPU) and a quarter: one contrast-cc pod fits, a
		// second does not for the overhead. The runc baseline: two pods
		// of a quarter of that request both fit.
		alloc := ks.kubectl(t, "get", "node", ks.k.NodeName, "-o", "jsonpath={.status.allocatable.cpu}")
		q, err := resource.ParseQuantity(alloc)
		if err != nil {
			t.Fatalf("node allocatable cpu %q: %v", alloc, err)
		}
		req := q.MilliValue() - 1250
		if req <= 0 {
			t.Fatalf("the node has %s CPUs: too few for this test", alloc)
		}
		fit := func(name, rc string, milli int64) string {
			return podSpec(name, rc, busybox("app", "exec sleep 3600", fmt.Sprintf("resources: {requests: {cpu: %dm}}", milli)))
		}
		ks.apply(t, fit("fit1-"+contrastHandler, contrastHandler, req))
		ks.apply(t, fit("fit2-"+contrastHandler, contrastHandler, req))
		ks.wait(t, "pod/fit1-"+contrastHandler, "condition=Ready", 3*time.Minute)
		msg := ks.waitEvent(t, "fit2-"+contrastHandler, "FailedScheduling", 2*time.Minute)
		if !strings.Contains(msg, "Insufficient cpu") {
			t.Errorf("second contrast-cc pod: %s, want Insufficient cpu", msg)
		}
		ks.kubectl(t, "delete", "pod", "fit1-"+contrastHandler, "fit2-"+contrastHandler, "--wait=true", "--timeout=2m")
		ks.apply(t, fit("fit1-runc", "runc", req/4+1))
		ks.apply(t, fit("fit2-runc", "runc", req/4+1))
		ks.wait(t, "pod/fit1-runc", "condition=Ready", 3*time.Minute)
		ks.wait(t, "pod/fit2-runc", "condition=Ready", 3*time.Minute)
		ks.kubectl(t, "delete", "pod", "fit1-runc", "fit2-runc", "--wait=true", "--timeout=2m")
	})

	t.Run("containerd-restart", func(t *testing.T) {
		// containerd restarts (as after a node upgrade) while pods run: the
		// pods keep running, and the kubelet carries on with them.
		for _, rc := range kubeHandlers {
			ks.apply(t, streaming("survivor-"+rc, rc))
		}
		for _, rc := range kubeHandlers {
			ks.wait(t, "pod/survivor-"+rc, "condition=Ready", 3*time.Minute)
		}
		vms := ks.vmPIDs(t)
		if err := ks.c.Restart(ks.ctx); err != nil {
			t.Fatal(err)
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				name := "survivor-" + rc
				// The kubelet's CRI connection reports the restart's dial
				// error until its gRPC backoff redials.
				deadline := time.Now().Add(3 * time.Minute)
				for {
					out, err := ks.k.Kubectl(ks.ctx, "exec", name, "-c", "app", "--", "hostname")
					if err == nil {
						if strings.TrimSpace(out) != name {
							t.Errorf("exec after the restart: %q", out)
						}
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("exec after the containerd restart: %v", cmdErrText(err))
					}
					time.Sleep(time.Second)
				}
				ks.wait(t, "pod/"+name, "condition=Ready", time.Minute)
				if n := ks.kubectl(t, "get", "pod", name, "-o", "jsonpath={.status.containerStatuses[*].restartCount}"); n != "0 0" {
					t.Errorf("restart counts %q after the containerd restart, want none", n)
				}
				logs := ks.kubectl(t, "logs", name, "-c", "app")
				before := lastTickIn(logs)
				ks.wait(t, "pod/"+name, "condition=Ready", time.Minute)
				deadline = time.Now().Add(30 * time.Second)
				for lastTickIn(ks.kubectl(t, "logs", name, "-c", "app")) <= before {
					if time.Now().After(deadline) {
						t.Fatalf("the log stopped at tick %d after the containerd restart", before)
					}
					time.Sleep(500 * time.Millisecond)
				}
			})
		}
		if now := ks.vmPIDs(t); !equalInts(now, vms) {
			t.Errorf("VM monitors %v before the containerd restart, %v after", vms, now)
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "pod", "survivor-"+rc, "--wait=true", "--timeout=2m")
		}
	})

	t.Run("job", func(t *testing.T) {
		job := func(name, rc, cmd string) string {
			return fmt.Sprintf(`apiVersion: batch/v1
kind: Job
metadata:
  name: %s
spec:
  backoffLimit: 0
  template:
    spec:
      runtimeClassName: %s
      automountServiceAccountToken: false
      restartPolicy: Never
      containers:
%s`, name, rc, indent(busybox("work", cmd), "    "))
		}
		for _, rc := range kubeHandlers {
			ks.apply(t, job("ok-"+rc, rc, "echo computed $((6*7))"))
			ks.apply(t, job("fails-"+rc, rc, "echo giving up; exit 7"))
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				ks.wait(t, "job/ok-"+rc, "condition=Complete", 3*time.Minute)
				ks.waitLogs(t, "computed 42", "job/ok-"+rc)
				ks.wait(t, "job/fails-"+rc, "condition=Failed", 3*time.Minute)
				code := ks.kubectl(t, "get", "pods", "-l", "job-name=fails-"+rc, "-o", "jsonpath={.items[0].status.containerStatuses[0].state.terminated.exitCode}")
				if code != "7" {
					t.Errorf("failed job's pod exit code %q, want 7", code)
				}
			})
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "job", "ok-"+rc, "fails-"+rc, "--cascade=foreground", "--wait=true", "--timeout=2m")
		}
	})

	t.Run("deployment", func(t *testing.T) {
		deployment := func(rc, rev string) string {
			return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-%s
spec:
  replicas: 1
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}
  selector: {matchLabels: {app: web-%s}}
  template:
    metadata: {labels: {app: web-%s}}
    spec:
      runtimeClassName: %s
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 5
      containers:
%s`, rc, rc, rc, rc, indent(busybox("web", "echo revision "+rev+"; exec sleep 3600"), "    "))
		}
		for _, rc := range kubeHandlers {
			ks.apply(t, deployment(rc, "1"))
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "rollout", "status", "deployment/web-"+rc, "--timeout=3m")
		}
		for _, rc := range kubeHandlers {
			ks.apply(t, deployment(rc, "2"))
		}
		for _, rc := range kubeHandlers {
			t.Run(rc, func(t *testing.T) {
				ks.kubectl(t, "rollout", "status", "deployment/web-"+rc, "--timeout=3m")
				// Old pods terminate after the rollout counts as done.
				pods := ks.waitPods(t, "app=web-"+rc, 1)
				ks.waitLogs(t, "revision 2", pods[0])
			})
		}
		if vms := ks.vmPIDs(t); len(vms) != 1 {
			t.Errorf("%d VMs after the rollout, want the new revision's only", len(vms))
		}
		for _, rc := range kubeHandlers {
			ks.kubectl(t, "delete", "deployment", "web-"+rc, "--cascade=foreground", "--wait=true", "--timeout=2m")
		}
		for _, rc := range kubeHandlers {
			ks.waitPods(t, "app=web-"+rc, 0)
		}
		ks.expectRuntimePodGone(t, "web-.*")
	})

	t.Run("unsupported-volume", func(t *testing.T) {
		// A host directory (hostPath, as a filesystem persistent volume)
		// cannot be shared into the pod VM: the pod fails with an event
		// naming it and saying why; on runc it runs.
		dir := t.TempDir()
		vol := func(name, rc string) string {
			return podSpec(name, rc, busybox("app", "echo ok >/scratch/f; exec sleep 3600",
				"volumeMounts: [{name: node-dir, mountPath: /scratch}]")) +
				fmt.Sprintf("  volumes: [{name: node-dir, hostPath: {path: %q, type: Directory}}]\n", dir)
		}
		ks.apply(t, vol("vol-runc", "runc"))
		ks.wait(t, "pod/vol-runc", "condition=Ready", 3*time.Minute)
		ks.apply(t, vol("vol-"+contrastHandler, contrastHandler))
		msg := ks.waitEvent(t, "vol-"+contrastHandler, "Failed", 3*time.Minute)
		t.Logf("event: %s", msg)
		if !strings.Contains(msg, dir) || !strings.Contains(msg, "not supported") || !strings.Contains(msg, "hostPath") {
			t.Errorf("the event does not name the host directory and say it is not supported, and why: %s", msg)
		}
		ks.kubectl(t, "delete", "pod", "vol-runc", "vol-"+contrastHandler, "--wait=true", "--timeout=2m")
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

// indent puts prefix before every line of s.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// waitPods waits until exactly n pods match selector, none of them being
// deleted, and returns their names.
func (ks *kubeSuite) waitPods(t testing.TB, selector string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := ks.k.Kubectl(ks.ctx, "get", "pods", "-l", selector, "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}`)
		var names []string
		deleting := false
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			if len(f) == 1 {
				names = append(names, f[0])
			} else if len(f) > 1 {
				deleting = true
			}
		}
		if err == nil && !deleting && len(names) == n {
			return names
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods %s: %q (%v), want %d not being deleted", selector, out, err, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
