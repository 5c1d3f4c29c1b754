package initdata

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"github.com/contrast-vm/contrast/policy"
)

// maxCompressed bounds the gzip compression of a document of MaxSize
// bytes: deflate's worst case plus the gzip header and trailer, generously.
const maxCompressed = MaxSize + MaxSize/1024 + 1024

// EncodeAnnotation returns the value of Annotation for a document: the
// standard base64 (with padding) of its gzip compression, as Kata reads it
// (`gzip -c | base64 -w0`). The gzip header carries no name and no time,
// so the value depends on the document alone.
func EncodeAnnotation(doc []byte) (string, error) {
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return "", err
	}
	if _, err := zw.Write(doc); err != nil {
		return "", fmt.Errorf("compress initdata: %w", err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("compress initdata: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b.Bytes()), nil
}

// DecodeAnnotation returns the document an Annotation value carries, its
// bytes exactly as compressed. It decompresses at most MaxSize bytes, so a
// small value that inflates to gigabytes (a gzip bomb) costs no more than
// that, and it takes one gzip member with nothing after it: Kata's Go
// runtime would read further members, its agent only the first, and a
// value two readers see differently is refused.
func DecodeAnnotation(value string) ([]byte, error) {
	if value == "" {
		return nil, fmt.Errorf("annotation %s is empty; it must hold the base64 of a gzip-compressed initdata document", Annotation)
	}
	// A document of MaxSize bytes compresses to at most maxCompressed
	// (deflate's stored blocks add 5 bytes in 64 KiB), so a longer value
	// is refused before any work is done.
	if base64.StdEncoding.DecodedLen(len(value)) > maxCompressed+2 {
		return nil, fmt.Errorf("annotation %s: %d characters of base64 are more than an initdata document of at most %d bytes needs", Annotation, len(value), MaxSize)
	}
	compressed, err := base64.StdEncoding.Strict().DecodeString(value)
	if err != nil {
		var corrupt base64.CorruptInputError
		if errors.As(err, &corrupt) {
			return nil, fmt.Errorf("annotation %s is not valid base64: bad input at offset %d", Annotation, int64(corrupt))
		}
		return nil, fmt.Errorf("annotation %s is not valid base64: %w", Annotation, err)
	}
	src := bytes.NewReader(compressed)
	zr, err := gzip.NewReader(src)
	if err != nil {
		return nil, fmt.Errorf("annotation %s is not gzip-compressed (base64 of `gzip -c` of the document): %w", Annotation, err)
	}
	zr.Multistream(false)
	doc, err := io.ReadAll(io.LimitReader(zr, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("annotation %s: decompress: %w", Annotation, err)
	}
	if len(doc) > MaxSize {
		return nil, fmt.Errorf("annotation %s decompresses to more than the %d-byte bound on an initdata document", Annotation, MaxSize)
	}
	// Reach the member's end, so its checksum is verified, and refuse
	// anything after it.
	if n, err := io.Copy(io.Discard, zr); err != nil || n != 0 {
		return nil, fmt.Errorf("annotation %s: decompress: %v", Annotation, err)
	}
	if src.Len() != 0 {
		return nil, fmt.Errorf("annotation %s: %d bytes follow the gzip stream (one gzip member, nothing after it)", Annotation, src.Len())
	}
	return doc, nil
}

// FromAnnotations returns the initdata document of a pod and the annotation
// it came from: Annotation, or a bare policy (policy.Annotation or Kata's
// policy.AnnotationKata) wrapped into the minimal document of Wrap. With
// none of them it returns (nil, "", nil): the pod has no policy. A pod that
// carries both an initdata document and a bare policy is refused: which
// policy it meant is not for the runtime to guess.
func FromAnnotations(annotations map[string]string) (*Document, string, error) {
	value, hasInitdata := annotations[Annotation]
	if hasInitdata {
		for _, k := range []string{policy.Annotation, policy.AnnotationKata} {
			if _, ok := annotations[k]; ok {
				return nil, "", fmt.Errorf("annotations %s and %s are both set: the policy goes either inside the initdata document (as policy.rego) or bare; keep one", Annotation, k)
			}
		}
		raw, err := DecodeAnnotation(value)
		if err != nil {
			return nil, "", err
		}
		doc, err := ParsePod(raw)
		if err != nil {
			return nil, "", fmt.Errorf("annotation %s: %w", Annotation, err)
		}
		return doc, Annotation, nil
	}
	module, key, err := policy.DecodeAnnotation(annotations)
	if err != nil || module == nil {
		return nil, "", err
	}
	doc, err := WrapDocument(module)
	if err != nil {
		return nil, "", fmt.Errorf("annotation %s: %w", key, err)
	}
	return doc, key, nil
}
