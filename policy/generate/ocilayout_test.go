package generate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocitest"
)

// layoutImage is one image written into a test OCI layout.
type layoutImage struct {
	names []string          // ref.name annotations, one index entry each
	files map[string]string // the single layer's files
	cmd   []string
}

// writeLayout writes an OCI layout holding images, each with one gzip
// layer, and returns its directory, the digests of their manifests and the
// diff IDs of their layers.
func writeLayout(t *testing.T, imgs ...layoutImage) (dir string, manifests []digest.Digest, diffIDs []digest.Digest) {
	t.Helper()
	l := ocitest.New(t)
	var entries []ocispec.Descriptor
	for _, img := range imgs {
		layerTar := ocitest.Tar(t, img.files)
		diffID := digest.FromBytes(layerTar)
		m := l.Image(ocitest.Image{
			Config:  ocispec.ImageConfig{Cmd: img.cmd},
			Layers:  []ocispec.Descriptor{l.Layer(layerTar, ocitest.Gzip)},
			DiffIDs: []digest.Digest{diffID},
		})
		for _, name := range img.names {
			entries = append(entries, ocitest.Named(m, name))
		}
		manifests = append(manifests, m.Digest)
		diffIDs = append(diffIDs, diffID)
	}
	l.WriteIndexJSON(entries...)
	return l.Dir, manifests, diffIDs
}

func TestOCILayoutResolve(t *testing.T) {
	dir, manifests, diffIDs := writeLayout(t,
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
	dir, manifests, _ := writeLayout(t,
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

// TestOCILayoutLayerIsChecked: the user files come from a layer whose bytes
// must be the manifest's, however large (this one is over 16 MiB, which
// blobs were once read unchecked beyond); here a tar whose /etc/passwd was
// edited in place stays a valid tar, and only its digest tells.
func TestOCILayoutLayerIsChecked(t *testing.T) {
	l := ocitest.New(t)
	layerTar := ocitest.Tar(t, map[string]string{
		"etc/passwd": "root:x:0:0::/:/bin/sh\n",
		"filler":     strings.Repeat("x", 17<<20),
	})
	desc := l.Layer(layerTar, ocitest.Uncompressed)
	m := l.Image(ocitest.Image{Layers: []ocispec.Descriptor{desc}, DiffIDs: []digest.Digest{digest.FromBytes(layerTar)}})
	l.WriteIndexJSON(ocitest.Named(m, "registry.example/app:1"))
	r, err := OCILayoutImages(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if img, err := r.Resolve(context.Background(), "registry.example/app:1"); err != nil || !strings.HasPrefix(string(img.EtcPasswd), "root:x:0:0") {
		t.Fatalf("untouched layer: %q, %v", img.EtcPasswd, err)
	}
	edited := bytes.Replace(layerTar, []byte("root:x:0:0"), []byte("root:x:0:7"), 1)
	if err := os.WriteFile(l.BlobPath(desc.Digest), edited, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := r.Resolve(context.Background(), "registry.example/app:1")
	if err == nil || !strings.Contains(err.Error(), "its descriptor says "+desc.Digest.String()) {
		t.Fatalf("edited layer: passwd %q, %v; want an error naming the layer's digest", img.EtcPasswd, err)
	}
}
