package generate_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/contrast-vm/contrast/agent/guestspec"
	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
)

// The differential fuzzer: from the CreateContainer requests CRI sends for
// the containers of the realistic test pods, it mutates one field of the
// spec at a time (deletes it, replaces its value with one an attacker would
// pick, adds a field). Whenever the policy allows the mutated request and
// the agent accepts it, the spec reaching runc (after the agent's rewrite)
// must equal the unmutated one in every field that matters to isolation
// (isolationView); anything else is a hole in the rules.

// fuzzTargets are the containers the fuzzer starts from, by pod.
var fuzzTargets = [][2]string{
	{"web", "nginx"}, {"web", "shipper"}, {"debug", "shell"}, {"api", "api"},
	{"node-agent", "agent"}, {"override", "app"}, {"indexed", "worker"},
}

var (
	fuzzPodsMu sync.Mutex
	fuzzPods   = map[string]*testPod{}
)

// fuzzPod generates the policy of a test pod once and returns the pod with
// a fresh gate for t.
func fuzzPod(t *testing.T, name string) *testPod {
	fuzzPodsMu.Lock()
	defer fuzzPodsMu.Unlock()
	p, ok := fuzzPods[name]
	if !ok {
		p = newTestPod(t, name, nil)
		fuzzPods[name] = p
	}
	q := *p
	q.t = t
	q.gate = enforce.NewGate(p.gate.Engine())
	return &q
}

// Values an attacker would put in place of a string, a number or a field.
var (
	fuzzStrings = []string{
		"", "/", "..", "/proc/kcore", "/proc/nonexistent/../keys", "/proc/sys/", "proc", "rw", "ro", "rro", "rrw", "rshared", "shared",
		"suid", "exec", "dev", "nosymfollow", "idmap", "remount", "mode=1777", "size=1", "bind", "rbind", "tmpfs", "sysfs", "none",
		"CAP_SYS_ADMIN", "CAP_SETUID", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_ERRNO", "SCMP_ARCH_X86", "user", "time",
		"/bin/sh", "-c", "LD_PRELOAD=/tmp/x.so", "PATH=/tmp", "HOSTNAME=evil", "JOB_COMPLETION_INDEX=1", "setuid", "capset",
		"/var/lib/kubelet/pods/0b6f1c4e-9a27-4f3c-8a51-2d7e6c9b1f30/volumes/kubernetes.io~empty-dir/cache",
		"/proc/1/ns/pid", "/host", "/etc/shadow", "container", "sandbox", "0", "unconfined", "org.systemd.property.DeviceAllow",
	}
	fuzzNumbers = []float64{0, 1, -1, 2, 5, 101, 1000, 65534, 65536, 4294967295, -1000, -999, 1 << 40}
	fuzzFields  = map[string]string{
		"umask": `18`, "rlimits": `[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}]`, "oomScoreAdj": `-1000`,
		"scheduler": `{"policy":"SCHED_FIFO","priority":99}`, "ioPriority": `{"class":"IOPRIO_CLASS_RT","priority":0}`,
		"execCPUAffinity": `{"initial":"0"}`, "uidMappings": `[{"containerID":0,"hostID":0,"size":65536}]`,
		"gidMappings": `[{"containerID":0,"hostID":0,"size":65536}]`, "personality": `{"domain":"LINUX32"}`,
		"timeOffsets": `{"monotonic":{"secs":100}}`, "seccomp": `{"defaultAction":"SCMP_ACT_ALLOW"}`,
		"rootfsPropagation": `"rshared"`, "apparmorProfile": `"unconfined"`, "selinuxLabel": `"x"`,
		"ambient": `["CAP_SYS_ADMIN"]`, "inheritable": `["CAP_SYS_ADMIN"]`, "additionalGids": `[0]`,
		"devices": `[{"path":"/dev/sda","type":"b","major":8,"minor":0}]`, "sysctl": `{"kernel.core_pattern":"|/x"}`,
		"hooks": `{"prestart":[{"path":"/bin/sh"}]}`, "noNewPrivileges": `false`, "terminal": `true`,
		"maskedPaths": `[]`, "readonlyPaths": `[]`, "namespaces": `[{"type":"user"}]`, "memoryPolicy": `{"mode":"MPOL_BIND","nodes":"0"}`,
		"netDevices": `{"eth9":{}}`, "consoleSize": `{"height":1,"width":1}`, "readonly": `false`, "errnoRet": `0`,
	}
)

// mutate changes one node of the JSON tree v, chosen and changed by the
// bytes of r; it reports whether it changed anything.
func mutate(v any, r *fuzzBytes) (any, bool) {
	switch x := v.(type) {
	case map[string]any:
		keys := slices.Sorted(maps.Keys(x))
		if len(keys) == 0 || r.next()%8 == 0 {
			names := slices.Sorted(maps.Keys(fuzzFields))
			name := names[int(r.next())%len(names)]
			var val any
			if err := json.Unmarshal([]byte(fuzzFields[name]), &val); err != nil {
				panic(err)
			}
			x[name] = val
			return x, true
		}
		k := keys[int(r.next())%len(keys)]
		if r.next()%6 == 0 {
			delete(x, k)
			return x, true
		}
		nv, ok := mutate(x[k], r)
		x[k] = nv
		return x, ok
	case []any:
		if len(x) == 0 || r.next()%6 == 0 {
			var e any = fuzzStrings[int(r.next())%len(fuzzStrings)]
			if len(x) > 0 && r.next()%2 == 0 {
				e = clone(x[int(r.next())%len(x)])
			}
			i := 0
			if len(x) > 0 {
				i = int(r.next()) % (len(x) + 1)
			}
			return slices.Insert(x, i, e), true
		}
		i := int(r.next()) % len(x)
		if r.next()%6 == 0 {
			return slices.Delete(x, i, i+1), true
		}
		nv, ok := mutate(x[i], r)
		x[i] = nv
		return x, ok
	case string:
		switch r.next() % 4 {
		case 0:
			return x + "/", true
		case 1:
			return "/x/.." + x, true
		default:
			s := fuzzStrings[int(r.next())%len(fuzzStrings)]
			return s, s != x
		}
	case float64:
		n := fuzzNumbers[int(r.next())%len(fuzzNumbers)]
		return n, n != x
	case bool:
		return !x, true
	case nil:
		return fuzzStrings[int(r.next())%len(fuzzStrings)], true
	}
	return v, false
}

func clone(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// fuzzBytes hands out the fuzzer's bytes, zeros when they run out.
type fuzzBytes struct {
	b []byte
	i int
}

func (r *fuzzBytes) next() uint16 {
	if r.i+2 > len(r.b) {
		r.i += 2
		return 0
	}
	v := binary.LittleEndian.Uint16(r.b[r.i:])
	r.i += 2
	return v
}

// isolationView is what of a rewritten spec decides isolation, in a form
// where equal means equal for runc: the effective environment, sets as
// sorted lists, mounts with their flags as runc derives them. Host paths
// of bind mounts (the agent replaces them with its own copies), the names
// virtual file systems are mounted under, and resource
// limits (the host sizes the VM anyway) are left out.
func isolationView(s *specs.Spec) map[string]any {
	p := s.Process
	env := map[string]string{}
	for _, e := range p.Env {
		name, value, _ := strings.Cut(e, "=")
		env[name] = value
	}
	// The service-link variables are the cluster's to set (pinned by
	// pattern, each may be absent): left out.
	for name := range env {
		if strings.HasPrefix(name, "KUBERNETES_") {
			delete(env, name)
		}
	}
	rlimits := map[string][2]uint64{}
	for _, r := range p.Rlimits {
		rlimits[r.Type] = [2]uint64{r.Soft, r.Hard}
	}
	caps := map[string][]string{}
	if c := p.Capabilities; c != nil {
		// Effective and permitted are compared apart (capsWithin): the
		// policy lets the host hand out fewer, never more.
		for name, set := range map[string][]string{"b": c.Bounding, "i": c.Inheritable, "a": c.Ambient} {
			caps[name] = sortedSet(set)
		}
	}
	gids := make([]string, 0, len(p.User.AdditionalGids))
	for _, g := range p.User.AdditionalGids {
		gids = append(gids, fmt.Sprint(g))
	}
	var mounts []any
	for _, m := range s.Mounts {
		mounts = append(mounts, mountView(m))
	}
	l := s.Linux
	var devRules []specs.LinuxDeviceCgroup
	if l.Resources != nil {
		devRules = l.Resources.Devices
	}
	return map[string]any{
		"args": p.Args, "env": env, "cwd": p.Cwd, "uid": p.User.UID, "gid": p.User.GID, "gids": sortedSet(gids),
		"umask": p.User.Umask, "username": p.User.Username, "caps": caps, "nnp": p.NoNewPrivileges, "terminal": p.Terminal,
		"rlimits": rlimits, "oom": p.OOMScoreAdj, "scheduler": p.Scheduler, "ioprio": p.IOPriority, "affinity": p.ExecCPUAffinity,
		"apparmor": p.ApparmorProfile, "selinux": p.SelinuxLabel, "commandLine": p.CommandLine,
		"rootRO": s.Root.Readonly, "mounts": mounts, "hooks": s.Hooks, "hostname": s.Hostname,
		"namespaces": l.Namespaces, "uidmap": l.UIDMappings, "gidmap": l.GIDMappings, "sysctl": l.Sysctl,
		"devices": l.Devices, "devRules": devRules, "seccomp": l.Seccomp, "propagation": l.RootfsPropagation,
		"masked": sortedSet(slices.DeleteFunc(slices.Clone(l.MaskedPaths), optionalMask)), "readonly": sortedSet(l.ReadonlyPaths), "personality": l.Personality,
		"time": l.TimeOffsets, "mempolicy": l.MemoryPolicy, "netdev": l.NetDevices, "mountLabel": l.MountLabel,
	}
}

// timeOptions are the mount options that change only access-time
// bookkeeping (enforce's list).
var timeOptions = []string{
	"atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
	"ratime", "rnoatime", "rdiratime", "rnodiratime", "rrelatime", "rnorelatime", "rstrictatime", "rnostrictatime",
	"lazytime", "nolazytime", "sync", "async", "dirsync", "silent", "loud", "defaults",
}

// optionalMask reports the masked paths the rules leave to the runtime's
// version (kubelet and containerd releases differ in them): the VM is the
// pod's own, so its interrupt counts (/proc/interrupts) and power capping
// (which the guest kernel has not) tell a container nothing of another
// tenant.
func optionalMask(p string) bool {
	return p == "/proc/interrupts" || p == "/sys/devices/virtual/powercap"
}

// mountView follows runc: within ro/rw and within rro/rrw the last option
// wins, and the recursive attribute, applied after the flag, decides when
// given.
func mountView(m specs.Mount) map[string]any {
	bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
	plain := map[string]bool{}
	rec := map[string]*bool{}
	var rest []string
	pairs := map[string][2]string{"ro": {"ro", "1"}, "rw": {"ro", ""}, "nosuid": {"nosuid", "1"}, "suid": {"nosuid", ""},
		"nodev": {"nodev", "1"}, "dev": {"nodev", ""}, "noexec": {"noexec", "1"}, "exec": {"noexec", ""}}
	for _, o := range m.Options {
		if f, ok := pairs[o]; ok {
			plain[f[0]] = f[1] != ""
			continue
		}
		if f, ok := pairs[strings.TrimPrefix(o, "r")]; ok && strings.HasPrefix(o, "r") {
			v := f[1] != ""
			rec[f[0]] = &v
			continue
		}
		// Recursive or not and private or slave make no difference for
		// the agent's own files and directories bound in: they carry no
		// submounts and no mount events reach them.
		if bind && slices.Contains([]string{"bind", "rbind", "private", "rprivate", "slave", "rslave"}, o) {
			continue
		}
		// Access-time bookkeeping isolates nothing; the rules ignore it.
		if slices.Contains(timeOptions, o) {
			continue
		}
		rest = append(rest, o)
	}
	flags := map[string]bool{}
	for _, f := range []string{"ro", "nosuid", "nodev", "noexec"} {
		flags[f] = plain[f]
		if r := rec[f]; r != nil {
			flags[f] = *r
		}
	}
	// runc binds when the options say so, whatever the type: mount(2)
	// ignores the file system type of a bind.
	typ := m.Type
	if bind {
		typ = "bind"
	}
	v := map[string]any{"dest": m.Destination, "bind": bind, "type": typ, "flags": flags, "other": sortedSet(rest),
		"uidmap": m.UIDMappings, "gidmap": m.GIDMappings}
	// The source of a bind mount is a host path the agent replaces; that of
	// a virtual file system (proc, tmpfs, ...) is only a name the kernel
	// shows in /proc/mounts.
	return v
}

func sortedSet(xs []string) []string {
	out := slices.Clone(xs)
	sort.Strings(out)
	return slices.Compact(out)
}

// rewrite is the agent's rewrite of a spec, nil if the agent refuses it.
// The host sends a shared file for each bind mount of the unmutated spec
// (dests) but /dev/shm.
func rewrite(raw []byte, dests []string) *specs.Spec {
	shared := []guestspec.SharedFile{}
	for _, d := range dests {
		shared = append(shared, guestspec.SharedFile{Destination: d, Content: []byte("x"), Mode: 0o644})
	}
	res, err := guestspec.Rewrite(raw, guestspec.Input{
		ContainerID: "ctr", RootfsPath: "/run/c/rootfs", SharedDir: "/run/c/shared", CgroupParent: "/contrast", SharedFiles: shared,
	})
	if err != nil {
		return nil
	}
	return res.Spec
}

func FuzzDifferential(f *testing.F) {
	for i := range fuzzTargets {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte{1, 0, 3, 0, 7, 0, 2, 0, 9, 0})
	}
	f.Fuzz(func(t *testing.T, target uint8, b []byte) {
		tgt := fuzzTargets[int(target)%len(fuzzTargets)]
		p := fuzzPod(t, tgt[0])
		base := p.criSpec(tgt[1])
		baseRaw := mustJSON(t, base)
		req := func(raw []byte, stdio *agentapi.Stdio) *agentapi.CreateContainerRequest {
			return &agentapi.CreateContainerRequest{ContainerId: id(tgt[1]), Spec: raw, Stdio: stdio, Layers: p.layers(tgt[1])}
		}
		ctx := context.Background()
		if err := p.gate.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateContainer), req(baseRaw, p.stdio(tgt[1]))); err != nil {
			t.Fatalf("the unmutated request is denied: %v", err)
		}
		var dests []string
		for _, m := range base.Mounts {
			if m.Type == "bind" && m.Destination != "/dev/shm" {
				dests = append(dests, m.Destination)
			}
		}
		baseSpec := rewrite(baseRaw, dests)
		if baseSpec == nil {
			t.Fatal("the agent refuses the unmutated spec")
		}

		var tree any
		if err := json.Unmarshal(baseRaw, &tree); err != nil {
			t.Fatal(err)
		}
		r := &fuzzBytes{b: b}
		changed := false
		for range 1 + int(r.next()%2) {
			var ok bool
			tree, ok = mutate(tree, r)
			changed = changed || ok
		}
		raw, err := json.Marshal(tree)
		if err != nil || !changed {
			return
		}
		g := enforce.NewGate(p.gate.Engine())
		if g.Authorize(ctx, enforce.ServicePrefix+string(policy.CreateContainer), req(raw, p.stdio(tgt[1]))) != nil {
			return
		}
		got := rewrite(raw, dests)
		if got == nil {
			return // the agent refuses it
		}
		// A privileged container holds every capability there is (and the
		// VM): which the host names is its to choose, and runc ignores a
		// name it does not know.
		privileged := slices.Contains(baseSpec.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		if bc, gc := baseSpec.Process.Capabilities, got.Process.Capabilities; gc != nil && bc != nil && !privileged {
			for _, pair := range [][2][]string{{gc.Effective, bc.Effective}, {gc.Permitted, bc.Permitted}} {
				for _, c := range pair[0] {
					if !slices.Contains(pair[1], c) {
						t.Fatalf("%s/%s: the policy allows capability %s beyond the unmutated set %v: %s", tgt[0], tgt[1], c, pair[1], raw)
					}
				}
			}
		}
		want, have := isolationView(baseSpec), isolationView(got)
		// A valueFrom variable's value is the cluster's to pick when the
		// container is created (a Secret's, a pod IP): the policy pins its
		// presence, not its value. (An exec must repeat the created value;
		// FuzzDifferentialExec compares it.)
		for _, e := range p.container(tgt[1]).Env {
			if e.ValueFrom == nil {
				continue
			}
			for _, v := range []map[string]any{want, have} {
				env := v["env"].(map[string]string)
				if _, ok := env[e.Name]; ok {
					env[e.Name] = "(the cluster's)"
				}
			}
		}
		if privileged {
			// A privileged container holds the VM already: what the
			// policy leaves to the host there (which capabilities and
			// devices of all, whether /proc is masked) changes nothing.
			for _, k := range []string{"caps", "devices", "devRules", "masked", "readonly", "propagation"} {
				delete(want, k)
				delete(have, k)
			}
		}
		if !reflect.DeepEqual(want, have) {
			for k := range want {
				if !reflect.DeepEqual(want[k], have[k]) {
					t.Errorf("%s/%s: the policy allows a spec that differs in %s:\n got %s\nwant %s", tgt[0], tgt[1], k, mustJSON(t, have[k]), mustJSON(t, want[k]))
				}
			}
			t.Fatalf("mutated spec: %s", raw)
		}
	})
}

// execFuzzTargets are the execs the fuzzer starts from: pod, container and
// a command line the policy lets the host exec there (a probe's, a
// lifecycle hook's, or one the settings add).
var execFuzzTargets = []struct {
	pod, container string
	args           []string
	tty            bool
}{
	{"web", "nginx", []string{"cat", "/tmp/healthy"}, false},
	{"web", "nginx", []string{"/usr/sbin/nginx", "-s", "quit"}, false},
	{"debug", "shell", []string{"sh"}, true},
}

// processView is what of an exec'd process (after the agent's rewrite)
// decides isolation, as isolationView has it for a container; args apart.
func processView(p *specs.Process) map[string]any {
	s := &specs.Spec{Process: p, Root: &specs.Root{}, Linux: &specs.Linux{}}
	v := isolationView(s)
	for k := range v {
		switch k {
		case "args", "env", "cwd", "uid", "gid", "gids", "umask", "username", "caps", "rlimits", "oom", "scheduler",
			"ioprio", "affinity", "apparmor", "selinux", "commandLine", "terminal":
		default:
			delete(v, k)
		}
	}
	delete(v, "args")
	return v
}

// FuzzDifferentialExec mutates the ExecProcess requests CRI sends for the
// allowed execs of the test pods, after the container's own create. When
// the policy allows a mutated request and the agent accepts its process,
// the process must be the unmutated one but for its command line (one the
// policy lists), no_new_privileges (which an exec may turn on) and fewer
// effective or permitted capabilities.
func FuzzDifferentialExec(f *testing.F) {
	for i := range execFuzzTargets {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte{1, 0, 3, 0, 7, 0, 2, 0, 9, 0})
	}
	f.Fuzz(func(t *testing.T, target uint8, b []byte) {
		tgt := execFuzzTargets[int(target)%len(execFuzzTargets)]
		p := fuzzPod(t, tgt.pod)
		ctx := context.Background()
		created := func() *enforce.Gate {
			g := enforce.NewGate(p.gate.Engine())
			kind, req := create(tgt.container)(p)
			if err := g.Authorize(ctx, enforce.ServicePrefix+string(kind), req); err != nil {
				t.Fatalf("the container's create is denied: %v", err)
			}
			g.Done(enforce.ServicePrefix+string(kind), req, nil)
			return g
		}
		_, base := exec(tgt.container, tgt.args, false, tgt.tty)(p)
		baseReq := base.(*agentapi.ExecProcessRequest)
		if err := created().Authorize(ctx, enforce.ServicePrefix+string(policy.ExecProcess), baseReq); err != nil {
			t.Fatalf("the unmutated exec is denied: %v", err)
		}
		baseProc, _, err := guestspec.RewriteProcess(baseReq.Process)
		if err != nil {
			t.Fatalf("the agent refuses the unmutated process: %v", err)
		}

		var tree any
		if err := json.Unmarshal(baseReq.Process, &tree); err != nil {
			t.Fatal(err)
		}
		r := &fuzzBytes{b: b}
		changed := false
		for range 1 + int(r.next()%2) {
			var ok bool
			tree, ok = mutate(tree, r)
			changed = changed || ok
		}
		raw, err := json.Marshal(tree)
		if err != nil || !changed {
			return
		}
		req := &agentapi.ExecProcessRequest{ContainerId: baseReq.ContainerId, ExecId: baseReq.ExecId, Process: raw, Stdio: baseReq.Stdio}
		if created().Authorize(ctx, enforce.ServicePrefix+string(policy.ExecProcess), req) != nil {
			return
		}
		got, _, err := guestspec.RewriteProcess(raw)
		if err != nil {
			return // the agent refuses it
		}
		// An exec'd process may have fewer capabilities than the
		// container's, its bounding set included: that harms only itself.
		if bc, gc := baseProc.Capabilities, got.Capabilities; gc != nil && bc != nil {
			for _, pair := range [][2][]string{{gc.Effective, bc.Effective}, {gc.Permitted, bc.Permitted}, {gc.Bounding, bc.Bounding}} {
				for _, c := range pair[0] {
					if !slices.Contains(pair[1], c) {
						t.Fatalf("%s/%s: the policy allows capability %s beyond the unmutated set %v: %s", tgt.pod, tgt.container, c, pair[1], raw)
					}
				}
			}
			baseProc.Capabilities.Bounding, got.Capabilities.Bounding = nil, nil
		}
		if baseProc.NoNewPrivileges && !got.NoNewPrivileges {
			t.Fatalf("%s/%s: the policy allows an exec without no_new_privileges in a container with it: %s", tgt.pod, tgt.container, raw)
		}
		want, have := processView(baseProc), processView(got)
		if !reflect.DeepEqual(want, have) {
			for k := range want {
				if !reflect.DeepEqual(want[k], have[k]) {
					t.Errorf("%s/%s: the policy allows an exec whose process differs in %s:\n got %s\nwant %s", tgt.pod, tgt.container, k, mustJSON(t, have[k]), mustJSON(t, want[k]))
				}
			}
			t.Fatalf("mutated process: %s", raw)
		}
	})
}
