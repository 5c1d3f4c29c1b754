package shim

import (
	"errors"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestProcessTransitions(t *testing.T) {
	cases := []struct {
		from, to processState
		ok       bool
	}{
		{stateCreated, stateRunning, true},
		{stateCreated, stateStopped, true},
		{stateCreated, stateDeleted, true},
		{stateRunning, stateStopped, true},
		{stateRunning, stateDeleted, false},
		{stateRunning, statePaused, true},
		{statePaused, stateRunning, true},
		{statePaused, stateStopped, true},
		{statePaused, stateDeleted, false},
		{stateCreated, statePaused, false},
		{stateRunning, stateCreated, false},
		{stateStopped, stateDeleted, true},
		{stateStopped, stateRunning, false},
		{stateDeleted, stateRunning, false},
		{stateDeleted, stateStopped, false},
	}
	for _, c := range cases {
		p := newProcess("c", "", stdioPaths{})
		p.state = c.from
		err := p.transition(c.to)
		if (err == nil) != c.ok {
			t.Errorf("%s -> %s: err = %v, want ok=%v", c.from, c.to, err, c.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%s -> %s: error %v is not FailedPrecondition", c.from, c.to, err)
		}
	}
}

func TestProcessExitOnce(t *testing.T) {
	p := newProcess("c", "e", stdioPaths{})
	if err := p.setRunning(42); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(100, 0)
	if !p.setExited(3, at) {
		t.Fatal("first exit not recorded")
	}
	if p.setExited(255, time.Now()) {
		t.Fatal("second exit recorded")
	}
	select {
	case <-p.exited:
	default:
		t.Fatal("exited channel not closed")
	}
	state, pid, status, exitedAt := p.snapshot()
	if state != stateStopped || pid != 42 || status != 3 || !exitedAt.Equal(at) {
		t.Fatalf("got %s pid=%d status=%d at=%v", state, pid, status, exitedAt)
	}
	if err := p.markDeleted(); err != nil {
		t.Fatal(err)
	}
	if err := p.setRunning(1); err == nil {
		t.Fatal("deleted process started again")
	}
}
