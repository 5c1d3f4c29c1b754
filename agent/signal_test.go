package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	api "github.com/contrast-vm/contrast/api/agent"
	"golang.org/x/sys/unix"
)

// TestRuncProcessGone: the runc kill failures that mean the container's
// processes are gone already (a signal to them is then done, NotFound), and
// some that do not.
func TestRuncProcessGone(t *testing.T) {
	for _, c := range []struct {
		err  error
		gone bool
	}{
		{errors.New("runc kill c1 9: exit status 1: container not running"), true},
		{errors.New(`runc kill c1 15: exit status 1: container "c1" does not exist`), true},
		{errors.New("runc kill c1 9: exit status 1: no such process"), true},
		{fmt.Errorf("kill: %w", unix.ESRCH), true},
		{errors.New("runc kill c1 9: exit status 1: permission denied"), false},
		{errors.New("runc kill c1 9: signal: killed"), false},
		{errors.New("runc kill c1 9: context deadline exceeded"), false},
	} {
		if got := runcProcessGone(c.err); got != c.gone {
			t.Errorf("%v: gone %v, want %v", c.err, got, c.gone)
		}
	}
}

// TestStartReturnsAfterExec: when StartContainer returns, the container's
// init runs the container's program, no longer runc's init (which, as its
// namespace's PID 1, would ignore the SIGTERM a kubelet may send at once).
func TestStartReturnsAfterExec(t *testing.T) {
	h := newHarness(t)
	if _, err := h.client.CreateSandbox(context.Background(), &api.CreateSandboxRequest{SandboxId: "pod1", Hostname: "pod"}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		id := fmt.Sprintf("s%d", i)
		pid := h.create(id, podSpec("/bin/sh", "-c", `trap "exit 7" TERM; while true; do sleep 0.01; done`), &api.Stdio{})
		created := processImage(int(pid))
		if _, err := h.client.StartContainer(context.Background(), &api.ContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
		if now := processImage(int(pid)); now == created {
			t.Errorf("%s: StartContainer returned while its init still runs %s", id, created)
		}
		if _, err := h.client.SignalProcess(context.Background(), &api.SignalProcessRequest{ContainerId: id, Signal: uint32(unix.SIGKILL)}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if _, err := h.wait(ctx, id, ""); err != nil {
			t.Fatal(err)
		}
		cancel()
		h.remove(id)
	}
	h.assertClean()
}
