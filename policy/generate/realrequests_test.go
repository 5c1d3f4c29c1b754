package generate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
)

// Real requests: testdata/containerd/<version>/<pod>.yaml is a manifest
// `contrast policy generate` wrote for a pod (the image read from
// containerd's store), <pod>.spec.json the spec that containerd (2.4.2 and
// 1.7.35, through CRI from crictl with what the kubelet sends, see
// integration/harness) made for the pod's container, as `ctr containers
// info` shows it: the config.json the shim hands the agent. The policy is
// rebuilt from the manifest's data with the current rules. The harness's
// containers then asked for CRI's default PID mode, POD, where the kubelet
// sends CONTAINER unless a pod shares its process namespace: the pid
// namespace's path (the sandbox's) is taken out of the recorded specs,
// which is all that differs.
//
// plain: busybox as root, containerd's default capabilities, an env var;
// sec:   runAsUser/runAsGroup, supplementalGroups, capabilities drop ALL
//        add NET_BIND_SERVICE, allowPrivilegeEscalation false, a read-only
//        root, seccomp RuntimeDefault, and PATH overriding the image's ENV.

// realGate returns a gate over the policy of the manifest at path, rebuilt
// with the current rules after edit changes its data.
func realGate(t *testing.T, manifest string, edit ...func(*policy.Data)) (*enforce.Gate, string) {
	t.Helper()
	raw, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	pod := podFromYAML(t, raw)
	module, _, err := policy.DecodeAnnotation(pod.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	data, err := policy.ParseData(module)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range edit {
		f(&data)
	}
	module, err = policy.Build(data)
	if err != nil {
		t.Fatal(err)
	}
	e, err := enforce.Compile(module)
	if err != nil {
		t.Fatal(err)
	}
	return enforce.NewGate(e), pod.Name
}

// realCreate is the CreateContainer the shim sends for spec: the layers
// the policy pins (the shim's conversion of the image's layers), stdio as
// CRI opens it for a container without stdin or terminal.
func realCreate(t *testing.T, g *enforce.Gate, spec []byte, layers []string) *agentapi.CreateContainerRequest {
	t.Helper()
	req := &agentapi.CreateContainerRequest{
		ContainerId: "ctr-real",
		Spec:        spec,
		Stdio:       &agentapi.Stdio{Stdout: true, Stderr: true},
	}
	for i, h := range layers {
		req.Layers = append(req.Layers, &agentapi.Layer{Serial: fmt.Sprintf("layer-%d", i), Digest: "sha256:" + strings.Repeat("0", 63) + fmt.Sprint(i), RootHash: h, DataBlocks: 256})
	}
	return req
}

func TestRealContainerdRequests(t *testing.T) {
	type mutation struct {
		name string
		f    func(s *specs.Spec)
		want string // the denying rule; "" allowed
	}
	mutations := []mutation{
		{name: "as sent", want: ""},
		// Controls: the same requests, changed as a host could.
		{name: "oom_score_adj dropped", f: func(s *specs.Spec) { s.Process.OOMScoreAdj = nil }, want: "create_container.oom_score_adj"},
		{name: "args changed", f: func(s *specs.Spec) { s.Process.Args = append(s.Process.Args, "x") }, want: "create_container.args"},
		{name: "/dev/shm dropped", f: func(s *specs.Spec) {
			for i, m := range s.Mounts {
				if m.Destination == "/dev/shm" {
					s.Mounts = append(s.Mounts[:i], s.Mounts[i+1:]...)
					return
				}
			}
			panic("no /dev/shm")
		}, want: "create_container.mounts"},
		{name: "/dev size changed", f: func(s *specs.Spec) {
			for i, m := range s.Mounts {
				if m.Destination == "/dev" {
					s.Mounts[i].Options = []string{"nosuid", "strictatime", "mode=755", "size=1g"}
				}
			}
		}, want: "create_container.mounts"},
		{name: "capability added", f: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}, want: "create_container.capabilities"},
		{name: "a masked path dropped", f: func(s *specs.Spec) { s.Linux.MaskedPaths = s.Linux.MaskedPaths[1:] }, want: "create_container.masked_paths"},
	}
	for _, v := range []string{"2.4", "1.7"} {
		for _, pod := range []string{"plain", "sec"} {
			dir := filepath.Join("testdata", "containerd", v)
			raw, err := os.ReadFile(filepath.Join(dir, pod+".spec.json"))
			if err != nil {
				t.Fatal(err)
			}
			ms := mutations
			if pod == "sec" {
				ms = append(ms[:len(ms):len(ms)],
					mutation{name: "seccomp dropped", f: func(s *specs.Spec) { s.Linux.Seccomp = nil }, want: "create_container.seccomp"},
					mutation{name: "uid changed", f: func(s *specs.Spec) { s.Process.User.UID = 0 }, want: "create_container.user"},
					mutation{name: "no_new_privileges dropped", f: func(s *specs.Spec) { s.Process.NoNewPrivileges = false }, want: "create_container.no_new_privileges"},
					mutation{name: "root writable", f: func(s *specs.Spec) { s.Root.Readonly = false }, want: "create_container.read_only_root"},
					mutation{name: "/etc/hostname writable under a read-only root", f: func(s *specs.Spec) {
						for i, m := range s.Mounts {
							if m.Destination == "/etc/hostname" {
								s.Mounts[i].Options = []string{"rbind", "rprivate", "rw"}
							}
						}
					}, want: "create_container.mounts"},
					mutation{name: "image PATH instead of the YAML's", f: func(s *specs.Spec) {
						for i, e := range s.Process.Env {
							if strings.HasPrefix(e, "PATH=") {
								s.Process.Env[i] = "PATH=/bin"
							}
						}
					}, want: "create_container.env"},
				)
			}
			for _, m := range ms {
				t.Run(v+"/"+pod+"/"+m.name, func(t *testing.T) {
					g, hostname := realGate(t, filepath.Join(dir, pod+".yaml"))
					var s specs.Spec
					if err := json.Unmarshal(raw, &s); err != nil {
						t.Fatal(err)
					}
					if m.f != nil {
						m.f(&s)
					}
					spec := raw
					if m.f != nil {
						spec = mustJSON(t, &s)
					}
					ctx := context.Background()
					if err := g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateSandbox), &agentapi.CreateSandboxRequest{SandboxId: "sb", Hostname: hostname}); err != nil {
						t.Fatalf("CreateSandbox: %v", err)
					}
					data := policyData(t, filepath.Join(dir, pod+".yaml"))
					layers := data.Containers[s.Annotations[enforce.AnnotationContainerName]].Layers
					err := g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateContainer), realCreate(t, g, spec, layers))
					if m.want == "" {
						if err != nil {
							t.Fatalf("the real request is denied: %v", err)
						}
						return
					}
					var d *enforce.Denial
					if !errors.As(err, &d) || d.Rule != m.want {
						t.Fatalf("%v, want a denial by %s", err, m.want)
					}
				})
			}
		}
	}
}

// TestRealContainerdExec: containerd builds an exec's process from the
// container's spec (the spec's process with the exec's args and terminal),
// so an exec of the real containers passes as containerd would send it,
// and one whose environment is not the container's is denied even where
// the policy's patterns would allow the variable.
func TestRealContainerdExec(t *testing.T) {
	args := []string{"cat", "/etc/hostname"}
	for _, v := range []string{"2.4", "1.7"} {
		for _, pod := range []string{"plain", "sec"} {
			for _, tc := range []struct {
				name string
				env  func([]string) []string
				want string
			}{
				{name: "as containerd builds it"},
				{name: "a service variable the container lacks", env: func(env []string) []string {
					return append(env, "KUBERNETES_SERVICE_HOST=10.96.0.1")
				}, want: "exec_process.env_as_created"},
			} {
				t.Run(v+"/"+pod+"/"+tc.name, func(t *testing.T) {
					dir := filepath.Join("testdata", "containerd", v)
					manifest := filepath.Join(dir, pod+".yaml")
					raw, err := os.ReadFile(filepath.Join(dir, pod+".spec.json"))
					if err != nil {
						t.Fatal(err)
					}
					var s specs.Spec
					if err := json.Unmarshal(raw, &s); err != nil {
						t.Fatal(err)
					}
					name := s.Annotations[enforce.AnnotationContainerName]
					g, hostname := realGate(t, manifest, func(d *policy.Data) {
						c := d.Containers[name]
						c.Exec = append(c.Exec, args)
						d.Containers[name] = c
					})
					ctx := context.Background()
					if err := g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateSandbox), &agentapi.CreateSandboxRequest{SandboxId: "sb", Hostname: hostname}); err != nil {
						t.Fatalf("CreateSandbox: %v", err)
					}
					create := realCreate(t, g, raw, policyData(t, manifest).Containers[name].Layers)
					if err := g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateContainer), create); err != nil {
						t.Fatalf("the real create is denied: %v", err)
					}
					g.Done(enforce.ServicePrefix+string(policy.CreateContainer), create, nil)

					proc := *s.Process
					proc.Args, proc.Terminal, proc.CommandLine = args, false, ""
					if tc.env != nil {
						proc.Env = tc.env(slices.Clone(proc.Env))
					}
					exec := &agentapi.ExecProcessRequest{ContainerId: create.ContainerId, ExecId: "probe", Process: mustJSON(t, &proc), Stdio: &agentapi.Stdio{Stdout: true, Stderr: true}}
					err = g.Authorize(ctx, enforce.ServicePrefix+string(policy.ExecProcess), exec)
					if tc.want == "" {
						if err != nil {
							t.Fatalf("the exec is denied: %v", err)
						}
						return
					}
					var d *enforce.Denial
					if !errors.As(err, &d) || d.Rule != tc.want {
						t.Fatalf("%v, want a denial by %s", err, tc.want)
					}
				})
			}
		}
	}
}

func policyData(t *testing.T, manifest string) policy.Data {
	t.Helper()
	raw, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	module, _, err := policy.DecodeAnnotation(podFromYAML(t, raw).Annotations)
	if err != nil {
		t.Fatal(err)
	}
	d, err := policy.ParseData(module)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRealSeccompRenderings: each release line's real RuntimeDefault filter
// passes because the policy pins that line's rendering: with only the other
// line's rendering pinned, the same request is denied.
func TestRealSeccompRenderings(t *testing.T) {
	for v, other := range map[string]string{"2.4": "containerd-1.7", "1.7": "containerd-2"} {
		for _, keep := range []string{"all", other} {
			t.Run(v+"/pinned-"+keep, func(t *testing.T) {
				dir := filepath.Join("testdata", "containerd", v)
				data := policyData(t, filepath.Join(dir, "sec.yaml"))
				c := data.Containers["app"]
				if keep != "all" {
					for h, by := range c.Seccomp.SHA256 {
						if by != keep {
							delete(c.Seccomp.SHA256, h)
						}
					}
				}
				module, err := policy.Build(data)
				if err != nil {
					t.Fatal(err)
				}
				e, err := enforce.Compile(module)
				if err != nil {
					t.Fatal(err)
				}
				spec, err := os.ReadFile(filepath.Join(dir, "sec.spec.json"))
				if err != nil {
					t.Fatal(err)
				}
				g := enforce.NewGate(e)
				err = g.Authorize(context.Background(), enforce.ServicePrefix+string(policy.CreateContainer), realCreate(t, g, spec, c.Layers))
				var d *enforce.Denial
				switch {
				case keep == "all" && err != nil:
					t.Fatalf("denied: %v", err)
				case keep != "all" && (!errors.As(err, &d) || d.Rule != "create_container.seccomp"):
					t.Fatalf("%v, want a denial by create_container.seccomp", err)
				}
			})
		}
	}
}

// TestRealContainerdWriteBack: the real requests, judged by the policy
// their manifest was generated with before write_back existed, get nothing
// back; once the policy marks the termination-message mount, that one.
func TestRealContainerdWriteBack(t *testing.T) {
	const termination = "/dev/termination-log"
	for _, v := range []string{"2.4", "1.7"} {
		dir := filepath.Join("testdata", "containerd", v)
		spec, err := os.ReadFile(filepath.Join(dir, "plain.spec.json"))
		if err != nil {
			t.Fatal(err)
		}
		var s specs.Spec
		if err := json.Unmarshal(spec, &s); err != nil {
			t.Fatal(err)
		}
		name := s.Annotations[enforce.AnnotationContainerName]
		mark := func(d *policy.Data) {
			c := d.Containers[name]
			m, ok := c.Mounts[termination]
			if !ok {
				t.Fatalf("the policy has no mount at %s", termination)
			}
			m.WriteBack = true
			c.Mounts[termination] = m
		}
		for _, tc := range []struct {
			name string
			edit []func(*policy.Data)
			want []string
		}{
			{name: "unmarked"},
			{name: "marked", edit: []func(*policy.Data){mark}, want: []string{termination}},
		} {
			t.Run(v+"/"+tc.name, func(t *testing.T) {
				manifest := filepath.Join(dir, "plain.yaml")
				g, hostname := realGate(t, manifest, tc.edit...)
				ctx := context.Background()
				if err := g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateSandbox), &agentapi.CreateSandboxRequest{SandboxId: "sb", Hostname: hostname}); err != nil {
					t.Fatalf("CreateSandbox: %v", err)
				}
				layers := policyData(t, manifest).Containers[name].Layers
				if err := g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateContainer), realCreate(t, g, spec, layers)); err != nil {
					t.Fatalf("the real request is denied: %v", err)
				}
				if got := g.WriteBack("ctr-real"); !slices.Equal(got, tc.want) {
					t.Errorf("write back %q, want %q", got, tc.want)
				}
			})
		}
	}
}
