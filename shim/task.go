package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/lifecycle"
)

// The task API, method by method.

// Create creates a task. The pod's first task (the CRI sandbox, or a task
// outside Kubernetes, which gets a VM of its own) boots the pod VM; every
// other is a container the agent creates in it from its image's layers
// (or, outside CRI, from a disk of its rootfs). The container is reserved
// under its id first, so other requests see it as being created.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	if err := agentapi.ValidateID("container id", r.ID); err != nil {
		return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	if r.Checkpoint != "" {
		return nil, fmt.Errorf("restoring container %s from a checkpoint is not supported: %w", r.ID, errdefs.ErrNotImplemented)
	}
	spec, specJSON, err := readSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	c := newContainer(r, spec)
	c.mu.Lock()
	defer c.mu.Unlock()
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.containers[r.ID] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			c.init.markDeleted()
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	pd, err := s.podFor(ctx, r, spec, c)
	if err != nil {
		return nil, err
	}
	if c.ownsPod {
		// a VM booted for this task alone ends with it, also when its creation fails
		defer func() {
			if retErr != nil {
				s.stopPod(ctx)
			}
		}()
	}
	pid := uint32(pd.vm.Pid())
	if !c.sandbox {
		if pid, err = s.createInGuest(ctx, pd, c, r, spec, specJSON); err != nil {
			return nil, err
		}
	}
	c.init.mu.Lock()
	c.init.pid = pid
	err = c.init.moveLocked(lifecycle.Created)
	c.init.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.publish(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid:         pid,
	})
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

// podFor returns the pod VM a new task runs in, booting it for the pod's
// first task.
func (s *service) podFor(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec, c *container) (*pod, error) {
	podID := spec.Annotations[annotationSandboxID]
	if podID == "" {
		podID = r.ID
	}
	s.bootMu.Lock()
	defer s.bootMu.Unlock()
	s.mu.Lock()
	booted := s.pod != nil
	s.mu.Unlock()
	if booted {
		return s.livePod()
	}
	if podID != r.ID {
		return nil, fmt.Errorf("container %s belongs to pod %s, whose sandbox this shim did not create: %w", r.ID, podID, errdefs.ErrFailedPrecondition)
	}
	c.ownsPod = !c.sandbox
	return s.startPod(ctx, r, spec, c)
}

// Start starts a created container or exec in the guest (for the sandbox,
// which the VM stands for, it only records the start). Its exit is
// published after its start event.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (_ *taskAPI.StartResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return s.startExec(ctx, c, p)
	}
	if err := c.lock(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if err := p.beginStart(); err != nil {
		return nil, err
	}
	defer p.endStart()
	start := &eventstypes.TaskStart{ContainerID: c.id, Pid: p.pid}
	if c.sandbox {
		if err := s.started(p, p.pid, runtime.TaskStartEventTopic, start); err != nil {
			return nil, err
		}
		return &taskAPI.StartResponse{Pid: p.pid}, nil
	}
	begin := time.Now()
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	resp, err := pd.agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
	if err != nil {
		return nil, fmt.Errorf("start container %s: %w", c.id, err)
	}
	rpc := time.Since(begin)
	if err := s.started(p, p.pid, runtime.TaskStartEventTopic, start); err != nil {
		return nil, err
	}
	steps := &agentapi.Phases{}
	steps.Add("agent-start", rpc)
	c.breakdown.addRequest(steps, resp.Phases, rpc, time.Since(begin))
	log.G(ctx).WithFields(c.breakdown.fields()).WithField("container", c.id).Debug(startBreakdownMessage)
	go s.waitProcess(pd, c, p)
	return &taskAPI.StartResponse{Pid: p.pid}, nil
}

// startExec starts an exec in a running container. It waits on no other
// request: not on the container's lifecycle, not on other execs.
func (s *service) startExec(ctx context.Context, c *container, p *process) (*taskAPI.StartResponse, error) {
	if state, _, _, _ := c.init.snapshot(); state != lifecycle.Running {
		return nil, fmt.Errorf("start %s: the container is %s, not running: %w", p.name(), state, errdefs.ErrFailedPrecondition)
	}
	if err := p.beginStart(); err != nil {
		return nil, err
	}
	defer p.endStart()
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	c.exits.execStarting()
	pid, err := withHostIO(ctx, pd, p, func(stdio *agentapi.Stdio) (uint32, error) {
		resp, err := pd.agent.ExecProcess(ctx, &agentapi.ExecProcessRequest{
			ContainerId: p.containerID, ExecId: p.execID, Process: p.spec, Stdio: stdio,
		})
		if err != nil {
			return 0, fmt.Errorf("start %s: %w", p.name(), err)
		}
		return resp.Pid, nil
	})
	if err == nil {
		err = s.started(p, pid, runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: pid})
	}
	if err != nil {
		c.exits.execEnded()
		return nil, err
	}
	go s.waitProcess(pd, c, p)
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// stopPod stops the VM on purpose; watchPod then reports the exits.
func (s *service) stopPod(ctx context.Context) error {
	s.mu.Lock()
	pd := s.pod
	s.podStopping = true
	s.mu.Unlock()
	if pd == nil {
		return nil
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pd.cfg.Timeouts.Stop.Duration+5*time.Second)
	defer cancel()
	return pd.stop(stopCtx)
}

// Delete removes a stopped (or never started) exec or container. Deleting
// the sandbox, or a task that owns its VM, ends the pod VM.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (_ *taskAPI.DeleteResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if err := p.beginDelete(); err != nil {
			return nil, err
		}
		p.markDeleted()
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		_, pid, status, at := p.snapshot()
		return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}

	if err := c.lock(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if err := p.beginDelete(); err != nil {
		return nil, err
	}
	var errs []error
	if !c.sandbox {
		errs = append(errs, s.removeFromGuest(ctx, c))
	}
	if c.sandbox || c.ownsPod {
		errs = append(errs, s.stopPod(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		log.G(ctx).WithError(err).Warn("delete left something to clean up")
	}
	p.markDeleted()
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	_, pid, status, at := p.snapshot()
	s.publish(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id, Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at), ID: c.id,
	})
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Exec registers an exec process in a container; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	if err := agentapi.ValidateID("exec id", r.ExecID); err != nil {
		return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if c.sandbox {
		return nil, fmt.Errorf("exec in the pod sandbox %s: the sandbox runs no processes: %w", c.id, errdefs.ErrNotImplemented)
	}
	if r.Spec == nil || len(r.Spec.GetValue()) == 0 {
		return nil, fmt.Errorf("exec %s has no process spec: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	var proc specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &proc); err != nil {
		return nil, fmt.Errorf("exec %s: malformed process spec: %v: %w", r.ExecID, err, errdefs.ErrInvalidArgument)
	}
	p := newProcess(c.id, r.ExecID, stdioPaths{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	p.spec = r.Spec.GetValue()
	s.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("exec %s in container %s: %w", r.ExecID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	s.publish(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// taskStatus maps a process state to the task API's.
var taskStatus = map[lifecycle.State]task.Status{
	lifecycle.Creating: task.Status_UNKNOWN,
	lifecycle.Created:  task.Status_CREATED,
	lifecycle.Running:  task.Status_RUNNING,
	lifecycle.Paused:   task.Status_PAUSED,
	lifecycle.Stopped:  task.Status_STOPPED,
	lifecycle.Deleting: task.Status_STOPPED,
	lifecycle.Deleted:  task.Status_STOPPED,
}

// State reports a process's state, pid and exit, from the shim's records
// alone.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (_ *taskAPI.StateResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	state, pid, status, at := p.snapshot()
	resp := &taskAPI.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: pid, Status: taskStatus[state],
		Stdin: p.stdio.Stdin, Stdout: p.stdio.Stdout, Stderr: p.stdio.Stderr, Terminal: p.stdio.Terminal,
		ExitStatus: status,
	}
	if !at.IsZero() {
		resp.ExitedAt = protobuf.ToTimestamp(at)
	}
	return resp, nil
}

// Kill signals a process in the guest (with All, every process of the
// container). Killing the sandbox ends the pod VM. A process that has
// exited already is not found, as with runc's shim.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if state, _, _, _ := p.snapshot(); state.Ended() {
		return nil, fmt.Errorf("%s has already exited: %w", p.name(), errdefs.ErrNotFound)
	}
	if c.sandbox {
		// The sandbox stands for the VM: signalling it ends the pod. Like a
		// signal, Kill returns at once; the exit event follows when the VM is
		// gone (and Delete waits for the stop to finish).
		s.mu.Lock()
		s.podStopping = true
		s.mu.Unlock()
		go func() {
			if err := s.stopPod(context.WithoutCancel(ctx)); err != nil {
				log.G(ctx).WithError(err).Warn("stop pod VM")
			}
		}()
		return &emptypb.Empty{}, nil
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	if _, err := pd.agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{
		ContainerId: c.id, ExecId: r.ExecID, Signal: r.Signal, All: r.All,
	}); err != nil {
		return nil, fmt.Errorf("signal %d to %s: %w", r.Signal, p.name(), err)
	}
	return &emptypb.Empty{}, nil
}

// Wait returns when the process has exited (or was deleted unstarted).
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (_ *taskAPI.WaitResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_, _, status, at := p.snapshot()
	return &taskAPI.WaitResponse{ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Pids lists a container's processes in the guest (the sandbox: the VM).
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (_ *taskAPI.PidsResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if c.sandbox {
		_, pid, _, _ := c.init.snapshot()
		return &taskAPI.PidsResponse{Processes: []*task.ProcessInfo{{Pid: pid}}}, nil
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	resp, err := pd.agent.ListProcesses(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
	if err != nil {
		return nil, fmt.Errorf("list processes of container %s: %w", c.id, err)
	}
	out := &taskAPI.PidsResponse{}
	for _, pid := range resp.Pids {
		out.Processes = append(out.Processes, &task.ProcessInfo{Pid: pid})
	}
	return out, nil
}

// CloseIO closes a process's stdin once what was written reached the guest.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin && p.io != nil {
		go p.io.closeStdinAfterDrain()
	}
	return &emptypb.Empty{}, nil
}

// Connect tells containerd the shim's pid and the task's.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	if c, err := s.getContainer(r.ID); err == nil {
		_, resp.TaskPid, _, _ = c.init.snapshot()
	}
	return resp, nil
}

// Shutdown ends the shim once it serves no task.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return &emptypb.Empty{}, nil
	}
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}

// Checkpoint is refused: the host cannot read a confidential VM's memory.
func (s *service) Checkpoint(context.Context, *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, grpcErr(fmt.Errorf("checkpoint: a confidential VM's memory cannot be checkpointed by the host, so the contrast runtime does not support it: %w", errdefs.ErrNotImplemented))
}

// Pause freezes a running container; the move is checked before the guest
// is asked.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.freeze(ctx, r.ID, lifecycle.Pause)
}

// Resume thaws a paused container.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.freeze(ctx, r.ID, lifecycle.Resume)
}

// freeze pauses (op Pause) or resumes (op Resume) a container.
func (s *service) freeze(ctx context.Context, id string, op lifecycle.Op) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	what, call, topic, event := "pause", agentapi.AgentService.PauseContainer, runtime.TaskPausedEventTopic, any(&eventstypes.TaskPaused{ContainerID: id})
	if op == lifecycle.Resume {
		what, call, topic, event = "resume", agentapi.AgentService.ResumeContainer, runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: id}
	}
	c, pd, err := s.guestContainer(id, what)
	if err != nil {
		return nil, err
	}
	if err := c.lock(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if err := c.init.check(op); err != nil {
		return nil, err
	}
	if _, err := call(pd.agent, ctx, &agentapi.ContainerRequest{ContainerId: c.id}); err != nil {
		return nil, fmt.Errorf("%s container %s: %w", what, c.id, err)
	}
	if err := c.init.move(op.To); err != nil {
		return nil, err
	}
	s.publish(topic, event)
	return &emptypb.Empty{}, nil
}

// ResizePty resizes a process's terminal in the guest.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !p.stdio.Terminal {
		return nil, fmt.Errorf("resize %s: it has no terminal: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	if _, err := pd.agent.ResizePty(ctx, &agentapi.ResizePtyRequest{
		ContainerId: r.ID, ExecId: r.ExecID, Width: r.Width, Height: r.Height,
	}); err != nil {
		return nil, fmt.Errorf("resize terminal of %s: %w", p.name(), err)
	}
	return &emptypb.Empty{}, nil
}

// Update changes a container's resources in the guest, within the VM's size.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, pd, err := s.guestContainer(r.ID, "update")
	if err != nil {
		return nil, err
	}
	if r.Resources == nil || len(r.Resources.GetValue()) == 0 {
		return nil, fmt.Errorf("update container %s: no resources given: %w", c.id, errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
		return nil, fmt.Errorf("update container %s: malformed resources: %v: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	if err := pd.size.fits(&res); err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	if err := c.lock(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if _, err := pd.agent.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: c.id, Resources: r.Resources.GetValue()}); err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	return &emptypb.Empty{}, nil
}

// Stats reports a container's cgroup statistics from the guest (the
// sandbox: the VM's on the host).
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (_ *taskAPI.StatsResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if c.sandbox {
		_, pid, _, _ := c.init.snapshot()
		stats, err := vmStats(pid)
		if err != nil {
			return nil, fmt.Errorf("stats of pod VM %s: %w", c.id, err)
		}
		return &taskAPI.StatsResponse{Stats: stats}, nil
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	resp, err := pd.agent.StatsContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.id, err)
	}
	return &taskAPI.StatsResponse{Stats: &anypb.Any{TypeUrl: resp.TypeUrl, Value: resp.Value}}, nil
}
