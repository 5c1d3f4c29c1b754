package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/lifecycle"
	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/hypervisor"
)

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

	// mu serializes this container's own lifecycle requests (create, start,
	// delete, pause, resume, update), which wait on the guest. No request
	// on another container, and no exec, ever waits on it.
	mu sync.Mutex
	// exits orders the container's exit events.
	exits exitOrder

	// Under the service's mu:
	execs map[string]*process
	disk  *hypervisor.Disk
	// layers are the serials of the image layers the container uses.
	layers []string
	// blockVolumes are the serials of the container's raw block volumes.
	blockVolumes []string

	// sharedPID: the container joins the pod's shared PID namespace
	// (shareProcessNamespace), where its processes outlive its init.
	// Set at creation, then read only.
	sharedPID bool

	// breakdown is where the container's create and start spent their
	// time, logged at debug level once it started. Under mu.
	breakdown startBreakdown

	// writableFiles maps the destinations of the container's writable
	// bind mounts of host files to their sources: where what the guest
	// hands back with the init's exit (the termination message) goes.
	// Set at creation, then read only.
	writableFiles map[string]string
}

// lock takes the container's lifecycle lock, but refuses at once while
// the container is being created: Create holds the lock for as long as
// that takes (its image may be converting), and nothing may act on the
// container before Create returns.
func (c *container) lock() error {
	if state, _, _, _ := c.init.snapshot(); state == lifecycle.Creating {
		return fmt.Errorf("%s is %s: %w", c.init.name(), state, errdefs.ErrFailedPrecondition)
	}
	c.mu.Lock()
	return nil
}

func newContainer(r *taskAPI.CreateTaskRequest, spec *specs.Spec) *container {
	c := &container{
		id:      r.ID,
		bundle:  r.Bundle,
		sandbox: spec.Annotations[annotationContainerType] == containerTypeSandbox,
		execs:   map[string]*process{},
		init:    newProcess(r.ID, "", stdioPaths{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}),

		writableFiles: writableFileBinds(spec),
	}
	c.init.state = lifecycle.Creating
	return c
}

// createInGuest gives the container its files and stdio and has the agent
// create it. A container CRI created from an image gets that image's layers,
// each opened in the guest through dm-verity; a task started outside CRI gets
// an unverified disk of its rootfs. On error the container holds nothing.
func (s *service) createInGuest(ctx context.Context, p *pod, c *container, r *taskAPI.CreateTaskRequest, spec *specs.Spec, specJSON []byte) (_ uint32, retErr error) {
	if spec.Linux != nil {
		if err := p.size.fits(spec.Linux.Resources); err != nil {
			return 0, fmt.Errorf("container %s: %w", c.id, err)
		}
	}
	specJSON, err := joinPodPIDNamespace(p, spec, specJSON)
	if err != nil {
		return 0, fmt.Errorf("container %s: %w", c.id, err)
	}
	c.sharedPID = !p.hostPID && sharesPodPID(spec)
	begin := time.Now()
	phases := &agentapi.Phases{}
	ctx = agentapi.WithPhases(ctx, phases)
	req := &agentapi.CreateContainerRequest{ContainerId: c.id, Spec: specJSON}
	var disk *hypervisor.Disk
	if image := spec.Annotations[annotationImageName]; image != "" {
		step := time.Now()
		blobs, err := s.imageLayers(ctx, namespaceOf(ctx), image)
		if err != nil {
			return 0, fmt.Errorf("container %s: %w", c.id, err)
		}
		phases.Since("image-layers", step)
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
		step := time.Now()
		if disk, err = attachRootfsDisk(ctx, p, c, r, spec); err != nil {
			return 0, err
		}
		phases.Since("rootfs-disk", step)
		defer func() {
			if retErr != nil {
				_ = p.vm.DetachDisk(context.WithoutCancel(ctx), disk.Serial)
				os.Remove(disk.Path)
			}
		}()
		req.Rootfs = &agentapi.BlockDevice{Serial: disk.Serial, Fstype: "ext4", ReadOnly: true}
	}
	step := time.Now()
	volumeSerials, err := p.containerVolumes(ctx, c.id, spec, req)
	if err != nil {
		return 0, err
	}
	step = phases.Since("volumes", step)
	defer func() {
		if retErr != nil {
			if err := detachBlockVolumes(context.WithoutCancel(ctx), p.vm, volumeSerials); err != nil {
				log.G(ctx).WithError(err).WithField("container", c.id).Error("detach raw block volumes after a failed create")
			}
		}
	}()
	var guestPhases []*agentapi.Phase
	var rpc time.Duration
	pid, err := withHostIO(ctx, p, c.init, func(stdio *agentapi.Stdio) (uint32, error) {
		step = phases.Since("stdio-open", step)
		req.Stdio = stdio
		resp, err := p.agent.CreateContainer(ctx, req)
		if err != nil {
			return 0, fmt.Errorf("create container %s in pod %s: %w", c.id, p.id, err)
		}
		rpc = time.Since(step)
		guestPhases = resp.Phases
		return resp.Pid, nil
	})
	if err != nil {
		c.layers = nil
		return 0, err
	}
	c.disk = disk
	c.blockVolumes = volumeSerials
	phases.Add("agent-create", rpc)
	c.breakdown = startBreakdown{}
	c.breakdown.addRequest(phases, guestPhases, rpc, time.Since(begin))
	return pid, nil
}

// attachRootfsDisk builds an ext4 image of a task's rootfs (the snapshot
// containerd prepared, or the bundle's root directory) and attaches it.
func attachRootfsDisk(ctx context.Context, p *pod, c *container, r *taskAPI.CreateTaskRequest, spec *specs.Spec) (_ *hypervisor.Disk, retErr error) {
	var err error
	diskDir := filepath.Join(p.stateDir, podstate.DisksDir)
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
	begin := time.Now()
	io, err := openHostIO(ctx, pd.vm, namespaceOf(ctx), p.containerID, p.execID, p.stdio)
	if err != nil {
		return 0, err
	}
	connected := time.Now()
	pid, err := start(stdioFlags(p.stdio))
	if err != nil {
		io.close()
		return 0, err
	}
	p.io = io
	log.G(ctx).WithFields(log.Fields{
		"stdio_us": connected.Sub(begin).Microseconds(), "start_us": time.Since(connected).Microseconds(),
	}).Debugf("%s started in the guest", p.name())
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

// sharesPodPID reports whether the spec joins the sandbox's PID namespace
// (CRI NamespaceMode POD: a pid namespace with a path).
func sharesPodPID(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace && ns.Path != "" {
			return true
		}
	}
	return false
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

// writableFileBinds returns the destinations and sources of the spec's
// bind mounts that the container may write and whose source is a regular
// file (not a symlink) on the host.
func writableFileBinds(spec *specs.Spec) map[string]string {
	files := map[string]string{}
	for _, m := range spec.Mounts {
		if !isBind(m) || slices.Contains(m.Options, "ro") || slices.Contains(m.Options, "rro") {
			continue
		}
		if info, err := os.Lstat(m.Source); err == nil && info.Mode().IsRegular() {
			files[m.Destination] = m.Source
		}
	}
	return files
}

// writeBack writes what the guest handed back with the init's exit into
// the host files the container binds writable. A failure is logged: the
// exit is reported regardless.
func (c *container) writeBack(ctx context.Context, files []*agentapi.SharedFile) {
	for _, f := range files {
		lg := log.G(ctx).WithFields(log.Fields{"container": c.id, "destination": f.Destination})
		source, ok := c.writableFiles[f.Destination]
		if !ok {
			lg.Warn("the guest handed back a file for a destination that is no writable bind mount of a host file; ignored")
			continue
		}
		if err := writeHostFile(source, f.Content); err != nil {
			lg.WithError(err).Error("write back the container's file to the host")
		}
	}
}

// writeHostFile replaces the content of the existing regular file at path
// with at most agentapi.MaxWrittenBack bytes of content, keeping its mode.
// It follows no symlink at path's last component and opens nothing else
// (a FIFO, a device) there.
func writeHostFile(path string, content []byte) error {
	content = content[:min(len(content), agentapi.MaxWrittenBack)]
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open host file: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("host file %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("host file %s is a %v, not a regular file", path, info.Mode().Type())
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("truncate host file %s: %w", path, err)
	}
	if _, err := f.Write(content); err != nil {
		return fmt.Errorf("write host file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write host file %s: %w", path, err)
	}
	return nil
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

// removeFromGuest has the agent remove a deleted container and gives back
// what it held: its layers, its rootfs disk, its stdio.
func (s *service) removeFromGuest(ctx context.Context, c *container) error {
	s.mu.Lock()
	layers, disk, volumes := c.layers, c.disk, c.blockVolumes
	c.layers, c.disk, c.blockVolumes = nil, nil, nil
	s.mu.Unlock()
	var err error
	pd, liveErr := s.livePod()
	if liveErr == nil {
		if _, rmErr := pd.agent.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: c.id}); rmErr != nil {
			err = fmt.Errorf("remove container %s in guest: %w", c.id, rmErr)
		}
		if len(layers) > 0 {
			pd.layers.release(layers)
		}
		// Also when the guest failed to remove the container: the shim
		// forgets it, so nothing would unplug them later, and the host
		// device would stay open until the pod ends.
		if dErr := detachBlockVolumes(ctx, pd.vm, volumes); dErr != nil {
			err = errors.Join(err, fmt.Errorf("container %s: %w", c.id, dErr))
		}
	}
	switch {
	case disk == nil:
	case liveErr == nil && !c.ownsPod:
		// The guest releases a hot-plugged disk only after the PCIe
		// hot-plug button delay (5 s): unplug in the background so that
		// removing a container is not held up by it.
		go s.detachDisk(pd, *disk)
	default:
		// the VM is gone or goes with this task
		os.Remove(disk.Path)
	}
	if c.init.io != nil {
		c.init.io.close()
	}
	return err
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
