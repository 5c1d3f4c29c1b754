package qemu

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/vsock"
)

// Files in a VM's state directory.
const (
	qmpSocketName       = "qmp.sock"
	pidFileName         = "qemu.pid"
	consoleLogName      = "console.log"
	qemuLogName         = "qemu.log"
	hybridSocketName    = "vsock.sock"
	vhostUserSocketName = "vhost-user-vsock.sock"
	// guestCIDName records the guest's vsock CID when the VM uses kernel
	// vhost-vsock, so tools on the host (contrast verify) reach its agent.
	guestCIDName = "vsock-cid"
)

// maxSocketPath is the longest unix socket path the kernel takes
// (sun_path is 108 bytes with the terminating NUL).
const maxSocketPath = 107

// hybridPortSuffix is room for "_<port>", the guest-initiated connection
// sockets next to the hybrid socket.
const hybridPortSuffix = len("_4294967295")

// killWait bounds the wait for QEMU to vanish after SIGKILL.
const killWait = 10 * time.Second

// cidAttempts bounds the retries when kernel vhost-vsock reports the
// random CID taken.
const cidAttempts = 5

// Start boots a VM; see StartVM.
func (h *Hypervisor) Start(ctx context.Context, spec hypervisor.VMSpec) (hypervisor.VM, error) {
	vm, err := h.StartVM(ctx, spec)
	if err != nil {
		return nil, err
	}
	return vm, nil
}

// StartVM starts QEMU for spec and returns once QMP answers; it does not
// wait for the guest. On error nothing is left running and only the log
// files remain in spec.StateDir.
func (h *Hypervisor) StartVM(ctx context.Context, spec hypervisor.VMSpec) (*VM, error) {
	if err := h.checkSpec(spec); err != nil {
		return nil, fmt.Errorf("start qemu for vm %s: %w", spec.ID, err)
	}
	snp, err := h.prepareSNP(spec)
	if err != nil {
		return nil, fmt.Errorf("start qemu for vm %s: %w", spec.ID, err)
	}
	for attempt := 1; ; attempt++ {
		cid := uint32(vhostUserGuestCID)
		if h.sel.Vsock == VsockKernel {
			cid = randomCID()
		}
		vm, err := h.launch(ctx, spec, cid, snp)
		if err == nil {
			return vm, nil
		}
		var ee *exitError
		if h.sel.Vsock == VsockKernel && attempt < cidAttempts && errors.As(err, &ee) && cidInUse(ee.stderr) {
			log.G(ctx).WithField("vm", spec.ID).Infof("guest CID %d is taken, retrying with another", cid)
			continue
		}
		return nil, fmt.Errorf("start qemu for vm %s: %w", spec.ID, err)
	}
}

func (h *Hypervisor) checkSpec(spec hypervisor.VMSpec) error {
	if spec.ID == "" {
		return errors.New("no vm id")
	}
	if !filepath.IsAbs(spec.StateDir) {
		return fmt.Errorf("state dir %q: not an absolute path", spec.StateDir)
	}
	if fi, err := os.Stat(spec.StateDir); err != nil {
		return fmt.Errorf("state dir: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("state dir %s: not a directory", spec.StateDir)
	}
	if spec.SocketDir != "" && !filepath.IsAbs(spec.SocketDir) {
		return fmt.Errorf("socket dir %q: not an absolute path", spec.SocketDir)
	}
	if err := CheckSocketDir(socketDirFor(spec.StateDir, spec.SocketDir)); err != nil {
		return err
	}
	firmware := spec.Firmware
	if spec.Confidential != nil {
		if spec.Firmware != "" {
			return errors.New("firmware given beside a confidential launch, which names its own")
		}
		if spec.Confidential.Firmware == "" {
			return errors.New("confidential launch without firmware: SEV-SNP needs an OVMF AmdSevX64 build")
		}
		if spec.LaunchMeasurement != nil {
			return errors.New("launch measurement given for a confidential launch: the hardware measures it")
		}
		firmware = spec.Confidential.Firmware
	}
	if n := len(spec.LaunchMeasurement); n != 0 && n != hypervisor.SNPLaunchMeasurementSize {
		return fmt.Errorf("launch measurement of %d bytes: want %d", n, hypervisor.SNPLaunchMeasurementSize)
	}
	// QEMU would say the same, later and less clearly.
	for _, f := range []struct{ what, path string }{
		{"kernel", spec.Kernel}, {"initrd", spec.Initrd}, {"root disk", spec.RootDisk}, {"firmware", firmware},
	} {
		if f.path == "" {
			if f.what == "kernel" {
				return errors.New("no kernel")
			}
			continue
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("%s: %w", f.what, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s %s: not a regular file", f.what, f.path)
		}
	}
	return nil
}

// prepareSNP checks that this host can launch spec's confidential VM and
// resolves the host-dependent settings; nil for a plain VM.
func (h *Hypervisor) prepareSNP(spec hypervisor.VMSpec) (*snpSettings, error) {
	if spec.Confidential == nil {
		return nil, nil
	}
	var missing []string
	if h.sel.Accel != AccelKVM {
		missing = append(missing, fmt.Sprintf("the accelerator is %s (%s), and only KVM can run SEV-SNP guests",
			h.sel.Accel, h.sel.AccelReason))
	}
	missing = append(missing, h.snpHostMissing()...)
	if len(missing) > 0 {
		return nil, snpHostError(missing)
	}
	s, err := resolveSNP(spec.Confidential, h.hostCBitPos)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// exitError is QEMU ending before it was ready, with what it said.
type exitError struct {
	state  *os.ProcessState
	stderr string
}

func (e *exitError) Error() string {
	msg := "qemu " + describeState(e.state) + " during start-up"
	if e.stderr != "" {
		msg += ": " + e.stderr
	}
	return msg
}

// describeState words a process end the way people read it.
func describeState(st *os.ProcessState) string {
	if st == nil {
		// another reaper in this process took the exit status
		return "ended (exit status unknown)"
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
	}
	return fmt.Sprintf("exited with status %d", st.ExitCode())
}

// VM is a running QEMU pod VM.
type VM struct {
	id       string
	stateDir string
	cfg      Config
	cmd      *exec.Cmd
	qmp      *qmpClient
	vsock    vsockBackend
	log      *log.Entry

	exited  chan struct{} // closed when cmd.Wait returned
	done    chan struct{} // closed after exitErr is set
	exitErr error

	stopRequested atomic.Bool
	shutdownMu    sync.Mutex
	shutdown      string // reason of QEMU's last SHUTDOWN event

	stopMu   sync.Mutex
	released bool

	diskMu   sync.Mutex
	disks    map[string]*disk // by serial
	portUsed []bool
	nextDisk int
}

var _ hypervisor.VM = (*VM)(nil)

func (h *Hypervisor) launch(ctx context.Context, spec hypervisor.VMSpec, cid uint32, snp *snpSettings) (_ *VM, retErr error) {
	p := func(name string) string { return filepath.Join(spec.StateDir, name) }
	lg := log.G(ctx).WithField("vm", spec.ID)
	// Leftovers of an earlier run would confuse QEMU (a stale pidfile) or
	// us (a stale socket).
	removeRuntimeFiles(spec.StateDir)
	sockDir, err := makeSocketDir(spec.StateDir, spec.SocketDir)
	if err != nil {
		return nil, err
	}
	sock := func(name string) string { return filepath.Join(sockDir, name) }

	vm := &VM{
		id:       spec.ID,
		stateDir: spec.StateDir,
		cfg:      h.cfg,
		log:      lg,
		exited:   make(chan struct{}),
		done:     make(chan struct{}),
		disks:    map[string]*disk{},
		portUsed: make([]bool, h.cfg.HotplugPorts),
	}
	var started bool
	defer func() {
		if retErr == nil {
			return
		}
		if started {
			vm.kill()
			<-vm.exited
		}
		if vm.qmp != nil {
			vm.qmp.Close()
		}
		if vm.vsock != nil {
			if err := vm.vsock.Close(); err != nil {
				lg.WithError(err).Warn("close vsock backend after failed start")
			}
		}
		removeRuntimeFiles(spec.StateDir)
	}()

	lp := launchParams{
		Name:              spec.ID,
		Accel:             h.sel.Accel,
		CPUModel:          h.sel.CPUModel,
		VCPUs:             spec.VCPUs,
		MemoryMiB:         spec.MemoryMiB,
		Kernel:            spec.Kernel,
		Initrd:            spec.Initrd,
		RootDisk:          spec.RootDisk,
		Append:            spec.KernelArgs,
		Firmware:          spec.Firmware,
		HostData:          hex.EncodeToString(spec.HostData[:]),
		LaunchMeasurement: hex.EncodeToString(spec.LaunchMeasurement),
		ConsoleLog:        p(consoleLogName),
		PIDFile:           p(pidFileName),
		QMPFD:             3, // first of cmd.ExtraFiles
		HotplugPorts:      h.cfg.HotplugPorts,
		VsockMode:         h.sel.Vsock,
	}
	if snp != nil {
		lp.SNP = snp
		lp.CPUModel = spec.Confidential.CPUModel
		lp.Firmware = spec.Confidential.Firmware
	}
	// Inherited descriptors: QMP's is 3, the taps' follow.
	var tapFiles []*os.File
	for i, n := range spec.NICs {
		if n.Tap == nil {
			return nil, fmt.Errorf("network card %d has no tap device", i)
		}
		tapFiles = append(tapFiles, n.Tap)
		lp.NICs = append(lp.NICs, nicParams{TapFD: lp.QMPFD + 1 + i, MAC: n.MAC.String(), MTU: n.MTU})
	}
	switch h.sel.Vsock {
	case VsockKernel:
		lp.GuestCID = cid
	case VsockVhostUser:
		lp.VhostUserSocket = sock(vhostUserSocketName)
	}
	// Arguments first: bad input fails before anything exists.
	args, err := buildArgs(lp)
	if err != nil {
		return nil, err
	}

	// QEMU inherits a socket that already listens, so connecting to it
	// cannot race QEMU's start.
	qmpPath := sock(qmpSocketName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: qmpPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	qmpFile, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	defer qmpFile.Close()

	switch h.sel.Vsock {
	case VsockKernel:
		vm.vsock = newKernelVsock(cid)
		if err := os.WriteFile(p(guestCIDName), []byte(strconv.FormatUint(uint64(cid), 10)+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("record guest CID: %w", err)
		}
	case VsockVhostUser:
		b, err := newVhostUserVsock(cid, lp.VhostUserSocket, sock(hybridSocketName))
		if err != nil {
			return nil, err
		}
		vm.vsock = b
		defer func() {
			if retErr == nil {
				go vm.watchVsockBackend(b)
			}
		}()
	}

	logPath := p(qemuLogName)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("qemu log: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s %s %s\n", logHeaderPrefix, time.Now().UTC().Format(time.RFC3339), quoteCommand(h.sel.Binary, args))

	cmd := exec.Command(h.sel.Binary, args...)
	cmd.Dir = spec.StateDir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = append([]*os.File{qmpFile}, tapFiles...)
	// Its own process group: a signal meant for the shim's group (a
	// terminal's ^C) must not take the VM down with it.
	// QEMU dies with the process that started it: without the shim its vsock
	// backend is gone and nobody could manage the VM. containerd's `delete`
	// then removes what is left (Cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", h.sel.Binary, err)
	}
	started = true
	vm.cmd = cmd
	go func() {
		// The error only repeats ProcessState, which describeState reads.
		_ = cmd.Wait()
		close(vm.exited)
	}()
	lg.WithField("pid", cmd.Process.Pid).Debug("qemu started")

	if err := vm.connectQMP(ctx, qmpPath, logPath); err != nil {
		return nil, err
	}

	pid, err := readPIDFile(p(pidFileName))
	if err != nil {
		select {
		case <-vm.exited:
			// QEMU removes its pid file when it exits: the exit is the news.
			return nil, &exitError{state: cmd.ProcessState, stderr: qemuStderr(logPath)}
		default:
		}
		return nil, err
	}
	if pid != cmd.Process.Pid {
		return nil, fmt.Errorf("pid file %s says %d, qemu is %d", p(pidFileName), pid, cmd.Process.Pid)
	}

	shutdowns, _ := vm.qmp.subscribe(func(e qmpEvent) bool { return e.Name == "SHUTDOWN" })
	go vm.watch(shutdowns, logPath)
	return vm, nil
}

// connectQMP connects to the inherited QMP socket and negotiates, bounded
// by StartTimeout; if QEMU exits meanwhile, the error quotes its stderr.
func (vm *VM) connectQMP(ctx context.Context, qmpPath, logPath string) error {
	hctx, cancel := context.WithTimeout(ctx, vm.cfg.StartTimeout)
	defer cancel()
	go func() {
		select {
		case <-vm.exited:
			cancel()
		case <-hctx.Done():
		}
	}()
	var d net.Dialer
	conn, err := d.DialContext(hctx, "unix", qmpPath)
	if err == nil {
		vm.qmp, err = newQMPClient(hctx, conn)
		if err != nil {
			conn.Close()
		}
	}
	if err == nil {
		return nil
	}
	// A QEMU that fails late in its start-up closes the connection before
	// it is reaped: give the exit a moment to show, for the better error.
	// (hctx is also cancelled when QEMU exits.)
	timedOut := errors.Is(hctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
	exitErr := func() error { return &exitError{state: vm.cmd.ProcessState, stderr: qemuStderr(logPath)} }
	select {
	case <-vm.exited:
		return exitErr()
	default:
	}
	if !timedOut && ctx.Err() == nil {
		select {
		case <-vm.exited:
			return exitErr()
		case <-time.After(2 * time.Second):
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("waiting for qmp: %w", ctx.Err())
	}
	if timedOut {
		return fmt.Errorf("qemu did not answer on qmp within %s: %w", vm.cfg.StartTimeout, err)
	}
	return fmt.Errorf("connect to qmp: %w", err)
}

// watch records why QEMU ended and closes done.
func (vm *VM) watch(shutdowns <-chan qmpEvent, logPath string) {
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for ev := range shutdowns {
			var d struct {
				Guest  bool   `json:"guest"`
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal(ev.Data, &d); err == nil {
				vm.shutdownMu.Lock()
				vm.shutdown = d.Reason
				vm.shutdownMu.Unlock()
			}
		}
	}()
	<-vm.exited
	// QEMU sends SHUTDOWN just before it exits: read what is left on the
	// connection (it ends with QEMU) before looking at the reason.
	select {
	case <-drained:
	case <-time.After(time.Second):
	}
	st := vm.cmd.ProcessState
	if !vm.stopRequested.Load() {
		msg := "qemu " + describeState(st)
		vm.shutdownMu.Lock()
		if vm.shutdown != "" {
			msg += " after shutdown (" + vm.shutdown + ")"
		}
		vm.shutdownMu.Unlock()
		if st == nil || !st.Success() {
			if tail := qemuStderr(logPath); tail != "" {
				msg += ": " + tail
			}
		}
		vm.exitErr = errors.New(msg)
		vm.log.WithField("pid", vm.cmd.Process.Pid).Warn(msg)
	} else {
		vm.log.WithField("pid", vm.cmd.Process.Pid).Debugf("qemu %s", describeState(st))
	}
	close(vm.done)
}

// watchVsockBackend logs a vsock device failure while QEMU still runs:
// the guest is unreachable then, and the log says why.
func (vm *VM) watchVsockBackend(b *vsock.Backend) {
	select {
	case <-b.Done():
		if err := b.Err(); err != nil && !vm.stopRequested.Load() {
			vm.log.WithError(err).Error("vsock device backend failed; the guest is unreachable")
		}
	case <-vm.done:
	}
}

// Pid is QEMU's process id.
func (vm *VM) Pid() int { return vm.cmd.Process.Pid }

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Err tells why QEMU exited (nil when Stop ended it), once Done is closed.
func (vm *VM) Err() error {
	select {
	case <-vm.done:
		return vm.exitErr
	default:
		return nil
	}
}

// ConsoleLog is the guest serial console's log file.
func (vm *VM) ConsoleLog() string { return filepath.Join(vm.stateDir, consoleLogName) }

// Dial connects to a vsock port in the guest.
func (vm *VM) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := vm.vsock.Dial(ctx, port)
	if err != nil {
		return nil, fmt.Errorf("dial vsock port %d of vm %s: %w", port, vm.id, err)
	}
	return c, nil
}

// Status is QEMU's run state (running, paused, prelaunch, shutdown, ...).
func (vm *VM) Status(ctx context.Context) (string, error) {
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := vm.qmp.execute(ctx, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("status of vm %s: %w", vm.id, err)
	}
	return st.Status, nil
}

// kill ends QEMU at once. Process.Kill uses a pidfd, so it cannot hit a
// recycled pid after QEMU was reaped.
func (vm *VM) kill() {
	if err := vm.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		vm.log.WithError(err).Warn("kill qemu")
	}
}

// Stop asks QEMU to quit, kills it if it does not within StopTimeout,
// waits for it and releases sockets and the vsock backend.
func (vm *VM) Stop(ctx context.Context) error {
	vm.stopMu.Lock()
	defer vm.stopMu.Unlock()
	if vm.released {
		return nil
	}
	select {
	case <-vm.exited:
	default:
		vm.stopRequested.Store(true)
		qctx, cancel := context.WithTimeout(ctx, vm.cfg.StopTimeout)
		if err := vm.qmp.execute(qctx, "quit", nil, nil); err != nil && !errors.Is(err, errQMPClosed) {
			vm.log.WithError(err).Info("qmp quit failed, killing qemu")
		} else {
			select {
			case <-vm.exited:
			case <-qctx.Done():
				vm.log.Infof("qemu did not quit within %s, killing it", vm.cfg.StopTimeout)
			}
		}
		cancel()
		select {
		case <-vm.exited:
		default:
			vm.kill()
			// SIGKILL ends QEMU soon, whatever ctx says: waiting a bounded
			// while beats leaving a VM behind because ctx ran out.
			select {
			case <-vm.exited:
			case <-time.After(killWait):
				return fmt.Errorf("stop vm %s: qemu pid %d still running %s after SIGKILL", vm.id, vm.Pid(), killWait)
			}
		}
	}
	<-vm.done
	var errs []error
	if err := vm.qmp.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := vm.vsock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close vsock: %w", err))
	}
	removeRuntimeFiles(vm.stateDir)
	vm.released = true
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop vm %s: %w", vm.id, err)
	}
	return nil
}

func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("qemu pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("qemu pid file %s: not a pid: %q", path, truncate(string(b), 40))
	}
	return pid, nil
}

// logHeaderPrefix starts the line we write into qemu.log before QEMU's own
// output.
const logHeaderPrefix = "contrast:"

// qemuStderr is what QEMU wrote to its log, without our header, trimmed to
// the last few lines that fit an error message.
func qemuStderr(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(bytes.TrimSpace(b)), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, logHeaderPrefix) {
			lines = append(lines, l)
		}
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	s := strings.Join(lines, "; ")
	if len(s) > 1000 {
		s = "…" + s[len(s)-1000:]
	}
	return s
}

// quoteCommand renders a command line for the log, quoting what a shell
// would need quoted.
func quoteCommand(bin string, args []string) string {
	parts := make([]string, 0, len(args)+1)
	for _, a := range append([]string{bin}, args...) {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`;&|<>()*?[]{}!#~") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
