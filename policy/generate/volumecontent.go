package generate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// volumeObjects are the ConfigMaps and Secrets of the generator's input,
// by namespace ("" for none given) and name: the content a policy can pin
// for the volumes that show them (Settings.PinVolumeContent).
type volumeObjects struct {
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
}

func objectKey(namespace, name string) string { return namespace + "/" + name }

// collectVolumeObjects reads the ConfigMaps and Secrets among the input's
// documents; others, and documents that are not objects, it leaves to the
// generator's main pass.
func collectVolumeObjects(chunks []chunk) (volumeObjects, error) {
	objs := volumeObjects{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	for _, c := range chunks {
		doc, err := parseChunk(c)
		if err != nil || doc == nil {
			continue
		}
		var h header
		if _, err := decodeObject(c.body, &h); err != nil || h.APIVersion != "v1" {
			continue
		}
		switch h.Kind {
		case "ConfigMap":
			var cm corev1.ConfigMap
			if _, err := decodeObject(c.body, &cm); err != nil {
				return objs, fmt.Errorf("read ConfigMap %s: %w", h.Metadata.Name, err)
			}
			objs.configMaps[objectKey(cm.Namespace, cm.Name)] = &cm
		case "Secret":
			var s corev1.Secret
			if _, err := decodeObject(c.body, &s); err != nil {
				return objs, fmt.Errorf("read Secret %s: %w", h.Metadata.Name, err)
			}
			objs.secrets[objectKey(s.Namespace, s.Name)] = &s
		}
	}
	return objs, nil
}

// pinnedKeys is what a ConfigMap or Secret volume shows, key by key, as the
// SHA-256 (hex) of each file: the object's keys, or its items' paths. It
// returns nil, with the reason, where the content cannot be pinned: the
// object is not in the input, or an item's path has a directory (the
// kubelet's key would then be a directory).
func (o volumeObjects) pinnedKeys(namespace string, vol *corev1.Volume) (map[string]string, string) {
	var values map[string][]byte
	var items []corev1.KeyToPath
	var what string
	switch {
	case vol.ConfigMap != nil:
		what = "ConfigMap " + vol.ConfigMap.Name
		cm := o.configMaps[objectKey(namespace, vol.ConfigMap.Name)]
		if cm == nil && namespace == "" {
			cm = o.configMaps[objectKey("default", vol.ConfigMap.Name)]
		}
		if cm == nil {
			return nil, what + " is not in the input"
		}
		values = map[string][]byte{}
		for k, v := range cm.Data {
			values[k] = []byte(v)
		}
		for k, v := range cm.BinaryData {
			values[k] = v
		}
		items = vol.ConfigMap.Items
	case vol.Secret != nil:
		what = "Secret " + vol.Secret.SecretName
		s := o.secrets[objectKey(namespace, vol.Secret.SecretName)]
		if s == nil && namespace == "" {
			s = o.secrets[objectKey("default", vol.Secret.SecretName)]
		}
		if s == nil {
			return nil, what + " is not in the input"
		}
		values = map[string][]byte{}
		for k, v := range s.Data {
			values[k] = v
		}
		for k, v := range s.StringData {
			values[k] = []byte(v)
		}
		items = vol.Secret.Items
	default:
		return nil, "only ConfigMap and Secret volumes can be pinned"
	}
	keys := map[string]string{}
	sum := func(b []byte) string {
		h := sha256.Sum256(b)
		return hex.EncodeToString(h[:])
	}
	if len(items) == 0 {
		for k, v := range values {
			keys[k] = sum(v)
		}
		return keys, ""
	}
	for _, it := range items {
		v, ok := values[it.Key]
		if !ok {
			return nil, fmt.Sprintf("%s has no key %s", what, it.Key)
		}
		if strings.Contains(it.Path, "/") {
			return nil, fmt.Sprintf("%s: item path %s has a directory", what, it.Path)
		}
		keys[it.Path] = sum(v)
	}
	return keys, ""
}
