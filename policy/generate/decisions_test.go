package generate_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	k8syaml "sigs.k8s.io/yaml"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
	"github.com/contrast-vm/contrast/policy/generate"
)

// These tests run generated policies against requests built the way the
// kubelet and containerd's CRI plugin (v2.4: internal/cri/server/
// container_create.go, internal/cri/opts, pkg/oci/spec.go) build them from
// the same pod YAML, then against tampered versions of those requests. The
// spec builder below is written from containerd's and the kubelet's
// behaviour, not from the generator, so the two are checked against each
// other.

const (
	digestNginx   = "sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31"
	digestBusybox = "sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7"
	digestAPI     = "sha256:5b8e2c06f5a1f7a9c0a4b9d6c2b1e0f3a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3"
	digestOther   = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

	podUID    = "0b6f1c4e-9a27-4f3c-8a51-2d7e6c9b1f30"
	sandboxID = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5"
	sandboxNS = "/proc/4242/ns/"
	kubelet   = "/var/lib/kubelet/pods/" + podUID
	criState  = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/" + sandboxID
	criRun    = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/" + sandboxID
	pathEnv   = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

var testImages = map[string]generate.Image{
	"nginx:1.27": {
		Ref: "docker.io/library/nginx@" + digestNginx,
		Config: ocispec.ImageConfig{
			Entrypoint: []string{"/docker-entrypoint.sh"},
			Cmd:        []string{"nginx", "-g", "daemon off;"},
			Env:        []string{pathEnv, "NGINX_VERSION=1.27.0", "PKG_RELEASE=1~bookworm"},
			StopSignal: "SIGQUIT",
		},
	},
	"busybox:1.36": {
		Ref:    "docker.io/library/busybox@" + digestBusybox,
		Config: ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
	},
	"ghcr.io/example/shop-api:v3": {
		Ref: "ghcr.io/example/shop-api@" + digestAPI,
		Config: ocispec.ImageConfig{
			Entrypoint: []string{"/app/api"},
			Cmd:        []string{"--listen=:9000"},
			Env:        []string{pathEnv, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
			WorkingDir: "/app",
			User:       "65532:65532",
		},
	},
}

// The pods the cases run against, by name.
var testPods = map[string]string{
	// A web server with probes and volumes, and a locked-down sidecar.
	"web": `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - {containerPort: 80}
    - {containerPort: 9125, protocol: UDP}
    env:
    - name: MODE
      value: production
    - name: DB_PASSWORD
      valueFrom:
        secretKeyRef: {name: db, key: password}
    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
    readinessProbe:
      exec:
        command: ["/bin/sh", "-c", "curl -fs localhost/ready"]
    lifecycle:
      preStop:
        exec:
          command: ["/usr/sbin/nginx", "-s", "quit"]
    volumeMounts:
    - {name: cache, mountPath: /var/cache/nginx}
    - {name: config, mountPath: /etc/nginx/conf.d, readOnly: true}
  - name: shipper
    image: busybox:1.36
    command: ["sh", "-c", "tail -F /logs/access.log"]
    securityContext:
      runAsUser: 1000
      runAsGroup: 3000
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: ["ALL"]
        add: ["NET_BIND_SERVICE"]
      seccompProfile:
        type: RuntimeDefault
    volumeMounts:
    - {name: cache, mountPath: /logs, readOnly: true}
  securityContext:
    supplementalGroups: [4000]
  volumes:
  - name: cache
    emptyDir: {}
  - name: config
    configMap:
      name: nginx-config
`,
	// A database keeping its data and logs in subdirectories of an
	// emptyDir (directory subPaths).
	"subpaths": `apiVersion: v1
kind: Pod
metadata:
  name: subpaths
spec:
  automountServiceAccountToken: false
  shareProcessNamespace: true
  securityContext:
    sysctls:
    - {name: net.ipv4.ip_unprivileged_port_start, value: "0"}
    - {name: kernel.shm_rmid_forced, value: "1"}
  containers:
  - name: db
    image: busybox:1.36
    command: ["sleep", "3600"]
    volumeMounts:
    - {name: data, mountPath: /var/lib/db, subPath: db/data}
  volumes:
  - {name: data, emptyDir: {}}
`,
	// An interactive pod: stdin and a terminal.
	"debug": `apiVersion: v1
kind: Pod
metadata:
  name: debug
spec:
  automountServiceAccountToken: false
  containers:
  - name: shell
    image: busybox:1.36
    stdin: true
    tty: true
    securityContext:
      runAsUser: 1000
`,
	// A shell whose YAML sets its own TERM, which containerd's exec with a
	// terminal replaces.
	"debug-term": `apiVersion: v1
kind: Pod
metadata:
  name: debug-term
spec:
  automountServiceAccountToken: false
  containers:
  - name: shell
    image: busybox:1.36
    stdin: true
    tty: true
    env:
    - {name: TERM, value: vt100}
    securityContext:
      runAsUser: 1000
`,
	// A database on a raw block volume (volumeDevices).
	"block": `apiVersion: v1
kind: Pod
metadata:
  name: block
spec:
  automountServiceAccountToken: false
  containers:
  - name: db
    image: busybox:1.36
    command: ["sh", "-c", "dd if=/dev/xvda bs=512 count=1"]
    volumeDevices:
    - {name: data, devicePath: /dev/xvda}
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: data
`,
	// A node agent: host namespaces, privileged, a host path.
	"node-agent": `apiVersion: v1
kind: Pod
metadata:
  name: node-agent
  namespace: kube-system
spec:
  hostPID: true
  hostIPC: true
  hostNetwork: true
  automountServiceAccountToken: false
  containers:
  - name: agent
    image: busybox:1.36
    command: ["sh", "-c", "while true; do cat /host/proc/loadavg; sleep 10; done"]
    securityContext:
      privileged: true
    volumeMounts:
    - {name: host, mountPath: /host, readOnly: true}
  volumes:
  - name: host
    hostPath:
      path: /
`,
	// A Deployment whose image sets the user and working directory.
	"api": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: shop
spec:
  replicas: 3
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: ghcr.io/example/shop-api:v3
        args: ["--listen=:9000", "--db=postgres://db:5432/shop"]
        env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef: {fieldPath: metadata.namespace}
        startupProbe:
          exec:
            command: ["/app/api", "healthcheck"]
        volumeMounts:
        - {name: tls, mountPath: /etc/tls, readOnly: true}
      volumes:
      - name: tls
        secret:
          secretName: api-tls
`,
}

func init() {
	// A pod whose env overrides an image ENV: containerd sends both, the
	// image's first.
	testPods["override"] = `apiVersion: v1
kind: Pod
metadata:
  name: override
spec:
  automountServiceAccountToken: false
  containers:
  - name: app
    image: nginx:1.27
    env:
    - {name: NGINX_VERSION, value: 1.27.1-patched}
`
	testPods["indexed"] = `apiVersion: batch/v1
kind: Job
metadata:
  name: indexed
spec:
  completionMode: Indexed
  completions: 5
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      containers:
      - name: worker
        image: busybox:1.36
        command: ["sh", "-c", "echo $JOB_COMPLETION_INDEX"]
`
	podHostnames["override"] = "override"
	podHostnames["indexed"] = "indexed-3-x7k2p"
}

// podHostnames are the hostnames the cluster gives each pod: a Pod's name,
// a Deployment's <name>-<template hash>-<suffix>, the node's for a
// host-network pod.
var podHostnames = map[string]string{
	"web":        "web",
	"debug":      "debug",
	"debug-term": "debug-term",
	"block":      "block",
	"node-agent": "worker-3",
	"api":        "api-7c9d8f6b5-x2k9p",
	"subpaths":   "subpaths",
}

// testSettings are the settings every case's policy is generated with,
// unless the case changes them.
func testSettings() generate.Settings {
	s := generate.DefaultSettings()
	s.Containers = map[string]generate.ContainerSettings{
		"shell": {Exec: [][]string{{"sh"}}},
	}
	return s
}

// testPod is one pod of a case: its YAML as the kubelet sees it and the
// policy generated for it, behind a gate.
type testPod struct {
	t        *testing.T
	name     string
	pod      corev1.Pod
	gate     *enforce.Gate
	hostname string
}

func newTestPod(t *testing.T, name string, settings func(*generate.Settings)) *testPod {
	t.Helper()
	s := testSettings()
	if settings != nil {
		settings(&s)
	}
	res, err := generate.Generate(context.Background(), []byte(testPods[name]), generate.Options{
		Settings: s,
		Images:   generate.StaticImages(testImages),
		Layers:   testLayerSource{},
	})
	if err != nil {
		t.Fatalf("generate %s: %v", name, err)
	}
	if len(res.Policies) != 1 {
		t.Fatalf("generate %s: %d policies", name, len(res.Policies))
	}
	engine, err := enforce.Compile(res.Policies[0].Policy)
	if err != nil {
		t.Fatalf("compile the policy of %s: %v", name, err)
	}
	p := &testPod{t: t, name: name, gate: enforce.NewGate(engine), hostname: podHostnames[name]}
	// The kubelet runs the pod from the YAML the generator wrote (images
	// pinned), as the API server stored it.
	p.pod = podFromYAML(t, res.YAML)
	return p
}

func podFromYAML(t *testing.T, doc []byte) corev1.Pod {
	var head struct{ Kind string }
	if err := k8syaml.Unmarshal(doc, &head); err != nil {
		t.Fatal(err)
	}
	switch head.Kind {
	case "Pod":
		var pod corev1.Pod
		if err := k8syaml.Unmarshal(doc, &pod); err != nil {
			t.Fatal(err)
		}
		return pod
	case "Job":
		var j batchv1.Job
		if err := k8syaml.Unmarshal(doc, &j); err != nil {
			t.Fatal(err)
		}
		meta := j.Spec.Template.ObjectMeta
		meta.Namespace = j.Namespace
		spec := j.Spec.Template.Spec
		if j.Spec.CompletionMode != nil && *j.Spec.CompletionMode == batchv1.IndexedCompletion {
			// The Job controller's addition to every container.
			for i := range spec.Containers {
				spec.Containers[i].Env = append(spec.Containers[i].Env, corev1.EnvVar{Name: "JOB_COMPLETION_INDEX", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"},
				}})
			}
		}
		return corev1.Pod{ObjectMeta: meta, Spec: spec}
	case "Deployment":
		var d appsv1.Deployment
		if err := k8syaml.Unmarshal(doc, &d); err != nil {
			t.Fatal(err)
		}
		meta := d.Spec.Template.ObjectMeta
		meta.Namespace = d.Namespace
		return corev1.Pod{ObjectMeta: meta, Spec: d.Spec.Template.Spec}
	}
	t.Fatalf("no pod in a %s", head.Kind)
	return corev1.Pod{}
}

func (p *testPod) container(name string) corev1.Container {
	for _, c := range p.pod.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	p.t.Fatalf("pod %s has no container %s", p.name, name)
	return corev1.Container{}
}

func (p *testPod) namespace() string {
	if p.pod.Namespace != "" {
		return p.pod.Namespace
	}
	return "default"
}

// image finds the image a container names (pinned by the generator).
func image(t *testing.T, ref string) generate.Image {
	img, err := generate.StaticImages(testImages).Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// defaultCaps is containerd's default capability set; allCaps what CRI
// gives a privileged container on a 6.x kernel (every capability the
// kernel knows).
var (
	defaultCaps = []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
		"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
	allCaps = []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
		"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
		"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
		"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
		"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
		"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
		"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
	}
	// The kubelet's default masked and read-only paths.
	kubeletMasked = []string{
		"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	kubeletReadonly = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// setEnv is containerd's oci.WithEnv: an entry replaces the one of the same
// name, or is appended.
func setEnv(env []string, entries ...string) []string {
	for _, e := range entries {
		name, _, _ := strings.Cut(e, "=")
		i := slices.IndexFunc(env, func(x string) bool { return strings.HasPrefix(x, name+"=") })
		if i >= 0 {
			env[i] = e
		} else {
			env = append(env, e)
		}
	}
	return env
}

// criSpec is the config.json the kubelet and containerd's CRI plugin write
// for container name of p, as the shim hands it to the agent.
func (p *testPod) criSpec(name string) *specs.Spec {
	t := p.t
	c := p.container(name)
	img := image(t, c.Image)
	pod := p.pod.Spec
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	privileged := sc.Privileged != nil && *sc.Privileged

	// argv: command replaces the entrypoint and drops cmd; args replaces cmd.
	args := slices.Concat(img.Config.Entrypoint, img.Config.Cmd)
	switch {
	case len(c.Command) > 0:
		args = slices.Concat(c.Command, c.Args)
	case len(c.Args) > 0:
		args = slices.Concat(img.Config.Entrypoint, c.Args)
	}

	// Environment: containerd's default PATH, a tty's TERM (oci.WithTTY),
	// HOSTNAME, the image's, then the kubelet's (service links for the API
	// server, the YAML's env).
	preset := []string{pathEnv}
	if c.TTY {
		preset = append(preset, "TERM=xterm")
	}
	env := setEnv(preset, "HOSTNAME="+p.hostname)
	env = setEnv(env, img.Config.Env...)
	// containerd appends a kubelet entry whose name an image entry has (only
	// PATH, TERM and HOSTNAME, there before, are replaced); runc keeps the last.
	var appended []string
	for _, e := range c.Env {
		replaced := e.Name == "PATH" || e.Name == "HOSTNAME" || (c.TTY && e.Name == "TERM")
		if !replaced && slices.ContainsFunc(env, func(x string) bool { return strings.HasPrefix(x, e.Name+"=") }) {
			appended = append(appended, e.Name)
		}
	}
	kubeletEnv := []string{
		"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443",
		"KUBERNETES_PORT=tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO=tcp", "KUBERNETES_PORT_443_TCP_PORT=443", "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
	}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
		case e.ValueFrom.SecretKeyRef != nil:
			v = "s3cr3t-from-the-cluster"
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			v = p.namespace()
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.annotations['batch.kubernetes.io/job-completion-index']":
			v = "3"
		default:
			t.Fatalf("no value for env %s", e.Name)
		}
		kubeletEnv = append(kubeletEnv, e.Name+"="+v)
	}
	for _, kv := range kubeletEnv {
		name, _, _ := strings.Cut(kv, "=")
		if slices.Contains(appended, name) {
			env = append(env, kv)
		} else {
			env = setEnv(env, kv)
		}
	}

	cwd := "/"
	if img.Config.WorkingDir != "" {
		cwd = img.Config.WorkingDir
	}
	if c.WorkingDir != "" {
		cwd = c.WorkingDir
	}

	// User: runAsUser/runAsGroup of the container over the pod's. Without
	// runAsUser the kubelet sets it from the uid CRI's image status reports
	// for the image's USER, which drops a ":group" part. containerd then
	// takes a lone uid's group from /etc/passwd, 0 without one (none of
	// these images has one).
	var uid, gid uint32
	runAsUser, runAsGroup := sc.RunAsUser, sc.RunAsGroup
	if runAsUser == nil {
		runAsUser = psc.RunAsUser
	}
	if runAsGroup == nil {
		runAsGroup = psc.RunAsGroup
	}
	if runAsUser == nil && img.Config.User != "" {
		u, _, _ := strings.Cut(img.Config.User, ":")
		n, err := strconv.ParseInt(u, 10, 64)
		if err != nil {
			t.Fatalf("image user %q is not numeric", img.Config.User)
		}
		runAsUser = &n
	}
	if runAsUser != nil {
		uid = uint32(*runAsUser)
		if runAsGroup != nil {
			gid = uint32(*runAsGroup)
		}
	}
	gids := []uint32{gid}
	for _, g := range psc.SupplementalGroups {
		if !slices.Contains(gids, uint32(g)) {
			gids = append(gids, uint32(g))
		}
	}

	caps := slices.Clone(defaultCaps)
	if c := sc.Capabilities; c != nil {
		for _, d := range c.Drop {
			if d == "ALL" {
				caps = nil
			}
		}
		for _, a := range c.Add {
			caps = append(caps, "CAP_"+string(a))
		}
		for _, d := range c.Drop {
			caps = slices.DeleteFunc(caps, func(x string) bool { return x == "CAP_"+string(d) })
		}
	}
	if privileged {
		caps = slices.Clone(allCaps)
	}

	rw := func(ro bool) string {
		if ro {
			return "ro"
		}
		return "rw"
	}
	sysMode := "ro"
	if privileged {
		sysMode = "rw"
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", sysMode}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", sysMode}},
	}
	bind := func(dest, src string, ro bool) specs.Mount {
		return specs.Mount{Destination: dest, Type: "bind", Source: src, Options: []string{"rbind", "rprivate", rw(ro)}}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			t.Fatalf("no volume %s", vm.Name)
		}
		var src string
		switch {
		case v.EmptyDir != nil:
			src = kubelet + "/volumes/kubernetes.io~empty-dir/" + v.Name
		case v.ConfigMap != nil:
			src = kubelet + "/volumes/kubernetes.io~configmap/" + v.Name
		case v.Secret != nil:
			src = kubelet + "/volumes/kubernetes.io~secret/" + v.Name
		case v.HostPath != nil:
			src = v.HostPath.Path
		default:
			t.Fatalf("volume %s: no source", v.Name)
		}
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			src = fmt.Sprintf("%s/volume-subpaths/%s/%s/%d", kubelet, vm.Name, c.Name, slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == vm.MountPath }))
		}
		mounts = append(mounts, bind(vm.MountPath, src, vm.ReadOnly))
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		mounts = append(mounts, bind("/var/run/secrets/kubernetes.io/serviceaccount", kubelet+"/volumes/kubernetes.io~projected/kube-api-access-8x2kq", true))
	}
	readOnlyRoot := sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	mounts = append(mounts,
		bind("/etc/hosts", kubelet+"/etc-hosts", false),
		bind("/dev/termination-log", kubelet+"/containers/"+name+"/3f2a9c1d", false),
		// containerd's own: the sandbox's hostname and resolv.conf (read-only
		// with a read-only root), and its shm.
		bind("/etc/hostname", criState+"/hostname", readOnlyRoot),
		bind("/etc/resolv.conf", criState+"/resolv.conf", readOnlyRoot),
		bind("/dev/shm", criRun+"/shm", false),
	)

	// Namespaces: the container's own PID namespace, the sandbox's others.
	// The shim drops the PID namespace of a host-PID pod's containers.
	nss := []specs.LinuxNamespace{
		{Type: specs.IPCNamespace, Path: sandboxNS + "ipc"},
		{Type: specs.UTSNamespace, Path: sandboxNS + "uts"},
		{Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: sandboxNS + "net"},
	}
	if !pod.HostPID {
		nss = append(nss, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}
	if !privileged {
		nss = append(nss, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}

	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal:        c.TTY,
			User:            specs.User{UID: uid, GID: gid, AdditionalGids: gids},
			Args:            args,
			Env:             env,
			Cwd:             cwd,
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: slices.Clone(caps), Permitted: slices.Clone(caps)},
			NoNewPrivileges: sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
			OOMScoreAdj:     func() *int { v := 1000; return &v }(),
		},
		Root:   &specs.Root{Path: "rootfs", Readonly: readOnlyRoot},
		Mounts: mounts,
		Annotations: map[string]string{
			"io.kubernetes.cri.sandbox-id":            sandboxID,
			"io.kubernetes.cri.sandbox-namespace":     p.namespace(),
			"io.kubernetes.cri.sandbox-uid":           podUID,
			"io.kubernetes.cri.sandbox-name":          p.hostname,
			"io.kubernetes.cri.container-name":        name,
			"io.kubernetes.cri.image-name":            c.Image,
			"io.kubernetes.cri.container-type":        "container",
			"io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/" + p.namespace() + "_" + p.hostname + "_" + podUID,
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			CgroupsPath:   "/kubepods/besteffort/pod" + podUID + "/" + name,
			Namespaces:    nss,
			MaskedPaths:   slices.Clone(kubeletMasked),
			ReadonlyPaths: slices.Clone(kubeletReadonly),
		},
	}
	if sp := sc.SeccompProfile; sp != nil && sp.Type == corev1.SeccompProfileTypeRuntimeDefault && !privileged {
		// CRI's WithDefaultProfile, after the capabilities.
		s.Linux.Seccomp = seccomp.DefaultProfile(s)
	}
	// Raw block volumes: the host device (a loop device here) at the
	// container's path and an allow rule for it, as CRI's WithDevices adds
	// them for the kubelet's devices (permissions "mrw").
	for i, d := range c.VolumeDevices {
		major, minor := int64(7), int64(10+i)
		s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: d.DevicePath, Type: "b", Major: major, Minor: minor, FileMode: ptr(os.FileMode(0o660))})
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "mrw"})
	}
	if privileged {
		s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
		// The host's devices, and access to all of them.
		s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/sda", Type: "b", Major: 8, Minor: 0}}
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	}
	return s
}

// stdio is what the shim asks for a container: stdout and stderr for the
// logs (stdout alone with a terminal), stdin when the YAML opens it.
func (p *testPod) stdio(name string) *agentapi.Stdio {
	c := p.container(name)
	return &agentapi.Stdio{Stdin: c.Stdin, Stdout: true, Stderr: !c.TTY, Terminal: c.TTY}
}

func id(container string) string { return "ctr-" + container }

// An action is one request to the agent.
type action func(p *testPod) (policy.Kind, any)

func sandbox(hostname string) action {
	return func(p *testPod) (policy.Kind, any) {
		if hostname == "" {
			hostname = p.hostname
		}
		// CRI puts the pod's sysctls on the sandbox.
		var sysctls map[string]string
		if sc := p.pod.Spec.SecurityContext; sc != nil && len(sc.Sysctls) > 0 {
			sysctls = map[string]string{}
			for _, sy := range sc.Sysctls {
				sysctls[sy.Name] = sy.Value
			}
		}
		return policy.CreateSandbox, &agentapi.CreateSandboxRequest{SandboxId: sandboxID, Hostname: hostname, Sysctls: sysctls}
	}
}

// sandboxWithSysctls is the sandbox with other sysctls.
func sandboxWithSysctls(sysctls map[string]string) action {
	return func(p *testPod) (policy.Kind, any) {
		kind, req := sandbox("")(p)
		req.(*agentapi.CreateSandboxRequest).Sysctls = sysctls
		return kind, req
	}
}

// create is the CreateContainer of container as CRI asks for it, changed by
// tamper.
func create(container string, tamper ...func(*specs.Spec, *agentapi.Stdio)) action {
	return func(p *testPod) (policy.Kind, any) {
		s, stdio := p.criSpec(container), p.stdio(container)
		for _, f := range tamper {
			f(s, stdio)
		}
		return policy.CreateContainer, &agentapi.CreateContainerRequest{
			ContainerId:  id(container),
			Spec:         mustJSON(p.t, s),
			Stdio:        stdio,
			Layers:       p.layers(container),
			BlockVolumes: p.blockVolumes(container),
		}
	}
}

// createWithLayers is create with the request's layers and rootfs changed by
// tamper.
func createWithLayers(container string, tamper func(p *testPod, r *agentapi.CreateContainerRequest)) action {
	return func(p *testPod) (policy.Kind, any) {
		kind, req := create(container)(p)
		tamper(p, req.(*agentapi.CreateContainerRequest))
		return kind, req
	}
}

// blockVolumes are the raw block volumes the shim attaches for container:
// one per volumeDevice.
func (p *testPod) blockVolumes(container string) []*agentapi.BlockVolume {
	var volumes []*agentapi.BlockVolume
	for i, d := range p.container(container).VolumeDevices {
		volumes = append(volumes, &agentapi.BlockVolume{Serial: fmt.Sprintf("b%d", i), ContainerPath: d.DevicePath})
	}
	return volumes
}

// layers are the layers the shim attaches for container: those of its image.
func (p *testPod) layers(container string) []*agentapi.Layer {
	ref := image(p.t, p.container(container).Image).Ref
	var layers []*agentapi.Layer
	for i, l := range testLayers(ref) {
		layers = append(layers, &agentapi.Layer{Serial: fmt.Sprintf("layer-%d", i), Digest: l.DiffID, RootHash: l.RootHash, DataBlocks: 256})
	}
	return layers
}

// testLayers are the layers of the image pinned as ref: as many as the
// reference is long modulo 3, plus one, so images differ in layer count;
// diff IDs and root hashes derived from the reference.
func testLayers(ref string) []generate.ImageLayer {
	layers := make([]generate.ImageLayer, len(ref)%3+1)
	for i := range layers {
		diff := sha256.Sum256(fmt.Appendf(nil, "diff %s %d", ref, i))
		root := sha256.Sum256(fmt.Appendf(nil, "root %s %d", ref, i))
		layers[i] = generate.ImageLayer{DiffID: "sha256:" + hex.EncodeToString(diff[:]), RootHash: hex.EncodeToString(root[:])}
	}
	return layers
}

// testLayerSource serves testLayers.
type testLayerSource struct{}

func (testLayerSource) ImageLayers(_ context.Context, img generate.Image) ([]generate.ImageLayer, error) {
	return testLayers(img.Ref), nil
}

var unverifiedRootfs = &agentapi.BlockDevice{Serial: "rootfs", Fstype: "ext4", ReadOnly: true}

// createAs creates container under the id of another.
func createAs(container, asID string) action {
	return func(p *testPod) (policy.Kind, any) {
		kind, req := create(container)(p)
		req.(*agentapi.CreateContainerRequest).ContainerId = asID
		return kind, req
	}
}

// exec is CRI's exec in container: the container's process with other args
// (and a terminal and stdin when asked), changed by tamper.
func exec(container string, args []string, stdin, tty bool, tamper ...func(*specs.Process)) action {
	return func(p *testPod) (policy.Kind, any) {
		proc := p.criSpec(container).Process
		proc.Args, proc.Terminal = args, tty
		if tty {
			// containerd's exec with a terminal: TERM=xterm over the
			// container's (oci.WithEnv replaces a TERM, else adds one)
			proc.Env = setEnv(proc.Env, "TERM=xterm")
		}
		for _, f := range tamper {
			f(proc)
		}
		return policy.ExecProcess, &agentapi.ExecProcessRequest{
			ContainerId: id(container),
			ExecId:      "exec-" + strings.Join(args, "-"),
			Process:     mustJSON(p.t, proc),
			Stdio:       &agentapi.Stdio{Stdin: stdin, Stdout: true, Stderr: !tty, Terminal: tty},
		}
	}
}

// execAs is exec in container under the id of another.
func execAs(container, asID string, args []string) action {
	return func(p *testPod) (policy.Kind, any) {
		kind, req := exec(container, args, false, false)(p)
		req.(*agentapi.ExecProcessRequest).ContainerId = asID
		return kind, req
	}
}

// onContainer is a request of kind that names only container's id.
func onContainer(kind policy.Kind, container string) action {
	return func(p *testPod) (policy.Kind, any) {
		cid := id(container)
		switch kind {
		case policy.StartContainer, policy.ListProcesses, policy.PauseContainer, policy.ResumeContainer, policy.StatsContainer:
			return kind, &agentapi.ContainerRequest{ContainerId: cid}
		case policy.WaitProcess, policy.CloseStdin:
			return kind, &agentapi.ProcessRequest{ContainerId: cid}
		case policy.SignalProcess:
			return kind, &agentapi.SignalProcessRequest{ContainerId: cid, Signal: 15}
		case policy.RemoveContainer:
			return kind, &agentapi.RemoveContainerRequest{ContainerId: cid}
		case policy.ResizePty:
			return kind, &agentapi.ResizePtyRequest{ContainerId: cid, Width: 120, Height: 40}
		case policy.UpdateContainer:
			return kind, &agentapi.UpdateContainerRequest{ContainerId: cid, Resources: []byte(`{"memory":{"limit":268435456},"cpu":{"shares":512}}`)}
		case policy.WaitOOM:
			return kind, &agentapi.Empty{}
		case policy.GetReport:
			return kind, &agentapi.GetReportRequest{ReportData: make([]byte, 64)}
		}
		p.t.Fatalf("no request for %s", kind)
		return "", nil
	}
}

// share is a ShareVolume of a volume in the kubelet's atomic-writer layout
// with one key, plus whatever extra entries.
func share(kind, name string, content []byte, extra ...*agentapi.VolumeFile) action {
	return func(*testPod) (policy.Kind, any) {
		files := []*agentapi.VolumeFile{
			{Path: "..2026_12_07_16_00_00.000000001", Type: "dir", Mode: 0o755},
			{Path: "..2026_12_07_16_00_00.000000001/key", Type: "file", Mode: 0o644, Content: content},
			{Path: "..data", Type: "symlink", Target: "..2026_12_07_16_00_00.000000001"},
			{Path: "key", Type: "symlink", Target: "..data/key"},
		}
		return policy.ShareVolume, &agentapi.ShareVolumeRequest{Kind: kind, Name: name, Files: append(files, extra...)}
	}
}

// joinSandboxPID points the container's PID namespace at the sandbox's, as
// CRI does for a pod with shareProcessNamespace (NamespaceMode POD).
func joinSandboxPID(s *specs.Spec, _ *agentapi.Stdio) {
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			s.Linux.Namespaces[i].Path = "/proc/4242/ns/pid"
		}
	}
}

// subPath adds a directory subPath at dest: path inside the pod's volume
// kubernetes.io~<volume>.
func subPath(dest, volume, path string) func(*testPod, *agentapi.CreateContainerRequest) {
	return func(_ *testPod, r *agentapi.CreateContainerRequest) {
		r.SubPaths = append(r.SubPaths, &agentapi.SubPath{Destination: dest, Volume: kubelet + "/volumes/kubernetes.io~" + volume, Path: path})
	}
}

// forward is a port-forward to port on the pod's loopback.
func forward(port uint32) action {
	return func(*testPod) (policy.Kind, any) {
		return policy.PortForward, &agentapi.PortForwardRequest{Port: port}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Tampering with a spec.
func withSpec(f func(*specs.Spec)) func(*specs.Spec, *agentapi.Stdio) {
	return func(s *specs.Spec, _ *agentapi.Stdio) { f(s) }
}

func withStdio(f func(*agentapi.Stdio)) func(*specs.Spec, *agentapi.Stdio) {
	return func(_ *specs.Spec, st *agentapi.Stdio) { f(st) }
}

func annotation(key, value string) func(*specs.Spec, *agentapi.Stdio) {
	return withSpec(func(s *specs.Spec) { s.Annotations[key] = value })
}

func addEnv(entries ...string) func(*specs.Spec, *agentapi.Stdio) {
	return withSpec(func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, entries...) })
}

func mountAt(dest string) func(*specs.Spec) *specs.Mount {
	return func(s *specs.Spec) *specs.Mount {
		for i := range s.Mounts {
			if s.Mounts[i].Destination == dest {
				return &s.Mounts[i]
			}
		}
		return nil
	}
}

func withoutNamespace(t specs.LinuxNamespaceType) func(*specs.Spec, *agentapi.Stdio) {
	return withSpec(func(s *specs.Spec) {
		s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == t })
	})
}

// privileged turns a spec into what CRI writes for privileged: true.
var privileged = withSpec(func(s *specs.Spec) {
	s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: allCaps, Effective: allCaps, Permitted: allCaps}
	s.Linux.MaskedPaths, s.Linux.ReadonlyPaths, s.Linux.Seccomp = nil, nil, nil
	s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/sda", Type: "b", Major: 8}, {Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232}}
	s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	for _, dest := range []string{"/sys", "/sys/fs/cgroup"} {
		mountAt(dest)(s).Options = []string{"nosuid", "noexec", "nodev", "rw"}
	}
})

type decisionCase struct {
	name     string
	pod      string
	settings func(*generate.Settings)
	// before are requests that must be allowed first, in order.
	before []action
	do     action
	// want is "" for allowed, else the rule that denies.
	want string
}

// started is what precedes a request on a running container.
func started(containers ...string) []action {
	acts := []action{sandbox("")}
	for _, c := range containers {
		acts = append(acts, create(c), onContainer(policy.StartContainer, c))
	}
	return acts
}

func decisionCases() []decisionCase {
	cases := []decisionCase{
		// CreateSandbox.
		{name: "sandbox hostname", pod: "web", do: sandbox("web")},
		{name: "sandbox of another pod", pod: "web", do: sandbox("web-2"), want: "create_sandbox.hostname"},
		{name: "deployment pod hostname", pod: "api", do: sandbox("api-7c9d8f6b5-x2k9p")},
		{name: "deployment pod of another deployment", pod: "api", do: sandbox("apiserver-7c9d8f6b5-x2k9p"), want: "create_sandbox.hostname"},
		{name: "deployment hostname without the suffix", pod: "api", do: sandbox("api"), want: "create_sandbox.hostname"},
		{name: "host network pod on a node", pod: "node-agent", do: sandbox("worker-3")},

		// CreateContainer as CRI asks for it.
		{name: "nginx as CRI creates it", pod: "web", before: started(), do: create("nginx")},
		{name: "shipper as CRI creates it", pod: "web", before: started(), do: create("shipper")},

		// seccomp: the filter is pinned whole.
		{name: "seccomp rule making setuid and capset no-ops", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) {
			zero := uint(0)
			s.Linux.Seccomp.Syscalls = append(s.Linux.Seccomp.Syscalls, specs.LinuxSyscall{
				Names: []string{"setuid", "setgid", "setgroups", "capset"}, Action: specs.ActErrno, ErrnoRet: &zero,
			})
		})), want: "create_container.seccomp"},
		{name: "seccomp rule prepended", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) {
			zero := uint(0)
			s.Linux.Seccomp.Syscalls = append([]specs.LinuxSyscall{{Names: []string{"setresuid"}, Action: specs.ActErrno, ErrnoRet: &zero}}, s.Linux.Seccomp.Syscalls...)
		})), want: "create_container.seccomp"},
		{name: "seccomp filter on a container without one", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			zero := uint(0)
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"setuid"}, Action: specs.ActErrno, ErrnoRet: &zero}}}
		})), want: "create_container.seccomp"},
		{name: "seccomp default action log", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Linux.Seccomp.DefaultAction = specs.ActLog })), want: "create_container.seccomp"},
		{name: "seccomp dropped", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Linux.Seccomp = nil })), want: "create_container.seccomp"},

		// The effective environment: runc keeps the last value of a name.
		{name: "image ENV overridden by the pod's env", pod: "override", do: create("app")},
		{name: "image ENV overridden, and set again to the image's value", pod: "override", do: create("app", addEnv("NGINX_VERSION=1.27.0")), want: "create_container.env"},
		{name: "pod env before an image entry of the same name", pod: "web", do: create("nginx", addEnv("MODE=debug")), want: "create_container.env"},
		{name: "an image entry repeated before the pod's", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Process.Env = append([]string{"MODE=debug"}, s.Process.Env...)
		}))},
		{name: "Indexed Job", pod: "indexed", do: create("worker")},
		// The pod's hostname is a pattern, so HOSTNAME is too; containerd
		// always sets it.
		{name: "Indexed Job without HOSTNAME", pod: "indexed", do: create("worker", withSpec(func(s *specs.Spec) {
			s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, "HOSTNAME=") })
		})), want: "create_container.env_required"},
		{name: "Indexed Job, index not a number", pod: "indexed", do: create("worker", addEnv("JOB_COMPLETION_INDEX=$(id)")), want: "create_container.env"},
		{name: "interactive shell as CRI creates it", pod: "debug", before: started(), do: create("shell")},
		{name: "privileged node agent as CRI creates it", pod: "node-agent", before: started(), do: create("agent")},
		{name: "api with the image's user and directory", pod: "api", before: started(), do: create("api")},
		{name: "image by the normalized reference", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.image-name", "docker.io/library/nginx@"+digestNginx))},
		{name: "image by reference without the tag", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.image-name", "nginx@"+digestNginx))},
		{name: "fewer effective capabilities", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { s.Process.Capabilities.Effective = nil }))},
		{name: "shm as tmpfs", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			*mountAt("/dev/shm")(s) = specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}}
		}))},

		// CreateContainer tampered with.
		{name: "changed image digest", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.image-name", "nginx:1.27@"+digestOther)), want: "create_container.image"},
		// containerd 1.7 names the image by the first name the node
		// stores it under; the layers pin the content.
		{name: "image by a tag of its repository (containerd 1.7)", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.image-name", "nginx:1.27"))},
		{name: "image by a tag of another repository", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.image-name", "busybox:1.36")), want: "create_container.image"},
		{name: "same digest from another registry", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.image-name", "evil.example/library/nginx@"+digestNginx)), want: "create_container.image"},
		{name: "sidecar runs the web image", pod: "web", do: create("shipper", annotation("io.kubernetes.cri.image-name", "nginx:1.27@"+digestNginx)), want: "create_container.image"},
		{name: "sidecar runs the web image's layers", pod: "web", do: createWithLayers("shipper", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.Layers = p.layers("nginx")
		}), want: "create_container.layers"},
		{name: "top layer replaced", pod: "web", do: createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.Layers[len(r.Layers)-1] = p.layers("shipper")[0]
		}), want: "create_container.layers"},
		{name: "layer left out", pod: "web", do: createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.Layers = r.Layers[1:]
		}), want: "create_container.layers"},
		{name: "layer added on top", pod: "web", do: createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.Layers = append(r.Layers, p.layers("shipper")[0])
		}), want: "create_container.layers"},
		{name: "unverified rootfs instead of layers", pod: "web", do: createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.Layers, r.Rootfs = nil, unverifiedRootfs
		}), want: "create_container.layers"},
		{name: "layers with an unused rootfs beside", pod: "web", do: createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.Rootfs = unverifiedRootfs
		})},
		{name: "LD_PRELOAD", pod: "web", do: create("nginx", addEnv("LD_PRELOAD=/tmp/evil.so")), want: "create_container.env"},
		{name: "changed env value", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Process.Env = setEnv(s.Process.Env, "MODE=debug")
		})), want: "create_container.env"},
		{name: "changed PATH", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Process.Env = setEnv(s.Process.Env, "PATH=/tmp/bin:/usr/bin")
		})), want: "create_container.env"},
		{name: "env the policy sets dropped", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, "MODE=") })
		})), want: "create_container.env_required"},
		{name: "secret env with any value", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Process.Env = setEnv(s.Process.Env, "DB_PASSWORD=another value")
		}))},
		{name: "secret env dropped", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, "DB_PASSWORD=") })
		})), want: "create_container.env_required"},
		{name: "namespace from the downward API dropped", pod: "api", do: create("api", withSpec(func(s *specs.Spec) {
			s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool { return strings.HasPrefix(e, "POD_NAMESPACE=") })
		})), want: "create_container.env_required"},
		{name: "changed command", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { s.Process.Args = []string{"sh", "-c", "evil"} })), want: "create_container.args"},
		{name: "extra argument", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Process.Args = append(s.Process.Args, "/etc/shadow") })), want: "create_container.args"},
		{name: "changed working directory", pod: "api", do: create("api", withSpec(func(s *specs.Spec) { s.Process.Cwd = "/" })), want: "create_container.cwd"},
		{name: "sidecar as root", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Process.User.UID = 0 })), want: "create_container.user"},
		{name: "api as root", pod: "api", do: create("api", withSpec(func(s *specs.Spec) { s.Process.User = specs.User{} })), want: "create_container.user"},
		{name: "sidecar in the root group", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Process.User.AdditionalGids = append(s.Process.User.AdditionalGids, 0) })), want: "create_container.user"},
		{name: "added capability", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
			s.Process.Capabilities.Effective = append(s.Process.Capabilities.Effective, "CAP_SYS_ADMIN")
		})), want: "create_container.capabilities"},
		{name: "ambient capability", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { s.Process.Capabilities.Ambient = []string{"CAP_NET_RAW"} })), want: "create_container.capabilities"},
		{name: "ambient capability beyond the set", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { s.Process.Capabilities.Ambient = []string{"CAP_NET_ADMIN"} })), want: "create_container.capabilities"},
		{name: "privileged", pod: "web", do: create("nginx", privileged), want: "create_container.capabilities"},
		{name: "privileged sidecar", pod: "web", do: create("shipper", privileged), want: "create_container.capabilities"},
		{name: "privilege escalation", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Process.NoNewPrivileges = false })), want: "create_container.no_new_privileges"},
		{name: "writable root", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Root.Readonly = false })), want: "create_container.read_only_root"},
		{name: "host root mounted", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind", "rw"}})
		})), want: "create_container.mounts"},
		{name: "host path as the cache", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { mountAt("/var/cache/nginx")(s).Source = "/etc" })), want: "create_container.mounts"},
		{name: "another pod's volume", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			mountAt("/etc/nginx/conf.d")(s).Source = "/var/lib/kubelet/pods/ffffffff-9a27-4f3c-8a51-2d7e6c9b1f30/volumes/kubernetes.io~configmap/config"
		}))},
		{name: "secret volume in place of the config map", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			mountAt("/etc/nginx/conf.d")(s).Source = kubelet + "/volumes/kubernetes.io~secret/config"
		})), want: "create_container.mounts"},
		{name: "read-only config made writable", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			mountAt("/etc/nginx/conf.d")(s).Options = []string{"rbind", "rprivate", "rw"}
		})), want: "create_container.mounts"},
		{name: "service account token made writable", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			mountAt("/var/run/secrets/kubernetes.io/serviceaccount")(s).Options = []string{"rbind", "rprivate", "rw"}
		})), want: "create_container.mounts"},
		{name: "token mounted where the policy has none", pod: "debug", do: create("shell", withSpec(func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/var/run/secrets/kubernetes.io/serviceaccount", Type: "bind", Source: kubelet + "/volumes/kubernetes.io~projected/kube-api-access-8x2kq", Options: []string{"rbind", "ro"}})
		})), want: "create_container.mounts"},
		{name: "writable sysfs", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			mountAt("/sys")(s).Options = []string{"nosuid", "noexec", "nodev", "rw"}
		})), want: "create_container.mounts"},
		{name: "host PID namespace", pod: "web", do: create("nginx", withoutNamespace(specs.PIDNamespace)), want: "create_container.namespaces"},
		{name: "host IPC namespace", pod: "web", do: create("nginx", withoutNamespace(specs.IPCNamespace)), want: "create_container.namespaces"},
		{name: "host mount namespace", pod: "debug", do: create("shell", withoutNamespace(specs.MountNamespace)), want: "create_container.namespaces"},
		{name: "proc unmasked", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { s.Linux.MaskedPaths = nil })), want: "create_container.masked_paths"},
		{name: "proc/sys writable", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Linux.ReadonlyPaths = slices.DeleteFunc(s.Linux.ReadonlyPaths, func(p string) bool { return p == "/proc/sys" })
		})), want: "create_container.readonly_paths"},
		{name: "device", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/mem", Type: "c", Major: 1, Minor: 1}}
		})), want: "create_container.devices"},
		{name: "raw block volume", pod: "block", do: create("db")},
		{name: "block device where the pod has no volumeDevice", pod: "web", do: createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
			s := p.criSpec("nginx")
			major, minor := int64(7), int64(3)
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/xvda", Type: "b", Major: major, Minor: minor}}
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "mrw"})
			r.Spec = mustJSON(p.t, s)
			r.BlockVolumes = []*agentapi.BlockVolume{{Serial: "b0", ContainerPath: "/dev/xvda"}}
		}), want: "create_container.devices"},
		{name: "block volume at a second path", pod: "block", do: createWithLayers("db", func(p *testPod, r *agentapi.CreateContainerRequest) {
			r.BlockVolumes = append(r.BlockVolumes, &agentapi.BlockVolume{Serial: "b1", ContainerPath: "/dev/sdz"})
		}), want: "create_container.block_volumes"},
		{name: "block device without its volume", pod: "block", do: createWithLayers("db", func(_ *testPod, r *agentapi.CreateContainerRequest) {
			// runc would create the node with the host's numbers: some guest device
			r.BlockVolumes = nil
		}), want: "create_container.devices"},
		{name: "block volume as a character device", pod: "block", do: create("db", withSpec(func(s *specs.Spec) { s.Linux.Devices[0].Type = "c" })), want: "create_container.devices"},
		{name: "device rule beyond the block volume", pod: "block", do: create("db", withSpec(func(s *specs.Spec) {
			major, minor := int64(254), int64(0)
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "rw"})
		})), want: "create_container.devices"},
		{name: "block volume rule that allows every device", pod: "block", do: create("db", withSpec(func(s *specs.Spec) {
			s.Linux.Resources.Devices[1] = specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"}
		})), want: "create_container.devices"},
		{name: "privileged container's block volume where the pod has no volumeDevice", pod: "node-agent", do: createWithLayers("agent", func(p *testPod, r *agentapi.CreateContainerRequest) {
			s := p.criSpec("agent")
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/xvdz", Type: "b", Major: 7, Minor: 3})
			r.Spec = mustJSON(p.t, s)
			r.BlockVolumes = []*agentapi.BlockVolume{{Serial: "b0", ContainerPath: "/dev/xvdz"}}
		}), want: "create_container.block_volumes"},
		{name: "sysctl", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) {
			s.Linux.Sysctl = map[string]string{"kernel.core_pattern": "|/tmp/x"}
		})), want: "create_container.sysctls"},
		{name: "seccomp filter dropped", pod: "web", do: create("shipper", withSpec(func(s *specs.Spec) { s.Linux.Seccomp = nil })), want: "create_container.seccomp"},
		{name: "stdin not in the YAML", pod: "web", do: create("nginx", withStdio(func(s *agentapi.Stdio) { s.Stdin = true })), want: "create_container.stdio"},
		{name: "terminal not in the YAML", pod: "web", do: create("nginx", withSpec(func(s *specs.Spec) { s.Process.Terminal = true })), want: "create_container.stdio"},
		{name: "no logs when denied", pod: "web", settings: func(s *generate.Settings) {
			no := false
			s.Containers["nginx"] = generate.ContainerSettings{Logs: &no}
		}, do: create("nginx")}, // the agent discards the output
		{name: "unknown container", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.container-name", "miner")), want: "create_container.name"},
		{name: "another pod's container", pod: "web", do: func(p *testPod) (policy.Kind, any) {
			other := newTestPod(p.t, "debug", nil)
			return create("shell")(other)
		}, want: "create_container.name"},
		{name: "other namespace", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.sandbox-namespace", "default")), want: "create_container.namespace"},
		{name: "the sandbox itself", pod: "web", do: create("nginx", annotation("io.kubernetes.cri.container-type", "sandbox")), want: "create_container.type"},
		{name: "an id used twice", pod: "web", before: []action{create("nginx")}, do: createAs("shipper", id("nginx")), want: "gate"},
		{name: "privileged agent without privileges is fine", pod: "node-agent", do: create("agent", withSpec(func(s *specs.Spec) {
			s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: defaultCaps}
		}))},
		{name: "host PID pod with a PID namespace", pod: "node-agent", do: create("agent", withSpec(func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace})
		}))},
		{name: "node agent writes the host", pod: "node-agent", do: create("agent", withSpec(func(s *specs.Spec) {
			mountAt("/host")(s).Options = []string{"rbind", "rw"}
		})), want: "create_container.mounts"},
		{name: "node agent's host path elsewhere", pod: "node-agent", do: create("agent", withSpec(func(s *specs.Spec) {
			mountAt("/host")(s).Source = "/var/lib/kubelet"
		})), want: "create_container.mounts"},

		// ExecProcess.
		{name: "liveness probe", pod: "web", before: started("nginx"), do: exec("nginx", []string{"cat", "/tmp/healthy"}, false, false)},
		{name: "readiness probe", pod: "web", before: started("nginx"), do: exec("nginx", []string{"/bin/sh", "-c", "curl -fs localhost/ready"}, false, false)},
		{name: "pre-stop hook", pod: "web", before: started("nginx"), do: exec("nginx", []string{"/usr/sbin/nginx", "-s", "quit"}, false, false)},
		{name: "startup probe", pod: "api", before: started("api"), do: exec("api", []string{"/app/api", "healthcheck"}, false, false)},
		{name: "probe with other arguments", pod: "web", before: started("nginx"), do: exec("nginx", []string{"cat", "/etc/shadow"}, false, false), want: "exec_process.args"},
		{name: "a shell", pod: "web", before: started("nginx"), do: exec("nginx", []string{"sh"}, true, true), want: "exec_process.args"},
		{name: "probe of another container", pod: "web", before: started("nginx", "shipper"), do: exec("shipper", []string{"cat", "/tmp/healthy"}, false, false), want: "exec_process.args"},
		{name: "probe with stdin", pod: "web", before: started("nginx"), do: exec("nginx", []string{"cat", "/tmp/healthy"}, true, false), want: "exec_process.stdin"},
		{name: "probe with LD_PRELOAD", pod: "web", before: started("nginx"), do: exec("nginx", []string{"cat", "/tmp/healthy"}, false, false, func(p *specs.Process) {
			p.Env = append(p.Env, "LD_PRELOAD=/tmp/evil.so")
		}), want: "exec_process.env"},
		// containerd builds an exec's process from the container's, so
		// every variable the kubelet set for the container is there too,
		// with the value the container was created with: one whose value
		// only a pattern pins (from a Secret) may be neither dropped nor
		// changed.
		{name: "probe without the secret's variable", pod: "web", before: started("nginx"), do: exec("nginx", []string{"cat", "/tmp/healthy"}, false, false, func(p *specs.Process) {
			p.Env = slices.DeleteFunc(p.Env, func(e string) bool { return strings.HasPrefix(e, "DB_PASSWORD=") })
		}), want: "exec_process.env_required"},
		{name: "probe with another value of the secret's variable", pod: "web", before: started("nginx"), do: exec("nginx", []string{"cat", "/tmp/healthy"}, false, false, func(p *specs.Process) {
			p.Env = setEnv(p.Env, "DB_PASSWORD=another value")
		}), want: "exec_process.env_as_created"},
		{name: "exec as root in the sidecar", pod: "web", settings: func(s *generate.Settings) {
			s.Containers["shipper"] = generate.ContainerSettings{Exec: [][]string{{"ls", "/logs"}}}
		}, before: started("shipper"), do: exec("shipper", []string{"ls", "/logs"}, false, false, func(p *specs.Process) { p.User = specs.User{} }), want: "exec_process.user"},
		{name: "exec in the sidecar as allowed", pod: "web", settings: func(s *generate.Settings) {
			s.Containers["shipper"] = generate.ContainerSettings{Exec: [][]string{{"ls", "/logs"}}}
		}, before: started("shipper"), do: exec("shipper", []string{"ls", "/logs"}, false, false)},
		{name: "exec with more capabilities", pod: "web", settings: func(s *generate.Settings) {
			s.Containers["shipper"] = generate.ContainerSettings{Exec: [][]string{{"ls", "/logs"}}}
		}, before: started("shipper"), do: exec("shipper", []string{"ls", "/logs"}, false, false, func(p *specs.Process) {
			p.Capabilities.Effective = append(p.Capabilities.Effective, "CAP_SYS_PTRACE")
		}), want: "exec_process.capabilities"},
		{name: "exec escalating privileges", pod: "web", settings: func(s *generate.Settings) {
			s.Containers["shipper"] = generate.ContainerSettings{Exec: [][]string{{"ls", "/logs"}}}
		}, before: started("shipper"), do: exec("shipper", []string{"ls", "/logs"}, false, false, func(p *specs.Process) { p.NoNewPrivileges = false }), want: "exec_process.no_new_privileges"},
		{name: "interactive shell in the debug pod", pod: "debug", before: started("shell"), do: exec("shell", []string{"sh"}, true, true)},
		{name: "another command in the debug pod", pod: "debug", before: started("shell"), do: exec("shell", []string{"sh", "-c", "id"}, true, true), want: "exec_process.args"},
		{name: "interactive shell over a YAML TERM", pod: "debug-term", before: started("shell"), do: exec("shell", []string{"sh"}, true, true)},
		{name: "interactive shell keeping the YAML TERM, unlike containerd", pod: "debug-term", before: started("shell"),
			do: exec("shell", []string{"sh"}, true, true, func(p *specs.Process) { p.Env = setEnv(p.Env, "TERM=vt100") }), want: "exec_process.env_as_created"},
		{name: "exec without a terminal, TERM changed", pod: "debug-term", before: started("shell"),
			do: exec("shell", []string{"sh"}, true, false, func(p *specs.Process) { p.Env = setEnv(p.Env, "TERM=xterm") }), want: "exec_process.env"},
		{name: "exec before the container exists", pod: "web", before: started(), do: exec("nginx", []string{"cat", "/tmp/healthy"}, false, false), want: "exec_process.container"},
		{name: "exec after remove", pod: "web", before: append(started("nginx"), onContainer(policy.RemoveContainer, "nginx")),
			do: exec("nginx", []string{"cat", "/tmp/healthy"}, false, false), want: "exec_process.container"},
		{name: "exec in a container whose create was denied", pod: "web", before: []action{sandbox("")},
			do: func(p *testPod) (policy.Kind, any) {
				kind, req := create("nginx", addEnv("LD_PRELOAD=/x.so"))(p)
				if err := p.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req); err == nil {
					p.t.Fatal("tampered create allowed")
				}
				return exec("nginx", []string{"cat", "/tmp/healthy"}, false, false)(p)
			}, want: "exec_process.container"},
		{name: "exec after the sidecar's id was reused for nginx", pod: "web", before: append(started("shipper"), onContainer(policy.RemoveContainer, "shipper"), createAs("nginx", id("shipper"))),
			do: execAs("nginx", id("shipper"), []string{"cat", "/tmp/healthy"})},
		{name: "sidecar's exec after its id was reused for nginx", pod: "web", settings: func(s *generate.Settings) {
			s.Containers["shipper"] = generate.ContainerSettings{Exec: [][]string{{"ls", "/logs"}}}
		}, before: append(started("shipper"), onContainer(policy.RemoveContainer, "shipper"), createAs("nginx", id("shipper"))),
			do: exec("shipper", []string{"ls", "/logs"}, false, false), want: "exec_process.args"},
	}

	// The requests that name only a container, each allowed on a created
	// container and denied before it exists and after its removal.
	for _, kind := range []policy.Kind{
		policy.StartContainer, policy.SignalProcess, policy.WaitProcess, policy.CloseStdin,
		policy.ListProcesses, policy.ResizePty, policy.PauseContainer, policy.ResumeContainer,
		policy.UpdateContainer, policy.StatsContainer, policy.RemoveContainer,
	} {
		prefix := snake(kind)
		cases = append(cases,
			decisionCase{name: string(kind) + " on a created container", pod: "web", before: []action{sandbox(""), create("nginx")}, do: onContainer(kind, "nginx")},
			decisionCase{name: string(kind) + " before create", pod: "web", before: []action{sandbox("")}, do: onContainer(kind, "nginx"), want: prefix + ".container"},
			decisionCase{name: string(kind) + " after remove", pod: "web", before: []action{sandbox(""), create("nginx"), onContainer(policy.RemoveContainer, "nginx")}, do: onContainer(kind, "nginx"), want: prefix + ".container"},
			decisionCase{name: string(kind) + " when the settings deny it", pod: "api", settings: func(s *generate.Settings) { s.Requests[kind] = false },
				before: []action{sandbox(""), create("api")}, do: onContainer(kind, "api"), want: prefix + ".request"},
		)
	}
	cases = append(cases,
		decisionCase{name: "WaitOOM", pod: "web", before: []action{sandbox("")}, do: onContainer(policy.WaitOOM, "")},
		decisionCase{name: "WaitOOM when the settings deny it", pod: "web", settings: func(s *generate.Settings) { s.Requests[policy.WaitOOM] = false },
			do: onContainer(policy.WaitOOM, ""), want: "wait_oom.request"},
		decisionCase{name: "CreateContainer in the pod's shared PID namespace", pod: "subpaths", before: []action{sandbox("")},
			do: create("db", joinSandboxPID)},
		decisionCase{name: "CreateContainer asking for a shared PID namespace the pod does not have", pod: "web", before: []action{sandbox("")},
			do: create("nginx", joinSandboxPID), want: "create_container.namespaces"},
		decisionCase{name: "CreateSandbox with the pod's sysctls", pod: "subpaths", do: sandbox("")},
		decisionCase{name: "CreateSandbox without the pod's sysctls", pod: "subpaths", do: sandboxWithSysctls(nil), want: "create_sandbox.sysctls"},
		decisionCase{name: "CreateSandbox with containerd's sysctls beside the pod's", pod: "subpaths",
			do: sandboxWithSysctls(map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1", "net.ipv4.ping_group_range": "0 2147483647"})},
		decisionCase{name: "CreateSandbox with containerd's sysctls in a pod without its own", pod: "web",
			do: sandboxWithSysctls(map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"})},
		decisionCase{name: "CreateSandbox overriding the pod's sysctl with containerd's value", pod: "subpaths",
			do: sandboxWithSysctls(map[string]string{"net.ipv4.ip_unprivileged_port_start": "1024", "kernel.shm_rmid_forced": "1"}), want: "create_sandbox.sysctls"},
		decisionCase{name: "CreateSandbox with a sysctl the pod does not set", pod: "web",
			do: sandboxWithSysctls(map[string]string{"net.ipv4.ip_forward": "1"}), want: "create_sandbox.sysctls"},
		decisionCase{name: "CreateSandbox with a sysctl name that is no name", pod: "subpaths",
			do: sandboxWithSysctls(map[string]string{"net/../../x": "1"}), want: enforce.RuleInput},
		decisionCase{name: "CreateContainer with a directory subPath", pod: "subpaths", before: []action{sandbox("")},
			do: createWithLayers("db", subPath("/var/lib/db", "empty-dir/data", "db/data"))},
		decisionCase{name: "CreateContainer with a subPath copied as a file", pod: "subpaths", before: []action{sandbox("")}, do: create("db")},
		decisionCase{name: "CreateContainer with another subPath", pod: "subpaths", before: []action{sandbox("")},
			do: createWithLayers("db", subPath("/var/lib/db", "empty-dir/data", "db")), want: "create_container.mounts"},
		decisionCase{name: "CreateContainer with a subPath of another volume", pod: "subpaths", before: []action{sandbox("")},
			do: createWithLayers("db", subPath("/var/lib/db", "empty-dir/other", "db/data")), want: "create_container.mounts"},
		decisionCase{name: "CreateContainer with a subPath stepping up", pod: "subpaths", before: []action{sandbox("")},
			do: createWithLayers("db", subPath("/var/lib/db", "empty-dir/data", "db/../../x")), want: enforce.RuleInput},
		decisionCase{name: "CreateContainer with a subPath for a mount that has none", pod: "web", before: []action{sandbox("")},
			do: createWithLayers("nginx", subPath("/var/cache/nginx", "empty-dir/cache", "x")), want: "create_container.mounts"},
		decisionCase{name: "CreateContainer with a subPath where no mount is", pod: "subpaths", before: []action{sandbox("")},
			do: createWithLayers("db", subPath("/srv", "empty-dir/data", "db/data")), want: enforce.RuleInput},
		decisionCase{name: "ShareVolume of the pod's ConfigMap volume", pod: "web", do: share("configmap", "config", []byte("worker_processes 2;\n"))},
		decisionCase{name: "ShareVolume of the service-account token", pod: "web", do: share("projected", "kube-api-access-x7k2q", []byte("eyJhbGciOi"))},
		decisionCase{name: "ShareVolume of the token in a pod without one", pod: "debug", do: share("projected", "kube-api-access-x7k2q", []byte("eyJhbGciOi")), want: "share_volume.volume"},
		decisionCase{name: "ShareVolume under another kind", pod: "web", do: share("secret", "config", []byte("x")), want: "share_volume.volume"},
		decisionCase{name: "ShareVolume of a volume the pod does not have", pod: "web", do: share("configmap", "other", []byte("x")), want: "share_volume.volume"},
		decisionCase{name: "ShareVolume of the emptyDir's name", pod: "web", do: share("configmap", "cache", []byte("x")), want: "share_volume.volume"},
		decisionCase{name: "ShareVolume larger than a ConfigMap can be", pod: "web", do: share("configmap", "config", make([]byte, 1<<20+1)), want: "share_volume.size"},
		decisionCase{name: "ShareVolume with a symlink out of the volume", pod: "web",
			do: share("configmap", "config", []byte("x"), &agentapi.VolumeFile{Path: "passwd", Type: "symlink", Target: "../../../etc/passwd"}), want: enforce.RuleInput},
		decisionCase{name: "ShareVolume with an absolute symlink", pod: "web",
			do: share("configmap", "config", []byte("x"), &agentapi.VolumeFile{Path: "passwd", Type: "symlink", Target: "/etc/passwd"}), want: enforce.RuleInput},
		decisionCase{name: "ShareVolume with a FIFO", pod: "web",
			do: share("configmap", "config", []byte("x"), &agentapi.VolumeFile{Path: "pipe", Type: "fifo"}), want: enforce.RuleInput},
		decisionCase{name: "ShareVolume with a file in a directory not given", pod: "web",
			do: share("configmap", "config", []byte("x"), &agentapi.VolumeFile{Path: "sub/file", Type: "file"}), want: enforce.RuleInput},
		decisionCase{name: "PortForward to a declared TCP port", pod: "web", before: []action{sandbox("")}, do: forward(80)},
		decisionCase{name: "PortForward to an undeclared port", pod: "web", before: []action{sandbox("")}, do: forward(22), want: "port_forward.port"},
		decisionCase{name: "PortForward to a port declared for UDP", pod: "web", do: forward(9125), want: "port_forward.port"},
		decisionCase{name: "PortForward in a pod that declares no port", pod: "debug", do: forward(80), want: "port_forward.port"},
		decisionCase{name: "PortForward to port 0", pod: "web", do: forward(0), want: enforce.RuleInput},
		decisionCase{name: "PortForward to a port beyond 65535", pod: "web", do: forward(65536 + 80), want: enforce.RuleInput},
		decisionCase{name: "PortForward when the settings close the declared ports", pod: "web",
			settings: func(s *generate.Settings) { s.PortForward.DeclaredPorts = new(bool) }, do: forward(80), want: "port_forward.port"},
		decisionCase{name: "PortForward to a port the settings open", pod: "debug",
			settings: func(s *generate.Settings) { s.PortForward.Ports = []int{6060} }, do: forward(6060)},
		decisionCase{name: "GetReport", pod: "web", before: []action{sandbox("")}, do: onContainer(policy.GetReport, "")},
		decisionCase{name: "GetReport when the settings deny it", pod: "web", settings: func(s *generate.Settings) { s.Requests[policy.GetReport] = false },
			do: onContainer(policy.GetReport, ""), want: "get_report.request"},
		decisionCase{name: "resize the debug shell's terminal", pod: "debug", before: started("shell"), do: onContainer(policy.ResizePty, "shell")},
		decisionCase{name: "close the debug shell's stdin", pod: "debug", before: started("shell"), do: onContainer(policy.CloseStdin, "shell")},
	)
	return append(cases, networkCases()...)
}

// bridgeNetwork is what the shim sends for a pod on the bridge CNI plugin
// (containerd's default 10.88.0.0/16 network): eth0 with the pod's address,
// a default route via the bridge and the subnet on the link.
func bridgeNetwork() *agentapi.ConfigureNetworkRequest {
	return &agentapi.ConfigureNetworkRequest{
		Interfaces: []*agentapi.NetworkInterface{{Name: "eth0", Mac: "0a:58:0a:58:00:05", Mtu: 1500, Addresses: []string{"10.88.0.5/16"}}},
		Routes: []*agentapi.NetworkRoute{
			{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"},
			{Destination: "10.88.0.0/16", Device: "eth0", LinkScope: true},
		},
	}
}

// calicoNetwork is what the shim sends for a pod on Calico: a /32 address,
// the gateway 169.254.1.1 on the link and the host side's fixed MAC as a
// permanent neighbour (written in upper case, as some tools print it).
func calicoNetwork() *agentapi.ConfigureNetworkRequest {
	return &agentapi.ConfigureNetworkRequest{
		Interfaces: []*agentapi.NetworkInterface{{Name: "eth0", Mac: "a6:3f:1c:22:9b:40", Mtu: 1450, Addresses: []string{"192.168.77.10/32"}}},
		Routes: []*agentapi.NetworkRoute{
			{Destination: "169.254.1.1/32", Device: "eth0", LinkScope: true},
			{Destination: "0.0.0.0/0", Gateway: "169.254.1.1", Device: "eth0"},
		},
		Neighbors: []*agentapi.NetworkNeighbor{{Ip: "169.254.1.1", Mac: "EE:EE:EE:EE:EE:EE", Device: "eth0"}},
	}
}

// dualStackNetwork is bridgeNetwork with an IPv6 address and default route,
// the IPv4 one preferring the pod's own address as its source.
func dualStackNetwork() *agentapi.ConfigureNetworkRequest {
	r := bridgeNetwork()
	r.Interfaces[0].Addresses = append(r.Interfaces[0].Addresses, "FD00:10:88::5/64")
	r.Routes[0].Source = "10.88.0.5"
	r.Routes = append(r.Routes, &agentapi.NetworkRoute{Destination: "::/0", Gateway: "fd00:10:88::1", Source: "fd00:10:88::5", Device: "eth0"})
	return r
}

// configureNetwork sends req (built afresh for each case), changed by tamper.
func configureNetwork(req func() *agentapi.ConfigureNetworkRequest, tamper ...func(*agentapi.ConfigureNetworkRequest)) action {
	return func(*testPod) (policy.Kind, any) {
		r := req()
		for _, f := range tamper {
			f(r)
		}
		return policy.ConfigureNetwork, r
	}
}

func networkCases() []decisionCase {
	nic := func(f func(*agentapi.NetworkInterface)) func(*agentapi.ConfigureNetworkRequest) {
		return func(r *agentapi.ConfigureNetworkRequest) { f(r.Interfaces[0]) }
	}
	addRoute := func(rt *agentapi.NetworkRoute) func(*agentapi.ConfigureNetworkRequest) {
		return func(r *agentapi.ConfigureNetworkRequest) { r.Routes = append(r.Routes, rt) }
	}
	addNeighbor := func(nb *agentapi.NetworkNeighbor) func(*agentapi.ConfigureNetworkRequest) {
		return func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors = append(r.Neighbors, nb) }
	}
	secondNIC := func(r *agentapi.ConfigureNetworkRequest) {
		r.Interfaces = append(r.Interfaces, &agentapi.NetworkInterface{Name: "eth1", Mac: "0a:58:0a:59:00:05", Mtu: 1500, Addresses: []string{"10.89.0.5/16"}})
	}
	cases := []decisionCase{
		// As CNI plugins set pods up.
		{name: "bridge CNI network", pod: "web", before: []action{sandbox("")}, do: configureNetwork(bridgeNetwork)},
		{name: "dual-stack network", pod: "web", before: []action{sandbox("")}, do: configureNetwork(dualStackNetwork)},
		{name: "Calico network through 169.254.1.1", pod: "api", before: []action{sandbox("")}, do: configureNetwork(calicoNetwork)},
		{name: "network without routes", pod: "web", do: configureNetwork(bridgeNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Routes = nil })},
		{name: "jumbo frames", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Mtu = 9000 }))},
		{name: "two interfaces where the settings allow them", pod: "web", settings: func(s *generate.Settings) { s.Network.MaxInterfaces = 2 },
			do: configureNetwork(bridgeNetwork, secondNIC, addRoute(&agentapi.NetworkRoute{Destination: "10.89.0.0/16", Device: "eth1", LinkScope: true}))},

		// Interfaces.
		{name: "network when the settings deny it", pod: "web", settings: func(s *generate.Settings) { s.Network.Allow = ptr(false) },
			before: []action{sandbox("")}, do: configureNetwork(bridgeNetwork), want: "configure_network.request"},
		{name: "loopback reconfigured", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Name = "lo" })), want: "configure_network.interface_name"},
		{name: "lo even where the pattern allows it", pod: "web", settings: func(s *generate.Settings) { s.Network.InterfacePattern = ".+" },
			do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Name = "lo" })), want: "configure_network.interface_name"},
		{name: "interface name off the pattern", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Name = "ens3" })), want: "configure_network.interface_name"},
		{name: "two interfaces", pod: "web", do: configureNetwork(bridgeNetwork, secondNIC), want: "configure_network.interface_count"},
		{name: "multicast MAC", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Mac = "01:00:5e:00:00:fb" })), want: "configure_network.interface_mac"},
		{name: "all-zero MAC", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Mac = "00:00:00:00:00:00" })), want: "configure_network.interface_mac"},
		{name: "MTU 0", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Mtu = 0 })), want: "configure_network.interface_mtu"},
		{name: "MTU 70000", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Mtu = 70000 })), want: "configure_network.interface_mtu"},
		{name: "loopback address", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Addresses = []string{"127.0.0.2/8"} })), want: "configure_network.interface_address"},
		{name: "IPv6 loopback address beside the pod's", pod: "web", do: configureNetwork(dualStackNetwork, nic(func(n *agentapi.NetworkInterface) { n.Addresses = append(n.Addresses, "::1/128") })), want: "configure_network.interface_address"},
		{name: "unspecified address", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Addresses = []string{"0.0.0.0/0"} })), want: "configure_network.interface_address"},
		{name: "multicast address", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Addresses = []string{"ff02::1/128"} })), want: "configure_network.interface_address"},
		{name: "address in a prefix the settings forbid", pod: "web", settings: func(s *generate.Settings) { s.Network.ForbiddenPrefixes = []string{"10.88.0.0/16"} },
			do: configureNetwork(bridgeNetwork), want: "configure_network.interface_address"},

		// Routes.
		{name: "route through lo", pod: "web", do: configureNetwork(bridgeNetwork, addRoute(&agentapi.NetworkRoute{Destination: "10.96.0.0/12", Device: "lo", LinkScope: true})), want: "configure_network.route_device"},
		{name: "route through an unknown device", pod: "web", do: configureNetwork(bridgeNetwork, addRoute(&agentapi.NetworkRoute{Destination: "10.96.0.0/12", Gateway: "10.88.0.1", Device: "eth1"})), want: "configure_network.route_device"},
		{name: "route to loopback", pod: "web", do: configureNetwork(bridgeNetwork, addRoute(&agentapi.NetworkRoute{Destination: "127.0.0.0/8", Gateway: "10.88.0.1", Device: "eth0"})), want: "configure_network.route_destination"},
		{name: "route to a loopback host", pod: "web", do: configureNetwork(dualStackNetwork, addRoute(&agentapi.NetworkRoute{Destination: "::1/128", Device: "eth0", LinkScope: true})), want: "configure_network.route_destination"},
		{name: "route to multicast", pod: "web", do: configureNetwork(bridgeNetwork, addRoute(&agentapi.NetworkRoute{Destination: "224.0.0.0/4", Device: "eth0", LinkScope: true})), want: "configure_network.route_destination"},
		{name: "gateway on loopback", pod: "web", do: configureNetwork(bridgeNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Gateway = "127.0.0.1" }), want: "configure_network.route_gateway"},
		{name: "source not the pod's address", pod: "web", do: configureNetwork(bridgeNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Source = "10.88.0.6" }), want: "configure_network.route_source"},
		{name: "source another interface's address family", pod: "web", do: configureNetwork(dualStackNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Routes[2].Source = "fd00:10:88::6" }), want: "configure_network.route_source"},

		// Neighbours.
		{name: "neighbour on an unknown device", pod: "api", do: configureNetwork(calicoNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Device = "eth1" }), want: "configure_network.neighbor_device"},
		{name: "neighbour on lo", pod: "api", do: configureNetwork(calicoNetwork, addNeighbor(&agentapi.NetworkNeighbor{Ip: "10.0.0.1", Mac: "ee:ee:ee:ee:ee:ee", Device: "lo"})), want: "configure_network.neighbor_device"},
		{name: "multicast neighbour", pod: "api", do: configureNetwork(calicoNetwork, addNeighbor(&agentapi.NetworkNeighbor{Ip: "224.0.0.251", Mac: "ee:ee:ee:ee:ee:ee", Device: "eth0"})), want: "configure_network.neighbor_ip"},
		{name: "neighbour with the broadcast MAC", pod: "api", do: configureNetwork(calicoNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Neighbors[0].Mac = "ff:ff:ff:ff:ff:ff" }), want: "configure_network.neighbor_mac"},

		// Requests the gate cannot read.
		{name: "address without a prefix length", pod: "web", do: configureNetwork(bridgeNetwork, nic(func(n *agentapi.NetworkInterface) { n.Addresses = []string{"10.88.0.5"} })), want: enforce.RuleInput},
		{name: "route destination with host bits", pod: "web", do: configureNetwork(bridgeNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Routes[1].Destination = "10.88.0.5/16" }), want: enforce.RuleInput},
		{name: "IPv4-mapped gateway", pod: "web", do: configureNetwork(bridgeNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Routes[0].Gateway = "::ffff:127.0.0.1" }), want: enforce.RuleInput},
	}
	return cases
}

func ptr[T any](v T) *T { return &v }

// snake is the rule prefix of a kind: StartContainer -> start_container.
func snake(k policy.Kind) string {
	var b strings.Builder
	for i, r := range string(k) {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func TestDecisions(t *testing.T) {
	cases := decisionCases()
	kinds := map[policy.Kind][2]int{} // allowed, denied
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPod(t, tc.pod, tc.settings)
			ctx := context.Background()
			for i, a := range tc.before {
				kind, req := a(p)
				if err := p.gate.Authorize(ctx, enforce.ServicePrefix+string(kind), req); err != nil {
					t.Fatalf("step %d (%s): %v", i+1, kind, err)
				}
				// The agent did what was allowed; the gate learns it.
				p.gate.Done(enforce.ServicePrefix+string(kind), req, nil)
			}
			kind, req := tc.do(p)
			err := p.gate.Authorize(ctx, enforce.ServicePrefix+string(kind), req)
			n := kinds[kind]
			if tc.want == "" {
				if err != nil {
					t.Fatalf("%s denied: %v", kind, err)
				}
				n[0]++
			} else {
				var d *enforce.Denial
				if !errors.As(err, &d) {
					t.Fatalf("%s: %v, want a denial by %s", kind, err, tc.want)
				}
				if d.Rule != tc.want {
					t.Fatalf("%s denied by %s, want %s: %v", kind, d.Rule, tc.want, err)
				}
				if !strings.HasPrefix(err.Error(), "policy denies "+string(kind)+": rule "+tc.want+": ") || d.Reason == "" {
					t.Fatalf("denial text %q", err)
				}
				n[1]++
			}
			kinds[kind] = n
		})
	}
	if len(cases) < 80 {
		t.Errorf("%d cases, want at least 80", len(cases))
	}
	for _, k := range policy.Kinds {
		if n := kinds[k]; n[0] == 0 || n[1] == 0 {
			t.Errorf("%s: %d allowed and %d denied cases; want both", k, n[0], n[1])
		}
	}
	t.Logf("%d cases", len(cases))
}

// TestDecisionDenialText checks the message a user reads in crictl for the
// commonest tampering: it names the request, the check and both values.
func TestDecisionDenialText(t *testing.T) {
	p := newTestPod(t, "web", nil)
	kind, req := create("nginx", withSpec(func(s *specs.Spec) { s.Process.Args = []string{"sh", "-c", "evil"} }))(p)
	err := p.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req)
	want := `policy denies CreateContainer: rule create_container.args: command ["sh","-c","evil"] is not the policy's ["/docker-entrypoint.sh","nginx","-g","daemon off;"]`
	if err == nil || err.Error() != want {
		t.Fatalf("%v\nwant %s", err, want)
	}
	kind, req = create("nginx", addEnv("LD_PRELOAD=/tmp/evil.so"))(p)
	err = p.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req)
	if want := `rule create_container.env: environment variable "LD_PRELOAD=/tmp/evil.so" is not allowed by the policy`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("%v\nwant %s", err, want)
	}
	kind, req = createWithLayers("nginx", func(p *testPod, r *agentapi.CreateContainerRequest) {
		r.Layers[0] = p.layers("shipper")[0]
	})(p)
	err = p.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req)
	nginx, shipper := p.layers("nginx")[0].GetRootHash(), p.layers("shipper")[0].GetRootHash()
	want = `policy denies CreateContainer: rule create_container.layers: container "nginx": layer 0 has root hash ` + shipper[:12] + `..., the policy pins ` + nginx[:12] + `...`
	if err == nil || err.Error() != want {
		t.Fatalf("%v\nwant %s", err, want)
	}
	kind, req = createWithLayers("nginx", func(_ *testPod, r *agentapi.CreateContainerRequest) {
		r.Layers, r.Rootfs = nil, unverifiedRootfs
	})(p)
	err = p.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req)
	if want := "policy denies CreateContainer: rule create_container.layers: the host offered an unverified rootfs"; err == nil || err.Error() != want {
		t.Fatalf("%v\nwant %s", err, want)
	}
	pb := newTestPod(t, "block", nil)
	kind, req = createWithLayers("db", func(_ *testPod, r *agentapi.CreateContainerRequest) {
		r.BlockVolumes = append(r.BlockVolumes, &agentapi.BlockVolume{Serial: "b1", ContainerPath: "/dev/sdz"})
	})(pb)
	err = pb.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req)
	want = `policy denies CreateContainer: rule create_container.block_volumes: block volume at "/dev/sdz" is not one the policy allows (block volumes at ["/dev/xvda"])`
	if err == nil || err.Error() != want {
		t.Fatalf("%v\nwant %s", err, want)
	}
	kind, req = configureNetwork(bridgeNetwork, func(r *agentapi.ConfigureNetworkRequest) { r.Interfaces[0].Addresses = []string{"127.0.0.2/8"} })(p)
	err = p.gate.Authorize(context.Background(), enforce.ServicePrefix+string(kind), req)
	want = `policy denies ConfigureNetwork: rule configure_network.interface_address: interface "eth0" has address 127.0.0.2/8, inside the forbidden prefix 127.0.0.0/8`
	if err == nil || err.Error() != want {
		t.Fatalf("%v\nwant %s", err, want)
	}
}

// TestDecisionWriteBack: a generated policy gives the host back the guest
// copy of the termination-message file, and nothing else, of a container
// whose output it may read; of one whose output is discarded, nothing.
func TestDecisionWriteBack(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		logs bool
		want []string
	}{
		{name: "logs", logs: true, want: []string{"/dev/termination-log"}},
		{name: "output discarded", logs: false, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPod(t, "web", func(s *generate.Settings) {
				s.Containers["nginx"] = generate.ContainerSettings{Logs: &tc.logs}
			})
			for _, a := range []action{sandbox(""), create("nginx")} {
				kind, req := a(p)
				if err := p.gate.Authorize(ctx, enforce.ServicePrefix+string(kind), req); err != nil {
					t.Fatalf("%s: %v", kind, err)
				}
				p.gate.Done(enforce.ServicePrefix+string(kind), req, nil)
			}
			if got := p.gate.WriteBack(id("nginx")); !slices.Equal(got, tc.want) {
				t.Errorf("write back %q, want %q", got, tc.want)
			}
		})
	}
}
