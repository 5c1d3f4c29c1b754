package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/reaper"
	"github.com/contrast-vm/contrast/agent/runc"
	"github.com/contrast-vm/contrast/agent/stdio"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/lifecycle"
	"github.com/contrast-vm/contrast/internal/pipes"
)

// process is a container's init or exec process.
type process struct {
	containerID, execID string
	pid                 int
	// began is when the agent started runc for the process: an exec's
	// exit minus began is what the exec took inside the VM.
	began   time.Time
	stdin   *stdio.Input
	outputs []*stdio.Output
	// console is the pty master of a process with a terminal (for
	// ResizePty), closed once the process is done.
	console *os.File
	// onExit runs once the exit is known, before WaitProcess may return it.
	onExit func()

	exited chan struct{} // closed when the process has exited
	done   chan struct{} // closed when it has exited and its output reached the host
	mu     sync.Mutex
	// st is Created (an init process runc created, waiting for its
	// container's start), Running or Stopped (exited).
	st   lifecycle.State
	exit reaper.Exit
}

func (p *process) String() string {
	if p.execID == "" {
		return fmt.Sprintf("init process (pid %d) of container %s", p.pid, p.containerID)
	}
	return fmt.Sprintf("exec %s (pid %d) in container %s", p.execID, p.pid, p.containerID)
}

// state is where the process is in its life.
func (p *process) state() lifecycle.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// started records that the init process's container started, unless the
// process exited meanwhile.
func (p *process) started() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if lifecycle.Legal(p.st, lifecycle.Running) {
		p.st = lifecycle.Running
	}
}

// runTime is how long the process took from began to its exit, valid
// once exited is closed.
func (p *process) runTime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit.Time.Sub(p.began)
}

// result is the exit, valid once done is closed.
func (p *process) result() reaper.Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// watch records the exit and waits until the output the process wrote has
// reached the host, so WaitProcess never reports an exit before the tail
// of the output.
func (p *process) watch(ctx context.Context, exit <-chan reaper.Exit) {
	e := <-exit
	p.mu.Lock()
	p.exit = e
	p.st = lifecycle.Stopped // legal from created and running alike
	p.mu.Unlock()
	close(p.exited)
	log.G(ctx).Infof("%s: %v", p, e)
	if p.onExit != nil {
		p.onExit()
	}
	for _, o := range p.outputs {
		o.ProcessExited()
	}
	for _, o := range p.outputs {
		<-o.Drained()
	}
	if p.stdin != nil {
		p.stdin.Close(0)
	}
	if p.console != nil {
		p.console.Close()
	}
	close(p.done)
}

// resize sets the window size of the process's terminal.
func (p *process) resize(width, height uint32) error {
	if p.console == nil {
		return precondition("resize terminal of %s: the process has no terminal", p)
	}
	if width > 0xffff || height > 0xffff {
		return invalid("resize terminal of %s: %dx%d is out of range (at most 65535 columns and rows)", p, width, height)
	}
	select {
	case <-p.done:
		return precondition("resize terminal of %s: the process has exited", p)
	default:
	}
	if err := setWinsize(p.console, uint16(width), uint16(height)); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return precondition("resize terminal of %s: the process has exited", p)
		}
		return fmt.Errorf("resize terminal of %s: %w", p, err)
	}
	return nil
}

// abortIO cuts the stdio connections of an exited process whose output the
// host does not read.
func (p *process) abortIO() {
	for _, o := range p.outputs {
		o.Abort()
	}
}

// procIO is the stdio of a process being started: pipes, whose child ends
// go to runc (which passes them on to the process) while the agent keeps
// the others, or for a terminal the socket runc sends the pty master to.
type procIO struct {
	child                    runc.IO
	stdinW, stdoutR, stderrR *os.File
	console                  *consoleSocket
	// master is the pty master (for resizing); stdoutR and stdinTerm are
	// duplicates of it for the copiers, which close them when they end.
	master    *os.File
	stdinTerm *os.File
}

// checkStdio refuses stdio a process cannot have: a terminal is one
// stream for output, stdout; it has no stderr.
func checkStdio(st *api.Stdio) error {
	if !st.GetTerminal() {
		return nil
	}
	if st.Stderr {
		return errors.New("a process with a terminal has no stderr stream (its output is all on stdout)")
	}
	if !st.Stdout {
		return errors.New("a process with a terminal needs a stdout stream to carry the terminal's output")
	}
	return nil
}

// newProcIO creates a pipe for every stream st declares, or a console
// socket in dir for a terminal. The child ends of pipes are owned by
// uid:gid so that the process can reopen them (/dev/stdout).
func newProcIO(st *api.Stdio, uid, gid uint32, dir string) (_ *procIO, err error) {
	pio := &procIO{}
	defer func() {
		if err != nil {
			pio.closeChild()
			pio.closeAgent()
		}
	}()
	if st == nil {
		return pio, nil
	}
	if st.Terminal {
		if pio.console, err = newConsoleSocket(dir); err != nil {
			return nil, err
		}
		pio.child.ConsoleSocket = pio.console.path()
		return pio, nil
	}
	pipe := func(name string, want bool, childReads bool) (agentEnd, childEnd *os.File, err error) {
		if !want {
			return nil, nil, nil
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("create %s pipe: %w", name, err)
		}
		agentEnd, childEnd = r, w
		if childReads {
			agentEnd, childEnd = w, r
		}
		if err := childEnd.Chown(int(uid), int(gid)); err != nil {
			r.Close()
			w.Close()
			return nil, nil, fmt.Errorf("chown %s pipe to %d:%d: %w", name, uid, gid, err)
		}
		return agentEnd, childEnd, nil
	}
	if pio.stdinW, pio.child.Stdin, err = pipe("stdin", st.Stdin, true); err != nil {
		return nil, err
	}
	if pio.stdoutR, pio.child.Stdout, err = pipe("stdout", st.Stdout, false); err != nil {
		return nil, err
	}
	if pio.stderrR, pio.child.Stderr, err = pipe("stderr", st.Stderr, false); err != nil {
		return nil, err
	}
	// More room: the process and the copier take turns less often. A
	// pipe that stays small still works.
	for _, r := range []*os.File{pio.stdoutR, pio.stderrR} {
		if r == nil {
			continue
		}
		if err := pipes.Grow(r, stdio.OutputPipeSize); err != nil {
			log.L.WithError(err).Debug("stdio: output pipe keeps its size")
		}
	}
	return pio, nil
}

// receiveTerminal takes the pty master of a terminal process once runc has
// run; nothing to do for pipes. On error the caller still owns the process.
func (pio *procIO) receiveTerminal(st *api.Stdio) (err error) {
	if pio.console == nil {
		return nil
	}
	defer func() {
		if cerr := pio.console.close(); cerr != nil && err == nil {
			err = cerr
		}
		pio.console = nil
	}()
	if pio.master, err = pio.console.receive(5 * time.Second); err != nil {
		return err
	}
	if pio.stdoutR, err = dupFile(pio.master); err != nil {
		return fmt.Errorf("terminal: %w", err)
	}
	if st.Stdin {
		if pio.stdinTerm, err = dupFile(pio.master); err != nil {
			return fmt.Errorf("terminal: %w", err)
		}
	}
	return nil
}

// closeChild closes the agent's copies of the child ends: once the process
// has them, the agent must not hold a writer, or stdout never ends.
func (pio *procIO) closeChild() {
	for _, f := range []*os.File{pio.child.Stdin, pio.child.Stdout, pio.child.Stderr} {
		if f != nil {
			f.Close()
		}
	}
}

func (pio *procIO) closeAgent() {
	for _, f := range []*os.File{pio.stdinW, pio.stdoutR, pio.stderrR, pio.master, pio.stdinTerm} {
		if f != nil {
			f.Close()
		}
	}
	if pio.console != nil {
		pio.console.close()
		pio.console = nil
	}
}

// start hands the agent ends to the hub's copiers and starts watching the
// process's exit.
// discard drains the output without handing it to the host (the policy
// allows no logs).
func (pio *procIO) start(ctx context.Context, hub *stdio.Hub, claimTimeout time.Duration, p *process, exit <-chan reaper.Exit, discard bool) {
	startOutput := hub.StartOutput
	if discard {
		startOutput = hub.StartDiscardedOutput
	}
	key := func(s api.Stream) stdio.Key {
		return stdio.Key{ContainerID: p.containerID, ExecID: p.execID, Stream: s}
	}
	if pio.stdinW != nil {
		p.stdin = hub.StartInput(ctx, key(api.StreamStdin), pio.stdinW, claimTimeout)
	}
	if pio.stdinTerm != nil {
		p.stdin = hub.StartInputSink(ctx, key(api.StreamStdin), stdio.NewTerminal(pio.stdinTerm), claimTimeout)
	}
	if pio.stdoutR != nil {
		p.outputs = append(p.outputs, startOutput(ctx, key(api.StreamStdout), pio.stdoutR, claimTimeout))
	}
	if pio.stderrR != nil {
		p.outputs = append(p.outputs, startOutput(ctx, key(api.StreamStderr), pio.stderrR, claimTimeout))
	}
	p.console = pio.master
	go p.watch(ctx, exit)
}

// newProcess is a process runc created: an init process (execID empty)
// waiting for its container's start, or a running exec process.
func newProcess(containerID, execID string, pid int) *process {
	st := lifecycle.Running
	if execID == "" {
		st = lifecycle.Created
	}
	return &process{containerID: containerID, execID: execID, pid: pid, st: st, exited: make(chan struct{}), done: make(chan struct{})}
}

// waitExited waits for p to exit, at most d.
func waitExited(p *process, d time.Duration) error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(d):
		return errors.New("did not exit")
	}
}
