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

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/vmimage"
)

// guestKernelArgs is the guest command line: the image's own (from its
// manifest, which also proves kernel and initrd are the ones built together),
// the agent's log level, then the configured kernel_params.
func guestKernelArgs(cfg Config) (string, error) {
	args := vmimage.DefaultKernelCmdline
	dir := filepath.Dir(cfg.Hypervisor.Kernel)
	if _, err := os.Stat(filepath.Join(dir, vmimage.ManifestFile)); err == nil {
		im, err := vmimage.Load(dir)
		if err != nil {
			return "", fmt.Errorf("guest image: %w", err)
		}
		if im.Initrd() == filepath.Clean(cfg.Hypervisor.Initrd) {
			args = im.KernelCmdline()
		}
	}
	args += " contrast.log_level=" + cfg.LogLevel
	if cfg.Hypervisor.KernelParams != "" {
		args += " " + cfg.Hypervisor.KernelParams
	}
	return args, nil
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

	stopOnce sync.Once
	stopped  chan struct{} // closed when stop has finished
	stopErr  error
	client   *ttrpc.Client
	agent    agentapi.AgentService
}

// podStateDir is where a pod's sockets, console log and disks live.
func podStateDir(cfg Config, namespace, id string) string {
	return filepath.Join(cfg.StateDir, namespace, id)
}

// podLaunch is what a pod VM is booted for.
type podLaunch struct {
	Namespace, ID, Hostname string
	Size                    vmSize
	// CgroupPath is the sandbox's host cgroup the VM joins ("" for none).
	CgroupPath string
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

	args, err := guestKernelArgs(cfg)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	vm, err := hv.Start(ctx, hypervisor.VMSpec{
		ID:         id,
		StateDir:   stateDir,
		Kernel:     cfg.Hypervisor.Kernel,
		Initrd:     cfg.Hypervisor.Initrd,
		Firmware:   cfg.Hypervisor.Firmware,
		KernelArgs: args,
		VCPUs:      l.Size.VCPUs,
		MemoryMiB:  l.Size.MemoryMiB,
		HostData:   policy.Hash(l.Policy),
	})
	if err != nil {
		return nil, fmt.Errorf("start VM for pod %s: %w", id, err)
	}
	p := &pod{id: id, stateDir: stateDir, cfg: cfg, size: l.Size, vm: vm, stopped: make(chan struct{})}
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
