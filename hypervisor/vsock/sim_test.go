package vsock

// A simulated QEMU and guest, for tests: simGuest speaks QEMU's side of
// vhost-user over the back-end's socket (the same message sequence QEMU
// 7.2 sends for vhost-user-vsock-pci, memfd guest RAM, eventfds), and plays
// a guest's virtio-vsock driver on split virtqueues in that memory, with a
// small connection layer on top. It waits for interrupts on the call
// eventfds only (no polling), so a back-end that forgets to notify hangs.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	simQueueSize = 128
	simRxBufSize = 4096 + hdrLen // what Linux posts
	simTxSlots   = simQueueSize / 2
	simTxData    = 32 << 10
	simMemSize   = 16 << 20
	simMemOff    = 64 << 10 // the region starts this far into the memfd
	simGPA       = 0x4000_0000
	simUA        = 0x7f12_3400_0000

	simRxDesc, simRxAvail, simRxUsed = 0x0000, 0x0800, 0x1000
	simTxDesc, simTxAvail, simTxUsed = 0x2000, 0x2800, 0x3000
	simRxBufs                        = 0x10000
	simRxBufStride                   = 0x1100
	simTxHdrs                        = 0x100000
	simTxInd                         = 0x180000
	simTxDataOff                     = 0x200000

	simWait = 10 * time.Second
)

type simOptions struct {
	features uint64 // virtio features the guest acks
	bufAlloc uint32 // guest receive buffer per connection
}

func defaultSimOptions() simOptions {
	return simOptions{features: featVersion1 | featEventIdx | featIndirectDesc, bufAlloc: 64 << 10}
}

type simQueue struct {
	desc, avail, used int // offsets into guest memory
	kick, call        int // eventfds
	availIdx          uint16
	lastUsed          uint16
	kickedAt          uint16
}

type simKey struct{ local, peer uint32 }

type simGuest struct {
	t        testing.TB
	cid      uint32
	opts     simOptions
	vu       *net.UnixConn
	memfd    int
	mapping  []byte
	mem      []byte
	q        [2]*simQueue
	stopFd   int
	loopDone chan struct{}

	mu         sync.Mutex
	cond       *sync.Cond
	conns      map[simKey]*simConn
	listeners  map[uint32]chan *simConn
	nextPort   uint32
	freeSlots  []int
	outbox     []simPacket
	tap        chan header
	violations []string
	fence      atomic.Uint32
	closed     bool // torn down; guest operations fail
	extra      []func()
	errFds     [2]int // where the back-end reports ring errors
}

type simPacket struct {
	h       header
	payload []byte
}

// simConnect connects to the back-end like QEMU does when it realizes the
// device: feature and protocol negotiation, owner, call fds, config.
func simConnect(t testing.TB, path string, cid uint32, opts simOptions) *simGuest {
	t.Helper()
	g := simDial(t, path, cid, opts)
	g.realize()
	return g
}

// simDial only connects.
func simDial(t testing.TB, path string, cid uint32, opts simOptions) *simGuest {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("connect to vhost-user socket: %v", err)
	}
	g := &simGuest{t: t, cid: cid, opts: opts, vu: c, memfd: -1, stopFd: -1, errFds: [2]int{-1, -1},
		conns: map[simKey]*simConn{}, listeners: map[uint32]chan *simConn{}, nextPort: 1024,
		tap: make(chan header, 4096)}
	g.cond = sync.NewCond(&g.mu)
	t.Cleanup(g.close)
	return g
}

// realize is QEMU's vhost_user_backend_init and vhost_dev_init.
func (g *simGuest) realize() {
	t := g.t
	t.Helper()
	features := g.getU64(vuGetFeatures)
	if features&featVersion1 == 0 || features&vuFProtocolFeatures == 0 {
		t.Fatalf("back-end features %#x lack VERSION_1 or PROTOCOL_FEATURES", features)
	}
	proto := g.getU64(vuGetProtocolFeatures)
	if proto&vuProtoConfig == 0 {
		t.Fatalf("vhost-user device expecting VHOST_USER_PROTOCOL_F_CONFIG but the backend (%#x) does not support it", proto)
	}
	g.mustSend(vuSetProtocolFeatures, 0, u64Payload(proto))
	if proto&vuProtoMQ != 0 {
		if n := g.getU64(vuGetQueueNum); n < 2 {
			t.Fatalf("GET_QUEUE_NUM = %d", n)
		}
	}
	g.mustSend(vuSetOwner, 0, nil)
	g.getU64(vuGetFeatures)
	for i := range 2 {
		// vhost_virtqueue_init passes the masked notifier and an error eventfd.
		fd := newEventfd(t)
		g.mustSend(vuSetVringCall, 0, u64Payload(uint64(i)), fd)
		unix.Close(fd)
		g.errFds[i] = newEventfd(t)
		g.mustSend(vuSetVringErr, 0, u64Payload(uint64(i)), g.errFds[i])
	}
	reply := g.call(vuGetConfig, 0, encodeConfig(0, 0, make([]byte, 8)))
	if len(reply) != 20 || binary.LittleEndian.Uint64(reply[12:]) != uint64(g.cid) {
		t.Fatalf("GET_CONFIG reply %x, want guest CID %d", reply, g.cid)
	}
}

// start plays the guest driver setting DRIVER_OK and QEMU starting vhost,
// in the order QEMU 7.2 and 10.0 send it: call fds, features, memory
// table, per ring num/base/addr/kick, enable, then the unmasked call fds.
// Then it posts rx buffers and starts the interrupt loop.
func (g *simGuest) start() {
	t := g.t
	t.Helper()
	var err error
	g.memfd, err = unix.MemfdCreate("sim-guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(g.memfd, simMemOff+simMemSize); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	g.mapping, err = unix.Mmap(g.memfd, 0, simMemOff+simMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	g.mem = g.mapping[simMemOff:]
	g.q[rxQueue] = &simQueue{desc: simRxDesc, avail: simRxAvail, used: simRxUsed}
	g.q[txQueue] = &simQueue{desc: simTxDesc, avail: simTxAvail, used: simTxUsed}
	for i := range simTxSlots {
		g.freeSlots = append(g.freeSlots, i)
	}

	var masked [2]int
	for i, q := range g.q {
		q.kick, q.call = newEventfd(t), newEventfd(t)
		masked[i] = newEventfd(t)
		g.mustSend(vuSetVringCall, 0, u64Payload(uint64(i)), masked[i])
	}
	g.mustSend(vuSetFeatures, 0, u64Payload(g.opts.features|vuFProtocolFeatures))
	g.setMemTable([]regionDesc{{gpa: simGPA, size: simMemSize, uaddr: simUA, mmapOffset: simMemOff}}, g.memfd)
	for i, q := range g.q {
		g.mustSend(vuSetVringNum, 0, encodeVringState(uint32(i), simQueueSize))
		g.mustSend(vuSetVringBase, 0, encodeVringState(uint32(i), 0))
		g.mustSend(vuSetVringAddr, 0, g.vringAddrPayload(i))
		g.mustSend(vuSetVringKick, 0, u64Payload(uint64(i)), q.kick)
	}
	for i := range g.q {
		g.ack(vuSetVringEnable, encodeVringState(uint32(i), 1)) // QEMU 10 waits; 7.2 does not
	}
	for i, q := range g.q {
		g.mustSend(vuSetVringCall, 0, u64Payload(uint64(i)), q.call)
		// Like QEMU on unmask: an interrupt raised while masked is delivered now.
		var buf [8]byte
		if n, _ := unix.Read(masked[i], buf[:]); n == 8 {
			signal(q.call)
		}
		unix.Close(masked[i])
	}
	g.mu.Lock()
	for i := range simQueueSize {
		g.postRxLocked(uint16(i))
	}
	g.kickLocked(rxQueue)
	g.mu.Unlock()

	g.stopFd = newEventfd(t)
	g.loopDone = make(chan struct{})
	go g.loop()
}

func (g *simGuest) vringAddrPayload(i int) []byte {
	q := g.q[i]
	p := binary.LittleEndian.AppendUint32(nil, uint32(i))
	p = binary.LittleEndian.AppendUint32(p, 0)
	p = binary.LittleEndian.AppendUint64(p, simUA+uint64(q.desc))
	p = binary.LittleEndian.AppendUint64(p, simUA+uint64(q.used))
	p = binary.LittleEndian.AppendUint64(p, simUA+uint64(q.avail))
	return binary.LittleEndian.AppendUint64(p, 0)
}

func (g *simGuest) setMemTable(regions []regionDesc, fds ...int) {
	g.t.Helper()
	p := binary.LittleEndian.AppendUint32(nil, uint32(len(regions)))
	p = binary.LittleEndian.AppendUint32(p, 0)
	for _, r := range regions {
		p = binary.LittleEndian.AppendUint64(p, r.gpa)
		p = binary.LittleEndian.AppendUint64(p, r.size)
		p = binary.LittleEndian.AppendUint64(p, r.uaddr)
		p = binary.LittleEndian.AppendUint64(p, r.mmapOffset)
	}
	g.ack(vuSetMemTable, p, fds...)
}

func newEventfd(t testing.TB) int {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatalf("eventfd: %v", err)
	}
	return fd
}

func (g *simGuest) close() {
	if g.loopDone != nil {
		signal(g.stopFd)
		<-g.loopDone
		g.loopDone = nil
	}
	_ = g.vu.Close()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.cond.Broadcast()
	for _, q := range g.q {
		if q != nil {
			closeFd(&q.kick)
			closeFd(&q.call)
		}
	}
	closeFd(&g.stopFd)
	closeFd(&g.memfd)
	closeFd(&g.errFds[0])
	closeFd(&g.errFds[1])
	for _, f := range g.extra {
		f()
	}
	if g.mapping != nil {
		_ = unix.Munmap(g.mapping)
		g.mapping, g.mem = nil, nil
	}
}

// vhost-user front-end messaging.

func (g *simGuest) send(req, flags uint32, payload []byte, fds ...int) error {
	msg := make([]byte, vuHeaderSize+len(payload))
	binary.LittleEndian.PutUint32(msg[0:], req)
	binary.LittleEndian.PutUint32(msg[4:], vuVersion|flags)
	binary.LittleEndian.PutUint32(msg[8:], uint32(len(payload)))
	copy(msg[vuHeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := g.vu.WriteMsgUnix(msg, oob, nil)
	return err
}

func (g *simGuest) mustSend(req, flags uint32, payload []byte, fds ...int) {
	g.t.Helper()
	if err := g.send(req, flags, payload, fds...); err != nil {
		g.t.Fatalf("send %s: %v", vuRequestName(req), err)
	}
}

// recv reads a reply the way QEMU's vhost_user_read does.
func (g *simGuest) recv(req uint32) ([]byte, error) {
	_ = g.vu.SetReadDeadline(time.Now().Add(simWait))
	defer g.vu.SetReadDeadline(time.Time{})
	var hdr [vuHeaderSize]byte
	if _, err := io.ReadFull(g.vu, hdr[:]); err != nil {
		return nil, fmt.Errorf("read %s reply header: %w", vuRequestName(req), err)
	}
	if got := binary.LittleEndian.Uint32(hdr[0:]); got != req {
		return nil, fmt.Errorf("reply to %s is for %s", vuRequestName(req), vuRequestName(got))
	}
	if flags := binary.LittleEndian.Uint32(hdr[4:]); flags != vuVersion|vuFlagReply {
		return nil, fmt.Errorf("reply to %s has flags %#x", vuRequestName(req), flags)
	}
	p := make([]byte, binary.LittleEndian.Uint32(hdr[8:]))
	if _, err := io.ReadFull(g.vu, p); err != nil {
		return nil, fmt.Errorf("read %s reply payload: %w", vuRequestName(req), err)
	}
	return p, nil
}

func (g *simGuest) call(req, flags uint32, payload []byte, fds ...int) []byte {
	g.t.Helper()
	g.mustSend(req, flags, payload, fds...)
	p, err := g.recv(req)
	if err != nil {
		g.t.Fatal(err)
	}
	return p
}

func (g *simGuest) getU64(req uint32) uint64 {
	g.t.Helper()
	p := g.call(req, 0, nil)
	if len(p) != 8 {
		g.t.Fatalf("%s reply is %d bytes", vuRequestName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// ack sends with NEED_REPLY and requires success.
func (g *simGuest) ack(req uint32, payload []byte, fds ...int) {
	g.t.Helper()
	if status := g.ackStatus(req, payload, fds...); status != 0 {
		g.t.Fatalf("%s failed: status %d", vuRequestName(req), status)
	}
}

func (g *simGuest) ackStatus(req uint32, payload []byte, fds ...int) uint64 {
	g.t.Helper()
	p := g.call(req, vuFlagNeedReply, payload, fds...)
	if len(p) != 8 {
		g.t.Fatalf("%s ack is %d bytes", vuRequestName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// Guest memory and ring access.

func (g *simGuest) u16(off int) uint16 { return load16(g.mem, off) }

func (g *simGuest) store16(off int, v uint16) {
	// Store the aligned word holding v; its other half is ours too (flags
	// or the ring's first entry), so read-modify-write is safe.
	base := off &^ 3
	w := binary.LittleEndian.Uint32(g.mem[base:])
	shift := (off - base) * 8
	w = w&^(0xffff<<shift) | uint32(v)<<shift
	var tmp [4]byte
	binary.LittleEndian.PutUint32(tmp[:], w)
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&g.mem[base])), binary.NativeEndian.Uint32(tmp[:]))
}

func (g *simGuest) setDesc(q *simQueue, i int, addr uint64, length uint32, flags, next uint16) {
	d := g.mem[q.desc+16*i:]
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// publishLocked makes head available.
func (g *simGuest) publishLocked(qi int, head uint16) {
	q := g.q[qi]
	binary.LittleEndian.PutUint16(g.mem[q.avail+4+2*int(q.availIdx%simQueueSize):], head)
	q.availIdx++
	g.store16(q.avail+2, q.availIdx)
}

// kickLocked notifies the device of new buffers unless it asked not to be.
func (g *simGuest) kickLocked(qi int) {
	q := g.q[qi]
	if q.availIdx == q.kickedAt {
		return
	}
	g.fence.Add(1)
	old := q.kickedAt
	q.kickedAt = q.availIdx
	if g.opts.features&featEventIdx != 0 {
		event := g.u16(q.used + 4 + 8*simQueueSize)
		if q.availIdx-event-1 >= q.availIdx-old {
			return
		}
	} else if g.u16(q.used)&1 != 0 { // VRING_USED_F_NO_NOTIFY
		return
	}
	signal(q.kick)
}

func (g *simGuest) postRxLocked(i uint16) {
	q := g.q[rxQueue]
	g.setDesc(q, int(i), simGPA+simRxBufs+uint64(i)*simRxBufStride, simRxBufSize, descFWrite, 0)
	g.publishLocked(rxQueue, i)
}

// loop waits for interrupts and handles used buffers.
func (g *simGuest) loop() {
	defer close(g.loopDone)
	var buf [8]byte
	for {
		fds := []unix.PollFd{
			{Fd: int32(g.q[rxQueue].call), Events: unix.POLLIN},
			{Fd: int32(g.q[txQueue].call), Events: unix.POLLIN},
			{Fd: int32(g.stopFd), Events: unix.POLLIN},
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			panic(err)
		}
		if fds[2].Revents != 0 {
			return
		}
		for _, f := range fds[:2] {
			if f.Revents != 0 {
				_, _ = unix.Read(int(f.Fd), buf[:])
			}
		}
		g.mu.Lock()
		g.reclaimLocked()
		g.receiveLocked()
		g.flushLocked()
		g.cond.Broadcast()
		g.mu.Unlock()
	}
}

// usedLoopLocked walks new used entries of a queue, re-arming the interrupt
// (EVENT_IDX) and looking once more before it stops.
func (g *simGuest) usedLoopLocked(qi int, f func(id, length uint32)) {
	q := g.q[qi]
	for {
		for q.lastUsed != g.u16(q.used+2) {
			e := g.mem[q.used+4+8*int(q.lastUsed%simQueueSize):]
			q.lastUsed++
			f(binary.LittleEndian.Uint32(e[0:]), binary.LittleEndian.Uint32(e[4:]))
		}
		if g.opts.features&featEventIdx == 0 {
			return
		}
		binary.LittleEndian.PutUint16(g.mem[q.avail+4+2*simQueueSize:], q.lastUsed)
		g.fence.Add(1)
		if q.lastUsed == g.u16(q.used+2) {
			return
		}
	}
}

func (g *simGuest) violation(format string, args ...any) {
	g.violations = append(g.violations, fmt.Sprintf(format, args...))
}

func (g *simGuest) reclaimLocked() {
	g.usedLoopLocked(txQueue, func(id, length uint32) {
		slot := int(id)
		if g.opts.features&featIndirectDesc == 0 {
			slot = int(id) / 2
		}
		if id >= simQueueSize || slot >= simTxSlots {
			g.violation("tx used id %d out of range", id)
			return
		}
		g.freeSlots = append(g.freeSlots, slot)
	})
}

func (g *simGuest) receiveLocked() {
	var reposted bool
	g.usedLoopLocked(rxQueue, func(id, length uint32) {
		if id >= simQueueSize {
			g.violation("rx used id %d out of range", id)
			return
		}
		buf := g.mem[simRxBufs+int(id)*simRxBufStride:][:simRxBufSize]
		defer func() { g.postRxLocked(uint16(id)); reposted = true }()
		if length < hdrLen || length > simRxBufSize {
			g.violation("rx used length %d", length)
			return
		}
		h, _ := decodeHeader(buf)
		if hdrLen+h.len != length {
			g.violation("rx used length %d for %v", length, h)
			return
		}
		g.dispatchLocked(h, append([]byte(nil), buf[hdrLen:length]...))
	})
	if reposted {
		g.kickLocked(rxQueue)
	}
}

// sendLocked queues a packet from the guest; it never blocks.
func (g *simGuest) sendLocked(h header, payload []byte) {
	h.srcCID, h.dstCID, h.len = uint64(g.cid), hostCID, uint32(len(payload))
	if h.typ == 0 {
		h.typ = typeStream
	}
	g.outbox = append(g.outbox, simPacket{h, payload})
	g.flushLocked()
}

func (g *simGuest) flushLocked() {
	if g.closed {
		return
	}
	sent := false
	for len(g.outbox) > 0 && len(g.freeSlots) > 0 {
		p := g.outbox[0]
		g.outbox = g.outbox[1:]
		slot := g.freeSlots[len(g.freeSlots)-1]
		g.freeSlots = g.freeSlots[:len(g.freeSlots)-1]
		g.putTxLocked(slot, p)
		sent = true
	}
	if sent {
		g.kickLocked(txQueue)
	}
}

func (g *simGuest) putTxLocked(slot int, p simPacket) {
	q := g.q[txQueue]
	hdrOff, dataOff := simTxHdrs+64*slot, simTxDataOff+simTxData*slot
	p.h.encode(g.mem[hdrOff:])
	copy(g.mem[dataOff:dataOff+simTxData], p.payload)
	hdrGPA, dataGPA := simGPA+uint64(hdrOff), simGPA+uint64(dataOff)
	if g.opts.features&featIndirectDesc != 0 {
		// Linux puts header and payload behind one indirect descriptor.
		tab := simTxInd + 32*slot
		n := 1
		d := g.mem[tab:]
		binary.LittleEndian.PutUint64(d[0:], hdrGPA)
		binary.LittleEndian.PutUint32(d[8:], hdrLen)
		binary.LittleEndian.PutUint16(d[12:], 0)
		if len(p.payload) > 0 {
			binary.LittleEndian.PutUint16(d[12:], descFNext)
			binary.LittleEndian.PutUint16(d[14:], 1)
			binary.LittleEndian.PutUint64(d[16:], dataGPA)
			binary.LittleEndian.PutUint32(d[24:], uint32(len(p.payload)))
			binary.LittleEndian.PutUint16(d[28:], 0)
			n = 2
		}
		g.setDesc(q, slot, simGPA+uint64(tab), uint32(16*n), descFIndirect, 0)
		g.publishLocked(txQueue, uint16(slot))
		return
	}
	if len(p.payload) > 0 {
		g.setDesc(q, 2*slot, hdrGPA, hdrLen, descFNext, uint16(2*slot+1))
		g.setDesc(q, 2*slot+1, dataGPA, uint32(len(p.payload)), 0, 0)
	} else {
		g.setDesc(q, 2*slot, hdrGPA, hdrLen, 0, 0)
	}
	g.publishLocked(txQueue, uint16(2*slot))
}

// waitLocked waits until pred holds, up to simWait.
func (g *simGuest) waitLocked(what string, pred func() bool) error {
	deadline := time.Now().Add(simWait)
	timer := time.AfterFunc(simWait, func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	})
	defer timer.Stop()
	for !pred() {
		if g.closed {
			return errors.New("guest: torn down")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("guest: timed out waiting for %s", what)
		}
		g.cond.Wait()
	}
	return nil
}

// The guest's connection layer.

type simConnState int

const (
	simConnecting simConnState = iota
	simEstablished
	simClosed
)

type simConn struct {
	g                *simGuest
	key              simKey
	state            simConnState
	reset            bool
	rx               []byte
	fwdCnt, sentFwd  uint32
	txCnt            uint32
	peerBuf, peerFwd uint32
	peerShut         uint32
}

func (g *simGuest) newConnLocked(key simKey, state simConnState) *simConn {
	c := &simConn{g: g, key: key, state: state}
	g.conns[key] = c
	return c
}

func (c *simConn) hdr(op uint16) header {
	return header{srcPort: c.key.local, dstPort: c.key.peer, op: op,
		bufAlloc: c.g.opts.bufAlloc, fwdCnt: c.fwdCnt}
}

func (c *simConn) sendLocked(op uint16, flags uint32, payload []byte) {
	h := c.hdr(op)
	h.flags = flags
	c.sentFwd = c.fwdCnt
	c.g.sendLocked(h, payload)
}

func (g *simGuest) dispatchLocked(h header, payload []byte) {
	select {
	case g.tap <- h:
	default:
	}
	if h.srcCID != hostCID || h.dstCID != uint64(g.cid) || (h.typ != typeStream && h.op != opRST) {
		g.violation("packet with bad addresses or type: %v", h)
		return
	}
	key := simKey{local: h.dstPort, peer: h.srcPort}
	c := g.conns[key]
	if c == nil {
		switch {
		case h.op == opRequest && g.listeners[h.dstPort] != nil:
			c = g.newConnLocked(key, simEstablished)
			c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCnt
			select {
			case g.listeners[h.dstPort] <- c:
				c.sendLocked(opResponse, 0, nil)
			default:
				delete(g.conns, key)
				g.sendLocked(header{srcPort: key.local, dstPort: key.peer, op: opRST}, nil)
			}
		case h.op != opRST:
			g.sendLocked(header{srcPort: key.local, dstPort: key.peer, op: opRST}, nil)
		}
		return
	}
	c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCnt
	switch h.op {
	case opResponse:
		if c.state == simConnecting {
			c.state = simEstablished
		} else {
			g.violation("RESPONSE on %v", key)
		}
	case opRW:
		if c.state != simEstablished {
			g.violation("RW on a connection in state %d", c.state)
		}
		if len(c.rx)+len(payload) > int(g.opts.bufAlloc) {
			g.violation("host sent %d bytes with %d unread, beyond the guest's %d byte buffer", len(payload), len(c.rx), g.opts.bufAlloc)
		}
		c.rx = append(c.rx, payload...)
	case opCreditRequest:
		c.sendLocked(opCreditUpdate, 0, nil)
	case opCreditUpdate:
	case opShutdown:
		c.peerShut |= h.flags
		if c.peerShut == shutdownBoth {
			c.sendLocked(opRST, 0, nil)
			c.state = simClosed
			delete(g.conns, key)
		}
	case opRST:
		c.state, c.reset = simClosed, true
		delete(g.conns, key)
	default:
		g.violation("unexpected %v", h)
	}
}

// listen returns connections the host opens to port.
func (g *simGuest) listen(port uint32) <-chan *simConn {
	ch := make(chan *simConn, 16)
	g.mu.Lock()
	g.listeners[port] = ch
	g.mu.Unlock()
	return ch
}

func (g *simGuest) accept(ch <-chan *simConn) *simConn {
	g.t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(simWait):
		g.t.Fatal("guest: no connection to accept")
	}
	return nil
}

// connect opens a connection to a host port.
func (g *simGuest) connect(port uint32) (*simConn, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.nextPort++
	c := g.newConnLocked(simKey{local: g.nextPort, peer: port}, simConnecting)
	c.sendLocked(opRequest, 0, nil)
	if err := g.waitLocked("RESPONSE", func() bool { return c.state != simConnecting }); err != nil {
		return nil, err
	}
	if c.state != simEstablished {
		return nil, fmt.Errorf("guest: connection to host port %d reset", port)
	}
	return c, nil
}

func (c *simConn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwd
	if inFlight >= c.peerBuf {
		return 0
	}
	return c.peerBuf - inFlight
}

// write sends p within the host's credit.
func (c *simConn) write(p []byte) error {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	for len(p) > 0 {
		err := g.waitLocked("credit", func() bool {
			return c.state != simEstablished || (c.credit() > 0 && len(g.outbox) < simTxSlots)
		})
		if err != nil {
			return err
		}
		if c.state != simEstablished || c.peerShut&shutdownRcv != 0 {
			return errors.New("guest: write on a closed connection")
		}
		n := min(len(p), int(c.credit()), simTxData)
		c.txCnt += uint32(n)
		c.sendLocked(opRW, 0, append([]byte(nil), p[:n]...))
		p = p[n:]
	}
	return nil
}

// read returns buffered data, io.EOF after the host's shutdown or RST.
func (c *simConn) read(p []byte) (int, error) {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	err := g.waitLocked("data", func() bool {
		return len(c.rx) > 0 || c.state == simClosed || c.peerShut&shutdownSend != 0
	})
	if err != nil {
		return 0, err
	}
	if len(c.rx) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.rx)
	c.rx = c.rx[n:]
	c.fwdCnt += uint32(n)
	// Like Linux: tell the host once it may be running short of credit.
	if c.state == simEstablished && c.fwdCnt-c.sentFwd >= g.opts.bufAlloc/4 {
		c.sendLocked(opCreditUpdate, 0, nil)
	}
	return n, nil
}

func (c *simConn) readAll() ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := c.read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func (c *simConn) shutdown(flags uint32) {
	c.g.mu.Lock()
	defer c.g.mu.Unlock()
	c.sendLocked(opShutdown, flags, nil)
}

// close shuts down both ways and waits for the host's RST, like Linux.
func (c *simConn) close() error {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.state == simClosed {
		return nil
	}
	c.sendLocked(opShutdown, shutdownBoth, nil)
	return g.waitLocked("RST after shutdown", func() bool { return c.state == simClosed })
}

// checkViolations fails the test for protocol violations the guest saw.
func (g *simGuest) checkViolations() {
	g.t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, v := range g.violations {
		g.t.Errorf("guest saw a protocol violation: %s", v)
	}
}

// expectPacket waits for a packet from the host matching pred.
func (g *simGuest) expectPacket(what string, pred func(header) bool) header {
	g.t.Helper()
	timeout := time.After(simWait)
	for {
		select {
		case h := <-g.tap:
			if pred(h) {
				return h
			}
		case <-timeout:
			g.t.Fatalf("guest: no %s from the host", what)
		}
	}
}

func unixMemfd(size int) (int, error) {
	fd, err := unix.MemfdCreate("sim-guest-ram-2", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func mmapShared(fd, size int) ([]byte, error) {
	return unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

func unmapAndClose(m []byte, fd int) {
	_ = unix.Munmap(m)
	_ = unix.Close(fd)
}
