package vsock

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

// Per-connection buffering. bufAlloc is the receive buffer we advertise to
// the guest: it may send that much unread data and no more. txLimit bounds
// what host writers may queue before Write blocks.
const (
	bufAlloc   = 256 << 10
	txLimit    = 256 << 10
	creditStep = bufAlloc / 4 // consumed bytes worth an unsolicited credit update

	// closeTimeout is how long a closed connection waits for the guest to
	// acknowledge the shutdown before it is reset (Linux waits 8 s).
	closeTimeout = 8 * time.Second
)

type connState int

const (
	stateConnecting  connState = iota // host sent REQUEST, waiting for RESPONSE
	stateAccepting                    // guest sent REQUEST, host side being connected
	stateEstablished                  // data flows
	stateClosing                      // host closed; waiting for the guest to finish
	stateClosed                       // not in the connection table any more
)

func (s connState) String() string {
	return [...]string{"connecting", "accepting", "established", "closing", "closed"}[s]
}

// connKey identifies a connection: host port and guest port.
type connKey struct{ hostPort, guestPort uint32 }

// Conn is one stream connection to the guest. It implements net.Conn,
// CloseRead and CloseWrite. All state is guarded by the Backend's mutex;
// host-side reads and writes only touch the buffers, never guest memory.
type Conn struct {
	b             *Backend
	key           connKey
	local, remote *vsock.Addr

	state connState
	rx    byteQueue // from the guest, not yet read by the host
	tx    byteQueue // from the host, not yet sent to the guest

	fwdCnt     uint32 // bytes of rx consumed by the host (or discarded)
	sentFwdCnt uint32 // fwdCnt as last told to the guest
	txCnt      uint32 // bytes sent to the guest
	peerBuf    uint32 // guest's buf_alloc
	peerFwd    uint32 // guest's fwd_cnt

	peerShut uint32 // SHUTDOWN flags received from the guest
	shutWant uint32 // SHUTDOWN flags the host asked for
	shutSent uint32 // SHUTDOWN flags sent

	wantRequest, wantResponse, wantRST, wantCredit bool
	queued                                         bool // in Backend.pending

	closed   bool  // host called Close
	readShut bool  // host called CloseRead
	err      error // why the connection ended abnormally

	changed    chan struct{} // closed and replaced when state changes
	waiting    bool          // someone waits on changed
	readDL     deadline
	writeDL    deadline
	closeTimer *time.Timer
}

func (b *Backend) newConnLocked(key connKey, state connState) *Conn {
	c := &Conn{
		b: b, key: key, state: state,
		local:   &vsock.Addr{ContextID: hostCID, Port: key.hostPort},
		remote:  &vsock.Addr{ContextID: b.cfg.GuestCID, Port: key.guestPort},
		changed: make(chan struct{}),
	}
	c.readDL.init()
	c.writeDL.init()
	b.conns[key] = c
	return c
}

// notify wakes everyone blocked on the connection.
func (c *Conn) notify() {
	if c.waiting {
		close(c.changed)
		c.changed = make(chan struct{})
		c.waiting = false
	}
}

func (c *Conn) waitChan() <-chan struct{} {
	c.waiting = true
	return c.changed
}

// credit is how many bytes the guest can take now.
func (c *Conn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwd
	if inFlight >= c.peerBuf {
		return 0
	}
	return c.peerBuf - inFlight
}

// sendable reports whether nextPacket has something to send.
func (c *Conn) sendable() bool {
	switch {
	case c.wantRST || c.wantRequest || c.wantResponse:
		return true
	case c.state != stateEstablished && c.state != stateClosing:
		return false
	case c.tx.len() > 0 && c.credit() > 0:
		return true
	case c.shutdownNow()&^c.shutSent != 0:
		return true
	}
	return c.wantCredit
}

// shutdownNow is the SHUTDOWN flags that may go out now: SEND only once
// the queued data is out, RCV at once.
func (c *Conn) shutdownNow() uint32 {
	if c.tx.len() > 0 {
		return c.shutWant &^ shutdownSend
	}
	return c.shutWant
}

// nextPacket builds the next packet for the guest; the payload, if any, is
// the first h.len bytes of c.tx, which the caller copies and discards.
func (c *Conn) nextPacket(room int) header {
	h := header{
		srcCID: hostCID, dstCID: uint64(c.b.cfg.GuestCID),
		srcPort: c.key.hostPort, dstPort: c.key.guestPort,
		typ: typeStream, bufAlloc: bufAlloc, fwdCnt: c.fwdCnt,
	}
	switch {
	case c.wantRST:
		h.op = opRST
		c.wantRST, c.wantRequest, c.wantResponse = false, false, false
	case c.wantRequest:
		h.op = opRequest
		c.wantRequest = false
	case c.wantResponse:
		h.op = opResponse
		c.wantResponse = false
	case c.tx.len() > 0 && c.credit() > 0:
		h.op = opRW
		h.len = uint32(min(room, c.tx.len(), int(c.credit()), maxPayload))
		c.txCnt += h.len
	case c.shutdownNow()&^c.shutSent != 0:
		h.op = opShutdown
		h.flags = c.shutdownNow() | c.shutSent
		c.shutSent = h.flags
	default:
		h.op = opCreditUpdate
	}
	// Every header carries buf_alloc and fwd_cnt: it is a credit update too.
	c.sentFwdCnt = c.fwdCnt
	c.wantCredit = false
	return h
}

// consumed accounts for n bytes the host read or discarded and asks for a
// credit update once the guest may be running short.
func (c *Conn) consumed(n int) {
	c.fwdCnt += uint32(n)
	if c.fwdCnt-c.sentFwdCnt >= creditStep && c.state != stateClosed {
		c.wantCredit = true
		c.b.queueLocked(c)
	}
}

// guestPacket applies a packet the guest sent on this connection. The
// payload is the first h.len bytes of segs after offset off.
func (c *Conn) guestPacket(h header, segs [][]byte, off int) {
	b := c.b
	c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCnt
	defer c.notify()
	switch c.state {
	case stateConnecting:
		switch h.op {
		case opResponse:
			c.state = stateEstablished
			b.queueLocked(c)
		case opRST:
			b.removeConnLocked(c, syscall.ECONNREFUSED)
		default:
			b.resetConnLocked(c, fmt.Errorf("guest answered the connection request with %s", opName(h.op)))
		}
		return
	case stateAccepting:
		// The guest waits for our RESPONSE; anything but a RST is a protocol error.
		if h.op == opRST {
			b.removeConnLocked(c, syscall.ECONNRESET)
		} else {
			b.resetConnLocked(c, fmt.Errorf("guest sent %s before the connection was accepted", opName(h.op)))
		}
		return
	}
	switch h.op {
	case opRW:
		c.guestData(h, segs, off)
	case opCreditUpdate:
		// credit taken from the header above
	case opCreditRequest:
		c.wantCredit = true
	case opShutdown:
		c.peerShut |= h.flags & shutdownBoth
		if c.peerShut&shutdownRcv != 0 {
			// The guest reads no more: unsent data can never be delivered.
			c.tx.reset()
		}
		if c.peerShut == shutdownBoth {
			// Linux answers a full shutdown with RST, which frees the guest socket.
			c.wantRST = true
			b.removeConnLocked(c, nil)
		}
	case opRST:
		b.removeConnLocked(c, nil)
	default:
		b.resetConnLocked(c, fmt.Errorf("guest sent %s on an established connection", opName(h.op)))
		return
	}
	if c.sendable() {
		b.queueLocked(c)
	}
}

func (c *Conn) guestData(h header, segs [][]byte, off int) {
	n := int(h.len)
	if n == 0 {
		return
	}
	if c.peerShut&shutdownSend != 0 {
		c.b.resetConnLocked(c, fmt.Errorf("guest sent data after shutting down sending"))
		return
	}
	if c.rx.len()+n > bufAlloc {
		c.b.resetConnLocked(c, fmt.Errorf("guest sent %d bytes with %d unread, beyond the %d byte credit", n, c.rx.len(), bufAlloc))
		return
	}
	if c.closed || c.readShut {
		c.consumed(n) // nobody will read it; keep the guest's credit flowing
		return
	}
	c.rx.writeFrom(segs, off, n)
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		switch {
		case c.closed:
			return 0, c.opError("read", net.ErrClosed)
		case len(p) == 0:
			return 0, nil
		case c.rx.len() > 0:
			n := c.rx.read(p)
			c.consumed(n)
			return n, nil
		case c.readShut || c.peerShut&shutdownSend != 0:
			return 0, io.EOF
		case c.state == stateClosed:
			if c.err != nil {
				return 0, c.opError("read", c.err)
			}
			return 0, io.EOF
		}
		if err := c.wait(&c.readDL); err != nil {
			return 0, c.opError("read", err)
		}
	}
}

// Write implements net.Conn. It returns once p is queued for the guest,
// blocking while the guest's credit and our queue are exhausted.
func (c *Conn) Write(p []byte) (int, error) {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	done := 0
	for {
		switch {
		case c.closed:
			return done, c.opError("write", net.ErrClosed)
		case c.shutWant&shutdownSend != 0:
			return done, c.opError("write", syscall.EPIPE)
		case c.state == stateClosed:
			if c.err != nil {
				return done, c.opError("write", c.err)
			}
			return done, c.opError("write", syscall.ECONNRESET)
		case c.peerShut&shutdownRcv != 0:
			return done, c.opError("write", syscall.EPIPE)
		case done == len(p):
			return done, nil
		}
		if space := txLimit - c.tx.len(); space > 0 {
			n := min(space, len(p)-done)
			c.tx.write(p[done : done+n])
			done += n
			b.queueLocked(c)
			continue
		}
		if err := c.wait(&c.writeDL); err != nil {
			return done, c.opError("write", err)
		}
	}
}

// wait blocks until the connection changes or the deadline passes; the
// caller holds the lock, which wait releases meanwhile.
func (c *Conn) wait(dl *deadline) error {
	ch, dch := c.waitChan(), dl.ch
	c.b.mu.Unlock()
	defer c.b.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-dch:
		return os.ErrDeadlineExceeded
	}
}

// Close implements net.Conn. Queued data is still delivered; the guest sees
// a shutdown, and the connection is reset if it does not finish in time.
func (c *Conn) Close() error {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.closed {
		return c.opError("close", net.ErrClosed)
	}
	c.closed = true
	c.consumed(c.rx.len())
	c.rx.reset()
	c.readDL.stop()
	c.writeDL.stop()
	switch c.state {
	case stateEstablished:
		c.state = stateClosing
		c.shutWant = shutdownBoth
		b.queueLocked(c)
		c.closeTimer = time.AfterFunc(closeTimeout, func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if c.state == stateClosing {
				b.resetConnLocked(c, nil)
			}
		})
	case stateConnecting, stateAccepting:
		b.resetConnLocked(c, nil)
	}
	c.notify()
	return nil
}

// CloseWrite sends the guest a shutdown for sending once queued data is out.
func (c *Conn) CloseWrite() error {
	return c.shutdown(shutdownSend, "close write")
}

// CloseRead tells the guest we read no more and drops unread data.
func (c *Conn) CloseRead() error {
	return c.shutdown(shutdownRcv, "close read")
}

func (c *Conn) shutdown(flag uint32, op string) error {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.closed {
		return c.opError(op, net.ErrClosed)
	}
	if flag == shutdownRcv {
		c.readShut = true
		c.consumed(c.rx.len())
		c.rx.reset()
	}
	if c.state == stateEstablished {
		c.shutWant |= flag
		b.queueLocked(c)
	}
	c.notify()
	return nil
}

func (c *Conn) LocalAddr() net.Addr  { return c.local }
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) SetDeadline(t time.Time) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.readDL.set(c.b, t)
	c.writeDL.set(c.b, t)
	c.notify()
	return nil
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.readDL.set(c.b, t)
	c.notify()
	return nil
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.writeDL.set(c.b, t)
	c.notify()
	return nil
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "vsock", Source: c.local, Addr: c.remote, Err: err}
}

// deadline is a net.Conn deadline: ch is closed once it has passed.
type deadline struct {
	ch    chan struct{}
	timer *time.Timer
	gen   uint64
}

func (d *deadline) init() { d.ch = make(chan struct{}) }

// set is called with the Backend's lock held; waiters must be notified
// afterwards so they pick up the new channel.
func (d *deadline) set(b *Backend, t time.Time) {
	d.stop()
	d.gen++
	select {
	case <-d.ch:
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		return
	}
	ch, gen := d.ch, d.gen
	d.timer = time.AfterFunc(dur, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if d.gen == gen {
			close(ch)
		}
	})
}

func (d *deadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// byteQueue is a growable ring buffer; callers bound its size.
type byteQueue struct {
	buf  []byte
	r, n int
}

func (q *byteQueue) len() int { return q.n }

func (q *byteQueue) reset() { *q = byteQueue{} }

func (q *byteQueue) grow(n int) {
	if q.n+n <= len(q.buf) {
		return
	}
	size := max(4096, 2*len(q.buf))
	for size < q.n+n {
		size *= 2
	}
	buf := make([]byte, size)
	q.peekInto(buf[:q.n])
	q.buf, q.r = buf, 0
}

// tail returns the free space after the data as up to two slices.
func (q *byteQueue) tail() (a, b []byte) {
	w := (q.r + q.n) % len(q.buf)
	if w >= q.r {
		return q.buf[w:], q.buf[:q.r]
	}
	return q.buf[w:q.r], nil
}

func (q *byteQueue) write(p []byte) {
	if len(p) == 0 {
		return
	}
	q.grow(len(p))
	a, b := q.tail()
	n := copy(a, p)
	copy(b, p[n:])
	q.n += len(p)
}

// writeFrom appends n bytes of segs starting at offset off.
func (q *byteQueue) writeFrom(segs [][]byte, off, n int) {
	q.grow(n)
	a, b := q.tail()
	a = a[:min(len(a), n)]
	got := gather(a, segs, off)
	got += gather(b[:n-got], segs, off+got)
	q.n += got
}

// peekInto copies the first len(p) bytes (at most q.n) without consuming.
func (q *byteQueue) peekInto(p []byte) int {
	if q.n == 0 {
		return 0
	}
	end := q.r + min(len(p), q.n)
	if end <= len(q.buf) {
		return copy(p, q.buf[q.r:end])
	}
	n := copy(p, q.buf[q.r:])
	return n + copy(p[n:], q.buf[:end-len(q.buf)])
}

// head returns the first n bytes as up to two slices.
func (q *byteQueue) head(n int) (a, b []byte) {
	n = min(n, q.n)
	end := q.r + n
	if end <= len(q.buf) {
		return q.buf[q.r:end], nil
	}
	return q.buf[q.r:], q.buf[:end-len(q.buf)]
}

func (q *byteQueue) discard(n int) {
	q.r = (q.r + n) % max(len(q.buf), 1)
	q.n -= n
	if q.n == 0 {
		q.r = 0
	}
}

func (q *byteQueue) read(p []byte) int {
	n := q.peekInto(p)
	q.discard(n)
	return n
}
