package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// PIDHolderArg, as the agent binary's only argument, makes it the holder of
// the pod's shared PID namespace (RunPIDHolder) instead of the agent.
const PIDHolderArg = "pid-namespace-holder"

// RunPIDHolder is PID 1 of the pod's shared PID namespace (a pod with
// shareProcessNamespace): what the sandbox's pause process is on a node. It
// reaps the processes orphaned there and never returns; it ends with the
// agent, which started it bound to its own life.
func RunPIDHolder() {
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	// Woken by SIGCHLD only: with nothing to reap the holder sleeps, rather
	// than looking again every so often, so an idle pod wakes no one.
	exits := make(chan os.Signal, 1)
	signal.Notify(exits, syscall.SIGCHLD)
	for {
		reapExited()
		<-exits
	}
}

// reapExited collects every child that has ended, without waiting for
// those still running. SIGCHLDs coalesce: one may stand for many exits.
func reapExited() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}

// podPIDNamespace starts, once, the holder of the pod's shared PID
// namespace and returns that namespace's path.
type podPIDNamespace struct {
	argv []string // the holder's command; nil: no shared namespace here

	mu   sync.Mutex
	pid  int
	err  error
	runs chan func() // to the thread the holder is bound to
}

func newPodPIDNamespace(argv []string) *podPIDNamespace {
	return &podPIDNamespace{argv: argv}
}

// path returns the shared PID namespace, starting its holder at the first
// call. The holder is started from an OS thread that lives as long as the
// agent, so that its parent-death signal (which follows the thread that
// forked it) ends it exactly when the agent ends.
func (n *podPIDNamespace) path(start func(*exec.Cmd) error) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pid != 0 {
		return fmt.Sprintf("/proc/%d/ns/pid", n.pid), nil
	}
	if n.err != nil {
		return "", n.err
	}
	if len(n.argv) == 0 {
		return "", errors.New("this agent cannot hold a PID namespace shared by the pod's containers")
	}
	if n.runs == nil {
		n.runs = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the agent
			for f := range n.runs {
				f()
			}
		}()
	}
	cmd := exec.Command(n.argv[0], n.argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	done := make(chan error)
	n.runs <- func() { done <- start(cmd) }
	if err := <-done; err != nil {
		n.err = fmt.Errorf("start the holder of the pod's shared PID namespace: %w", err)
		return "", n.err
	}
	n.pid = cmd.Process.Pid
	return fmt.Sprintf("/proc/%d/ns/pid", n.pid), nil
}
