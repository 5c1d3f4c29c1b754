package shim

import (
	"errors"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/contrast-vm/contrast/api/lifecycle"
)

// TestProcessMoves: a process moves by api/lifecycle's table, and a
// refused move changes nothing.
func TestProcessMoves(t *testing.T) {
	for from := lifecycle.Created; from <= lifecycle.Deleted; from++ {
		for to := lifecycle.Creating; to <= lifecycle.Deleted; to++ {
			p := newProcess("c", "", stdioPaths{})
			p.state = from
			err := p.move(to)
			if (err == nil) != lifecycle.Legal(from, to) {
				t.Errorf("%s -> %s: err = %v", from, to, err)
			}
			if err != nil {
				if !errors.Is(err, errdefs.ErrFailedPrecondition) {
					t.Errorf("%s -> %s: error %v is not FailedPrecondition", from, to, err)
				}
				if p.state != from {
					t.Errorf("%s -> %s refused, but the state became %s", from, to, p.state)
				}
			}
		}
	}
}

func TestProcessExitOnce(t *testing.T) {
	p := newProcess("c", "e", stdioPaths{})
	if err := p.setRunning(42); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(100, 0)
	if started, ok := p.setExited(3, at); !ok || !started {
		t.Fatalf("first exit: recorded %v, of a started process %v", ok, started)
	}
	if _, ok := p.setExited(255, time.Now()); ok {
		t.Fatal("second exit recorded")
	}
	select {
	case <-p.exited:
	default:
		t.Fatal("exited channel not closed")
	}
	state, pid, status, exitedAt := p.snapshot()
	if state != lifecycle.Stopped || pid != 42 || status != 3 || !exitedAt.Equal(at) {
		t.Fatalf("got %s pid=%d status=%d at=%v", state, pid, status, exitedAt)
	}
	if err := p.beginDelete(); err != nil {
		t.Fatal(err)
	}
	p.markDeleted()
	if err := p.setRunning(1); err == nil {
		t.Fatal("deleted process started again")
	}
}
