package harness

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/internal/testenv"
	"golang.org/x/sys/unix"
)

func TestWriteOCIArchiveIsReproducible(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	for _, p := range []string{a, b} {
		spec, err := BusyboxSpec(BusyboxImage, "/bin/busybox", []string{"sh"})
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteOCIArchive(p, spec); err != nil {
			t.Fatal(err)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if !bytes.Equal(da, db) {
		t.Fatal("two builds of the same image differ")
	}
	// The archive is an OCI layout whose index names the image.
	tr := tar.NewReader(bytes.NewReader(da))
	var names []string
	var index []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(epoch) || h.Uid != 0 {
			t.Errorf("%s: mtime %v uid %d, want epoch and root", h.Name, h.ModTime, h.Uid)
		}
		names = append(names, h.Name)
		if h.Name == "index.json" {
			index, _ = io.ReadAll(tr)
		}
	}
	if len(names) != 7 || names[0] != "blobs/" {
		t.Errorf("entries %v", names)
	}
	var idx struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	// The image by its tag, and the same manifest by its digest reference.
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) != 2 ||
		idx.Manifests[0].Annotations["io.containerd.image.name"] != BusyboxImage ||
		!strings.HasPrefix(idx.Manifests[1].Annotations["io.containerd.image.name"], "localhost/contrast-test/busybox@sha256:") {
		t.Errorf("index.json %s: %v", index, err)
	}
}

func TestMuteInitrdIsCpio(t *testing.T) {
	p := filepath.Join(t.TempDir(), "initrd")
	if err := WriteMuteInitrd(p, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Fatalf("cpio (apt package cpio) is needed to check the archive: %v", err)
	}
	out, err := exec.Command(cpio, "-t", "-v", "-F", p).CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	for _, want := range []string{"init", "bin/busybox", "bin/sh -> busybox", "dev/console"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, out)
		}
	}
}

func TestKernelFileRelease(t *testing.T) {
	k := testenv.Kernel(t)
	rel, err := KernelFileRelease(k)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: release %q", k, rel)
	if !strings.HasPrefix(rel, "6.") || strings.ContainsAny(rel, " \x00") {
		t.Errorf("release %q", rel)
	}
	if _, err := KernelFileRelease("/bin/busybox"); err == nil {
		t.Error("busybox read as a kernel")
	}
}

func TestMountUnescape(t *testing.T) {
	if got := unescapeMount(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("got %q", got)
	}
}

func TestMatchingFollowsDescendants(t *testing.T) {
	ps := []Process{
		{PID: 10, PPID: 1, Cmdline: "shim -id abc"},
		{PID: 11, PPID: 10, Cmdline: "qemu-system-x86_64 -name vm"},
		{PID: 12, PPID: 11, Cmdline: "child"},
		{PID: 20, PPID: 1, Cmdline: "other"},
	}
	got := matching(ps, []string{"abc"}, nil)
	if len(got) != 3 || got[0].PID != 10 || got[2].PID != 12 {
		t.Errorf("got %v", got)
	}
}

func TestOpenPTYSizeAndEcho(t *testing.T) {
	master, slave, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer slave.Close()
	s := &Session{pty: master}
	if err := s.Resize(33, 101); err != nil {
		t.Fatal(err)
	}
	ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Row != 33 || ws.Col != 101 {
		t.Errorf("slave sees %dx%d, want 33x101", ws.Row, ws.Col)
	}
	// What the master writes, the slave reads (canonical mode: by line).
	if _, err := master.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := slave.Read(buf)
	if err != nil || string(buf[:n]) != "hello\n" {
		t.Errorf("slave read %q %v", buf[:n], err)
	}
}

func TestSessionPipes(t *testing.T) {
	s, err := startPipeSession(exec.Command("/bin/busybox", "cat"), []string{"cat"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	if err := s.Write("ping\n"); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitOutput("ping\n", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if code, err := s.Wait(10 * time.Second); err != nil || code != 0 {
		t.Errorf("cat after stdin closed: exit %d %v", code, err)
	}
	if err := s.WaitOutput("never", time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("WaitOutput after exit: %v, want an error saying it exited", err)
	}
}

func TestUnixSocketsListsBound(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	socks, err := unixSockets(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !socks[p] {
		t.Errorf("bound socket %s not listed: %v", p, socks)
	}
	l.Close()
	if socks, _ := unixSockets(dir); socks[p] {
		t.Errorf("closed socket %s still listed", p)
	}
}

// TestConfigsLoad renders the configuration of each containerd version
// and has that containerd parse it (`config dump` reads the file and
// fails on malformed TOML or a wrong version).
func TestConfigsLoad(t *testing.T) {
	tools, err := FindTools()
	if err != nil {
		testenv.Missing(t, "deps", "%v", err)
	}
	for _, v := range Versions {
		t.Run(string(v), func(t *testing.T) {
			dir := t.TempDir()
			c := &Containerd{
				Version: v, Dir: dir, Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"),
				Socket: filepath.Join(dir, "c.sock"), RuncRoot: filepath.Join(dir, "runc"), SocketDir: filepath.Join(dir, "sh"),
				CNIConf: dir, ConfigToml: filepath.Join(dir, "containerd.toml"), Network: "n", Bridge: "b", Subnet: "10.0.0.0/24", Gateway: "10.0.0.1",
				tools:    tools,
				Handlers: []Handler{{Name: "contrast-cc", Shim: "/bin/true", ConfigPath: filepath.Join(dir, "shim.toml")}},
			}
			if err := c.writeConfig(Options{Tools: tools, LogLevel: "info"}); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(c.binary(), "--config", c.ConfigToml, "config", "dump").CombinedOutput()
			if err != nil {
				t.Fatalf("containerd %s config dump: %v\n%s", v, err, out)
			}
			for _, want := range []string{"contrast-cc", "io.containerd.contrast.v2", filepath.Join(dir, "shim.toml"), PauseImage} {
				if !strings.Contains(string(out), want) {
					t.Errorf("containerd %s's view of the configuration lacks %q", v, want)
				}
			}
		})
	}
}
