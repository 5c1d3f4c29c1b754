package layer

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocitest"
)

// testLayers are the layers both image sources are tested with: a gzip
// one and an uncompressed one of many files.
type testLayers struct {
	tars    [][]byte
	blobs   []ocispec.Descriptor
	diffIDs []digest.Digest
}

func writeTestLayers(t *testing.T, l *ocitest.Layout) testLayers {
	t.Helper()
	bottom := numberedLayer(t, 0)
	top := buildTar(t, manyFiles(40))
	return testLayers{
		tars:    [][]byte{bottom, top},
		blobs:   []ocispec.Descriptor{l.Layer(bottom, ocitest.Gzip), l.Layer(top, ocitest.Uncompressed)},
		diffIDs: []digest.Digest{digest.FromBytes(bottom), digest.FromBytes(top)},
	}
}

// check fails the test unless blobs are the test layers, by diff ID, size
// and content.
func (tl testLayers) check(t *testing.T, blobs []Blob) {
	t.Helper()
	if len(blobs) != 2 {
		t.Fatalf("got %d layers, want 2", len(blobs))
	}
	for i, want := range tl.tars {
		if blobs[i].DiffID != tl.diffIDs[i] || blobs[i].CompressedSize != tl.blobs[i].Size {
			t.Errorf("layer %d: diff ID %s, size %d; want %s, %d", i, blobs[i].DiffID, blobs[i].CompressedSize, tl.diffIDs[i], tl.blobs[i].Size)
		}
		got, err := readAllLayer(t, blobs[i])
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("layer %d reads %d bytes, %v; want its %d-byte tar", i, len(got), err, len(want))
		}
	}
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
	host := platforms.DefaultSpec()
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	if host.Architecture == other.Architecture {
		other.Architecture = "riscv64"
	}

	l := ocitest.New(t)
	tl := writeTestLayers(t, l)
	bottom, diffIDs := tl.tars[0], tl.diffIDs
	hostImage := l.Image(ocitest.Image{Platform: host, Layers: tl.blobs, DiffIDs: diffIDs})
	otherImage := l.Image(ocitest.Image{Platform: other, Layers: tl.blobs[:1], DiffIDs: diffIDs[:1]})
	hostEntry, otherEntry := hostImage, otherImage
	hostEntry.Platform, otherEntry.Platform = &host, &other
	multiPlatform := l.Index(otherEntry, hostEntry)
	l.WriteIndexJSON(ocitest.Named(multiPlatform, "app:multi"), ocitest.Named(hostImage, "app:single"))

	for _, ref := range []string{"app:multi", "app:single"} {
		t.Run(ref, func(t *testing.T) {
			blobs, err := OCILayoutImageLayers(t.Context(), l.Dir, ref)
			if err != nil {
				t.Fatal(err)
			}
			tl.check(t, blobs)
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
			_, err := OCILayoutImageLayers(t.Context(), l.Dir, tc.ref)
			for _, want := range tc.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("OCILayoutImageLayers(%q) = %v, want an error containing %q", tc.ref, err, want)
				}
			}
		})
	}

	t.Run("only image, no name", func(t *testing.T) {
		single := ocitest.New(t)
		single.WriteIndexJSON(single.Image(ocitest.Image{Platform: host, Layers: []ocispec.Descriptor{single.Layer(bottom, ocitest.Gzip)}, DiffIDs: diffIDs[:1]}))
		blobs, err := OCILayoutImageLayers(t.Context(), single.Dir, "")
		if err != nil || len(blobs) != 1 || blobs[0].DiffID != diffIDs[0] {
			t.Fatalf("OCILayoutImageLayers = %+v, %v; want the one layer %s", blobs, err, diffIDs[0])
		}
	})

	t.Run("no image for this platform", func(t *testing.T) {
		foreign := ocitest.New(t)
		foreign.WriteIndexJSON(ocitest.Named(foreign.Image(ocitest.Image{Platform: other, Layers: []ocispec.Descriptor{foreign.Layer(bottom, ocitest.Uncompressed)}, DiffIDs: diffIDs[:1]}), "x"))
		if _, err := OCILayoutImageLayers(t.Context(), foreign.Dir, "x"); err == nil {
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
		build func(l *ocitest.Layout) ocispec.Descriptor
		want  string
	}{
		{"diff ID of another tar", func(l *ocitest.Layout) ocispec.Descriptor {
			return l.Image(ocitest.Image{Platform: host, Layers: []ocispec.Descriptor{l.Layer(layerTar, ocitest.Gzip)}, DiffIDs: []digest.Digest{digest.FromBytes(otherTar)}})
		}, "decompresses to diff ID " + digest.FromBytes(layerTar).String() + ", the config says " + digest.FromBytes(otherTar).String()},
		{"blob replaced", func(l *ocitest.Layout) ocispec.Descriptor {
			desc := l.Layer(layerTar, ocitest.Gzip)
			replaced := ocitest.Gzipped(t, otherTar)
			if err := os.WriteFile(l.BlobPath(desc.Digest), replaced, 0o600); err != nil {
				t.Fatal(err)
			}
			desc.Size = int64(len(replaced))
			return l.Image(ocitest.Image{Platform: host, Layers: []ocispec.Descriptor{desc}, DiffIDs: []digest.Digest{digest.FromBytes(otherTar)}})
		}, "the manifest says " + digest.FromBytes(ocitest.Gzipped(t, layerTar)).String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := ocitest.New(t)
			l.WriteIndexJSON(tc.build(l))
			blobs, err := OCILayoutImageLayers(t.Context(), l.Dir, "")
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
		l := ocitest.New(t)
		m := l.Image(ocitest.Image{Platform: host, Layers: []ocispec.Descriptor{l.Layer(layerTar, ocitest.Uncompressed)}, DiffIDs: []digest.Digest{digest.FromBytes(layerTar)}})
		path := l.BlobPath(m.Digest)
		data := readFile(t, path)
		data[len(data)-2] = ' '
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		l.WriteIndexJSON(m)
		_, err := OCILayoutImageLayers(t.Context(), l.Dir, "")
		if want := "its descriptor says " + m.Digest.String(); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("OCILayoutImageLayers = %v, want an error containing %q", err, want)
		}
	})
}
