package shim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/layer"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// pod is one pod VM and the connection to its agent.
type pod struct {
	id       string
	stateDir string
	cfg      Config
	size     vmSize
	vm       hypervisor.VM
	// record is what the pod holds on the host, as the bundle records it
	// for a `delete` after the shim died; teardown releases it.
	record bundleRecord
	// hostPID: the pod asked for the node's PID namespace, which in the VM
	// is the VM's own.
	hostPID bool
	// network is the pod's CNI network the VM took over; nil for none.
	network *podNetwork
	// layers are the image layers attached to the VM.
	layers *podLayers
	// volumes are the kubelet-managed volumes shared with the VM and kept
	// live.
	volumes *podVolumes
	// scratch is the disk of the pod's emptyDir volumes (emptydir.go).
	scratch podScratch
	// forwarder carries kubectl port-forward into the VM; nil without a
	// network, or where the namespace could not be set up for it.
	forwarder *portForwarder

	stopOnce sync.Once
	stopped  chan struct{} // closed when stop has finished
	stopErr  error
	client   *ttrpc.Client
	agent    agentapi.AgentService
}

// podLaunch is what a pod VM is booted for.
type podLaunch struct {
	Namespace, ID, Hostname string
	Size                    vmSize
	// CgroupPath is the sandbox's host cgroup the VM joins ("" for none).
	CgroupPath string
	// NetNS is the sandbox's network namespace, set up by CNI, whose
	// interface the VM takes over ("" for a VM without network).
	NetNS string
	// Initdata is the document whose policy.rego the agent enforces; its
	// digest, cut to 32 bytes, is the launch's host data. PolicySource
	// says where it came from.
	Initdata     *initdata.Document
	PolicySource string
	// HostPID: the sandbox shares the node's PID namespace.
	HostPID bool
	// Sysctls are the pod's, which CRI puts on the sandbox: the VM's
	// kernel is the pod's, so the agent sets them there.
	Sysctls map[string]string
}

// newPodLaunch gathers what the pod's first task asks of its VM: size,
// policy, network and cgroup, each checked before anything is started.
func newPodLaunch(ctx context.Context, cfg Config, namespace, id string, spec *specs.Spec, sandbox bool) (podLaunch, error) {
	if sandbox {
		if err := refuseHostIPC(id, spec); err != nil {
			return podLaunch{}, err
		}
	}
	size, err := podVMSize(cfg.Hypervisor, spec.Annotations)
	if err != nil {
		return podLaunch{}, fmt.Errorf("size of pod %s: %w", id, err)
	}
	doc, source, err := podInitdata(ctx, cfg, id, spec.Annotations)
	if err != nil {
		return podLaunch{}, err
	}
	netns, err := podNetworkNamespace(id, spec)
	if err != nil {
		return podLaunch{}, err
	}
	l := podLaunch{
		Namespace: namespace, ID: id, Hostname: spec.Hostname, Size: size,
		CgroupPath: usableCgroupPath(spec), NetNS: netns, Initdata: doc, PolicySource: source,
		HostPID: sandbox && !hasNamespace(spec, specs.PIDNamespace),
	}
	if sandbox && spec.Linux != nil {
		l.Sysctls = spec.Linux.Sysctl
	}
	return l, nil
}

// refuseHostIPC refuses a sandbox in the node's IPC namespace (CRI's
// hostIPC: its spec has no IPC namespace of its own): the pod's containers
// run in the VM, whose kernel cannot share the node's shared memory and
// message queues, and starting it anyway would silently give it an IPC
// namespace of its own.
func refuseHostIPC(podID string, spec *specs.Spec) error {
	if hasNamespace(spec, specs.IPCNamespace) {
		return nil
	}
	return fmt.Errorf("pod %s asks for the node's IPC namespace (hostIPC): "+
		"a pod VM has a kernel of its own and cannot share the node's IPC objects; run it without hostIPC: %w",
		podID, errdefs.ErrNotImplemented)
}

// startPod boots the VM for the task that creates the pod (the CRI
// sandbox, or a task outside Kubernetes, whose VM is its own), records it
// in the task's bundle, so that `delete` can clean up after a dead shim,
// and watches it.
func (s *service) startPod(ctx context.Context, r *taskAPI.CreateTaskRequest, spec *specs.Spec, c *container) (*pod, error) {
	cfg, cfgPath, err := configFromOptions(r.Options)
	if err != nil {
		return nil, err
	}
	hv, err := s.newHypervisor(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("hypervisor for pod %s: %w", r.ID, err)
	}
	l, err := newPodLaunch(ctx, cfg, namespaceOf(ctx), r.ID, spec, c.sandbox)
	if err != nil {
		return nil, err
	}
	p, err := bootPod(ctx, hv, cfg, l)
	if err != nil {
		return nil, err
	}
	p.record.ConfigPath = cfgPath
	if err := writeBundleRecord(r.Bundle, p.record); err != nil {
		p.stop(context.WithoutCancel(ctx))
		return nil, err
	}
	s.mu.Lock()
	s.pod = p
	s.mu.Unlock()
	go s.watchPod(p)
	go s.watchOOM(p)
	return p, nil
}

// bootPod starts the pod VM, waits until its agent answers, installs the
// policy and sets up the sandbox. On error nothing is left: no VM process,
// no state directory.
func bootPod(ctx context.Context, hv hypervisor.Hypervisor, cfg Config, l podLaunch) (_ *pod, retErr error) {
	id := l.ID
	for _, f := range []struct{ key, path string }{
		{"hypervisor.kernel", cfg.Hypervisor.Kernel}, {"hypervisor.initrd", cfg.Hypervisor.Initrd}, {"hypervisor.rootfs", cfg.Hypervisor.RootDisk},
	} {
		if f.path == "" {
			continue // the one of initrd and rootfs not used
		}
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
		hostPID: l.HostPID, record: bundleRecord{PodStateDir: stateDir}, stopped: make(chan struct{}),
	}
	if podNet != nil {
		p.record.NetNS, p.record.Tap = podNet.netns, podNet.tap.Name
	}
	defer func() {
		if retErr != nil {
			p.stop(context.WithoutCancel(ctx))
		}
	}()
	if l.CgroupPath != "" {
		if err := joinHostCgroup(l.CgroupPath, vm.Pid()); err != nil {
			return nil, fmt.Errorf("pod %s: %w", id, err)
		}
		p.record.Cgroup = l.CgroupPath
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
	p.volumes = newPodVolumes(ctx, id, func(ctx context.Context, req *agentapi.ShareVolumeRequest) error {
		_, err := p.agent.ShareVolume(ctx, req)
		return err
	})
	if err := p.installPolicy(ctx, l.Initdata, l.PolicySource); err != nil {
		return nil, err
	}
	if _, err := p.agent.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: id, Hostname: l.Hostname, Sysctls: l.Sysctls}); err != nil {
		return nil, fmt.Errorf("set up sandbox in pod %s: %w", id, err)
	}
	if err := p.configureNetwork(ctx); err != nil {
		return nil, err
	}
	if podNet != nil {
		// A node whose kernel lacks nftables' nat loses port-forward
		// only, as it would with runc pods and a broken loopback.
		if p.forwarder, err = startPortForward(ctx, id, podNet.netns, vm); err != nil {
			log.G(ctx).WithError(err).Warn("pod runs without kubectl port-forward")
		}
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
// diagnosed from the error alone. dm-verity errors and the kernel's panic
// message from before that end are quoted too: a root disk that fails
// verification makes the kernel panic, and the end is its stack trace.
func (p *pod) consoleTail() string {
	data, err := os.ReadFile(p.vm.ConsoleLog())
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return " (guest console is empty)"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var verity []string
	if len(lines) > 8 {
		for _, l := range lines[:len(lines)-8] {
			if (strings.Contains(l, "device-mapper: verity") || strings.Contains(l, "Kernel panic")) && len(verity) < 4 {
				verity = append(verity, l)
			}
		}
		lines = lines[len(lines)-8:]
	}
	if len(verity) > 0 {
		lines = append(append(verity, "..."), lines...)
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
	if p.client != nil {
		p.client.Close()
	}
	if p.volumes != nil {
		p.volumes.close()
	}
	if p.forwarder != nil {
		// teardown removes the redirect again; closing here first ends
		// the forwarded connections before the VM goes.
		if err := p.forwarder.close(); err != nil {
			log.G(ctx).WithError(err).WithField("pod", p.id).Warn("stop port forwarding")
		}
	}
	if err := teardown(ctx, p.vm.Stop, p.record, p.layers); err != nil {
		return fmt.Errorf("pod %s: %w", p.id, err)
	}
	return nil
}
