package shim

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/contrast-vm/contrast/api/lifecycle"
)

// stdioPaths are the stdio endpoints containerd gave for a process.
type stdioPaths struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// process is a container's init or exec process running in the guest (or,
// for the sandbox, the VM itself). Its state moves only through move, which
// checks api/lifecycle's table.
type process struct {
	containerID string
	execID      string // empty for the init process
	stdio       stdioPaths
	spec        []byte // exec processes: the OCI process as JSON

	mu         sync.Mutex
	state      lifecycle.State
	pid        uint32
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{} // closed on the move to stopped (or deleted, never started)
	// announced is closed once the start event is published: the exit
	// event waits for it.
	announced chan struct{}
	// starting: a Start is under way (the state is still created), so a
	// second Start or a Delete is refused.
	starting bool
	io       *hostIO // nil until started
}

func newProcess(containerID, execID string, stdio stdioPaths) *process {
	return &process{containerID: containerID, execID: execID, stdio: stdio, state: lifecycle.Created, exited: make(chan struct{}), announced: make(chan struct{})}
}

func (p *process) name() string {
	if p.execID == "" {
		return "container " + p.containerID
	}
	return fmt.Sprintf("exec %s in container %s", p.execID, p.containerID)
}

// check says whether the process may take op's edge now, without moving:
// a request checks before it sends anything to the guest.
func (p *process) check(op lifecycle.Op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return lifecycle.CheckOp(p.name(), p.state, op)
}

// moveLocked moves the process to state to, or says why it cannot.
func (p *process) moveLocked(to lifecycle.State) error {
	if err := lifecycle.Check(p.name(), p.state, to); err != nil {
		return err
	}
	p.state = to
	return nil
}

// move moves the process, for start, pause and resume.
func (p *process) move(to lifecycle.State) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.moveLocked(to)
}

// beginStart checks that the process may start and marks the start under
// way; endStart clears the mark.
func (p *process) beginStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.starting {
		return fmt.Errorf("%s is being started already: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	if err := lifecycle.CheckOp(p.name(), p.state, lifecycle.Start); err != nil {
		return err
	}
	p.starting = true
	return nil
}

func (p *process) endStart() {
	p.mu.Lock()
	p.starting = false
	p.mu.Unlock()
}

// setRunning records a successful start.
func (p *process) setRunning(pid uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.moveLocked(lifecycle.Running); err != nil {
		return err
	}
	p.pid = pid
	return nil
}

// setExited records the exit once. ok is false when the process had
// already exited (for example, the VM died and the agent's answer came
// late); wasStarted tells whether it had run (and its start was announced
// or is being announced).
func (p *process) setExited(status uint32, at time.Time) (wasStarted, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wasStarted = p.state.Live()
	if p.moveLocked(lifecycle.Stopped) != nil {
		return false, false
	}
	p.exitStatus, p.exitedAt = status, at
	close(p.exited)
	return wasStarted, true
}

// snapshot returns state, pid and exit under the lock.
func (p *process) snapshot() (lifecycle.State, uint32, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.pid, p.exitStatus, p.exitedAt
}

// beginDelete moves a stopped (or never started) process to deleting,
// which no other request may act on; a process being started is refused.
func (p *process) beginDelete() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.starting {
		return fmt.Errorf("%s is being started: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	neverStarted := p.state == lifecycle.Created
	if err := p.moveLocked(lifecycle.Deleting); err != nil {
		return err
	}
	if neverStarted {
		// gone without ever having run
		p.exitedAt = time.Now()
		close(p.exited)
	}
	return nil
}

// markDeleted ends a deletion (or a failed creation).
func (p *process) markDeleted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == lifecycle.Creating {
		close(p.exited)
	}
	p.state = lifecycle.Deleted
}
