// Command demo shows a pod VM's life through CRI, step by step: it starts
// a private containerd with the contrast-cc runtime handler (default policy
// deny-all), imports a busybox image, generates the pod's policy from its
// YAML with `contrast policy generate`, and runs the pod with crictl (runp,
// create, start, logs, exec of the commands the policy lists and of one it
// does not, stop, rm, stopp, rmp), printing each step's duration and output.
// Everything it starts is torn down at the end, on error and on Ctrl-C.
//
// It expects `make build image` to have run; `make demo` does both.
// CONTRAST_SHIM, CONTRAST_CLI, CONTRAST_IMAGE and CONTRAST_TEST_IMAGE
// override the default paths under _output/ of the current directory.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

const handler = "contrast-cc"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		if ctx.Err() != nil {
			// Teardown may have had to kill what the interrupted step left.
			fmt.Fprintf(os.Stderr, "demo: interrupted\n%v\n", err)
		} else {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		}
		os.Exit(1)
	}
}

// step prints a step's title, runs it, and prints its output lines and
// duration.
func step(title string, f func() ([]string, error)) error {
	fmt.Printf("\033[1m==> %s\033[0m\n", title)
	begin := time.Now()
	lines, err := f()
	took := time.Since(begin).Round(time.Millisecond)
	for _, l := range lines {
		fmt.Printf("    %s\n", l)
	}
	if err != nil {
		fmt.Printf("    failed after %s\n", took)
		return fmt.Errorf("%s: %w", title, err)
	}
	fmt.Printf("    \033[2m%s\033[0m\n", took)
	return nil
}

func run(ctx context.Context) (retErr error) {
	// Defaults: what `make build image` produces in this checkout.
	env, tools, err := harness.DemoEnv("demo")
	if err != nil {
		return err
	}
	hostRelease, err := harness.HostKernelRelease()
	if err != nil {
		return err
	}
	guestRelease, err := harness.GuestKernelRelease(env.ImageDir)
	if err != nil {
		return err
	}

	var c *harness.Containerd
	// Teardown runs whatever happened, with a fresh context: ctx is
	// cancelled after Ctrl-C.
	defer func() {
		if c == nil {
			return
		}
		retErr = errors.Join(retErr, step("tear down containerd and all it started", func() ([]string, error) {
			return nil, c.Stop(context.Background())
		}))
	}()

	if err := step("start a private containerd with the "+handler+" runtime handler", func() ([]string, error) {
		var err error
		c, err = harness.Start(ctx, harness.Options{
			Tools: tools,
			// The figures the demo shows (boot, start breakdown, the
			// guest's exec time) are the shim's debug lines in containerd's
			// log; the shim logs at containerd's level.
			LogLevel: "debug",
			Handlers: []harness.Handler{{Name: handler, Shim: env.Shim}},
		})
		if err != nil {
			return nil, err
		}
		cfgPath, err := c.HandlerConfig(handler)
		if err != nil {
			return nil, err
		}
		cfg := harness.DefaultShimConfig(env, c.ShimState)
		cfg.LogLevel = "info"
		cfg.DefaultPolicy = "deny-all"
		if err := cfg.Write(cfgPath); err != nil {
			return nil, err
		}
		return []string{
			"instance dir   " + c.Dir,
			"containerd log " + c.Log,
			"shim           " + env.Shim,
			"runtime config " + cfgPath + " (pods without a policy are refused)",
			"guest image    " + env.ImageDir + " (kernel " + guestRelease + ")",
		}, nil
	}); err != nil {
		return err
	}
	if err := step("import the busybox and pause images (built here, reproducibly)", func() ([]string, error) {
		return []string{harness.BusyboxImage, harness.PauseImage}, c.ImportImages(ctx, filepath.Join(c.Dir, "images"))
	}); err != nil {
		return err
	}
	return demoPod(ctx, env, c, hostRelease)
}

// demoContainer is the demo pod's one container.
const demoContainer = "hello"

// demoPodYAML is the demo's pod. Its probes are the commands the policy lets
// the host exec; the demo runs them as `crictl exec`.
const demoPodYAML = `apiVersion: v1
kind: Pod
metadata:
  name: demo
  namespace: default
spec:
  # crictl has no kubelet to write a service-account token
  # (make demo-k8s shows a pod with one).
  automountServiceAccountToken: false
  containers:
  - name: ` + demoContainer + `
    image: ` + harness.BusyboxImage + `
    command:
    - sh
    - -c
    - trap 'echo "got SIGTERM, bye"; exit 0' TERM; echo "hello from $(hostname), kernel $(uname -r)";
      mkdir -p /www; echo "served by pod $(hostname) over its CNI network" > /www/index.html; httpd -p 8080 -h /www;
      sleep 100000 & wait
    livenessProbe:
      exec:
        command: ["uname", "-r"]
    readinessProbe:
      exec:
        command: ["sh", "-c", "grep -c processor /proc/cpuinfo; exit 3"]
`

func demoPod(ctx context.Context, env harness.Env, c *harness.Containerd, hostRelease string) error {
	cri := c.CRI()
	var podCfg harness.PodConfig
	var ctrCfgs []harness.ContainerConfig
	var pod *harness.Pod
	var ctr *harness.Container
	var trace harness.PodTrace
	// What the instance holds before the pod, to tell afterwards that the
	// pod left nothing (network namespace, sockets, snapshots, cgroups).
	before, err := c.Snapshot()
	if err != nil {
		return err
	}
	steps := []struct {
		title string
		f     func() ([]string, error)
	}{
		{"contrast policy generate demo.yaml (image resolved in containerd's store)", func() ([]string, error) {
			out, err := generatePolicy(ctx, env, c)
			if err != nil {
				return out, err
			}
			manifest, err := os.ReadFile(filepath.Join(c.Dir, "demo.policy.yaml"))
			if err != nil {
				return out, err
			}
			podCfg, ctrCfgs, err = harness.PodFromYAML(manifest, handler)
			if err != nil {
				return out, err
			}
			out = append(out, "image pinned: "+ctrCfgs[0].Image)
			doc, _, err := initdata.FromAnnotations(podCfg.Annotations)
			if err != nil {
				return out, err
			}
			if doc == nil {
				return out, fmt.Errorf("demo.policy.yaml carries no policy")
			}
			out = append(out, "initdata digest (HOSTDATA): "+doc.HostDataHex())
			data, err := policy.ParseData(doc.Policy())
			if err != nil {
				return out, err
			}
			for i, root := range data.Containers[demoContainer].Layers {
				out = append(out, fmt.Sprintf("layer %d pinned by its dm-verity root hash %s", i, root))
			}
			return out, nil
		}},
		{"crictl runp --runtime " + handler + " (boots the pod VM, installs the policy)", func() (_ []string, err error) {
			pod, err = cri.RunPod(ctx, podCfg)
			if err != nil {
				return nil, err
			}
			lines := []string{"pod " + pod.ID}
			if boot, err := c.PodBoot(pod.ID); err == nil {
				lines = append(lines, "VM start to agent ready: "+boot.Round(time.Millisecond).String()+" (shim log)")
			}
			if trace, err = c.TracePod(pod.ID); err == nil {
				lines = append(lines, describeProcesses(trace.Processes)...)
			}
			status, err := os.ReadFile(filepath.Join(podstate.Dir(c.ShimState, podstate.KubernetesNS, pod.ID), podstate.PolicyStatusFile))
			if err != nil {
				return lines, fmt.Errorf("policy status of the pod: %w", err)
			}
			return append(append(lines, "policy status (policy.json in the pod's state dir):"), lines2(string(status))...), nil
		}},
		{"crictl create", func() (_ []string, err error) {
			ctr, err = cri.CreateContainer(ctx, pod, ctrCfgs[0])
			if err != nil {
				return nil, err
			}
			return []string{"container " + ctr.ID}, nil
		}},
		{"crictl start", func() ([]string, error) {
			if err := cri.StartContainer(ctx, ctr.ID); err != nil {
				return nil, err
			}
			return startBreakdown(c, ctr.ID), nil
		}},
		{"crictl logs", func() ([]string, error) {
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, _, err := cri.Logs(ctx, ctr.ID)
				if err != nil || strings.TrimSpace(out) != "" || time.Now().After(deadline) {
					return lines(out), err
				}
				time.Sleep(100 * time.Millisecond)
			}
		}},
		{"crictl exec uname -r (in the pod VM) vs the host", func() ([]string, error) {
			begin := time.Now()
			r, err := cri.Exec(ctx, ctr.ID, false, "uname", "-r")
			if err != nil {
				return nil, err
			}
			took := time.Since(begin)
			out := []string{
				"in the pod: " + strings.TrimSpace(r.Stdout),
				"on the host: " + hostRelease,
			}
			if guest := c.GuestExecTimes(ctr.ID); len(guest) > 0 {
				g := guest[len(guest)-1]
				out = append(out, fmt.Sprintf("crictl exec took %s; runc exec in the guest %s (the agent's figure): the host and the protocol added %s",
					took.Round(time.Millisecond), g.Round(time.Millisecond), (took-g).Round(time.Millisecond)))
			}
			return out, nil
		}},
		{"the pod's network: its CNI address, in the VM, serves HTTP to the host", func() ([]string, error) {
			st, err := cri.InspectPod(ctx, pod.ID)
			if err != nil {
				return nil, err
			}
			url := "http://" + net.JoinHostPort(st.IP, "8080") + "/"
			body, err := harness.HTTPGet(ctx, url, 30*time.Second)
			if err != nil {
				return nil, err
			}
			return []string{"pod IP (CNI bridge " + c.Bridge + "): " + st.IP, "GET " + url + " from the host: " + strings.TrimSpace(body)}, nil
		}},
		{"crictl exec sh -c 'grep -c processor /proc/cpuinfo; exit 3'", func() ([]string, error) {
			r, err := cri.Exec(ctx, ctr.ID, false, "sh", "-c", "grep -c processor /proc/cpuinfo; exit 3")
			if err != nil {
				return nil, err
			}
			return []string{"vCPUs: " + strings.TrimSpace(r.Stdout), fmt.Sprintf("exit code: %d", r.ExitCode)}, nil
		}},
		{"crictl exec cat /etc/shadow (not in the policy: the agent denies it)", func() ([]string, error) {
			_, err := cri.Exec(ctx, ctr.ID, false, "cat", "/etc/shadow")
			if err == nil {
				return nil, errors.New("the exec was allowed")
			}
			var ce *harness.CmdError
			if errors.As(err, &ce) {
				return lines(strings.TrimSpace(ce.Stderr)), nil
			}
			return nil, err
		}},
		{"crictl stop --timeout 10", func() ([]string, error) {
			if err := cri.StopContainer(ctx, ctr.ID, 10*time.Second); err != nil {
				return nil, err
			}
			st, err := cri.InspectContainer(ctx, ctr.ID)
			if err != nil {
				return nil, err
			}
			out, _, _ := cri.Logs(ctx, ctr.ID)
			return append([]string{fmt.Sprintf("state %s, exit code %d; log now:", st.State, st.ExitCode)}, lines(out)...), nil
		}},
		{"crictl rm", func() ([]string, error) { return nil, cri.RemoveContainer(ctx, ctr.ID) }},
		{"crictl stopp (stops the pod VM)", func() ([]string, error) { return nil, cri.StopPod(ctx, pod.ID) }},
		{"crictl rmp", func() ([]string, error) { return nil, cri.RemovePod(ctx, pod.ID) }},
		{"check that nothing of the pod is left on the host", func() ([]string, error) {
			trace.IDs = append(trace.IDs, ctr.ID)
			deadline := time.Now().Add(5 * time.Second)
			for {
				l, err := c.PodLeftovers(trace)
				if err != nil {
					return nil, err
				}
				n, err := c.NewSince(before)
				if err != nil {
					return nil, err
				}
				l.Processes = append(l.Processes, n.Processes...)
				l.Mounts = append(l.Mounts, n.Mounts...)
				l.Paths = append(l.Paths, n.Paths...)
				if l.Empty() {
					return []string{"no process, mount or state directory of the pod remains"}, nil
				}
				if time.Now().After(deadline) {
					return lines(l.String()), errors.New("the pod left things behind")
				}
				time.Sleep(100 * time.Millisecond)
			}
		}},
	}
	for _, s := range steps {
		if err := step(s.title, s.f); err != nil {
			return err
		}
	}
	return nil
}

// startBreakdown is the shim's account of a container's start: the whole,
// runc's part and ours, and the steps that took longest.
func startBreakdown(c *harness.Containerd, id string) []string {
	steps, err := c.StartBreakdown(id)
	if err != nil {
		return []string{err.Error()}
	}
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	out := []string{fmt.Sprintf("create+start in the shim %s: runc %s, ours %s (transport %s)",
		ms(steps["total"]), ms(steps["runc"]), ms(steps["ours"]), ms(steps["transport"]))}
	var names []string
	for k := range steps {
		if strings.HasPrefix(k, "host.") || strings.HasPrefix(k, "guest.") {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool { return steps[names[i]] > steps[names[j]] })
	var top []string
	for _, k := range names[:min(len(names), 5)] {
		top = append(top, k+" "+ms(steps[k]))
	}
	if len(top) > 0 {
		out = append(out, "longest steps: "+strings.Join(top, ", "))
	}
	return out
}

// describeProcesses names the pod's host processes (shim, QEMU) with
// their resident memory.
func describeProcesses(ps []harness.Process) []string {
	var out []string
	for _, p := range ps {
		name := strings.Fields(p.Cmdline)[0]
		switch {
		case strings.Contains(name, "containerd-shim"):
			name = "shim"
		case strings.Contains(name, "qemu"):
			name = "QEMU"
		default:
			name = filepath.Base(name)
		}
		m, err := harness.MemoryOf(p.PID)
		if err != nil {
			continue
		}
		out = append(out, fmt.Sprintf("%-5s pid %-7d RSS %d MiB, PSS %d MiB", name, p.PID, m.RSS/1024, m.PSS/1024))
	}
	return out
}

// generatePolicy runs `contrast policy generate` on the demo pod's YAML,
// with the image resolved in the instance's image store.
func generatePolicy(ctx context.Context, env harness.Env, c *harness.Containerd) ([]string, error) {
	in := filepath.Join(c.Dir, "demo.yaml")
	if err := os.WriteFile(in, []byte(demoPodYAML), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, env.CLI, "policy", "generate", "--containerd-address", c.Socket,
		"--namespace", "k8s.io", "-o", filepath.Join(c.Dir, "demo.policy.yaml"), in)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return lines(string(out)), fmt.Errorf("contrast policy generate: %w", err)
	}
	return lines(string(out)), nil
}

// lines2 is lines with each line indented.
func lines2(s string) []string {
	ls := lines(s)
	for i := range ls {
		ls[i] = "  " + ls[i]
	}
	return ls
}

func lines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
