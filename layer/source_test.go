package layer

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ociLayout writes an OCI image layout in a test directory.
type ociLayout struct {
	t   *testing.T
	dir string
}

func newOCILayout(t *testing.T) *ociLayout {
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, ocispec.ImageLayoutFile), ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	return &ociLayout{t: t, dir: dir}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// blob stores data and returns its descriptor.
func (l *ociLayout) blob(mediaType string, data []byte) ocispec.Descriptor {
	l.t.Helper()
	d := digest.FromBytes(data)
	dir := filepath.Join(l.dir, ocispec.ImageBlobsDir, "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, d.Encoded()), data, 0o600); err != nil {
		l.t.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

func (l *ociLayout) jsonBlob(mediaType string, v any) ocispec.Descriptor {
	l.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.blob(mediaType, b)
}

func gzipped(t *testing.T, data []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// image stores a manifest for platform with the given layer blobs and diff
// IDs, and returns the manifest's descriptor.
func (l *ociLayout) image(platform ocispec.Platform, layers []ocispec.Descriptor, diffIDs []digest.Digest) ocispec.Descriptor {
	config := l.jsonBlob(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: platform,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	m := l.jsonBlob(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    config,
		Layers:    layers,
	})
	return m
}

func (l *ociLayout) index(entries ...ocispec.Descriptor) {
	writeJSON(l.t, filepath.Join(l.dir, ocispec.ImageIndexFile), ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: entries,
	})
}

func named(d ocispec.Descriptor, name string) ocispec.Descriptor {
	d.Annotations = map[string]string{ocispec.AnnotationRefName: name}
	return d
}

func readAllLayer(t *testing.T, b Blob) ([]byte, error) {
	t.Helper()
	r, err := b.Open(t.Context())
	if err != nil {
		t.Fatalf("opening layer %s: %v", b.DiffID, err)
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestOCILayoutImageLayers(t *testing.T) {
	bottom := numberedLayer(t, 0)
	top := buildTar(t, manyFiles(40))
	host := platforms.DefaultSpec()
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	if host.Architecture == other.Architecture {
		other.Architecture = "riscv64"
	}

	l := newOCILayout(t)
	layers := []ocispec.Descriptor{
		l.blob(ocispec.MediaTypeImageLayerGzip, gzipped(t, bottom)),
		l.blob(ocispec.MediaTypeImageLayer, top), // Uncompressed.
	}
	diffIDs := []digest.Digest{digest.FromBytes(bottom), digest.FromBytes(top)}
	hostImage := l.image(host, layers, diffIDs)
	otherImage := l.image(other, layers[:1], diffIDs[:1])
	hostEntry, otherEntry := hostImage, otherImage
	hostEntry.Platform, otherEntry.Platform = &host, &other
	multiPlatform := l.jsonBlob(ocispec.MediaTypeImageIndex, ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{otherEntry, hostEntry},
	})
	l.index(named(multiPlatform, "app:multi"), named(hostImage, "app:single"))

	for _, ref := range []string{"app:multi", "app:single"} {
		t.Run(ref, func(t *testing.T) {
			blobs, err := OCILayoutImageLayers(t.Context(), l.dir, ref)
			if err != nil {
				t.Fatal(err)
			}
			if len(blobs) != 2 {
				t.Fatalf("got %d layers, want 2", len(blobs))
			}
			for i, want := range [][]byte{bottom, top} {
				if blobs[i].DiffID != diffIDs[i] || blobs[i].CompressedSize != layers[i].Size {
					t.Errorf("layer %d: diff ID %s, size %d; want %s, %d", i, blobs[i].DiffID, blobs[i].CompressedSize, diffIDs[i], layers[i].Size)
				}
				got, err := readAllLayer(t, blobs[i])
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("layer %d reads %d bytes, %v; want its %d-byte tar", i, len(got), err, len(want))
				}
			}
			info, err := ComputeInfo(t.Context(), blobs[0], nil)
			if _, want := convertFile(t, bottom); err != nil || info != want {
				t.Errorf("ComputeInfo of layer 0 = %+v, %v; want %+v", info, err, want)
			}
		})
	}

	for _, tc := range []struct {
		name, ref string
		want      []string
	}{
		{"no name for two images", "", []string{`name one of "app:multi", "app:single"`}},
		{"unknown name", "app:gone", []string{`no image named "app:gone"`, `"app:multi", "app:single"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OCILayoutImageLayers(t.Context(), l.dir, tc.ref)
			for _, want := range tc.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("OCILayoutImageLayers(%q) = %v, want an error containing %q", tc.ref, err, want)
				}
			}
		})
	}

	t.Run("only image, no name", func(t *testing.T) {
		single := newOCILayout(t)
		single.index(single.image(host, []ocispec.Descriptor{single.blob(ocispec.MediaTypeImageLayerGzip, gzipped(t, bottom))}, diffIDs[:1]))
		blobs, err := OCILayoutImageLayers(t.Context(), single.dir, "")
		if err != nil || len(blobs) != 1 || blobs[0].DiffID != diffIDs[0] {
			t.Fatalf("OCILayoutImageLayers = %+v, %v; want the one layer %s", blobs, err, diffIDs[0])
		}
	})

	t.Run("no image for this platform", func(t *testing.T) {
		foreign := newOCILayout(t)
		foreign.index(named(foreign.image(other, []ocispec.Descriptor{foreign.blob(ocispec.MediaTypeImageLayer, bottom)}, diffIDs[:1]), "x"))
		if _, err := OCILayoutImageLayers(t.Context(), foreign.dir, "x"); err == nil {
			t.Fatalf("OCILayoutImageLayers found layers in an image for %s only", platforms.Format(other))
		}
	})
}

func TestOCILayoutLayersAreChecked(t *testing.T) {
	layerTar := numberedLayer(t, 0)
	otherTar := numberedLayer(t, 1)
	host := platforms.DefaultSpec()
	for _, tc := range []struct {
		name  string
		build func(l *ociLayout) ocispec.Descriptor
		want  string
	}{
		{"diff ID of another tar", func(l *ociLayout) ocispec.Descriptor {
			return l.image(host, []ocispec.Descriptor{l.blob(ocispec.MediaTypeImageLayerGzip, gzipped(t, layerTar))}, []digest.Digest{digest.FromBytes(otherTar)})
		}, "decompresses to diff ID " + digest.FromBytes(layerTar).String() + ", the config says " + digest.FromBytes(otherTar).String()},
		{"blob replaced", func(l *ociLayout) ocispec.Descriptor {
			desc := l.blob(ocispec.MediaTypeImageLayerGzip, gzipped(t, layerTar))
			replaced := gzipped(t, otherTar)
			path := filepath.Join(l.dir, "blobs", "sha256", desc.Digest.Encoded())
			if err := os.WriteFile(path, replaced, 0o600); err != nil {
				t.Fatal(err)
			}
			desc.Size = int64(len(replaced))
			return l.image(host, []ocispec.Descriptor{desc}, []digest.Digest{digest.FromBytes(otherTar)})
		}, "the manifest says " + digest.FromBytes(gzipped(t, layerTar)).String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newOCILayout(t)
			l.index(tc.build(l))
			blobs, err := OCILayoutImageLayers(t.Context(), l.dir, "")
			if err != nil {
				t.Fatal(err)
			}
			_, err = readAllLayer(t, blobs[0])
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reading the layer = %v, want an error containing %q", err, tc.want)
			}
			dir := t.TempDir()
			if _, _, err := openCache(t, dir, 1<<30).Get(t.Context(), blobs[0], nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Cache.Get = %v, want an error containing %q", err, tc.want)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("failed Get left %v", names)
			}
		})
	}

	t.Run("manifest altered", func(t *testing.T) {
		l := newOCILayout(t)
		m := l.image(host, []ocispec.Descriptor{l.blob(ocispec.MediaTypeImageLayer, layerTar)}, []digest.Digest{digest.FromBytes(layerTar)})
		path := filepath.Join(l.dir, "blobs", "sha256", m.Digest.Encoded())
		data := readFile(t, path)
		data[len(data)-2] = ' '
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		l.index(m)
		_, err := OCILayoutImageLayers(t.Context(), l.dir, "")
		if want := "its descriptor says " + m.Digest.String(); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("OCILayoutImageLayers = %v, want an error containing %q", err, want)
		}
	})
}
