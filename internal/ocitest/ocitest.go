// Package ocitest writes OCI image layouts (blobs, configs, manifests,
// indexes, layer tars) for tests. Only tests import it.
package ocitest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layout is an OCI image layout in a test's temporary directory.
type Layout struct {
	Dir string
	t   testing.TB
}

// New writes the oci-layout file of an empty layout.
func New(t testing.TB) *Layout {
	t.Helper()
	l := &Layout{Dir: t.TempDir(), t: t}
	l.writeJSON(filepath.Join(l.Dir, ocispec.ImageLayoutFile), ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	return l
}

func (l *Layout) writeJSON(path string, v any) {
	l.t.Helper()
	if err := os.WriteFile(path, l.marshal(v), 0o644); err != nil {
		l.t.Fatal(err)
	}
}

func (l *Layout) marshal(v any) []byte {
	l.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		l.t.Fatal(err)
	}
	return b
}

// BlobPath is where the blob with digest d is stored.
func (l *Layout) BlobPath(d digest.Digest) string {
	return filepath.Join(l.Dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// Blob stores data under its digest and returns its descriptor.
func (l *Layout) Blob(mediaType string, data []byte) ocispec.Descriptor {
	l.t.Helper()
	d := digest.FromBytes(data)
	path := l.BlobPath(d)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// JSONBlob stores v as JSON.
func (l *Layout) JSONBlob(mediaType string, v any) ocispec.Descriptor {
	l.t.Helper()
	return l.Blob(mediaType, l.marshal(v))
}

// Compression is how Layer stores a layer tar.
type Compression int

const (
	Uncompressed Compression = iota
	Gzip
)

// Layer stores a layer tar, compressed or not; its diff ID is
// digest.FromBytes(layerTar) either way.
func (l *Layout) Layer(layerTar []byte, c Compression) ocispec.Descriptor {
	l.t.Helper()
	if c == Gzip {
		return l.Blob(ocispec.MediaTypeImageLayerGzip, Gzipped(l.t, layerTar))
	}
	return l.Blob(ocispec.MediaTypeImageLayer, layerTar)
}

// Image is what Layout.Image writes: a config and a manifest.
type Image struct {
	Platform ocispec.Platform // zero means linux on the host's architecture
	Config   ocispec.ImageConfig
	Layers   []ocispec.Descriptor
	DiffIDs  []digest.Digest // as the config lists them, right or wrong
}

// Image stores img's config and manifest and returns the manifest's
// descriptor.
func (l *Layout) Image(img Image) ocispec.Descriptor {
	l.t.Helper()
	if img.Platform.OS == "" {
		img.Platform = ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	config := l.JSONBlob(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: img.Platform,
		Config:   img.Config,
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: img.DiffIDs},
	})
	return l.JSONBlob(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    config,
		Layers:    img.Layers,
	})
}

func index(manifests []ocispec.Descriptor) ocispec.Index {
	return ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: manifests,
	}
}

// Index stores an index blob, as a multi-platform image is, and returns its
// descriptor for an entry of another index.
func (l *Layout) Index(manifests ...ocispec.Descriptor) ocispec.Descriptor {
	l.t.Helper()
	return l.JSONBlob(ocispec.MediaTypeImageIndex, index(manifests))
}

// WriteIndexJSON writes the layout's index.json with entries.
func (l *Layout) WriteIndexJSON(entries ...ocispec.Descriptor) {
	l.t.Helper()
	l.writeJSON(filepath.Join(l.Dir, ocispec.ImageIndexFile), index(entries))
}

// Named returns d as an index.json entry with the ref name refName.
func Named(d ocispec.Descriptor, refName string) ocispec.Descriptor {
	d.Annotations = map[string]string{ocispec.AnnotationRefName: refName}
	return d
}

// ContainerdNamed returns d as an index.json entry that containerd's import
// stores as the image imageName.
func ContainerdNamed(d ocispec.Descriptor, imageName, refName string) ocispec.Descriptor {
	d.Annotations = map[string]string{images.AnnotationImageName: imageName, ocispec.AnnotationRefName: refName}
	return d
}

// Gzipped compresses data.
func Gzipped(t testing.TB, data []byte) []byte {
	t.Helper()
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

// Tar packs files (name to content) as regular files of mode 0644 and time
// zero, in name order so that the same files give the same bytes.
func Tar(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[name])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TarDir packs the layout as a tar, the form containerd imports.
func (l *Layout) TarDir() []byte {
	l.t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(l.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == l.Dir {
			return err
		}
		rel, err := filepath.Rel(l.Dir, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		l.t.Fatalf("packing %s: %v", l.Dir, err)
	}
	return buf.Bytes()
}
