package generate

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cap"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/contrast-vm/contrast/policy"
)

// TestDefaultsMatchContainerd holds the generator's copies of containerd's
// defaults to the containerd this module builds against.
func TestDefaultsMatchContainerd(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	spec, err := oci.GenerateSpecWithPlatform(ctx, nil, "linux/amd64", &containers.Container{ID: "c"}, oci.WithDefaultPathEnv)
	if err != nil {
		t.Fatal(err)
	}
	caps := spec.Process.Capabilities
	for name, set := range map[string][]string{"bounding": caps.Bounding, "effective": caps.Effective, "permitted": caps.Permitted} {
		if !slices.Equal(sortedCaps(set), sortedCaps(defaultCapabilities)) {
			t.Errorf("containerd's default %s capabilities %v; the generator has %v", name, set, defaultCapabilities)
		}
	}
	if !slices.Equal(spec.Process.Env, []string{ociDefaultPath}) {
		t.Errorf("containerd's default env %q; the generator has %q", spec.Process.Env, ociDefaultPath)
	}
	if spec.Process.Cwd != "/" || spec.Process.User.UID != 0 || spec.Process.User.GID != 0 {
		t.Errorf("containerd's default cwd %q user %+v", spec.Process.Cwd, spec.Process.User)
	}
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name, container string
		want            []string
	}{
		{"image entrypoint and cmd", "{name: c, image: 'nginx:1.27'}", []string{"/docker-entrypoint.sh", "nginx", "-g", "daemon off;"}},
		{"command drops cmd", "{name: c, image: 'nginx:1.27', command: [nginx]}", []string{"nginx"}},
		{"args replace cmd", "{name: c, image: 'nginx:1.27', args: [-v]}", []string{"/docker-entrypoint.sh", "-v"}},
		{"command and args", "{name: c, image: 'nginx:1.27', command: [a], args: [b, c]}", []string{"a", "b", "c"}},
		{"cmd only image", "{name: c, image: busybox}", []string{"sh"}},
		{"args with cmd-only image", "{name: c, image: busybox, args: [ls]}", []string{"ls"}},
		{"expansion", "{name: c, image: busybox, command: [echo, '$(A)', '$$(A)', '$(NONE)', '$(A', '$'], env: [{name: A, value: x}]}",
			[]string{"echo", "x", "$(A)", "$(NONE)", "$(A", "$"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := generate(t, podYAML("containers: ["+tc.container+"]"), Options{})
			if got := onlyContainer(t, res, "c").Args; !slices.Equal(got, tc.want) {
				t.Errorf("args %q; want %q", got, tc.want)
			}
		})
	}
	// An entrypoint of [""] means none.
	res, _ := generate(t, podYAML("containers: [{name: c, image: x}]"), Options{Images: StaticImages(map[string]Image{
		"x": {Ref: "docker.io/library/x@" + digestOf(5), Config: ocispecConfig([]string{""}, []string{"run"})},
	})})
	if got := onlyContainer(t, res, "c").Args; !slices.Equal(got, []string{"run"}) {
		t.Errorf("entrypoint [\"\"]: args %q", got)
	}
}

func TestEnv(t *testing.T) {
	const links = "KUBERNETES_SERVICE_HOST=10.96.0.1"
	for _, tc := range []struct {
		name, spec  string
		exact       []string // entries that must be in Env
		absent      []string // entries that must not be in Env
		allowed     []string // entries the patterns must allow
		refused     []string // entries neither Env nor patterns allow
		required    []string // names EnvRequiredNames must list, no more
		warnings    []string
		serviceLink bool
	}{
		{
			name:    "image env, default path, hostname",
			spec:    "containers: [{name: c, image: busybox}]",
			exact:   []string{ociDefaultPath, "HOSTNAME=p"},
			allowed: []string{links, "KUBERNETES_PORT=tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO=tcp", "KUBERNETES_SERVICE_PORT_HTTPS=443", "WEB_SERVICE_HOST=10.0.0.3", "WEB_PORT_80_TCP_ADDR=fd00::1", "WEB_PORT=tcp://[fd00::1]:80"},
			refused: []string{"LD_PRELOAD=/x.so", "HOSTNAME=q", "PATH=/tmp", "WEB_SERVICE_HOST=evil host", "WEB_PORT=http://x"},
		},
		{
			// containerd adds TERM=xterm for a tty; an image or YAML TERM
			// replaces it.
			name:    "tty sets TERM",
			spec:    "containers: [{name: c, image: busybox, tty: true, stdin: true}]",
			exact:   []string{"TERM=xterm", ociDefaultPath},
			refused: []string{"TERM=evil"},
		},
		{
			name:    "yaml TERM replaces a tty's",
			spec:    "containers: [{name: c, image: busybox, tty: true, env: [{name: TERM, value: vt100}]}]",
			exact:   []string{"TERM=vt100"},
			absent:  []string{"TERM=xterm"},
			refused: []string{"TERM=xterm"},
		},
		{
			name:    "no TERM without a tty",
			spec:    "containers: [{name: c, image: busybox}]",
			absent:  []string{"TERM=xterm"},
			refused: []string{"TERM=xterm"},
		},
		{
			name:   "image path replaces the default",
			spec:   "containers: [{name: c, image: 'nginx:1.27'}]",
			exact:  []string{"PATH=/usr/local/sbin:/usr/bin", "NGINX_VERSION=1.27.0"},
			absent: []string{ociDefaultPath},
		},
		{
			name:     "yaml env: values, expansion, empty, duplicates of image names",
			spec:     "containers:\n- name: c\n  image: 'nginx:1.27'\n  env:\n  - {name: A, value: one}\n  - {name: B, value: '$(A)-two'}\n  - {name: C}\n  - {name: NGINX_VERSION, value: mine}\n  - {name: PATH, value: /bin}\n  - {name: D, value: '$(KUBERNETES_SERVICE_HOST):1'}\n",
			exact:    []string{"A=one", "B=one-two", "C=", "NGINX_VERSION=mine", "PATH=/bin"},
			absent:   []string{"PATH=/usr/local/sbin:/usr/bin", "NGINX_VERSION=1.27.0"},
			allowed:  []string{"D=10.96.0.1:1", "D=$(KUBERNETES_SERVICE_HOST):1"},
			refused:  []string{"D=evil:1"},
			required: []string{"D"},
		},
		{
			name:     "valueFrom",
			spec:     "containers:\n- name: c\n  image: busybox\n  env:\n  - {name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}\n  - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}\n  - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n  - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n  - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n  - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory}}}\n",
			exact:    []string{"NS=ns", "NAME=p"},
			allowed:  []string{"S=anything\nmultiline", "IP=10.1.2.3", "MEM=536870912", "APP=whatever"},
			refused:  []string{"IP=not an ip", "MEM=lots", "NS=other"},
			required: []string{"APP", "IP", "MEM", "S"},
			warnings: []string{"env S comes from Secret s key k", `does not set "app"`},
		},
		{
			// The kubelet leaves an optional key's variable out when the
			// key is missing.
			name:     "optional valueFrom",
			spec:     "containers:\n- name: c\n  image: busybox\n  env:\n  - {name: S, valueFrom: {secretKeyRef: {name: s, key: k, optional: true}}}\n  - {name: M, valueFrom: {configMapKeyRef: {name: m, key: k, optional: true}}}\n  - {name: R, valueFrom: {configMapKeyRef: {name: m, key: r, optional: false}}}\n",
			allowed:  []string{"S=x", "M=y", "R=z"},
			required: []string{"R"},
			warnings: []string{"env S comes from Secret s key k"},
		},
		{
			name:     "envFrom",
			spec:     "containers:\n- name: c\n  image: busybox\n  envFrom:\n  - {prefix: CFG_, configMapRef: {name: cm}}\n",
			allowed:  []string{"CFG_A=1", "CFG_x.y=2"},
			refused:  []string{"OTHER=1", "PATH=/evil"},
			exact:    []string{ociDefaultPath},
			warnings: []string{"envFrom ConfigMap cm", "CFG_"},
		},
		{
			name:     "envFrom without prefix may set PATH",
			spec:     "containers:\n- name: c\n  image: busybox\n  envFrom:\n  - {secretRef: {name: s}}\n",
			allowed:  []string{"PATH=/evil", "ANY=1", ociDefaultPath},
			absent:   []string{ociDefaultPath},
			required: []string{"HOSTNAME", "PATH"},
			warnings: []string{"envFrom Secret s has no prefix"},
		},
		{
			name:    "service links off",
			spec:    "enableServiceLinks: false\ncontainers: [{name: c, image: busybox}]",
			allowed: []string{links},
			refused: []string{"WEB_SERVICE_HOST=10.0.0.3"},
		},
		{
			name:    "settings patterns",
			spec:    "containers: [{name: c, image: busybox}]",
			allowed: []string{"DEBUG=1"},
			refused: []string{"DEBUG=2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			settings := DefaultSettings()
			settings.Containers = map[string]ContainerSettings{"c": {EnvPatterns: []string{"DEBUG=[01]"}}}
			res, w := generate(t, podYAML(tc.spec), Options{Settings: settings})
			c := onlyContainer(t, res, "c")
			for _, e := range tc.exact {
				if !c.Env[e] {
					t.Errorf("Env lacks %q: %v", e, c.Env)
				}
			}
			for _, e := range tc.absent {
				if c.Env[e] {
					t.Errorf("Env has %q", e)
				}
			}
			for _, e := range tc.allowed {
				if !c.Env[e] && !matchesAny(t, c.EnvPatterns, e) {
					t.Errorf("%q is not allowed; patterns %q", e, c.EnvPatterns)
				}
			}
			for _, e := range tc.refused {
				if c.Env[e] || matchesAny(t, c.EnvPatterns, e) {
					t.Errorf("%q is allowed; env %v patterns %q", e, c.Env, c.EnvPatterns)
				}
			}
			if got := slices.Sorted(slices.Values(c.EnvRequiredNames)); !slices.Equal(got, tc.required) {
				t.Errorf("EnvRequiredNames %q, want %q", got, tc.required)
			}
			for _, s := range tc.warnings {
				if !w.contains(s) {
					t.Errorf("no warning containing %q in %q", s, w)
				}
			}
		})
	}
}

func TestHostnames(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		match      []string
		noMatch    []string
	}{
		{"pod hostname", podYAML("hostname: h1\ncontainers: [{name: c, image: busybox}]"), []string{"h1"}, []string{"p"}},
		{"host network", podYAML("hostNetwork: true\ncontainers: [{name: c, image: busybox}]"), []string{"node-1.example.com", "Node1"}, []string{"a b"}},
		{"fqdn", podYAML("hostname: h\nsubdomain: sub\nsetHostnameAsFQDN: true\ncontainers: [{name: c, image: busybox}]"), []string{"h.sub.ns.svc.cluster.local"}, []string{"h", "h.sub.other.svc.cluster.local"}},
		{"long pod name", "apiVersion: v1\nkind: Pod\nmetadata: {name: " + strings.Repeat("a", 62) + "-b}\nspec: {containers: [{name: c, image: busybox}]}\n", []string{strings.Repeat("a", 62)}, []string{strings.Repeat("a", 62) + "-"}},
		{"generateName", "apiVersion: v1\nkind: Pod\nmetadata: {generateName: job-}\nspec: {containers: [{name: c, image: busybox}]}\n", []string{"job-x2k9p"}, []string{"job-"}},
		{"long deployment", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: " + strings.Repeat("d", 60) + "}\nspec: {template: {spec: {containers: [{name: c, image: busybox}]}}}\n", []string{strings.Repeat("d", 58) + "x2k9p"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := generate(t, tc.yaml, Options{})
			w := onlyWorkload(t, res)
			c := w.Data.Containers["c"]
			for _, h := range tc.match {
				if !matchesAny(t, []string{w.Data.Pod.HostnamePattern}, h) {
					t.Errorf("hostname pattern %q does not match %q", w.Data.Pod.HostnamePattern, h)
				}
				if !c.Env["HOSTNAME="+h] && !matchesAny(t, c.EnvPatterns, "HOSTNAME="+h) {
					t.Errorf("HOSTNAME=%s not allowed", h)
				}
			}
			for _, h := range tc.noMatch {
				if matchesAny(t, []string{w.Data.Pod.HostnamePattern}, h) {
					t.Errorf("hostname pattern %q matches %q", w.Data.Pod.HostnamePattern, h)
				}
			}
			// Only a host-network sandbox may come without a hostname.
			if matchesAny(t, []string{w.Data.Pod.HostnamePattern}, "") != w.Data.Pod.HostNetwork {
				t.Errorf("hostname pattern %q and the empty hostname, host network %v", w.Data.Pod.HostnamePattern, w.Data.Pod.HostNetwork)
			}
			if c.Env["HOSTNAME="] || matchesAny(t, c.EnvPatterns, "HOSTNAME=") {
				t.Errorf("an empty HOSTNAME is allowed")
			}
		})
	}
}

func TestSecurity(t *testing.T) {
	all := sortedCaps(allCaps())
	for _, tc := range []struct {
		name, sc   string
		caps       []string
		privileged bool
		nnp, ro    bool
		seccomp    bool
		unmasked   bool
	}{
		{name: "defaults", sc: "{}", caps: sortedCaps(defaultCapabilities)},
		{name: "add and drop", sc: "{capabilities: {add: [NET_ADMIN, chown], drop: [KILL, MKNOD]}}",
			caps: sortedCaps(append(slices.DeleteFunc(slices.Clone(defaultCapabilities), func(c string) bool { return c == "CAP_KILL" || c == "CAP_MKNOD" }), "CAP_NET_ADMIN"))},
		{name: "drop all", sc: "{capabilities: {drop: [ALL]}}", caps: []string{}},
		{name: "drop all add one", sc: "{capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}", caps: []string{"CAP_NET_BIND_SERVICE"}},
		{name: "add all drop one", sc: "{capabilities: {add: [ALL], drop: [SYS_ADMIN]}}", caps: slices.DeleteFunc(slices.Clone(all), func(c string) bool { return c == "CAP_SYS_ADMIN" })},
		{name: "privileged", sc: "{privileged: true, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}", caps: all, privileged: true},
		{name: "hardened", sc: "{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, seccompProfile: {type: RuntimeDefault}, procMount: Unmasked}",
			caps: sortedCaps(defaultCapabilities), nnp: true, ro: true, seccomp: true, unmasked: true},
		{name: "unconfined", sc: "{seccompProfile: {type: Unconfined}}", caps: sortedCaps(defaultCapabilities)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := generate(t, podYAML("containers: [{name: c, image: busybox, securityContext: "+tc.sc+"}]"), Options{})
			c := onlyContainer(t, res, "c")
			if !slices.Equal(c.Capabilities, tc.caps) {
				t.Errorf("capabilities %v; want %v", c.Capabilities, tc.caps)
			}
			if c.Privileged != tc.privileged || c.NoNewPrivileges != tc.nnp || c.ReadOnlyRoot != tc.ro || (c.Seccomp != nil) != tc.seccomp || c.ProcMountUnmasked != tc.unmasked {
				t.Errorf("privileged %v nnp %v ro %v seccomp %v unmasked %v", c.Privileged, c.NoNewPrivileges, c.ReadOnlyRoot, c.Seccomp, c.ProcMountUnmasked)
			}
		})
	}
	// The pod's seccomp profile applies unless the container has its own.
	res, _ := generate(t, podYAML("securityContext: {seccompProfile: {type: RuntimeDefault}, sysctls: [{name: net.core.somaxconn, value: '1024'}]}\ncontainers: [{name: c, image: busybox}]"), Options{})
	if onlyContainer(t, res, "c").Seccomp == nil {
		t.Error("pod seccompProfile not applied")
	}
	if got := res.Policies[0].Data.Pod.Sysctls; got["net.core.somaxconn"] != "1024" || len(got) != 1 {
		t.Errorf("sysctls %v", got)
	}
}

func TestUsers(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       policy.User
	}{
		{"root by default", "containers: [{name: c, image: busybox}]", policy.User{UID: 0, GID: 0, AdditionalGIDs: []uint32{0, 10}}},
		{"runAsUser takes passwd group", "containers: [{name: c, image: busybox, securityContext: {runAsUser: 33}}]", policy.User{UID: 33, GID: 33, AdditionalGIDs: []uint32{10, 33, 50}}},
		{"uid not in passwd", "containers: [{name: c, image: busybox, securityContext: {runAsUser: 4242}}]", policy.User{UID: 4242, GID: 0, AdditionalGIDs: []uint32{0}}},
		{"pod user, container group", "securityContext: {runAsUser: 33, supplementalGroups: [7], fsGroup: 8}\ncontainers: [{name: c, image: busybox, securityContext: {runAsGroup: 99}}]", policy.User{UID: 33, GID: 99, AdditionalGIDs: []uint32{7, 8, 10, 50, 99}}},
		{"container over pod", "securityContext: {runAsUser: 33, runAsGroup: 33}\ncontainers: [{name: c, image: busybox, securityContext: {runAsUser: 1, runAsGroup: 2}}]", policy.User{UID: 1, GID: 2, AdditionalGIDs: []uint32{2}}},
		{"strict groups", "securityContext: {runAsUser: 33, supplementalGroupsPolicy: Strict}\ncontainers: [{name: c, image: busybox}]", policy.User{UID: 33, GID: 33, AdditionalGIDs: []uint32{33}}},
		{"image user name", "containers: [{name: c, image: 'registry.example/app:v1'}]", policy.User{UID: 1000, GID: 2000, AdditionalGIDs: []uint32{2000, 3000}}},
		{"image numeric user drops its group", "containers: [{name: c, image: 'registry.example/numeric:v1'}]", policy.User{UID: 1234, GID: 0, AdditionalGIDs: []uint32{0}}},
		{"runAsUser over image user", "containers: [{name: c, image: 'registry.example/app:v1', securityContext: {runAsUser: 5}}]", policy.User{UID: 5, GID: 0, AdditionalGIDs: []uint32{0}}},
		{"group with image user name", "containers: [{name: c, image: 'registry.example/app:v1', securityContext: {runAsGroup: 5}}]", policy.User{UID: 1000, GID: 5, AdditionalGIDs: []uint32{5, 3000}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := generate(t, podYAML(tc.yaml), Options{})
			got := onlyContainer(t, res, "c").User
			if got == nil || got.UID != tc.want.UID || got.GID != tc.want.GID || !slices.Equal(got.AdditionalGIDs, sortedGIDs(tc.want.AdditionalGIDs)) {
				t.Errorf("user %+v; want %+v", got, tc.want)
			}
		})
	}
}

func sortedGIDs(g []uint32) []uint32 { s := slices.Clone(g); slices.Sort(s); return s }

func TestMountsAndExec(t *testing.T) {
	spec := `automountServiceAccountToken: false
volumes:
- {name: host, hostPath: {path: /srv/data}}
- {name: scratch, emptyDir: {}}
- {name: cfg, configMap: {name: cm}}
- {name: sec, secret: {secretName: s}}
- {name: proj, projected: {sources: []}}
- {name: down, downwardAPI: {items: []}}
- {name: claim, persistentVolumeClaim: {claimName: pvc}}
- {name: inline, csi: {driver: d}}
containers:
- name: c
  image: busybox
  tty: true
  stdin: true
  terminationMessagePath: /tmp/msg
  volumeMounts:
  - {name: host, mountPath: /data, readOnly: true}
  - {name: scratch, mountPath: /scratch}
  - {name: cfg, mountPath: /etc/cfg}
  - {name: sec, mountPath: /etc/sec}
  - {name: proj, mountPath: /proj}
  - {name: down, mountPath: /down}
  - {name: claim, mountPath: /claim}
  - {name: inline, mountPath: /inline}
  - {name: cfg, mountPath: /etc/one.conf, subPath: one.conf}
  env: [{name: FILE, value: /tmp/ok}, {name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}]
  livenessProbe: {exec: {command: [cat, $(FILE)]}}
  readinessProbe: {exec: {command: [echo, $(S)]}}
  startupProbe: {httpGet: {port: 80}}
  lifecycle:
    preStop: {exec: {command: [sh, -c, 'kill $(pidof app)']}}
initContainers:
- {name: init, image: busybox, command: ['true'], volumeMounts: [{name: scratch, mountPath: /scratch}]}
`
	settings := DefaultSettings()
	settings.Containers = map[string]ContainerSettings{
		"*": {Logs: ptr(false), Exec: [][]string{{"sh"}}},
		"c": {Logs: ptr(true), Exec: [][]string{{"cat", "/tmp/ok"}}},
	}
	settings.KubeletRootDir = "/data/kubelet/"
	res, w := generate(t, podYAML(spec), Options{Settings: settings})
	c := onlyContainer(t, res, "c")
	const uid = "0b4c2e8a-1f3d-4c5b-9a7e-2d6f8b0c1e3a"
	pod := "/data/kubelet/pods/" + uid
	for _, m := range []struct {
		dest, source string
		ro           bool
	}{
		{"/data", "/srv/data", true},
		{"/scratch", pod + "/volumes/kubernetes.io~empty-dir/scratch", false},
		{"/etc/cfg", pod + "/volumes/kubernetes.io~configmap/cfg", true},
		{"/etc/sec", pod + "/volumes/kubernetes.io~secret/sec", true},
		{"/proj", pod + "/volumes/kubernetes.io~projected/proj", true},
		{"/down", pod + "/volumes/kubernetes.io~downward-api/down", true},
		{"/claim", pod + "/volumes/kubernetes.io~csi/pvc-1234/mount", false},
		{"/inline", pod + "/volumes/kubernetes.io~csi/inline/mount", false},
		{"/etc/one.conf", pod + "/volume-subpaths/cfg/c/8", true},
		{"/tmp/msg", pod + "/containers/c/0a1b2c3d", false},
		{"/etc/hosts", pod + "/etc-hosts", false},
	} {
		got, ok := c.Mounts[m.dest]
		if !ok {
			t.Errorf("no mount at %s", m.dest)
			continue
		}
		if got.Type != "bind" || got.ReadOnly != m.ro || !matchesAny(t, []string{got.SourcePattern}, m.source) {
			t.Errorf("mount at %s: %+v; want source %s read-only %v", m.dest, got, m.source, m.ro)
		}
	}
	if _, ok := c.Mounts[serviceAccountPath]; ok {
		t.Errorf("service-account mount despite automountServiceAccountToken: false")
	}
	if _, ok := c.Mounts[defaultTerminationMessagePath]; ok {
		t.Errorf("default termination path despite terminationMessagePath")
	}
	for dest, m := range c.Mounts {
		// Only the termination message goes back to the host.
		if m.WriteBack != (dest == "/tmp/msg") {
			t.Errorf("mount at %s: write back %v", dest, m.WriteBack)
		}
	}
	if len(c.Mounts) != 11 {
		t.Errorf("%d mounts; want 11: %v", len(c.Mounts), c.Mounts)
	}
	if !matchesAny(t, []string{c.Mounts["/data"].SourcePattern}, "/srv/data") || matchesAny(t, []string{c.Mounts["/data"].SourcePattern}, "/srv/dataX") {
		t.Errorf("hostPath source is not exact: %q", c.Mounts["/data"].SourcePattern)
	}
	wantExec := [][]string{{"cat", "/tmp/ok"}, {"echo", ""}, {"sh", "-c", "kill $(pidof app)"}, {"sh"}}
	if !slices.EqualFunc(c.Exec, wantExec, slices.Equal) {
		t.Errorf("exec %q; want %q", c.Exec, wantExec)
	}
	if !c.Stdin || !c.Terminal || !c.Logs {
		t.Errorf("stdin %v terminal %v logs %v", c.Stdin, c.Terminal, c.Logs)
	}
	init := res.Policies[0].Data.Containers["init"]
	if init.Logs || init.Stdin || !slices.EqualFunc(init.Exec, [][]string{{"sh"}}, slices.Equal) || !slices.Equal(init.Args, []string{"true"}) {
		t.Errorf("init container: logs %v stdin %v exec %q args %q", init.Logs, init.Stdin, init.Exec, init.Args)
	}
	if !w.contains("volume claim") {
		t.Errorf("no warning about the persistent volume's source: %q", w)
	}

	// The service account token by default.
	res, _ = generate(t, podYAML("containers: [{name: c, image: busybox}]"), Options{})
	sa := onlyContainer(t, res, "c").Mounts[serviceAccountPath]
	if !sa.ReadOnly || !matchesAny(t, []string{sa.SourcePattern}, "/var/lib/kubelet/pods/"+uid+"/volumes/kubernetes.io~projected/kube-api-access-x2k9p") {
		t.Errorf("service-account mount %+v", sa)
	}
}

func ptr[T any](v T) *T { return &v }

func TestRequestsFromSettings(t *testing.T) {
	s, err := ParseSettings([]byte("requests: {ResizePty: false}\n"))
	if err != nil {
		t.Fatal(err)
	}
	res, _ := generate(t, podYAML("containers: [{name: c, image: busybox}]"), Options{Settings: s})
	req := res.Policies[0].Data.Requests
	if req[policy.ResizePty] || !req[policy.PauseContainer] || len(req) != len(idOnlyKinds) {
		t.Errorf("requests %v", req)
	}
	// Zero settings mean the defaults.
	res, _ = generate(t, podYAML("containers: [{name: c, image: busybox}]"), Options{})
	if len(res.Policies[0].Data.Requests) != len(idOnlyKinds) {
		t.Errorf("zero settings gave requests %v", res.Policies[0].Data.Requests)
	}
}

func allCaps() []string { return cap.Known() }

func ocispecConfig(entrypoint, cmd []string) ocispec.ImageConfig {
	return ocispec.ImageConfig{Entrypoint: entrypoint, Cmd: cmd}
}

func TestSubPathPattern(t *testing.T) {
	for _, tc := range []struct {
		vm       corev1.VolumeMount
		match    []string
		mismatch []string
	}{
		{corev1.VolumeMount{SubPath: "db/data"}, []string{"db/data"}, []string{"db", "db/data/x", "dbxdata"}},
		{corev1.VolumeMount{SubPath: "a.b/"}, []string{"a.b"}, []string{"axb"}},
		{corev1.VolumeMount{SubPathExpr: "logs/$(POD_NAME)"}, []string{"logs/web-1", "logs/x"}, []string{"logs/a/b", "other/web-1"}},
		{corev1.VolumeMount{SubPathExpr: "$(NS)-$(POD)"}, []string{"default-web", "a-b"}, []string{"a/b-c"}},
	} {
		re := regexp.MustCompile("^(?:" + subPathPattern(tc.vm) + ")$")
		for _, m := range tc.match {
			if !re.MatchString(m) {
				t.Errorf("%+v: pattern %s does not match %q", tc.vm, re, m)
			}
		}
		for _, m := range tc.mismatch {
			if re.MatchString(m) {
				t.Errorf("%+v: pattern %s matches %q", tc.vm, re, m)
			}
		}
	}
}
