package shim

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
)

func TestParseBootstrapModern(t *testing.T) {
	dir := "/run/s"
	in, err := proto.Marshal(&bootapi.BootstrapParams{
		InstanceID: "pod1", Namespace: "k8s.io",
		ContainerdGrpcAddress: "/run/c.sock", ContainerdTtrpcAddress: "/run/c.sock.ttrpc",
		LogLevel: bootapi.LogLevel_LOG_LEVEL_DEBUG, SocketDir: &dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	p, modern := parseBootstrap(in, startFlags{id: "pod1", namespace: "k8s.io"})
	if !modern {
		t.Fatal("modern bootstrap params not recognised")
	}
	want := startParams{ID: "pod1", Namespace: "k8s.io", GRPCAddress: "/run/c.sock", TTRPCAddress: "/run/c.sock.ttrpc", SocketDir: "/run/s", Debug: true}
	if p != want {
		t.Fatalf("got %+v, want %+v", p, want)
	}
}

func TestParseBootstrapLegacy(t *testing.T) {
	t.Setenv("TTRPC_ADDRESS", "/run/containerd/containerd.sock.ttrpc")
	// containerd 1.7 writes the runtime options on stdin: they must not be
	// mistaken for BootstrapParams.
	opts, err := proto.Marshal(&runtimeoptions.Options{ConfigPath: "/etc/contrast/runtime.toml"})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{nil, opts, []byte("garbage\xff")} {
		p, modern := parseBootstrap(in, startFlags{id: "c1", namespace: "k8s.io", address: "/run/containerd/containerd.sock"})
		if modern {
			t.Fatalf("%q taken as modern bootstrap", in)
		}
		if p.ID != "c1" || p.GRPCAddress != "/run/containerd/containerd.sock" || p.TTRPCAddress != "/run/containerd/containerd.sock.ttrpc" {
			t.Fatalf("legacy params %+v", p)
		}
	}
}

func TestParseStartFlags(t *testing.T) {
	args := []string{"-namespace", "k8s.io", "-address", "/run/c.sock", "-publish-binary", "/usr/bin/containerd", "-id", "abc", "-debug", "start"}
	if !IsStart(args) {
		t.Fatal("start not recognised")
	}
	if IsStart([]string{"-namespace", "k8s.io", "-id", "abc", "delete"}) || IsStart([]string{"-info"}) {
		t.Fatal("non-start taken for start")
	}
}

func TestPodGroup(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "config.json")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	g, err := podGroup(write(`{"annotations":{"io.kubernetes.cri.sandbox-id":"sb1"}}`), "c1")
	if err != nil || g != "sb1" {
		t.Fatalf("group %q, %v", g, err)
	}
	g, err = podGroup(write(`{"process":{}}`), "c1")
	if err != nil || g != "c1" {
		t.Fatalf("group %q, %v", g, err)
	}
	_, err = podGroup(write(`{"annotations":`), "c1")
	if err == nil || !strings.Contains(err.Error(), "malformed config.json") {
		t.Fatalf("malformed bundle: %v", err)
	}
}

func TestRootfsSerial(t *testing.T) {
	a, b := rootfsSerial("container-a"), rootfsSerial("container-b")
	if len(a) != 20 || a == b || a != rootfsSerial("container-a") {
		t.Fatalf("serials %q %q", a, b)
	}
}

func TestReadSpecMalformed(t *testing.T) {
	for _, content := range []string{`{"process":`, `not json`, `{"ociVersion":"1.1.0"}`} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := readSpec(dir)
		if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), filepath.Join(dir, "config.json")) {
			t.Errorf("%q: error %v, want an invalid-argument error naming the file", content, err)
		}
	}
}

// TestStartMalformedBundle: `start` refuses a bundle whose config.json does
// not parse, before it creates a socket or a process.
func TestStartMalformedBundle(t *testing.T) {
	bundle := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"annotations":`), 0o600); err != nil {
		t.Fatal(err)
	}
	socketDir := t.TempDir()
	t.Chdir(bundle)
	in, _ := proto.Marshal(&bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns", SocketDir: &socketDir})
	var out strings.Builder
	err := RunStart(context.Background(), []string{"-namespace", "ns", "-id", "c1", "start"}, bytes.NewReader(in), &out)
	if err == nil || !strings.Contains(err.Error(), "malformed config.json") {
		t.Fatalf("start: %v", err)
	}
	if entries, _ := os.ReadDir(socketDir); len(entries) != 0 {
		t.Fatalf("socket dir holds %v after the failed start", entries)
	}
	if out.Len() != 0 {
		t.Fatalf("start wrote %q", out.String())
	}
}
