package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
)

// warmUpID is the container id of the made-up requests warmUp decides;
// the gate's bookkeeping never sees them.
const warmUpID = "contrast-policy-warm-up"

// startWarmUp runs warmUp in the background until it is done or the pod's
// first container's create arrives (endWarmUp), which then need not share
// the VM's CPU with it.
func (g *policyGate) startWarmUp(ctx context.Context) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g.warmUpMu.Lock()
	if g.stopWarmUp != nil {
		g.warmUpMu.Unlock()
		cancel()
		return // one warm-up per agent
	}
	g.stopWarmUp = cancel
	g.warmUpMu.Unlock()
	go func() {
		defer cancel()
		switch err := g.warmUp(ctx); {
		case err != nil && ctx.Err() != nil:
			log.G(ctx).Debug("policy warm-up cut short: the first container's create arrived")
		case err != nil:
			log.G(ctx).WithError(err).Warn("policy warm-up failed; the first container's create decides without it")
		}
	}()
}

// endWarmUp stops a warm-up under way.
func (g *policyGate) endWarmUp() {
	g.warmUpMu.Lock()
	defer g.warmUpMu.Unlock()
	if g.stopWarmUp != nil {
		g.stopWarmUp()
	}
}

// warmUp decodes a made-up CreateContainer and StartContainer and has the
// installed policy decide them once, the decisions thrown away, while the
// VM waits for the pod's first container. A fresh agent's first request of
// a kind pays for its code paths' first run (under emulation, their
// translation to host code), the coders protobuf and encoding/json build
// for a type on first use, and growing the heap: the first container's
// create would wait for all that, while a second container's takes a
// fraction of it. The gate's state stays untouched: the engine decides
// directly, without the gate's bookkeeping.
func (g *policyGate) warmUp(ctx context.Context) error {
	p := g.installed.Load()
	if p == nil {
		return nil
	}
	begin := time.Now()
	reqs, err := warmUpRequests()
	if err != nil {
		return err
	}
	engine := p.gate.Engine()
	for _, r := range reqs {
		if err := ctx.Err(); err != nil {
			return err
		}
		// What the request's way in costs the first time: the protobuf
		// coders of its type, built on first use.
		wire, err := proto.Marshal(r.req)
		if err != nil {
			return fmt.Errorf("policy warm-up: encode %s: %w", r.kind, err)
		}
		if err := proto.Unmarshal(wire, proto.Clone(r.req)); err != nil {
			return fmt.Errorf("policy warm-up: decode %s: %w", r.kind, err)
		}
		in, err := enforce.Input(r.kind, r.req, nil)
		if err != nil {
			return fmt.Errorf("policy warm-up: %s input: %w", r.kind, err)
		}
		if r.kind == policy.CreateContainer {
			in["pod_state"] = map[string]any{"created": map[string]any{}, "completed": map[string]any{}}
		}
		v, err := engine.Value(in)
		if err != nil {
			return fmt.Errorf("policy warm-up: %s input: %w", r.kind, err)
		}
		// A denial is the expected outcome: the container is made up.
		if _, err := engine.Decide(ctx, r.kind, v); err != nil {
			return fmt.Errorf("policy warm-up: decide %s: %w", r.kind, err)
		}
	}
	log.G(ctx).WithField("duration", time.Since(begin).Round(time.Millisecond)).Debug("policy warmed up")
	return nil
}

type warmUpRequest struct {
	kind policy.Kind
	req  proto.Message
}

// warmUpRequests are requests shaped like what the host sends for a
// container of a Kubernetes pod (CRI's spec of an image container with one
// layer), so the decision runs the rules' usual paths.
func warmUpRequests() ([]warmUpRequest, error) {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	spec := specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: []string{"sleep", "infinity"},
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=warm-up"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			OOMScoreAdj: new(int),
		},
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "warm-up",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/kubelet/pods/warm-up/etc-hosts", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: "/run/containerd/sandboxes/warm-up/resolv.conf", Options: []string{"rbind", "rprivate", "ro"}},
		},
		Annotations: map[string]string{
			enforce.AnnotationContainerType:    "container",
			enforce.AnnotationContainerName:    "warm-up",
			enforce.AnnotationImageName:        "warm-up:latest",
			enforce.AnnotationSandboxName:      "warm-up",
			enforce.AnnotationSandboxNamespace: "default",
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	specJSON, err := json.Marshal(&spec)
	if err != nil {
		return nil, fmt.Errorf("policy warm-up: encode spec: %w", err)
	}
	hash := strings.Repeat("0", 64)
	create := &api.CreateContainerRequest{
		ContainerId: warmUpID,
		Spec:        specJSON,
		Stdio:       &api.Stdio{Stdout: true, Stderr: true},
		Layers:      []*api.Layer{{Serial: "l0000000000000000000", Digest: "sha256:" + hash, RootHash: hash, DataBlocks: 1}},
	}
	return []warmUpRequest{
		{policy.CreateContainer, create},
		{policy.StartContainer, &api.ContainerRequest{ContainerId: warmUpID}},
	}, nil
}
