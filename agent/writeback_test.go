package agent

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

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const terminationLog = "/dev/termination-log"

// TestReadWrittenBack: a guest copy is read up to MaxWrittenBack bytes; a
// symlink or a FIFO in its place is refused, the FIFO without waiting for
// a writer.
func TestReadWrittenBack(t *testing.T) {
	dir := t.TempDir()
	long := bytes.Repeat([]byte("x"), api.MaxWrittenBack+100)
	for name, content := range map[string][]byte{"short": []byte("last words\n"), "long": long, "empty": nil} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "short"), filepath.Join(dir, "symlink")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		want    []byte
		wantErr string
	}{
		{name: "short", want: []byte("last words\n")},
		{name: "long", want: long[:api.MaxWrittenBack]},
		{name: "empty", want: []byte{}},
		{name: "symlink", wantErr: "too many levels of symbolic links"},
		{name: "fifo", wantErr: "not a regular file"},
		{name: "dir", wantErr: "not a regular file"},
		{name: "missing", wantErr: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			var got []byte
			var err error
			go func() {
				got, err = readWrittenBack(filepath.Join(dir, tc.name))
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("readWrittenBack blocks")
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes %.20q, %v; want %d bytes %.20q", len(got), got, err, len(tc.want), tc.want)
			}
		})
	}
}

// writeBackPolicy allows every request and marks dests write_back in every
// CreateContainer.
func writeBackPolicy(dests ...string) []byte {
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

// createWithTerminationLog creates container id running script, with the
// kubelet's termination-message file among its shared files.
func (h *harness) createWithTerminationLog(id, script string) {
	h.t.Helper()
	spec := podSpec("/bin/sh", "-c", script)
	spec.Mounts = append(spec.Mounts, specs.Mount{
		Destination: terminationLog, Type: "bind",
		Source:  "/var/lib/kubelet/pods/u1d/containers/app/0a1b2c3d",
		Options: []string{"rbind", "rprivate", "rw"},
	})
	raw, err := json.Marshal(spec)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.client.CreateContainer(context.Background(), &api.CreateContainerRequest{
		ContainerId: id, Spec: raw, Stdio: &api.Stdio{},
		Rootfs: &api.BlockDevice{Serial: "img1", Fstype: "ext4", ReadOnly: true},
		SharedFiles: []*api.SharedFile{
			{Destination: "/etc/hosts", Content: []byte("10.0.0.7 pod\n"), Mode: 0o644},
			{Destination: terminationLog, Mode: 0o666},
		},
	}); err != nil {
		h.t.Fatalf("CreateContainer %s: %v", id, err)
	}
}

// run starts container id and waits for its init's exit.
func (h *harness) run(id string) *api.WaitProcessResponse {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatal(err)
	}
	w, err := h.wait(ctx, id, "")
	if err != nil {
		h.t.Fatalf("wait for %s: %v", id, err)
	}
	return w
}

// TestServiceWriteBack: the init's exit carries what the container wrote
// to its termination-message file (at most MaxWrittenBack bytes) when the
// policy marks it; an exec's exit carries nothing, and a FIFO planted at
// the guest copy gives nothing without holding up the exit.
func TestServiceWriteBack(t *testing.T) {
	h := newHarnessPolicy(t, writeBackPolicy(terminationLog, "/etc/hosts-not-mounted"))
	ctx := context.Background()
	if _, err := h.client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1", Hostname: "pod"}); err != nil {
		t.Fatal(err)
	}

	t.Run("init only, cut", func(t *testing.T) {
		h.createWithTerminationLog("wb1", `trap 'exit 2' TERM; head -c 5000 /dev/zero | tr '\0' x >`+terminationLog+`; while true; do sleep 0.1; done`)
		if _, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "wb1"}); err != nil {
			t.Fatal(err)
		}
		h.exec("wb1", "e1", &api.Stdio{}, "/bin/sh", "-c", "until [ -s "+terminationLog+" ]; do sleep 0.1; done")
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		we, err := h.wait(wctx, "wb1", "e1")
		if err != nil {
			t.Fatal(err)
		}
		if len(we.WrittenBack) != 0 || we.ExitStatus != 0 {
			t.Errorf("exec's exit: status %d, written back %v; want 0 and nothing", we.ExitStatus, we.WrittenBack)
		}
		if _, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "wb1", Signal: uint32(unix.SIGTERM)}); err != nil {
			t.Fatal(err)
		}
		w, err := h.wait(wctx, "wb1", "")
		if err != nil {
			t.Fatal(err)
		}
		if w.ExitStatus != 2 || len(w.WrittenBack) != 1 || w.WrittenBack[0].Destination != terminationLog ||
			!bytes.Equal(w.WrittenBack[0].Content, bytes.Repeat([]byte("x"), api.MaxWrittenBack)) {
			t.Fatalf("init's exit: status %d, written back %.60v; want 2 and %d bytes of x at %s", w.ExitStatus, w.WrittenBack, api.MaxWrittenBack, terminationLog)
		}
		h.remove("wb1")
	})

	t.Run("FIFO planted", func(t *testing.T) {
		h.createWithTerminationLog("wb2", "echo ignored >"+terminationLog)
		h.svc.mu.Lock()
		copyPath := h.svc.containers["wb2"].sharedCopies[terminationLog]
		h.svc.mu.Unlock()
		// The container bind-mounted the copy at create; what lies at its
		// path by the exit is what the agent reads.
		if err := os.Remove(copyPath); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkfifo(copyPath, 0o666); err != nil {
			t.Fatal(err)
		}
		if w := h.run("wb2"); len(w.WrittenBack) != 0 {
			t.Errorf("written back from a FIFO: %v", w.WrittenBack)
		}
		h.remove("wb2")
	})
	h.assertClean()
}

// TestServiceWriteBackUnmarked: under a policy that marks nothing, the
// init's exit carries nothing of what the container wrote.
func TestServiceWriteBackUnmarked(t *testing.T) {
	h := newHarnessPolicy(t, writeBackPolicy())
	if _, err := h.client.CreateSandbox(context.Background(), &api.CreateSandboxRequest{SandboxId: "pod1", Hostname: "pod"}); err != nil {
		t.Fatal(err)
	}
	h.createWithTerminationLog("wb3", "echo secret >"+terminationLog)
	if w := h.run("wb3"); len(w.WrittenBack) != 0 {
		t.Errorf("written back without the policy's mark: %v", w.WrittenBack)
	}
	h.remove("wb3")
	h.assertClean()
}

// TestServiceWriteBackAllowAll: the allow-all development policy hands back
// the kubelet's termination-message file, as runc's bind mount would show
// it to the kubelet.
func TestServiceWriteBackAllowAll(t *testing.T) {
	h := newHarness(t)
	if _, err := h.client.CreateSandbox(context.Background(), &api.CreateSandboxRequest{SandboxId: "pod1", Hostname: "pod"}); err != nil {
		t.Fatal(err)
	}
	h.createWithTerminationLog("wb4", "echo done >"+terminationLog)
	w := h.run("wb4")
	if len(w.WrittenBack) != 1 || w.WrittenBack[0].Destination != terminationLog || string(w.WrittenBack[0].Content) != "done\n" {
		t.Errorf("written back under allow-all: %v, want the termination message", w.WrittenBack)
	}
	h.remove("wb4")
	h.assertClean()
}
