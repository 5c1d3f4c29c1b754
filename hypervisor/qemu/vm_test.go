package qemu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/hypervisor"
)

// multibootImage is a minimal multiboot kernel (a.out kludge, loaded at
// 1 MiB) running code. QEMU's -kernel loads it directly, so the lifecycle
// tests run a real guest without a Linux kernel.
func multibootImage(code []byte) []byte {
	const base = 0x100000
	var magic, flags uint32 = 0x1BADB002, 0x00010000
	hdr := []uint32{magic, flags, -(magic + flags), base, base, 0, 0, base + 32}
	img := make([]byte, 32, 64)
	for i, v := range hdr {
		binary.LittleEndian.PutUint32(img[i*4:], v)
	}
	return append(img, code...)
}

// haltKernel halts the CPU for good: an idle guest.
func haltKernel(t *testing.T) string {
	// cli; hlt; jmp hlt
	return writeKernel(t, "halt.bin", multibootImage([]byte{0xfa, 0xf4, 0xeb, 0xfd}))
}

// resetKernel triple-faults at once (int3 with an empty IDT), which is a
// guest reset: with -no-reboot QEMU exits.
func resetKernel(t *testing.T) string {
	// lidt [0x100030]; int3; padding up to 0x100030, then a zero IDT descriptor
	code := []byte{0x0f, 0x01, 0x1d, 0x30, 0x00, 0x10, 0x00, 0xcc}
	code = append(code, make([]byte, 16-len(code)+8)...)
	return writeKernel(t, "reset.bin", multibootImage(code))
}

func writeKernel(t *testing.T, name string, img []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func testHypervisor(t *testing.T, cfg Config) *Hypervisor {
	t.Helper()
	needQEMU(t)
	if cfg.Binary == "" {
		cfg.Binary = qemuBinary
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// testSpec's state directory is longer than a unix socket's path may be,
// which must not matter: the sockets go into the short SocketDir beside it.
func testSpec(t *testing.T, kernel string) hypervisor.VMSpec {
	root, err := os.MkdirTemp("", "qs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	state := filepath.Join(root, strings.Repeat("a-long-state-directory-", 6))
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	return hypervisor.VMSpec{
		ID:         strings.ReplaceAll(t.Name(), "/", "-"),
		StateDir:   state,
		SocketDir:  filepath.Join(root, testSocketDirName),
		Kernel:     kernel,
		KernelArgs: "console=ttyS0",
		VCPUs:      1,
		MemoryMiB:  128,
	}
}

// startVM starts a VM and makes sure it is gone when the test ends.
func startVM(t *testing.T, h *Hypervisor, spec hypervisor.VMSpec) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vm, err := h.StartVM(ctx, spec)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(spec.StateDir, qemuLogName))
		t.Fatalf("start: %v\nqemu.log:\n%s", err, log)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := vm.Stop(ctx); err != nil {
			t.Errorf("stop in cleanup: %v", err)
		}
	})
	return vm
}

// dirNames lists a directory's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// testSocketDirName is testSpec's socket directory, beside its state dir.
const testSocketDirName = "vm"

// checkOnlyLogs fails unless dir holds nothing but (some of) the log files,
// and testSpec's socket directory beside it is gone.
func checkOnlyLogs(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(filepath.Dir(dir), testSocketDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket directory left beside the state dir (%v)", err)
	}
	for _, n := range dirNames(t, dir) {
		if n != qemuLogName && n != consoleLogName {
			t.Errorf("%s left in the state dir (have %q)", n, dirNames(t, dir))
		}
	}
}

func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	// A zombie that nobody reaped yet (an orphan's new parent) is gone too.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

func TestLifecycle(t *testing.T) {
	h := testHypervisor(t, Config{HotplugPorts: 2})
	spec := testSpec(t, haltKernel(t))
	vm := startVM(t, h, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := spec.StateDir

	pid := vm.Pid()
	if pid <= 0 || processGone(pid) {
		t.Fatalf("pid %d not running", pid)
	}
	if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
		t.Errorf("qemu process group %d (%v), want its own (%d)", pgid, err, pid)
	}
	b, err := os.ReadFile(filepath.Join(dir, pidFileName))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Errorf("pid file %q (%v), want %d", b, err, pid)
	}
	for _, n := range []string{consoleLogName, qemuLogName} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("state dir: %v", err)
		}
	}
	// The sockets are in the socket dir, which the state dir links to.
	if target, err := os.Readlink(filepath.Join(dir, socketsLinkName)); err != nil || target != spec.SocketDir {
		t.Errorf("state dir's %s link: %q, %v; want %s", socketsLinkName, target, err, spec.SocketDir)
	}
	if fi, err := os.Stat(filepath.Join(spec.SocketDir, qmpSocketName)); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("qmp socket: %v", err)
	}
	if h.Selection().Vsock == VsockVhostUser {
		// The vhost-user socket is gone once QEMU connected to it.
		if fi, err := os.Stat(filepath.Join(spec.SocketDir, hybridSocketName)); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("hybrid vsock socket: %v", err)
		}
	}
	if vm.ConsoleLog() != filepath.Join(dir, consoleLogName) {
		t.Errorf("console log %s", vm.ConsoleLog())
	}
	log, _ := os.ReadFile(filepath.Join(dir, qemuLogName))
	if !strings.HasPrefix(string(log), logHeaderPrefix) || !strings.Contains(string(log), "-pidfile") {
		t.Errorf("qemu.log does not start with the command line: %q", truncate(string(log), 300))
	}
	if st, err := vm.Status(ctx); err != nil || st != "running" {
		t.Errorf("status %q, %v", st, err)
	}
	select {
	case <-vm.Done():
		t.Fatalf("done while running: %v", vm.Err())
	default:
	}
	if err := vm.Err(); err != nil {
		t.Errorf("Err while running: %v", err)
	}

	// Hot-plug: the guest never enabled the root ports, so QEMU unplugs at
	// once; the boot test covers a guest that takes part.
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "layer0", Path: img, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	var serial string
	if err := vm.qmp.execute(ctx, "qom-get", map[string]string{"path": "/machine/peripheral/disk0", "property": "serial"}, &serial); err != nil || serial != "layer0" {
		t.Errorf("device disk0 serial %q, %v", serial, err)
	}
	for _, tc := range []struct {
		disk hypervisor.Disk
		want string
	}{
		{hypervisor.Disk{Serial: "layer0", Path: img}, "already attached"},
		{hypervisor.Disk{Serial: "this-serial-is-too-long", Path: img}, "want 1 to 20 bytes"},
		{hypervisor.Disk{Serial: "has space", Path: img}, "printable ASCII"},
		{hypervisor.Disk{Serial: "x", Path: "/nonexistent/disk.img"}, "/nonexistent/disk.img"},
		{hypervisor.Disk{Serial: "x", Path: t.TempDir()}, "is a directory"},
	} {
		err := vm.AttachDisk(ctx, tc.disk)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), spec.ID) {
			t.Errorf("attach %+v: %v, want an error naming %q and the vm", tc.disk, err, tc.want)
		}
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "layer1", Path: img, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	err = vm.AttachDisk(ctx, hypervisor.Disk{Serial: "layer2", Path: img, ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "no free hot-plug port") {
		t.Errorf("third disk on two ports: %v", err)
	}
	if err := vm.DetachDisk(ctx, "layer0"); err != nil {
		t.Fatal(err)
	}
	if err := vm.DetachDisk(ctx, "layer0"); err == nil || !strings.Contains(err.Error(), "no such disk") {
		t.Errorf("second detach: %v", err)
	}
	// The freed port takes the next disk; a failed blockdev-add leaves
	// nothing taken, also with device_add sent right behind it.
	sock := filepath.Join(t.TempDir(), "not-a-disk")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "socket", Path: sock, ReadOnly: true}); err == nil {
		t.Error("attach of a unix socket as a disk succeeded")
	} else if qe := (*QMPError)(nil); !errors.As(err, &qe) || qe.Command != "blockdev-add" {
		t.Errorf("attach of a unix socket as a disk: %v, want blockdev-add's QMP error", err)
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "layer2", Path: img, ReadOnly: true}); err != nil {
		t.Fatalf("attach on the freed port: %v", err)
	}
	var blocks []struct {
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := vm.qmp.execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, b := range blocks {
		if b.Inserted != nil {
			nodes = append(nodes, b.Inserted.NodeName)
		}
	}
	slices.Sort(nodes)
	// disk2 was the socket's: node names are never reused
	if want := []string{"disk1-fmt", "disk3-fmt"}; !slices.Equal(nodes, want) {
		t.Errorf("block nodes %q, want %q", nodes, want)
	}

	// This guest has no vsock driver: a dial waits for it, until the
	// context ends, and fails naming the vm.
	dctx, dcancel := context.WithTimeout(ctx, time.Second)
	if c, err := vm.Dial(dctx, 1024); err == nil {
		c.Close()
		t.Error("dial into a guest without vsock driver succeeded")
	} else if !strings.Contains(err.Error(), spec.ID) {
		t.Errorf("dial error %q does not name the vm", err)
	}
	dcancel()

	start := time.Now()
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop took %s", time.Since(start))
	select {
	case <-vm.Done():
	default:
		t.Fatal("not done after Stop")
	}
	if err := vm.Err(); err != nil {
		t.Errorf("Err after Stop: %v", err)
	}
	if !processGone(pid) {
		t.Errorf("qemu pid %d still there", pid)
	}
	checkOnlyLogs(t, dir)
	if err := vm.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := vm.AttachDisk(ctx, hypervisor.Disk{Serial: "late", Path: img}); err == nil {
		t.Error("attach after stop succeeded")
	}
}

func TestKilledVM(t *testing.T) {
	h := testHypervisor(t, Config{})
	spec := testSpec(t, haltKernel(t))
	vm := startVM(t, h, spec)
	if err := syscall.Kill(vm.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("not done 20s after SIGKILL")
	}
	err := vm.Err()
	if err == nil || !strings.Contains(err.Error(), "qemu killed by signal 9") {
		t.Errorf("Err %v, want qemu killed by signal 9", err)
	}
	if err := vm.Stop(context.Background()); err != nil {
		t.Errorf("stop after kill: %v", err)
	}
	if err := vm.Err(); err == nil {
		t.Error("Stop after the death erased the reason")
	}
	checkOnlyLogs(t, spec.StateDir)
}

// TestStopHungQEMU: a QEMU that does not answer quit is killed after
// StopTimeout, and Stop still succeeds with an expired context.
func TestStopHungQEMU(t *testing.T) {
	h := testHypervisor(t, Config{StopTimeout: 500 * time.Millisecond})
	spec := testSpec(t, haltKernel(t))
	vm := startVM(t, h, spec)
	pid := vm.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := vm.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stop took %s", d)
	}
	if err := vm.Err(); err != nil {
		t.Errorf("Err after Stop: %v", err)
	}
	if !processGone(pid) {
		t.Errorf("qemu %d still there", pid)
	}
	checkOnlyLogs(t, spec.StateDir)

	// An expired context still gets the VM killed.
	spec = testSpec(t, haltKernel(t))
	vm = startVM(t, h, spec)
	pid = vm.Pid()
	syscall.Kill(pid, syscall.SIGSTOP)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !processGone(pid) {
		t.Errorf("qemu %d survived Stop with an expired context", pid)
	}
	checkOnlyLogs(t, spec.StateDir)
}

func TestGuestReset(t *testing.T) {
	h := testHypervisor(t, Config{})
	spec := testSpec(t, resetKernel(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := h.StartVM(ctx, spec)
	if err != nil {
		// The guest may reset before QMP answers; that is a start error
		// that must say so.
		if !strings.Contains(err.Error(), "exited with status 0") {
			t.Fatal(err)
		}
		t.Logf("guest reset during start-up: %v", err)
		checkOnlyLogs(t, spec.StateDir)
		return
	}
	defer vm.Stop(ctx)
	select {
	case <-vm.Done():
	case <-ctx.Done():
		t.Fatal("qemu did not exit after the guest reset")
	}
	if err := vm.Err(); err == nil || !strings.Contains(err.Error(), "exited with status 0 after shutdown (guest-reset)") {
		t.Errorf("Err %v, want an exit after guest-reset", err)
	}
}

func TestStartFailures(t *testing.T) {
	needQEMU(t)
	halt := haltKernel(t)
	script := func(body string) string {
		p := filepath.Join(t.TempDir(), "fake-qemu")
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	vanished := script("exit 0")
	longDir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.MkdirAll(longDir, 0o755); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o644)
	empty := filepath.Join(t.TempDir(), "empty-kernel")
	os.WriteFile(empty, nil, 0o644)

	tests := []struct {
		name   string
		cfg    Config
		before func()
		spec   func(*hypervisor.VMSpec)
		want   []string
	}{
		{name: "binary exits at once", cfg: Config{Binary: "/bin/false"},
			want: []string{"exited with status 1 during start-up"}},
		{name: "stderr is quoted", cfg: Config{Binary: script("echo 'qemu-system-x86_64: -device foo: something is wrong' >&2; exit 1")},
			want: []string{"exited with status 1", "something is wrong"}},
		{name: "binary vanished", cfg: Config{Binary: vanished}, before: func() { os.Remove(vanished) },
			want: []string{"run " + vanished}},
		{name: "never answers qmp", cfg: Config{Binary: script("exec sleep 60"), StartTimeout: time.Second},
			want: []string{"did not answer on qmp within 1s"}},
		{name: "bad cpu model", cfg: Config{CPUModel: "no-such-cpu"},
			want: []string{"exited with status 1", "no-such-cpu"}},
		{name: "missing kernel", spec: func(s *hypervisor.VMSpec) { s.Kernel = "/nonexistent/bzImage" },
			want: []string{"kernel", "/nonexistent/bzImage", "no such file"}},
		{name: "missing initrd", spec: func(s *hypervisor.VMSpec) { s.Initrd = "/nonexistent/initrd" },
			want: []string{"initrd", "/nonexistent/initrd"}},
		{name: "kernel qemu cannot load", spec: func(s *hypervisor.VMSpec) { s.Kernel = empty },
			want: []string{"exited with status 1", "could not load kernel"}},
		{name: "no kernel", spec: func(s *hypervisor.VMSpec) { s.Kernel = "" }, want: []string{"no kernel"}},
		{name: "no vcpus", spec: func(s *hypervisor.VMSpec) { s.VCPUs = 0 }, want: []string{"vcpus 0"}},
		{name: "socket dir too long", spec: func(s *hypervisor.VMSpec) { s.SocketDir = longDir }, want: []string{"too long for its unix sockets"}},
		{name: "sockets in a state dir too long", spec: func(s *hypervisor.VMSpec) { s.StateDir, s.SocketDir = longDir, "" }, want: []string{"too long for its unix sockets"}},
		{name: "relative socket dir", spec: func(s *hypervisor.VMSpec) { s.SocketDir = "run/s" }, want: []string{"socket dir", "not an absolute path"}},
		{name: "state dir not a dir", spec: func(s *hypervisor.VMSpec) { s.StateDir = notDir }, want: []string{"not a directory"}},
		{name: "relative state dir", spec: func(s *hypervisor.VMSpec) { s.StateDir = "run/vm" }, want: []string{"not an absolute path"}},
	}
	if ok, _ := vhostVsockUsable(vhostVsockDevice); !ok {
		// QEMU parses the kernel vsock arguments, then cannot open the
		// device: a clear error, and no CID retries.
		tests = append(tests, struct {
			name   string
			cfg    Config
			before func()
			spec   func(*hypervisor.VMSpec)
			want   []string
		}{name: "kernel vsock without vhost_vsock", cfg: Config{Vsock: VsockKernel},
			want: []string{"exited with status 1", "vhost-vsock: failed to open vhost device"}})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := testHypervisor(t, tc.cfg)
			spec := testSpec(t, halt)
			if tc.spec != nil {
				tc.spec(&spec)
			}
			if tc.before != nil {
				tc.before()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			vm, err := h.StartVM(ctx, spec)
			if err == nil {
				vm.Stop(ctx)
				t.Fatal("started")
			}
			t.Logf("error: %v", err)
			for _, w := range append(tc.want, "vm "+spec.ID) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q", w)
				}
			}
			if fi, err := os.Stat(spec.StateDir); err == nil && fi.IsDir() {
				checkOnlyLogs(t, spec.StateDir)
			}
		})
	}
	// The "never answers" fake was killed, not left sleeping.
	out, _ := exec.Command("pgrep", "-f", "^sleep 60$", "-P", strconv.Itoa(os.Getpid())).Output()
	if len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("fake qemu still running: %s", out)
	}
}

func TestCleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("nothing there", func(t *testing.T) {
		dir := t.TempDir()
		if err := Cleanup(ctx, dir); err != nil {
			t.Error(err)
		}
	})
	t.Run("garbage pid file", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, pidFileName), []byte("nonsense\n"), 0o644)
		if err := Cleanup(ctx, dir); err == nil || !strings.Contains(err.Error(), "not a pid") {
			t.Errorf("garbage pid file: %v", err)
		}
	})
	t.Run("pid of another process", func(t *testing.T) {
		dir := t.TempDir()
		other := exec.Command("sleep", "60")
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { other.Process.Kill(); other.Wait() }()
		os.WriteFile(filepath.Join(dir, pidFileName), []byte(strconv.Itoa(other.Process.Pid)), 0o644)
		if err := Cleanup(ctx, dir); err != nil {
			t.Error(err)
		}
		if processGone(other.Process.Pid) {
			t.Error("Cleanup killed a process that is not the VM's qemu")
		}
		checkOnlyLogs(t, dir)
	})
	t.Run("stale pid", func(t *testing.T) {
		dir := t.TempDir()
		gone := exec.Command("true")
		gone.Run()
		os.WriteFile(filepath.Join(dir, pidFileName), []byte(strconv.Itoa(gone.Process.Pid)), 0o644)
		if err := Cleanup(ctx, dir); err != nil {
			t.Error(err)
		}
		checkOnlyLogs(t, dir)
	})
	t.Run("orphaned qemu", func(t *testing.T) {
		// A QEMU that is not our child, as after a shim crash: daemonized,
		// so its parent is whatever adopts orphans here.
		needQEMU(t)
		dir := t.TempDir()
		pidPath := filepath.Join(dir, pidFileName)
		sock := filepath.Join(dir, qmpSocketName)
		out, err := exec.Command(qemuBinary, "-machine", "q35,accel=tcg", "-S", "-m", "64M",
			"-nodefaults", "-no-user-config", "-display", "none", "-daemonize",
			"-qmp", "unix:"+sock+",server=on,wait=off", "-pidfile", pidPath).CombinedOutput()
		if err != nil {
			t.Fatalf("daemonize qemu: %v: %s", err, out)
		}
		pid, err := readPIDFile(pidPath)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGKILL)
		os.WriteFile(filepath.Join(dir, qemuLogName), []byte("log"), 0o644)
		if err := Cleanup(ctx, dir); err != nil {
			t.Fatal(err)
		}
		if !processGone(pid) {
			t.Errorf("qemu %d survived Cleanup", pid)
		}
		checkOnlyLogs(t, dir)
		if _, err := os.Stat(filepath.Join(dir, qemuLogName)); err != nil {
			t.Errorf("log removed: %v", err)
		}
		if err := Cleanup(ctx, dir); err != nil {
			t.Errorf("second Cleanup: %v", err)
		}
	})
	t.Run("our own vm", func(t *testing.T) {
		h := testHypervisor(t, Config{})
		spec := testSpec(t, haltKernel(t))
		vm := startVM(t, h, spec)
		pid := vm.Pid()
		if err := Cleanup(ctx, spec.StateDir); err != nil {
			t.Fatal(err)
		}
		select {
		case <-vm.Done():
		case <-ctx.Done():
			t.Fatal("vm not done after Cleanup")
		}
		if !processGone(pid) {
			t.Errorf("qemu %d survived Cleanup", pid)
		}
		if err := vm.Err(); err == nil || !strings.Contains(err.Error(), "signal 9") {
			t.Errorf("Err %v", err)
		}
		checkOnlyLogs(t, spec.StateDir)
	})
}

func TestIsOurQEMU(t *testing.T) {
	cmd := []byte("qemu-system-x86_64\x00-name\x00x\x00-pidfile\x00/run/vm/qemu.pid\x00")
	if !isOurQEMU(cmd, "/run/vm/qemu.pid") {
		t.Error("own command line not recognised")
	}
	if isOurQEMU(cmd, "/run/vm2/qemu.pid") {
		t.Error("other vm's qemu taken for ours")
	}
	if isOurQEMU([]byte("sleep\x00/run/vm/qemu.pid\x00"), "/run/vm/qemu.pid") {
		t.Error("path alone, not after -pidfile, taken for ours")
	}
}

// TestStartCancelled: the caller's context bounds Start too, and what was
// started is killed.
func TestStartCancelled(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "fake-qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := testHypervisor(t, Config{Binary: fake})
	spec := testSpec(t, haltKernel(t))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.StartVM(ctx, spec)
	if err == nil || !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("error %v, want the context's", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Start returned %s after its context ended", d)
	}
	checkOnlyLogs(t, spec.StateDir)
	out, _ := exec.Command("pgrep", "-f", "^sleep 60$", "-P", strconv.Itoa(os.Getpid())).Output()
	if len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("fake qemu still running: %s", out)
	}
}
