package generate

import (
	"errors"
	"fmt"
	"reflect"

	kjson "sigs.k8s.io/json"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// decodeObject reads a YAML document as the API server does: YAML to JSON
// (duplicate keys refused), then JSON into obj with case-sensitive field
// names. Unknown fields come back as strict errors, which the API server
// warns about and drops; err is what it refuses.
func decodeObject(body []byte, obj any) (strict []error, err error) {
	js, err := k8syaml.YAMLToJSONStrict(body)
	if err != nil {
		return nil, err
	}
	return kjson.UnmarshalStrict(js, obj)
}

// decodeGeneric reads a YAML document into maps and slices.
func decodeGeneric(body []byte) (any, error) {
	js, err := k8syaml.YAMLToJSONStrict(body)
	if err != nil {
		return nil, err
	}
	var v any
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// checkRewrite makes sure the re-encoded document means what the original
// meant with only the generator's edits: the initdata annotation set, bare
// policy annotations removed, images pinned. yaml.v3 does not keep every construct (an empty
// value in a flow mapping, for one), and a policy for a YAML that differs
// from the one deployed would not match its pods.
func checkRewrite(original, rewritten []byte, path []string, value string, pinned map[string][]string) error {
	want, err := decodeGeneric(original)
	if err != nil {
		return err
	}
	got, err := decodeGeneric(rewritten)
	if err != nil {
		return fmt.Errorf("writing the document back made it unreadable (%w); write the pod template in plain block style", err)
	}
	tmpl, ok := want.(map[string]any)
	for _, key := range path {
		if !ok {
			break
		}
		tmpl, ok = childMap(tmpl, key)
	}
	if !ok {
		return errors.New("the pod template is not a mapping")
	}
	meta, ok := childMap(tmpl, "metadata")
	if !ok {
		return errors.New("the pod template's metadata is not a mapping")
	}
	annotations, ok := childMap(meta, "annotations")
	if !ok {
		return errors.New("the pod template's annotations are not a mapping")
	}
	delete(annotations, policy.Annotation)
	delete(annotations, policy.AnnotationKata)
	annotations[initdata.Annotation] = value
	spec, _ := tmpl["spec"].(map[string]any)
	for key, refs := range pinned {
		list, _ := spec[key].([]any)
		for i, ref := range refs {
			if i < len(list) {
				if c, ok := list[i].(map[string]any); ok {
					c["image"] = ref
				}
			}
		}
	}
	if !reflect.DeepEqual(want, got) {
		return errors.New("writing the document back changed more than the policy annotation and the images (a YAML construct gopkg.in/yaml.v3 does not keep); write the pod template in plain block style")
	}
	return nil
}

// childMap returns m[key] as a map, creating it when absent or null.
func childMap(m map[string]any, key string) (map[string]any, bool) {
	switch v := m[key].(type) {
	case map[string]any:
		return v, true
	case nil:
		c := map[string]any{}
		m[key] = c
		return c, true
	default:
		return nil, false
	}
}
