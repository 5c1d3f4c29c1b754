// Package reaper collects the exit status of every child the agent has, including
// orphans re-parented to it (it is PID 1 in the guest, a subreaper elsewhere),
// and hands each status to whoever waits for that pid.
//
// Nothing else in the agent may call wait(2): exec.Cmd.Wait would race with
// the reaper's wait4(-1) and lose exits or see ECHILD. Commands are started
// with Start and their exit read from the returned channel.
package reaper

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Exit is the end of one process.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
	Time   time.Time
}

// Code is the exit status as containerd reports it: the exit code, or 128
// plus the signal number for a process killed by a signal.
func (e Exit) Code() uint32 {
	if e.Status.Signaled() {
		return 128 + uint32(e.Status.Signal())
	}
	return uint32(e.Status.ExitStatus())
}

func (e Exit) String() string {
	if e.Status.Signaled() {
		return fmt.Sprintf("pid %d killed by signal %d (%v)", e.Pid, int(e.Status.Signal()), e.Status.Signal())
	}
	return fmt.Sprintf("pid %d exited with %d", e.Pid, e.Status.ExitStatus())
}

// Reaper dispatches exit statuses by pid. Create it with Start.
type Reaper struct {
	mu sync.Mutex
	// waiters get the exit of one pid; registered by Watch.
	waiters map[int]chan Exit
	// subs see every exit not claimed by a waiter while they are open; they
	// cover the window in which a pid is not yet known (a pid file not yet
	// read, a fork not yet returned).
	subs map[*Subscription]struct{}
}

// Start installs the SIGCHLD handler and reaps until ctx ends. Call it before
// the agent starts any child.
func Start(ctx context.Context) *Reaper {
	r := &Reaper{waiters: map[int]chan Exit{}, subs: map[*Subscription]struct{}{}}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		defer signal.Stop(sigs)
		// Children may already be waiting to be reaped (signals before Notify).
		r.reapAll(ctx)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sigs:
				r.reapAll(ctx)
			}
		}
	}()
	return r
}

// reapAll collects every exited child; SIGCHLDs coalesce, so one signal may
// stand for many exits.
func (r *Reaper) reapAll(ctx context.Context) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			if err != nil && err != unix.ECHILD {
				log.G(ctx).WithError(err).Warn("reaper: wait4")
			}
			return
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		r.dispatch(ctx, Exit{Pid: pid, Status: ws, Time: time.Now()})
	}
}

func (r *Reaper) dispatch(ctx context.Context, e Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiters[e.Pid]; ok {
		delete(r.waiters, e.Pid)
		ch <- e // buffered, never blocks
		return
	}
	for s := range r.subs {
		s.exits[e.Pid] = e
		close(s.notify)
		s.notify = make(chan struct{})
	}
	if len(r.subs) == 0 {
		log.G(ctx).WithField("pid", e.Pid).Debugf("reaper: reaped %v", e)
	}
}

// Subscription records exits from its creation until Close.
type Subscription struct {
	r      *Reaper
	exits  map[int]Exit
	notify chan struct{} // closed and replaced on every new exit
}

// Subscribe starts recording exits. Subscribe before starting a process
// whose pid is learnt later, then hand the pid to Watch.
func (r *Reaper) Subscribe() *Subscription {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &Subscription{r: r, exits: map[int]Exit{}, notify: make(chan struct{})}
	r.subs[s] = struct{}{}
	return s
}

// Close stops recording. Exits recorded but not watched are dropped.
func (s *Subscription) Close() {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	delete(s.r.subs, s)
	s.exits = nil
}

// Watch returns a channel that receives the exit of pid: at once if s has
// already seen it, else when it happens. pid must be a child (or a future
// orphan) of this process that was alive when s was created or started since.
func (r *Reaper) Watch(s *Subscription, pid int) <-chan Exit {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan Exit, 1)
	if e, ok := s.exits[pid]; ok {
		delete(s.exits, pid)
		ch <- e
		return ch
	}
	r.waiters[pid] = ch
	return ch
}

// Start starts cmd and returns a channel receiving its exit. cmd must not use
// a context (exec.CommandContext kills through Process, which Start releases
// once the exit is known) and its stdio must be nil or *os.File, so that
// exec.Cmd needs no Wait to finish copying.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan Exit, error) {
	s := r.Subscribe()
	defer s.Close()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return r.Watch(s, cmd.Process.Pid), nil
}

// Run starts cmd and waits for its exit. When ctx ends first, the process is
// killed (through its pidfd, so never another process reusing the pid) and
// Run still waits for it to be reaped.
func (r *Reaper) Run(ctx context.Context, cmd *exec.Cmd) (Exit, error) {
	ch, err := r.Start(cmd)
	if err != nil {
		return Exit{}, err
	}
	defer cmd.Process.Release()
	select {
	case e := <-ch:
		return e, nil
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		e := <-ch
		return e, fmt.Errorf("%s: %w (killed)", cmd.Path, ctx.Err())
	}
}
