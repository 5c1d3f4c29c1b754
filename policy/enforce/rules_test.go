package enforce

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

var (
	testEngineOnce sync.Once
	testEngineVal  *Engine
	testEngineErr  error
)

// testEngine compiles the policy for testData once for all tests.
func testEngine(t testing.TB) *Engine {
	t.Helper()
	testEngineOnce.Do(func() {
		m, err := policy.Build(testData())
		if err != nil {
			testEngineErr = err
			return
		}
		testEngineVal, testEngineErr = Compile(m)
	})
	if testEngineErr != nil {
		t.Fatal(testEngineErr)
	}
	return testEngineVal
}

func engineFor(t testing.TB, d policy.Data) *Engine {
	t.Helper()
	m, err := policy.Build(d)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// known maps the test containers' ids to their names, as the gate would.
// addCreatedEnv adds to an exec's input what the gate would: the
// environment the known container was created with (its CRI spec's).
func addCreatedEnv(t testing.TB, in map[string]any) {
	t.Helper()
	name, ok := known(in["container_id"].(string))
	if !ok || name == "ghost" {
		return
	}
	created, err := Input(policy.CreateContainer, createRequest(t, "c-"+name, criSpec(testContainerNamed(t, name)), nil), nil)
	if err != nil {
		t.Fatalf("Input of %s's create: %v", name, err)
	}
	in["container_env"] = created["process"].(map[string]any)["env"]
}

func known(id string) (string, bool) {
	name, ok := map[string]string{"c-web": "web", "c-api": "api", "c-metrics": "metrics", "c-ghost": "ghost"}[id]
	return name, ok
}

func decide(t testing.TB, e *Engine, kind policy.Kind, req proto.Message) Decision {
	t.Helper()
	in, err := Input(kind, req, known)
	if err != nil {
		t.Fatalf("Input: %v", err)
	}
	if kind == policy.ExecProcess {
		addCreatedEnv(t, in)
	}
	d, err := e.Decide(context.Background(), kind, in)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	return d
}

// checkDecision compares a decision with the wanted one: allowed, or denied
// by wantRule with a reason containing every wantReason.
func checkDecision(t *testing.T, d Decision, wantRule string, wantReason ...string) {
	t.Helper()
	if wantRule == "" {
		if !d.Allow {
			t.Fatalf("denied by %s: %s; want allowed", d.Rule, d.Reason)
		}
		return
	}
	if d.Allow {
		t.Fatalf("allowed; want denied by %s", wantRule)
	}
	if d.Rule != wantRule {
		t.Fatalf("denied by %s (%s); want rule %s", d.Rule, d.Reason, wantRule)
	}
	for _, w := range wantReason {
		if !strings.Contains(d.Reason, w) {
			t.Errorf("reason %q lacks %q", d.Reason, w)
		}
	}
}

func TestCreateContainerRules(t *testing.T) {
	e := testEngine(t)
	u32 := func(v uint32) *uint32 { return &v }
	_ = u32
	tests := []struct {
		name       string
		container  string
		mutate     func(*specs.Spec)
		stdio      *agentapi.Stdio
		wantRule   string // "" for allowed
		wantReason []string
	}{
		{name: "web as CRI writes it", container: "web"},
		{name: "api as CRI writes it", container: "api"},
		{name: "metrics as CRI writes it", container: "metrics"},
		{name: "image without docker.io/library", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31"
		}},
		{name: "image with tag and digest", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "nginx:1.27@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31"
		}},
		{name: "image with index.docker.io", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "index.docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31"
		}},
		{name: "sandbox type", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationContainerType] = "sandbox"
		}, wantRule: "create_container.type", wantReason: []string{`"sandbox"`}},
		{name: "unknown container", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationContainerName] = "miner"
		}, wantRule: "create_container.name", wantReason: []string{`"miner"`, `["api","metrics","web"]`}},
		{name: "no container name", container: "web", mutate: func(s *specs.Spec) {
			delete(s.Annotations, AnnotationContainerName)
		}, wantRule: "create_container.name", wantReason: []string{"names no container"}},
		{name: "other namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationSandboxNamespace] = "kube-system"
		}, wantRule: "create_container.namespace", wantReason: []string{`"kube-system"`, `"shop"`}},
		{name: "changed image digest", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "docker.io/library/nginx@sha256:1111111111111111111111111111111111111111111111111111111111111111"
		}, wantRule: "create_container.image", wantReason: []string{"sha256:1111", "sha256:0d17"}},
		// containerd 1.7 names the image by the tag the node stores it
		// under; the layers pin the content.
		{name: "image by a tag of its repository (containerd 1.7)", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "nginx:latest"
		}},
		{name: "image by a tag of another repository", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "docker.io/library/nginx-evil:latest"
		}, wantRule: "create_container.image", wantReason: []string{"nor a tag of its repository"}},
		{name: "image by a tag on another registry", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "evil.io/library/nginx:1.27"
		}, wantRule: "create_container.image"},
		{name: "image by tag with another digest", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "nginx:1.27@sha256:1111111111111111111111111111111111111111111111111111111111111111"
		}, wantRule: "create_container.image"},
		{name: "image from another registry", container: "web", mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationImageName] = "evil.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31"
		}, wantRule: "create_container.image"},
		{name: "changed command", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Args = []string{"sh", "-c", "evil"}
		}, wantRule: "create_container.args", wantReason: []string{`command ["sh","-c","evil"] is not the policy's ["/docker-entrypoint.sh","nginx","-g","daemon off;"]`}},
		{name: "extra argument", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Args = append(s.Process.Args, "-c", "/tmp/evil.conf")
		}, wantRule: "create_container.args"},
		{name: "LD_PRELOAD", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env = append(s.Process.Env, "LD_PRELOAD=/tmp/evil.so")
		}, wantRule: "create_container.env", wantReason: []string{`"LD_PRELOAD=/tmp/evil.so"`}},
		{name: "changed env value", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env[3] = strings.SplitN(s.Process.Env[3], "=", 2)[0] + "=tampered"
		}, wantRule: "create_container.env", wantReason: []string{"=tampered"}},
		{name: "env pattern match", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env = append(s.Process.Env, "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1")
		}},
		{name: "env pattern is anchored", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env = append(s.Process.Env, "XKUBERNETES_PORT=1")
		}, wantRule: "create_container.env"},
		{name: "hostname env outside the pattern", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env[slices.Index(s.Process.Env, "HOSTNAME="+testHostname)] = "HOSTNAME=other"
		}, wantRule: "create_container.env"},
		{name: "env entry dropped", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, "WEB_SETTING_07=") })
		}, wantRule: "create_container.env_required", wantReason: []string{"WEB_SETTING_07"}},
		{name: "cwd", container: "api", mutate: func(s *specs.Spec) {
			s.Process.Cwd = "/"
		}, wantRule: "create_container.cwd", wantReason: []string{`"/" is not the policy's "/app"`}},
		{name: "root user", container: "api", mutate: func(s *specs.Spec) {
			s.Process.User = specs.User{UID: 0, GID: 0}
		}, wantRule: "create_container.user", wantReason: []string{"user id 0", "65532"}},
		{name: "group", container: "api", mutate: func(s *specs.Spec) {
			s.Process.User.GID = 0
		}, wantRule: "create_container.user", wantReason: []string{"group id 0"}},
		{name: "supplementary root group", container: "api", mutate: func(s *specs.Spec) {
			s.Process.User.AdditionalGids = append(s.Process.User.AdditionalGids, 0)
		}, wantRule: "create_container.user", wantReason: []string{"[0,65532]"}},
		{name: "primary group dropped from the supplementary ones", container: "api", mutate: func(s *specs.Spec) {
			s.Process.User.AdditionalGids = nil
		}, wantRule: "create_container.user"},
		{name: "added capability", container: "api", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}, wantRule: "create_container.capabilities", wantReason: []string{`added ["CAP_SYS_ADMIN"]`}},
		{name: "dropped capability", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = s.Process.Capabilities.Bounding[1:]
			s.Process.Capabilities.Effective = s.Process.Capabilities.Effective[1:]
			s.Process.Capabilities.Permitted = s.Process.Capabilities.Permitted[1:]
		}, wantRule: "create_container.capabilities", wantReason: []string{`missing ["CAP_CHOWN"]`}},
		{name: "ambient capability", container: "api", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Ambient = []string{"CAP_NET_ADMIN"}
		}, wantRule: "create_container.capabilities", wantReason: []string{"ambient"}},
		{name: "fewer effective capabilities", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Effective = nil
		}},
		{name: "effective capability beyond the bounding set", container: "api", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Effective = append(s.Process.Capabilities.Effective, "CAP_SYS_ADMIN")
		}, wantRule: "create_container.capabilities", wantReason: []string{`effective capabilities ["CAP_SYS_ADMIN"]`}},
		{name: "permitted capability beyond the bounding set", container: "api", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Permitted = append(s.Process.Capabilities.Permitted, "CAP_NET_RAW", "CAP_BPF")
		}, wantRule: "create_container.capabilities", wantReason: []string{`permitted capabilities ["CAP_BPF","CAP_NET_RAW"]`}},
		{name: "inheritable capability", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Inheritable = []string{"CAP_KILL"}
		}, wantRule: "create_container.capabilities", wantReason: []string{"inheritable"}},
		{name: "ambient capabilities for a non-root user", container: "api", mutate: func(s *specs.Spec) {
			s.Process.Capabilities.Ambient = []string{"CAP_NET_BIND_SERVICE"}
		}, wantRule: "create_container.capabilities", wantReason: []string{"ambient"}},
		{name: "privileged", container: "web", mutate: privileged, wantRule: "create_container.capabilities",
			wantReason: []string{"CAP_SYS_ADMIN", "also failed: create_container.mounts", "create_container.masked_paths", "create_container.devices"}},
		{name: "new privileges", container: "web", mutate: func(s *specs.Spec) {
			s.Process.NoNewPrivileges = false
		}, wantRule: "create_container.no_new_privileges"},
		{name: "writable root", container: "api", mutate: func(s *specs.Spec) {
			s.Root.Readonly = false
		}, wantRule: "create_container.read_only_root"},
		{name: "host mount", container: "web", mutate: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
		}, wantRule: "create_container.mounts", wantReason: []string{`mount of "/" at "/host" (bind) is neither a runtime default nor in the policy`}},
		{name: "host mount over a volume", container: "web", mutate: func(s *specs.Spec) {
			s.Mounts[slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/var/cache/nginx" })].Source = "/etc"
		}, wantRule: "create_container.mounts", wantReason: []string{`source "/etc"`}},
		{name: "read-only volume made writable", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/nginx/conf.d" })
			s.Mounts[i].Options = []string{"rbind", "rprivate", "rw"}
		}, wantRule: "create_container.mounts", wantReason: []string{"writable"}},
		{name: "ro then rw", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/nginx/conf.d" })
			s.Mounts[i].Options = []string{"rbind", "ro", "rw"}
		}, wantRule: "create_container.mounts"},
		{name: "tmpfs volume typed otherwise", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/var/cache/nginx" })
			s.Mounts[i] = specs.Mount{Destination: "/var/cache/nginx", Type: "tmpfs", Source: "tmpfs"}
		}, wantRule: "create_container.mounts", wantReason: []string{`type "tmpfs"`}},
		{name: "writable sysfs", container: "web", mutate: func(s *specs.Spec) {
			s.Mounts[4].Options = []string{"nosuid", "noexec", "nodev", "rw"}
		}, wantRule: "create_container.mounts", wantReason: []string{`"/sys"`, "read-only"}},
		{name: "proc replaced by a bind", container: "web", mutate: func(s *specs.Spec) {
			s.Mounts[0] = specs.Mount{Destination: "/proc", Type: "bind", Source: "/proc", Options: []string{"rbind"}}
		}, wantRule: "create_container.mounts", wantReason: []string{`"/proc"`, `type "bind"`}},
		{name: "shm as tmpfs", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/dev/shm" })
			s.Mounts[i] = specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}}
		}},
		{name: "shm as executable tmpfs", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/dev/shm" })
			s.Mounts[i] = specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k", "exec"}}
		}, wantRule: "create_container.mounts", wantReason: []string{"noexec"}},
		{name: "proc without nosuid", container: "web", mutate: func(s *specs.Spec) { s.Mounts[0].Options = []string{"noexec", "nodev"} }, wantRule: "create_container.mounts", wantReason: []string{"nosuid"}},
		{name: "proc with nosuid undone", container: "web", mutate: func(s *specs.Spec) { s.Mounts[0].Options = append(s.Mounts[0].Options, "suid") }, wantRule: "create_container.mounts"},
		{name: "dev world-writable", container: "web", mutate: func(s *specs.Spec) { s.Mounts[1].Options[2] = "mode=1777" }, wantRule: "create_container.mounts", wantReason: []string{"mode=1777"}},
		{name: "sysfs read-only undone", container: "web", mutate: func(s *specs.Spec) { s.Mounts[4].Options = append(s.Mounts[4].Options, "rw") }, wantRule: "create_container.mounts", wantReason: []string{"writable"}},
		{name: "read-only volume made writable by rrw", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/nginx/conf.d" })
			s.Mounts[i].Options = append(s.Mounts[i].Options, "rrw")
		}, wantRule: "create_container.mounts", wantReason: []string{"writable"}},
		{name: "read-only volume: rrw before ro still writable in runc", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/nginx/conf.d" })
			s.Mounts[i].Options = []string{"rbind", "rprivate", "rrw", "ro"}
		}, wantRule: "create_container.mounts", wantReason: []string{"writable"}},
		{name: "read-only volume with rro", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/nginx/conf.d" })
			s.Mounts[i].Options = []string{"rbind", "rprivate", "ro", "rro"}
		}},
		{name: "volume with shared propagation", container: "web", mutate: func(s *specs.Spec) {
			i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/var/cache/nginx" })
			s.Mounts[i].Options = append(s.Mounts[i].Options, "rshared")
		}, wantRule: "create_container.mounts", wantReason: []string{"propagation"}},
		{name: "no mounts at all", container: "web", mutate: func(s *specs.Spec) { s.Mounts = nil }, wantRule: "create_container.mounts", wantReason: []string{"missing"}},
		{name: "read-only volume dropped", container: "web", mutate: func(s *specs.Spec) {
			s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/etc/nginx/conf.d" })
		}, wantRule: "create_container.mounts", wantReason: []string{`["/etc/nginx/conf.d"]`}},
		{name: "dev dropped", container: "web", mutate: func(s *specs.Spec) { s.Mounts = slices.Delete(s.Mounts, 1, 2) }, wantRule: "create_container.mounts", wantReason: []string{`"/dev"`}},
		{name: "shared root propagation", container: "web", mutate: func(s *specs.Spec) { s.Linux.RootfsPropagation = "rshared" }, wantRule: "create_container.rootfs_propagation"},
		{name: "user namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 101, HostID: 0, Size: 1}}
			s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 101, HostID: 0, Size: 1}}
		}, wantRule: "create_container.namespaces", wantReason: []string{"user namespace", "also failed: create_container.id_mappings"}},
		{name: "id mappings without a user namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}
		}, wantRule: "create_container.id_mappings"},
		{name: "time namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.TimeNamespace})
		}, wantRule: "create_container.namespaces", wantReason: []string{"time namespace"}},
		{name: "rlimit added", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NPROC", Soft: 1, Hard: 1}}
		}, wantRule: "create_container.rlimits"},
		{name: "OOM score below the QoS class's", container: "web", mutate: func(s *specs.Spec) { *s.Process.OOMScoreAdj = -1000 }, wantRule: "create_container.oom_score_adj"},
		{name: "no OOM score", container: "web", mutate: func(s *specs.Spec) { s.Process.OOMScoreAdj = nil }, wantRule: "create_container.oom_score_adj"},
		{name: "env: the pod's value of an image variable wins", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env = append(s.Process.Env, "WEB_SETTING_01=overridden")
		}, wantRule: "create_container.env", wantReason: []string{"WEB_SETTING_01=overridden"}},
		{name: "env: a pinned value repeated", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Env = append(s.Process.Env, s.Process.Env[3])
		}},
		{name: "no pid namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
		}, wantRule: "create_container.namespaces", wantReason: []string{"no pid namespace"}},
		{name: "no ipc namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.IPCNamespace })
		}, wantRule: "create_container.namespaces", wantReason: []string{"no ipc namespace"}},
		{name: "no mount namespace", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.MountNamespace })
		}, wantRule: "create_container.namespaces", wantReason: []string{"no mount namespace"}},
		{name: "kcore unmasked", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.MaskedPaths = slices.DeleteFunc(s.Linux.MaskedPaths, func(p string) bool { return p == "/proc/kcore" })
		}, wantRule: "create_container.masked_paths", wantReason: []string{`["/proc/kcore"]`}},
		{name: "proc/sys writable", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.ReadonlyPaths = nil
		}, wantRule: "create_container.readonly_paths", wantReason: []string{"/proc/sys"}},
		{name: "device", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232}}
		}, wantRule: "create_container.devices", wantReason: []string{`"/dev/kvm"`}},
		{name: "device cgroup allows all", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
		}, wantRule: "create_container.devices"},
		{name: "pod sysctl", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}
		}},
		{name: "sysctl not in the pod", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ip_forward": "1"}
		}, wantRule: "create_container.sysctls", wantReason: []string{"net.ipv4.ip_forward"}},
		{name: "sysctl changed", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Sysctl = map[string]string{"net.ipv4.ip_unprivileged_port_start": "1024"}
		}, wantRule: "create_container.sysctls"},
		{name: "no sysctls", container: "web", mutate: func(s *specs.Spec) {
			s.Linux.Sysctl = nil
		}},
		{name: "stdin", container: "web", stdio: &agentapi.Stdio{Stdin: true, Stdout: true, Stderr: true},
			wantRule: "create_container.stdio", wantReason: []string{"stdin"}},
		{name: "terminal", container: "web", stdio: &agentapi.Stdio{Stdout: true, Terminal: true},
			wantRule: "create_container.stdio", wantReason: []string{"terminal"}},
		{name: "terminal in the process", container: "web", mutate: func(s *specs.Spec) {
			s.Process.Terminal = true
		}, wantRule: "create_container.stdio", wantReason: []string{"terminal"}},
		{name: "no stdio", container: "web", stdio: &agentapi.Stdio{}},
		{name: "hooks, hostname and labels are the agent's to drop", container: "web", mutate: func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/nvidia-hook"}}}
			s.Hostname = "web"
			s.Process.ApparmorProfile = "cri-containerd.apparmor.d"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := criSpec(testContainerNamed(t, tt.container))
			if tt.mutate != nil {
				tt.mutate(spec)
			}
			d := decide(t, e, policy.CreateContainer, createRequest(t, "c-new", spec, tt.stdio))
			checkDecision(t, d, tt.wantRule, tt.wantReason...)
		})
	}
}

func TestCreateContainerLayers(t *testing.T) {
	web := testContainerNamed(t, "web")
	pinned := testRootHashes("web")
	tests := []struct {
		name       string
		data       func(*policy.Data) // nil: testData as it is
		request    func(*agentapi.CreateContainerRequest)
		wantRule   string
		wantReason []string
	}{
		{name: "pinned layers in order", request: func(*agentapi.CreateContainerRequest) {}},
		{name: "layers swapped", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers[0], r.Layers[1] = r.Layers[1], r.Layers[0]
		}, wantRule: "create_container.layers", wantReason: []string{`"web"`, "layer 0", pinned[1][:12], pinned[0][:12]}},
		{name: "upper layer replaced", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers[1] = testLayers("api")[1]
		}, wantRule: "create_container.layers", wantReason: []string{"layer 1 has root hash " + testRootHashes("api")[1][:12], "the policy pins " + pinned[1][:12]}},
		{name: "layer dropped", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers = r.Layers[:1]
		}, wantRule: "create_container.layers", wantReason: []string{"the policy pins 2 layers, the request has 1"}},
		{name: "layer added", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers = append(r.Layers, testLayers("api")[0])
		}, wantRule: "create_container.layers", wantReason: []string{"the policy pins 2 layers, the request has 3"}},
		{name: "unverified rootfs", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers = nil
			r.Rootfs = &agentapi.BlockDevice{Serial: "rootfs", Fstype: "ext4"}
		}, wantRule: "create_container.layers", wantReason: []string{"the host offered an unverified rootfs"}},
		{name: "no layers at all", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers = nil
		}, wantRule: "create_container.layers", wantReason: []string{"the request has 0"}},
		{name: "policy pins no layers", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Layers = nil
			d.Containers["web"] = c
		}, request: func(*agentapi.CreateContainerRequest) {}, wantRule: "create_container.layers", wantReason: []string{`pins no layers for container "web"`}},
		{name: "policy pins no layers, unverified rootfs", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Layers = nil
			d.Containers["web"] = c
		}, request: func(r *agentapi.CreateContainerRequest) {
			r.Layers = nil
			r.Rootfs = &agentapi.BlockDevice{Serial: "rootfs", Fstype: "ext4"}
		}, wantRule: "create_container.layers", wantReason: []string{"unverified rootfs"}},
		{name: "layers win over a rootfs", request: func(r *agentapi.CreateContainerRequest) {
			r.Rootfs = &agentapi.BlockDevice{Serial: "rootfs", Fstype: "ext4"}
		}},
		{name: "another image's layers fail after the image check", request: func(r *agentapi.CreateContainerRequest) {
			r.Layers = testLayers("api")
		}, wantRule: "create_container.layers", wantReason: []string{"layer 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testData()
			if tt.data != nil {
				tt.data(&d)
			}
			e := engineFor(t, d)
			req := createRequest(t, "c-new", criSpec(web), nil)
			tt.request(req)
			checkDecision(t, decide(t, e, policy.CreateContainer, req), tt.wantRule, tt.wantReason...)
		})
	}
}

// privileged turns a spec into what CRI writes for privileged: true.
func privileged(s *specs.Spec) {
	all := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"}
	s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: all, Effective: all, Permitted: all}
	s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
	s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/sda", Type: "b", Major: 8}}
	s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	for i := range s.Mounts {
		if s.Mounts[i].Destination == "/sys" || s.Mounts[i].Destination == "/sys/fs/cgroup" {
			s.Mounts[i].Options = []string{"nosuid", "noexec", "nodev", "rw"}
		}
	}
}

func TestCreateContainerPolicyVariants(t *testing.T) {
	web := testContainerNamed(t, "web")
	tests := []struct {
		name     string
		data     func(*policy.Data)
		mutate   func(*specs.Spec)
		stdio    *agentapi.Stdio
		wantRule string
	}{
		{name: "privileged container may be privileged", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Privileged = true
			c.Capabilities = []string{"CAP_CHOWN"}
			d.Containers["web"] = c
		}, mutate: privileged},
		{name: "host PID pod without pid namespace", data: func(d *policy.Data) { d.Pod.HostPID = true }, mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
		}},
		{name: "host IPC pod without ipc namespace", data: func(d *policy.Data) { d.Pod.HostIPC = true }, mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.IPCNamespace })
		}},
		{name: "any namespace", data: func(d *policy.Data) { d.Pod.Namespace = "" }, mutate: func(s *specs.Spec) {
			s.Annotations[AnnotationSandboxNamespace] = "elsewhere"
		}},
		{name: "unpinned user", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.User = nil
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) { s.Process.User = specs.User{UID: 0, GID: 0} }},
		{name: "root's groups are pinned", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.User = &policy.User{}
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) {
			s.Process.User = specs.User{AdditionalGids: []uint32{0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27}}
		}, wantRule: "create_container.user"},
		{name: "root's groups as pinned", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.User = &policy.User{AdditionalGIDs: []uint32{0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27}}
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) {
			s.Process.User = specs.User{AdditionalGids: []uint32{0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27}}
		}},
		{name: "user namespace of a hostUsers: false pod", data: withUserNamespace, mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 3 * 65536, Size: 65536}}
			s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 3 * 65536, Size: 65536}}
		}},
		{name: "user namespace mapping the VM's root", data: withUserNamespace, mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}
			s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}
		}, wantRule: "create_container.id_mappings"},
		{name: "user namespace: gids mapped elsewhere", data: withUserNamespace, mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 3 * 65536, Size: 65536}}
			s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}
		}, wantRule: "create_container.id_mappings"},
		{name: "user namespace required and missing", data: withUserNamespace, wantRule: "create_container.namespaces"},
		{name: "rlimits as pinned", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Rlimits = map[string][2]int64{"RLIMIT_NOFILE": {1024, 4096}}
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) {
			s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1, Hard: 1}, {Type: "RLIMIT_NOFILE", Soft: 1024, Hard: 4096}}
		}},
		{name: "listed supplementary groups", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.User.AdditionalGIDs = []uint32{2000}
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) { s.Process.User.AdditionalGids = []uint32{101, 2000} }},
		{name: "unmasked proc allowed", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.ProcMountUnmasked = true
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) { s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil }},
		{name: "seccomp pinned and present", data: withSeccomp, mutate: func(s *specs.Spec) { s.Linux.Seccomp = testSeccomp() }},
		{name: "seccomp pinned, the other runtime's rendering", data: withSeccomp, mutate: func(s *specs.Spec) { s.Linux.Seccomp = testSeccompOlder() }},
		{name: "seccomp pinned, the older rendering with one more syscall", data: withSeccomp, mutate: func(s *specs.Spec) {
			s.Linux.Seccomp = testSeccompOlder()
			s.Linux.Seccomp.Syscalls[0].Names = append(s.Linux.Seccomp.Syscalls[0].Names, "ptrace")
		}, wantRule: "create_container.seccomp"},
		{name: "seccomp pinned and dropped", data: withSeccomp, wantRule: "create_container.seccomp"},
		{name: "seccomp pinned, allow-all filter", data: withSeccomp, mutate: func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow}
		}, wantRule: "create_container.seccomp"},
		{name: "seccomp pinned, setuid made a no-op", data: withSeccomp, mutate: func(s *specs.Spec) {
			s.Linux.Seccomp = testSeccomp()
			s.Linux.Seccomp.Syscalls = append(s.Linux.Seccomp.Syscalls, specs.LinuxSyscall{Names: []string{"setuid", "setgid", "setgroups", "capset"}, Action: specs.ActErrno, ErrnoRet: new(uint)})
		}, wantRule: "create_container.seccomp"},
		{name: "seccomp pinned, an argument changed", data: withSeccomp, mutate: func(s *specs.Spec) {
			s.Linux.Seccomp = testSeccomp()
			s.Linux.Seccomp.Syscalls[1].Args[0].Value = 0
		}, wantRule: "create_container.seccomp"},
		{name: "seccomp pinned, an architecture dropped", data: withSeccomp, mutate: func(s *specs.Spec) {
			s.Linux.Seccomp = testSeccomp()
			s.Linux.Seccomp.Architectures = s.Linux.Seccomp.Architectures[:1]
		}, wantRule: "create_container.seccomp"},
		{name: "seccomp pinned, a flag added", data: withSeccomp, mutate: func(s *specs.Spec) {
			s.Linux.Seccomp = testSeccomp()
			s.Linux.Seccomp.Flags = []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog}
		}, wantRule: "create_container.seccomp"},
		{name: "stdin and terminal allowed", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Stdin, c.Terminal = true, true
			d.Containers["web"] = c
		}, mutate: func(s *specs.Spec) { s.Process.Terminal = true }, stdio: &agentapi.Stdio{Stdin: true, Stdout: true, Terminal: true}},
		{name: "terminal in the stdio request only", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Stdin, c.Terminal = true, true
			d.Containers["web"] = c
		}, stdio: &agentapi.Stdio{Stdin: true, Stdout: true, Terminal: true}, wantRule: "create_container.stdio"},
		// The agent discards the output: containerd always opens the streams.
		{name: "no logs", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Logs = false
			d.Containers["web"] = c
		}},
		{name: "null env and mounts deny", data: func(d *policy.Data) {
			c := d.Containers["web"]
			c.Env, c.Mounts, c.EnvPatterns = nil, nil, nil
			d.Containers["web"] = c
		}, wantRule: "create_container.env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testData()
			tt.data(&d)
			e := engineFor(t, d)
			spec := criSpec(web)
			if tt.mutate != nil {
				tt.mutate(spec)
			}
			checkDecision(t, decide(t, e, policy.CreateContainer, createRequest(t, "c-new", spec, tt.stdio)), tt.wantRule)
		})
	}
}

// testSeccomp is a small filter in containerd's style: errno by default,
// syscalls allowed by name and by argument.
func testSeccomp() *specs.LinuxSeccomp {
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActErrno,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"read", "write", "setuid", "capset"}, Action: specs.ActAllow},
			{Names: []string{"personality"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{{Index: 0, Value: 8, Op: specs.OpEqualTo}}},
		},
	}
}

func withUserNamespace(d *policy.Data) {
	c := d.Containers["web"]
	c.UserNamespace = &policy.UserNamespace{Size: 65536, HostIDMin: 65536}
	d.Containers["web"] = c
}

// withSeccomp pins two renderings of the profile, as a policy for nodes of
// both containerd release lines does: testSeccomp and testSeccompOlder.
func withSeccomp(d *policy.Data) {
	c := d.Containers["web"]
	sums := map[string]string{}
	for by, f := range map[string]*specs.LinuxSeccomp{"containerd-2": testSeccomp(), "containerd-1.7": testSeccompOlder()} {
		sum, err := policy.SeccompHash(f)
		if err != nil {
			panic(err)
		}
		sums[sum] = by
	}
	c.Seccomp = &policy.Seccomp{Profile: "RuntimeDefault", SHA256: sums}
	d.Containers["web"] = c
}

// testSeccompOlder is testSeccomp as an older runtime renders it: one
// more syscall allowed.
func testSeccompOlder() *specs.LinuxSeccomp {
	f := testSeccomp()
	f.Syscalls[0].Names = append(f.Syscalls[0].Names, "io_uring_setup")
	return f
}

func TestCreateSandboxRules(t *testing.T) {
	e := testEngine(t)
	podSysctls := map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}
	tests := []struct {
		name, hostname string
		sysctls        map[string]string
		wantRule       string
	}{
		{"plain", "web-7d9f8", podSysctls, ""},
		{"other suffix", "web-abcde", podSysctls, ""},
		{"long", "web-7d9f8x", podSysctls, "create_sandbox.hostname"},
		{"prefix", "xweb-7d9f8", podSysctls, "create_sandbox.hostname"},
		{"empty", "", podSysctls, "create_sandbox.hostname"},
		{"node", "node-1", podSysctls, "create_sandbox.hostname"},
		{"sysctls left out", "web-7d9f8", nil, "create_sandbox.sysctls"},
		{"sysctl changed", "web-7d9f8", map[string]string{"net.ipv4.ip_unprivileged_port_start": "1024"}, "create_sandbox.sysctls"},
		{"sysctl added", "web-7d9f8", map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"}, "create_sandbox.sysctls"},
		// containerd 2.x adds these to every sandbox.
		{"containerd's own", "web-7d9f8", map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}, ""},
		{"containerd's own changed", "web-7d9f8", map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 0"}, "create_sandbox.sysctls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(t, e, policy.CreateSandbox, &agentapi.CreateSandboxRequest{SandboxId: testSandboxID, Hostname: tt.hostname, Sysctls: tt.sysctls})
			checkDecision(t, d, tt.wantRule)
		})
	}
}

func TestExecProcessRules(t *testing.T) {
	e := testEngine(t)
	web, api := testContainerNamed(t, "web"), testContainerNamed(t, "api")
	tests := []struct {
		name       string
		container  string // id
		process    *specs.Process
		stdio      *agentapi.Stdio
		wantRule   string
		wantReason []string
	}{
		{name: "probe", container: "c-web", process: execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz"),
			stdio: &agentapi.Stdio{Stdout: true, Stderr: true}},
		{name: "second command", container: "c-web", process: execProcess(web, "/usr/sbin/nginx", "-s", "quit")},
		{name: "api probe", container: "c-api", process: execProcess(api, "/app/api", "healthcheck")},
		{name: "command not listed", container: "c-web", process: execProcess(web, "sh"),
			wantRule: "exec_process.args", wantReason: []string{`["sh"]`, `"web"`}},
		{name: "other container's command", container: "c-web", process: execProcess(web, "/app/api", "healthcheck"),
			wantRule: "exec_process.args"},
		{name: "unknown container id", container: "c-nope", process: execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz"),
			wantRule: "exec_process.container", wantReason: []string{`"c-nope" was not created under the policy`}},
		{name: "known id, name not in the policy", container: "c-ghost", process: execProcess(web, "curl"),
			wantRule: "exec_process.container", wantReason: []string{`"ghost"`}},
		{name: "LD_PRELOAD", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Env = append(p.Env, "LD_PRELOAD=/tmp/x.so")
			return p
		}(), wantRule: "exec_process.env", wantReason: []string{"LD_PRELOAD"}},
		{name: "env dropped", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Env = p.Env[:5]
			return p
		}(), wantRule: "exec_process.env_required"},
		{name: "as root", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.User = specs.User{}
			return p
		}(), wantRule: "exec_process.user"},
		{name: "more capabilities", container: "c-api", process: func() *specs.Process {
			p := execProcess(api, "/app/api", "healthcheck")
			p.Capabilities.Effective = append(p.Capabilities.Effective, "CAP_SYS_ADMIN")
			return p
		}(), wantRule: "exec_process.capabilities", wantReason: []string{`effective capabilities ["CAP_SYS_ADMIN"]`}},
		{name: "fewer capabilities", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Capabilities = &specs.LinuxCapabilities{}
			return p
		}()},
		{name: "ambient capabilities", container: "c-api", process: func() *specs.Process {
			p := execProcess(api, "/app/api", "healthcheck")
			p.Capabilities.Ambient = []string{"CAP_NET_BIND_SERVICE"}
			return p
		}(), wantRule: "exec_process.capabilities", wantReason: []string{"ambient"}},
		{name: "other working directory", container: "c-api", process: func() *specs.Process {
			p := execProcess(api, "/app/api", "healthcheck")
			p.Cwd = "/tmp"
			return p
		}(), wantRule: "exec_process.cwd", wantReason: []string{`"/tmp"`, `"/app"`}},
		{name: "terminal", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Terminal = true
			return p
		}(), stdio: &agentapi.Stdio{Stdout: true, Terminal: true}, wantRule: "exec_process.terminal"},
		{name: "terminal in the process only", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Terminal = true
			return p
		}(), wantRule: "exec_process.terminal"},
		{name: "rlimits", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_CORE", Soft: 1 << 40, Hard: 1 << 40}}
			return p
		}(), wantRule: "exec_process.rlimits"},
		{name: "OOM score", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			*p.OOMScoreAdj = -999
			return p
		}(), wantRule: "exec_process.oom_score_adj"},
		{name: "supplementary group added", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.User.AdditionalGids = append(p.User.AdditionalGids, 0)
			return p
		}(), wantRule: "exec_process.user"},
		{name: "env: a pinned variable overridden by a later entry", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Env = append(p.Env, "PATH=/tmp/evil")
			return p
		}(), wantRule: "exec_process.env", wantReason: []string{"PATH=/tmp/evil"}},
		// containerd builds an exec's process from the container's: the
		// variables whose values only a pattern pins (the cluster's service
		// variables, HOSTNAME of a pod named by a pattern) keep the values
		// the container was created with.
		{name: "env: a service variable the container has dropped", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Env = slices.DeleteFunc(p.Env, func(e string) bool { return strings.HasPrefix(e, "KUBERNETES_SERVICE_HOST=") })
			return p
		}(), wantRule: "exec_process.env_as_created", wantReason: []string{`["KUBERNETES_SERVICE_HOST"] are not as created`}},
		{name: "env: HOSTNAME another the pattern allows", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Env = slices.DeleteFunc(p.Env, func(e string) bool { return strings.HasPrefix(e, "HOSTNAME=") })
			p.Env = append(p.Env, "HOSTNAME=web-zzzzz")
			return p
		}(), wantRule: "exec_process.env_as_created", wantReason: []string{`["HOSTNAME"] are not as created`}},
		{name: "env: a service variable the container lacks", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.Env = append(p.Env, "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1")
			return p
		}(), wantRule: "exec_process.env_as_created", wantReason: []string{`["KUBERNETES_PORT_443_TCP_ADDR"] are not the container's`}},

		{name: "new privileges", container: "c-web", process: func() *specs.Process {
			p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
			p.NoNewPrivileges = false
			return p
		}(), wantRule: "exec_process.no_new_privileges"},
		{name: "stdin", container: "c-web", process: execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz"),
			stdio: &agentapi.Stdio{Stdin: true, Stdout: true}, wantRule: "exec_process.stdin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &agentapi.ExecProcessRequest{ContainerId: tt.container, ExecId: "exec-1", Process: mustJSON(t, tt.process), Stdio: tt.stdio}
			checkDecision(t, decide(t, e, policy.ExecProcess, req), tt.wantRule, tt.wantReason...)
		})
	}
}

// idRequest is a request of kind for container id.
func idRequest(kind policy.Kind, id string) proto.Message {
	switch kind {
	case policy.StartContainer, policy.ListProcesses, policy.PauseContainer, policy.ResumeContainer, policy.StatsContainer:
		return &agentapi.ContainerRequest{ContainerId: id}
	case policy.WaitProcess, policy.CloseStdin:
		return &agentapi.ProcessRequest{ContainerId: id, ExecId: "exec-1"}
	case policy.SignalProcess:
		return &agentapi.SignalProcessRequest{ContainerId: id, Signal: 15}
	case policy.RemoveContainer:
		return &agentapi.RemoveContainerRequest{ContainerId: id}
	case policy.ResizePty:
		return &agentapi.ResizePtyRequest{ContainerId: id, Width: 80, Height: 24}
	case policy.UpdateContainer:
		return &agentapi.UpdateContainerRequest{ContainerId: id, Resources: []byte(`{"cpu":{"shares":512}}`)}
	case policy.WaitOOM:
		return &agentapi.Empty{}
	case policy.GetReport:
		return &agentapi.GetReportRequest{ReportData: make([]byte, 64)}
	}
	return nil
}

var idKinds = []policy.Kind{
	policy.StartContainer, policy.SignalProcess, policy.WaitProcess, policy.CloseStdin, policy.ListProcesses, policy.RemoveContainer,
	policy.ResizePty, policy.PauseContainer, policy.ResumeContainer, policy.UpdateContainer, policy.StatsContainer, policy.WaitOOM,
	policy.GetReport,
}

func TestIDRequestRules(t *testing.T) {
	allowing := testEngine(t)
	d := testData()
	d.Requests = map[policy.Kind]bool{policy.PauseContainer: false}
	denying := engineFor(t, d)
	for _, kind := range idKinds {
		prefix := map[policy.Kind]string{
			policy.StartContainer: "start_container", policy.SignalProcess: "signal_process", policy.WaitProcess: "wait_process",
			policy.CloseStdin: "close_stdin", policy.ListProcesses: "list_processes", policy.RemoveContainer: "remove_container",
			policy.ResizePty: "resize_pty", policy.PauseContainer: "pause_container", policy.ResumeContainer: "resume_container",
			policy.UpdateContainer: "update_container", policy.StatsContainer: "stats_container", policy.WaitOOM: "wait_oom",
			policy.GetReport: "get_report",
		}[kind]
		t.Run(string(kind), func(t *testing.T) {
			checkDecision(t, decide(t, allowing, kind, idRequest(kind, "c-api")), "")
			checkDecision(t, decide(t, denying, kind, idRequest(kind, "c-api")), prefix+".request", string(kind))
			if kind == policy.WaitOOM || kind == policy.GetReport {
				return // they name no container
			}
			checkDecision(t, decide(t, allowing, kind, idRequest(kind, "c-unknown")), prefix+".container", `"c-unknown"`)
			checkDecision(t, decide(t, allowing, kind, idRequest(kind, "c-ghost")), prefix+".container", `"ghost"`)
			checkDecision(t, decide(t, denying, kind, idRequest(kind, "c-unknown")), prefix+".request", "also failed: "+prefix+".container")
		})
	}
}

// TestDenialListsOnlyExplainedFailures checks that a request for a container
// the policy does not name is denied for that alone: the checks against the
// container's entry cannot hold, but are not reported as failures of their own.
func TestDenialListsOnlyExplainedFailures(t *testing.T) {
	e := testEngine(t)
	spec := criSpec(testContainerNamed(t, "web"))
	spec.Annotations[AnnotationContainerName] = "miner"
	d := decide(t, e, policy.CreateContainer, createRequest(t, "c-new", spec, nil))
	checkDecision(t, d, "create_container.name")
	if strings.Contains(d.Reason, "also failed") {
		t.Fatalf("reason %q lists other failures", d.Reason)
	}
	spec.Annotations[AnnotationSandboxNamespace] = "other"
	d = decide(t, e, policy.CreateContainer, createRequest(t, "c-new", spec, nil))
	checkDecision(t, d, "create_container.name", "(also failed: create_container.namespace)")

	d = decide(t, e, policy.ExecProcess, &agentapi.ExecProcessRequest{ContainerId: "c-nope", Process: mustJSON(t, execProcess(testContainerNamed(t, "web"), "sh"))})
	checkDecision(t, d, "exec_process.container")
	if strings.Contains(d.Reason, "also failed") {
		t.Fatalf("reason %q lists other failures", d.Reason)
	}
}

// podNetwork is the ConfigureNetwork of a dual-stack pod on the bridge CNI
// plugin: eth0, a default route per family (the IPv4 one with the pod's
// address as source), the subnet on the link, and a permanent neighbour.
func podNetwork() *agentapi.ConfigureNetworkRequest {
	return &agentapi.ConfigureNetworkRequest{
		Interfaces: []*agentapi.NetworkInterface{{Name: "eth0", Mac: "0a:58:0a:58:00:05", Mtu: 1500, Addresses: []string{"10.88.0.5/16", "fd00:10:88::5/64"}}},
		Routes: []*agentapi.NetworkRoute{
			{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Source: "10.88.0.5", Device: "eth0"},
			{Destination: "10.88.0.0/16", Device: "eth0", LinkScope: true},
			{Destination: "::/0", Gateway: "fd00:10:88::1", Device: "eth0"},
		},
		Neighbors: []*agentapi.NetworkNeighbor{{Ip: "10.88.0.1", Mac: "0a:58:0a:58:00:01", Device: "eth0"}},
	}
}

func TestConfigureNetworkRules(t *testing.T) {
	e := testEngine(t)
	tests := []struct {
		name       string
		mutate     func(*agentapi.ConfigureNetworkRequest)
		wantRule   string
		wantReason []string
	}{
		{name: "dual-stack bridge network"},
		{name: "nothing to configure", mutate: func(r *agentapi.ConfigureNetworkRequest) { *r = agentapi.ConfigureNetworkRequest{} }},
		{name: "Calico's link-local gateway", mutate: func(r *agentapi.ConfigureNetworkRequest) {
			r.Routes = []*agentapi.NetworkRoute{{Destination: "169.254.1.1/32", Device: "eth0", LinkScope: true}, {Destination: "0.0.0.0/0", Gateway: "169.254.1.1", Device: "eth0"}}
			r.Neighbors = []*agentapi.NetworkNeighbor{{Ip: "169.254.1.1", Mac: "ee:ee:ee:ee:ee:ee", Device: "eth0"}}
		}},
		{name: "route to a subnet that holds loopback", mutate: func(r *agentapi.ConfigureNetworkRequest) {
			r.Routes = append(r.Routes, &agentapi.NetworkRoute{Destination: "0.0.0.0/1", Gateway: "10.88.0.1", Device: "eth0"})
		}},
		{name: "source in the other family", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Routes[2].Source = "fd00:10:88::5" }},
		{name: "second interface", mutate: func(r *agentapi.ConfigureNetworkRequest) {
			r.Interfaces = append(r.Interfaces, &agentapi.NetworkInterface{Name: "eth1", Mac: "0a:58:0a:59:00:05", Mtu: 1500})
		}, wantRule: "configure_network.interface_count", wantReason: []string{"2 interfaces", "at most 1"}},
		{name: "loopback", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Name = "lo" },
			wantRule: "configure_network.interface_name", wantReason: []string{"loopback", "also failed: configure_network.route_device, configure_network.neighbor_device"}},
		{name: "name off the pattern", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Name = "eth0x" },
			wantRule: "configure_network.interface_name", wantReason: []string{`"eth0x"`, `"eth[0-9]+"`}},
		{name: "multicast MAC", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Mac = "33:33:00:00:00:01" },
			wantRule: "configure_network.interface_mac", wantReason: []string{"33:33:00:00:00:01", "unicast"}},
		{name: "MTU below the range", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Mtu = 67 },
			wantRule: "configure_network.interface_mtu", wantReason: []string{"MTU 67", "68 to 65535"}},
		{name: "MTU above the range", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Mtu = 65536 },
			wantRule: "configure_network.interface_mtu", wantReason: []string{"MTU 65536"}},
		{name: "IPv6 unspecified address", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[1] = "::/0" },
			wantRule: "configure_network.interface_address", wantReason: []string{"::/0", "::/128"}},
		{name: "broadcast address", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[0] = "255.255.255.255/32" },
			wantRule: "configure_network.interface_address", wantReason: []string{"255.255.255.255/32"}},
		{name: "route to IPv6 multicast", mutate: func(r *agentapi.ConfigureNetworkRequest) {
			r.Routes = append(r.Routes, &agentapi.NetworkRoute{Destination: "ff02::/16", Device: "eth0", LinkScope: true})
		}, wantRule: "configure_network.route_destination", wantReason: []string{"ff02::/16", "ff00::/8"}},
		{name: "route to the unspecified host", mutate: func(r *agentapi.ConfigureNetworkRequest) {
			r.Routes = append(r.Routes, &agentapi.NetworkRoute{Destination: "0.0.0.0/32", Device: "eth0", LinkScope: true})
		}, wantRule: "configure_network.route_destination"},
		{name: "IPv6 gateway on loopback", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Routes[2].Gateway = "::1" },
			wantRule: "configure_network.route_gateway", wantReason: []string{"::1", "::1/128"}},
		{name: "route without device", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Routes[1].Device = "" },
			wantRule: "configure_network.route_device", wantReason: []string{`device ""`, `["eth0"]`}},
		{name: "source of no interface", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Source = "10.88.0.1" },
			wantRule: "configure_network.route_source", wantReason: []string{"10.88.0.1", `["10.88.0.5","fd00:10:88::5"]`}},
		{name: "neighbour on another device", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Device = "eth9" },
			wantRule: "configure_network.neighbor_device", wantReason: []string{`"eth9"`}},
		{name: "neighbour on loopback", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Ip = "127.0.0.1" },
			wantRule: "configure_network.neighbor_ip", wantReason: []string{"127.0.0.1", "127.0.0.0/8"}},
		{name: "neighbour with a multicast MAC", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Mac = "01:00:5e:7f:ff:fa" },
			wantRule: "configure_network.neighbor_mac", wantReason: []string{"01:00:5e:7f:ff:fa"}},
		{name: "neighbour with no MAC", mutate: func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Mac = "00:00:00:00:00:00" },
			wantRule: "configure_network.neighbor_mac"},
		{name: "every failure reported", mutate: func(r *agentapi.ConfigureNetworkRequest) {
			r.Interfaces[0].Mtu = 0
			r.Routes[0].Gateway = "224.0.0.1"
		}, wantRule: "configure_network.interface_mtu", wantReason: []string{"also failed: configure_network.route_gateway"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := podNetwork()
			if tt.mutate != nil {
				tt.mutate(req)
			}
			checkDecision(t, decide(t, e, policy.ConfigureNetwork, req), tt.wantRule, tt.wantReason...)
		})
	}
}

// TestConfigureNetworkData checks that the decision follows the policy's
// network section, and that a policy without one denies.
func TestConfigureNetworkData(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*policy.Network)
		wantRule   string
		wantReason []string
	}{
		{name: "not allowed", mutate: func(n *policy.Network) { n.Allow = false },
			wantRule: "configure_network.request", wantReason: []string{"does not allow"}},
		{name: "no network section", mutate: func(n *policy.Network) { *n = policy.Network{} },
			wantRule: "configure_network.request"},
		{name: "another interface pattern", mutate: func(n *policy.Network) { n.InterfacePattern = "net[0-9]" },
			wantRule: "configure_network.interface_name", wantReason: []string{`"net[0-9]"`}},
		{name: "a lower MTU ceiling", mutate: func(n *policy.Network) { n.MTUMax = 1450 },
			wantRule: "configure_network.interface_mtu", wantReason: []string{"68 to 1450"}},
		{name: "the pod subnet forbidden", mutate: func(n *policy.Network) { n.ForbiddenPrefixes = append(n.ForbiddenPrefixes, "10.0.0.0/8") },
			wantRule: "configure_network.interface_address", wantReason: []string{"10.88.0.5/16", "10.0.0.0/8"}},
		{name: "nothing forbidden", mutate: func(n *policy.Network) { n.ForbiddenPrefixes = []string{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testData()
			tt.mutate(&d.Network)
			checkDecision(t, decide(t, engineFor(t, d), policy.ConfigureNetwork, podNetwork()), tt.wantRule, tt.wantReason...)
		})
	}
	// The forbidden prefixes apply whatever else the policy allows.
	d := testData()
	d.Network.ForbiddenPrefixes = []string{}
	req := podNetwork()
	req.Interfaces[0].Addresses = append(req.Interfaces[0].Addresses, "127.0.0.2/8")
	checkDecision(t, decide(t, engineFor(t, d), policy.ConfigureNetwork, req), "")
	checkDecision(t, decide(t, testEngine(t), policy.ConfigureNetwork, req), "configure_network.interface_address")
}
