package enforce

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

func TestInputCreateContainer(t *testing.T) {
	web := testContainerNamed(t, "web")
	spec := criSpec(web)
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/data/y", Type: "", Source: "/src", Options: []string{"bind", "ro", "rw"}},
		specs.Mount{Destination: "/z", Type: "none", Source: "/src", Options: []string{"rbind", "rro"}},
		// runc applies rrw after ro: writable, whatever the order.
		specs.Mount{Destination: "/w", Type: "bind", Source: "/src", Options: []string{"rbind", "rrw", "ro", "nosuid", "rsuid"}},
	)
	// The image's and the pod's value of a name: runc keeps the last.
	spec.Process.Env = append(spec.Process.Env, "WEB_SETTING_01=from-the-pod")
	in, err := Input(policy.CreateContainer, createRequest(t, "c-1", spec, &agentapi.Stdio{Stdout: true, Terminal: true}), func(string) (string, bool) {
		t.Fatal("CreateContainer looked a name up")
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"kind":              "CreateContainer",
		"container_id":      "c-1",
		"container_name":    "web",
		"container_known":   true,
		"container_type":    "container",
		"image":             web.image,
		"sandbox_name":      "web-7d9f8",
		"sandbox_namespace": testNamespace,
		"read_only_root":    false,
		"stdio":             map[string]any{"stdin": false, "stdout": true, "stderr": false, "terminal": true},
		"seccomp":           nil,
		"devices":           []string{},
		"sysctls":           map[string]any{},
		"unverified_rootfs": false,
		"layers": []any{
			map[string]any{"digest": testLayers("web")[0].GetDigest(), "root_hash": testLayers("web")[0].GetRootHash()},
			map[string]any{"digest": testLayers("web")[1].GetDigest(), "root_hash": testLayers("web")[1].GetRootHash()},
		},
		"namespaces": map[string]any{
			"pid": "", "ipc": "/proc/4242/ns/ipc", "uts": "/proc/4242/ns/uts", "mount": "",
			"network": "/var/run/netns/cni-1b2c3d4e", "cgroup": "",
		},
	}
	for k, v := range want {
		if !reflect.DeepEqual(in[k], v) {
			t.Errorf("%s = %#v, want %#v", k, in[k], v)
		}
	}
	proc := in["process"].(map[string]any)
	if !reflect.DeepEqual(proc["args"], web.args) || proc["cwd"] != "/" || proc["no_new_privileges"] != true {
		t.Errorf("process %v", proc)
	}
	if env := proc["env"].(map[string]any); env["HOSTNAME="+testHostname] != true || len(env) != len(spec.Process.Env)-1 ||
		env["WEB_SETTING_01=from-the-pod"] != true || env["WEB_SETTING_01=value-7919-WEB"] != nil {
		t.Errorf("env %v", env)
	}
	if user := proc["user"].(map[string]any); user["uid"] != int64(101) || !reflect.DeepEqual(user["additional_gids"], []any{int64(101)}) {
		t.Errorf("user %v", user)
	}
	caps := proc["capabilities"].(map[string]any)
	if b := caps["bounding"].(map[string]any); len(b) != len(defaultCaps) || b["CAP_KILL"] != true {
		t.Errorf("bounding %v", b)
	}
	if a := caps["ambient"].(map[string]any); len(a) != 0 {
		t.Errorf("ambient %v", a)
	}
	if m := in["masked_paths"].(map[string]any); m["/proc/kcore"] != true {
		t.Errorf("masked paths: %v", m)
	}
	mounts := in["mounts"].([]any)
	last := func(i int) map[string]any { return mounts[len(mounts)-i].(map[string]any) }
	bindMount := func(dest string, ro, nosuid bool) map[string]any {
		m := map[string]any{"destination": dest, "type": "bind", "source": "/src", "read_only": ro, "nosuid": nosuid,
			"nodev": false, "noexec": false, "flags": map[string]any{}, "propagation": "", "data": []any{}, "data_set": map[string]any{}}
		if nosuid {
			m["flags"] = map[string]any{"nosuid": true}
		}
		m["runtime"] = "other"
		m["runtime_why"] = `mount of "/src" at "` + dest + `" (bind) is neither a runtime default nor in the policy`
		return m
	}
	if got, want := last(3), bindMount("/data/y", false, false); !reflect.DeepEqual(got, want) {
		t.Errorf("mount %v, want %v", got, want)
	}
	if got, want := last(2), bindMount("/z", true, false); !reflect.DeepEqual(got, want) {
		t.Errorf("mount %v, want %v", got, want)
	}
	if got, want := last(1), bindMount("/w", false, false); !reflect.DeepEqual(got, want) {
		t.Errorf("mount %v, want %v", got, want)
	}
	sys := mounts[4].(map[string]any)
	if sys["destination"] != "/sys" || sys["type"] != "sysfs" || sys["read_only"] != true {
		t.Errorf("sysfs mount %v", sys)
	}
}

func TestInputIDRequests(t *testing.T) {
	tests := []struct {
		kind policy.Kind
		req  proto.Message
		want map[string]any
	}{
		{policy.CreateSandbox, &agentapi.CreateSandboxRequest{SandboxId: "s", Hostname: "h"},
			map[string]any{"sandbox_id": "s", "hostname": "h", "container_known": false, "container_id": ""}},
		{policy.StartContainer, &agentapi.ContainerRequest{ContainerId: "c-web"},
			map[string]any{"container_id": "c-web", "container_name": "web", "container_known": true}},
		{policy.StartContainer, &agentapi.ContainerRequest{ContainerId: "c-x"},
			map[string]any{"container_id": "c-x", "container_name": "", "container_known": false}},
		{policy.WaitProcess, &agentapi.ProcessRequest{ContainerId: "c-api", ExecId: "e1"},
			map[string]any{"container_name": "api", "exec_id": "e1"}},
		{policy.SignalProcess, &agentapi.SignalProcessRequest{ContainerId: "c-api", ExecId: "e1", Signal: 9, All: true},
			map[string]any{"signal": int64(9), "all": true, "exec_id": "e1"}},
		{policy.ResizePty, &agentapi.ResizePtyRequest{ContainerId: "c-api", Width: 120, Height: 40},
			map[string]any{"width": int64(120), "height": int64(40)}},
		{policy.UpdateContainer, &agentapi.UpdateContainerRequest{ContainerId: "c-api", Resources: []byte(`{"memory":{"limit":1048576}}`)},
			map[string]any{"resources": map[string]any{"memory": map[string]any{"limit": json.Number("1048576")}}}},
		{policy.UpdateContainer, &agentapi.UpdateContainerRequest{ContainerId: "c-api"},
			map[string]any{"resources": map[string]any{}}},
		{policy.WaitOOM, &agentapi.Empty{}, map[string]any{"kind": "WaitOOM", "container_id": ""}},
		{policy.GetReport, &agentapi.GetReportRequest{ReportData: []byte{0xab, 0x01}},
			map[string]any{"kind": "GetReport", "container_id": "", "report_data": "ab01"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			in, err := Input(tt.kind, tt.req, known)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if !reflect.DeepEqual(in[k], v) {
					t.Errorf("%s = %#v, want %#v", k, in[k], v)
				}
			}
		})
	}
}

func TestInputConfigureNetwork(t *testing.T) {
	req := podNetwork()
	req.Interfaces[0].Mac = "0A:58:0A:58:00:05"
	req.Interfaces[0].Addresses[1] = "FD00:10:88:0:0:0:0:5/64"
	req.Routes[2].Gateway = "FD00:10:88::1"
	req.Neighbors[0].Mac = "0a-58-0a-58-00-01"
	in, err := Input(policy.ConfigureNetwork, req, func(string) (string, bool) {
		t.Fatal("ConfigureNetwork looked a container up")
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"kind":            "ConfigureNetwork",
		"container_id":    "",
		"container_known": false,
		"interfaces": []any{map[string]any{
			"name": "eth0", "mac": "0a:58:0a:58:00:05", "mtu": int64(1500),
			"addresses": []any{"10.88.0.5/16", "fd00:10:88::5/64"},
		}},
		"routes": []any{
			map[string]any{"destination": "0.0.0.0/0", "gateway": "10.88.0.1", "source": "10.88.0.5", "device": "eth0", "link_scope": false},
			map[string]any{"destination": "10.88.0.0/16", "gateway": "", "source": "", "device": "eth0", "link_scope": true},
			map[string]any{"destination": "::/0", "gateway": "fd00:10:88::1", "source": "", "device": "eth0", "link_scope": false},
		},
		"neighbors": []any{map[string]any{"ip": "10.88.0.1", "mac": "0a:58:0a:58:00:01", "device": "eth0"}},
	}
	for k, v := range want {
		if !reflect.DeepEqual(in[k], v) {
			t.Errorf("%s = %#v, want %#v", k, in[k], v)
		}
	}
	// An empty request is a document with empty lists, not missing ones.
	in, err = Input(policy.ConfigureNetwork, &agentapi.ConfigureNetworkRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"interfaces", "routes", "neighbors"} {
		if l, ok := in[k].([]any); !ok || len(l) != 0 {
			t.Errorf("%s = %#v, want an empty list", k, in[k])
		}
	}
}

// network is podNetwork changed by mutate.
func network(mutate func(*agentapi.ConfigureNetworkRequest)) *agentapi.ConfigureNetworkRequest {
	r := podNetwork()
	mutate(r)
	return r
}

func TestInputRejects(t *testing.T) {
	web := testContainerNamed(t, "web")
	specWith := func(mutate func(*specs.Spec)) []byte {
		s := criSpec(web)
		mutate(s)
		return mustJSON(t, s)
	}
	create := func(spec []byte) *agentapi.CreateContainerRequest {
		return &agentapi.CreateContainerRequest{ContainerId: "c-1", Spec: spec}
	}
	withLayer := func(digest, rootHash string) *agentapi.CreateContainerRequest {
		r := create(specWith(func(*specs.Spec) {}))
		r.Layers = append(testLayers("web"), &agentapi.Layer{Serial: "l", Digest: digest, RootHash: rootHash})
		return r
	}
	goodDigest, goodRoot := testLayers("web")[0].GetDigest(), testLayers("web")[0].GetRootHash()
	exec := func(process string) *agentapi.ExecProcessRequest {
		return &agentapi.ExecProcessRequest{ContainerId: "c-web", ExecId: "e", Process: []byte(process)}
	}
	tests := []struct {
		name string
		kind policy.Kind
		req  proto.Message
		want string
	}{
		{"not JSON", policy.CreateContainer, create([]byte("{")), "CreateContainer c-1: spec: unexpected EOF"},
		{"trailing data", policy.CreateContainer, create(append(specWith(func(*specs.Spec) {}), []byte(`{"process":{}}`)...)), "trailing data"},
		{"wrong field type", policy.CreateContainer, create([]byte(`{"process":{"args":"sh"}}`)), "process.args"},
		{"no process", policy.CreateContainer, create([]byte(`{"ociVersion":"1.2.1"}`)), "spec: process: missing"},
		{"no args", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Args = nil })), "spec: process.args: empty"},
		{"windows command line", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Args, s.Process.CommandLine = nil, "cmd.exe" })), "process.commandLine"},
		{"env without =", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "LD_PRELOAD") })), `process.env[45]: "LD_PRELOAD" is not NAME=VALUE`},
		{"env without name", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Env = []string{"=x"} })), "process.env[0]"},
		{"env with a NUL", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "A=b\x00c") })), `process.env[45]: "A" holds a NUL byte`},
		{"unclean mount destination", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts[7].Destination = "/etc/nginx/../nginx/conf.d/" })),
			`mounts[7].destination: "/etc/nginx/../nginx/conf.d/" is not a clean absolute path`},
		{"relative mount destination", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts[0].Destination = "proc" })), `mounts[0].destination: "proc"`},
		{"masked path through ..", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.MaskedPaths[3] = "/proc/nonexistent/../keys" })),
			`linux.maskedPaths[3]: "/proc/nonexistent/../keys" is not a clean absolute path`},
		{"read-only path with a trailing slash", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.ReadonlyPaths[3] = "/proc/sys/" })), `linux.readonlyPaths[3]`},
		{"rro off a bind mount", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts[4].Options = append(s.Mounts[4].Options, "rro") })),
			`mounts[4].options[4]: "rro" on a mount that does not bind`},
		{"idmapped mount", policy.CreateContainer, create(specWith(func(s *specs.Spec) {
			s.Mounts[7].UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 1}}
		})), "mounts[].uidMappings: must be absent"},
		{"idmap option", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts[7].Options = append(s.Mounts[7].Options, "idmap") })), `"idmap" is not allowed`},
		// runc changes no capability of a process whose spec names none.
		{"no capabilities at all", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Capabilities = nil })),
			"process.capabilities: missing"},
		{"a second mount at a destination", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts = append(s.Mounts, s.Mounts[0]) })),
			`destination: "/proc" again (first mounts[0])`},
		{"data on a bind mount", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts[7].Options = append(s.Mounts[7].Options, "size=1k") })), "a bind mount takes no file system data"},
		{"unknown JSON field", policy.CreateContainer, create([]byte(`{"process":{"args":["sh"]},"linux":{"landlock":{}}}`)), `unknown field "landlock"`},
		{"umask", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.User.Umask = new(uint32) })), "process.user.umask: must be absent"},
		{"scheduler", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedFIFO, Priority: 99} })), "process.scheduler: must be absent"},
		{"io priority", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Process.IOPriority = &specs.LinuxIOPriority{Class: specs.IOPRIO_CLASS_RT} })), "process.ioPriority"},
		{"personality", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.Personality = &specs.LinuxPersonality{Domain: specs.PerLinux32} })), "linux.personality: must be absent"},
		{"time offsets", policy.CreateContainer, create(specWith(func(s *specs.Spec) {
			s.Linux.TimeOffsets = map[string]specs.LinuxTimeOffset{"monotonic": {Secs: 86400}}
		})), "linux.timeOffsets: must be absent"},
		{"memory policy", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.MemoryPolicy = &specs.LinuxMemoryPolicy{Mode: "MPOL_BIND", Nodes: "0"} })), "linux.memoryPolicy"},
		{"net devices", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.NetDevices = map[string]specs.LinuxNetDevice{"eth9": {}} })), "linux.netDevices"},
		{"windows section", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Windows = &specs.Windows{} })), "windows: must be absent"},
		{"runc annotation", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Annotations["org.systemd.property.DeviceAllow"] = "'char-* rwm'" })), "runc reads annotations"},
		{"exec umask", policy.ExecProcess, exec(`{"args":["sh"],"user":{"uid":0,"gid":0,"umask":0}}`), "process.user.umask: must be absent"},
		{"exec without capabilities", policy.ExecProcess, exec(`{"args":["sh"],"user":{"uid":0,"gid":0},"cwd":"/"}`), "process.capabilities: missing"},
		{"exec CPU affinity", policy.ExecProcess, exec(`{"args":["sh"],"execCPUAffinity":{"initial":"0"}}`), "process.execCPUAffinity"},
		{"mount without destination", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Mounts[2].Destination = "" })), "spec: mounts[2].destination: empty"},
		{"relative masked path", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.MaskedPaths[1] = "proc/acpi" })), `linux.maskedPaths[1]: "proc/acpi"`},
		{"relative read-only path", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.ReadonlyPaths[0] = "" })), "linux.readonlyPaths[0]"},
		{"namespace without type", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.Namespaces[2].Type = "" })), "linux.namespaces[2]: no type"},
		{"namespace twice", policy.CreateContainer, create(specWith(func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"})
		})), "linux.namespaces[6]: a second pid namespace"},
		{"seccomp without default action", policy.CreateContainer, create(specWith(func(s *specs.Spec) { s.Linux.Seccomp = &specs.LinuxSeccomp{} })), "linux.seccomp: defaultAction: missing"},
		{"layer digest without algorithm", policy.CreateContainer, withLayer(strings.TrimPrefix(goodDigest, "sha256:"), goodRoot), "CreateContainer c-1: layers[2].digest"},
		{"layer digest sha512", policy.CreateContainer, withLayer("sha512:"+goodRoot, goodRoot), "layers[2].digest"},
		{"layer digest short", policy.CreateContainer, withLayer(goodDigest[:70], goodRoot), "layers[2].digest"},
		{"layer digest upper case", policy.CreateContainer, withLayer(strings.ToUpper(goodDigest), goodRoot), "layers[2].digest"},
		{"layer root hash upper case", policy.CreateContainer, withLayer(goodDigest, strings.ToUpper(goodRoot)), "layers[2].root_hash"},
		{"layer root hash empty", policy.CreateContainer, withLayer(goodDigest, ""), "layers[2].root_hash"},
		{"layer root hash not hex", policy.CreateContainer, withLayer(goodDigest, "g"+goodRoot[1:]), "layers[2].root_hash"},
		{"exec not JSON", policy.ExecProcess, exec("sh"), "ExecProcess c-web/e: process: invalid character"},
		{"exec without args", policy.ExecProcess, exec(`{"cwd":"/"}`), "ExecProcess c-web/e: process.args: empty"},
		{"update resources not JSON", policy.UpdateContainer, &agentapi.UpdateContainerRequest{ContainerId: "c-api", Resources: []byte("x")}, "UpdateContainer c-api: resources"},
		{"update resources wrong type", policy.UpdateContainer, &agentapi.UpdateContainerRequest{ContainerId: "c-api", Resources: []byte(`{"memory":{"limit":"lots"}}`)}, "resources"},
		{"wrong request type", policy.StartContainer, &agentapi.ProcessRequest{ContainerId: "c"}, "StartContainer: request of type *agent.ProcessRequest"},
		{"network request type", policy.ConfigureNetwork, &agentapi.Empty{}, "ConfigureNetwork: request of type *agent.Empty"},
		{"MAC not hex", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Mac = "0a:58:0a:58:00:zz" }),
			"ConfigureNetwork: interfaces[0].mac: not a MAC address"},
		{"EUI-64 MAC", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Mac = "0a:58:0a:58:00:05:00:01" }),
			`interfaces[0].mac: "0a:58:0a:58:00:05:00:01" is not a 48-bit Ethernet MAC address`},
		{"no MAC", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Mac = "" }), "interfaces[0].mac"},
		{"interface named twice", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) {
			r.Interfaces = append(r.Interfaces, &agentapi.NetworkInterface{Name: "eth0", Mac: "0a:58:0a:58:00:06"})
		}), `interfaces[1].name: "eth0" again (first interfaces[0])`},
		{"MAC twice", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) {
			r.Interfaces = append(r.Interfaces, &agentapi.NetworkInterface{Name: "eth1", Mac: "0A:58:0A:58:00:05"})
		}), "interfaces[1].mac: 0a:58:0a:58:00:05 again (first interfaces[0])"},
		{"address without length", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[1] = "fd00::5" }),
			"interfaces[0].addresses[1]: not an address in CIDR notation"},
		{"address length too long", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[0] = "10.88.0.5/33" }),
			"interfaces[0].addresses[0]"},
		{"IPv4-mapped address", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Addresses[0] = "::ffff:127.0.0.2/104" }),
			`interfaces[0].addresses[0]: "::ffff:127.0.0.2/104" is an IPv4-mapped IPv6 address`},
		{"destination not a prefix", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Destination = "default" }),
			"routes[0].destination: not a prefix in CIDR notation"},
		{"destination with host bits", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Routes[1].Destination = "10.88.0.5/16" }),
			`routes[1].destination: "10.88.0.5/16" has host bits set (the prefix is 10.88.0.0/16)`},
		{"gateway not an IP", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Gateway = "10.88.0.1/16" }),
			"routes[0].gateway: not an IP address"},
		{"gateway with a zone", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Routes[2].Gateway = "fe80::1%eth0" }),
			`routes[2].gateway: "fe80::1%eth0" has a zone`},
		{"source IPv4-mapped", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Source = "::ffff:10.88.0.5" }),
			"routes[0].source"},
		{"neighbour IP", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Ip = "" }), "neighbors[0].ip: not an IP address"},
		{"neighbour MAC", policy.ConfigureNetwork, network(func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Mac = "0a-58" }), "neighbors[0].mac"},
		{"unknown kind", policy.Kind("Reboot"), &agentapi.Empty{}, `unknown request kind "Reboot"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Input(tt.kind, tt.req, known)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// fuzzKinds are the request kinds whose payload FuzzInput varies.
// New kinds go at the end, so the corpus's kind indices keep their meaning.
var fuzzKinds = []policy.Kind{policy.CreateContainer, policy.ExecProcess, policy.UpdateContainer, policy.ConfigureNetwork}

// FuzzInput feeds host-supplied bytes (a spec, an exec process, resources,
// a ConfigureNetwork request in protobuf wire form) through Input and the rules: neither may panic, and a request Input
// accepts must get a decision without an evaluation error (a conflict in
// the rules shows as one).
func FuzzInput(f *testing.F) {
	// Small seeds keep minimizing cheap; testdata/fuzz/FuzzInput holds a
	// full CRI spec and exec process besides.
	f.Add(uint8(0), []byte(`{"process":{"args":["sh"],"env":["A=1"],"cwd":"/","capabilities":{"bounding":["CAP_KILL"]}},`+
		`"root":{"readonly":true},"mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/d","type":"bind","source":"/s","options":["rbind","ro"]}],`+
		`"annotations":{"io.kubernetes.cri.container-name":"web","io.kubernetes.cri.container-type":"container"},`+
		`"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}],"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"sysctl":{"a":"1"},"seccomp":{"defaultAction":"SCMP_ACT_ERRNO"}}}`))
	f.Add(uint8(1), []byte(`{"args":["curl","-fsS","http://localhost:8080/healthz"],"env":["PATH=/bin"],"user":{"uid":101,"gid":101,"additionalGids":[101]}}`))
	f.Add(uint8(2), []byte(`{"cpu":{"shares":512},"memory":{"limit":1048576}}`))
	netSeed, err := proto.Marshal(podNetwork())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint8(3), netSeed)
	e := testEngine(f)
	f.Fuzz(func(t *testing.T, kindIndex uint8, payload []byte) {
		kind := fuzzKinds[int(kindIndex)%len(fuzzKinds)]
		var req proto.Message
		switch kind {
		case policy.CreateContainer:
			req = &agentapi.CreateContainerRequest{ContainerId: "c-fuzz", Spec: payload, Stdio: &agentapi.Stdio{Stdout: true}}
		case policy.ExecProcess:
			req = &agentapi.ExecProcessRequest{ContainerId: "c-web", ExecId: "e", Process: payload}
		case policy.UpdateContainer:
			req = &agentapi.UpdateContainerRequest{ContainerId: "c-api", Resources: payload}
		case policy.ConfigureNetwork:
			r := &agentapi.ConfigureNetworkRequest{}
			if proto.Unmarshal(payload, r) != nil {
				return
			}
			req = r
		}
		in, err := Input(kind, req, known)
		if err != nil {
			return
		}
		d, err := e.Decide(context.Background(), kind, in)
		if err != nil {
			t.Fatalf("decide %s: %v", kind, err)
		}
		if !d.Allow && (d.Rule == "" || d.Reason == "") {
			t.Fatalf("denial without rule or reason: %+v", d)
		}
	})
}

func TestInputUnverifiedRootfs(t *testing.T) {
	spec := mustJSON(t, criSpec(testContainerNamed(t, "web")))
	rootfs := &agentapi.BlockDevice{Serial: "rootfs", Fstype: "ext4"}
	tests := []struct {
		name   string
		rootfs *agentapi.BlockDevice
		layers []*agentapi.Layer
		want   bool
	}{
		{"layers only", nil, testLayers("web"), false},
		{"rootfs only", rootfs, nil, true},
		{"rootfs beside layers is unused", rootfs, testLayers("web"), false},
		{"neither", nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &agentapi.CreateContainerRequest{ContainerId: "c-1", Spec: spec, Rootfs: tt.rootfs, Layers: tt.layers}
			in, err := Input(policy.CreateContainer, req, nil)
			if err != nil {
				t.Fatal(err)
			}
			if in["unverified_rootfs"] != tt.want {
				t.Errorf("unverified_rootfs = %v, want %v", in["unverified_rootfs"], tt.want)
			}
			if got := len(in["layers"].([]any)); got != len(tt.layers) {
				t.Errorf("%d layers, want %d", got, len(tt.layers))
			}
		})
	}
}
