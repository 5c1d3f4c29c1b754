package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
)

const terminationLog = "/dev/termination-log"

// hostFiles makes the host side of a test's bind mounts in a directory of
// its own: a writable termination log and a read-only file (both regular),
// a symlink to the log, a FIFO and a directory.
func hostFiles(t *testing.T) (dir string) {
	dir = t.TempDir()
	for name, content := range map[string]string{"termination-log": "", "ro-file": "host's own\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("termination-log", filepath.Join(dir, "symlink")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func bindMount(dest, source string, mode string) specs.Mount {
	return specs.Mount{Destination: dest, Type: "bind", Source: source, Options: []string{"rbind", "rprivate", mode}}
}

func TestWritableFileBinds(t *testing.T) {
	dir := hostFiles(t)
	spec := &specs.Spec{Mounts: []specs.Mount{
		bindMount(terminationLog, filepath.Join(dir, "termination-log"), "rw"),
		bindMount("/etc/ro-file", filepath.Join(dir, "ro-file"), "ro"),
		{Destination: "/etc/rro-file", Source: filepath.Join(dir, "ro-file"), Options: []string{"bind", "rro"}},
		bindMount("/link", filepath.Join(dir, "symlink"), "rw"),
		bindMount("/fifo", filepath.Join(dir, "fifo"), "rw"),
		bindMount("/dir", filepath.Join(dir, "dir"), "rw"),
		bindMount("/missing", filepath.Join(dir, "missing"), "rw"),
		{Destination: "/tmp", Type: "tmpfs", Source: filepath.Join(dir, "termination-log")},
	}}
	got := writableFileBinds(spec)
	if len(got) != 1 || got[terminationLog] != filepath.Join(dir, "termination-log") {
		t.Errorf("writable file binds %v, want only %s", got, terminationLog)
	}
}

// TestWriteBack: what the guest hands back lands only in writable binds of
// regular host files, cut at MaxWrittenBack bytes, the file's mode kept;
// a symlink, FIFO or directory planted at a source after the create is
// refused (the FIFO without blocking).
func TestWriteBack(t *testing.T) {
	dir := hostFiles(t)
	c := &container{id: "c1", writableFiles: map[string]string{
		terminationLog: filepath.Join(dir, "termination-log"),
		"/link":        filepath.Join(dir, "symlink"),
		"/fifo":        filepath.Join(dir, "fifo"),
		"/dir":         filepath.Join(dir, "dir"),
	}}
	long := bytes.Repeat([]byte("m"), agentapi.MaxWrittenBack+10)
	done := make(chan struct{})
	go func() {
		c.writeBack(context.Background(), []*agentapi.SharedFile{
			{Destination: "/etc/ro-file", Content: []byte("overwritten")},
			{Destination: "/link", Content: []byte("through the symlink")},
			{Destination: "/fifo", Content: []byte("into the FIFO")},
			{Destination: "/dir", Content: []byte("onto the directory")},
			{Destination: terminationLog, Content: long},
		})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("writeBack blocks")
	}
	got, err := os.ReadFile(filepath.Join(dir, "termination-log"))
	if err != nil || !bytes.Equal(got, long[:agentapi.MaxWrittenBack]) {
		t.Errorf("termination log holds %d bytes %.20q (%v), want the first %d handed back", len(got), got, err, agentapi.MaxWrittenBack)
	}
	if info, err := os.Stat(filepath.Join(dir, "termination-log")); err != nil || info.Mode().Perm() != 0o640 {
		t.Errorf("termination log's mode %v (%v), want 0640 kept", info.Mode(), err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "ro-file")); string(got) != "host's own\n" {
		t.Errorf("a destination that is no writable bind was written: %q", got)
	}
	// A second, shorter message replaces the first entirely.
	c.writeBack(context.Background(), []*agentapi.SharedFile{{Destination: terminationLog, Content: []byte("short\n")}})
	if got, _ := os.ReadFile(filepath.Join(dir, "termination-log")); string(got) != "short\n" {
		t.Errorf("after a second write back the log holds %.20q, want %q", got, "short\n")
	}
	for _, name := range []string{"symlink", "fifo", "dir"} {
		if err := writeHostFile(filepath.Join(dir, name), []byte("x")); err == nil {
			t.Errorf("writeHostFile into the %s: no error", name)
		}
	}
}

// writeBackModule allows every request and marks dests write_back in every
// CreateContainer.
func writeBackModule(dests ...string) []byte {
	var b strings.Builder
	b.WriteString("package agent_policy\n\n")
	for _, k := range policy.Kinds {
		if k != policy.CreateContainer {
			fmt.Fprintf(&b, "%s := true\n", k)
		}
	}
	d, _ := json.Marshal(dests)
	fmt.Fprintf(&b, "CreateContainer := {\"allow\": true, \"write_back\": %s}\n", d)
	return []byte(b.String())
}

// TestTerminationMessage: what a container writes to its termination-log
// bind mount is in the host file when its exit event is published, as the
// kubelet reads it then; under a policy that does not mark the mount, the
// host file stays as it was.
func TestTerminationMessage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy []byte // nil: the allow-all default, which marks the kubelet's termination-message files
		// kubelet: the host file lies where the kubelet keeps a
		// container's termination-message file.
		kubelet bool
		want    string
	}{
		{name: "marked", policy: writeBackModule(terminationLog), want: "last words\n"},
		{name: "unmarked", policy: writeBackModule(), kubelet: true, want: ""},
		{name: "allow-all, kubelet's file", kubelet: true, want: "last words\n"},
		{name: "allow-all, another file", want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTaskEnv(t)
			var annotations map[string]string
			if tc.policy != nil {
				annotations = map[string]string{policy.Annotation: policy.EncodeAnnotation(tc.policy)}
			}
			e.startSandboxWith("pod", "", annotations)
			hostLog := filepath.Join(hostFiles(t), "termination-log")
			if tc.kubelet {
				dir := filepath.Join(t.TempDir(), "pods", "0b6f1c4e-9a27-4f3c-8a51-2d7e6c9b1f30", "containers", "app")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				hostLog = filepath.Join(dir, "5f0c1d2e")
				if err := os.WriteFile(hostLog, nil, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			spec := e.containerSpec("pod", "", "sh", "-c", "echo last words >"+terminationLog+"; exit 3")
			spec.Mounts = append(spec.Mounts, bindMount(terminationLog, hostLog, "rw"))
			// The exit event's publisher reads the host file, as the
			// kubelet does once it sees the exit.
			atExit := make(chan string, 1)
			e.pub.setOnExit(func(id string) {
				if id == "c1" {
					got, err := os.ReadFile(hostLog)
					if err != nil {
						t.Error(err)
					}
					atExit <- string(got)
				}
			})
			e.mustRun("c1", spec)
			if status := e.wait("c1", ""); status != 3 {
				t.Errorf("c1 exited %d, want 3", status)
			}
			select {
			case got := <-atExit:
				if got != tc.want {
					t.Errorf("host file at the exit event: %q, want %q", got, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no exit event of c1")
			}
			if err := e.delete("c1", ""); err != nil {
				t.Fatal(err)
			}
		})
	}
}
