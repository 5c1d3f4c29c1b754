package ocilayout

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocitest"
)

// FuzzParse feeds index and manifest parsing what a user's layout may
// hold: it must not panic, and what it accepts must have usable
// descriptors.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"platform":{"os":"linux","architecture":"amd64"},"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}]}`,
		`{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`,
		`{"manifests":[{"digest":"sha256:../../etc/passwd","size":1}]}`,
		`{"manifests":[{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":-5}]}`,
		`{"config":{},"manifests":[]}`,
		`{"mediaType":7}`,
		`[]`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if index, err := ParseIndex(data); err == nil {
			for _, d := range index.Manifests {
				if checkDescriptor(d) != nil {
					t.Fatalf("ParseIndex accepted the descriptor %+v", d)
				}
			}
			again, err := json.Marshal(index)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ParseIndex(again); err != nil {
				t.Fatalf("ParseIndex refuses its own result %s: %v", again, err)
			}
		}
		if m, err := ParseManifest(data); err == nil {
			for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
				if checkDescriptor(d) != nil {
					t.Fatalf("ParseManifest accepted the descriptor %+v", d)
				}
			}
		}
		documentKind("", data)
		documentKind(ocispec.MediaTypeImageIndex, data)
	})
}

// FuzzIndexJSON resolves images through a fuzzed index.json in a layout
// whose blobs are real, so that the walk through indexes and manifests
// runs on what the fuzzer makes of valid entries.
func FuzzIndexJSON(f *testing.F) {
	l := ocitest.New(f)
	m := l.Image(ocitest.Image{Layers: []ocispec.Descriptor{l.Layer(ocitest.Tar(f, map[string]string{"a": "1"}), ocitest.Gzip)}})
	inner := l.Index(withPlatform(m, host))
	for _, entries := range [][]ocispec.Descriptor{
		{ocitest.Named(m, "registry.example/app:1")},
		{ocitest.Named(inner, "v1"), ocitest.Named(m, "registry.example/app:1")},
		{ocitest.ContainerdNamed(l.Index(inner), "registry.example/app:1", "1")},
		{m, inner},
	} {
		l.WriteIndexJSON(entries...)
		seed, err := os.ReadFile(filepath.Join(l.Dir, ocispec.ImageIndexFile))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, indexJSON []byte) {
		dir := t.TempDir()
		for _, name := range []string{ocispec.ImageLayoutFile, ocispec.ImageBlobsDir} {
			if err := os.Symlink(filepath.Join(l.Dir, name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, ocispec.ImageIndexFile), indexJSON, 0o644); err != nil {
			t.Fatal(err)
		}
		layout, err := Open(dir)
		if err != nil {
			return
		}
		for _, ref := range []string{"", "registry.example/app:1", "other.example/x:1"} {
			img, err := layout.Resolve(ref, platforms.Only(host))
			if err == nil && img.ManifestDescriptor.Digest != m.Digest {
				t.Fatalf("Resolve(%q) found %s; the layout's only manifest is %s", ref, img.ManifestDescriptor.Digest, m.Digest)
			}
		}
	})
}
