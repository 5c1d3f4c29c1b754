package policy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"unicode/utf8"
)

// MaxModuleSize bounds a policy module carried in an annotation. Kubernetes
// caps all of a pod's annotations at 256 KiB together, so a larger module
// cannot come from a real pod; the bound keeps a hostile annotation from
// costing the shim or agent more than that.
const MaxModuleSize = 1 << 20

// EncodeAnnotation returns the annotation value that carries module: standard
// base64 with padding, as Kata's genpolicy writes it.
func EncodeAnnotation(module []byte) string {
	return base64.StdEncoding.EncodeToString(module)
}

// DecodeAnnotation returns the policy module carried by a pod's annotations
// and the key it was read from: Annotation, or AnnotationKata when only that
// one is set. With neither present it returns (nil, "", nil): the pod has no
// policy. Both present is accepted only when they carry the same module.
func DecodeAnnotation(annotations map[string]string) (module []byte, key string, err error) {
	ours, hasOurs := annotations[Annotation]
	kata, hasKata := annotations[AnnotationKata]
	switch {
	case hasOurs:
		module, err = decodeValue(Annotation, ours)
		if err != nil {
			return nil, "", err
		}
		if hasKata {
			other, err := decodeValue(AnnotationKata, kata)
			if err != nil {
				return nil, "", err
			}
			if !bytes.Equal(module, other) {
				return nil, "", fmt.Errorf("annotations %s and %s are both set and carry different policies; keep one", Annotation, AnnotationKata)
			}
		}
		return module, Annotation, nil
	case hasKata:
		module, err = decodeValue(AnnotationKata, kata)
		if err != nil {
			return nil, "", err
		}
		return module, AnnotationKata, nil
	default:
		return nil, "", nil
	}
}

func decodeValue(key, value string) ([]byte, error) {
	if value == "" {
		return nil, fmt.Errorf("annotation %s is empty; it must hold the base64 of a Rego module", key)
	}
	// Decoding never yields more than 3/4 of the input, so this check bounds
	// the work before any of it is done.
	if base64.StdEncoding.DecodedLen(len(value)) > MaxModuleSize+2 {
		return nil, fmt.Errorf("annotation %s: %d characters of base64 decode to more than the %d-byte bound on a policy module", key, len(value), MaxModuleSize)
	}
	module, err := base64.StdEncoding.Strict().DecodeString(value)
	if err != nil {
		var corrupt base64.CorruptInputError
		if errors.As(err, &corrupt) {
			return nil, fmt.Errorf("annotation %s is not valid base64: bad input at offset %d", key, int64(corrupt))
		}
		return nil, fmt.Errorf("annotation %s is not valid base64: %w", key, err)
	}
	if len(module) == 0 {
		return nil, fmt.Errorf("annotation %s decodes to an empty policy module", key)
	}
	if len(module) > MaxModuleSize {
		return nil, fmt.Errorf("annotation %s: the policy module is %d bytes, more than the %d-byte bound", key, len(module), MaxModuleSize)
	}
	if !utf8.Valid(module) {
		return nil, fmt.Errorf("annotation %s: the decoded policy module is not valid UTF-8 (a Rego module is text)", key)
	}
	return module, nil
}
