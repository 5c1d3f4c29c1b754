// Package lifecycle is the one vocabulary of a container's and a process's
// life, shared by the shim (which speaks containerd's task API) and the guest
// agent (which drives runc), with the one table of legal moves. Both sides
// check a move with Check before they act on it, so an illegal request is
// refused before anything is sent to the guest or to runc.
//
//	creating ──▶ created ──start──▶ running ──exit──▶ stopped ──delete──▶ deleting ──▶ deleted
//	   │            │                 │  ▲               ▲
//	   │            │            pause│  │resume         │ exit (VM died)
//	   │            │                 ▼  │               │
//	   │            │                paused ─────────────┘
//	   │            ├──exit (start failed, VM died)──▶ stopped
//	   │            └──delete (never started)──▶ deleting
//	   └──create failed──▶ deleted
package lifecycle

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// State is where a container or process is in its life.
type State uint8

const (
	// Creating: being set up (disks, layers, runc create); nothing else may
	// act on it yet.
	Creating State = iota
	// Created: set up, not started.
	Created
	// Running: started and not yet exited.
	Running
	// Paused: frozen (containers only).
	Paused
	// Stopped: exited; its exit status is known.
	Stopped
	// Deleting: being removed; nothing else may act on it.
	Deleting
	// Deleted: gone.
	Deleted
)

var names = [...]string{"being created", "created", "running", "paused", "stopped", "being deleted", "deleted"}

func (s State) String() string {
	if int(s) < len(names) {
		return names[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// moves is the table of legal moves: moves[from] lists every to.
var moves = [...][]State{
	Creating: {Created, Deleted},
	Created:  {Running, Stopped, Deleting, Deleted},
	Running:  {Paused, Stopped},
	Paused:   {Running, Stopped},
	Stopped:  {Deleting, Deleted},
	Deleting: {Deleted},
	Deleted:  nil,
}

// Legal reports whether from may move to to.
func Legal(from, to State) bool {
	if int(from) >= len(moves) {
		return false
	}
	for _, s := range moves[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Check returns nil when what (say, "container c1") may move from its
// state to to, else an error that names what, both states and the move,
// wrapping errdefs.ErrFailedPrecondition (FailedPrecondition over gRPC and
// ttrpc).
func Check(what string, from, to State) error {
	if Legal(from, to) {
		return nil
	}
	return fmt.Errorf("%s is %s, cannot become %s: %w", what, from, to, errdefs.ErrFailedPrecondition)
}

// Op is a request that moves along one edge of the table. Two edges lead
// to running (start, from created; resume, from paused), so a request
// names its edge, not only where it goes.
type Op struct{ From, To State }

// The requests whose edge the destination alone does not name.
var (
	Start  = Op{Created, Running}
	Pause  = Op{Running, Paused}
	Resume = Op{Paused, Running}
)

// CheckOp returns nil when what, in state from, may take op's edge, else an
// error naming what, its state and the move, wrapping
// errdefs.ErrFailedPrecondition.
func CheckOp(what string, from State, op Op) error {
	if err := Check(what, from, op.To); err != nil {
		return err
	}
	if from != op.From {
		return fmt.Errorf("%s is %s, not %s: %w", what, from, op.From, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Live reports whether a process in state s may still run or be signalled:
// running or paused.
func (s State) Live() bool { return s == Running || s == Paused }

// Ended reports whether s is past the process's exit.
func (s State) Ended() bool { return s >= Stopped }
