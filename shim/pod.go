package shim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/layer"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

// guestKernelArgs is the guest command line: the image's own (from its
// manifest, which also proves kernel and initrd are the ones built together),
// the agent's log level, then the configured kernel_params. Under SEV-SNP the
// command line is measured, so it is exactly the image's own and the image
// must have a manifest. It also returns the image when its manifest
// describes both the configured kernel and initrd, nil otherwise.
func guestKernelArgs(cfg Config) (string, *vmimage.Image, error) {
	confidential := cfg.Hypervisor.Confidential == ConfidentialSNP
	args := vmimage.DefaultKernelCmdline
	dir := filepath.Dir(cfg.Hypervisor.Kernel)
	var im *vmimage.Image
	if _, err := os.Stat(filepath.Join(dir, vmimage.ManifestFile)); err == nil || confidential {
		loaded, err := vmimage.Load(dir)
		if err != nil {
			return "", nil, fmt.Errorf("guest image: %w", err)
		}
		sameInitrd := loaded.Initrd() == filepath.Clean(cfg.Hypervisor.Initrd)
		sameKernel := loaded.Kernel() == filepath.Clean(cfg.Hypervisor.Kernel)
		if confidential && !(sameInitrd && sameKernel) {
			return "", nil, fmt.Errorf("guest image %s: hypervisor.kernel and hypervisor.initrd must be the image's %s and %s "+
				"when hypervisor.confidential is snp: its manifest holds the measured command line", dir, vmimage.KernelFile, vmimage.InitrdFile)
		}
		if sameInitrd {
			args = loaded.KernelCmdline()
		}
		if sameInitrd && sameKernel {
			im = loaded
		}
	}
	if confidential {
		// The guest's log level is the image's (its command line may set
		// contrast.log_level); log_level applies to the shim alone.
		return args, im, nil
	}
	// The guest logs at info unless told otherwise; only another level is
	// appended, so a plain VM at the default level boots the image's own
	// command line, whose measurement the image's reference values hold.
	if cfg.LogLevel != "info" {
		args += " contrast.log_level=" + cfg.LogLevel
	}
	if cfg.Hypervisor.KernelParams != "" {
		args += " " + cfg.Hypervisor.KernelParams
	}
	return args, im, nil
}

// snpGuestFeatures is the SEV_FEATURES value QEMU >= 9.1 puts into every
// VMSA: SNP active, nothing else.
const snpGuestFeatures = 0x1

// expectedMeasurement is the SEV-SNP launch measurement of booting the
// configured firmware, kernel and initrd with cmdline on vcpus vCPUs of the
// configured model: what the hardware reports under SNP. im, if not nil,
// supplies kernel and initrd hashes it has already checked.
func expectedMeasurement(cfg Config, im *vmimage.Image, cmdline string, vcpus int) ([snp.DigestSize]byte, error) {
	fail := func(err error) ([snp.DigestSize]byte, error) {
		return [snp.DigestSize]byte{}, fmt.Errorf("expected SEV-SNP launch measurement (snp.firmware %s): %w", cfg.SNP.Firmware, err)
	}
	fw, err := os.ReadFile(cfg.SNP.Firmware)
	if err != nil {
		return fail(err)
	}
	kh, err := imageKernelHashes(im, cmdline)
	if err != nil {
		return fail(err)
	}
	if kh == nil {
		if kh, err = snp.HashKernelFiles(cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd, cmdline); err != nil {
			return fail(err)
		}
	}
	m, err := snp.Measure(snp.Launch{
		Firmware:      fw,
		Kernel:        kh,
		VCPUs:         vcpus,
		VCPUType:      cfg.SNP.CPUModel,
		GuestFeatures: snpGuestFeatures,
	})
	if err != nil {
		return fail(err)
	}
	return m, nil
}

// imageKernelHashes takes the kernel and initrd hashes from the image's
// manifest, which vmimage.Load checked against the files; nil without an
// image.
func imageKernelHashes(im *vmimage.Image, cmdline string) (*snp.KernelHashes, error) {
	if im == nil {
		return nil, nil
	}
	kh := &snp.KernelHashes{Cmdline: snp.CmdlineHash(cmdline)}
	for _, f := range []struct {
		name string
		dst  *[sha256.Size]byte
	}{{vmimage.KernelFile, &kh.Kernel}, {vmimage.InitrdFile, &kh.Initrd}} {
		entry, ok := im.Manifest.File(f.name)
		if !ok {
			return nil, fmt.Errorf("guest image %s: manifest lists no %s", im.Dir, f.name)
		}
		b, err := hex.DecodeString(entry.SHA256)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("guest image %s: manifest's sha256 of %s is malformed", im.Dir, f.name)
		}
		copy(f.dst[:], b)
	}
	return kh, nil
}

// snpLaunch is the configured SEV-SNP launch, with the ID block and auth
// files read.
func snpLaunch(cfg Config) (*hypervisor.SNPLaunch, error) {
	s := cfg.SNP
	l := &hypervisor.SNPLaunch{
		Firmware:        s.Firmware,
		CPUModel:        s.CPUModel,
		Policy:          uint64(s.Policy),
		CBitPos:         s.CBitPos,
		ReducedPhysBits: s.ReducedPhysBits,
	}
	for _, f := range []struct {
		key, path string
		dst       *string
		min, max  int
	}{
		{"snp.id_block", s.IDBlock, &l.IDBlock, idBlockSize, idBlockSize},
		{"snp.id_auth", s.IDAuth, &l.IDAuth, 1, maxIDAuthSize},
	} {
		if f.path == "" {
			continue
		}
		raw, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
		text := strings.TrimSpace(string(raw))
		b, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %s is not base64: %w", f.key, f.path, err)
		}
		if len(b) < f.min || len(b) > f.max {
			return nil, fmt.Errorf("%s: %s holds %d bytes, want %s", f.key, f.path, len(b), sizeRange(f.min, f.max))
		}
		*f.dst = text
	}
	return l, nil
}

// SNP structure sizes (SEV-SNP firmware ABI, SNP_LAUNCH_FINISH).
const (
	idBlockSize   = 96
	maxIDAuthSize = 4096
)

func sizeRange(min, max int) string {
	if min == max {
		return strconv.Itoa(min)
	}
	return fmt.Sprintf("%d to %d", min, max)
}

// podVMSpec is the VM a pod boots (without its state directory): the
// guest image with its command line, the policy hash as host data, and
// under SEV-SNP the confidential launch; with snp.firmware set, the launch
// measurement SNP would report, which a plain VM passes on to the
// simulated SNP device.
func podVMSpec(ctx context.Context, cfg Config, l podLaunch) (hypervisor.VMSpec, error) {
	args, im, err := guestKernelArgs(cfg)
	if err != nil {
		return hypervisor.VMSpec{}, err
	}
	spec := hypervisor.VMSpec{
		ID:         l.ID,
		Kernel:     cfg.Hypervisor.Kernel,
		Initrd:     cfg.Hypervisor.Initrd,
		Firmware:   cfg.Hypervisor.Firmware,
		KernelArgs: args,
		VCPUs:      l.Size.VCPUs,
		MemoryMiB:  l.Size.MemoryMiB,
		HostData:   policy.Hash(l.Policy),
	}
	confidential := cfg.Hypervisor.Confidential == ConfidentialSNP
	if confidential {
		if spec.Confidential, err = snpLaunch(cfg); err != nil {
			return hypervisor.VMSpec{}, err
		}
		spec.Firmware = ""
	}
	if cfg.SNP.Firmware == "" {
		return spec, nil
	}
	m, err := expectedMeasurement(cfg, im, args, spec.VCPUs)
	if err != nil {
		return hypervisor.VMSpec{}, err
	}
	entry := log.G(ctx).WithFields(log.Fields{
		"pod": l.ID, "measurement": hex.EncodeToString(m[:]), "vcpus": spec.VCPUs, "cpu_model": cfg.SNP.CPUModel,
		"host_data": hex.EncodeToString(spec.HostData[:]),
	})
	if confidential {
		entry.Info("expected SEV-SNP launch measurement")
	} else {
		spec.LaunchMeasurement = m[:]
		entry.Debug("plain VM: launch measurement for the simulated SNP device")
	}
	return spec, nil
}

// pod is one pod VM and the connection to its agent.
type pod struct {
	id       string
	stateDir string
	cfg      Config
	size     vmSize
	vm       hypervisor.VM
	cgroup   *hostCgroup // nil when the sandbox names none
	// hostPID: the pod asked for the node's PID namespace, which in the VM
	// is the VM's own.
	hostPID bool
	// network is the pod's CNI network the VM took over; nil for none.
	network *podNetwork
	// layers are the image layers attached to the VM.
	layers *podLayers

	stopOnce sync.Once
	stopped  chan struct{} // closed when stop has finished
	stopErr  error
	client   *ttrpc.Client
	agent    agentapi.AgentService
}

// podStateDir is where a pod's console log, policy and disks live.
func podStateDir(cfg Config, namespace, id string) string {
	return filepath.Join(cfg.StateDir, namespace, id)
}

// podSocketHashLen is how many hex digits of SHA-256 name a pod's socket
// directory: 128 bits, no collisions among a node's pods.
const podSocketHashLen = 32

// podSocketDir is where the VM of the pod whose state directory is
// stateDir keeps its unix sockets: a path of fixed length under
// socket_dir, whatever the state_dir, namespace and pod id.
func podSocketDir(cfg Config, stateDir string) string {
	sum := sha256.Sum256([]byte(stateDir))
	return filepath.Join(cfg.SocketDir, hex.EncodeToString(sum[:])[:podSocketHashLen])
}

// Limits a state_dir must leave room for.
const (
	// maxContainerdName is the longest containerd namespace or id.
	maxContainerdName = 76
	// longestStateFileName bounds the names of the files in a pod's state
	// directory, disk images named by a layer digest among them.
	longestStateFileName = "sha256-0000000000000000000000000000000000000000000000000000000000000000.img"
	pathMax              = 4096
)

// podLaunch is what a pod VM is booted for.
type podLaunch struct {
	Namespace, ID, Hostname string
	Size                    vmSize
	// CgroupPath is the sandbox's host cgroup the VM joins ("" for none).
	CgroupPath string
	// NetNS is the sandbox's network namespace, set up by CNI, whose
	// interface the VM takes over ("" for a VM without network).
	NetNS string
	// Policy is the Rego module the agent enforces; its SHA-256 is the
	// launch's host data. PolicySource says where it came from.
	Policy       []byte
	PolicySource string
}

// bootPod starts the pod VM, waits until its agent answers, installs the
// policy and sets up the sandbox. On error nothing is left: no VM process,
// no state directory.
func bootPod(ctx context.Context, hv hypervisor.Hypervisor, cfg Config, l podLaunch) (_ *pod, retErr error) {
	id := l.ID
	for _, f := range []struct{ key, path string }{
		{"hypervisor.kernel", cfg.Hypervisor.Kernel}, {"hypervisor.initrd", cfg.Hypervisor.Initrd},
	} {
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("guest image: %s: %w", f.key, err)
		}
	}
	stateDir := podStateDir(cfg, l.Namespace, id)
	if err := os.MkdirAll(filepath.Dir(stateDir), 0o711); err != nil {
		return nil, fmt.Errorf("create state root: %w", err)
	}
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory of pod %s: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(stateDir)
		}
	}()

	spec, err := podVMSpec(ctx, cfg, l)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", id, err)
	}
	spec.StateDir = stateDir
	spec.SocketDir = podSocketDir(cfg, stateDir)
	cache, err := layer.OpenCache(cfg.Layers.CacheDir, cfg.Layers.CacheMaxMiB<<20)
	if err != nil {
		return nil, fmt.Errorf("pod %s: layer cache (layers.cache_dir): %w", id, err)
	}
	var podNet *podNetwork
	if l.NetNS != "" {
		if podNet, err = attachPodNetwork(l.NetNS); err != nil {
			return nil, fmt.Errorf("network of pod %s: %w", id, err)
		}
		spec.NICs = []hypervisor.NIC{podNet.nic()}
	}
	started := time.Now()
	vm, err := hv.Start(ctx, spec)
	if podNet != nil {
		podNet.releaseTapFile()
	}
	if err != nil {
		if podNet != nil {
			if detachErr := podNet.detach(); detachErr != nil {
				err = errors.Join(err, fmt.Errorf("network of pod %s: %w", id, detachErr))
			}
		}
		return nil, fmt.Errorf("start VM for pod %s: %w", id, err)
	}
	p := &pod{
		id: id, stateDir: stateDir, cfg: cfg, size: l.Size, vm: vm, network: podNet, layers: newPodLayers(cache),
		stopped: make(chan struct{}),
	}
	defer func() {
		if retErr != nil {
			p.stop(context.WithoutCancel(ctx))
		}
	}()
	if l.CgroupPath != "" {
		if p.cgroup, err = joinHostCgroup(l.CgroupPath, vm.Pid()); err != nil {
			return nil, fmt.Errorf("pod %s: %w", id, err)
		}
	}
	if err := p.connectAgent(ctx); err != nil {
		return nil, err
	}
	health, err := p.agent.Health(ctx, &agentapi.HealthRequest{})
	if err != nil {
		return nil, fmt.Errorf("agent of pod %s: health: %w", id, err)
	}
	log.G(ctx).WithFields(log.Fields{
		"pod": id, "boot": time.Since(started).Round(time.Millisecond), "kernel": health.KernelRelease,
		"agent": health.Version, "qemu_pid": vm.Pid(), "vcpus": l.Size.VCPUs, "memory_mib": l.Size.MemoryMiB,
	}).Info("pod VM ready")
	if err := p.installPolicy(ctx, l.Policy, l.PolicySource); err != nil {
		return nil, err
	}
	if _, err := p.agent.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: id, Hostname: l.Hostname}); err != nil {
		return nil, fmt.Errorf("set up sandbox in pod %s: %w", id, err)
	}
	if err := p.configureNetwork(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// connectAgent dials the agent until it answers a health check, bounded by
// timeouts.agent_ready, and fails early when the VM dies while booting.
func (p *pod) connectAgent(ctx context.Context) error {
	timeout := p.cfg.Timeouts.AgentReady.Duration
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	for {
		select {
		case <-p.vm.Done():
			return fmt.Errorf("VM of pod %s stopped while booting: %v%s", p.id, p.vm.Err(), p.consoleTail())
		default:
		}
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := p.vm.Dial(attemptCtx, agentapi.AgentPort)
		if err == nil {
			client := ttrpc.NewClient(conn)
			agent := agentapi.NewAgentClient(client)
			_, err = agent.Health(attemptCtx, &agentapi.HealthRequest{})
			if err == nil {
				attemptCancel()
				p.client, p.agent = client, agent
				return nil
			}
			client.Close()
		}
		attemptCancel()
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest agent of pod %s did not answer within %s (timeouts.agent_ready): %v%s",
				p.id, timeout, lastErr, p.consoleTail())
		case <-p.vm.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// consoleTail quotes the end of the guest console, so a failed boot can be
// diagnosed from the error alone.
func (p *pod) consoleTail() string {
	data, err := os.ReadFile(p.vm.ConsoleLog())
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return " (guest console is empty)"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "; guest console ends with:\n" + strings.Join(lines, "\n")
}

// stop ends the VM and removes the pod's state directory. The work is done
// once; every caller waits for it and gets its result.
func (p *pod) stop(ctx context.Context) error {
	p.stopOnce.Do(func() {
		p.stopErr = p.doStop(ctx)
		close(p.stopped)
	})
	<-p.stopped
	return p.stopErr
}

func (p *pod) doStop(ctx context.Context) error {
	var errs []error
	if p.client != nil {
		p.client.Close()
	}
	if err := p.vm.Stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop VM of pod %s: %w", p.id, err))
	}
	// after the VM: QEMU holds the layer files and the tap until it exits
	p.layers.close()
	if p.network != nil {
		if err := p.network.detach(); err != nil {
			errs = append(errs, fmt.Errorf("network of pod %s: %w", p.id, err))
		}
	}
	if p.cgroup != nil {
		if err := p.cgroup.remove(); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", p.id, err))
		}
	}
	if err := os.RemoveAll(p.stateDir); err != nil {
		errs = append(errs, fmt.Errorf("remove state of pod %s: %w", p.id, err))
	}
	return errors.Join(errs...)
}
