package layer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"

	"github.com/contrast-vm/contrast/internal/ocitest"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// containerdBinary finds the containerd that hack/deps.sh builds.
func containerdBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("containerd"); err == nil {
		return p
	}
	return testenv.CachedBinary(t, "containerd")
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

func TestContainerdImageLayers(t *testing.T) {
	client := startContainerd(t)
	ctx := namespaces.WithNamespace(t.Context(), "layer-test")

	l := ocitest.New(t)
	tl := writeTestLayers(t, l)
	const name = "docker.io/library/layer-test:1"
	m := l.Image(ocitest.Image{Platform: platforms.DefaultSpec(), Layers: tl.blobs, DiffIDs: tl.diffIDs})
	l.WriteIndexJSON(ocitest.ContainerdNamed(m, name, "1"))
	if _, err := client.Import(ctx, bytes.NewReader(l.TarDir())); err != nil {
		t.Fatalf("importing the test image into containerd: %v", err)
	}

	blobs, err := ContainerdImageLayers(ctx, client, name)
	if err != nil {
		t.Fatal(err)
	}
	tl.check(t, blobs)
	// Open needs no namespace from its caller.
	entry, release, err := openCache(t, t.TempDir(), 1<<30).Get(t.Context(), blobs[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if _, want := convertFile(t, tl.tars[0]); entry.Info != want {
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
