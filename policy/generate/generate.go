package generate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// Options are the inputs of Generate beside the YAML.
type Options struct {
	Settings Settings
	// Images resolves image references to digests and configs; nil accepts
	// only references pinned by digest, whose config is then unknown.
	Images ImageResolver
	// Layers computes the dm-verity root hashes of each image's layers,
	// which every container's entry pins; an image it cannot serve fails
	// the generation, and so does every image when it is nil.
	Layers LayerSource
	// Warn receives what the user should know about the policy (values not
	// pinned, assumptions made); nil drops it.
	Warn func(string)
}

// Result is the YAML with policies and what went into them.
type Result struct {
	// YAML is the input with each workload's pod template annotated with
	// its policy and each image pinned by digest.
	YAML []byte
	// Policies holds one entry per workload, in document order.
	Policies []Workload
}

// Workload is the policy of one workload document.
type Workload struct {
	// Document is the 1-based number of the YAML document.
	Document              int
	Kind, Name, Namespace string
	// Policy is the Rego module.
	Policy []byte
	// Initdata is the initdata document that carries Policy (Wrap's
	// minimal one), written into the pod template's annotation; its
	// digest is the pods' HOSTDATA.
	Initdata []byte
	Data     policy.Data
}

// maxAnnotations is the API server's limit on the total size of an object's
// annotations.
const maxAnnotations = 256 << 10

// workloadKinds are the kinds that carry a pod template, by the apiVersion
// this generator reads them in.
var workloadKinds = map[string]string{
	"Pod":         "v1",
	"Deployment":  "apps/v1",
	"StatefulSet": "apps/v1",
	"DaemonSet":   "apps/v1",
	"ReplicaSet":  "apps/v1",
	"Job":         "batch/v1",
	"CronJob":     "batch/v1",
}

// unsupportedKinds carry pods too, but are not read: the pods they make
// would run without a policy.
var unsupportedKinds = map[string]string{
	"ReplicationController": "use a Deployment",
	"PodTemplate":           "use the workload that references it",
	"List":                  "write the items as separate documents",
}

// Generate reads Kubernetes YAML (one or more documents) and returns it with
// a policy for each workload's pods; see the package documentation.
func Generate(ctx context.Context, in []byte, opts Options) (*Result, error) {
	g := &generator{opts: opts, images: map[string]resolvedImage{}}
	if g.opts.Warn == nil {
		g.opts.Warn = func(string) {}
	}
	if g.opts.Settings.Requests == nil {
		g.opts.Settings.Requests = DefaultSettings().Requests
	}
	if err := g.opts.Settings.validate(); err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}

	chunks := splitDocuments(in)
	if g.opts.Settings.PinVolumeContent {
		objs, err := collectVolumeObjects(chunks)
		if err != nil {
			return nil, err
		}
		g.volumeObjects = objs
	}
	var out bytes.Buffer
	res := &Result{}
	n := 0
	for _, c := range chunks {
		doc, err := parseChunk(c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", describe(n+1, "", ""), err)
		}
		if doc == nil {
			out.Write(c.bytes())
			continue
		}
		n++
		w, encoded, err := g.document(ctx, n, c.body, doc)
		if err != nil {
			return nil, err
		}
		if w == nil {
			out.Write(c.bytes())
			continue
		}
		res.Policies = append(res.Policies, *w)
		out.Write(c.prefix)
		out.Write(encoded)
		if c.endMarker {
			out.WriteString("...\n")
		}
	}
	res.YAML = out.Bytes()
	g.checkSettingsNames(res.Policies)
	return res, nil
}

type generator struct {
	opts   Options
	images map[string]resolvedImage // by reference as written
	// volumeObjects are the input's ConfigMaps and Secrets, read when the
	// settings pin volume content.
	volumeObjects volumeObjects
}

// header is what every Kubernetes object has.
type header struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        struct {
		Name         string `json:"name"`
		GenerateName string `json:"generateName"`
		Namespace    string `json:"namespace"`
	} `json:"metadata"`
}

// document handles one YAML document; it returns nil for a document that is
// not a workload, which passes through unchanged.
func (g *generator) document(ctx context.Context, n int, body []byte, doc *yaml.Node) (*Workload, []byte, error) {
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("%s: not a Kubernetes object (a YAML mapping with apiVersion and kind)", describe(n, "", ""))
	}
	var h header
	if _, err := decodeObject(body, &h); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", describe(n, "", ""), err)
	}
	name := h.Metadata.Name
	if name == "" {
		name = h.Metadata.GenerateName
	}
	where := describe(n, h.Kind, name)
	if h.Kind == "" || h.APIVersion == "" {
		return nil, nil, fmt.Errorf("%s: apiVersion and kind are required", where)
	}
	if hint, ok := unsupportedKinds[h.Kind]; ok {
		return nil, nil, fmt.Errorf("%s: kind %s is not supported; %s", where, h.Kind, hint)
	}
	wantVersion, ok := workloadKinds[h.Kind]
	if !ok {
		if carriesPod(root) {
			return nil, nil, fmt.Errorf("%s: kind %s (%s) has a pod template this generator does not know how to read; its pods would run without a policy", where, h.Kind, h.APIVersion)
		}
		return nil, nil, nil
	}
	if h.APIVersion != wantVersion {
		return nil, nil, fmt.Errorf("%s: apiVersion %s is not supported for %s; use %s", where, h.APIVersion, h.Kind, wantVersion)
	}

	w, encoded, err := g.workload(ctx, n, h, body, doc)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", where, err)
	}
	return w, encoded, nil
}

// carriesPod reports whether an object of a kind the generator does not
// know still has containers where workloads keep them.
func carriesPod(root *yaml.Node) bool {
	for _, path := range [][]string{
		{"spec", "containers"},
		{"spec", "template", "spec", "containers"},
		{"spec", "jobTemplate", "spec", "template", "spec", "containers"},
		{"template", "spec", "containers"},
	} {
		if n := lookupPath(root, path...); n != nil && n.Kind == yaml.SequenceNode {
			return true
		}
	}
	return false
}

// template is the typed view of a workload's pod template.
type template struct {
	meta *metav1.ObjectMeta
	spec *corev1.PodSpec
}

func (g *generator) workload(ctx context.Context, n int, h header, body []byte, doc *yaml.Node) (*Workload, []byte, error) {
	var tmpl template
	var obj any
	switch h.Kind {
	case "Pod":
		o := &corev1.Pod{}
		obj, tmpl = o, template{&o.ObjectMeta, &o.Spec}
	case "Deployment":
		o := &appsv1.Deployment{}
		obj, tmpl = o, template{&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}
	case "StatefulSet":
		o := &appsv1.StatefulSet{}
		obj, tmpl = o, template{&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}
	case "DaemonSet":
		o := &appsv1.DaemonSet{}
		obj, tmpl = o, template{&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}
	case "ReplicaSet":
		o := &appsv1.ReplicaSet{}
		obj, tmpl = o, template{&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}
	case "Job":
		o := &batchv1.Job{}
		obj, tmpl = o, template{&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec}
	case "CronJob":
		o := &batchv1.CronJob{}
		obj, tmpl = o, template{&o.Spec.JobTemplate.Spec.Template.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.Spec}
	}
	// An unknown field is what the API server warns about and drops; a
	// wrong type it refuses, and so do we.
	strict, err := decodeObject(body, obj)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range strict {
		g.opts.Warn(fmt.Sprintf("%s: %v; the API server drops what it does not know, and so does the policy", describe(n, h.Kind, h.Metadata.Name), e))
	}
	name := h.Metadata.Name
	if name == "" {
		name = h.Metadata.GenerateName
	}
	if name == "" {
		return nil, nil, errors.New("metadata.name is required")
	}
	warn := func(msg string) { g.opts.Warn(describe(n, h.Kind, name) + ": " + msg) }
	spec := tmpl.spec
	if len(spec.Containers) == 0 {
		return nil, nil, errors.New("the pod has no containers")
	}
	if len(spec.EphemeralContainers) > 0 {
		return nil, nil, errors.New("ephemeralContainers cannot be part of a pod's creation; the policy would not allow them")
	}

	names := podNames(h.Kind, h.Metadata.Name, h.Metadata.GenerateName)
	var indexed bool
	switch o := obj.(type) {
	case *batchv1.Job:
		indexed = o.Spec.CompletionMode != nil && *o.Spec.CompletionMode == batchv1.IndexedCompletion
	case *batchv1.CronJob:
		m := o.Spec.JobTemplate.Spec.CompletionMode
		indexed = m != nil && *m == batchv1.IndexedCompletion
	}
	p := &pod{
		indexedJob:  indexed,
		spec:        spec,
		labels:      tmpl.meta.Labels,
		annotations: tmpl.meta.Annotations,
		namespace:   h.Metadata.Namespace,
		names:       names,
		hostname:    hostnamePattern(h.Kind, names, spec, h.Metadata.Namespace),
		settings:    g.opts.Settings,
		warn:        warn,
		objects:     g.volumeObjects,
	}
	data := policy.Data{
		Version: policy.DataVersion,
		Pod: policy.Pod{
			Namespace:       h.Metadata.Namespace,
			HostnamePattern: sandboxHostname(p.hostname, spec.HostNetwork),
			HostNetwork:     spec.HostNetwork,
			HostPID:         spec.HostPID,
			HostIPC:         spec.HostIPC,

			ShareProcessNamespace: spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace,
		},
		Containers:  map[string]policy.Container{},
		Requests:    maps.Clone(g.opts.Settings.Requests),
		Network:     g.opts.Settings.Network.data(),
		PortForward: g.opts.Settings.PortForward.data(spec),
	}
	for _, c := range spec.InitContainers {
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		data.Pod.InitContainers = append(data.Pod.InitContainers, policy.InitContainer{Name: c.Name, Sidecar: sidecar})
	}
	if sc := spec.SecurityContext; sc != nil && len(sc.Sysctls) > 0 {
		data.Pod.Sysctls = map[string]string{}
		for _, s := range sc.Sysctls {
			data.Pod.Sysctls[s.Name] = s.Value
		}
	}

	data.Pod.Volumes = p.sharedVolumes()

	pinned := map[string][]string{} // node list key → pinned refs, by index
	for _, list := range []struct {
		key        string
		containers []corev1.Container
	}{{"initContainers", spec.InitContainers}, {"containers", spec.Containers}} {
		for i := range list.containers {
			c := &list.containers[i]
			if c.Name == "" {
				return nil, nil, fmt.Errorf("%s[%d] has no name", list.key, i)
			}
			if _, dup := data.Containers[c.Name]; dup {
				return nil, nil, fmt.Errorf("two containers are named %s", c.Name)
			}
			img, err := g.image(ctx, c, warn)
			if err != nil {
				return nil, nil, err
			}
			cd, err := p.containerData(c, img)
			if err != nil {
				return nil, nil, err
			}
			data.Containers[c.Name] = cd
			pinned[list.key] = append(pinned[list.key], pinnedYAMLRef(c.Image, img.Ref))
		}
	}

	module, err := policy.Build(data)
	if err != nil {
		return nil, nil, fmt.Errorf("build the policy: %w", err)
	}
	doc0, err := initdata.Wrap(module)
	if err != nil {
		return nil, nil, fmt.Errorf("build the initdata document: %w", err)
	}
	value, err := initdata.EncodeAnnotation(doc0)
	if err != nil {
		return nil, nil, err
	}
	if n := len(value); n > maxAnnotations {
		return nil, nil, fmt.Errorf("the initdata annotation would be %d bytes, more than the %d Kubernetes allows for all of a pod's annotations", n, maxAnnotations)
	}
	path := templatePaths[h.Kind]
	if err := annotate(doc.Content[0], path, value, pinned, warn); err != nil {
		return nil, nil, err
	}
	encoded, err := encodeDocument(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("write YAML: %w", err)
	}
	if err := checkRewrite(body, encoded, path, value, pinned); err != nil {
		return nil, nil, err
	}
	return &Workload{Document: n, Kind: h.Kind, Name: name, Namespace: h.Metadata.Namespace, Policy: module, Initdata: doc0, Data: data}, encoded, nil
}

// image resolves a container's image, once per reference.
func (g *generator) image(ctx context.Context, c *corev1.Container, warn func(string)) (resolvedImage, error) {
	ref := c.Image
	if ref == "" {
		return resolvedImage{}, fmt.Errorf("container %s has no image", c.Name)
	}
	if img, ok := g.images[ref]; ok {
		return img, nil
	}
	parsed, err := parseImageRef(ref)
	if err != nil {
		return resolvedImage{}, fmt.Errorf("container %s: %w", c.Name, err)
	}
	var img resolvedImage
	if g.opts.Images == nil {
		if parsed.digest == "" {
			return resolvedImage{}, fmt.Errorf("container %s: image %s is not pinned by digest; write it as %s@sha256:<digest>, or pass the containerd address so the generator looks the digest up", c.Name, ref, ref)
		}
		img = resolvedImage{Image: Image{Ref: parsed.pinned(parsed.digest)}}
		warn(fmt.Sprintf("image %s: without an image store its config is unknown: the policy assumes it sets no environment, entrypoint, working directory or user, and pods are refused if it does", ref))
	} else {
		resolved, err := g.opts.Images.Resolve(ctx, ref)
		if err != nil {
			return resolvedImage{}, fmt.Errorf("container %s: %w", c.Name, err)
		}
		got, err := parseImageRef(resolved.Ref)
		if err != nil || got.digest == "" {
			return resolvedImage{}, fmt.Errorf("container %s: the image resolver returned %q for %s, not a reference by digest", c.Name, resolved.Ref, ref)
		}
		if parsed.digest != "" && got.digest != parsed.digest {
			return resolvedImage{}, fmt.Errorf("container %s: image %s resolved to digest %s, not the one it names", c.Name, ref, got.digest)
		}
		img = resolvedImage{Image: resolved, known: true}
	}
	layers, err := g.layers(ctx, img.Image)
	if err != nil {
		return resolvedImage{}, fmt.Errorf("container %s: image %s: %w", c.Name, ref, err)
	}
	img.layers = layers
	g.images[ref] = img
	return img, nil
}

// layers returns the root hashes of img's layers, lowest first, checked
// against the image's diff IDs when its config is known.
func (g *generator) layers(ctx context.Context, img Image) ([]string, error) {
	if g.opts.Layers == nil {
		return nil, errors.New("no layer source to compute the dm-verity root hashes of its layers (give an image store: a containerd address or an OCI layout)")
	}
	layers, err := g.opts.Layers.ImageLayers(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	if len(layers) == 0 {
		return nil, errors.New("the layer source found no layers; the policy must pin at least one")
	}
	if img.DiffIDs != nil && len(img.DiffIDs) != len(layers) {
		return nil, fmt.Errorf("the layer source returned %d layers, the image config has %d diff IDs", len(layers), len(img.DiffIDs))
	}
	hashes := make([]string, len(layers))
	for i, l := range layers {
		if img.DiffIDs != nil && l.DiffID != img.DiffIDs[i] {
			return nil, fmt.Errorf("layer %d: the layer source converted %s, the image config names %s", i, l.DiffID, img.DiffIDs[i])
		}
		if !isRootHash(l.RootHash) {
			return nil, fmt.Errorf("layer %d (%s): root hash %q is not 64 lower-case hex characters", i, l.DiffID, l.RootHash)
		}
		hashes[i] = l.RootHash
	}
	return hashes, nil
}

func isRootHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// pinnedYAMLRef is the image reference written back to the YAML: as the
// user wrote it, with the digest appended when it had none.
func pinnedYAMLRef(written, pinned string) string {
	if strings.Contains(written, "@") {
		return written
	}
	_, digest, _ := strings.Cut(pinned, "@")
	return written + "@" + digest
}

// annotate writes the initdata annotation (value) into the pod template's
// metadata, in place of a bare policy annotation, and the pinned image
// references into its containers.
func annotate(root *yaml.Node, path []string, value string, pinned map[string][]string, warn func(string)) error {
	tmpl := root
	for i, key := range path {
		next, err := ensureMapping(tmpl, path[:i], key)
		if err != nil {
			return err
		}
		tmpl = next
	}
	meta, err := ensureMapping(tmpl, path, "metadata")
	if err != nil {
		return err
	}
	annotations, err := ensureMapping(meta, append(path, "metadata"), "annotations")
	if err != nil {
		return err
	}
	for _, k := range []string{policy.Annotation, policy.AnnotationKata} {
		if deleteKey(annotations, k) {
			warn(fmt.Sprintf("removed annotation %s: the generated policy, inside the initdata document under %s, replaces it", k, initdata.Annotation))
		}
	}
	setString(annotations, initdata.Annotation, value)

	spec := mappingValue(tmpl, "spec")
	for key, refs := range pinned {
		list := mappingValue(spec, key)
		if list == nil || list.Kind != yaml.SequenceNode || len(list.Content) != len(refs) {
			return fmt.Errorf("spec.%s in the YAML does not match its decoded form (an alias or merge key?); write it out", key)
		}
		for i, ref := range refs {
			c := list.Content[i]
			img := mappingValue(c, "image")
			if c.Kind != yaml.MappingNode || img == nil || img.Kind != yaml.ScalarNode {
				return fmt.Errorf("spec.%s[%d].image is not written out in the YAML (an alias or merge key?); write it out", key, i)
			}
			if img.Value != ref {
				img.Value, img.Tag, img.Style = ref, "!!str", 0
			}
		}
	}
	return nil
}

// checkSettingsNames warns about settings for containers no workload has:
// most likely a misspelt name.
func (g *generator) checkSettingsNames(workloads []Workload) {
	for name := range g.opts.Settings.Containers {
		if name == AllContainers {
			continue
		}
		found := false
		for _, w := range workloads {
			if _, ok := w.Data.Containers[name]; ok {
				found = true
				break
			}
		}
		if !found {
			g.opts.Warn(fmt.Sprintf("settings name container %q, which no workload has", name))
		}
	}
}

func unmarshalJSON(raw []byte, v any) error { return json.Unmarshal(raw, v) }

// sandboxHostname is the pattern for the sandbox's hostname: a host-network
// pod shares the node's UTS namespace, so the kubelet sets none and the
// sandbox may come with an empty one.
func sandboxHostname(h podNaming, hostNetwork bool) string {
	if hostNetwork {
		return "(?:" + h.regexp() + ")?"
	}
	return h.regexp()
}
