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
)

// process is a container's init or exec process.
type process struct {
	containerID, execID string
	pid                 int
	stdin               *stdio.Input
	outputs             []*stdio.Output

	exited chan struct{} // closed when the process has exited
	done   chan struct{} // closed when it has exited and its output reached the host
	mu     sync.Mutex
	exit   reaper.Exit
}

func (p *process) String() string {
	if p.execID == "" {
		return fmt.Sprintf("init process (pid %d) of container %s", p.pid, p.containerID)
	}
	return fmt.Sprintf("exec %s (pid %d) in container %s", p.execID, p.pid, p.containerID)
}

// hasExited reports whether the process has exited.
func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
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
	p.mu.Unlock()
	close(p.exited)
	log.G(ctx).Infof("%s: %v", p, e)
	for _, o := range p.outputs {
		o.ProcessExited()
	}
	for _, o := range p.outputs {
		<-o.Drained()
	}
	if p.stdin != nil {
		p.stdin.Close(0)
	}
	close(p.done)
}

// abortIO cuts the stdio connections of an exited process whose output the
// host does not read.
func (p *process) abortIO() {
	for _, o := range p.outputs {
		o.Abort()
	}
}

// procIO are the pipes of a process being started: the child ends go to
// runc (which passes them on to the process), the agent keeps the others.
type procIO struct {
	child                    runc.IO
	stdinW, stdoutR, stderrR *os.File
}

// newProcIO creates a pipe for every stream st declares. The child ends are
// owned by uid:gid so that the process can reopen them (/dev/stdout).
func newProcIO(st *api.Stdio, uid, gid uint32) (_ *procIO, err error) {
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
	return pio, nil
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
	for _, f := range []*os.File{pio.stdinW, pio.stdoutR, pio.stderrR} {
		if f != nil {
			f.Close()
		}
	}
}

// start hands the agent ends to the hub's copiers and starts watching the
// process's exit.
func (pio *procIO) start(ctx context.Context, hub *stdio.Hub, claimTimeout time.Duration, p *process, exit <-chan reaper.Exit) {
	key := func(s api.Stream) stdio.Key {
		return stdio.Key{ContainerID: p.containerID, ExecID: p.execID, Stream: s}
	}
	if pio.stdinW != nil {
		p.stdin = hub.StartInput(ctx, key(api.StreamStdin), pio.stdinW, claimTimeout)
	}
	if pio.stdoutR != nil {
		p.outputs = append(p.outputs, hub.StartOutput(ctx, key(api.StreamStdout), pio.stdoutR, claimTimeout))
	}
	if pio.stderrR != nil {
		p.outputs = append(p.outputs, hub.StartOutput(ctx, key(api.StreamStderr), pio.stderrR, claimTimeout))
	}
	go p.watch(ctx, exit)
}

func newProcess(containerID, execID string, pid int) *process {
	return &process{containerID: containerID, execID: execID, pid: pid, exited: make(chan struct{}), done: make(chan struct{})}
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
