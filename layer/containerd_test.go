package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// containerdBinary finds the containerd that hack/deps.sh builds.
func containerdBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("containerd"); err == nil {
		return p
	}
	cache := os.Getenv("CONTRAST_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache", "contrast")
	}
	if p := filepath.Join(cache, "bin", "containerd"); isExecutable(p) {
		return p
	}
	t.Fatalf("containerd not found on PATH nor in %s/bin: run hack/deps.sh, which builds it there", cache)
	return ""
}

// startContainerd runs a private containerd with only its content and image
// stores in use (no CRI) and returns a client.
func startContainerd(t *testing.T) *containerd.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "c.sock")
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[cgroup]
  path = ""
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), socket, socket+".ttrpc")
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(containerdBinary(t), "--config", configPath)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting containerd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			client, err := containerd.New(socket, containerd.WithTimeout(5*time.Second))
			if err == nil {
				if _, err = client.Version(t.Context()); err == nil {
					t.Cleanup(func() { client.Close() })
					return client
				}
				client.Close()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer in 20 s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tarDir packs a directory (an OCI layout) as a tar.
func tarDir(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
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
		t.Fatalf("packing %s: %v", dir, err)
	}
	return buf.Bytes()
}

func TestContainerdImageLayers(t *testing.T) {
	client := startContainerd(t)
	ctx := namespaces.WithNamespace(t.Context(), "layer-test")

	bottom := numberedLayer(t, 0)
	top := buildTar(t, manyFiles(40))
	l := newOCILayout(t)
	layers := []ocispec.Descriptor{
		l.blob(ocispec.MediaTypeImageLayerGzip, gzipped(t, bottom)),
		l.blob(ocispec.MediaTypeImageLayer, top),
	}
	diffIDs := []digest.Digest{digest.FromBytes(bottom), digest.FromBytes(top)}
	const name = "docker.io/library/layer-test:1"
	m := l.image(platforms.DefaultSpec(), layers, diffIDs)
	m.Annotations = map[string]string{images.AnnotationImageName: name, ocispec.AnnotationRefName: "1"}
	l.index(m)
	if _, err := client.Import(ctx, bytes.NewReader(tarDir(t, l.dir))); err != nil {
		t.Fatalf("importing the test image into containerd: %v", err)
	}

	blobs, err := ContainerdImageLayers(ctx, client, name)
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
	// Open needs no namespace from its caller.
	entry, release, err := openCache(t, t.TempDir(), 1<<30).Get(t.Context(), blobs[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if _, want := convertFile(t, bottom); entry.Info != want {
		t.Errorf("cached layer from containerd = %+v, want %+v", entry.Info, want)
	}

	_, err = ContainerdImageLayers(ctx, client, "docker.io/library/absent:1")
	if err == nil || !strings.Contains(err.Error(), `"docker.io/library/absent:1"`) {
		t.Errorf("ContainerdImageLayers of an absent image = %v, want an error naming it", err)
	}
	if _, err := ContainerdImageLayers(namespaces.WithNamespace(context.Background(), "elsewhere"), client, name); err == nil {
		t.Error("ContainerdImageLayers found the image in another namespace")
	}
	if _, err := ContainerdImageLayers(context.Background(), client, name); err == nil {
		t.Error("ContainerdImageLayers worked without a namespace")
	}
}
