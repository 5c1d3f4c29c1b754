// Package agent is the guest agent: it serves the Agent ttrpc service (see
// api/agent) and runs the pod's containers with runc inside the VM.
//
// # Attestation
//
// The host asks for an attestation report with the GetReport RPC, which the
// policy decides like every request. The pod's own containers ask the agent
// directly, through a local endpoint the host never sees: the agent listens
// on a unix socket in the guest (RunDir/attestation/attest.sock) and
// bind-mounts its directory read-only into every container at
// /run/contrast/attestation (AttestationMountPoint). The protocol is
// HTTP/1.1:
//
//	GET /v1/report?nonce=<128 hex digits: 64 bytes, the report's REPORT_DATA>
//
//	200 application/json {"tee":"snp","report":"<base64>","certs":"<base64, or empty>"}
//
// report is the raw signed SEV-SNP ATTESTATION_REPORT (1184 bytes), certs
// the certificate table the firmware returned with it (VCEK, ASK, ARK) or
// "" when the host provisioned none; tee is "snp", or "snp-simulated" in a
// test image. Errors are application/json {"error":"<what is wrong>"}: 400
// for a missing or malformed nonce or another parameter, 404 for another
// path, 405 for another method, 501 when the VM has no TEE (a development
// VM: retrying does not help), 500 when the TEE fails. From a container:
//
//	curl --unix-socket /run/contrast/attestation/attest.sock \
//	  "http://localhost/v1/report?nonce=$(head -c64 /dev/urandom | xxd -p -c64)"
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/guestspec"
	"github.com/contrast-vm/contrast/agent/netconf"
	"github.com/contrast-vm/contrast/agent/reaper"
	"github.com/contrast-vm/contrast/agent/runc"
	"github.com/contrast-vm/contrast/agent/stdio"
	"github.com/contrast-vm/contrast/agent/storage"
	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/lifecycle"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config is what the service needs from its environment.
type Config struct {
	Version string
	// RunDir holds container bundles: RunDir/containers/<id>.
	RunDir string
	// Runc is the runc binary and its state directory.
	RuncBinary, RuncRoot string
	// RuncNoPivot makes runc chroot instead of pivot_root (see runc.Runc).
	RuncNoPivot bool
	// CgroupParent is the guest cgroup that holds the containers' cgroups.
	CgroupParent string
	// Devices finds the block devices the host attaches.
	Devices storage.DeviceFinder
	// DeviceTimeout bounds the wait for a container's image device.
	DeviceTimeout time.Duration
	// StdioTimeout bounds the wait for a process's stdio connections.
	StdioTimeout time.Duration
	// StdinGrace is how long CloseStdin lets stdin already sent arrive.
	StdinGrace time.Duration
	// SetHostname sets the VM's hostname; nil leaves it alone (tests).
	SetHostname func(string) error
	// SetSysctl sets a kernel parameter of the VM (name with dots); nil
	// leaves the kernel alone and only logs (tests).
	SetSysctl func(name, value string) error
	// ConfigureNetwork gives the VM the pod's network (netconf.Configure);
	// nil leaves the network alone and only logs the request (tests).
	ConfigureNetwork func(*api.ConfigureNetworkRequest) error
	// TEE vouches for the HOSTDATA a policy must match; nil is a
	// development VM, where the policy is enforced but nothing is attested.
	TEE tee.TEE
	// AttestationEndpoint serves reports to the containers on a unix
	// socket in RunDir/attestation, mounted into each at
	// AttestationMountPoint (see the package documentation).
	AttestationEndpoint bool
	Reaper              *reaper.Reaper
	// PIDHolder is the command that holds the pod's shared PID namespace
	// (RunPIDHolder); nil: a container asking to share the pod's PID
	// namespace is refused.
	PIDHolder []string
	// VolumeBytes caps what the kubelet-managed volumes the host shares
	// (ShareVolume) may hold in the guest's memory, all together.
	VolumeBytes int64
	// Scratch opens the pod's scratch disk for its emptyDir volumes; nil
	// refuses every emptyDir that is not of medium Memory.
	Scratch ScratchOpener
}

// DefaultConfig is the configuration inside the VM.
func DefaultConfig(r *reaper.Reaper) Config {
	return Config{
		Version:       "dev",
		RunDir:        "/run/contrast",
		RuncBinary:    "/usr/bin/runc",
		RuncRoot:      "/run/runc",
		CgroupParent:  "/containers",
		Devices:       storage.NewSysBlock(),
		DeviceTimeout: 10 * time.Second,
		StdioTimeout:  30 * time.Second,
		StdinGrace:    2 * time.Second,
		SetHostname:   func(h string) error { return unix.Sethostname([]byte(h)) },
		SetSysctl:     writeSysctl,
		// The agent is the VM's init: its namespace is the VM's network.
		ConfigureNetwork: netconf.Configure,

		AttestationEndpoint: true,
		Reaper:              r,
		VolumeBytes:         DefaultVolumeBytes,
		PIDHolder:           []string{"/proc/self/exe", PIDHolderArg},
		Scratch: storage.EncryptedScratch{
			DM:     storage.NewDeviceMapper("/run/contrast/emptydir/dev"),
			Mke2fs: GuestMke2fsPath,
			Run:    runToSuccess(r),
		},
	}
}

// GuestMke2fsPath is where the guest image carries mke2fs (busybox's).
const GuestMke2fsPath = "/usr/sbin/mke2fs"

// runToSuccess runs a command through the reaper; an exit other than 0 is
// an error.
func runToSuccess(r *reaper.Reaper) storage.CommandRunner {
	return func(ctx context.Context, cmd *exec.Cmd) error {
		e, err := r.Run(ctx, cmd)
		if err != nil {
			return err
		}
		if e.Code() != 0 {
			return fmt.Errorf("%s: %v", cmd.Path, e)
		}
		return nil
	}
}

// Service implements api.AgentService.
type Service struct {
	cfg    Config
	runc   *runc.Runc
	hub    *stdio.Hub
	oom    *oomEvents
	policy *policyGate

	// layers are the pod's image layers, opened through dm-verity and
	// shared by the containers using them.
	layers *storage.LayerSet
	// emptyDirs are the pod's emptyDir volumes (emptydir.go).
	emptyDirs *emptyDirs

	mu         sync.Mutex
	sandboxID  string
	containers map[string]*container

	// networkMu serializes ConfigureNetwork, which may take a while,
	// without holding up the other requests.
	networkMu         sync.Mutex
	networkConfigured bool

	// volumes are the kubelet-managed volumes the host shared.
	volumes *volumeSet
	// pidNS is the pod's shared PID namespace (shareProcessNamespace).
	pidNS *podPIDNamespace
}

var _ api.AgentService = (*Service)(nil)

// NewService checks cfg and prepares the state directory.
func NewService(cfg Config) (*Service, error) {
	switch {
	case cfg.Reaper == nil:
		return nil, errors.New("agent config: no reaper")
	case cfg.Devices == nil:
		return nil, errors.New("agent config: no device finder")
	case cfg.RunDir == "" || cfg.RuncRoot == "" || cfg.RuncBinary == "":
		return nil, errors.New("agent config: RunDir, RuncRoot and RuncBinary are required")
	}
	if _, err := os.Stat(cfg.RuncBinary); err != nil {
		return nil, fmt.Errorf("agent config: runc: %w", err)
	}
	for _, d := range []string{filepath.Join(cfg.RunDir, "containers"), cfg.RuncRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("agent config: create state dir: %w", err)
		}
	}
	return &Service{
		cfg:        cfg,
		runc:       &runc.Runc{Binary: cfg.RuncBinary, Root: cfg.RuncRoot, NoPivot: cfg.RuncNoPivot, Reaper: cfg.Reaper},
		hub:        stdio.NewHub(),
		oom:        newOOMEvents(),
		policy:     newPolicyGate(cfg.TEE),
		layers:     storage.NewLayerSet(filepath.Join(cfg.RunDir, "layers"), cfg.Devices),
		volumes:    newVolumeSet(filepath.Join(cfg.RunDir, "volumes"), cfg.VolumeBytes),
		pidNS:      newPodPIDNamespace(cfg.PIDHolder),
		containers: map[string]*container{},
		emptyDirs:  newEmptyDirs(cfg),
	}, nil
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func notFound(format string, args ...any) error {
	return status.Errorf(codes.NotFound, format, args...)
}

func precondition(format string, args ...any) error {
	return status.Errorf(codes.FailedPrecondition, format, args...)
}

// ended is the error of a wait whose caller gave up (ctx ended): Canceled
// or DeadlineExceeded, as the caller's own context says.
func ended(ctx context.Context, format string, args ...any) error {
	st := status.FromContextError(ctx.Err())
	return status.Errorf(st.Code(), "%s: %v", fmt.Sprintf(format, args...), ctx.Err())
}

// Health answers with the agent version and the guest kernel release.
func (s *Service) Health(ctx context.Context, _ *api.HealthRequest) (*api.HealthResponse, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	return &api.HealthResponse{Version: s.cfg.Version, KernelRelease: unix.ByteSliceToString(u.Release[:])}, nil
}

// CreateSandbox records the pod and sets the VM's hostname.
func (s *Service) CreateSandbox(ctx context.Context, req *api.CreateSandboxRequest) (*api.Empty, error) {
	if err := api.ValidateID("sandbox id", req.SandboxId); err != nil {
		return nil, invalid("create sandbox: %v", err)
	}
	if err := validateHostname(req.Hostname); err != nil {
		return nil, invalid("create sandbox %s: %v", req.SandboxId, err)
	}
	for name := range req.Sysctls {
		if err := api.CheckSysctlName(name); err != nil {
			return nil, invalid("create sandbox %s: %v", req.SandboxId, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sandboxID != "" {
		return nil, status.Errorf(codes.AlreadyExists, "create sandbox %s: sandbox %s already created", req.SandboxId, s.sandboxID)
	}
	if req.Hostname != "" {
		if s.cfg.SetHostname == nil {
			log.G(ctx).Infof("sandbox %s: hostname %q not set (not the VM's init)", req.SandboxId, req.Hostname)
		} else if err := s.cfg.SetHostname(req.Hostname); err != nil {
			return nil, fmt.Errorf("create sandbox %s: set hostname %q: %w", req.SandboxId, req.Hostname, err)
		}
	}
	if err := s.setSysctls(ctx, req.SandboxId, req.Sysctls); err != nil {
		return nil, err
	}
	s.sandboxID = req.SandboxId
	log.G(ctx).Infof("sandbox %s created (hostname %q)", req.SandboxId, req.Hostname)
	// The pod's first container comes next: the policy's first decision
	// is made meanwhile, so that the container's create does not pay for it.
	s.policy.startWarmUp(ctx)
	return &api.Empty{}, nil
}

// validateHostname accepts what sethostname and Kubernetes accept: up to 64
// bytes of letters, digits, '-' and '.'; empty means keep the current one.
func validateHostname(h string) error {
	if len(h) > 64 {
		return fmt.Errorf("hostname %q is longer than 64 bytes", h)
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("hostname %q: character %q is not allowed", h, c)
		}
	}
	return nil
}

// CreateContainer mounts the container's image, writes its bundle and runs
// runc create. On error nothing of it is left behind.
func (s *Service) CreateContainer(ctx context.Context, req *api.CreateContainerRequest) (*api.CreateContainerResponse, error) {
	phases := api.PhasesFrom(ctx)
	begin := time.Now()
	id := req.ContainerId
	if err := api.ValidateID("container id", id); err != nil {
		return nil, invalid("create container: %v", err)
	}
	s.mu.Lock()
	sandbox := s.sandboxID
	s.mu.Unlock()
	if sandbox == "" {
		return nil, precondition("create container %s: CreateSandbox was not called", id)
	}
	if err := checkStdio(req.Stdio); err != nil {
		return nil, invalid("create container %s: %v", id, err)
	}
	layers, err := imageLayers(req.Layers)
	if err != nil {
		return nil, invalid("create container %s: %v", id, err)
	}
	if len(layers) == 0 {
		if req.Rootfs == nil {
			return nil, invalid("create container %s: neither image layers nor a rootfs device given", id)
		}
		if err := storage.ValidateSerial(req.Rootfs.Serial); err != nil {
			return nil, invalid("create container %s: %v", id, err)
		}
		if err := storage.ValidateFSType(req.Rootfs.Fstype); err != nil {
			return nil, invalid("create container %s: rootfs device %s: %v", id, req.Rootfs.Serial, err)
		}
	}
	if err := checkBlockVolumes(req); err != nil {
		return nil, invalid("create container %s: %v", id, err)
	}
	begin = phases.Since("check", begin)
	blockVolumes, err := s.findBlockVolumes(ctx, req.BlockVolumes)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if len(req.BlockVolumes) > 0 {
		begin = phases.Since("block-volumes", begin)
	}
	memory, err := memoryVolumes(req.MemoryVolumes)
	if err != nil {
		return nil, invalid("create container %s: %v", id, err)
	}
	bundle := filepath.Join(s.cfg.RunDir, "containers", id)
	shared := make([]guestspec.SharedFile, 0, len(req.SharedFiles))
	for _, f := range req.SharedFiles {
		shared = append(shared, guestspec.SharedFile{Destination: f.Destination, Content: f.Content, Mode: f.Mode})
	}
	rootfs := storage.NewRootfs(bundle)
	res, err := guestspec.Rewrite(req.Spec, guestspec.Input{
		ContainerID:  id,
		RootfsPath:   rootfs.Merged,
		SharedDir:    filepath.Join(bundle, "shared"),
		CgroupParent: s.cfg.CgroupParent,
		SharedFiles:  shared,
		// The host does not ask for this mount, so the policy, which judges
		// the host's spec, neither sees nor needs to allow it.
		AttestationDir: s.attestationDir(),
		VolumeSource:   s.volumes.mountSource,
		SubPaths:       subPathsOf(req.SubPaths),
		PodPIDNamespace: func() (string, error) {
			return s.pidNS.path(func(cmd *exec.Cmd) error { _, err := s.cfg.Reaper.Start(cmd); return err })
		},
		BlockVolumes: blockVolumes,
		EmptyDirs:    s.emptyDirInput(memory),
	})
	if err != nil {
		return nil, invalid("create %v", err) // err names the container
	}
	if err := checkMemoryVolumesMounted(memory, res.EmptyDirs); err != nil {
		return nil, invalid("create container %s: %v", id, err)
	}
	if t := req.Stdio.GetTerminal(); res.Spec.Process.Terminal != t {
		return nil, invalid("create container %s: the spec's process.terminal is %v but the stdio request says terminal %v", id, res.Spec.Process.Terminal, t)
	}

	s.mu.Lock()
	if _, ok := s.containers[id]; ok {
		s.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "create container %s: already exists", id)
	}
	c := newContainer(id, bundle, rootfs, s.layers, res.Spec.Linux.CgroupsPath)
	c.sharedCopies = make(map[string]string, len(res.Files))
	for _, f := range res.Files {
		c.sharedCopies[f.Destination] = f.Path
	}
	s.containers[id] = c // reserves the id while we work without the lock
	s.mu.Unlock()
	phases.Since("spec", begin)

	lg := log.G(ctx).WithField("container", id)
	if len(res.Notes) > 0 {
		lg.Info("spec rewritten for the guest: " + strings.Join(res.Notes, "; "))
	}
	pid, err := s.create(ctx, c, req, layers, res, memory)
	if err != nil {
		c.mu.Lock()
		c.state = lifecycle.Deleted // creating -> deleted: the create failed
		c.mu.Unlock()
		s.mu.Lock()
		delete(s.containers, id)
		s.mu.Unlock()
		return nil, err
	}
	lg.Infof("container created, init pid %d", pid)
	return &api.CreateContainerResponse{Pid: uint32(pid), Phases: phases.List()}, nil
}

func (s *Service) create(ctx context.Context, c *container, req *api.CreateContainerRequest, layers []storage.Layer, res *guestspec.Result, memory map[string]uint64) (_ int, err error) {
	phases := api.PhasesFrom(ctx)
	if err := os.Mkdir(c.bundle, 0o700); err != nil {
		return 0, fmt.Errorf("create container %s: create bundle: %w", c.id, err)
	}
	defer func() {
		if err != nil {
			if cerr := c.cleanup(); cerr != nil {
				log.G(ctx).WithError(cerr).Errorf("container %s: cleaning up after failed create", c.id)
			}
		}
	}()

	if len(layers) > 0 {
		if err := s.mountLayers(ctx, c, layers); err != nil {
			return 0, err
		}
	} else {
		begin := time.Now()
		dctx, cancel := context.WithTimeout(ctx, s.cfg.DeviceTimeout)
		dev, err := s.cfg.Devices.Find(dctx, req.Rootfs.Serial)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("create container %s: rootfs device (waited up to %v): %w", c.id, s.cfg.DeviceTimeout, err)
		}
		begin = phases.Since("rootfs-device", begin)
		if err := c.rootfs.Mount(dev, req.Rootfs.Fstype); err != nil {
			return 0, fmt.Errorf("create container %s: rootfs from device %s (serial %s): %w", c.id, dev, req.Rootfs.Serial, err)
		}
		phases.Since("rootfs-mount", begin)
	}
	begin := time.Now()
	if err := s.emptyDirs.prepare(ctx, res.EmptyDirs, memory); err != nil {
		return 0, fmt.Errorf("create container %s: %w", c.id, err)
	}
	if len(res.Files) > 0 {
		if err := os.Mkdir(filepath.Join(c.bundle, "shared"), 0o700); err != nil {
			return 0, fmt.Errorf("create container %s: %w", c.id, err)
		}
	}
	for _, f := range res.Files {
		if err := writeFile(f.Path, f.Content, os.FileMode(f.Mode)); err != nil {
			return 0, fmt.Errorf("create container %s: shared file: %w", c.id, err)
		}
	}
	if err := s.bindSubPaths(c, res); err != nil {
		return 0, fmt.Errorf("create container %s: %w", c.id, err)
	}
	begin = phases.Since("volumes", begin)
	spec, err := json.Marshal(res.Spec)
	if err != nil {
		return 0, fmt.Errorf("create container %s: encode spec: %w", c.id, err)
	}
	if err := writeFile(filepath.Join(c.bundle, "config.json"), spec, 0o600); err != nil {
		return 0, fmt.Errorf("create container %s: %w", c.id, err)
	}

	pio, err := newProcIO(req.Stdio, res.Spec.Process.User.UID, res.Spec.Process.User.GID, s.cfg.RunDir)
	if err != nil {
		return 0, fmt.Errorf("create container %s: %w", c.id, err)
	}
	runcDelete := func() {
		if derr := s.runc.Delete(context.WithoutCancel(ctx), c.id, true); derr != nil && !errors.Is(derr, runc.ErrNotExist) {
			log.G(ctx).WithError(derr).Errorf("container %s: runc delete after failed create", c.id)
		}
	}
	begin = phases.Since("bundle", begin)
	proc, err := s.runc.Create(ctx, c.id, c.bundle, pio.child)
	begin = phases.Since(api.PhaseRuncCreate, begin)
	pio.closeChild()
	if err != nil {
		pio.closeAgent()
		runcDelete()
		return 0, fmt.Errorf("create container %s: %w", c.id, err)
	}
	if err := pio.receiveTerminal(req.Stdio); err != nil {
		pio.closeAgent()
		runcDelete()
		waitExit(ctx, proc.Exit)
		return 0, fmt.Errorf("create container %s: %w", c.id, err)
	}
	// OOM kills are reported from now on; without a memory controller the
	// container still runs.
	oom, err := watchOOM(context.WithoutCancel(ctx), c.id, c.cgroup, s.oom)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("container %s: OOM kills will not be reported", c.id)
	}
	p := newProcess(c.id, "", proc.Pid)
	p.onExit = func() {
		oom.check()
		// The policy keeps init containers in order by which completed.
		s.policy.exited(c.id, int(p.result().Code()))
	}
	pio.start(context.WithoutCancel(ctx), s.hub, s.cfg.StdioTimeout, p, proc.Exit, s.policy.discardOutput(c.id))
	c.mu.Lock()
	c.oom = oom
	c.init = p
	c.state = lifecycle.Created // always legal from creating, the only state a create sees
	c.mu.Unlock()
	phases.Since("stdio", begin)
	return proc.Pid, nil
}

// waitExit waits a bounded time for a process that was just killed.
func waitExit(ctx context.Context, exit <-chan reaper.Exit) {
	select {
	case <-exit:
	case <-time.After(exitTimeout):
		log.G(ctx).Errorf("process did not exit within %v of SIGKILL", exitTimeout)
	}
}

// writeFile writes a new file with exactly the given mode (no umask).
func writeFile(path string, content []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// lookup returns a container that is not being created or removed.
func (s *Service) lookup(op, id string) (*container, error) {
	if err := api.ValidateID("container id", id); err != nil {
		return nil, invalid("%s: %v", op, err)
	}
	s.mu.Lock()
	c, ok := s.containers[id]
	s.mu.Unlock()
	if !ok {
		return nil, notFound("%s: container %s not found", op, id)
	}
	return c, nil
}

// lookupProcess returns the init (execID empty) or exec process.
func (s *Service) lookupProcess(op, id, execID string) (*container, *process, error) {
	c, err := s.lookup(op, id)
	if err != nil {
		return nil, nil, err
	}
	if execID != "" {
		if err := api.ValidateID("exec id", execID); err != nil {
			return nil, nil, invalid("%s: %v", op, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st := c.currentState(); st {
	case lifecycle.Creating:
		return nil, nil, precondition("%s: container %s is %s", op, id, st)
	case lifecycle.Deleted:
		return nil, nil, notFound("%s: container %s not found", op, id)
	}
	if execID == "" {
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok && c.starting[execID] {
		return nil, nil, precondition("%s: exec %s in container %s is %s", op, execID, id, lifecycle.Creating)
	}
	if !ok {
		return nil, nil, notFound("%s: exec %s not found in container %s", op, execID, id)
	}
	return c, p, nil
}

// StartContainer starts the init process of a created container.
func (s *Service) StartContainer(ctx context.Context, req *api.ContainerRequest) (*api.StartContainerResponse, error) {
	c, err := s.lookup("start container", req.ContainerId)
	if err != nil {
		return nil, err
	}
	what := "container " + c.id
	if err := c.beginChange(ctx, func(from lifecycle.State) error {
		if err := lifecycle.CheckOp(what, from, lifecycle.Start); err != nil {
			return refused("start container", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	phases := api.PhasesFrom(ctx)
	before := processImage(c.init.pid)
	begin := time.Now()
	err = s.runc.Start(ctx, c.id)
	if err == nil {
		begin = phases.Since(api.PhaseRuncStart, begin)
		waitExec(ctx, c.init.pid, before)
		phases.Since("exec-wait", begin)
	}
	c.endChange(func() {
		if err == nil && c.currentState() == lifecycle.Created {
			c.state = lifecycle.Running
			c.init.started()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("start container %s: %w", c.id, err)
	}
	log.G(ctx).WithField("container", c.id).Info("container started")
	return &api.StartContainerResponse{Phases: phases.List()}, nil
}

// ExecProcess starts an additional process in a running container.
func (s *Service) ExecProcess(ctx context.Context, req *api.ExecProcessRequest) (*api.ExecProcessResponse, error) {
	c, err := s.lookup("exec", req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := api.ValidateID("exec id", req.ExecId); err != nil {
		return nil, invalid("exec in container %s: %v", c.id, err)
	}
	what := fmt.Sprintf("exec %s in container %s", req.ExecId, c.id)
	if err := checkStdio(req.Stdio); err != nil {
		return nil, invalid("%s: %v", what, err)
	}
	proc, notes, err := guestspec.RewriteProcess(req.Process)
	if err != nil {
		return nil, invalid("%s: %v", what, err)
	}
	if t := req.Stdio.GetTerminal(); proc.Terminal != t {
		return nil, invalid("%s: the process's terminal is %v but the stdio request says terminal %v", what, proc.Terminal, t)
	}
	if len(notes) > 0 {
		log.G(ctx).WithField("container", c.id).Infof("exec %s: process rewritten for the guest: %s", req.ExecId, strings.Join(notes, "; "))
	}

	if err := c.beginUse(ctx, func(from lifecycle.State) error {
		if from != lifecycle.Running {
			return refused(what, fmt.Errorf("container %s is %s, not running: %w", c.id, from, errdefs.ErrFailedPrecondition))
		}
		if c.starting[req.ExecId] {
			return status.Errorf(codes.AlreadyExists, "%s: exec id is in use by an exec being started", what)
		}
		if old, ok := c.execs[req.ExecId]; ok && !old.state().Ended() {
			return status.Errorf(codes.AlreadyExists, "%s: exec id is in use by pid %d", what, old.pid)
		}
		c.starting[req.ExecId] = true
		return nil
	}); err != nil {
		return nil, err
	}
	// runc runs without the lock: the reservation keeps the id, and the
	// use keeps the container from changing state (a pause, a remove).
	p, err := s.startExec(ctx, c, req.ExecId, req.Stdio, proc, what)
	c.endUse(func() {
		delete(c.starting, req.ExecId)
		if err == nil {
			c.execs[req.ExecId] = p
		}
	})
	if err != nil {
		return nil, err
	}
	log.G(ctx).WithField("container", c.id).Infof("exec %s started, pid %d", req.ExecId, p.pid)
	return &api.ExecProcessResponse{Pid: uint32(p.pid)}, nil
}

// startExec runs runc exec for an exec whose id ExecProcess reserved.
func (s *Service) startExec(ctx context.Context, c *container, execID string, st *api.Stdio, proc *specs.Process, what string) (*process, error) {
	raw, err := json.Marshal(proc)
	if err != nil {
		return nil, fmt.Errorf("%s: encode process: %w", what, err)
	}
	base := filepath.Join(c.bundle, "exec-"+execID)
	for _, suffix := range []string{".json", ".pid", ".log"} {
		if err := os.Remove(base + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := writeFile(base+".json", raw, 0o600); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	pio, err := newProcIO(st, proc.User.UID, proc.User.GID, s.cfg.RunDir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	began := time.Now()
	rp, err := s.runc.Exec(ctx, c.id, base+".json", base+".pid", base+".log", pio.child)
	pio.closeChild()
	if err != nil {
		pio.closeAgent()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := pio.receiveTerminal(st); err != nil {
		pio.closeAgent()
		// Still our child until reaped: the pid cannot have been reused.
		_ = unix.Kill(rp.Pid, unix.SIGKILL)
		waitExit(ctx, rp.Exit)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	p := newProcess(c.id, execID, rp.Pid)
	p.began = began
	p.onExit = c.oom.check
	pio.start(context.WithoutCancel(ctx), s.hub, s.cfg.StdioTimeout, p, rp.Exit, s.policy.discardOutput(c.id))
	return p, nil
}

// SignalProcess signals the init process (through runc, optionally all the
// container's processes) or an exec process.
func (s *Service) SignalProcess(ctx context.Context, req *api.SignalProcessRequest) (*api.Empty, error) {
	c, p, err := s.lookupProcess("signal", req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if req.Signal == 0 || req.Signal > 64 {
		return nil, invalid("signal %s: %d is not a signal number", p, req.Signal)
	}
	sig := unix.Signal(req.Signal)
	if p.state().Ended() && !req.All {
		return nil, notFound("signal %s: process already exited", p)
	}
	log.G(ctx).WithField("container", c.id).Infof("signal %v to %s (all: %v)", sig, p, req.All)
	if req.ExecId == "" {
		if err := s.runc.Kill(ctx, c.id, sig, req.All); err != nil {
			if runcProcessGone(err) {
				// The init exited between the check above and runc's own
				// (its exit not reaped yet): a signal to it is done, as
				// with containerd's runc shim, whose callers (CRI's
				// StopContainer, StopPodSandbox) take NotFound for that.
				return nil, notFound("signal %s: process already exited (%v)", p, err)
			}
			return nil, fmt.Errorf("signal %s: %w", p, err)
		}
		return &api.Empty{}, nil
	}
	// The exec is our child until we reap it, so its pid cannot be reused
	// before the exit is recorded.
	if err := unix.Kill(p.pid, sig); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, notFound("signal %s: process already exited", p)
		}
		return nil, fmt.Errorf("signal %s: %w", p, err)
	}
	return &api.Empty{}, nil
}

// runcProcessGone reports whether runc kill failed because the container's
// processes are gone already: runc says "container not running" for a
// stopped container, "does not exist" for one it no longer knows, and the
// kernel's ESRCH reads "no such process".
func runcProcessGone(err error) bool {
	msg := strings.ToLower(err.Error())
	for _, gone := range []string{"container not running", "does not exist", "no such process", "process already finished"} {
		if strings.Contains(msg, gone) {
			return true
		}
	}
	return errors.Is(err, unix.ESRCH)
}

// WaitProcess waits until the process has exited and its output reached the host.
func (s *Service) WaitProcess(ctx context.Context, req *api.ProcessRequest) (*api.WaitProcessResponse, error) {
	c, p, err := s.lookupProcess("wait", req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ended(ctx, "wait for %s", p)
	}
	e := p.result()
	resp := &api.WaitProcessResponse{ExitStatus: e.Code(), ExitedAtUnixNano: e.Time.UnixNano()}
	if req.ExecId == "" {
		resp.WrittenBack = s.writtenBack(ctx, c)
	} else {
		resp.RuncExecNanos = p.runTime().Nanoseconds()
	}
	return resp, nil
}

// writtenBack reads what the host may read back of container c's shared
// files (its termination message): the guest copies at the destinations
// the policy marks, each cut at api.MaxWrittenBack bytes. A destination
// without a guest copy has nothing to give; a copy that cannot be read is
// logged and left out, as the exit must still reach the host.
func (s *Service) writtenBack(ctx context.Context, c *container) []*api.SharedFile {
	var files []*api.SharedFile
	for _, dest := range s.policy.writeBack(c.id) {
		copyPath, ok := c.sharedCopies[dest]
		if !ok {
			continue
		}
		content, err := readWrittenBack(copyPath)
		if err != nil {
			log.G(ctx).WithError(err).WithField("container", c.id).Warnf("the host does not get back the file at %s", dest)
			continue
		}
		files = append(files, &api.SharedFile{Destination: dest, Content: content})
	}
	return files
}

// readWrittenBack reads up to api.MaxWrittenBack bytes of the regular file
// at path, whose last component may not be a symlink. O_NONBLOCK keeps a
// FIFO planted there from holding up the open.
func readWrittenBack(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open the guest copy: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("guest copy %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("guest copy %s is a %v, not a regular file", path, info.Mode().Type())
	}
	content, err := io.ReadAll(io.LimitReader(f, api.MaxWrittenBack))
	if err != nil {
		return nil, fmt.Errorf("read the guest copy %s: %w", path, err)
	}
	return content, nil
}

// CloseStdin closes the stdin of a process after what the host sent.
func (s *Service) CloseStdin(ctx context.Context, req *api.ProcessRequest) (*api.Empty, error) {
	_, p, err := s.lookupProcess("close stdin", req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if p.stdin != nil {
		p.stdin.Close(s.cfg.StdinGrace)
	}
	return &api.Empty{}, nil
}

// ListProcesses lists the pids of the container's processes.
func (s *Service) ListProcesses(ctx context.Context, req *api.ContainerRequest) (*api.ListProcessesResponse, error) {
	c, p, err := s.lookupProcess("list processes", req.ContainerId, "")
	if err != nil {
		return nil, err
	}
	if p.state().Ended() {
		return &api.ListProcessesResponse{}, nil
	}
	pids, err := s.runc.Ps(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("list processes of container %s: %w", c.id, err)
	}
	resp := &api.ListProcessesResponse{Pids: make([]uint32, 0, len(pids))}
	for _, pid := range pids {
		resp.Pids = append(resp.Pids, uint32(pid))
	}
	return resp, nil
}

// exitTimeout bounds the wait for processes runc delete --force killed.
const exitTimeout = 10 * time.Second

// imageLayers checks the layers of a create request (lowest first); errors
// name the layer's index and field.
func imageLayers(in []*api.Layer) ([]storage.Layer, error) {
	layers := make([]storage.Layer, 0, len(in))
	for i, l := range in {
		if l == nil {
			return nil, fmt.Errorf("layer %d is empty", i)
		}
		layer := storage.Layer{Serial: l.Serial, Digest: l.Digest, RootHash: l.RootHash, DataBlocks: l.DataBlocks}
		if err := layer.Validate(); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		layers = append(layers, layer)
	}
	return layers, nil
}

// mountLayers opens the container's image layers through dm-verity
// (reusing those other containers of the pod opened) and stacks them into
// its rootfs. What it acquired is recorded in c, whose cleanup releases it.
func (s *Service) mountLayers(ctx context.Context, c *container, layers []storage.Layer) error {
	dirs := make([]string, 0, len(layers))
	for i, l := range layers {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.DeviceTimeout)
		dir, err := c.layerSet.Acquire(dctx, l)
		cancel()
		if err != nil {
			return fmt.Errorf("create container %s: layer %d: %w", c.id, i, err)
		}
		c.layers = append(c.layers, l.RootHash)
		dirs = append(dirs, dir)
	}
	begin := time.Now()
	if err := c.rootfs.MountLayers(dirs); err != nil {
		return fmt.Errorf("create container %s: rootfs from %d layers: %w", c.id, len(layers), err)
	}
	api.PhasesFrom(ctx).Since("overlay-mount", begin)
	return nil
}

// RemoveContainer kills what is left of the container and removes its
// mounts and bundle. Removing an unknown container succeeds, so the host
// can retry.
func (s *Service) RemoveContainer(ctx context.Context, req *api.RemoveContainerRequest) (*api.Empty, error) {
	if err := api.ValidateID("container id", req.ContainerId); err != nil {
		return nil, invalid("remove container: %v", err)
	}
	s.mu.Lock()
	c, ok := s.containers[req.ContainerId]
	s.mu.Unlock()
	if !ok {
		log.G(ctx).Infof("remove container %s: not found, nothing to do", req.ContainerId)
		return &api.Empty{}, nil
	}
	what := "container " + c.id
	gone := false // a remove that ran meanwhile removed it
	if err := c.beginChange(ctx, func(from lifecycle.State) error {
		if gone = from == lifecycle.Deleted; gone {
			return nil
		}
		if err := checkRemove(what, from); err != nil {
			return refused("remove container", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if gone {
		c.endChange(nil)
		return &api.Empty{}, nil
	}
	c.mu.Lock()
	c.state = lifecycle.Deleting // no exec or other change starts from now on
	procs := c.processes()
	c.mu.Unlock()
	if err := s.remove(ctx, c, procs); err != nil {
		c.endChange(nil) // still deleting: the host may try again
		return nil, err
	}
	c.endChange(func() { c.state = lifecycle.Deleted })
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	log.G(ctx).WithField("container", c.id).Info("container removed")
	return &api.Empty{}, nil
}

// remove kills the container's processes (procs), waits for them and
// removes what the container holds in the VM.
func (s *Service) remove(ctx context.Context, c *container, procs []*process) error {
	if c.oom != nil {
		c.oom.check() // the last look before the cgroup goes
		c.oom.stop()
	}
	if err := s.runc.Delete(ctx, c.id, true); err != nil && !errors.Is(err, runc.ErrNotExist) {
		return fmt.Errorf("remove container %s: %w", c.id, err)
	}
	var stuck []string
	for _, p := range procs {
		if err := waitExited(p, exitTimeout); err != nil {
			stuck = append(stuck, p.String())
			continue
		}
		// The host is removing the container: output it has not read by now
		// it will not read.
		select {
		case <-p.done:
		case <-time.After(time.Second):
			p.abortIO()
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("remove container %s: %s still running after runc delete --force", c.id, strings.Join(stuck, ", "))
	}
	if err := c.cleanup(); err != nil {
		return fmt.Errorf("remove container %s: %w", c.id, err)
	}
	return nil
}

// subPathsOf indexes a request's subPath mounts by destination.
func subPathsOf(list []*api.SubPath) map[string]guestspec.SubPath {
	if len(list) == 0 {
		return nil
	}
	out := make(map[string]guestspec.SubPath, len(list))
	for _, sp := range list {
		out[sp.Destination] = guestspec.SubPath{Volume: sp.Volume, Path: sp.Path}
	}
	return out
}
