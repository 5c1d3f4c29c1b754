package generate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

func digestOf(n int) string { return fmt.Sprintf("sha256:%064x", n) }

// testImages are the images the tests' YAML names.
func testImages() ImageResolver {
	return StaticImages(map[string]Image{
		"nginx:1.27": {
			Ref: "docker.io/library/nginx@" + digestOf(1),
			Config: ocispec.ImageConfig{
				Entrypoint: []string{"/docker-entrypoint.sh"},
				Cmd:        []string{"nginx", "-g", "daemon off;"},
				Env:        []string{"PATH=/usr/local/sbin:/usr/bin", "NGINX_VERSION=1.27.0"},
				WorkingDir: "/usr/share/nginx",
			},
			EtcPasswd: []byte("root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101::/nonexistent:/bin/false\n"),
			EtcGroup:  []byte("root:x:0:\nnginx:x:101:\n"),
		},
		"busybox": {
			Ref:    "docker.io/library/busybox@" + digestOf(2),
			Config: ocispec.ImageConfig{Cmd: []string{"sh"}},
			// busybox puts root in several groups.
			EtcPasswd: []byte("root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\nwww:x:33:33::/var/www:/bin/false\n"),
			EtcGroup:  []byte("root:x:0:\ndaemon:x:1:\nwheel:x:10:root,www\nwww-data:x:33:\nstaff:x:50:www\n"),
		},
		"registry.example/app:v1": {
			Ref:       "registry.example/app@" + digestOf(3),
			Config:    ocispec.ImageConfig{Entrypoint: []string{"/app"}, User: "app"},
			EtcPasswd: []byte("app:x:1000:2000::/home/app:/bin/false\n"),
			EtcGroup:  []byte("app:x:2000:\nshared:x:3000:app\n"),
		},
		"registry.example/numeric:v1": {
			Ref:    "registry.example/numeric@" + digestOf(4),
			Config: ocispec.ImageConfig{Entrypoint: []string{"/run"}, User: "1234:999"},
		},
	})
}

type warnings []string

func (w *warnings) add(s string) { *w = append(*w, s) }

func (w warnings) contains(sub string) bool {
	return slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, sub) })
}

func generate(t *testing.T, in string, opts Options) (*Result, warnings) {
	t.Helper()
	var w warnings
	if opts.Images == nil {
		opts.Images = testImages()
	}
	if opts.Layers == nil {
		opts.Layers = fakeLayers()
	}
	opts.Warn = w.add
	res, err := Generate(context.Background(), []byte(in), opts)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return res, w
}

// podYAML wraps containers (YAML at the containers: level) into a Pod.
func podYAML(spec string) string {
	return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\nspec:\n" + indent(spec, "  ")
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

func onlyContainer(t *testing.T, res *Result, name string) policy.Container {
	t.Helper()
	if len(res.Policies) != 1 {
		t.Fatalf("%d workloads; want 1", len(res.Policies))
	}
	c, ok := res.Policies[0].Data.Containers[name]
	if !ok {
		t.Fatalf("no container %s in %v", name, res.Policies[0].Data.Containers)
	}
	return c
}

// matchesAny reports whether entry matches one of the anchored patterns.
func matchesAny(t *testing.T, patterns []string, entry string) bool {
	t.Helper()
	for _, p := range patterns {
		if regexp.MustCompile("^(?:" + p + ")$").MatchString(entry) {
			return true
		}
	}
	return false
}

const workloadTemplate = `
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
`

func TestWorkloadKinds(t *testing.T) {
	for _, tc := range []struct {
		kind, yaml string
		hostnames  []string // the pods' hostnames the policy must accept
		notHosts   []string
	}{
		{"Pod", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: web, image: nginx:1.27}\n",
			[]string{"web"}, []string{"web-1", "other"}},
		{"Deployment", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:" + workloadTemplate,
			[]string{"web-7c5d8f9b4-x2k9p"}, []string{"web", "other-7c5d8f9b4-x2k9p"}},
		{"StatefulSet", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\nspec:\n  serviceName: web\n  template:" + workloadTemplate,
			[]string{"web-0", "web-12"}, []string{"web-abcde"}},
		{"DaemonSet", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: web}\nspec:\n  template:" + workloadTemplate,
			[]string{"web-x2k9p"}, []string{"web-"}},
		{"ReplicaSet", "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web}\nspec:\n  template:" + workloadTemplate,
			[]string{"web-x2k9p"}, nil},
		{"Job", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: web}\nspec:\n  template:" + strings.Replace(workloadTemplate, "    spec:\n", "    spec:\n      restartPolicy: Never\n", 1),
			[]string{"web-x2k9p", "web-3-x2k9p"}, nil},
		{"CronJob", "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: web}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:" + indent(workloadTemplate, "    "),
			[]string{"web-29000000-x2k9p"}, nil},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			res, _ := generate(t, tc.yaml, Options{})
			w := onlyWorkload(t, res)
			if w.Kind != tc.kind || w.Name != "web" || w.Document != 1 {
				t.Errorf("workload %d %s/%s; want 1 %s/web", w.Document, w.Kind, w.Name, tc.kind)
			}
			c := w.Data.Containers["web"]
			if c.Image != "docker.io/library/nginx@"+digestOf(1) {
				t.Errorf("image %q", c.Image)
			}
			if !slices.Equal(c.Args, []string{"/docker-entrypoint.sh", "nginx", "-g", "daemon off;"}) {
				t.Errorf("args %q", c.Args)
			}
			re := regexp.MustCompile("^(?:" + w.Data.Pod.HostnamePattern + ")$")
			for _, h := range tc.hostnames {
				if !re.MatchString(h) {
					t.Errorf("hostname pattern %q does not match %q", w.Data.Pod.HostnamePattern, h)
				}
			}
			for _, h := range tc.notHosts {
				if re.MatchString(h) {
					t.Errorf("hostname pattern %q matches %q", w.Data.Pod.HostnamePattern, h)
				}
			}
			embedded, err := Extract(res.YAML)
			if err != nil {
				t.Fatal(err)
			}
			if len(embedded) != 1 || !bytes.Equal(embedded[0].Policy, w.Policy) || embedded[0].Kind != tc.kind {
				t.Fatalf("the annotation in the output does not carry the policy: %+v", embedded)
			}
			if !strings.Contains(string(res.YAML), "nginx:1.27@"+digestOf(1)) {
				t.Errorf("image not pinned in the output:\n%s", shorten(res.YAML))
			}
			if want, err := policy.Build(w.Data); err != nil || !bytes.Equal(want, w.Policy) {
				t.Errorf("Policy is not Build(Data): %v", err)
			}
		})
	}
}

func onlyWorkload(t *testing.T, res *Result) Workload {
	t.Helper()
	if len(res.Policies) != 1 {
		t.Fatalf("%d workloads; want 1", len(res.Policies))
	}
	return res.Policies[0]
}

const multiDoc = `# Leading comment of the stream.
apiVersion: v1
kind: Service
metadata:
  name: web     # odd spacing stays
spec: {ports: [{port: 80}]}
---
# The app.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop # where it runs
spec:
  template:
    metadata:
      annotations:
        keep: "me"
        io.katacontainers.config.agent.policy: cGFja2FnZSBvbGQK
    spec:
      containers:
      - name: web
        image: nginx:1.27 # pinned below
      initContainers:
      - name: init
        image: busybox
        command: [sh, -c, "echo hi"]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data:
  k: |
    ---
    not a document marker inside a block scalar? it is, in YAML; kept verbatim
---
apiVersion: v1
kind: Pod
metadata:
  name: solo
spec:
  containers:
  - name: c
    image: registry.example/app:v1
`

func TestMultiDocumentRoundTrip(t *testing.T) {
	// The ConfigMap above is not valid YAML after its "---" line; use a
	// well-formed one for the round trip.
	in := strings.Replace(multiDoc, "    ---\n    not a document marker inside a block scalar? it is, in YAML; kept verbatim\n", "    line one\n    line two\n", 1)
	res, w := generate(t, in, Options{})
	if len(res.Policies) != 2 {
		t.Fatalf("%d policies; want 2", len(res.Policies))
	}
	if p := res.Policies[0]; p.Document != 2 || p.Kind != "Deployment" || p.Namespace != "shop" {
		t.Errorf("first workload %+v", p)
	}
	if p := res.Policies[1]; p.Document != 4 || p.Kind != "Pod" || p.Name != "solo" {
		t.Errorf("second workload %+v", p)
	}
	out := string(res.YAML)
	for _, keep := range []string{
		"# Leading comment of the stream.\napiVersion: v1\nkind: Service\nmetadata:\n  name: web     # odd spacing stays\nspec: {ports: [{port: 80}]}\n---\n",
		"# The app.",
		"namespace: shop # where it runs",
		"image: nginx:1.27@" + digestOf(1) + " # pinned below",
		"image: busybox@" + digestOf(2),
		"keep: \"me\"",
		"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata:\n  k: |\n    line one\n    line two\n---\n",
	} {
		if !strings.Contains(out, keep) {
			t.Errorf("output lacks %q:\n%s", keep, shorten([]byte(out)))
		}
	}
	if strings.Contains(out, policy.AnnotationKata) || !w.contains("removed annotation "+policy.AnnotationKata) {
		t.Errorf("Kata's annotation not removed with a warning:\n%s", shorten([]byte(out)))
	}
	if strings.Index(out, "keep:") > strings.Index(out, initdata.Annotation) {
		t.Errorf("existing annotations no longer come first:\n%s", shorten([]byte(out)))
	}
	if _, ok := res.Policies[0].Data.Containers["init"]; !ok {
		t.Errorf("init container missing from the policy")
	}

	// Idempotence: the output is a fixed point, policies included.
	again, _ := generate(t, out, Options{})
	if string(again.YAML) != out {
		t.Errorf("second run changed the YAML:\n--- first\n%s\n--- second\n%s", shorten([]byte(out)), shorten(again.YAML))
	}
	for i := range res.Policies {
		if !bytes.Equal(again.Policies[i].Policy, res.Policies[i].Policy) {
			t.Errorf("second run changed the policy of %s", res.Policies[i].Name)
		}
	}
	for i := range res.Policies {
		if !bytes.Equal(again.Policies[i].Initdata, res.Policies[i].Initdata) {
			t.Errorf("second run changed the initdata of %s", res.Policies[i].Name)
		}
	}
	if strings.Count(string(again.YAML), initdata.Annotation) != 2 || strings.Contains(string(again.YAML), policy.Annotation+":") {
		t.Errorf("annotations duplicated, or the bare policy annotation written:\n%s", shorten(again.YAML))
	}
	// The annotation carries the minimal document that wraps the policy.
	embedded, err := Extract(again.YAML)
	if err != nil || len(embedded) != 2 {
		t.Fatalf("Extract of the generated YAML: %v, %v", embedded, err)
	}
	for i, e := range embedded {
		if want, _ := initdata.Wrap(res.Policies[i].Policy); e.Key != initdata.Annotation || !bytes.Equal(e.Initdata.Raw(), want) || !bytes.Equal(res.Policies[i].Initdata, want) {
			t.Errorf("%s: initdata annotation does not carry the wrapped policy", e.Name)
		}
	}
}

func TestPassThroughOnly(t *testing.T) {
	in := "# only a service\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\n...\n---\n# trailing comment\n"
	res, _ := generate(t, in, Options{})
	if string(res.YAML) != in || len(res.Policies) != 0 {
		t.Errorf("got %d policies and\n%q\nwant the input unchanged", len(res.Policies), res.YAML)
	}
}

func TestGenerateErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		opts Options
		want []string
	}{
		{"malformed YAML", "apiVersion: v1\nkind: Service\n---\nkind: [unclosed\n", Options{}, []string{"document 2"}},
		{"not a mapping", "- a\n- b\n", Options{}, []string{"document 1", "not a Kubernetes object"}},
		{"no kind", "apiVersion: v1\nmetadata: {name: x}\n", Options{}, []string{"document 1", "apiVersion and kind"}},
		{"replication controller", "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\n", Options{}, []string{"document 1 (ReplicationController rc)", "not supported"}},
		{"list", "apiVersion: v1\nkind: List\nitems: []\n", Options{}, []string{"document 1 (List)", "separate documents"}},
		{"unknown pod carrier", "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec:\n  template:\n    spec:\n      containers: [{name: c, image: x}]\n", Options{},
			[]string{"document 1 (Rollout r)", "pod template"}},
		{"old apiVersion", "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: d}\n", Options{}, []string{"document 1 (Deployment d)", "apps/v1"}},
		{"wrong type", podYAML("containers: {name: c}"), Options{}, []string{"document 1 (Pod p)"}},
		{"no containers", podYAML("restartPolicy: Never"), Options{}, []string{"document 1 (Pod p)", "no containers"}},
		{"no name", "apiVersion: v1\nkind: Pod\nspec:\n  containers: [{name: c, image: busybox}]\n", Options{}, []string{"document 1 (Pod)", "metadata.name"}},
		{"tag without digest", podYAML("containers: [{name: c, image: busybox, command: [sh]}]"), Options{Images: noImages{}},
			[]string{"document 1 (Pod p)", "container c", "not pinned by digest", "containerd address"}},
		{"unknown entrypoint", podYAML("containers: [{name: c, image: 'busybox@" + digestOf(2) + "'}]"), Options{Images: noImages{}},
			[]string{"document 1 (Pod p)", "container c", "busybox@" + digestOf(2), "command"}},
		{"image not found", podYAML("containers: [{name: c, image: 'missing:1'}]"), Options{}, []string{"document 1 (Pod p)", "container c", "missing:1", "not found"}},
		{"digest not found", podYAML("containers: [{name: c, image: 'nginx:1.27@" + digestOf(9) + "'}]"), Options{}, []string{"container c", "not found"}},
		{"digest mismatch", podYAML("containers: [{name: c, image: 'nginx:1.27@" + digestOf(9) + "'}]"), Options{Images: StaticImages(map[string]Image{
			"nginx:1.27@" + digestOf(9): {Ref: "docker.io/library/nginx@" + digestOf(1), Config: ocispec.ImageConfig{Cmd: []string{"x"}}},
		})}, []string{"container c", "resolved to digest " + digestOf(1)}},
		{"bad reference", podYAML("containers: [{name: c, image: 'UPPER/case'}]"), Options{}, []string{"container c", "UPPER/case"}},
		{"duplicate names", podYAML("containers: [{name: c, image: busybox}]\ninitContainers: [{name: c, image: busybox}]"), Options{}, []string{"two containers are named c"}},
		{"undeclared volume", podYAML("containers: [{name: c, image: busybox, volumeMounts: [{name: v, mountPath: /v}]}]"), Options{}, []string{"container c", `volume "v"`}},
		{"image volume", podYAML("containers: [{name: c, image: busybox, volumeMounts: [{name: v, mountPath: /v}]}]\nvolumes: [{name: v, image: {reference: busybox}}]"), Options{}, []string{"container c", "image volume"}},
		{"unpinnable arg", podYAML("containers:\n- name: c\n  image: busybox\n  command: [echo, $(IP)]\n  env: [{name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]"), Options{}, []string{"container c", "command[1]", "$(IP)"}},
		{"bad fieldRef", podYAML("containers:\n- name: c\n  image: busybox\n  env: [{name: X, valueFrom: {fieldRef: {fieldPath: spec.nope}}}]"), Options{}, []string{"container c", "env X", "spec.nope"}},
		{"CAP_ prefix", podYAML("containers: [{name: c, image: busybox, securityContext: {capabilities: {add: [CAP_NET_ADMIN]}}}]"), Options{}, []string{"container c", "CAP_ prefix"}},
		{"unknown capability", podYAML("containers: [{name: c, image: busybox, securityContext: {capabilities: {drop: [FLY]}}}]"), Options{}, []string{"container c", `"FLY"`}},
		{"group without user", podYAML("containers: [{name: c, image: busybox, securityContext: {runAsGroup: 5}}]"), Options{}, []string{"container c", "runAsGroup"}},
		{"unknown image user", podYAML("containers: [{name: c, image: 'registry.example/app:v1', securityContext: {runAsGroup: 5}}]\n"), Options{Images: StaticImages(map[string]Image{
			"registry.example/app:v1": {Ref: "registry.example/app@" + digestOf(3), Config: ocispec.ImageConfig{Entrypoint: []string{"/app"}, User: "ghost"}},
		})}, []string{"container c", `"ghost"`, "/etc/passwd"}},
		{"ephemeral", podYAML("containers: [{name: c, image: busybox}]\nephemeralContainers: [{name: e, image: busybox}]"), Options{}, []string{"ephemeralContainers"}},
		{"bad settings", podYAML("containers: [{name: c, image: busybox}]"), Options{Settings: Settings{Requests: map[policy.Kind]bool{"Nope": true}}}, []string{"settings", "Nope"}},
		{"lossy rewrite", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n containers: [{name: c, image: busybox, env}]\n", Options{}, []string{"document 1 (Pod p)", "plain block style"}},
		{"case-insensitive keys", "apiVersion: v1\nKind: Pod\nmetadata: {name: p}\n", Options{}, []string{"document 1", "apiVersion and kind"}},
		{"duplicate keys", podYAML("containers: [{name: c, image: busybox}]\ncontainers: []"), Options{}, []string{"document 1", "containers"}},
		{"no layer source", podYAML("containers: [{name: c, image: busybox}]"), Options{Layers: noLayers{}}, []string{"document 1 (Pod p)", "container c", "image busybox", "no layer source"}},
		{"layer source fails", podYAML("containers: [{name: c, image: busybox}]"), Options{Layers: layerFunc(func(context.Context, Image) ([]ImageLayer, error) {
			return nil, errors.New("blob sha256:77 missing")
		})}, []string{"container c", "image busybox", "blob sha256:77 missing"}},
		{"image without layers", podYAML("containers: [{name: c, image: busybox}]"), Options{Layers: layerFunc(func(context.Context, Image) ([]ImageLayer, error) {
			return nil, nil
		})}, []string{"container c", "image busybox", "no layers"}},
		{"root hash not hex", podYAML("containers: [{name: c, image: busybox}]"), Options{Layers: layerFunc(func(ctx context.Context, img Image) ([]ImageLayer, error) {
			layers, _ := fakeLayers().ImageLayers(ctx, img)
			layers[1].RootHash = strings.ToUpper(layers[1].RootHash)
			return layers, nil
		})}, []string{"container c", "image busybox", "layer 1", "root hash"}},
		{"layers of another image", podYAML("containers: [{name: c, image: busybox}]"), Options{
			Images: StaticImages(map[string]Image{"busybox": {Ref: "docker.io/library/busybox@" + digestOf(2), Config: ocispec.ImageConfig{Cmd: []string{"sh"}},
				DiffIDs: []string{digestOf(20), digestOf(21)}}}),
			Layers: layerFunc(func(context.Context, Image) ([]ImageLayer, error) {
				return []ImageLayer{{DiffID: digestOf(20), RootHash: fmt.Sprintf("%064x", 1)}, {DiffID: digestOf(22), RootHash: fmt.Sprintf("%064x", 2)}}, nil
			}),
		}, []string{"container c", "image busybox", "layer 1", "converted " + digestOf(22), "config names " + digestOf(21)}},
		{"fewer layers than diff IDs", podYAML("containers: [{name: c, image: busybox}]"), Options{
			Images: StaticImages(map[string]Image{"busybox": {Ref: "docker.io/library/busybox@" + digestOf(2), Config: ocispec.ImageConfig{Cmd: []string{"sh"}},
				DiffIDs: []string{digestOf(20), digestOf(21)}}}),
			Layers: layerFunc(func(context.Context, Image) ([]ImageLayer, error) {
				return []ImageLayer{{DiffID: digestOf(20), RootHash: fmt.Sprintf("%064x", 1)}}, nil
			}),
		}, []string{"container c", "returned 1 layers", "2 diff IDs"}},
		{"no command at all", podYAML("containers: [{name: c, image: 'registry.example/numeric:v1', command: []}]"), Options{Images: StaticImages(map[string]Image{
			"registry.example/numeric:v1": {Ref: "registry.example/numeric@" + digestOf(4)},
		})}, []string{"container c", "command to run"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			if opts.Images == nil {
				opts.Images = testImages()
			}
			if _, ok := opts.Images.(noImages); ok {
				opts.Images = nil
			}
			switch opts.Layers.(type) {
			case nil:
				opts.Layers = fakeLayers()
			case noLayers:
				opts.Layers = nil
			}
			res, err := Generate(context.Background(), []byte(tc.in), opts)
			if err == nil {
				t.Fatalf("no error; output:\n%s", shorten(res.YAML))
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// fakeLayers derives an image's layers from its pinned reference: two, or
// three for busybox.
func fakeLayers() LayerSource {
	return layerFunc(func(_ context.Context, img Image) ([]ImageLayer, error) {
		n := 2
		if strings.Contains(img.Ref, "busybox") {
			n = 3
		}
		layers := make([]ImageLayer, n)
		for i := range layers {
			layers[i] = ImageLayer{DiffID: fakeDigest("diff", img.Ref, i), RootHash: strings.TrimPrefix(fakeDigest("root", img.Ref, i), "sha256:")}
		}
		return layers, nil
	})
}

func fakeDigest(kind, ref string, i int) string {
	return digest.FromString(fmt.Sprintf("%s %s %d", kind, ref, i)).String()
}

type layerFunc func(ctx context.Context, img Image) ([]ImageLayer, error)

func (f layerFunc) ImageLayers(ctx context.Context, img Image) ([]ImageLayer, error) {
	return f(ctx, img)
}

// noLayers in a test table stands for "no layer source".
type noLayers struct{}

func (noLayers) ImageLayers(context.Context, Image) ([]ImageLayer, error) { panic("not a source") }

// noImages in a test table stands for "no resolver".
type noImages struct{}

func (noImages) Resolve(context.Context, string) (Image, error) { panic("unused") }

// TestLayersPinned checks that every container's entry pins its image's
// root hashes in order, and that an image shared by containers and
// workloads is converted once.
func TestLayersPinned(t *testing.T) {
	converted := map[string]int{}
	source := fakeLayers()
	count := layerFunc(func(ctx context.Context, img Image) ([]ImageLayer, error) {
		converted[img.Ref]++
		return source.ImageLayers(ctx, img)
	})
	in := podYAML("containers: [{name: a, image: 'nginx:1.27'}, {name: b, image: busybox}]\ninitContainers: [{name: i, image: busybox}]") +
		"---\n" + strings.Replace(podYAML("containers: [{name: c, image: 'nginx:1.27'}]"), "name: p", "name: q", 1)
	res, _ := generate(t, in, Options{Layers: count})
	for _, tc := range []struct {
		workload, container, ref string
		layers                   int
	}{
		{"p", "a", "docker.io/library/nginx@" + digestOf(1), 2},
		{"p", "b", "docker.io/library/busybox@" + digestOf(2), 3},
		{"p", "i", "docker.io/library/busybox@" + digestOf(2), 3},
		{"q", "c", "docker.io/library/nginx@" + digestOf(1), 2},
	} {
		var want []string
		for i := range tc.layers {
			want = append(want, strings.TrimPrefix(fakeDigest("root", tc.ref, i), "sha256:"))
		}
		i := slices.IndexFunc(res.Policies, func(w Workload) bool { return w.Name == tc.workload })
		if got := res.Policies[i].Data.Containers[tc.container].Layers; !slices.Equal(got, want) {
			t.Errorf("%s/%s: layers %q, want %q", tc.workload, tc.container, got, want)
		}
		if !strings.Contains(string(res.Policies[i].Policy), want[len(want)-1]) {
			t.Errorf("%s: the policy text lacks root hash %s", tc.workload, want[len(want)-1])
		}
	}
	if len(converted) != 2 || converted["docker.io/library/nginx@"+digestOf(1)] != 1 || converted["docker.io/library/busybox@"+digestOf(2)] != 1 {
		t.Errorf("conversions %v, want each image once", converted)
	}
}

func TestWithoutResolver(t *testing.T) {
	in := podYAML("containers:\n- name: c\n  image: 'busybox@" + digestOf(2) + "'\n  command: [sh]\n")
	var w warnings
	res, err := Generate(context.Background(), []byte(in), Options{Warn: w.add, Layers: fakeLayers()})
	if err != nil {
		t.Fatal(err)
	}
	c := onlyContainer(t, res, "c")
	if len(c.Layers) != 3 || c.Layers[0] != strings.TrimPrefix(fakeDigest("root", c.Image, 0), "sha256:") {
		t.Errorf("layers %q, want those of %s", c.Layers, c.Image)
	}
	if c.Image != "docker.io/library/busybox@"+digestOf(2) || !slices.Equal(c.Args, []string{"sh"}) || c.Cwd != "/" {
		t.Errorf("container %+v", c)
	}
	if !c.Env[ociDefaultPath] || c.User == nil || c.User.UID != 0 || c.User.GID != 0 {
		t.Errorf("an unknown image is not taken to set nothing: env %v user %+v", c.Env, c.User)
	}
	if !w.contains("config is unknown") {
		t.Errorf("no warning about the unknown config: %q", w)
	}
	if !strings.Contains(string(res.YAML), "image: 'busybox@"+digestOf(2)+"'") {
		t.Errorf("a pinned reference was rewritten:\n%s", shorten(res.YAML))
	}
}

// shorten cuts the base64 policies out of YAML for test messages.
func shorten(y []byte) string {
	return regexp.MustCompile(`[A-Za-z0-9+/]{80,}={0,2}`).ReplaceAllString(string(y), "<base64>")
}
