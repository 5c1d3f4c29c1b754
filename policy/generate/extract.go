package generate

import (
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/contrast-vm/contrast/policy/initdata"
)

// Embedded is a policy found in a workload's pod template.
type Embedded struct {
	Document              int
	Kind, Name, Namespace string
	// Key is the annotation it was read from.
	Key    string
	Policy []byte
	// Initdata is the document the pods launch with: the one the
	// annotation carries, or the bare policy wrapped (initdata.Wrap).
	Initdata *initdata.Document
}

// Extract returns the policies that the workloads of a YAML stream carry in
// their pod templates' annotations (the initdata annotation, or a bare
// policy under ours or Kata's), in document order, as the shim reads
// them. A workload without one is skipped; a malformed annotation is an
// error.
func Extract(in []byte) ([]Embedded, error) {
	var out []Embedded
	n := 0
	for _, c := range splitDocuments(in) {
		doc, err := parseChunk(c)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", describe(n+1, "", ""), err)
		}
		if doc == nil {
			continue
		}
		n++
		if doc.Content[0].Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s: not a Kubernetes object (a YAML mapping with apiVersion and kind)", describe(n, "", ""))
		}
		var h header
		if _, err := decodeObject(c.body, &h); err != nil {
			return nil, fmt.Errorf("%s: %w", describe(n, "", ""), err)
		}
		path, ok := templatePaths[h.Kind]
		if !ok {
			continue
		}
		name := h.Metadata.Name
		if name == "" {
			name = h.Metadata.GenerateName
		}
		annotations, err := templateAnnotations(c.body, path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", describe(n, h.Kind, name), err)
		}
		id, key, err := initdata.FromAnnotations(annotations)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", describe(n, h.Kind, name), err)
		}
		if id == nil {
			continue
		}
		out = append(out, Embedded{Document: n, Kind: h.Kind, Name: name, Namespace: h.Metadata.Namespace, Key: key, Policy: id.Policy(), Initdata: id})
	}
	return out, nil
}

// templatePaths is where each workload kind keeps its pod template.
var templatePaths = map[string][]string{
	"Pod":         nil,
	"Deployment":  {"spec", "template"},
	"StatefulSet": {"spec", "template"},
	"DaemonSet":   {"spec", "template"},
	"ReplicaSet":  {"spec", "template"},
	"Job":         {"spec", "template"},
	"CronJob":     {"spec", "jobTemplate", "spec", "template"},
}

// templateAnnotations returns the annotations of the pod template at path.
func templateAnnotations(body []byte, path []string) (map[string]string, error) {
	v, err := decodeGeneric(body)
	if err != nil {
		return nil, err
	}
	for _, key := range append(append([]string{}, path...), "metadata", "annotations") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, nil
		}
		v = m[key]
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, nil
	}
	out := make(map[string]string, len(m))
	for k, val := range m {
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("annotation %s is not a string", k)
		}
		out[k] = s
	}
	return out, nil
}
