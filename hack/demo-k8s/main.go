// Command demo-k8s tells `make demo`'s story through kubectl on a real
// single-node Kubernetes cluster: it starts a private containerd and a
// node on it (kine, kube-apiserver, controller manager, scheduler,
// kubelet), imports the node installer image (written here, no container
// engine), deploys deploy/contrast.yaml (the installer DaemonSet, which
// installs the runtime handler and restarts containerd, and the
// contrast-cc RuntimeClass), generates a Deployment's policy with
// `contrast policy generate`, applies it, reads its logs, execs the
// command the policy allows and one it does not, deletes it, and tears
// everything down, checking that nothing is left on the host.
//
// It expects `make build image` and hack/kubernetes.sh to have run;
// `make demo-k8s` does all of it. CONTRAST_SHIM, CONTRAST_CLI,
// CONTRAST_IMAGE, CONTRAST_NODE_INSTALLER and CONTRAST_KUBERNETES override
// the defaults.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/contrast-vm/contrast/deploy"
	"github.com/contrast-vm/contrast/integration/harness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %v\n", err)
		os.Exit(1)
	}
}

// step prints a step's title, runs it, and prints its output and duration.
func step(title string, f func() (string, error)) error {
	fmt.Printf("\033[1m==> %s\033[0m\n", title)
	begin := time.Now()
	out, err := f()
	took := time.Since(begin).Round(time.Millisecond)
	if s := strings.TrimRight(out, "\n"); s != "" {
		for _, l := range strings.Split(s, "\n") {
			fmt.Printf("    %s\n", l)
		}
	}
	if err != nil {
		fmt.Printf("    failed after %s\n", took)
		return fmt.Errorf("%s: %w", title, err)
	}
	fmt.Printf("    \033[2m%s\033[0m\n", took)
	return nil
}

// deployment is the application: its exec liveness probe is the one
// command the generated policy lets the host exec.
const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
  namespace: default
spec:
  replicas: 1
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      runtimeClassName: contrast-cc
      # The service-account token volume does not reach pod VMs yet (issue 17).
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 5
      containers:
      - name: hello
        image: ` + harness.BusyboxImage + `
        imagePullPolicy: Never
        command: ["sh", "-c", "echo hello from a pod VM running $(uname -r); exec sleep 3600"]
        livenessProbe:
          exec:
            command: ["cat", "/proc/version"]
`

func run(ctx context.Context) (retErr error) {
	env, tools, err := harness.DemoEnv("demo-k8s", "CONTRAST_NODE_INSTALLER", "_output/bin/contrast-node-installer-static")
	if err != nil {
		return err
	}
	kt, err := harness.FindKubeTools()
	if err != nil {
		return fmt.Errorf("%w\n(`make demo-k8s` sets it)", err)
	}
	before, err := harness.ReadHostState()
	if err != nil {
		return err
	}

	var (
		c   *harness.Containerd
		k   *harness.Kube
		sup *harness.Supervisor
	)
	defer func() {
		if c == nil {
			return
		}
		retErr = errors.Join(retErr, step("tear down the node, containerd and all they started; compare the host with before", func() (string, error) {
			var errs []error
			if k != nil {
				errs = append(errs, k.Stop(context.Background()))
			}
			if sup != nil {
				errs = append(errs, sup.Stop())
			}
			errs = append(errs, c.Stop(context.Background()))
			if err := errors.Join(errs...); err != nil {
				return "", err
			}
			after, err := harness.ReadHostState()
			if err != nil {
				return "", err
			}
			hex := strings.TrimPrefix(filepath.Base(c.Dir), "c")
			if changed := after.ChangedSince(before, hex); len(changed) > 0 {
				return strings.Join(changed, "\n"), errors.New("the host changed")
			}
			return "nothing left: no mount, link, iptables rule, sysctl change or file of the node outside its directory", nil
		}))
	}()

	kubectl := func(args ...string) (string, error) {
		out, err := k.Kubectl(ctx, args...)
		if err != nil {
			var ce *harness.CmdError
			if errors.As(err, &ce) {
				return out + ce.Stderr, err
			}
		}
		return out, err
	}
	steps := []struct {
		title string
		f     func() (string, error)
	}{
		{"start a private containerd (runc only: the installer adds contrast-cc)", func() (string, error) {
			var err error
			c, err = harness.Start(ctx, harness.Options{Tools: tools, LogLevel: "info"})
			if err != nil {
				return "", err
			}
			sup, err = c.Supervise()
			return fmt.Sprintf("pid %d, socket %s; the harness restarts it on request, as systemd would", c.PID(), c.Socket), err
		}},
		{"start a Kubernetes v1.34 node on it (kine, apiserver, controller manager, scheduler, kubelet)", func() (string, error) {
			var err error
			k, err = harness.StartKube(ctx, c, harness.KubeOptions{Tools: kt, NodeLabels: map[string]string{"contrast.io/node": "true"}})
			if err != nil {
				return "", err
			}
			return kubectl("get", "nodes", "-o", "wide")
		}},
		{"import the test images and the node installer image (written here, no container engine)", func() (string, error) {
			dir, err := os.MkdirTemp("", "contrast-demo-k8s-")
			if err != nil {
				return "", err
			}
			defer os.RemoveAll(dir)
			if err := c.ImportImages(ctx, dir); err != nil {
				return "", err
			}
			tmpl, err := os.ReadFile("deploy/runtime.toml")
			if err != nil {
				return "", err
			}
			archive := filepath.Join(dir, "installer.tar")
			if err := harness.WriteInstallerImage(archive, harness.InstallerPayload{
				Installer: os.Getenv("CONTRAST_NODE_INSTALLER"), Shim: env.Shim, ImageDir: env.ImageDir,
				RuntimeTOML: harness.TestNodeRuntimeConfig(tmpl, c.ShimState), Busybox: tools.Busybox,
			}); err != nil {
				return "", err
			}
			if _, err := c.Ctr(ctx, "images", "import", "--local", archive); err != nil {
				return "", err
			}
			return c.Ctr(ctx, "images", "ls", "-q")
		}},
		{"kubectl apply -f deploy/contrast.yaml (installer DaemonSet and RuntimeClass)", func() (string, error) {
			m, err := deploy.Manifests.ReadFile("contrast.yaml")
			if err != nil {
				return "", err
			}
			adapted, err := harness.NodeInstallerManifest(c, sup, m, nil)
			if err != nil {
				return "", err
			}
			out, err := k.Apply(ctx, string(adapted))
			if err != nil {
				return out, err
			}
			if o, err := kubectl("-n", "kube-system", "rollout", "status", "daemonset/contrast-node-installer", "--timeout=3m"); err != nil {
				return out + o, err
			}
			deadline := time.Now().Add(3 * time.Minute)
			for {
				logs, err := kubectl("-n", "kube-system", "logs", "daemonset/contrast-node-installer")
				if err == nil && strings.Contains(logs, "alias:") {
					rcs, _ := kubectl("get", "runtimeclass")
					return out + logs + fmt.Sprintf("containerd restarts: %d\n", sup.Restarts()) + rcs, nil
				}
				if time.Now().After(deadline) {
					return out + logs, errors.New("the installer did not finish")
				}
				time.Sleep(500 * time.Millisecond)
			}
		}},
		{"contrast policy generate: the Deployment's policy into its YAML", func() (string, error) {
			dir, err := os.MkdirTemp("", "contrast-demo-k8s-")
			if err != nil {
				return "", err
			}
			defer os.RemoveAll(dir)
			in, settings, out := filepath.Join(dir, "hello.yaml"), filepath.Join(dir, "settings.yaml"), filepath.Join(dir, "hello.policy.yaml")
			if err := os.WriteFile(in, []byte(deployment), 0o644); err != nil {
				return "", err
			}
			if err := os.WriteFile(settings, []byte("kubeletRootDir: "+k.KubeletRoot+"\n"), 0o644); err != nil {
				return "", err
			}
			gen := exec.CommandContext(ctx, env.CLI, "policy", "generate", "--containerd-address", c.Socket, "--namespace", "k8s.io",
				"--settings", settings, "-o", out, in)
			if msg, err := gen.CombinedOutput(); err != nil {
				return string(msg), err
			}
			b, err := os.ReadFile(out)
			if err != nil {
				return "", err
			}
			generated = string(b)
			return fmt.Sprintf("%d bytes of YAML with the policy annotation", len(b)), nil
		}},
		{"kubectl apply the Deployment; wait for its rollout", func() (string, error) {
			out, err := k.Apply(ctx, generated)
			if err != nil {
				return out, err
			}
			o, err := kubectl("rollout", "status", "deployment/hello", "--timeout=3m")
			if err != nil {
				return out + o, err
			}
			pods, err := kubectl("get", "pods", "-o", "wide")
			return out + o + pods, err
		}},
		{"kubectl logs deployment/hello", func() (string, error) {
			// The output reaches the log a moment after the pod is Ready.
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, err := kubectl("logs", "deployment/hello")
				if err == nil && strings.Contains(out, "hello from") || time.Now().After(deadline) {
					if err == nil && out == "" {
						err = errors.New("no output")
					}
					return out, err
				}
				time.Sleep(300 * time.Millisecond)
			}
		}},
		{"kubectl exec deployment/hello -- cat /proc/version (the probe's command: allowed)", func() (string, error) {
			return kubectl("exec", "deployment/hello", "--", "cat", "/proc/version")
		}},
		{"kubectl exec deployment/hello -- id (not in the policy: denied)", func() (string, error) {
			out, err := kubectl("exec", "deployment/hello", "--", "id")
			if err == nil {
				return out, errors.New("the policy let the host exec id")
			}
			return out, nil
		}},
		{"kubectl delete deployment hello; wait until its pod and VM are gone", func() (string, error) {
			out, err := kubectl("delete", "deployment", "hello", "--cascade=foreground", "--wait=true", "--timeout=2m")
			if err != nil {
				return out, err
			}
			deadline := time.Now().Add(2 * time.Minute)
			for {
				pods, _ := kubectl("get", "pods", "-l", "app=hello", "-o", "name")
				ps, err := c.InstanceProcesses()
				if err != nil {
					return out, err
				}
				vms := 0
				for _, p := range ps {
					if strings.Contains(p.Cmdline, "qemu-system") {
						vms++
					}
				}
				if strings.TrimSpace(pods) == "" && vms == 0 {
					return out + "no pod, no VM\n", nil
				}
				if time.Now().After(deadline) {
					return out + pods, fmt.Errorf("%d VMs still run", vms)
				}
				time.Sleep(500 * time.Millisecond)
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

// generated is the Deployment with its policy, from the generate step.
var generated string
