package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/agent"
	"github.com/contrast-vm/contrast/agent/reaper"
	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// The test-only hypervisor of the task service's unit tests: its "VM" is
// the real guest agent (package agent, real runc, real mounts) serving real
// ttrpc on unix sockets, in a child process of the test binary. A child,
// not a goroutine: the agent reaps every child with wait4(-1), which in the
// test process would steal the exits of what the shim itself runs (mkfs,
// losetup). Disks are attached as loop devices, whose names the child finds
// in a directory of the VM's. Killing the child is a VM that dies.

// agentVMEnv, set, makes the test binary serve the agent instead of
// running tests: "<socket dir>:<runc binary>:<cgroup parent>".
const agentVMEnv = "CONTRAST_SHIM_TEST_AGENT_VM"

func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == agent.PIDHolderArg {
		agent.RunPIDHolder()
	}
	if v := os.Getenv(agentVMEnv); v != "" {
		if err := serveAgentVM(v); err != nil {
			fmt.Fprintln(os.Stderr, "agent VM:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// deviceFiles finds the "virtio serial" of a disk the parent attached: a
// file named by the serial holding the loop device's path.
type deviceFiles string

func (d deviceFiles) Find(ctx context.Context, serial string) (string, error) {
	for {
		if b, err := os.ReadFile(filepath.Join(string(d), serial)); err == nil {
			return strings.TrimSpace(string(b)), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no block device with serial %q appeared: %w", serial, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// unencryptedTestScratch stands in for the guest's dm-crypt scratch disk,
// which this host cannot open (its kernel has no device-mapper; the
// integration tests show the real one in a VM): it checks that the disk
// the shim attached is there and gives the volumes a plain directory.
type unencryptedTestScratch struct{}

func (unencryptedTestScratch) Open(_ context.Context, device, dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(device, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fmt.Errorf("scratch disk %s is no block device (%v)", device, err)
	}
	return os.MkdirAll(dir, 0o700)
}

// serveAgentVM runs in the child: the agent, a subreaper for its
// containers, until SIGTERM (then it removes its containers, as a VM's
// shutdown would) or SIGUSR1 (then it force-removes them and dies at once,
// mid-request, as a crashed VM).
func serveAgentVM(arg string) error {
	parts := strings.SplitN(arg, ":", 3)
	if len(parts) != 3 {
		return fmt.Errorf("malformed %s %q", agentVMEnv, arg)
	}
	dir, runcBinary, cgroupParent := parts[0], parts[1], parts[2]
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return err
	}
	// every request in the console, as a VM's agent logs at debug level
	if err := log.SetLevel("debug"); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := reaper.Start(ctx)
	cfg := agent.DefaultConfig(r)
	cfg.Version = "agent-vm-test"
	cfg.RunDir = filepath.Join(dir, "run")
	cfg.RuncRoot = filepath.Join(dir, "runc")
	cfg.RuncBinary = runcBinary
	cfg.CgroupParent = cgroupParent
	cfg.Devices = deviceFiles(filepath.Join(dir, "devices"))
	cfg.DeviceTimeout = 10 * time.Second
	cfg.StdioTimeout = 10 * time.Second
	cfg.StdinGrace = 500 * time.Millisecond
	cfg.SetHostname = nil
	cfg.ConfigureNetwork = nil
	cfg.AttestationEndpoint = false
	cfg.Scratch = unencryptedTestScratch{}
	svc, err := agent.NewService(cfg)
	if err != nil {
		return err
	}
	agentL, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		return err
	}
	stdioL, err := net.Listen("unix", filepath.Join(dir, "stdio.sock"))
	if err != nil {
		return err
	}
	forwardL, err := net.Listen("unix", filepath.Join(dir, "forward.sock"))
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR1)
	served := make(chan error, 1)
	go func() { served <- svc.Serve(ctx, agent.Listeners{Agent: agentL, Stdio: stdioL, Forward: forwardL}) }()
	select {
	case err := <-served:
		return err
	case sig := <-sigs:
		forceRemoveContainers(r, cfg)
		if sig == syscall.SIGUSR1 {
			os.Exit(3)
		}
		cancel()
		return <-served
	}
}

// forceRemoveContainers kills and deletes every runc container of the VM
// and unmounts what the agent mounted.
func forceRemoveContainers(r *reaper.Reaper, cfg agent.Config) {
	entries, _ := os.ReadDir(cfg.RuncRoot)
	for _, e := range entries {
		cmd := exec.Command(cfg.RuncBinary, "--root", cfg.RuncRoot, "delete", "--force", e.Name())
		_, _ = r.Run(context.Background(), cmd)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var ours []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], cfg.RunDir) {
			ours = append(ours, f[4])
		}
	}
	for i := len(ours) - 1; i >= 0; i-- {
		_ = unix.Unmount(ours[i], unix.MNT_DETACH)
	}
}

// agentVMHypervisor starts agent VMs.
type agentVMHypervisor struct {
	t    testing.TB
	runc string

	mu  sync.Mutex
	vms map[string]*agentVM // by state dir
}

func newAgentVMHypervisor(t testing.TB) *agentVMHypervisor {
	runc := ""
	home, _ := os.UserHomeDir()
	for _, p := range []string{os.Getenv("CONTRAST_RUNC"), filepath.Join(home, ".cache/contrast/bin/runc-static"), "/usr/sbin/runc", "/usr/bin/runc"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			runc = p
			break
		}
	}
	if runc == "" {
		testenv.Missing(t, "deps", "no runc binary (runc-static, or Debian's runc; CONTRAST_RUNC overrides)")
	}
	if os.Geteuid() != 0 {
		t.Skip("the agent VM needs root (runc, loop devices, mounts)")
	}
	return &agentVMHypervisor{t: t, runc: runc, vms: map[string]*agentVM{}}
}

func (h *agentVMHypervisor) Start(ctx context.Context, spec hypervisor.VMSpec) (hypervisor.VM, error) {
	dir := spec.SocketDir
	if err := os.MkdirAll(filepath.Join(dir, "devices"), 0o700); err != nil {
		return nil, err
	}
	console, err := os.Create(filepath.Join(spec.StateDir, "console.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer console.Close()
	self, err := os.Executable()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cgroupParent := fmt.Sprintf("/contrast-shim-test-%d-%s", os.Getpid(), filepath.Base(dir))
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), agentVMEnv+"="+dir+":"+h.runc+":"+cgroupParent)
	cmd.Stdout, cmd.Stderr = console, console
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start agent VM %s: %w", spec.ID, err)
	}
	vm := &agentVM{dir: dir, stateDir: spec.StateDir, cgroupParent: cgroupParent, cmd: cmd, done: make(chan struct{}), loops: map[string]string{}}
	go func() {
		err := cmd.Wait()
		vm.mu.Lock()
		if !vm.stopped {
			vm.err = fmt.Errorf("agent VM ended: %v", err)
		}
		vm.mu.Unlock()
		close(vm.done)
	}()
	h.mu.Lock()
	h.vms[spec.StateDir] = vm
	h.mu.Unlock()
	return vm, nil
}

func (h *agentVMHypervisor) Cleanup(ctx context.Context, stateDir string) error {
	h.mu.Lock()
	vm := h.vms[stateDir]
	h.mu.Unlock()
	if vm == nil {
		return nil
	}
	return vm.Stop(ctx)
}

// agentVM is one agent child process.
type agentVM struct {
	dir, stateDir, cgroupParent string
	cmd                         *exec.Cmd
	done                        chan struct{}

	mu      sync.Mutex
	err     error
	loops   map[string]string // serial -> loop device
	stopped bool
}

func (vm *agentVM) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	name := map[uint32]string{agentapi.AgentPort: "agent.sock", agentapi.StdioPort: "stdio.sock", agentapi.ForwardPort: "forward.sock"}[port]
	if name == "" {
		return nil, fmt.Errorf("agent VM has no port %d", port)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", filepath.Join(vm.dir, name))
}

func (vm *agentVM) AttachDisk(ctx context.Context, disk hypervisor.Disk) error {
	args := []string{"--find", "--show"}
	if disk.ReadOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.CommandContext(ctx, "losetup", append(args, disk.Path)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("attach %s: losetup: %v: %s", disk.Path, err, out)
	}
	dev := strings.TrimSpace(string(out))
	vm.mu.Lock()
	vm.loops[disk.Serial] = dev
	vm.mu.Unlock()
	tmp := filepath.Join(vm.dir, "devices", "."+disk.Serial)
	if err := os.WriteFile(tmp, []byte(dev), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(vm.dir, "devices", disk.Serial))
}

func (vm *agentVM) DetachDisk(ctx context.Context, serial string) error {
	vm.mu.Lock()
	dev, ok := vm.loops[serial]
	delete(vm.loops, serial)
	vm.mu.Unlock()
	if !ok {
		return fmt.Errorf("no disk %s attached", serial)
	}
	os.Remove(filepath.Join(vm.dir, "devices", serial))
	if out, err := exec.CommandContext(ctx, "losetup", "--detach", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("detach %s: %v: %s", dev, err, out)
	}
	return nil
}

func (vm *agentVM) Pid() int              { return vm.cmd.Process.Pid }
func (vm *agentVM) Done() <-chan struct{} { return vm.done }
func (vm *agentVM) ConsoleLog() string    { return filepath.Join(vm.stateDir, "console.log") }

func (vm *agentVM) Err() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.err
}

// die crashes the VM: the agent kills its containers and exits at once.
func (vm *agentVM) die() {
	_ = vm.cmd.Process.Signal(syscall.SIGUSR1)
	<-vm.done
}

func (vm *agentVM) Stop(ctx context.Context) error {
	vm.mu.Lock()
	if vm.stopped {
		vm.mu.Unlock()
		<-vm.done
		return nil
	}
	vm.stopped = true
	vm.mu.Unlock()
	_ = vm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-vm.done:
	case <-ctx.Done():
		_ = vm.cmd.Process.Kill()
		<-vm.done
	}
	var errs []error
	vm.mu.Lock()
	loops := vm.loops
	vm.loops = map[string]string{}
	vm.mu.Unlock()
	for _, dev := range loops {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %v: %s", dev, err, out))
		}
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + vm.cgroupParent)
	for _, d := range append(dirs, "/sys/fs/cgroup"+vm.cgroupParent) {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(vm.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
