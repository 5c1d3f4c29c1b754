package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/contrast-vm/contrast/agent/testimage"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
	"github.com/contrast-vm/contrast/internal/testenv"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
	"github.com/contrast-vm/contrast/vmimage"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestAgentInVM boots the agent as /init of the real guest kernel under
// QEMU and runs containers through its API over vsock, the way the shim
// does: the init work (switch from the initramfs, mounts, cgroup v2, lo,
// hostname) and runc inside the guest are only tested here.
func TestAgentInVM(t *testing.T) {
	kernel := testenv.Kernel(t)
	testimage.Require(t)
	runc := os.Getenv("CONTRAST_RUNC")
	if runc == "" {
		runc = testenv.CachedBinary(t, "runc-static")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dir := t.TempDir()
	agentBin := filepath.Join(dir, "contrast-agent")
	// go test puts its own GOROOT/bin first on the test's PATH.
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=vm-test", "-o", agentBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	img, err := vmimage.Build(ctx, vmimage.Options{
		Kernel: kernel, Agent: agentBin, Runc: runc, OutDir: filepath.Join(dir, "image"),
		KernelCmdline: vmimage.DefaultKernelCmdline + " contrast.log_level=debug",
	})
	if err != nil {
		t.Fatal(err)
	}

	h, err := qemu.New(qemu.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", h.Selection())
	if err := os.Mkdir(filepath.Join(dir, "vm"), 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	vm, err := h.Start(ctx, hypervisor.VMSpec{
		ID: "agent-vm-test", StateDir: filepath.Join(dir, "vm"),
		Kernel: img.Image.Kernel(), Initrd: img.Image.Initrd(), RootDisk: img.Image.RootDisk(), KernelArgs: img.Image.KernelCmdline(),
		VCPUs: 1, MemoryMiB: 512,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := vm.Stop(context.Background()); err != nil {
			t.Errorf("stop VM: %v", err)
		}
		console, _ := os.ReadFile(vm.ConsoleLog())
		if t.Failed() || testing.Verbose() {
			t.Logf("console log:\n%s", console)
		}
		if strings.Contains(string(console), "level=error") || strings.Contains(string(console), "panic") {
			t.Errorf("errors in the console log:\n%s", console)
		}
	}()
	client, conn := dialAgent(ctx, t, vm)
	health, err := client.Health(ctx, &api.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent %s on kernel %s ready %v after start", health.Version, health.KernelRelease, time.Since(start).Round(time.Millisecond))
	if health.Version != "vm-test" || !strings.HasSuffix(health.KernelRelease, "-contrast") {
		t.Errorf("health %+v", health)
	}
	if _, err := client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("CreateSandbox before a policy: %v, want PermissionDenied", err)
	}
	// The VM has no TEE (no SNP, no simulated device in this build): the
	// policy is enforced, nothing is attested.
	doc, err := initdata.Wrap(policy.AllowAll())
	if err != nil {
		t.Fatal(err)
	}
	pol, err := client.SetPolicy(ctx, &api.SetPolicyRequest{Initdata: doc})
	if err != nil {
		t.Fatal(err)
	}
	if pol.Tee != "none" || pol.Attested || pol.PolicyHash != policy.HashHex(policy.AllowAll()) {
		t.Errorf("SetPolicy = %+v", pol)
	}
	if _, err := client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1", Hostname: "agent-vm-test"}); err != nil {
		t.Fatal(err)
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "busybox", Path: testimage.BusyboxExt4(t, nil), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}

	stdio := func(id, exec string, s api.Stream) net.Conn {
		c, err := vm.Dial(ctx, api.StdioPort)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (api.StdioHeader{ContainerID: id, ExecID: exec, Stream: s}).WriteTo(c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// createWith creates a container as CRI would; mod adjusts the spec.
	createWith := func(id string, st *api.Stdio, mod func(*specs.Spec), args ...string) {
		t.Helper()
		spec := &specs.Spec{
			Version: specs.Version,
			Process: &specs.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", Capabilities: criCapabilities()},
			Root:    &specs.Root{Path: "rootfs"},
			Mounts: []specs.Mount{
				{Destination: "/proc", Type: "proc", Source: "proc"},
				{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
				{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
				{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"ro"}},
				{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro"}},
				{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/kubelet/pods/x/etc-hosts", Options: []string{"rbind", "ro"}},
				{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/sandboxes/x/shm", Options: []string{"rbind"}},
			},
			Linux: &specs.Linux{
				Namespaces: []specs.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "network", Path: "/var/run/netns/cni-x"}, {Type: "uts"}, {Type: "ipc"}, {Type: "cgroup"}},
				Resources: &specs.LinuxResources{
					Pids:   &specs.LinuxPids{Limit: ptr(int64(100))},
					Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20))},
					CPU:    &specs.LinuxCPU{Quota: ptr(int64(50000)), Period: ptr(uint64(100000))},
				},
			},
		}
		if mod != nil {
			mod(spec)
		}
		raw, _ := json.Marshal(spec)
		_, err := client.CreateContainer(ctx, &api.CreateContainerRequest{
			ContainerId: id, Spec: raw, Stdio: st,
			Rootfs:      &api.BlockDevice{Serial: "busybox", Fstype: "ext4", ReadOnly: true},
			SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts", Content: []byte("10.0.0.9 pod1\n"), Mode: 0o644}},
		})
		if err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	create := func(id string, st *api.Stdio, args ...string) { t.Helper(); createWith(id, st, nil, args...) }

	// Output, exit code, hostname, cgroup and shared file seen inside.
	out, errOut := stdio("c1", "", api.StreamStdout), stdio("c1", "", api.StreamStderr)
	create("c1", &api.Stdio{Stdout: true, Stderr: true}, "/bin/sh", "-c", `hostname; cat /etc/hosts; cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; i=1; while [ $i -le 10000 ]; do echo "line $i"; i=$((i+1)); done; echo bye >&2; exit 3`)
	if _, err := client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	lines := make(chan []string, 1)
	go func() {
		var got []string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			got = append(got, sc.Text())
		}
		lines <- got
	}()
	w, err := client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait c1: %+v %v", w, err)
	}
	got := <-lines
	want := []string{"agent-vm-test", "10.0.0.9 pod1", "100", "67108864", "50000 100000", "line 1"}
	if len(got) != 10005 || !slices.Equal(got[:len(want)], want) || got[10004] != "line 10000" {
		t.Errorf("c1 wrote %d lines, starting %q; want %q", len(got), got[:min(len(want), len(got))], want)
	}
	if b, _ := io.ReadAll(errOut); string(b) != "bye\n" {
		t.Errorf("c1 stderr %q", b)
	}

	// A second container, an exec in it, SIGKILL.
	create("c2", nil, "/bin/sh", "-c", `trap "" TERM; while true; do sleep 1; done`)
	if _, err := client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c2"}); err != nil {
		t.Fatal(err)
	}
	eout := stdio("c2", "e1", api.StreamStdout)
	proc, _ := json.Marshal(specs.Process{Args: []string{"/bin/sh", "-c", "ls /; exit 4"}, Env: []string{"PATH=/bin"}, Cwd: "/", Capabilities: criCapabilities()})
	if _, err := client.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "c2", ExecId: "e1", Process: proc, Stdio: &api.Stdio{Stdout: true}}); err != nil {
		t.Fatal(err)
	}
	if w, err := client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c2", ExecId: "e1"}); err != nil || w.ExitStatus != 4 {
		t.Fatalf("wait e1: %+v %v", w, err)
	}
	if b, _ := io.ReadAll(eout); !strings.Contains(string(b), "bin\n") {
		t.Errorf("exec output %q", b)
	}
	ps, err := client.ListProcesses(ctx, &api.ContainerRequest{ContainerId: "c2"})
	if err != nil || len(ps.Pids) == 0 {
		t.Errorf("ps: %+v %v", ps, err)
	}
	ttyExec(ctx, t, client, stdio)
	statsAndUpdate(ctx, t, client)
	if _, err := client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c2", Signal: 9, All: true}); err != nil {
		t.Fatal(err)
	}
	if w, err := client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c2"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait c2: %+v %v", w, err)
	}

	// Pause stops a ticking container (cgroup v2 freezer), resume restarts it.
	ticks := stdio("c3", "", api.StreamStdout)
	create("c3", &api.Stdio{Stdout: true}, "/bin/sh", "-c", "while true; do echo tick; sleep 0.1; done")
	if _, err := client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c3"}); err != nil {
		t.Fatal(err)
	}
	pauseResume(ctx, t, client, ticks)

	// An OOM kill in a container that lives on is reported by the watch of
	// memory.events alone (no exit to trigger a look).
	oomOut := stdio("c4", "", api.StreamStdout)
	createWith("c4", &api.Stdio{Stdout: true}, func(s *specs.Spec) { s.Linux.Resources.Memory.Limit = ptr(int64(16 << 20)) },
		"/bin/sh", "-c", `tail /dev/zero; echo "tail: $?"; sleep 1000`)
	oomSeen := make(chan string, 1)
	go func() {
		ev, err := client.WaitOOM(ctx, &api.Empty{})
		if err != nil {
			t.Errorf("WaitOOM: %v", err)
		}
		oomSeen <- ev.GetContainerId()
	}()
	if _, err := client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c4"}); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(oomOut).ReadString('\n'); err != nil || line != "tail: 137\n" {
		t.Fatalf("c4 said %q %v: tail was not OOM-killed", line, err)
	}
	select {
	case id := <-oomSeen:
		if id != "c4" {
			t.Errorf("OOM event for %q", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OOM event 10 s after the kill")
	}

	// A new connection (a restarted shim) picks up where the old one was:
	// c3 still runs, the exit of c1 is still known.
	conn.Close()
	client, _ = dialAgent(ctx, t, vm)
	if w, err := client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c1"}); err != nil || w.ExitStatus != 3 {
		t.Errorf("wait c1 on a new connection: %+v %v", w, err)
	}
	if ps, err := client.ListProcesses(ctx, &api.ContainerRequest{ContainerId: "c3"}); err != nil || len(ps.Pids) == 0 {
		t.Errorf("c3 after reconnecting: %+v %v", ps, err)
	}

	// A paused container can still be killed (cgroup v2 lets fatal signals
	// through the freezer).
	if _, err := client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "c3"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c3", "c4"} {
		if _, err := client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: id, Signal: 9, All: true}); err != nil {
			t.Fatal(err)
		}
		if w, err := client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: id}); err != nil || w.ExitStatus != 137 {
			t.Fatalf("wait %s: %+v %v", id, w, err)
		}
	}
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		if _, err := client.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
	}
	t.Logf("whole run %v", time.Since(start).Round(time.Millisecond))
}

func ptr[T any](v T) *T { return &v }

type stdioDialer func(id, exec string, s api.Stream) net.Conn

// readUntil reads from r until what it read ends with want.
func readUntil(t *testing.T, r net.Conn, want string) string {
	t.Helper()
	var got []byte
	buf := make([]byte, 4096)
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer r.SetReadDeadline(time.Time{})
	for !bytes.HasSuffix(got, []byte(want)) {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read %q, waiting for %q: %v", got, want, err)
		}
	}
	return string(got)
}

// ttyExec runs a terminal exec in c2 and resizes its terminal: stty inside
// sees both sizes, and the line discipline's \r\n.
func ttyExec(ctx context.Context, t *testing.T, client api.AgentService, stdio stdioDialer) {
	t.Helper()
	in, out := stdio("c2", "tty", api.StreamStdin), stdio("c2", "tty", api.StreamStdout)
	proc, _ := json.Marshal(specs.Process{Args: []string{"/bin/sh", "-c", "stty size; read x; stty size"}, Env: []string{"PATH=/bin"}, Cwd: "/", Capabilities: criCapabilities(),
		Terminal: true, ConsoleSize: &specs.Box{Height: 24, Width: 80}})
	if _, err := client.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "c2", ExecId: "tty", Process: proc,
		Stdio: &api.Stdio{Terminal: true, Stdin: true, Stdout: true}}); err != nil {
		t.Fatal(err)
	}
	readUntil(t, out, "24 80\r\n")
	if _, err := client.ResizePty(ctx, &api.ResizePtyRequest{ContainerId: "c2", ExecId: "tty", Width: 132, Height: 43}); err != nil {
		t.Fatal(err)
	}
	in.Write([]byte("go\n"))
	if got := readUntil(t, out, "43 132\r\n"); got != "go\r\n43 132\r\n" {
		t.Errorf("terminal after resize: %q", got)
	}
	if w, err := client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c2", ExecId: "tty"}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("wait tty: %+v %v", w, err)
	}
}

func stats(ctx context.Context, t *testing.T, client api.AgentService, id string) *v2stats.Metrics {
	t.Helper()
	resp, err := client.StatsContainer(ctx, &api.ContainerRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(&anypb.Any{TypeUrl: resp.TypeUrl, Value: resp.Value})
	if err != nil {
		t.Fatalf("decode stats of type %q: %v", resp.TypeUrl, err)
	}
	m, ok := v.(*v2stats.Metrics)
	if !ok {
		t.Fatalf("stats are %T (%s), want cgroup v2 metrics", v, resp.TypeUrl)
	}
	return m
}

// statsAndUpdate reads c2's cgroup v2 metrics, as CRI does, and raises its
// memory limit with runc update.
func statsAndUpdate(ctx context.Context, t *testing.T, client api.AgentService) {
	t.Helper()
	m := stats(ctx, t, client, "c2")
	t.Logf("c2: cpu %d µs, memory %d of %d bytes, %d pids", m.GetCPU().GetUsageUsec(), m.GetMemory().GetUsage(), m.GetMemory().GetUsageLimit(), m.GetPids().GetCurrent())
	if m.GetCPU().GetUsageUsec() == 0 || m.GetMemory().GetUsage() == 0 || m.GetMemory().GetUsageLimit() != 64<<20 || m.GetPids().GetCurrent() == 0 {
		t.Errorf("c2 stats %v", m)
	}
	if _, err := client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "c2", Resources: []byte(`{"memory":{"limit":134217728},"pids":{"limit":50}}`)}); err != nil {
		t.Fatal(err)
	}
	if m := stats(ctx, t, client, "c2"); m.GetMemory().GetUsageLimit() != 128<<20 || m.GetPids().GetLimit() != 50 {
		t.Errorf("after update: memory limit %d, pids limit %d", m.GetMemory().GetUsageLimit(), m.GetPids().GetLimit())
	}
}

// pauseResume checks that a paused container writes nothing and a resumed
// one goes on.
func pauseResume(ctx context.Context, t *testing.T, client api.AgentService, ticks net.Conn) {
	t.Helper()
	readUntil(t, ticks, "tick\n")
	if _, err := client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "c3"}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	// What was written before the pause may still be on its way.
	ticks.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		if _, err := ticks.Read(buf); err != nil {
			break
		}
	}
	ticks.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := ticks.Read(buf); err == nil {
		t.Fatalf("paused container wrote %q", buf[:n])
	}
	if _, err := client.ResumeContainer(ctx, &api.ContainerRequest{ContainerId: "c3"}); err != nil {
		t.Fatal(err)
	}
	ticks.SetReadDeadline(time.Time{})
	readUntil(t, ticks, "tick\n")
}

// dialAgent connects to the agent once it listens.
func dialAgent(ctx context.Context, t *testing.T, vm hypervisor.VM) (api.AgentService, *ttrpc.Client) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		conn, err := vm.Dial(ctx, api.AgentPort)
		if err == nil {
			client := ttrpc.NewClient(conn)
			t.Cleanup(func() { client.Close() })
			c := api.NewAgentClient(client)
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = c.Health(hctx, &api.HealthRequest{})
			cancel()
			if err == nil {
				return c, client
			}
			client.Close()
		}
		select {
		case <-vm.Done():
			t.Fatalf("VM ended before the agent answered: %v", vm.Err())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// criCapabilities are the capabilities containerd's CRI gives an
// unprivileged container (and its execs); a process without any would keep
// every capability of the VM's root, which the agent refuses.
func criCapabilities() *specs.LinuxCapabilities {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	return &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
}
