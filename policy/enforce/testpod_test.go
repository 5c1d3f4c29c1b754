package enforce

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// A realistic pod for the tests and the benchmark: three containers with 40
// environment variables each, probes, volumes, written the way containerd's
// CRI plugin (v2.4, internal/cri/server/container_create.go and
// pkg/oci/spec.go) writes config.json for a kubelet.

const (
	testNamespace = "shop"
	testHostname  = "web-7d9f8"
	testSandboxID = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5"
	testPodUID    = "0b6f1c4e-9a27-4f3c-8a51-2d7e6c9b1f30"
)

// defaultCaps is containerd's default capability set for a CRI container.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// kubeletMasked and kubeletReadonly are the kubelet's default masked and
// read-only paths, which CRI copies into the spec.
var (
	kubeletMasked = []string{
		"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	kubeletReadonly = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

type testContainer struct {
	name, image string
	args        []string
	env         []string // from the image and the YAML, in order
	cwd         string
	uid, gid    uint32
	caps        []string
	readOnly    bool
	nnp         bool
	volumes     []testVolume
	exec        [][]string
}

type testVolume struct {
	name, dest string
	readOnly   bool
}

const testPathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func manyEnv(prefix string, n int) []string {
	env := []string{testPathEnv}
	for i := range n - 1 {
		env = append(env, fmt.Sprintf("%s_SETTING_%02d=value-%d-%s", prefix, i, i*7919%1000, prefix))
	}
	return env
}

func testContainers() []testContainer {
	return []testContainer{
		{
			name: "web", image: "docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
			args: []string{"/docker-entrypoint.sh", "nginx", "-g", "daemon off;"},
			env:  manyEnv("WEB", 40), cwd: "/", uid: 101, gid: 101, caps: defaultCaps, nnp: true,
			volumes: []testVolume{{"cache", "/var/cache/nginx", false}, {"config", "/etc/nginx/conf.d", true}},
			exec:    [][]string{{"curl", "-fsS", "http://localhost:8080/healthz"}, {"/usr/sbin/nginx", "-s", "quit"}},
		},
		{
			name: "api", image: "ghcr.io/example/shop-api@sha256:5b8e2c06f5a1f7a9c0a4b9d6c2b1e0f3a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3",
			args: []string{"/app/api", "--listen=:9000", "--db=postgres://db:5432/shop"},
			env:  manyEnv("API", 40), cwd: "/app", uid: 65532, gid: 65532, caps: []string{"CAP_NET_BIND_SERVICE"},
			readOnly: true, nnp: true,
			volumes: []testVolume{{"tmp", "/tmp", false}, {"secrets", "/var/run/secrets/shop", true}},
			exec:    [][]string{{"/app/api", "healthcheck"}},
		},
		{
			name: "metrics", image: "quay.io/prometheus/node-exporter@sha256:9a4c0e4f2b5d6a7c8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d",
			args: []string{"/bin/node_exporter", "--path.rootfs=/host"},
			env:  manyEnv("METRICS", 40), cwd: "/", uid: 65534, gid: 65534, caps: defaultCaps,
			volumes: []testVolume{{"textfiles", "/textfiles", true}},
		},
	}
}

func volumeSource(v testVolume) string {
	return fmt.Sprintf("/var/lib/kubelet/pods/%s/volumes/kubernetes.io~empty-dir/%s", testPodUID, v.name)
}

// testData is the policy data a generator would write for testContainers.
func testData() policy.Data {
	d := policy.Data{
		Version: policy.DataVersion,
		Pod: policy.Pod{
			Namespace:       testNamespace,
			HostnamePattern: "web-[a-z0-9]{5}",
			Sysctls:         map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
		},
		Containers: map[string]policy.Container{},
		Requests:   map[policy.Kind]bool{},
		// The generator's defaults.
		Network: policy.Network{
			Allow:             true,
			InterfacePattern:  "eth[0-9]+",
			MaxInterfaces:     1,
			MTUMin:            68,
			MTUMax:            65535,
			ForbiddenPrefixes: []string{"127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32"},
		},
	}
	for _, k := range policy.Kinds {
		switch k {
		case policy.CreateSandbox, policy.CreateContainer, policy.ExecProcess:
		default:
			d.Requests[k] = true
		}
	}
	for _, c := range testContainers() {
		env := map[string]bool{}
		for _, e := range c.env {
			env[e] = true
		}
		mounts := map[string]policy.Mount{}
		for _, v := range c.volumes {
			mounts[v.dest] = policy.Mount{
				Type:          "bind",
				SourcePattern: `/var/lib/kubelet/pods/[0-9a-f-]+/volumes/kubernetes\.io~empty-dir/` + v.name,
				ReadOnly:      v.readOnly,
			}
		}
		d.Containers[c.name] = policy.Container{
			Image:  c.image,
			Layers: testRootHashes(c.name),
			Args:   c.args,
			Env:    env,
			EnvPatterns: []string{
				`HOSTNAME=web-[a-z0-9]{5}`,
				`KUBERNETES_(SERVICE|PORT)[A-Z0-9_]*=[0-9a-z.:/]*`,
			},
			Cwd:             c.cwd,
			User:            &policy.User{UID: c.uid, GID: c.gid, AdditionalGIDs: []uint32{c.gid}},
			Capabilities:    c.caps,
			OOMScoreAdj:     [2]int64{1000, 1000}, // BestEffort
			NoNewPrivileges: c.nnp,
			ReadOnlyRoot:    c.readOnly,
			Mounts:          mounts,
			Exec:            c.exec,
			Logs:            true,
		}
	}
	return d
}

// criSpec builds the config.json containerd's CRI plugin writes for c. CRI
// sets the pod's sysctls on the sandbox's spec only, so a container's has
// none.
func criSpec(c testContainer) *specs.Spec {
	u64 := func(v uint64) *uint64 { return &v }
	i64 := func(v int64) *int64 { return &v }
	env := append([]string{"HOSTNAME=" + testHostname}, c.env...)
	env = append(env,
		"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443",
		"KUBERNETES_PORT=tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PORT=443")
	// containerd's WithEnv puts PATH first when the image sets it.
	slices.SortStableFunc(env, func(a, b string) int {
		if a == testPathEnv {
			return -1
		}
		if b == testPathEnv {
			return 1
		}
		return 0
	})
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: c.uid, GID: c.gid, AdditionalGids: []uint32{c.gid}},
			Args: slices.Clone(c.args),
			Env:  env,
			Cwd:  c.cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  slices.Clone(c.caps),
				Effective: slices.Clone(c.caps),
				Permitted: slices.Clone(c.caps),
			},
			NoNewPrivileges: c.nnp,
			OOMScoreAdj:     func() *int { v := 1000; return &v }(),
		},
		Root: &specs.Root{Path: "rootfs", Readonly: c.readOnly},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Annotations: map[string]string{
			"io.kubernetes.cri.sandbox-id":            testSandboxID,
			AnnotationSandboxNamespace:                testNamespace,
			"io.kubernetes.cri.sandbox-uid":           testPodUID,
			AnnotationSandboxName:                     "web-7d9f8",
			AnnotationContainerName:                   c.name,
			AnnotationImageName:                       c.image,
			AnnotationContainerType:                   "container",
			"io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/shop_web-7d9f8_" + testPodUID,
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: i64(256 << 20)},
				CPU:     &specs.LinuxCPU{Shares: u64(102), Quota: i64(50000), Period: u64(100000)},
			},
			CgroupsPath: "/kubepods/burstable/pod" + testPodUID + "/" + c.name,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
				{Type: specs.UTSNamespace, Path: "/proc/4242/ns/uts"},
				{Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1b2c3d4e"},
				{Type: specs.CgroupNamespace},
			},
			MaskedPaths:   slices.Clone(kubeletMasked),
			ReadonlyPaths: slices.Clone(kubeletReadonly),
		},
	}
	hostFile := func(dest, file string) specs.Mount {
		mode := "rw"
		if c.readOnly {
			mode = "ro"
		}
		return specs.Mount{
			Destination: dest, Type: "bind",
			Source:  "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/" + testSandboxID + "/" + file,
			Options: []string{"rbind", "rprivate", mode},
		}
	}
	for _, v := range c.volumes {
		mode := "rw"
		if v.readOnly {
			mode = "ro"
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: v.dest, Type: "bind", Source: volumeSource(v), Options: []string{"rbind", "rprivate", mode}})
	}
	s.Mounts = append(s.Mounts,
		hostFile("/etc/hosts", "hosts"),
		specs.Mount{
			Destination: "/dev/termination-log", Type: "bind",
			Source:  "/var/lib/kubelet/pods/" + testPodUID + "/containers/" + c.name + "/3f2a9c1d",
			Options: []string{"rbind", "rprivate", "rw"},
		},
		hostFile("/etc/hostname", "hostname"),
		hostFile("/etc/resolv.conf", "resolv.conf"),
		specs.Mount{
			Destination: "/dev/shm", Type: "bind",
			Source:  "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/" + testSandboxID + "/shm",
			Options: []string{"rbind", "rprivate", "rw"},
		},
	)
	return s
}

func testContainerNamed(t testing.TB, name string) testContainer {
	for _, c := range testContainers() {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no test container %q", name)
	return testContainer{}
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// createRequest is the CreateContainer request the shim sends for spec.
func createRequest(t testing.TB, id string, spec *specs.Spec, stdio *agentapi.Stdio) *agentapi.CreateContainerRequest {
	if stdio == nil {
		stdio = &agentapi.Stdio{Stdout: true, Stderr: true}
	}
	return &agentapi.CreateContainerRequest{
		ContainerId: id,
		Spec:        mustJSON(t, spec),
		Stdio:       stdio,
		Layers:      testLayers(spec.Annotations[AnnotationContainerName]),
	}
}

// testLayers are the image layers the shim attaches for the named container:
// two per image, their digests and root hashes derived from the name.
func testLayers(name string) []*agentapi.Layer {
	var layers []*agentapi.Layer
	for i := range 2 {
		digest := sha256.Sum256(fmt.Appendf(nil, "%s diff %d", name, i))
		root := sha256.Sum256(fmt.Appendf(nil, "%s root %d", name, i))
		layers = append(layers, &agentapi.Layer{
			Serial:     fmt.Sprintf("layer-%s-%d", name, i),
			Digest:     "sha256:" + hex.EncodeToString(digest[:]),
			RootHash:   hex.EncodeToString(root[:]),
			DataBlocks: 1024,
		})
	}
	return layers
}

// testRootHashes are the root hashes of testLayers, as the policy pins them.
func testRootHashes(name string) []string {
	var hashes []string
	for _, l := range testLayers(name) {
		hashes = append(hashes, l.GetRootHash())
	}
	return hashes
}

// execProcess is the process CRI's exec sends for c: the container's own
// process with other args.
func execProcess(c testContainer, args ...string) *specs.Process {
	p := criSpec(c).Process
	p.Args = args
	return p
}
