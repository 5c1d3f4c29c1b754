package ocilayout

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocitest"
)

var (
	host  = ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	other = func() ocispec.Platform {
		if runtime.GOARCH == "s390x" {
			return ocispec.Platform{OS: "linux", Architecture: "riscv64"}
		}
		return ocispec.Platform{OS: "linux", Architecture: "s390x"}
	}()
)

// image writes a one-layer image for platform p whose layer holds a file
// named after tag, and returns its manifest's descriptor.
func image(t *testing.T, l *ocitest.Layout, p ocispec.Platform, tag string) ocispec.Descriptor {
	t.Helper()
	layerTar := ocitest.Tar(t, map[string]string{tag: tag})
	return l.Image(ocitest.Image{
		Platform: p,
		Config:   ocispec.ImageConfig{Cmd: []string{tag}},
		Layers:   []ocispec.Descriptor{l.Layer(layerTar, ocitest.Gzip)},
		DiffIDs:  []digest.Digest{digest.FromBytes(layerTar)},
	})
}

func withPlatform(d ocispec.Descriptor, p ocispec.Platform) ocispec.Descriptor {
	d.Platform = &p
	return d
}

func TestResolve(t *testing.T) {
	l := ocitest.New(t)
	app := image(t, l, host, "app")
	bare := image(t, l, host, "bare")
	dupA, dupB := image(t, l, host, "dup-a"), image(t, l, host, "dup-b")
	// Nested: an index of an index; the inner one has an image for another
	// platform first, and the outer one an attestation-like entry.
	nestedHost := image(t, l, host, "nested")
	inner := l.Index(withPlatform(image(t, l, other, "nested-other"), other), withPlatform(nestedHost, host))
	outer := l.Index(withPlatform(l.Index(), ocispec.Platform{OS: "unknown", Architecture: "unknown"}), inner)
	// Multi-platform at the top: two index.json entries under one name.
	mpHost, mpOther := image(t, l, host, "mp"), image(t, l, other, "mp-other")
	// A manifest whose platform only its config says.
	foreign := image(t, l, other, "foreign")
	l.WriteIndexJSON(
		ocitest.Named(app, "registry.example/app:1"),
		ocitest.Named(bare, "v1"),
		ocitest.Named(dupA, "registry.example/dup:1"),
		ocitest.Named(dupB, "registry.example/dup:1"),
		ocitest.Named(outer, "registry.example/nested:1"),
		ocitest.Named(withPlatform(mpOther, other), "registry.example/mp:1"),
		ocitest.Named(withPlatform(mpHost, host), "registry.example/mp:1"),
		ocitest.Named(foreign, "registry.example/foreign:1"),
		ocitest.ContainerdNamed(app, "docker.io/library/busybox:latest", "latest"),
	)
	layout, err := Open(l.Dir)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, ref    string
		wantManifest ocispec.Descriptor
		wantName     string
		wantErr      []string
	}{
		{name: "full name", ref: "registry.example/app:1", wantManifest: app, wantName: "registry.example/app:1"},
		{name: "by digest", ref: "registry.example/app@" + app.Digest.String(), wantManifest: app, wantName: "registry.example/app:1"},
		{name: "tag and digest", ref: "registry.example/app:9@" + app.Digest.String(), wantManifest: app, wantName: "registry.example/app:1"},
		{name: "normalized name, implied latest", ref: "busybox", wantManifest: app, wantName: "docker.io/library/busybox:latest"},
		{name: "bare tag", ref: "other.example/x:v1", wantManifest: bare, wantName: "v1"},
		{name: "bare tag by digest", ref: "other.example/x@" + bare.Digest.String(), wantManifest: bare, wantName: "v1"},
		{name: "nested index", ref: "registry.example/nested:1", wantManifest: nestedHost, wantName: "registry.example/nested:1"},
		{name: "platform among index.json entries", ref: "registry.example/mp:1", wantManifest: mpHost, wantName: "registry.example/mp:1"},
		{name: "unknown reference", ref: "registry.example/app:2",
			wantErr: []string{`no image named "registry.example/app:2" in OCI layout ` + l.Dir, `"registry.example/app:1"`, `"v1"`}},
		{name: "unknown repository", ref: "evil.example/app:1", wantErr: []string{"no image named"}},
		{name: "ambiguous name", ref: "registry.example/dup:1",
			wantErr: []string{"ambiguous", dupA.Digest.String(), dupB.Digest.String()}},
		{name: "digest the layout does not have", ref: "registry.example/app:1@" + digest.FromString("elsewhere").String(),
			wantErr: []string{"has digest " + app.Digest.String(), "(registry.example/app:1)"}},
		{name: "no name for many images", ref: "", wantErr: []string{"name one of", `"registry.example/app:1"`}},
		{name: "not a reference", ref: "no spaces allowed", wantErr: []string{`image reference "no spaces allowed"`}},
		{name: "other platform only", ref: "registry.example/foreign:1",
			wantErr: []string{"is for " + platforms.Format(other), errOtherPlatform.Error()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := layout.Resolve(tc.ref, platforms.Only(host))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("Resolve(%q) found %s, want an error", tc.ref, img.ManifestDescriptor.Digest)
				}
				for _, want := range tc.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Resolve(%q) = %v, want an error containing %q", tc.ref, err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tc.ref, err)
			}
			if img.ManifestDescriptor.Digest != tc.wantManifest.Digest || img.Entry.Name != tc.wantName {
				t.Errorf("Resolve(%q) = manifest %s named %q, want %s named %q", tc.ref, img.ManifestDescriptor.Digest, img.Entry.Name, tc.wantManifest.Digest, tc.wantName)
			}
			if img.Config.Config.Cmd == nil || img.Config.OS != host.OS || len(img.Manifest.Layers) != 1 {
				t.Errorf("Resolve(%q) read config %+v and %d layers", tc.ref, img.Config, len(img.Manifest.Layers))
			}
		})
	}

	var notFound *NotFoundError
	if _, err := layout.Resolve("registry.example/app:2", platforms.Only(host)); !errors.As(err, &notFound) || notFound.Ref != "registry.example/app:2" {
		t.Errorf("unknown reference: %v, want a *NotFoundError", err)
	}

	t.Run("only image, no name", func(t *testing.T) {
		single := ocitest.New(t)
		m := image(t, single, host, "only")
		single.WriteIndexJSON(m)
		layout, err := Open(single.Dir)
		if err != nil {
			t.Fatal(err)
		}
		img, err := layout.Resolve("", platforms.Only(host))
		if err != nil || img.ManifestDescriptor.Digest != m.Digest {
			t.Fatalf("Resolve(\"\") = %v, %v; want %s", img, err, m.Digest)
		}
	})
}

// blobCase builds a one-image layout named "registry.example/app:1" and
// breaks it; wantBlob is the blob the error must name.
type blobCase struct {
	name  string
	build func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, manifest ocispec.Manifest) (entry ocispec.Descriptor, wantBlob digest.Digest)
	// atOpen: Open or Resolve fails; otherwise reading the layer does.
	atOpen  bool
	wantErr string
	wantGot bool // the error carries the digest the bytes have
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBlobErrors(t *testing.T) {
	for _, tc := range []blobCase{
		{name: "good", build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
			return m, ""
		}},
		{name: "tampered manifest", atOpen: true, wantErr: "has digest", wantGot: true,
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				flipByte(t, l.BlobPath(m.Digest))
				return m, m.Digest
			}},
		{name: "tampered config", atOpen: true, wantErr: "its descriptor says", wantGot: true,
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, manifest ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				flipByte(t, l.BlobPath(manifest.Config.Digest))
				return m, manifest.Config.Digest
			}},
		{name: "tampered layer", wantErr: "has digest", wantGot: true,
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, manifest ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				flipByte(t, l.BlobPath(manifest.Layers[0].Digest))
				return m, manifest.Layers[0].Digest
			}},
		{name: "wrong size in index.json", atOpen: true, wantErr: "its descriptor says",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				m.Size--
				return m, m.Digest
			}},
		{name: "layer longer than its descriptor", wantErr: "its descriptor says",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, manifest ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				f, err := os.OpenFile(l.BlobPath(manifest.Layers[0].Digest), os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write([]byte{0})
				f.Close()
				return m, manifest.Layers[0].Digest
			}},
		{name: "missing manifest", atOpen: true, wantErr: "missing",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				os.Remove(l.BlobPath(m.Digest))
				return m, m.Digest
			}},
		{name: "missing layer", wantErr: "missing",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, manifest ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				os.Remove(l.BlobPath(manifest.Layers[0].Digest))
				return m, manifest.Layers[0].Digest
			}},
		{name: "malformed manifest", atOpen: true, wantErr: "parsing",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				bad := l.Blob(ocispec.MediaTypeImageManifest, []byte(`{"config": 7}`))
				return bad, bad.Digest
			}},
		{name: "media types disagree", atOpen: true, wantErr: "media type",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				m.MediaType = ocispec.MediaTypeImageIndex
				return m, m.Digest
			}},
		{name: "indexes nested too deep", atOpen: true, wantErr: "nest deeper",
			build: func(t *testing.T, l *ocitest.Layout, m ocispec.Descriptor, _ ocispec.Manifest) (ocispec.Descriptor, digest.Digest) {
				// chain[k] wraps the manifest in k indexes; index.json's
				// entry is the last, at depth 0.
				chain := []ocispec.Descriptor{m}
				for i := 0; i < maxIndexDepth+3; i++ {
					chain = append(chain, l.Index(chain[len(chain)-1]))
				}
				top := len(chain) - 1
				return chain[top], chain[top-(maxIndexDepth+1)].Digest
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := ocitest.New(t)
			m := image(t, l, host, "app")
			var manifest ocispec.Manifest
			if err := json.Unmarshal(readFile(t, l.BlobPath(m.Digest)), &manifest); err != nil {
				t.Fatal(err)
			}
			entry, wantBlob := tc.build(t, l, m, manifest)
			l.WriteIndexJSON(ocitest.Named(entry, "registry.example/app:1"))

			err := func() error {
				layout, err := Open(l.Dir)
				if err != nil {
					return err
				}
				img, err := layout.Resolve("registry.example/app:1", platforms.Only(host))
				if err != nil {
					if !tc.atOpen {
						t.Fatalf("Resolve: %v, want the error at reading the layer", err)
					}
					return err
				}
				if tc.atOpen {
					t.Fatalf("Resolve found %s, want an error", img.ManifestDescriptor.Digest)
				}
				r, err := layout.OpenBlob(img.Manifest.Layers[0])
				if err != nil {
					return err
				}
				defer r.Close()
				_, err = io.ReadAll(r)
				return err
			}()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "OCI layout "+l.Dir) {
				t.Fatalf("error %v, want one containing %q and naming the layout", err, tc.wantErr)
			}
			var blobErr *BlobError
			if !errors.As(err, &blobErr) || blobErr.Blob != wantBlob || !strings.Contains(err.Error(), wantBlob.String()) {
				t.Fatalf("error %v (%T), want a *BlobError naming %s", err, err, wantBlob)
			}
			if (blobErr.Got != "") != tc.wantGot {
				t.Errorf("BlobError.Got = %q, want it set: %v", blobErr.Got, tc.wantGot)
			}
		})
	}
}

func TestOpenRefusesBadLayouts(t *testing.T) {
	for _, tc := range []struct {
		name, layoutFile, index, want string
	}{
		{"no oci-layout", "", `{"manifests":[]}`, "oci-layout"},
		{"other layout version", `{"imageLayoutVersion":"2.0.0"}`, `{"manifests":[]}`, `imageLayoutVersion "2.0.0"`},
		{"index.json not JSON", `{"imageLayoutVersion":"1.0.0"}`, `[`, "index.json"},
		{"digest naming a path", `{"imageLayoutVersion":"1.0.0"}`, `{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":1}]}`, "invalid"},
		{"unknown algorithm", `{"imageLayoutVersion":"1.0.0"}`, `{"manifests":[{"digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}]}`, "md5"},
		{"negative size", `{"imageLayoutVersion":"1.0.0"}`, `{"manifests":[{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":-1}]}`, "size -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.layoutFile != "" {
				os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), []byte(tc.layoutFile), 0o644)
			}
			os.WriteFile(filepath.Join(dir, ocispec.ImageIndexFile), []byte(tc.index), 0o644)
			if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Errorf("Open = %v, want an error naming %s and containing %q", err, dir, tc.want)
			}
		})
	}
}

func TestVerifyReader(t *testing.T) {
	data := []byte("layer bytes")
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	for _, tc := range []struct {
		name    string
		content string
		want    string
	}{
		{"match", string(data), ""},
		{"other bytes", "layer bytez", "has digest"},
		{"short", "layer", "5 bytes, its descriptor says 11"},
		{"long", string(data) + "!", "longer than the 11 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := io.ReadAll(VerifyReader(strings.NewReader(tc.content), desc, "test store"))
			if tc.want == "" {
				if err != nil || string(got) != string(data) {
					t.Fatalf("read %q, %v; want %q", got, err, data)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "test store: blob "+desc.Digest.String()) {
				t.Fatalf("read %q, %v; want an error containing %q", got, err, tc.want)
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
