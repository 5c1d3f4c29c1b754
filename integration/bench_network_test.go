package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/contrast-vm/contrast/agent/testimage"
	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/network"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/internal/netnstest"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// bareLink is how a bare VM's tap reaches the host: the tap itself in the
// host namespace, or, as a pod's does, through a network namespace.
type bareLink struct {
	name  string
	guest *net.IPNet // the guest's
	tap   *os.File
	mac   net.HardwareAddr // the guest NIC's
}

// pointToPoint is the /30 10.231.<third>.0: neither the host's network nor
// the harness's CNI uses it.
func pointToPoint(third byte) (host, guest *net.IPNet) {
	mask := net.CIDRMask(30, 32)
	return &net.IPNet{IP: net.IPv4(10, 231, third, 1).To4(), Mask: mask},
		&net.IPNet{IP: net.IPv4(10, 231, third, 2).To4(), Mask: mask}
}

const (
	bareNetTap  = "ctbench0"
	bareNetVeth = "ctbench1"
	bareNetMTU  = 1500 // the harness's bridge CNI gives pods 1500
)

// sinkScript is the byte sink of both sides: busybox nc serves every
// connection (-ll) with its own `wc -c`, which answers the count once the
// host has finished sending.
const sinkScript = `printf '#!/bin/sh\nexec wc -c\n' > %s && chmod +x %s && exec nc -ll -p 5001 -e %s`

// BenchmarkPodNetwork measures TCP throughput from the host into a
// contrast pod (bridge CNI, veth, the shim's tap and tc redirect) against
// its baseline: the same guest image, QEMU and network card (the same
// hypervisor/qemu arguments) on a plain tap in the host namespace, with no
// CNI, netns or tc in between ("bare"). A third VM, like the bare one, is
// reached the pod's way without containerd or CNI: a veth into a network
// namespace where hypervisor/network attaches its tap with the tc redirect
// ("tc"), which tells what our network path costs apart from the rest of
// the pod. All run the same sink (busybox nc into `wc -c` in a container
// the agent starts) and get the same bytes, alternately, in the same run.
// Metrics per side: tcp-MB/s, QEMU's CPU ms per MB beyond its idle cost,
// and its idle CPU %; the ratios pod/bare and tc/bare of throughput and
// pod/bare-CPU-per-MB.
func BenchmarkPodNetwork(b *testing.B) {
	s := newSuite(b, handlerSpec{name: contrastHandler})

	pod := s.runPod(b, contrastHandler, "net-bench")
	st, err := s.cri.InspectPod(s.ctx, pod.ID)
	if err != nil || st.IP == "" {
		b.Fatalf("pod IP: %q %v", st.IP, err)
	}
	sink := s.startContainer(b, pod, "sink", "sh", "-c", sinkCommand("/count"))
	bare, tc := hostTapLink(b), netnsTapLink(b)
	// The shim runs a pod's QEMU in the pod's cgroup below the CRI cgroup
	// parent: the bare VMs get cgroups of their own beside it, so that the
	// host's scheduler weighs the three VMs alike.
	barePID := startBareNetVM(b, s.env, bare)
	joinCPUCgroup(b, s.c.CgroupParent, bare.name, barePID)
	tcPID := startBareNetVM(b, s.env, tc)
	joinCPUCgroup(b, s.c.CgroupParent, tc.name, tcPID)
	sides := []struct {
		name    string
		addr    string
		qemuPID int
		took    time.Duration
		cpu     time.Duration // QEMU's user and system time
		idle    float64       // QEMU's CPU time per second while idle
	}{
		{name: "pod", addr: net.JoinHostPort(st.IP, "5001"), qemuPID: podQEMU(b, s, pod, sink)},
		{name: "tc", addr: net.JoinHostPort(tc.guest.IP.String(), "5001"), qemuPID: tcPID},
		{name: "bare", addr: net.JoinHostPort(bare.guest.IP.String(), "5001"), qemuPID: barePID},
	}

	// The baseline is the same network card: the pod's QEMU comes from the
	// shim under test, the bare ones from this tree's hypervisor/qemu.
	podNIC := nicArgs(b, sides[0].qemuPID)
	for _, side := range sides[1:] {
		if nic := nicArgs(b, side.qemuPID); !slices.Equal(nic, podNIC) {
			b.Fatalf("the pod's network card is %q, the %s VM's %q: is the shim built from this tree?", podNIC, side.name, nic)
		}
	}
	// The first connection waits for each server to listen.
	for _, side := range sides {
		if _, err := sendCounted(s.ctx, side.addr, 1, time.Minute); err != nil {
			b.Fatalf("warm-up transfer to %s (%s): %v", side.name, side.addr, err)
		}
	}
	// What each VM costs while idle, which the CPU per MB leaves out.
	const idleWindow = 3 * time.Second
	for i := range sides {
		sides[i].idle = float64(processCPU(b, sides[i].qemuPID))
	}
	time.Sleep(idleWindow)
	for i := range sides {
		sides[i].idle = (float64(processCPU(b, sides[i].qemuPID)) - sides[i].idle) / float64(idleWindow)
	}
	// The VMs share the host's CPUs with everything else running, so each
	// side gets the same bytes in several shorter transfers, the order
	// rotating, rather than one long transfer each.
	const transfers, size = 6, 8 << 20
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for t := 0; t < transfers; t++ {
			for k := range sides {
				side := &sides[(t+k)%len(sides)]
				cpuBefore := processCPU(b, side.qemuPID)
				d, err := sendCounted(s.ctx, side.addr, size, 10*time.Second)
				if err != nil {
					b.Fatalf("transfer to %s (%s): %v", side.name, side.addr, err)
				}
				side.took += d
				side.cpu += processCPU(b, side.qemuPID) - cpuBefore
			}
		}
	}
	b.StopTimer()
	megabytes := float64(transfers*size) * float64(b.N) / 1e6
	mbps, cpuPerMB := map[string]float64{}, map[string]float64{}
	for _, side := range sides {
		mbps[side.name] = megabytes / side.took.Seconds()
		busy := side.cpu - time.Duration(side.idle*float64(side.took))
		cpuPerMB[side.name] = float64(busy.Milliseconds()) / megabytes
		b.ReportMetric(mbps[side.name], side.name+"-tcp-MB/s")
		b.ReportMetric(cpuPerMB[side.name], side.name+"-qemu-CPU-ms/MB")
		b.ReportMetric(100*side.idle, side.name+"-qemu-idle-CPU-%")
	}
	b.ReportMetric(mbps["pod"]/mbps["bare"], "pod/bare")
	b.ReportMetric(mbps["tc"]/mbps["bare"], "tc/bare")
	// Under TCG the guest's CPU is the bottleneck and the host's CPUs are
	// shared with whatever else runs: what each byte costs QEMU beyond its
	// idle cost tells the paths apart when the throughputs vary with the
	// load.
	b.ReportMetric(cpuPerMB["pod"]/cpuPerMB["bare"], "pod/bare-CPU-per-MB")
}

// podQEMU is the pid of the pod's QEMU.
func podQEMU(b *testing.B, s *suite, pod *harness.Pod, c *harness.Container) int {
	tr, err := s.c.TracePod(pod.ID, c.ID)
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range tr.Processes {
		if f := strings.Fields(p.Cmdline); len(f) > 0 && strings.Contains(filepath.Base(f[0]), "qemu-system") {
			return p.PID
		}
	}
	b.Fatalf("no QEMU among the pod's processes %v", tr.Processes)
	return 0
}

// nicArgs are the -netdev and virtio-net-pci arguments of the QEMU at pid,
// without the MAC, which is each VM's own.
func nicArgs(b *testing.B, pid int) []string {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		b.Fatal(err)
	}
	args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	var nic []string
	for i := 1; i < len(args); i++ {
		if args[i-1] != "-netdev" && !strings.HasPrefix(args[i], "virtio-net-pci,") {
			continue
		}
		var opts []string
		for _, opt := range strings.Split(args[i], ",") {
			if !strings.HasPrefix(opt, "mac=") {
				opts = append(opts, opt)
			}
		}
		nic = append(nic, strings.Join(opts, ","))
	}
	if len(nic) == 0 {
		b.Fatalf("QEMU %d has no network card: %q", pid, args)
	}
	return nic
}

// processCPU is the user and system time pid has used.
func processCPU(b *testing.B, pid int) time.Duration {
	t, err := harness.CPUTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	return t
}

// joinCPUCgroup moves pid into a new cpu cgroup named for the side below
// parent, as a pod's QEMU is below it; the cgroup is removed when b ends.
func joinCPUCgroup(b *testing.B, parent, name string, pid int) {
	root := "/sys/fs/cgroup/cpu" // cgroup v1
	if _, err := os.Stat(root); err != nil {
		root = "/sys/fs/cgroup" // unified
	}
	dir := filepath.Join(root, parent, "net-bench-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatalf("cgroup for the %s VM: %v", name, err)
	}
	b.Cleanup(func() {
		// The VM may still run: it goes back to the root cgroup first.
		_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
		if err := os.Remove(dir); err != nil {
			b.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		b.Fatalf("move the %s VM into cgroup %s: %v", name, dir, err)
	}
}

// sinkCommand is the sink's shell command; its script is written to path.
func sinkCommand(path string) string { return fmt.Sprintf(sinkScript, path, path, path) }

// startBareNetVM boots the guest image as the shim would, with one network
// card on link's tap, and has its agent configure the card and start the
// sink container from a busybox disk; everything is removed when b ends.
// It returns QEMU's pid.
func startBareNetVM(b *testing.B, env harness.Env, link *bareLink) (qemuPID int) {
	testimage.Require(b)
	ctx := context.Background()
	bare := startBareVM(b, env, bareSpec{name: "net-" + link.name,
		nics: []hypervisor.NIC{{Tap: link.tap, MAC: link.mac, MTU: bareNetMTU}}})
	// QEMU holds its own copy of the tap queue.
	link.tap.Close()
	vm, agent := bare.vm, bare.agent
	doc, err := initdata.Wrap(policy.AllowAll())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := agent.SetPolicy(ctx, &agentapi.SetPolicyRequest{Initdata: doc}); err != nil {
		b.Fatalf("bare VM: set policy: %v", err)
	}
	if _, err := agent.CreateSandbox(ctx, &agentapi.CreateSandboxRequest{SandboxId: "bare-net", Hostname: "bare-net"}); err != nil {
		b.Fatalf("bare VM: create sandbox: %v", err)
	}
	if _, err := agent.ConfigureNetwork(ctx, &agentapi.ConfigureNetworkRequest{
		Interfaces: []*agentapi.NetworkInterface{{
			Name: "eth0", Mac: link.mac.String(), Mtu: bareNetMTU,
			Addresses: []string{link.guest.String()},
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
	return vm.Pid()
}

// hostTapLink creates the bare VM's tap in the host namespace, opened as
// hypervisor/network opens a pod's (one queue, virtio-net header), with the
// host end of the point-to-point network on it.
func hostTapLink(b *testing.B) *bareLink {
	host, guest := pointToPoint(77)
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
	if err := netlink.AddrAdd(tuntap, &netlink.Addr{IPNet: host}); err != nil {
		b.Fatalf("address tap %s: %v", bareNetTap, err)
	}
	if err := netlink.LinkSetUp(tuntap); err != nil {
		b.Fatalf("set tap %s up: %v", bareNetTap, err)
	}
	return &bareLink{name: "bare", guest: guest, tap: tuntap.Fds[0],
		mac: net.HardwareAddr{0x02, 0xc7, 0xa7, 0x00, 0x00, 0x02}}
}

// netnsTapLink builds a pod's network without CNI: a network namespace
// whose eth0 is a veth from the host, holding the guest's address, and
// hypervisor/network's tap attached to it as the shim attaches a pod's.
func netnsTapLink(b *testing.B) *bareLink {
	host, guest := pointToPoint(78)
	nsName, nsPath := netnstest.Named(b, "ctbench-")
	if _, err := netlink.LinkByName(bareNetVeth); err == nil {
		b.Fatalf("a link named %s exists already (left by an earlier run?)", bareNetVeth)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	// The peer is made in the namespace: the host has an eth0 of its own.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: bareNetVeth, MTU: bareNetMTU},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		b.Fatalf("create veth %s: %v", bareNetVeth, err)
	}
	// Deleting the namespace deletes the pair; this is for a failed setup.
	b.Cleanup(func() { _ = netlink.LinkDel(veth) })
	if err := netlink.AddrAdd(veth, &netlink.Addr{IPNet: host}); err != nil {
		b.Fatalf("address veth %s: %v", bareNetVeth, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		b.Fatalf("set veth %s up: %v", bareNetVeth, err)
	}
	netnstest.IP(b, "-n", nsName, "addr", "add", guest.String(), "dev", "eth0")
	netnstest.IP(b, "-n", nsName, "link", "set", "eth0", "up")
	iface, err := network.Inspect(nsPath)
	if err != nil {
		b.Fatal(err)
	}
	tap, err := network.Attach(nsPath, iface.Name, "tap0_contrast")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := network.Detach(nsPath, tap.Name); err != nil {
			b.Error(err)
		}
	})
	return &bareLink{name: "tc", guest: guest, tap: tap.File, mac: tap.GuestMAC}
}
