package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
)

// BackendConfig configures a vhost-user-vsock device back-end.
type BackendConfig struct {
	// GuestCID is the guest's context ID, reported in the device config space.
	GuestCID uint32
	// VhostUserSocket is where the back-end listens for QEMU
	// (-chardev socket,path=<it> -device vhost-user-vsock-pci,chardev=...).
	VhostUserSocket string
	// HybridSocket, if set, is where the back-end listens for host clients
	// speaking the Firecracker protocol (CONNECT <port>\n, OK <port>\n).
	// Guest connections to host port P are forwarded to the unix socket
	// <HybridSocket>_<P> when it exists, and reset otherwise.
	HybridSocket string
}

const (
	// firstHostPort starts the range host ports are allocated from for
	// host-initiated connections.
	firstHostPort = 49152
	portAny       = 0xffffffff // VMADDR_PORT_ANY
	// hybridDialTimeout bounds a CONNECT on the hybrid socket.
	hybridDialTimeout = 30 * time.Second
	// forwardDialTimeout bounds connecting a guest connection to <HybridSocket>_<P>.
	forwardDialTimeout = 5 * time.Second
	// maxUnixPath is the size of sockaddr_un.sun_path minus its terminator.
	maxUnixPath = 107
)

// Backend is a vhost-user-vsock device back-end serving one QEMU VM. It is a
// hypervisor.Transport: Dial connects to a guest port.
//
// The device lives as long as QEMU's connection: when QEMU disconnects, Done
// is closed and every connection fails. Pausing the VM (QEMU stops and later
// restarts the rings) keeps connections; a guest that resets its vsock driver
// without QEMU restarting (system_reset) forgets its connections, and ours
// learn of it only when they next send (the guest answers with RST).
type Backend struct {
	cfg        BackendConfig
	ctx        context.Context
	cancel     context.CancelFunc
	vuListener *net.UnixListener
	hyListener *net.UnixListener
	wake       chan struct{}
	stopWorker chan struct{}
	done       chan struct{}
	wg         sync.WaitGroup
	stopOnce   sync.Once

	mu       sync.Mutex
	dev      device
	vuConn   *net.UnixConn
	conns    map[connKey]*Conn
	pending  []*Conn  // connections with packets for the guest, in turn
	ctrl     []header // replies to packets of no connection
	nextPort uint32
	bridges  map[io.Closer]struct{}
	dead     bool  // shut down: no more processing
	closed   bool  // Close was called
	err      error // why the device failed

	lastWarn   time.Time // see guestWarnLocked
	suppressed int
}

// NewBackend listens on the configured sockets and serves QEMU and hybrid
// clients in the background. It does not wait for QEMU. On error nothing is
// left behind.
func NewBackend(cfg BackendConfig) (*Backend, error) {
	if cfg.GuestCID < 3 || cfg.GuestCID == 0xffffffff {
		return nil, fmt.Errorf("vhost-user-vsock: guest CID %d is reserved (want 3 to 4294967294)", cfg.GuestCID)
	}
	if cfg.VhostUserSocket == "" {
		return nil, errors.New("vhost-user-vsock: no vhost-user socket path")
	}
	for _, p := range []string{cfg.VhostUserSocket, cfg.HybridSocket} {
		if len(p) > maxUnixPath {
			return nil, fmt.Errorf("vhost-user-vsock: socket path %s is longer than %d bytes", p, maxUnixPath)
		}
	}
	if cfg.HybridSocket != "" && len(cfg.HybridSocket)+len("_4294967295") > maxUnixPath {
		return nil, fmt.Errorf("vhost-user-vsock: hybrid socket path %s leaves no room for the _<port> suffix of forwarded connections", cfg.HybridSocket)
	}
	b := newBackend(cfg)
	var err error
	b.vuListener, err = listenUnix(cfg.VhostUserSocket)
	if err != nil {
		b.cancel()
		return nil, fmt.Errorf("vhost-user-vsock: listen for QEMU: %w", err)
	}
	if cfg.HybridSocket != "" {
		b.hyListener, err = listenUnix(cfg.HybridSocket)
		if err != nil {
			_ = b.vuListener.Close()
			b.cancel()
			return nil, fmt.Errorf("vhost-user-vsock: listen for hybrid clients: %w", err)
		}
		b.wg.Add(1)
		go b.serveHybrid()
	}
	b.wg.Add(2)
	go b.run()
	go b.acceptQEMU()
	return b, nil
}

// newBackend sets up the state; NewBackend adds listeners and goroutines.
func newBackend(cfg BackendConfig) *Backend {
	ctx, cancel := context.WithCancel(context.Background())
	b := &Backend{
		cfg:        cfg,
		ctx:        log.WithLogger(ctx, log.G(ctx).WithField("vhost-user-socket", cfg.VhostUserSocket)),
		cancel:     cancel,
		wake:       make(chan struct{}, 1),
		stopWorker: make(chan struct{}),
		done:       make(chan struct{}),
		conns:      make(map[connKey]*Conn),
		bridges:    make(map[io.Closer]struct{}),
		nextPort:   firstHostPort,
	}
	b.dev.init()
	return b
}

func listenUnix(path string) (*net.UnixListener, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// acceptQEMU serves the first connection on the vhost-user socket. The
// device lives as long as that connection: when QEMU goes, so does the VM.
func (b *Backend) acceptQEMU() {
	defer b.wg.Done()
	c, err := b.vuListener.AcceptUnix()
	// One front-end per device; closing also unlinks the socket.
	_ = b.vuListener.Close()
	if err != nil {
		if !errors.Is(err, net.ErrClosed) {
			b.fail(fmt.Errorf("accept QEMU on vhost-user socket: %w", err))
		}
		return
	}
	b.mu.Lock()
	if b.dead {
		b.mu.Unlock()
		_ = c.Close()
		return
	}
	b.vuConn = c
	b.mu.Unlock()
	log.G(b.ctx).Debug("vhost-user-vsock: QEMU connected")
	err = b.serveVhostUser(c)
	if err != nil {
		b.fail(err)
	}
}

// Done is closed once the device stopped: QEMU disconnected, the device
// failed, or Close was called.
func (b *Backend) Done() <-chan struct{} { return b.done }

// Err tells why the device stopped, once Done is closed; nil after Close.
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// fail stops the device because of err.
func (b *Backend) fail(err error) {
	b.mu.Lock()
	if b.dead {
		b.mu.Unlock()
		return
	}
	b.err = err
	b.mu.Unlock()
	// QEMU disconnecting is how every VM ends; whoever runs QEMU knows
	// whether that was expected and reports real failures (Done, Err).
	log.G(b.ctx).WithError(err).Debug("vhost-user-vsock device stopped")
	b.shutdown(err)
}

// Close stops the device, closes every connection and listener and removes
// both sockets. It is safe to call more than once.
func (b *Backend) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.shutdown(net.ErrClosed)
	b.wg.Wait()
	var errs []error
	for _, p := range []string{b.cfg.VhostUserSocket, b.cfg.HybridSocket} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// shutdown ends everything that runs; connections report connErr. It does
// not wait for goroutines, as it runs on some of them.
func (b *Backend) shutdown(connErr error) {
	b.stopOnce.Do(func() {
		b.mu.Lock()
		b.dead = true
		mem := b.dev.release()
		for _, c := range b.conns {
			c.wantRST = false
			b.removeConnLocked(c, connErr)
		}
		b.pending, b.ctrl = nil, nil
		bridges := b.bridges
		b.bridges = map[io.Closer]struct{}{}
		vuConn := b.vuConn
		b.mu.Unlock()
		// Nothing touches guest memory outside the lock, and processing is over.
		mem.unmap()
		b.cancel()
		close(b.stopWorker)
		if b.vuListener != nil {
			_ = b.vuListener.Close()
		}
		if b.hyListener != nil {
			_ = b.hyListener.Close()
		}
		if vuConn != nil {
			_ = vuConn.Close()
		}
		for c := range bridges {
			_ = c.Close()
		}
		close(b.done)
	})
}

// unusableLocked tells why no connection can be made, if so.
func (b *Backend) unusableLocked() error {
	switch {
	case b.closed:
		return net.ErrClosed
	case b.err != nil:
		return fmt.Errorf("vsock device failed: %w", b.err)
	case b.dead:
		return net.ErrClosed
	}
	return nil
}

// Dial connects to a port of the guest. It waits for the guest to accept or
// refuse, for ctx, or for the device to stop. The connection request waits
// in the back-end until the guest driver is up.
func (b *Backend) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.unusableLocked(); err != nil {
		return nil, fmt.Errorf("dial guest vsock port %d: %w", port, err)
	}
	if port == portAny {
		return nil, fmt.Errorf("dial guest vsock port %d: not a port", port)
	}
	if len(b.conns) >= maxConns {
		return nil, fmt.Errorf("dial guest vsock port %d: %d connections open", port, maxConns)
	}
	key := connKey{guestPort: port}
	for {
		key.hostPort = b.nextPort
		b.nextPort++
		if b.nextPort == portAny {
			b.nextPort = firstHostPort
		}
		if b.conns[key] == nil {
			break
		}
	}
	c := b.newConnLocked(key, stateConnecting)
	c.wantRequest = true
	b.queueLocked(c)
	for c.state == stateConnecting {
		ch := c.waitChan()
		b.mu.Unlock()
		select {
		case <-ch:
			b.mu.Lock()
		case <-ctx.Done():
			b.mu.Lock()
			if c.state == stateConnecting || c.state == stateEstablished {
				b.resetConnLocked(c, ctx.Err())
			}
			return nil, fmt.Errorf("dial guest vsock port %d: %w", port, ctx.Err())
		}
	}
	if c.state != stateEstablished {
		err := c.err
		if err == nil {
			err = syscall.ECONNRESET
		}
		return nil, fmt.Errorf("dial guest vsock port %d: %w", port, err)
	}
	return c, nil
}

// acceptLocked handles a guest's connection request to a host port: it is
// forwarded to <HybridSocket>_<port>, connected in the background.
func (b *Backend) acceptLocked(h header) {
	if b.cfg.HybridSocket == "" {
		log.G(b.ctx).WithError(errNoForward).Debugf("vsock: refusing guest connection to host port %d", h.dstPort)
		b.replyRSTLocked(h)
		return
	}
	if len(b.conns) >= maxConns {
		b.guestWarnLocked("vsock: refusing guest connection to host port %d: %d connections open", h.dstPort, maxConns)
		b.replyRSTLocked(h)
		return
	}
	c := b.newConnLocked(connKey{hostPort: h.dstPort, guestPort: h.srcPort}, stateAccepting)
	c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCnt
	path := fmt.Sprintf("%s_%d", b.cfg.HybridSocket, h.dstPort)
	b.wg.Add(1)
	go b.forward(c, path)
}

// forward connects a guest-initiated connection to its host unix socket
// and then copies data both ways.
func (b *Backend) forward(c *Conn, path string) {
	defer b.wg.Done()
	ctx, cancel := context.WithTimeout(b.ctx, forwardDialTimeout)
	var d net.Dialer
	uc, err := d.DialContext(ctx, "unix", path)
	cancel()
	b.mu.Lock()
	if err != nil {
		if c.state == stateAccepting {
			log.G(b.ctx).WithError(err).Debugf("vsock: refusing guest connection to host port %d", c.key.hostPort)
			b.resetConnLocked(c, nil)
		}
		b.mu.Unlock()
		return
	}
	if c.state != stateAccepting { // the guest gave up meanwhile
		b.mu.Unlock()
		_ = uc.Close()
		return
	}
	c.state = stateEstablished
	c.wantResponse = true
	b.queueLocked(c)
	b.mu.Unlock()
	b.bridge(uc.(*net.UnixConn), c)
}

// trackLocked registers something Close must close; false if it is too late.
func (b *Backend) track(c io.Closer) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		return false
	}
	b.bridges[c] = struct{}{}
	return true
}

func (b *Backend) untrack(c io.Closer) {
	b.mu.Lock()
	delete(b.bridges, c)
	b.mu.Unlock()
}

// halfCloser is a connection whose sending side can be closed alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// bridge copies between a host connection and a guest connection until
// both directions end, passing half-closes through.
func (b *Backend) bridge(host halfCloser, guest *Conn) {
	if !b.track(host) {
		_ = host.Close()
		_ = guest.Close()
		return
	}
	defer b.untrack(host)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(guest, host)
	}()
	pipe(host, guest)
	wg.Wait()
	_ = host.Close()
	_ = guest.Close()
}

// pipe copies src to dst; at the end of src it half-closes dst, on an
// error it closes both so the other direction ends too.
func pipe(dst, src halfCloser) {
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		_ = src.Close()
		return
	}
	_ = dst.CloseWrite()
}

// serveHybrid accepts host clients on the hybrid socket.
func (b *Backend) serveHybrid() {
	defer b.wg.Done()
	for {
		c, err := b.hyListener.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.G(b.ctx).WithError(err).Error("vsock: accept on hybrid socket")
			}
			return
		}
		b.wg.Add(1)
		go b.serveHybridConn(c)
	}
}

// serveHybridConn reads CONNECT <port>, dials the guest and answers
// OK <host port>; on failure it closes the connection, as Firecracker does.
func (b *Backend) serveHybridConn(c *net.UnixConn) {
	defer b.wg.Done()
	if !b.track(c) {
		_ = c.Close()
		return
	}
	_ = c.SetDeadline(time.Now().Add(hybridDialTimeout))
	port, err := readConnect(c)
	if err != nil {
		log.G(b.ctx).WithError(err).Warn("vsock: bad request on hybrid socket")
		b.untrack(c)
		_ = c.Close()
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, hybridDialTimeout)
	conn, err := b.Dial(ctx, port)
	cancel()
	if err != nil {
		log.G(b.ctx).WithError(err).Debug("vsock: hybrid CONNECT failed")
		b.untrack(c)
		_ = c.Close()
		return
	}
	vc := conn.(*Conn)
	if _, err := fmt.Fprintf(c, "OK %d\n", vc.key.hostPort); err != nil {
		b.untrack(c)
		_ = c.Close()
		_ = vc.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	b.untrack(c)
	b.bridge(c, vc)
}
