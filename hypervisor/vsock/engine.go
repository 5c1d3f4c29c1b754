package vsock

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/containerd/log"
)

const (
	// maxCtrlBacklog bounds replies to unknown connections waiting for rx
	// buffers: past it we stop reading the tx queue, as Linux vhost does, so
	// a guest that never posts rx buffers cannot make us queue without end.
	maxCtrlBacklog = 256
	// maxConns bounds connections per VM.
	maxConns = 4096
	// maxRounds bounds one pass under the lock so host readers and writers
	// get their turn; the worker wakes itself to continue.
	maxRounds = 64
)

// run is the worker: it processes the virtqueues whenever a kick, a host
// side change or the vhost-user session wakes it.
func (b *Backend) run() {
	defer b.wg.Done()
	// A guest or QEMU could shrink the memory under us; turn the resulting
	// fault into an error instead of a crash.
	debug.SetPanicOnFault(true)
	for {
		select {
		case <-b.wake:
		case <-b.stopWorker:
			return
		}
		b.mu.Lock()
		err := b.processLocked()
		b.mu.Unlock()
		if err != nil {
			b.fail(err)
			return
		}
	}
}

// kick wakes the worker. It never blocks, so it may be called with or
// without the lock held.
func (b *Backend) kick() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// queueLocked schedules a connection for the rx queue.
func (b *Backend) queueLocked(c *Conn) {
	if !c.queued && c.sendable() {
		c.queued = true
		b.pending = append(b.pending, c)
		b.kick()
	}
}

// removeConnLocked takes a connection out of the table. err, if not nil,
// is what host reads and writes report from now on.
func (b *Backend) removeConnLocked(c *Conn, err error) {
	if b.conns[c.key] == c {
		delete(b.conns, c.key)
	}
	c.state = stateClosed
	if err != nil && c.err == nil {
		c.err = err
	}
	if c.closeTimer != nil {
		c.closeTimer.Stop()
		c.closeTimer = nil
	}
	c.tx.reset()
	c.notify()
	b.queueLocked(c) // a pending RST still goes out
}

// resetConnLocked sends the guest a RST and removes the connection.
func (b *Backend) resetConnLocked(c *Conn, err error) {
	if err != nil {
		log.G(b.ctx).WithError(err).Debugf("vsock: resetting connection host:%d guest:%d", c.key.hostPort, c.key.guestPort)
	}
	if c.state != stateClosed {
		// A request that never left needs no RST.
		c.wantRST = !(c.state == stateConnecting && c.wantRequest)
		c.wantRequest, c.wantResponse = false, false
	}
	b.removeConnLocked(c, err)
}

// replyRSTLocked answers a packet that belongs to no connection.
func (b *Backend) replyRSTLocked(h header) {
	if h.op == opRST {
		return // never answer a RST, or two peers could ping-pong forever
	}
	b.ctrl = append(b.ctrl, header{
		srcCID: hostCID, dstCID: h.srcCID, srcPort: h.dstPort, dstPort: h.srcPort,
		typ: h.typ, op: opRST,
	})
	b.kick()
}

// readyQueue returns the queue if it may be processed, binding it to guest
// memory first when needed.
func (b *Backend) readyQueue(i int) (*virtqueue, error) {
	d := &b.dev
	r := &d.rings[i]
	if !r.started || !d.ringEnabled(r) || d.mem == nil || !r.addrSet || r.num == 0 {
		return nil, nil
	}
	if !r.bound {
		if err := r.q.bind(d.mem, r.num, r.addr.desc, r.addr.avail, r.addr.used); err != nil {
			return nil, err
		}
		r.q.eventIdx = d.features&featEventIdx != 0
		r.q.indirect = d.features&featIndirectDesc != 0
		r.bound = true
	}
	if r.needInit {
		r.q.start(r.base)
		r.needInit = false
	}
	return &r.q, nil
}

func queueName(i int) string {
	if i == rxQueue {
		return "rx"
	}
	return "tx"
}

// processLocked moves packets until neither queue can make progress.
func (b *Backend) processLocked() (err error) {
	defer func() {
		if r := recover(); r != nil {
			fault, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("fault accessing guest memory at %#x", fault.Addr())
		}
	}()
	if b.dead {
		return nil
	}
	var queues [2]*virtqueue
	for i := range queues {
		q, err := b.readyQueue(i)
		if err != nil {
			signal(b.dev.rings[i].errFd)
			return fmt.Errorf("vsock %s queue: %w", queueName(i), err)
		}
		queues[i] = q
	}
	rx, tx := queues[rxQueue], queues[txQueue]
	for round := 0; ; round++ {
		if round == maxRounds {
			b.kick()
			break
		}
		progress := false
		if tx != nil {
			for n := 0; n < 64 && len(b.ctrl) < maxCtrlBacklog; n++ {
				c, ok, err := tx.pop()
				if err != nil {
					signal(b.dev.rings[txQueue].errFd)
					return fmt.Errorf("vsock tx queue: %w", err)
				}
				if !ok {
					break
				}
				b.guestPacketLocked(c)
				tx.push(c.head, 0)
				progress = true
			}
		}
		if rx != nil {
			for b.outgoingLocked() {
				c, ok, err := rx.pop()
				if err != nil {
					signal(b.dev.rings[rxQueue].errFd)
					return fmt.Errorf("vsock rx queue: %w", err)
				}
				if !ok {
					break
				}
				rx.push(c.head, uint32(b.fillLocked(c)))
				progress = true
			}
		}
		for i, q := range queues {
			if q != nil && q.needInterrupt() {
				signal(b.dev.rings[i].call)
			}
		}
		if progress {
			continue
		}
		// Idle: ask for kicks, then look once more so a buffer made
		// available meanwhile does not wait for a kick that never comes.
		again := false
		if tx != nil && len(b.ctrl) < maxCtrlBacklog && tx.armKick() {
			again = true
		}
		if rx != nil && b.outgoingLocked() && rx.armKick() {
			again = true
		}
		if !again {
			break
		}
	}
	return nil
}

// guestPacketLocked handles one chain from the tx queue.
func (b *Backend) guestPacketLocked(c descChain) {
	var raw [hdrLen]byte
	if gather(raw[:], c.readable, 0) < hdrLen {
		b.guestWarnLocked("vsock: dropping tx buffer of %d bytes, shorter than a packet header", segsLen(c.readable))
		return
	}
	h, _ := decodeHeader(raw[:])
	if len(c.writable) > 0 {
		b.guestWarnLocked("vsock: dropping tx packet with device-writable buffers: %v", h)
		return
	}
	if h.srcCID != uint64(b.cfg.GuestCID) || h.dstCID != hostCID {
		b.guestWarnLocked("vsock: dropping tx packet with foreign addresses: %v", h)
		return
	}
	if h.op == opRW && (h.len > maxPayload || int(h.len) > segsLen(c.readable)-hdrLen) {
		b.guestWarnLocked("vsock: dropping tx packet with bad length (%d byte buffer): %v", segsLen(c.readable), h)
		return
	}
	if h.op != opRW {
		h.len = 0
	}
	if h.typ != typeStream {
		b.replyRSTLocked(h)
		return
	}
	key := connKey{hostPort: h.dstPort, guestPort: h.srcPort}
	if conn := b.conns[key]; conn != nil {
		conn.guestPacket(h, c.readable, hdrLen)
		return
	}
	if h.op == opRequest {
		b.acceptLocked(h)
		return
	}
	b.replyRSTLocked(h)
}

// outgoingLocked reports whether a packet is ready for the rx queue,
// dropping queued connections that have nothing to send after all.
func (b *Backend) outgoingLocked() bool {
	if len(b.ctrl) > 0 {
		return true
	}
	for len(b.pending) > 0 {
		c := b.pending[0]
		if c.sendable() {
			return true
		}
		c.queued = false
		b.pending[0] = nil
		b.pending = b.pending[1:]
	}
	return false
}

// fillLocked writes the next packet into an rx chain and returns its length.
// outgoingLocked must have reported one.
func (b *Backend) fillLocked(c descChain) int {
	room := segsLen(c.writable)
	if room < hdrLen || len(c.readable) > 0 {
		b.guestWarnLocked("vsock: guest posted an unusable rx buffer (%d writable, %d readable bytes)", room, segsLen(c.readable))
		return 0
	}
	var h header
	var conn *Conn
	if len(b.ctrl) > 0 {
		h = b.ctrl[0]
		b.ctrl = b.ctrl[1:]
	} else {
		conn = b.pending[0]
		b.pending[0] = nil
		b.pending = b.pending[1:]
		conn.queued = false
		h = conn.nextPacket(room - hdrLen)
	}
	var raw [hdrLen]byte
	h.encode(raw[:])
	scatter(c.writable, 0, raw[:])
	if conn != nil {
		if h.len > 0 {
			p1, p2 := conn.tx.head(int(h.len))
			scatter(c.writable, hdrLen, p1)
			scatter(c.writable, hdrLen+len(p1), p2)
			conn.tx.discard(int(h.len))
			conn.notify() // writers may have room now
		}
		b.queueLocked(conn) // to the back: connections take turns
	}
	return hdrLen + int(h.len)
}

// guestWarnLocked logs what a guest did wrong, at most once a second, so
// that a hostile guest cannot flood the host's logs.
func (b *Backend) guestWarnLocked(format string, args ...any) {
	now := time.Now()
	if now.Sub(b.lastWarn) < time.Second {
		b.suppressed++
		return
	}
	entry := log.G(b.ctx)
	if b.suppressed > 0 {
		entry = entry.WithField("suppressed", b.suppressed)
	}
	entry.Warnf(format, args...)
	b.lastWarn, b.suppressed = now, 0
}

// errNoForward is why a guest connection to the host is refused.
var errNoForward = errors.New("no hybrid socket configured for guest-initiated connections")
