package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/contrast-vm/contrast/agent/reaper"
	"github.com/contrast-vm/contrast/agent/testimage"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/internal/testenv"
	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testReaper is the one reaper of the test binary: two reapers would steal
// each other's exits, as two wait4(-1) loops in one process do.
var testReaper *reaper.Reaper

func TestMain(m *testing.M) {
	if os.Getenv(pidHolderTestEnv) == "1" {
		RunPIDHolder() // for TestPIDHolderReapsOrphans; never returns
	}
	// Container processes come back to the test process when runc exits.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	testReaper = reaper.Start(context.Background())
	os.Exit(m.Run())
}

// loopDevices finds "virtio serials" on loop devices the test attached.
type loopDevices map[string]string

func (d loopDevices) Find(ctx context.Context, serial string) (string, error) {
	if dev, ok := d[serial]; ok {
		return dev, nil
	}
	<-ctx.Done()
	return "", fmt.Errorf("no block device with serial %q appeared: %w", serial, ctx.Err())
}

// runcBinary is the runc the guest ships if it was built (hack/deps.sh),
// else the host's.
func runcBinary(t *testing.T) string {
	if p := os.Getenv("CONTRAST_RUNC"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	for _, p := range []string{filepath.Join(home, ".cache/contrast/bin/runc-static"), "/usr/sbin/runc", "/usr/bin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Missing(t, "deps", "no runc binary (runc-static, or Debian's runc; CONTRAST_RUNC overrides)")
	return ""
}

type harness struct {
	t       *testing.T
	client  api.AgentService
	agent   string // the agent's socket, for more connections
	stdio   string
	runDir  string
	runcDir string
	cgroup  string // the containers' cgroup parent
	// svc is the service behind client, for tests that must see its
	// bookkeeping to order their requests.
	svc *Service
}

// newHarness serves a Service under the allow-all policy.
func newHarness(t *testing.T, opts ...func(*Config)) *harness {
	return newHarnessPolicy(t, policy.AllowAll(), opts...)
}

// hostTestConfig is a Config for a Service the tests run on the host: state
// under dir, runc at runcBinary, no block devices, and never the host's
// hostname or network touched (the agent is not the VM's init here).
func hostTestConfig(dir, runcBinary string) Config {
	cfg := DefaultConfig(testReaper)
	cfg.Version = "test"
	cfg.RunDir = filepath.Join(dir, "run")
	cfg.RuncRoot = filepath.Join(dir, "runc")
	cfg.RuncBinary = runcBinary
	cfg.Devices = loopDevices{}
	cfg.SetHostname = nil
	cfg.ConfigureNetwork = nil
	return cfg
}

// testBinary is the running test binary: a RuncBinary for services that run
// no container (only its existence is checked).
func testBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// newHarnessPolicy serves a Service (no TEE: a development VM) and installs
// module as its policy, as the shim does first.
func newHarnessPolicy(t *testing.T, module []byte, opts ...func(*Config)) *harness {
	testimage.Require(t)
	rb := runcBinary(t)
	run := testimage.ReaperRunner(testReaper)
	dev := testimage.Loop(t, run, testimage.BusyboxExt4(t, run))
	dir := t.TempDir()
	cfg := hostTestConfig(dir, rb)
	// A cgroup parent of its own, removed at the end from every hierarchy
	// (cgroup v1 hosts have one per controller).
	// Named after the test's own temp dir (TestX123/001), unique per test.
	cfg.CgroupParent = fmt.Sprintf("/contrast-agent-test-%d-%s", os.Getpid(), filepath.Base(filepath.Dir(dir)))
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + cfg.CgroupParent)
		dirs = append(dirs, "/sys/fs/cgroup"+cfg.CgroupParent)
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
				t.Errorf("remove test cgroup: %v", err)
			}
		}
	})
	cfg.Devices = loopDevices{"img1": dev}
	cfg.DeviceTimeout = 300 * time.Millisecond
	cfg.StdioTimeout = 5 * time.Second
	cfg.StdinGrace = 500 * time.Millisecond
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, agentAddr, stdioAddr := serveOverUnix(t, svc, dir, func() {
		// A test that failed half-way leaves containers: remove them, so
		// that its failure does not leave processes, mounts or cgroups.
		svc.mu.Lock()
		var left []string
		for id := range svc.containers {
			left = append(left, id)
		}
		svc.mu.Unlock()
		for _, id := range left {
			if _, err := svc.RemoveContainer(context.Background(), &api.RemoveContainerRequest{ContainerId: id}); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	t.Logf("runc %s, image on %s", rb, dev)
	if _, err := client.SetPolicy(context.Background(), setPolicy(module)); err != nil {
		t.Fatalf("install policy: %v", err)
	}
	return &harness{t: t, client: client, agent: agentAddr, stdio: stdioAddr,
		runDir: cfg.RunDir, runcDir: cfg.RuncRoot, cgroup: cfg.CgroupParent, svc: svc}
}

// serveOverUnix serves svc on unix sockets in dir, as the shim reaches the
// agent over vsock, and returns a client and the two socket paths; the
// port-forward socket is forwardSocket in dir. At the
// end of the test beforeStop (if any) runs, then the server stops.
func serveOverUnix(t *testing.T, svc *Service, dir string, beforeStop func()) (client api.AgentService, agentAddr, stdioAddr string) {
	t.Helper()
	agentL, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	stdioL, err := net.Listen("unix", filepath.Join(dir, "stdio.sock"))
	if err != nil {
		t.Fatal(err)
	}
	forwardL, err := net.Listen("unix", filepath.Join(dir, forwardSocket))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- svc.Serve(ctx, Listeners{Agent: agentL, Stdio: stdioL, Forward: forwardL}) }()
	conn, err := net.Dial("unix", agentL.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		if beforeStop != nil {
			beforeStop()
		}
		c.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return api.NewAgentClient(c), agentL.Addr().String(), stdioL.Addr().String()
}

// openStdio opens the host side of one stream.
func (h *harness) openStdio(id, exec string, s api.Stream) *net.UnixConn {
	c, err := net.Dial("unix", h.stdio)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	if _, err := (api.StdioHeader{ContainerID: id, ExecID: exec, Stream: s}).WriteTo(c); err != nil {
		h.t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

// podSpec is a container spec as containerd's CRI plugin writes it.
func podSpec(args ...string) *specs.Spec {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args, Env: []string{"PATH=/bin", "HOSTNAME=pod"}, Cwd: "/",
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			ApparmorProfile: "cri-containerd.apparmor.d",
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "pod",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/kubelet/pods/u1d/etc-hosts", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/5a5/shm", Options: []string{"rbind", "rprivate", "rw"}},
		},
		Hooks: &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/host-only-hook"}}},
		Linux: &specs.Linux{
			Resources:   &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			CgroupsPath: "kubepods-besteffort-podu1d.slice:cri-containerd:x",
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1234"},
			},
			MaskedPaths:   []string{"/proc/kcore", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

func (h *harness) create(id string, spec *specs.Spec, st *api.Stdio) uint32 {
	h.t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := h.client.CreateContainer(context.Background(), &api.CreateContainerRequest{
		ContainerId: id, Spec: raw, Stdio: st,
		Rootfs:      &api.BlockDevice{Serial: "img1", Fstype: "ext4", ReadOnly: true},
		SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts", Content: []byte("10.0.0.7 pod\n"), Mode: 0o644}},
	})
	if err != nil {
		h.t.Fatalf("CreateContainer %s: %v", id, err)
	}
	return resp.Pid
}

func (h *harness) wait(ctx context.Context, id, exec string) (*api.WaitProcessResponse, error) {
	return h.client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: id, ExecId: exec})
}

func (h *harness) exec(id, execID string, st *api.Stdio, args ...string) {
	h.t.Helper()
	proc, _ := json.Marshal(specs.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", Capabilities: &specs.LinuxCapabilities{}})
	if _, err := h.client.ExecProcess(context.Background(), &api.ExecProcessRequest{ContainerId: id, ExecId: execID, Process: proc, Stdio: st}); err != nil {
		h.t.Fatalf("exec %s: %v", execID, err)
	}
}

func TestService(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()

	health, err := h.client.Health(ctx, &api.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var u unix.Utsname
	unix.Uname(&u)
	if health.Version != "test" || health.KernelRelease != unix.ByteSliceToString(u.Release[:]) {
		t.Errorf("health %+v", health)
	}
	raw, _ := json.Marshal(podSpec("true"))
	_, err = h.client.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "early", Spec: raw, Rootfs: &api.BlockDevice{Serial: "img1", Fstype: "ext4"}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("create before CreateSandbox: %v", err)
	}
	if _, err := h.client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1", Hostname: "pod"}); err != nil {
		t.Fatal(err)
	}

	t.Run("output and exit code", func(t *testing.T) {
		// stdout connects before the container exists, stderr after.
		stdout := h.openStdio("c1", "", api.StreamStdout)
		h.create("c1", podSpec("/bin/sh", "-c", `i=1; while [ $i -le 10000 ]; do echo "line $i"; i=$((i+1)); done; echo bye >&2; exit 3`),
			&api.Stdio{Stdout: true, Stderr: true})
		stderr := h.openStdio("c1", "", api.StreamStderr)
		if _, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c1"}); err != nil {
			t.Fatal(err)
		}
		// A slow reader: the container is held back, nothing is lost.
		lines := make(chan []string, 1)
		go func() {
			var got []string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				got = append(got, sc.Text())
				if len(got)%1000 == 0 {
					time.Sleep(20 * time.Millisecond)
				}
			}
			lines <- got
		}()
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		w, err := h.wait(wctx, "c1", "")
		if err != nil {
			t.Fatal(err)
		}
		if w.ExitStatus != 3 || time.Since(time.Unix(0, w.ExitedAtUnixNano)) > time.Minute || w.RuncExecNanos != 0 {
			t.Errorf("wait: %+v, want exit 3 just now (and no exec time: an init process)", w)
		}
		// Everything is on the connection by now: the reader ends promptly.
		var got []string
		select {
		case got = <-lines:
		case <-time.After(10 * time.Second):
			t.Fatal("stdout did not end after WaitProcess returned")
		}
		if len(got) != 10000 || got[0] != "line 1" || got[9999] != "line 10000" {
			t.Fatalf("got %d lines, first %q", len(got), got[:min(1, len(got))])
		}
		for i, l := range got {
			if l != fmt.Sprintf("line %d", i+1) {
				t.Fatalf("line %d is %q", i+1, l)
			}
		}
		if b, err := io.ReadAll(stderr); err != nil || string(b) != "bye\n" {
			t.Errorf("stderr %q %v", b, err)
		}
		// Waiting again gives the same answer.
		if w2, err := h.wait(ctx, "c1", ""); err != nil || w2.ExitStatus != 3 {
			t.Errorf("second wait %+v %v", w2, err)
		}
		if _, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c1", Signal: 9}); status.Code(err) != codes.NotFound {
			t.Errorf("signal to exited init: %v, want NotFound", err)
		}
		// With all, runc is asked, and signals what is left (nothing).
		if _, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c1", Signal: 9, All: true}); err != nil {
			t.Errorf("signal all to exited container: %v", err)
		}
	})

	t.Run("exec, stdin, signals", func(t *testing.T) {
		initOut := h.openStdio("c2", "", api.StreamStdout)
		pid := h.create("c2", podSpec("/bin/sh", "-c", `trap "" TERM; echo ready; while true; do sleep 1; done`), &api.Stdio{Stdout: true})
		if _, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c2"}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c2"}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("second start: %v", err)
		}
		initLines := bufio.NewReader(initOut)
		if l, err := initLines.ReadString('\n'); err != nil || l != "ready\n" {
			t.Fatalf("init said %q %v", l, err)
		}

		// Exec with output and an exit code; the host file came as a shared file.
		out := h.openStdio("c2", "e1", api.StreamStdout)
		h.exec("c2", "e1", &api.Stdio{Stdout: true}, "/bin/sh", "-c", "cat /etc/hosts /etc/motd; echo $$ > /tmp/x; touch /etc/new; exit 5")
		w, err := h.wait(ctx, "c2", "e1")
		if err != nil || w.ExitStatus != 5 {
			t.Fatalf("exec e1: %+v %v", w, err)
		}
		// The guest's own time of the exec, runc included.
		if d := time.Duration(w.RuncExecNanos); d <= 0 || d > time.Minute {
			t.Errorf("exec e1: runc exec took %v by the agent's clock, want a positive time under a minute", d)
		}
		if b, _ := io.ReadAll(out); string(b) != "10.0.0.7 pod\nfrom the image\n" {
			t.Errorf("exec e1 output %q", b)
		}

		// stdin: cat ends when CloseStdin closes its stdin, even though the
		// host keeps its connection open.
		in := h.openStdio("c2", "e2", api.StreamStdin)
		catOut := h.openStdio("c2", "e2", api.StreamStdout)
		h.exec("c2", "e2", &api.Stdio{Stdin: true, Stdout: true}, "cat")
		if _, err := in.Write([]byte("hello\nworld\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.CloseStdin(ctx, &api.ProcessRequest{ContainerId: "c2", ExecId: "e2"}); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if w, err := h.wait(wctx, "c2", "e2"); err != nil || w.ExitStatus != 0 {
			t.Fatalf("cat: %+v %v", w, err)
		}
		if b, _ := io.ReadAll(catOut); string(b) != "hello\nworld\n" {
			t.Errorf("cat output %q", b)
		}

		ps, err := h.client.ListProcesses(ctx, &api.ContainerRequest{ContainerId: "c2"})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(ps.Pids, pid) {
			t.Errorf("ListProcesses %v lacks init pid %d", ps.Pids, pid)
		}

		// SIGTERM is ignored, SIGKILL is not.
		if _, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c2", Signal: uint32(unix.SIGTERM)}); err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		defer scancel()
		if w, err := h.wait(sctx, "c2", ""); err == nil {
			t.Fatalf("init ended on SIGTERM it ignores: %+v", w)
		}
		if _, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c2", Signal: uint32(unix.SIGKILL), All: true}); err != nil {
			t.Fatal(err)
		}
		if w, err := h.wait(wctx, "c2", ""); err != nil || w.ExitStatus != 137 {
			t.Fatalf("after SIGKILL: %+v %v", w, err)
		}
		if rest, _ := io.ReadAll(initLines); len(rest) != 0 {
			t.Errorf("init wrote %q", rest)
		}
		proc, _ := json.Marshal(specs.Process{Args: []string{"true"}, Cwd: "/", Capabilities: &specs.LinuxCapabilities{}})
		if _, err := h.client.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "c2", ExecId: "e3", Process: proc}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("exec in a stopped container: %v", err)
		}
	})

	t.Run("remove", func(t *testing.T) {
		for _, id := range []string{"c1", "c2", "c1", "never-created"} {
			if _, err := h.client.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: id}); err != nil {
				t.Fatalf("remove %s: %v", id, err)
			}
		}
		h.assertClean()
		if _, err := h.wait(ctx, "c1", ""); status.Code(err) != codes.NotFound {
			t.Errorf("wait on a removed container: %v", err)
		}
	})
}

// TestServiceRefuses checks that bad requests fail with a message naming
// what is wrong and leave nothing behind.
func TestServiceRefuses(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if _, err := h.client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second CreateSandbox: %v", err)
	}
	good := podSpec("true")
	hostBind := podSpec("true")
	hostBind.Mounts = append(hostBind.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/pods/u1d/volumes/data", Options: []string{"rbind"}})
	tty := podSpec("sh")
	tty.Process.Terminal = true
	badArgs := podSpec()
	runcFails := podSpec("/does/not/exist")
	runcFailsTTY := podSpec("/does/not/exist")
	runcFailsTTY.Process.Terminal = true
	// Each case has an id of its own: the policy gate keeps the id of a
	// create it allowed even when the service then fails it (see
	// TestFailedCreateFreesID).
	for _, tc := range []struct {
		name    string
		id      string
		spec    any
		rootfs  *api.BlockDevice
		stdio   *api.Stdio
		code    codes.Code
		wantErr []string
	}{
		{name: "missing device", id: "r1", spec: good, rootfs: &api.BlockDevice{Serial: "nope", Fstype: "ext4"}, code: codes.Unknown, wantErr: []string{"r1", `serial "nope"`}},
		{name: "wrong fstype", id: "r2", spec: good, rootfs: &api.BlockDevice{Serial: "img1", Fstype: "erofs"}, code: codes.Unknown, wantErr: []string{"r2", "serial img1", "erofs"}},
		{name: "unsupported fstype", id: "r3", spec: good, rootfs: &api.BlockDevice{Serial: "img1", Fstype: "nfs"}, code: codes.InvalidArgument, wantErr: []string{"r3", `"nfs"`}},
		{name: "bad serial", id: "r4", spec: good, rootfs: &api.BlockDevice{Serial: "../x", Fstype: "ext4"}, code: codes.InvalidArgument, wantErr: []string{"r4", `"../x"`}},
		{name: "no rootfs", id: "r5", spec: good, code: codes.InvalidArgument, wantErr: []string{"r5", "rootfs"}},
		{name: "host bind mount", id: "r6", spec: hostBind, code: codes.InvalidArgument, wantErr: []string{"r6", "/var/lib/kubelet/pods/u1d/volumes/data", `"/data"`}},
		{name: "terminal in spec only", id: "r7", spec: tty, stdio: &api.Stdio{Stdout: true}, code: codes.InvalidArgument, wantErr: []string{"r7", "process.terminal is true", "terminal false"}},
		{name: "terminal in stdio only", id: "r8", spec: good, stdio: &api.Stdio{Terminal: true, Stdout: true}, code: codes.InvalidArgument, wantErr: []string{"r8", "process.terminal is false", "terminal true"}},
		{name: "terminal with stderr", id: "r9", spec: tty, stdio: &api.Stdio{Terminal: true, Stdout: true, Stderr: true}, code: codes.InvalidArgument, wantErr: []string{"r9", "no stderr stream"}},
		{name: "terminal without stdout", id: "r10", spec: tty, stdio: &api.Stdio{Terminal: true, Stdin: true}, code: codes.InvalidArgument, wantErr: []string{"r10", "needs a stdout stream"}},
		{name: "no args", id: "r11", spec: badArgs, code: codes.InvalidArgument, wantErr: []string{"r11", "process.args: empty"}},
		{name: "not json", id: "r12", spec: "{", code: codes.InvalidArgument, wantErr: []string{"r12", "spec", "unexpected EOF"}},
		{name: "bad id", id: "../etc", spec: good, code: codes.InvalidArgument, wantErr: []string{`"../etc"`}},
		{name: "runc fails", id: "r13", spec: runcFails, code: codes.Unknown, wantErr: []string{"r13", "runc create", "/does/not/exist"}},
		{name: "runc fails with a terminal", id: "r14", spec: runcFailsTTY, stdio: &api.Stdio{Terminal: true, Stdin: true, Stdout: true}, code: codes.Unknown, wantErr: []string{"r14", "runc create", "/does/not/exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var raw []byte
			if s, ok := tc.spec.(string); ok {
				raw = []byte(s)
			} else {
				raw, _ = json.Marshal(tc.spec)
			}
			rootfs := tc.rootfs
			if rootfs == nil && tc.name != "no rootfs" {
				rootfs = &api.BlockDevice{Serial: "img1", Fstype: "ext4"}
			}
			_, err := h.client.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: tc.id, Spec: raw, Rootfs: rootfs, Stdio: tc.stdio,
				SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts", Content: []byte("r")}}})
			if err == nil {
				t.Fatal("accepted")
			}
			if status.Code(err) != tc.code {
				t.Errorf("code %v, want %v (%v)", status.Code(err), tc.code, err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			t.Logf("error: %v", err)
			h.assertClean()
		})
	}

	// A container that works, and one that may not reuse its id: the policy
	// gate refuses that before the service would.
	h.create("c1", good, nil)
	raw, _ := json.Marshal(good)
	if _, err := h.client.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "c1", Spec: raw, Rootfs: &api.BlockDevice{Serial: "img1", Fstype: "ext4"},
		SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts"}}}); status.Code(err) != codes.PermissionDenied || !strings.Contains(fmt.Sprint(err), `container id "c1" exists already`) {
		t.Errorf("duplicate id: %v", err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"exec before start", func() error {
			_, err := h.client.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: []byte(`{"args":["true"],"cwd":"/","capabilities":{}}`)})
			return err
		}, codes.FailedPrecondition},
		{"signal 0", func() error {
			_, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c1", Signal: 0})
			return err
		}, codes.InvalidArgument},
		{"unknown exec", func() error {
			_, err := h.client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c1", ExecId: "nope"})
			return err
		}, codes.NotFound},
		{"unknown container", func() error {
			_, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c9"})
			return err
		}, codes.NotFound},
	} {
		if err := tc.call(); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want code %v", tc.name, err, tc.code)
		}
	}
	// Removing a created, never started container kills its runc init.
	if _, err := h.client.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.assertClean()
}

// TestServicePolicyDenial checks that a request the policy denies is
// refused once decoded, before the service acts on it, with the policy's
// reason, and leaves nothing behind.
func TestServicePolicyDenial(t *testing.T) {
	h := newHarnessPolicy(t, []byte(`package agent_policy

CreateSandbox := true

CreateContainer := {"allow": false, "reason": "container is not in the policy"} if {
	input.container_id == "forbidden"
} else := true
`))
	ctx := context.Background()
	if _, err := h.client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(podSpec("true"))
	_, err := h.client.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "forbidden", Spec: raw,
		Rootfs: &api.BlockDevice{Serial: "img1", Fstype: "ext4"}, SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts"}}})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "CreateContainer") || !strings.Contains(err.Error(), "container is not in the policy") {
		t.Fatalf("denied create: %v", err)
	}
	h.assertClean()
}

// assertClean checks that no container leaves mounts, bundles or runc state.
func (h *harness) assertClean() {
	h.t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		h.t.Fatal(err)
	}
	if strings.Contains(string(mi), h.runDir) {
		h.t.Errorf("mounts left under %s", h.runDir)
	}
	if left, _ := filepath.Glob(filepath.Join(h.runDir, "tty-*")); len(left) > 0 {
		h.t.Errorf("console sockets left: %v", left)
	}
	for _, d := range []string{filepath.Join(h.runDir, "containers"), h.runcDir} {
		entries, err := os.ReadDir(d)
		if err != nil {
			h.t.Fatal(err)
		}
		if len(entries) > 0 {
			var left []string
			filepath.WalkDir(d, func(p string, _ os.DirEntry, _ error) error { left = append(left, p); return nil })
			h.t.Errorf("left in %s:\n%s", d, strings.Join(left, "\n"))
		}
	}
}
