package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"

	"github.com/contrast-vm/contrast/agent/testimage"
	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/vmimage"
)

// The bare VM's point-to-point network on its tap in the host namespace:
// a /30 that neither the host's network nor the harness's CNI uses.
var (
	bareNetHost  = &net.IPNet{IP: net.IPv4(10, 231, 77, 1).To4(), Mask: net.CIDRMask(30, 32)}
	bareNetGuest = &net.IPNet{IP: net.IPv4(10, 231, 77, 2).To4(), Mask: net.CIDRMask(30, 32)}
	bareNetMAC   = net.HardwareAddr{0x02, 0xc7, 0xa7, 0x00, 0x00, 0x02}
)

const (
	bareNetTap = "ctbench0"
	bareNetMTU = 1500 // the harness's bridge CNI gives pods 1500
)

// sinkScript is the byte sink of both sides: busybox nc serves every
// connection (-ll) with its own `wc -c`, which answers the count once the
// host has finished sending.
const sinkScript = `printf '#!/bin/sh\nexec wc -c\n' > %s && chmod +x %s && exec nc -ll -p 5001 -e %s`

// BenchmarkPodNetwork measures TCP throughput from the host into a
// contrast pod (bridge CNI, veth, the shim's tap and tc redirect) against
// its baseline: the same guest image, QEMU and network card (the same
// hypervisor/qemu arguments) on a plain tap in the host namespace, with no
// CNI, netns or tc in between. Both run the same sink (busybox nc into
// `wc -c` in a container the agent starts) and get the same bytes,
// alternately, in the same run. Metrics: pod-tcp-MB/s, bare-tcp-MB/s and
// pod/bare.
func BenchmarkPodNetwork(b *testing.B) {
	const size = 32 << 20
	s := newSuite(b, handlerSpec{name: contrastHandler})

	pod := s.runPod(b, contrastHandler, "net-bench")
	st, err := s.cri.InspectPod(s.ctx, pod.ID)
	if err != nil || st.IP == "" {
		b.Fatalf("pod IP: %q %v", st.IP, err)
	}
	s.startContainer(b, pod, "sink", "sh", "-c", sinkCommand("/count"))
	podAddr := net.JoinHostPort(st.IP, "5001")
	bareAddr := net.JoinHostPort(bareNetGuest.IP.String(), "5001")
	startBareNetVM(b, s.env)

	// The first connection waits for each server to listen.
	for _, addr := range []string{podAddr, bareAddr} {
		if _, err := sendCounted(s.ctx, addr, 1, time.Minute); err != nil {
			b.Fatalf("warm-up transfer to %s: %v", addr, err)
		}
	}
	var podTook, bareTook time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := sendCounted(s.ctx, podAddr, size, 10*time.Second)
		if err != nil {
			b.Fatalf("transfer to the pod: %v", err)
		}
		podTook += d
		d, err = sendCounted(s.ctx, bareAddr, size, 10*time.Second)
		if err != nil {
			b.Fatalf("transfer to the bare VM: %v", err)
		}
		bareTook += d
	}
	b.StopTimer()
	mbps := func(took time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / took.Seconds() }
	b.ReportMetric(mbps(podTook), "pod-tcp-MB/s")
	b.ReportMetric(mbps(bareTook), "bare-tcp-MB/s")
	b.ReportMetric(mbps(podTook)/mbps(bareTook), "pod/bare")
}

// sinkCommand is the sink's shell command; its script is written to path.
func sinkCommand(path string) string { return fmt.Sprintf(sinkScript, path, path, path) }

// startBareNetVM boots the guest image as the shim would, with one network
// card on a tap in the host namespace, and has its agent configure the
// card and start the sink container from a busybox disk; everything is
// removed when b ends.
func startBareNetVM(b *testing.B, env harness.Env) {
	testimage.Require(b)
	ctx := context.Background()
	im, err := vmimage.Load(env.ImageDir)
	if err != nil {
		b.Fatal(err)
	}
	tap := createHostTap(b)

	// What the harness's shim configuration sets (DefaultShimConfig).
	cfg := harness.DefaultShimConfig(env, "")
	hv, err := qemu.New(qemu.Config{Binary: cfg.Binary, Accel: cfg.Accel})
	if err != nil {
		b.Fatal(err)
	}
	stateDir := b.TempDir()
	vm, err := hv.Start(ctx, hypervisor.VMSpec{
		ID: "bare-net", StateDir: stateDir, Kernel: im.Kernel(), Initrd: im.Initrd(),
		KernelArgs: im.KernelCmdline(), VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB,
		NICs: []hypervisor.NIC{{Tap: tap, MAC: bareNetMAC, MTU: bareNetMTU}},
	})
	// QEMU holds its own copy of the tap queue.
	tap.Close()
	if err != nil {
		b.Fatalf("start the bare VM: %v", err)
	}
	b.Cleanup(func() {
		if err := vm.Stop(context.Background()); err != nil {
			b.Errorf("stop the bare VM: %v", err)
		}
	})
	agent := dialBareAgent(ctx, b, vm)
	if _, err := agent.SetPolicy(ctx, &agentapi.SetPolicyRequest{Policy: policy.AllowAll()}); err != nil {
		b.Fatalf("bare VM: set policy: %v", err)
	}
	if _, err := agent.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: "bare-net", Hostname: "bare-net"}); err != nil {
		b.Fatalf("bare VM: create sandbox: %v", err)
	}
	if _, err := agent.ConfigureNetwork(ctx, &agentapi.ConfigureNetworkRequest{
		Interfaces: []*agentapi.NetworkInterface{{
			Name: "eth0", Mac: bareNetMAC.String(), Mtu: bareNetMTU,
			Addresses: []string{bareNetGuest.String()},
		}},
	}); err != nil {
		b.Fatalf("bare VM: configure network: %v", err)
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "busybox", Path: testimage.BusyboxExt4(b, nil), ReadOnly: true}); err != nil {
		b.Fatalf("bare VM: attach the busybox disk: %v", err)
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: []string{"sh", "-c", sinkCommand("/tmp/count")}, Env: []string{"PATH=/bin"}, Cwd: "/",
			// The sink needs no capability (its port is above 1024).
			Capabilities: &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Permitted: []string{}}},
		Root: &specs.Root{Path: "rootfs"},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
			// The busybox disk is read-only; the sink's script goes here.
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=1777"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "network"}, {Type: "uts"}, {Type: "ipc"}},
		},
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := agent.CreateContainer(ctx, &agentapi.CreateContainerRequest{
		ContainerId: "sink", Spec: raw,
		Rootfs: &agentapi.BlockDevice{Serial: "busybox", Fstype: "ext4", ReadOnly: true},
	}); err != nil {
		b.Fatalf("bare VM: create the sink container: %v", err)
	}
	if _, err := agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: "sink"}); err != nil {
		b.Fatalf("bare VM: start the sink container: %v", err)
	}
}

// createHostTap creates the bare VM's tap in the host namespace, opened as
// hypervisor/network opens a pod's (one queue, virtio-net header), with the
// host end of the point-to-point network on it.
func createHostTap(b *testing.B) *os.File {
	if _, err := netlink.LinkByName(bareNetTap); err == nil {
		b.Fatalf("a link named %s exists already (left by an earlier run?)", bareNetTap)
	}
	tuntap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: bareNetTap, MTU: bareNetMTU},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues:    1,
	}
	if err := netlink.LinkAdd(tuntap); err != nil {
		b.Fatalf("create tap %s: %v", bareNetTap, err)
	}
	b.Cleanup(func() {
		if err := netlink.LinkDel(tuntap); err != nil {
			b.Errorf("delete tap %s: %v", bareNetTap, err)
		}
	})
	if err := netlink.AddrAdd(tuntap, &netlink.Addr{IPNet: bareNetHost}); err != nil {
		b.Fatalf("address tap %s: %v", bareNetTap, err)
	}
	if err := netlink.LinkSetUp(tuntap); err != nil {
		b.Fatalf("set tap %s up: %v", bareNetTap, err)
	}
	return tuntap.Fds[0]
}

// dialBareAgent waits for the bare VM's agent to answer.
func dialBareAgent(ctx context.Context, b *testing.B, vm hypervisor.VM) agentapi.AgentService {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		conn, err := vm.Dial(ctx, agentapi.AgentPort)
		if err == nil {
			client := ttrpc.NewClient(conn)
			agent := agentapi.NewAgentClient(client)
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = agent.Health(hctx, &agentapi.HealthRequest{})
			cancel()
			if err == nil {
				b.Cleanup(func() { client.Close() })
				return agent
			}
			client.Close()
		}
		select {
		case <-vm.Done():
			b.Fatalf("bare VM ended before its agent answered: %v", vm.Err())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("bare VM: the agent did not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
