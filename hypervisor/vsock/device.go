package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Virtqueues of virtio-vsock. QEMU keeps the event queue to itself (it only
// carries transport resets after migration); the back-end serves rx and tx.
const (
	rxQueue   = 0 // host to guest
	txQueue   = 1 // guest to host
	numQueues = 3
)

// What we offer. INDIRECT_DESC lets Linux put header and payload of a packet
// behind one ring slot; EVENT_IDX saves notifications, which are expensive
// under TCG. REPLY_ACK makes QEMU wait until a new memory table is mapped.
const (
	offeredFeatures = featVersion1 | featIndirectDesc | featEventIdx | vuFProtocolFeatures
	offeredProtocol = vuProtoMQ | vuProtoReplyAck | vuProtoConfig
)

// vring is the back-end's state of one virtqueue as configured over vhost-user.
type vring struct {
	q        virtqueue
	num      uint32
	addr     vringAddr
	addrSet  bool
	base     uint16
	kick     *os.File
	call     int // eventfd to interrupt the guest; -1 when unset
	errFd    int // eventfd to report ring errors to QEMU; -1 when unset
	started  bool
	enabled  bool
	bound    bool // q points at the current memory table and addresses
	needInit bool // q's indexes must be (re)loaded before use
}

// device is the vhost-user device state, guarded by Backend.mu.
type device struct {
	features uint64 // acked by the front-end
	protocol uint64
	status   uint64
	mem      *guestMemory
	rings    [numQueues]vring
}

func (d *device) init() {
	for i := range d.rings {
		d.rings[i].call, d.rings[i].errFd = -1, -1
	}
}

// ringEnabled: without protocol features a ring is enabled once started.
func (d *device) ringEnabled(r *vring) bool {
	return r.enabled || d.features&vuFProtocolFeatures == 0
}

// stopRing stops processing and returns the index of the next available
// entry, which is what the front-end needs to resume the ring later.
func (d *device) stopRing(r *vring) uint16 {
	if !r.needInit {
		r.base = r.q.lastAvail
	}
	r.started = false
	r.needInit = true
	if r.kick != nil {
		_ = r.kick.Close() // ends the kick watcher
		r.kick = nil
	}
	return r.base
}

// release closes every descriptor and drops guest memory; the caller unmaps
// the memory it returns once no slice into it can be in use.
func (d *device) release() *guestMemory {
	for i := range d.rings {
		r := &d.rings[i]
		d.stopRing(r)
		closeFd(&r.call)
		closeFd(&r.errFd)
		r.q.unbind()
		r.bound = false
	}
	mem := d.mem
	d.mem = nil
	return mem
}

func closeFd(fd *int) {
	if *fd >= 0 {
		_ = unix.Close(*fd)
		*fd = -1
	}
}

// signal writes to an eventfd. It never blocks: the fds QEMU passes are
// non-blocking, and a full counter means the other side is already woken.
func signal(fd int) {
	if fd < 0 {
		return
	}
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(fd, one[:])
}

// fatalError ends the vhost-user session: the stream is out of sync or the
// front-end asked for something we cannot answer.
type fatalError struct{ error }

func (e fatalError) Unwrap() error { return e.error }

func fatalf(format string, args ...any) error {
	return fatalError{fmt.Errorf(format, args...)}
}

// serveVhostUser runs the session with QEMU until it disconnects or breaks
// the protocol.
func (b *Backend) serveVhostUser(c *net.UnixConn) error {
	for {
		m, err := readVUMessage(c)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, os.ErrClosed) || isEOF(err) {
				return errors.New("QEMU disconnected from the vhost-user socket")
			}
			return fmt.Errorf("read vhost-user message: %w", err)
		}
		log.G(b.ctx).Debugf("vhost-user %s flags=%#x size=%d fds=%d", m.name(), m.flags, len(m.payload), len(m.fds))
		reply, err := b.handleVU(m)
		m.closeFds()
		var fatal fatalError
		if errors.As(err, &fatal) {
			return fmt.Errorf("vhost-user %s: %w", m.name(), fatal.error)
		}
		if err != nil {
			log.G(b.ctx).WithError(err).Warnf("vhost-user %s failed", m.name())
		}
		if reply == nil && m.needReply() {
			status := uint64(0)
			if err != nil {
				status = 1
			}
			reply = u64Payload(status)
		}
		if reply != nil {
			if _, err := c.Write(encodeVUReply(m.request, reply)); err != nil {
				return fmt.Errorf("write vhost-user %s reply: %w", m.name(), err)
			}
		}
	}
}

// handleVU applies one request. It returns the reply payload for requests
// that have one; err is a fatalError when the session cannot go on.
func (b *Backend) handleVU(m *vuMessage) ([]byte, error) {
	switch m.request {
	case vuGetFeatures:
		return u64Payload(offeredFeatures), nil
	case vuGetProtocolFeatures:
		return u64Payload(offeredProtocol), nil
	case vuGetQueueNum:
		return u64Payload(numQueues), nil
	case vuGetConfig:
		return b.getConfig(m)
	case vuGetVringBase:
		index, _, err := m.vringState()
		if err != nil {
			return nil, fatalError{err}
		}
		if index >= numQueues {
			return nil, fatalf("ring index %d out of range", index)
		}
		b.mu.Lock()
		base := b.dev.stopRing(&b.dev.rings[index])
		b.mu.Unlock()
		return encodeVringState(index, uint32(base)), nil
	case vuGetStatus:
		b.mu.Lock()
		s := b.dev.status
		b.mu.Unlock()
		return u64Payload(s), nil
	case vuSetMemTable:
		return nil, b.setMemTable(m)
	}
	return nil, b.handleVUSet(m)
}

// handleVUSet applies requests without a reply payload.
func (b *Backend) handleVUSet(m *vuMessage) error {
	switch m.request {
	case vuSetOwner, vuResetOwner, vuResetDevice:
		if len(m.payload) != 0 && m.request != vuResetOwner {
			return fatalf("unexpected %d byte payload", len(m.payload))
		}
		if m.request != vuSetOwner {
			b.mu.Lock()
			for i := range b.dev.rings {
				b.dev.stopRing(&b.dev.rings[i])
				b.dev.rings[i].enabled = false
			}
			b.mu.Unlock()
		}
		return nil
	case vuSetFeatures:
		v, err := m.u64()
		if err != nil {
			return fatalError{err}
		}
		if extra := v &^ offeredFeatures; extra != 0 {
			// QEMU passes the guest's acked virtio features through; ignore what we never offered.
			log.G(b.ctx).Debugf("vhost-user SET_FEATURES: ignoring features %#x we did not offer", extra)
		}
		b.mu.Lock()
		b.dev.features = v & offeredFeatures
		for i := range b.dev.rings {
			b.dev.rings[i].bound = false
		}
		b.mu.Unlock()
		b.kick()
		return nil
	case vuSetProtocolFeatures:
		v, err := m.u64()
		if err != nil {
			return fatalError{err}
		}
		b.mu.Lock()
		b.dev.protocol = v & offeredProtocol
		b.mu.Unlock()
		return nil
	case vuSetStatus:
		v, err := m.u64()
		if err != nil {
			return fatalError{err}
		}
		b.mu.Lock()
		b.dev.status = v
		b.mu.Unlock()
		return nil
	case vuSetVringNum, vuSetVringBase, vuSetVringEnable:
		return b.setVringState(m)
	case vuSetVringAddr:
		a, err := m.vringAddr()
		if err != nil {
			return fatalError{err}
		}
		if a.index >= numQueues {
			return fmt.Errorf("ring index %d out of range", a.index)
		}
		if a.flags != 0 {
			return fmt.Errorf("ring %d: flags %#x (dirty logging) not supported", a.index, a.flags)
		}
		b.mu.Lock()
		r := &b.dev.rings[a.index]
		r.addr, r.addrSet, r.bound = a, true, false
		b.mu.Unlock()
		b.kick()
		return nil
	case vuSetVringKick, vuSetVringCall, vuSetVringErr:
		return b.setVringFile(m)
	case vuSetConfig:
		if _, _, _, _, err := m.config(); err != nil {
			return fatalError{err}
		}
		return errors.New("the vsock config space (guest CID) is read-only")
	case vuSetLogBase, vuSetLogFd, vuSetBackendReqFd, vuIOTLBMsg, vuSetVringEndian, vuSendRARP, vuNetSetMTU:
		// Only sent for features we do not offer; answer failure if asked.
		return fmt.Errorf("%s is not supported", m.name())
	}
	return fatalf("unsupported request")
}

func (b *Backend) getConfig(m *vuMessage) ([]byte, error) {
	offset, size, flags, _, err := m.config()
	if err != nil {
		return nil, fatalError{err}
	}
	// struct virtio_vsock_config { le64 guest_cid; }
	var cfg [8]byte
	binary.LittleEndian.PutUint64(cfg[:], uint64(b.cfg.GuestCID))
	if uint64(offset)+uint64(size) > uint64(len(cfg)) {
		// An empty payload tells the front-end the request failed.
		log.G(b.ctx).Warnf("vhost-user GET_CONFIG of %d bytes at offset %d is outside the %d byte config space", size, offset, len(cfg))
		return []byte{}, nil
	}
	return encodeConfig(offset, flags, cfg[offset:offset+size]), nil
}

func (b *Backend) setVringState(m *vuMessage) error {
	index, num, err := m.vringState()
	if err != nil {
		return fatalError{err}
	}
	if index >= numQueues {
		return fmt.Errorf("ring index %d out of range", index)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &b.dev.rings[index]
	switch m.request {
	case vuSetVringNum:
		if num == 0 || num > maxQueueSize || num&(num-1) != 0 {
			return fmt.Errorf("ring %d: size %d is not a power of two in [1, %d]", index, num, maxQueueSize)
		}
		r.num, r.bound = num, false
	case vuSetVringBase:
		if num > 0xffff {
			return fmt.Errorf("ring %d: base %d out of range", index, num)
		}
		r.base, r.needInit = uint16(num), true
	case vuSetVringEnable:
		if num > 1 {
			return fmt.Errorf("ring %d: enable value %d", index, num)
		}
		r.enabled = num == 1
	}
	b.kick()
	return nil
}

func (b *Backend) setVringFile(m *vuMessage) error {
	index, noFd, err := m.vringFile()
	if err != nil {
		return fatalError{err}
	}
	want := 1
	if noFd {
		want = 0
	}
	fds, err := m.takeFds(want)
	if err != nil {
		return fatalError{err}
	}
	fd := -1
	if len(fds) == 1 {
		fd = fds[0]
	}
	if index >= numQueues {
		closeFd(&fd)
		return fmt.Errorf("ring index %d out of range", index)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		// release() has run; nothing would close this fd or stop a watcher.
		closeFd(&fd)
		return errors.New("backend is shut down")
	}
	r := &b.dev.rings[index]
	switch m.request {
	case vuSetVringCall:
		closeFd(&r.call)
		r.call = fd
		// An interrupt raised on the previous fd may not have reached the
		// guest (QEMU checks its masked notifier without waiting for us):
		// a spurious one is harmless, a lost one can hang the driver.
		signal(fd)
	case vuSetVringErr:
		closeFd(&r.errFd)
		r.errFd = fd
	case vuSetVringKick:
		if fd < 0 {
			return fmt.Errorf("ring %d: polling instead of kick notifications is not supported", index)
		}
		f, err := kickFile(fd, index)
		if err != nil {
			return err
		}
		if r.kick != nil {
			_ = r.kick.Close()
		}
		r.kick = f
		if !r.started {
			r.started, r.needInit = true, true
		}
		b.wg.Add(1)
		go b.watchKick(f)
		b.kick()
	}
	return nil
}

// kickFile makes the eventfd non-blocking so that reading it parks a
// goroutine in the runtime poller and Close wakes it up.
func kickFile(fd int, index uint32) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("ring %d: kick eventfd: %w", index, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("vring%d-kick", index)), nil
}

// watchKick turns kicks on one eventfd into wake-ups of the worker until
// the file is closed.
func (b *Backend) watchKick(f *os.File) {
	defer b.wg.Done()
	var buf [8]byte
	for {
		if _, err := f.Read(buf[:]); err != nil {
			return
		}
		b.kick()
	}
}

// setMemTable maps the new table before taking the lock and unmaps the old
// one after: the worker touches guest memory only under the lock.
func (b *Backend) setMemTable(m *vuMessage) error {
	regions, err := m.memTable()
	if err != nil {
		return fatalError{err}
	}
	fds, err := m.takeFds(len(regions))
	if err != nil {
		return fatalError{err}
	}
	mem, err := mapRegions(regions, fds)
	for _, fd := range fds {
		_ = unix.Close(fd) // the mappings keep the memory
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	if b.dead {
		b.mu.Unlock()
		mem.unmap()
		return errors.New("backend is shut down")
	}
	old := b.dev.mem
	b.dev.mem = mem
	for i := range b.dev.rings {
		r := &b.dev.rings[i]
		r.q.unbind()
		r.bound = false
	}
	b.kick()
	b.mu.Unlock()
	old.unmap()
	return nil
}

// isEOF: the front-end closed the connection between messages.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}
