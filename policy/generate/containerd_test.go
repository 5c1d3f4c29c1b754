package generate

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type tarEntry struct {
	name, body string
	typ        byte
}

// layer writes a gzip-compressed tar layer into store.
func layer(t *testing.T, store content.Store, entries ...tarEntry) ocispec.Descriptor {
	t.Helper()
	var raw bytes.Buffer
	gz := gzip.NewWriter(&raw)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, Size: int64(len(e.body))}
		if typ == tar.TypeDir || typ == tar.TypeSymlink {
			hdr.Size = 0
			hdr.Linkname = e.body
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(raw.Bytes()), Size: int64(raw.Len())}
	if err := content.WriteBlob(context.Background(), store, desc.Digest.String(), bytes.NewReader(raw.Bytes()), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

// TestReadUserFiles reads /etc/passwd and /etc/group through layers in a real
// containerd content store, with the overlay rules of OCI layers.
func TestReadUserFiles(t *testing.T) {
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base := layer(t, store,
		tarEntry{name: "etc/", typ: tar.TypeDir},
		tarEntry{name: "etc/passwd", body: "root:x:0:0::/root:/bin/sh\n"},
		tarEntry{name: "etc/group", body: "root:x:0:\n"},
	)
	newPasswd := layer(t, store, tarEntry{name: "./etc/passwd", body: "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/false\n"})
	noGroup := layer(t, store, tarEntry{name: "etc/.wh.group"})
	opaque := layer(t, store, tarEntry{name: "etc/.wh..wh..opq"}, tarEntry{name: "etc/group", body: "fresh:x:5:\n"})
	unrelated := layer(t, store, tarEntry{name: "usr/bin/app", body: "#!/bin/sh\n"})
	link := layer(t, store, tarEntry{name: "etc/passwd", body: "/shared/passwd", typ: tar.TypeSymlink})

	for _, tc := range []struct {
		name          string
		layers        []ocispec.Descriptor
		passwd, group string // "-" for none
		err           string
	}{
		{"base", []ocispec.Descriptor{base}, "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n", ""},
		{"upper wins", []ocispec.Descriptor{base, newPasswd, unrelated}, "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/false\n", "root:x:0:\n", ""},
		{"whiteout", []ocispec.Descriptor{base, noGroup}, "root:x:0:0::/root:/bin/sh\n", "-", ""},
		{"opaque etc", []ocispec.Descriptor{base, opaque}, "-", "fresh:x:5:\n", ""},
		{"none", []ocispec.Descriptor{unrelated}, "-", "-", ""},
		{"link", []ocispec.Descriptor{base, link}, "", "", "link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			passwd, group, err := readUserFiles(context.Background(), store, tc.layers)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v; want one about %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, got []byte, want string) {
				if want == "-" {
					if got != nil {
						t.Errorf("%s: %q; want none", what, got)
					}
					return
				}
				if string(got) != want {
					t.Errorf("%s: %q; want %q", what, got, want)
				}
			}
			check("passwd", passwd, tc.passwd)
			check("group", group, tc.group)
		})
	}
}

func TestContainerdImagesArguments(t *testing.T) {
	if _, err := ContainerdImages("", "k8s.io"); err == nil {
		t.Error("no error for an empty address")
	}
	for _, addr := range []string{"/nonexistent/containerd.sock", "unix:///nonexistent/containerd.sock"} {
		if _, err := ContainerdImages(addr, "k8s.io"); err == nil || !strings.Contains(err.Error(), "/nonexistent/containerd.sock") {
			t.Errorf("%s: %v; want an error naming the socket", addr, err)
		}
	}
	// A socket nobody serves: the error names the address.
	sock := filepath.Join(t.TempDir(), "c.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := ContainerdImages(sock, "k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := r.Resolve(ctx, "busybox"); err == nil || !strings.Contains(err.Error(), sock) {
		t.Errorf("resolving without a containerd: %v", err)
	}
}
