package generate

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layoutImage is one image written into a test OCI layout.
type layoutImage struct {
	names []string          // ref.name annotations, one index entry each
	files map[string]string // the single layer's files
	cmd   []string
}

// writeLayout writes an OCI layout holding images and returns the digests
// of their manifests and the diff IDs of their layers.
func writeLayout(t *testing.T, dir string, imgs ...layoutImage) (manifests []digest.Digest, diffIDs []digest.Digest) {
	t.Helper()
	blob := func(data []byte) ocispec.Descriptor {
		d := digest.FromBytes(data)
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(data))}
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var index ocispec.Index
	index.SchemaVersion = 2
	index.MediaType = ocispec.MediaTypeImageIndex
	for _, img := range imgs {
		var tarball bytes.Buffer
		tw := tar.NewWriter(&tarball)
		names := make([]string, 0, len(img.files))
		for name := range img.files {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(img.files[name])), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(img.files[name]))
		}
		tw.Close()
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(tarball.Bytes())
		zw.Close()
		layer := blob(gz.Bytes())
		layer.MediaType = ocispec.MediaTypeImageLayerGzip
		diffID := digest.FromBytes(tarball.Bytes())
		config := blob(mustJSON(ocispec.Image{
			Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
			Config:   ocispec.ImageConfig{Cmd: img.cmd},
			RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
		}))
		config.MediaType = ocispec.MediaTypeImageConfig
		manifest := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{layer}}
		manifest.SchemaVersion = 2
		m := blob(mustJSON(manifest))
		m.MediaType = ocispec.MediaTypeImageManifest
		for _, name := range img.names {
			entry := m
			entry.Annotations = map[string]string{ocispec.AnnotationRefName: name}
			index.Manifests = append(index.Manifests, entry)
		}
		manifests = append(manifests, m.Digest)
		diffIDs = append(diffIDs, diffID)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), mustJSON(index), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return manifests, diffIDs
}

func TestOCILayoutResolve(t *testing.T) {
	dir := t.TempDir()
	manifests, diffIDs := writeLayout(t, dir,
		layoutImage{names: []string{"docker.io/library/busybox:1.36"}, cmd: []string{"sh"},
			files: map[string]string{"etc/passwd": "root:x:0:0::/:/bin/sh\n", "etc/group": "root:x:0:\n"}},
		layoutImage{names: []string{"v1"}, cmd: []string{"/app"}, files: map[string]string{"app": "#!"}},
		layoutImage{names: []string{"registry.example/twice:a", "registry.example/twice:b"}, cmd: []string{"x"}, files: map[string]string{"x": "1"}},
	)
	r, err := OCILayoutImages(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref, wantRef, wantName string
		image                  int
	}{
		{"busybox:1.36", "docker.io/library/busybox@" + manifests[0].String(), "docker.io/library/busybox:1.36", 0},
		{"docker.io/library/busybox:1.36", "docker.io/library/busybox@" + manifests[0].String(), "docker.io/library/busybox:1.36", 0},
		{"busybox@" + manifests[0].String(), "docker.io/library/busybox@" + manifests[0].String(), "docker.io/library/busybox:1.36", 0},
		{"busybox:1.36@" + manifests[0].String(), "docker.io/library/busybox@" + manifests[0].String(), "docker.io/library/busybox:1.36", 0},
		{"registry.example/app:v1", "registry.example/app@" + manifests[1].String(), "v1", 1},
		{"registry.example/twice:b", "registry.example/twice@" + manifests[2].String(), "registry.example/twice:b", 2},
		// The digest names the content under whatever tag the layout has it.
		{"busybox:1.37@" + manifests[0].String(), "docker.io/library/busybox@" + manifests[0].String(), "docker.io/library/busybox:1.36", 0},
		{"registry.example/app@" + manifests[1].String(), "registry.example/app@" + manifests[1].String(), "v1", 1},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			img, err := r.Resolve(context.Background(), tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			if img.Ref != tc.wantRef || img.Name != tc.wantName {
				t.Errorf("ref %s name %s, want %s and %s", img.Ref, img.Name, tc.wantRef, tc.wantName)
			}
			if !slices.Equal(img.DiffIDs, []string{diffIDs[tc.image].String()}) {
				t.Errorf("diff IDs %q, want %s", img.DiffIDs, diffIDs[tc.image])
			}
			if tc.image == 0 && (string(img.EtcPasswd) != "root:x:0:0::/:/bin/sh\n" || !slices.Equal(img.Config.Cmd, []string{"sh"})) {
				t.Errorf("passwd %q cmd %q", img.EtcPasswd, img.Config.Cmd)
			}
		})
	}
}

func TestOCILayoutErrors(t *testing.T) {
	dir := t.TempDir()
	manifests, _ := writeLayout(t, dir,
		layoutImage{names: []string{"docker.io/library/busybox:1.36"}, cmd: []string{"sh"}, files: map[string]string{"a": "1"}},
		layoutImage{names: []string{"v1"}, cmd: []string{"x"}, files: map[string]string{"b": "1"}},
		layoutImage{names: []string{"v1"}, cmd: []string{"y"}, files: map[string]string{"c": "1"}},
	)
	r, err := OCILayoutImages(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{"busybox:1.37", []string{"busybox:1.37 is not in OCI layout", `"docker.io/library/busybox:1.36"`, `"v1"`}},
		{"evil.example/busybox:1.36", []string{"not in OCI layout"}},
		{"busybox:1.36@" + digestOf(7), []string{"has digest " + manifests[0].String(), "(docker.io/library/busybox:1.36)"}},
		{"registry.example/app:v1@" + digestOf(7), []string{"has digest "}},
		{"registry.example/app:v1", []string{"ambiguous", manifests[1].String(), manifests[2].String()}},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			_, err := r.Resolve(context.Background(), tc.ref)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := r.Resolve(context.Background(), "busybox:1.37"); !errors.Is(err, ErrImageNotFound) {
		t.Errorf("missing image: %v, want ErrImageNotFound", err)
	}

	// A tampered config is refused by its digest.
	configs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	for _, p := range configs {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(`"Cmd":["sh"]`)) {
			os.WriteFile(p, bytes.Replace(b, []byte(`"Cmd":["sh"]`), []byte(`"Cmd":["ev"]`), 1), 0o644)
		}
	}
	if _, err := r.Resolve(context.Background(), "busybox:1.36"); err == nil || !strings.Contains(err.Error(), "has digest") {
		t.Errorf("tampered config: %v", err)
	}

	if _, err := OCILayoutImages(t.TempDir()); err == nil || !strings.Contains(err.Error(), "oci-layout") {
		t.Errorf("empty directory: %v", err)
	}
}
