package shim

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// processState is where a process is in its life. The legal moves are in
// process.transition and nowhere else:
//
//	created ──start──▶ running ──exit──▶ stopped ──delete──▶ deleted
//	   │                 │  ▲                ▲
//	   │            pause│  │resume          │ exit (VM died)
//	   │                 ▼  │                │
//	   │                paused ──────────────┘
//	   └───────────────exit (start failed, VM died)──▶ stopped
type processState int

const (
	stateCreated processState = iota
	stateRunning
	statePaused
	stateStopped
	stateDeleted
)

func (s processState) String() string {
	return [...]string{"created", "running", "paused", "stopped", "deleted"}[s]
}

// stdioPaths are the stdio endpoints containerd gave for a process.
type stdioPaths struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// process is a container's init or exec process running in the guest.
type process struct {
	containerID string
	execID      string // empty for the init process
	stdio       stdioPaths

	mu         sync.Mutex
	state      processState
	pid        uint32
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{} // closed on the move to stopped
	io         *hostIO       // nil until started
	spec       []byte        // exec processes: the OCI process as JSON
}

func newProcess(containerID, execID string, stdio stdioPaths) *process {
	return &process{containerID: containerID, execID: execID, stdio: stdio, exited: make(chan struct{})}
}

func (p *process) name() string {
	if p.execID == "" {
		return "container " + p.containerID
	}
	return fmt.Sprintf("exec %s in container %s", p.execID, p.containerID)
}

// transition moves the process to state to, or says why it cannot.
func (p *process) transition(to processState) error {
	legal := false
	switch p.state {
	case stateCreated:
		legal = to == stateRunning || to == stateStopped || to == stateDeleted
	case stateRunning:
		legal = to == stateStopped || to == statePaused
	case statePaused:
		legal = to == stateRunning || to == stateStopped
	case stateStopped:
		legal = to == stateDeleted
	}
	if !legal {
		return fmt.Errorf("%s is %s, cannot become %s: %w", p.name(), p.state, to, errdefs.ErrFailedPrecondition)
	}
	p.state = to
	return nil
}

// setRunning records a successful start.
func (p *process) setRunning(pid uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.transition(stateRunning); err != nil {
		return err
	}
	p.pid = pid
	return nil
}

// setState moves the process, for pause and resume.
func (p *process) setState(to processState) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.transition(to)
}

// setExited records the exit once; it reports false when the process had
// already exited (for example, the VM died and the agent's answer came late).
func (p *process) setExited(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == stateStopped || p.state == stateDeleted {
		return false
	}
	if err := p.transition(stateStopped); err != nil {
		return false
	}
	p.exitStatus, p.exitedAt = status, at
	close(p.exited)
	return true
}

// snapshot returns state, pid and exit under the lock.
func (p *process) snapshot() (processState, uint32, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.pid, p.exitStatus, p.exitedAt
}

// markDeleted moves a stopped (or never started) process to deleted.
func (p *process) markDeleted() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == stateCreated {
		// never started: it is gone without ever having run
		p.exitedAt = time.Now()
		close(p.exited)
	}
	return p.transition(stateDeleted)
}
