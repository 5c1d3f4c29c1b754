package shim

import (
	"context"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/log"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// The events a task publishes keep containerd's order, as its runc shim
// does: a process's exit follows its start event (and the output it wrote),
// and a container's init exit follows the exits of its execs.

func (s *service) publish(topic string, event any) {
	ctx := namespaces.WithNamespace(context.WithoutCancel(s.ctx), namespaceOf(s.ctx))
	if err := s.publisher.Publish(ctx, topic, event); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Error("publish event")
	}
}

// exitOrder holds a container's init exit until the exits of its execs are
// published: CRI takes the init exit for the end of the container.
type exitOrder struct {
	mu sync.Mutex
	// liveExecs counts execs being started or running whose exit is not
	// yet published.
	liveExecs int
	// heldInitExit publishes the init's exit, once liveExecs is zero.
	heldInitExit func()
}

// execStarting counts an exec before the guest may run it.
func (o *exitOrder) execStarting() {
	o.mu.Lock()
	o.liveExecs++
	o.mu.Unlock()
}

// execEnded is called once an exec's exit is published (or its start
// failed); the last one releases a held init exit.
func (o *exitOrder) execEnded() {
	o.mu.Lock()
	o.liveExecs--
	var publish func()
	if o.liveExecs == 0 {
		publish, o.heldInitExit = o.heldInitExit, nil
	}
	o.mu.Unlock()
	if publish != nil {
		publish()
	}
}

// initEnded records the init's exit now, or holds it while execs live
// (the first report of it wins); it reports whether it held it.
func (o *exitOrder) initEnded(record func()) bool {
	o.mu.Lock()
	if o.liveExecs > 0 {
		if o.heldInitExit == nil {
			o.heldInitExit = record
		}
		o.mu.Unlock()
		return true
	}
	o.mu.Unlock()
	record()
	return false
}

// started records a successful start and publishes it; only then may the
// process's exit be published.
func (s *service) started(p *process, pid uint32, topic string, event any) error {
	if err := p.setRunning(pid); err != nil {
		return err
	}
	s.publish(topic, event)
	close(p.announced)
	return nil
}

// waitProcess waits in the guest for a process to end, then for its output
// to reach the host, and only then reports its exit.
func (s *service) waitProcess(pd *pod, c *container, p *process) {
	resp, err := pd.agent.WaitProcess(s.ctx, &agentapi.ProcessRequest{ContainerId: p.containerID, ExecId: p.execID})
	if err != nil {
		// The agent is gone: the pod is dead. watchPod reports the exits.
		select {
		case <-pd.vm.Done():
		case <-time.After(2 * time.Second):
			log.G(s.ctx).WithError(err).WithField("pod", pd.id).Error("guest agent lost while the VM runs; stopping the pod VM")
			_ = pd.vm.Stop(context.WithoutCancel(s.ctx))
		}
		return
	}
	waited := time.Now()
	if p.io != nil {
		if err := p.io.waitOutput(s.ctx); err != nil {
			log.G(s.ctx).WithError(err).Warn("output of " + p.name() + " incomplete")
		}
	}
	if p.execID != "" {
		// What the exec took in the guest, runc included: the rest of an
		// exec's round trip is the host's and the protocol's.
		log.G(s.ctx).WithFields(log.Fields{
			"container": p.containerID, "exec": p.execID, "guest_runc_exec_us": resp.RuncExecNanos / 1000,
			"output_wait_us": time.Since(waited).Microseconds(),
		}).Debug("exec ended in the guest")
	}
	if p.execID == "" {
		// Before the exit is out: the kubelet reads the termination
		// message from the host file once it sees the container exited.
		c.writeBack(s.ctx, resp.WrittenBack)
	}
	s.exit(pd, c, p, resp.ExitStatus, time.Unix(0, resp.ExitedAtUnixNano))
}

// exit records a process's exit once and publishes it, in containerd's
// order: a container's init exit, and with it Wait's return, only once its
// execs' exits are out.
func (s *service) exit(pd *pod, c *container, p *process, status uint32, at time.Time) {
	if p.execID != "" {
		if wasStarted := s.recordExit(p, status, at); wasStarted {
			c.exits.execEnded()
		}
		return
	}
	held := c.exits.initEnded(func() { s.recordExit(p, status, at) })
	if held && pd != nil && (pd.hostPID || c.sharedPID) {
		// Without a PID namespace of its own (the VM's, or the pod's
		// shared one) the container's execs outlive its init; end them,
		// as runc's shim does, so its exit can follow.
		go func() {
			if _, err := pd.agent.SignalProcess(s.ctx, &agentapi.SignalProcessRequest{
				ContainerId: c.id, Signal: uint32(syscall.SIGKILL), All: true,
			}); err != nil {
				log.G(s.ctx).WithError(err).WithField("container", c.id).Warn("kill the execs that outlive the container's init")
			}
		}()
	}
}

// recordExit records the exit, once, and publishes it after the start
// event; it reports whether the process had been started.
func (s *service) recordExit(p *process, status uint32, at time.Time) (wasStarted bool) {
	wasStarted, ok := p.setExited(status, at)
	if !ok {
		return false
	}
	if wasStarted {
		<-p.announced
	}
	if p.io != nil {
		p.io.close()
	}
	id := p.execID
	if id == "" {
		id = p.containerID
	}
	s.publish(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: p.containerID, ID: id, Pid: p.pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at),
	})
	return wasStarted
}

// watchPod reports every process as exited when the VM ends: a killed QEMU,
// a crashed guest, or the sandbox stopped on purpose.
func (s *service) watchPod(pd *pod) {
	<-pd.vm.Done()
	s.mu.Lock()
	expected := s.podStopping
	type proc struct {
		c *container
		p *process
	}
	var execs, inits []proc
	var sandbox *container
	for _, c := range s.containers {
		for _, e := range c.execs {
			execs = append(execs, proc{c, e})
		}
		if c.sandbox {
			sandbox = c
		} else {
			inits = append(inits, proc{c, c.init})
		}
	}
	s.mu.Unlock()
	if !expected {
		log.G(s.ctx).WithError(pd.vm.Err()).WithField("pod", pd.id).Error("pod VM stopped unexpectedly")
	}
	now := time.Now()
	killed := uint32(128 + syscall.SIGKILL)
	// A process whose exit the agent reported just before the end keeps it.
	for _, e := range append(execs, inits...) {
		if state, _, _, _ := e.p.snapshot(); state.Live() {
			s.exit(nil, e.c, e.p, killed, now)
		}
	}
	if sandbox != nil {
		status := killed
		if !expected {
			status = 255
		}
		s.exit(nil, sandbox, sandbox.init, status, now)
	}
}

// watchOOM relays the guest's OOM kills to containerd until the VM ends.
func (s *service) watchOOM(pd *pod) {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		select {
		case <-pd.vm.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		ev, err := pd.agent.WaitOOM(ctx, &agentapi.Empty{})
		if err != nil {
			if ctx.Err() == nil {
				log.G(ctx).WithError(err).WithField("pod", pd.id).Warn("OOM events from the guest stopped")
			}
			return
		}
		log.G(ctx).WithField("container", ev.ContainerId).Info("container OOM-killed in the guest")
		s.publish(runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: ev.ContainerId})
	}
}
