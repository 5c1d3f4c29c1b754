package vsock

// End-to-end: real QEMU 7.2 under TCG with the real guest kernel, whose
// virtio-vsock driver talks to our back-end. The guest's /init is
// testdata/guestinit, built here into a throwaway initramfs.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/internal/testenv"
)

const (
	e2eCID       = 3
	e2eEchoPort  = 1234
	e2eHelloPort = 5000
	e2eBoot      = 120 * time.Second // TCG on a shared 2-core machine
)

type e2eVM struct {
	dir     string
	backend *Backend
	qemu    *exec.Cmd
	exited  chan struct{}
	stderr  *lockedBuffer
	hello   net.Listener // <HybridSocket>_5000, the guest's greeting arrives here
}

// lockedBuffer collects QEMU's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (vm *e2eVM) console() string {
	b, _ := os.ReadFile(filepath.Join(vm.dir, "console.log"))
	return string(b)
}

// bootVM builds the initramfs, starts the back-end and QEMU, and waits
// until the guest's echo server answers.
func bootVM(tb testing.TB) *e2eVM {
	tb.Helper()
	kernel := testenv.Kernel(tb)
	// CONTRAST_QEMU picks another QEMU, e.g. 10.0 unpacked from backports.
	qemuBin := os.Getenv("CONTRAST_QEMU")
	if qemuBin == "" {
		qemuBin = testenv.Command(tb, "qemu-system-x86_64", "qemu-system-x86")
	}
	dir, err := os.MkdirTemp("", "vsock-e2e")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	vm := &e2eVM{dir: dir, exited: make(chan struct{}), stderr: &lockedBuffer{}}

	initrd := filepath.Join(dir, "initrd.cpio")
	if err := buildInitramfs(dir, initrd); err != nil {
		tb.Fatal(err)
	}
	vm.backend, err = NewBackend(BackendConfig{
		GuestCID:        e2eCID,
		VhostUserSocket: filepath.Join(dir, "vu.sock"),
		HybridSocket:    filepath.Join(dir, "hy.sock"),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := vm.backend.Close(); err != nil {
			tb.Errorf("close back-end: %v", err)
		}
	})
	vm.hello, err = net.Listen("unix", fmt.Sprintf("%s_%d", vm.backend.cfg.HybridSocket, e2eHelloPort))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { vm.hello.Close() })

	vm.qemu = exec.Command(qemuBin,
		"-machine", "q35,accel=tcg,memory-backend=mem", "-cpu", "max", "-m", "256", "-smp", "1",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on",
		"-nographic", "-nodefaults", "-no-reboot",
		"-serial", "file:"+filepath.Join(dir, "console.log"),
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1",
		"-qmp", "unix:"+filepath.Join(dir, "qmp.sock")+",server=on,wait=off",
		"-chardev", "socket,id=vsock0,path="+vm.backend.cfg.VhostUserSocket,
		"-device", "vhost-user-vsock-pci,chardev=vsock0",
	)
	vm.qemu.Stdout, vm.qemu.Stderr = vm.stderr, vm.stderr
	if err := vm.qemu.Start(); err != nil {
		tb.Fatalf("start QEMU: %v", err)
	}
	go func() {
		_ = vm.qemu.Wait()
		close(vm.exited)
	}()
	tb.Cleanup(func() {
		_ = vm.qemu.Process.Kill() // by PID; Wait above reaps it
		<-vm.exited
	})

	// Wait for the guest: Dial is refused until the echo server listens.
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := vm.backend.Dial(ctx, e2eEchoPort)
		cancel()
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-vm.exited:
			tb.Fatalf("QEMU exited: %v\n%s\nconsole:\n%s", vm.qemu.ProcessState, vm.stderr, vm.console())
		case <-vm.backend.Done():
			tb.Fatalf("vsock device stopped: %v\nconsole:\n%s", vm.backend.Err(), vm.console())
		default:
		}
		if time.Since(start) > e2eBoot {
			tb.Fatalf("guest echo server not reachable after %v: %v\nQEMU: %s\nconsole:\n%s", e2eBoot, err, vm.stderr, vm.console())
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Logf("guest echo server reachable %v after starting %s", time.Since(start).Round(time.Millisecond), qemuBin)
	return vm
}

// qmp runs QMP commands on the VM's monitor socket.
func (vm *e2eVM) qmp(tb testing.TB, commands ...string) {
	tb.Helper()
	c, err := net.Dial("unix", filepath.Join(vm.dir, "qmp.sock"))
	if err != nil {
		tb.Fatalf("connect to QMP: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		tb.Fatalf("QMP greeting: %v", err)
	}
	for _, cmd := range append([]string{"qmp_capabilities"}, commands...) {
		fmt.Fprintf(c, `{"execute": %q}`+"\n", cmd)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				tb.Fatalf("QMP %s: %v", cmd, err)
			}
			if strings.Contains(line, `"return"`) {
				break
			}
			if strings.Contains(line, `"error"`) {
				tb.Fatalf("QMP %s: %s", cmd, line)
			}
		}
	}
}

// buildInitramfs builds testdata/guestinit statically and packs it as /init
// with /dev/console.
func buildInitramfs(dir, out string) error {
	initBin := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", initBin, "./testdata/guestinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build guest init: %v\n%s", err, b)
	}
	bin, err := os.ReadFile(initBin)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := cpio.NewWriter(f)
	if err := w.WriteHeader(&cpio.Header{Name: "dev", Mode: cpio.TypeDir | 0o755, Links: 2}); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	// The kernel opens /dev/console for init's stdio, and Go's runtime
	// needs fds 0-2. cpio.Header has no device number, so this one entry is
	// written by hand.
	if err := writeCharDevice(f, "dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := w.WriteHeader(&cpio.Header{Name: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(bin))}); err != nil {
		return err
	}
	if _, err := w.Write(bin); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

// writeCharDevice writes a newc entry for a character device.
func writeCharDevice(w io.Writer, name string, perm, major, minor int) error {
	fields := []int{
		1000,            // inode, clear of the writer's own numbering
		0o020000 | perm, // S_IFCHR
		0, 0, 1, 0, 0,   // uid, gid, nlink, mtime, filesize
		0, 0, // devmajor, devminor
		major, minor, // rdevmajor, rdevminor
		len(name) + 1, 0, // namesize, check
	}
	var b strings.Builder
	b.WriteString("070701")
	for _, v := range fields {
		fmt.Fprintf(&b, "%08x", v)
	}
	b.WriteString(name + "\x00")
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// echoCheck sends data through an echo and checks what comes back; it
// returns the time taken.
func echoCheck(tb testing.TB, c net.Conn, data []byte) time.Duration {
	tb.Helper()
	size := len(data)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	got, err := io.ReadAll(c)
	if err != nil {
		tb.Fatalf("read echo: %v (got %d of %d bytes)", err, len(got), size)
	}
	if err := <-errc; err != nil {
		tb.Fatalf("write: %v", err)
	}
	elapsed := time.Since(start)
	if !bytes.Equal(got, data) {
		tb.Fatalf("echo returned %d bytes that differ from the %d sent", len(got), size)
	}
	return elapsed
}

// roundTrips measures n ping-pongs of size bytes.
func roundTrips(tb testing.TB, c net.Conn, n, size int) []time.Duration {
	tb.Helper()
	msg := bytes.Repeat([]byte{'p'}, size)
	got := make([]byte, size)
	rtts := make([]time.Duration, n)
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	for i := range rtts {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			tb.Fatal(err)
		}
		rtts[i] = time.Since(start)
	}
	return rtts
}

func mibps(bytes int, d time.Duration) float64 {
	return float64(bytes) / (1 << 20) / d.Seconds()
}

func TestE2EQEMU(t *testing.T) {
	vm := bootVM(t)
	transports := []struct {
		name string
		tr   hypervisor.Transport
	}{
		{"backend", vm.backend},
		{"hybrid", HybridTransport{Path: vm.backend.cfg.HybridSocket}},
	}

	// Guest to host: the greeting arrives on <HybridSocket>_5000.
	t.Run("guest-connects", func(t *testing.T) {
		vm.hello.(*net.UnixListener).SetDeadline(time.Now().Add(time.Minute))
		c, err := vm.hello.Accept()
		if err != nil {
			t.Fatalf("no connection from the guest: %v\nconsole:\n%s", err, vm.console())
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "hello from the guest\n" {
			t.Fatalf("greeting %q, %v", line, err)
		}
		echoCheck(t, c, randomBytes(256<<10))
	})

	for _, tc := range transports {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := tc.tr.Dial(ctx, e2eEchoPort)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rtts := roundTrips(t, c, 200, 64)
			slices.Sort(rtts)
			const size = 4 << 20
			d := echoCheck(t, c, randomBytes(size))
			t.Logf("%s: 64-byte round trip median %v (p90 %v); %d MiB echoed in %v: %.1f MiB/s each way",
				tc.name, rtts[len(rtts)/2], rtts[len(rtts)*9/10], size>>20, d.Round(time.Millisecond), mibps(size, d))
		})
	}

	// Pausing the VM stops the vhost rings (GET_VRING_BASE); resuming
	// restarts them with a fresh memory table. Connections survive.
	t.Run("pause-resume", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := vm.backend.Dial(ctx, e2eEchoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrips(t, c, 3, 64)
		vm.qmp(t, "stop")
		if _, err := c.Write([]byte("while paused")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a paused guest answered: %d bytes, %v", n, err)
		}
		vm.qmp(t, "cont")
		got := make([]byte, len("while paused"))
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "while paused" {
			t.Fatalf("after resume: %q, %v", got, err)
		}
		echoCheck(t, c, randomBytes(1<<20))
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range transports {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err := tc.tr.Dial(ctx, 4444)
			cancel()
			if err == nil {
				t.Errorf("%s: dial to a port nobody listens on succeeded", tc.name)
			}
		}
	})

	select {
	case <-vm.backend.Done():
		t.Fatalf("vsock device stopped: %v", vm.backend.Err())
	default:
	}
	if strings.Contains(vm.stderr.String(), "vhost") {
		t.Errorf("QEMU complained:\n%s", vm.stderr)
	}
}

// BenchmarkE2E reports round-trip latency and echo throughput through the
// back-end against a real guest.
func BenchmarkE2E(b *testing.B) {
	vm := bootVM(b)
	dial := func(b *testing.B) net.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := vm.backend.Dial(ctx, e2eEchoPort)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	b.Run("RoundTrip64B", func(b *testing.B) {
		c := dial(b)
		defer c.Close()
		b.ResetTimer()
		roundTrips(b, c, b.N, 64)
	})
	b.Run("Echo1MiB", func(b *testing.B) {
		data := randomBytes(1 << 20)
		b.SetBytes(1 << 20)
		b.ResetTimer()
		for range b.N {
			c := dial(b)
			echoCheck(b, c, data)
			c.Close()
		}
	})
}
