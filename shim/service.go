package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
)

// HypervisorFactory builds the hypervisor a configuration names.
type HypervisorFactory func(ctx context.Context, cfg Config) (hypervisor.Hypervisor, error)

// container is one task of the pod: the CRI sandbox (which stands for the
// VM itself and runs nothing in the guest) or a container run by the agent.
type container struct {
	id      string
	bundle  string
	sandbox bool
	// ownsPod: a task outside Kubernetes gets a VM of its own, which ends
	// with the task.
	ownsPod bool
	init    *process
	execs   map[string]*process
	disk    *hypervisor.Disk
	// layers are the serials of the image layers the container uses.
	layers []string
}

// service is the task API of one pod, served by one shim process.
type service struct {
	ctx           context.Context // lives as long as the shim
	publisher     events.Publisher
	shutdown      shutdown.Service
	newHypervisor HypervisorFactory
	// containerdAddress is containerd's gRPC socket; client connects to it
	// on first use.
	containerdAddress string
	clientOnce        sync.Once
	client            *containerd.Client
	clientErr         error

	// lifecycle serializes the slow calls that create or remove things
	// (Create, Start, Delete, Kill of the sandbox), so that state reads stay fast.
	lifecycle sync.Mutex

	mu          sync.Mutex
	pod         *pod
	podStopping bool // the sandbox was killed: the VM's end is expected
	containers  map[string]*container
}

// NewTaskService returns the task service; publisher and shutdown come from
// containerd's shim library.
func NewTaskService(ctx context.Context, publisher events.Publisher, sd shutdown.Service, newHypervisor HypervisorFactory) *service {
	s := &service{
		ctx:           ctx,
		publisher:     publisher,
		shutdown:      sd,
		newHypervisor: newHypervisor,
		containers:    map[string]*container{},
	}
	sd.RegisterCallback(func(ctx context.Context) error {
		s.mu.Lock()
		p := s.pod
		s.mu.Unlock()
		var err error
		if p != nil {
			err = p.stop(ctx)
		}
		if s.client != nil {
			s.client.Close()
		}
		return err
	})
	return s
}

// containerdClient connects to containerd, once.
func (s *service) containerdClient() (*containerd.Client, error) {
	s.clientOnce.Do(func() {
		if s.containerdAddress == "" {
			s.clientErr = errors.New("containerd's address is unknown (the shim was started without -address)")
			return
		}
		s.client, s.clientErr = containerd.New(s.containerdAddress)
		if s.clientErr != nil {
			s.clientErr = fmt.Errorf("connect to containerd at %s: %w", s.containerdAddress, s.clientErr)
		}
	})
	return s.client, s.clientErr
}

// RegisterTTRPC serves task API v3 and, for containerd 1.7, v2.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	registerTaskV2(server, s)
	return nil
}

func (s *service) publish(topic string, event any) {
	ctx := namespaces.WithNamespace(context.WithoutCancel(s.ctx), namespaceOf(s.ctx))
	if err := s.publisher.Publish(ctx, topic, event); err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Error("publish event")
	}
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// grpcErr maps errors to the codes containerd understands.
func grpcErr(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %s in container %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// livePod returns the pod VM, or an error when it is gone.
func (s *service) livePod() (*pod, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pod == nil {
		return nil, fmt.Errorf("no pod VM in this shim: %w", errdefs.ErrFailedPrecondition)
	}
	select {
	case <-s.pod.vm.Done():
		return nil, fmt.Errorf("VM of pod %s has stopped: %w", s.pod.id, errdefs.ErrUnavailable)
	default:
	}
	return s.pod, nil
}

// configFromOptions loads the runtime configuration the handler names.
func configFromOptions(opts *anypb.Any) (Config, error) {
	path := DefaultConfigPath
	if opts != nil && opts.GetTypeUrl() != "" {
		v, err := typeurl.UnmarshalAny(opts)
		if err != nil {
			return Config{}, fmt.Errorf("runtime options: %w", err)
		}
		if o, ok := v.(*runtimeoptions.Options); ok && o.ConfigPath != "" {
			path = o.ConfigPath
		}
	}
	return LoadConfig(path)
}

// readSpec reads the bundle's OCI spec; a malformed one is the user's error.
func readSpec(bundle string) (*specs.Spec, []byte, error) {
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read bundle spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, nil, fmt.Errorf("bundle spec %s is malformed: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil && spec.Annotations[annotationContainerType] != containerTypeSandbox {
		return nil, nil, fmt.Errorf("bundle spec %s has no process: %w", path, errdefs.ErrInvalidArgument)
	}
	return &spec, data, nil
}

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
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	if _, err := s.getContainer(r.ID); err == nil {
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}

	c := &container{
		id:      r.ID,
		bundle:  r.Bundle,
		sandbox: spec.Annotations[annotationContainerType] == containerTypeSandbox,
		execs:   map[string]*process{},
		init:    newProcess(r.ID, "", stdioPaths{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}),
	}
	podID := spec.Annotations[annotationSandboxID]
	if podID == "" {
		podID = r.ID
	}

	s.mu.Lock()
	p := s.pod
	s.mu.Unlock()
	if p == nil {
		if podID != r.ID {
			return nil, fmt.Errorf("container %s belongs to pod %s, whose sandbox this shim did not create: %w", r.ID, podID, errdefs.ErrFailedPrecondition)
		}
		cfg, err := configFromOptions(r.Options)
		if err != nil {
			return nil, err
		}
		hv, err := s.newHypervisor(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("hypervisor for pod %s: %w", podID, err)
		}
		size, err := podVMSize(cfg.Hypervisor, spec.Annotations)
		if err != nil {
			return nil, fmt.Errorf("size of pod %s: %w", podID, err)
		}
		module, source, err := podPolicy(ctx, cfg, podID, spec.Annotations)
		if err != nil {
			return nil, err
		}
		netns, err := podNetworkNamespace(podID, spec)
		if err != nil {
			return nil, err
		}
		cgroupPath := usableCgroupPath(spec)
		p, err = bootPod(ctx, hv, cfg, podLaunch{
			Namespace: namespaceOf(ctx), ID: podID, Hostname: spec.Hostname,
			Size: size, CgroupPath: cgroupPath, NetNS: netns, Policy: module, PolicySource: source,
		})
		if err != nil {
			return nil, err
		}
		rec := bundleRecord{PodStateDir: p.stateDir, Cgroup: cgroupPath}
		if p.network != nil {
			rec.NetNS, rec.Tap = p.network.netns, p.network.tap.Name
		}
		if err := writeBundleRecord(r.Bundle, rec); err != nil {
			p.stop(context.WithoutCancel(ctx))
			return nil, err
		}
		p.hostPID = c.sandbox && !hasNamespace(spec, specs.PIDNamespace)
		c.ownsPod = !c.sandbox
		s.mu.Lock()
		s.pod = p
		s.mu.Unlock()
		go s.watchPod(p)
		go s.watchOOM(p)
		if c.ownsPod {
			// a VM booted for this task alone ends with it, also when its creation fails
			defer func() {
				if retErr != nil {
					s.stopPod(ctx)
				}
			}()
		}
	} else if _, err := s.livePod(); err != nil {
		return nil, err
	}

	pid := uint32(p.vm.Pid())
	if !c.sandbox {
		if spec.Linux != nil {
			if err := p.size.fits(spec.Linux.Resources); err != nil {
				return nil, fmt.Errorf("container %s: %w", r.ID, err)
			}
		}
		if specJSON, err = joinPodPIDNamespace(p, spec, specJSON); err != nil {
			return nil, fmt.Errorf("container %s: %w", r.ID, err)
		}
		pid, err = s.createInGuest(ctx, p, c, r, spec, specJSON)
		if err != nil {
			return nil, err
		}
	}
	c.init.pid = pid

	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.publish(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid:         pid,
	})
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

// createInGuest gives the container its files and stdio and has the agent
// create it. A container CRI created from an image gets that image's layers,
// each opened in the guest through dm-verity; a task started outside CRI gets
// an unverified disk of its rootfs. On error the container holds nothing.
func (s *service) createInGuest(ctx context.Context, p *pod, c *container, r *taskAPI.CreateTaskRequest, spec *specs.Spec, specJSON []byte) (_ uint32, retErr error) {
	req := &agentapi.CreateContainerRequest{ContainerId: c.id, Spec: specJSON}
	var disk *hypervisor.Disk
	if image := spec.Annotations[annotationImageName]; image != "" {
		client, err := s.containerdClient()
		if err != nil {
			return 0, fmt.Errorf("image of container %s: %w", c.id, err)
		}
		blobs, err := imageLayers(ctx, client, namespaceOf(ctx), image)
		if err != nil {
			return 0, fmt.Errorf("container %s: %w", c.id, err)
		}
		layers, serials, err := p.layers.acquire(ctx, p.vm, blobs)
		if err != nil {
			return 0, fmt.Errorf("image layers of container %s: %w", c.id, err)
		}
		defer func() {
			if retErr != nil {
				p.layers.release(serials)
			}
		}()
		req.Layers = layers
		c.layers = serials
	} else {
		var err error
		if disk, err = attachRootfsDisk(ctx, p, c, r, spec); err != nil {
			return 0, err
		}
		defer func() {
			if retErr != nil {
				_ = p.vm.DetachDisk(context.WithoutCancel(ctx), disk.Serial)
				os.Remove(disk.Path)
			}
		}()
		req.Rootfs = &agentapi.BlockDevice{Serial: disk.Serial, Fstype: "ext4", ReadOnly: true}
	}
	shared, err := sharedFiles(spec)
	if err != nil {
		return 0, fmt.Errorf("container %s: %w", c.id, err)
	}
	req.SharedFiles = shared
	pid, err := withHostIO(ctx, p, c.init, func(stdio *agentapi.Stdio) (uint32, error) {
		req.Stdio = stdio
		resp, err := p.agent.CreateContainer(ctx, req)
		if err != nil {
			return 0, fmt.Errorf("create container %s in pod %s: %w", c.id, p.id, err)
		}
		return resp.Pid, nil
	})
	if err != nil {
		c.layers = nil
		return 0, err
	}
	c.disk = disk
	return pid, nil
}

// attachRootfsDisk builds an ext4 image of a task's rootfs (the snapshot
// containerd prepared, or the bundle's root directory) and attaches it.
func attachRootfsDisk(ctx context.Context, p *pod, c *container, r *taskAPI.CreateTaskRequest, spec *specs.Spec) (_ *hypervisor.Disk, retErr error) {
	var err error
	diskDir := filepath.Join(p.stateDir, "disks")
	if err = os.MkdirAll(diskDir, 0o700); err != nil {
		return nil, err
	}
	disk := hypervisor.Disk{Serial: rootfsSerial(c.id), Path: filepath.Join(diskDir, c.id+".ext4"), ReadOnly: true}
	if len(r.Rootfs) > 0 {
		err = buildRootfsImage(ctx, r.Rootfs, disk.Path)
	} else {
		// a bundle that brings its rootfs as a directory, as runc takes it
		err = rootfsFromBundle(ctx, c.bundle, spec, disk.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("rootfs of container %s: %w", c.id, err)
	}
	defer func() {
		if retErr != nil {
			os.Remove(disk.Path)
		}
	}()
	if err := p.vm.AttachDisk(ctx, disk); err != nil {
		return nil, fmt.Errorf("attach rootfs of container %s: %w", c.id, err)
	}
	return &disk, nil
}

// withHostIO connects a process's stdio to the guest, then has the agent
// start it; the streams are closed again when that fails.
func withHostIO(ctx context.Context, pd *pod, p *process, start func(*agentapi.Stdio) (uint32, error)) (uint32, error) {
	io, err := openHostIO(ctx, pd.vm, namespaceOf(ctx), p.containerID, p.execID, p.stdio)
	if err != nil {
		return 0, err
	}
	pid, err := start(stdioFlags(p.stdio))
	if err != nil {
		io.close()
		return 0, err
	}
	p.io = io
	return pid, nil
}

func hasNamespace(spec *specs.Spec, typ specs.LinuxNamespaceType) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == typ {
			return true
		}
	}
	return false
}

// joinPodPIDNamespace handles a pod in the node's PID namespace (CRI
// NamespaceMode NODE): CRI points its containers at the sandbox's PID
// namespace, which on the host is the VM monitor's; in the pod VM the node
// is the VM, so such containers get no PID namespace of their own.
func joinPodPIDNamespace(p *pod, spec *specs.Spec, specJSON []byte) ([]byte, error) {
	if !p.hostPID || spec.Linux == nil {
		return specJSON, nil
	}
	sandboxNS := fmt.Sprintf("/proc/%d/ns/pid", p.vm.Pid())
	var kept []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace && ns.Path == sandboxNS {
			continue
		}
		kept = append(kept, ns)
	}
	if len(kept) == len(spec.Linux.Namespaces) {
		return specJSON, nil
	}
	spec.Linux.Namespaces = kept
	return json.Marshal(spec)
}

func stdioFlags(p stdioPaths) *agentapi.Stdio {
	// with a terminal, containerd still names a stderr FIFO; nothing is written to it
	return &agentapi.Stdio{Stdin: p.Stdin != "", Stdout: p.Stdout != "", Stderr: p.Stderr != "" && !p.Terminal, Terminal: p.Terminal}
}

// maxSharedFile bounds what a host file bind mount may copy into the guest.
const maxSharedFile = 1 << 20

// sharedFiles copies the small host files a container bind-mounts (CRI's
// /etc/hosts, /etc/resolv.conf, /etc/hostname, termination log) into the request.
func sharedFiles(spec *specs.Spec) ([]*agentapi.SharedFile, error) {
	var files []*agentapi.SharedFile
	for _, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		info, err := os.Stat(m.Source)
		if err != nil || !info.Mode().IsRegular() {
			continue // directories and missing sources: the agent decides
		}
		if info.Size() > maxSharedFile {
			return nil, fmt.Errorf("bind mount %s -> %s: host file of %d bytes exceeds the %d bytes that can be copied into the VM",
				m.Source, m.Destination, info.Size(), maxSharedFile)
		}
		data, err := os.ReadFile(m.Source)
		if err != nil {
			return nil, fmt.Errorf("bind mount %s -> %s: %w", m.Source, m.Destination, err)
		}
		files = append(files, &agentapi.SharedFile{Destination: m.Destination, Content: data, Mode: uint32(info.Mode().Perm())})
	}
	return files, nil
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (_ *taskAPI.StartResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	if state, _, _, _ := p.snapshot(); state != stateCreated {
		return nil, fmt.Errorf("%s is %s, not created: %w", p.name(), state, errdefs.ErrFailedPrecondition)
	}
	if c.sandbox {
		if err := p.setRunning(p.pid); err != nil {
			return nil, err
		}
		s.publish(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: p.pid})
		return &taskAPI.StartResponse{Pid: p.pid}, nil
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, err
	}
	var pid uint32
	if r.ExecID == "" {
		if _, err := pd.agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id}); err != nil {
			return nil, fmt.Errorf("start container %s: %w", c.id, err)
		}
		pid = p.pid
		if err := p.setRunning(pid); err != nil {
			return nil, err
		}
		s.publish(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: pid})
	} else {
		pid, err = s.startExec(ctx, pd, p)
		if err != nil {
			return nil, err
		}
		s.publish(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: r.ExecID, Pid: pid})
	}
	// Exits are published after the start event, never before.
	go s.waitProcess(pd, p)
	return &taskAPI.StartResponse{Pid: pid}, nil
}

func (s *service) startExec(ctx context.Context, pd *pod, p *process) (uint32, error) {
	pid, err := withHostIO(ctx, pd, p, func(stdio *agentapi.Stdio) (uint32, error) {
		resp, err := pd.agent.ExecProcess(ctx, &agentapi.ExecProcessRequest{
			ContainerId: p.containerID,
			ExecId:      p.execID,
			Process:     p.spec,
			Stdio:       stdio,
		})
		if err != nil {
			return 0, fmt.Errorf("start %s: %w", p.name(), err)
		}
		return resp.Pid, nil
	})
	if err != nil {
		return 0, err
	}
	if err := p.setRunning(pid); err != nil {
		return 0, err
	}
	return pid, nil
}

// waitProcess waits in the guest for a process to end, then for its output
// to reach the host, and only then reports its exit.
func (s *service) waitProcess(pd *pod, p *process) {
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
	if p.io != nil {
		if err := p.io.waitOutput(s.ctx); err != nil {
			log.G(s.ctx).WithError(err).Warn("output of " + p.name() + " incomplete")
		}
	}
	s.exit(p, resp.ExitStatus, time.Unix(0, resp.ExitedAtUnixNano))
}

// exit records a process's exit once and publishes it.
func (s *service) exit(p *process, status uint32, at time.Time) {
	if !p.setExited(status, at) {
		return
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
}

// watchPod reports every process as exited when the VM ends: a killed QEMU,
// a crashed guest, or the sandbox stopped on purpose.
func (s *service) watchPod(pd *pod) {
	<-pd.vm.Done()
	s.mu.Lock()
	expected := s.podStopping
	var procs []*process
	var sandbox *process
	for _, c := range s.containers {
		for _, e := range c.execs {
			procs = append(procs, e)
		}
		if c.sandbox {
			sandbox = c.init
		} else {
			procs = append(procs, c.init)
		}
	}
	s.mu.Unlock()
	if !expected {
		log.G(s.ctx).WithError(pd.vm.Err()).WithField("pod", pd.id).Error("pod VM stopped unexpectedly")
	}
	now := time.Now()
	// A process whose exit the agent reported just before the end keeps it.
	for _, p := range procs {
		p.mu.Lock()
		running := p.state == stateRunning || p.state == statePaused
		p.mu.Unlock()
		if running {
			s.exit(p, 128+uint32(syscall.SIGKILL), now)
		}
	}
	if sandbox != nil {
		status := uint32(128 + syscall.SIGKILL)
		if !expected {
			status = 255
		}
		s.exit(sandbox, status, now)
	}
}

// detachDisk unplugs a removed container's rootfs disk and deletes its
// image. When the VM stops first, the image goes with the state directory.
func (s *service) detachDisk(pd *pod, disk hypervisor.Disk) {
	ctx := context.WithoutCancel(s.ctx)
	if err := pd.vm.DetachDisk(ctx, disk.Serial); err != nil {
		select {
		case <-pd.vm.Done():
		default:
			log.G(ctx).WithError(err).WithField("disk", disk.Path).Warn("detach rootfs disk")
		}
	}
	os.Remove(disk.Path)
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

func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (_ *taskAPI.DeleteResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	if state, _, _, _ := p.snapshot(); state == stateRunning || state == statePaused {
		return nil, fmt.Errorf("%s is still %s: %w", p.name(), state, errdefs.ErrFailedPrecondition)
	}
	if r.ExecID != "" {
		if err := p.markDeleted(); err != nil {
			return nil, err
		}
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		_, pid, status, at := p.snapshot()
		return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}

	var errs []error
	if !c.sandbox {
		if pd, err := s.livePod(); err == nil {
			if _, err := pd.agent.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: c.id}); err != nil {
				errs = append(errs, fmt.Errorf("remove container %s in guest: %w", c.id, err))
			}
			if len(c.layers) > 0 {
				pd.layers.release(c.layers)
				c.layers = nil
			}
			if c.disk != nil && !c.ownsPod {
				// The guest releases a hot-plugged disk only after the PCIe
				// hot-plug button delay (5 s): unplug in the background so that
				// removing a container is not held up by it.
				go s.detachDisk(pd, *c.disk)
				c.disk = nil
			}
		}
		if c.disk != nil {
			os.Remove(c.disk.Path)
		}
		if c.init.io != nil {
			c.init.io.close()
		}
	}
	if c.sandbox || c.ownsPod {
		if err := s.stopPod(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		log.G(ctx).WithError(errors.Join(errs...)).Warn("delete left something to clean up")
	}
	if err := p.markDeleted(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	_, pid, status, at := p.snapshot()
	s.publish(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id, Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at), ID: c.id,
	})
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

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

func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (_ *taskAPI.StateResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	state, pid, status, at := p.snapshot()
	st := task.Status_UNKNOWN
	switch state {
	case stateCreated:
		st = task.Status_CREATED
	case stateRunning:
		st = task.Status_RUNNING
	case statePaused:
		st = task.Status_PAUSED
	case stateStopped, stateDeleted:
		st = task.Status_STOPPED
	}
	resp := &taskAPI.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: pid, Status: st,
		Stdin: p.stdio.Stdin, Stdout: p.stdio.Stdout, Stderr: p.stdio.Stderr, Terminal: p.stdio.Terminal,
		ExitStatus: status,
	}
	if !at.IsZero() {
		resp.ExitedAt = protobuf.ToTimestamp(at)
	}
	return resp, nil
}

func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	state, _, _, _ := p.snapshot()
	if state == stateStopped || state == stateDeleted {
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

func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (_ *taskAPI.PidsResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if c.sandbox {
		return &taskAPI.PidsResponse{Processes: []*task.ProcessInfo{{Pid: c.init.pid}}}, nil
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

func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	if c, err := s.getContainer(r.ID); err == nil {
		resp.TaskPid = c.init.pid
	}
	return resp, nil
}

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

func (s *service) Checkpoint(context.Context, *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, grpcErr(fmt.Errorf("checkpoint: a confidential VM's memory cannot be checkpointed by the host, so the contrast runtime does not support it: %w", errdefs.ErrNotImplemented))
}

// guestContainer returns a container that runs in the guest, and the pod.
func (s *service) guestContainer(id, what string) (*container, *pod, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	if c.sandbox {
		return nil, nil, fmt.Errorf("%s the pod sandbox %s: it stands for the VM and runs no processes: %w", what, id, errdefs.ErrNotImplemented)
	}
	pd, err := s.livePod()
	if err != nil {
		return nil, nil, err
	}
	return c, pd, nil
}

func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, pd, err := s.guestContainer(r.ID, "pause")
	if err != nil {
		return nil, err
	}
	if _, err := pd.agent.PauseContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id}); err != nil {
		return nil, fmt.Errorf("pause container %s: %w", c.id, err)
	}
	if err := c.init.setState(statePaused); err != nil {
		return nil, err
	}
	s.publish(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: c.id})
	return &emptypb.Empty{}, nil
}

func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (_ *emptypb.Empty, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, pd, err := s.guestContainer(r.ID, "resume")
	if err != nil {
		return nil, err
	}
	if _, err := pd.agent.ResumeContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id}); err != nil {
		return nil, fmt.Errorf("resume container %s: %w", c.id, err)
	}
	if err := c.init.setState(stateRunning); err != nil {
		return nil, err
	}
	s.publish(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: c.id})
	return &emptypb.Empty{}, nil
}

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
	if _, err := pd.agent.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: c.id, Resources: r.Resources.GetValue()}); err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	return &emptypb.Empty{}, nil
}

func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (_ *taskAPI.StatsResponse, retErr error) {
	defer func() { retErr = grpcErr(retErr) }()
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if c.sandbox {
		stats, err := vmStats(c.init.pid)
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
