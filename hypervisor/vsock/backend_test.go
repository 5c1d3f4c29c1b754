package vsock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const testCID = 7

// testBackend starts a back-end on short socket paths in a fresh directory.
func testBackend(t *testing.T) *Backend {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := NewBackend(BackendConfig{
		GuestCID:        testCID,
		VhostUserSocket: filepath.Join(dir, "vu.sock"),
		HybridSocket:    filepath.Join(dir, "hy.sock"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close back-end: %v", err)
		}
	})
	return b
}

func startSim(t *testing.T, b *Backend, opts simOptions) *simGuest {
	t.Helper()
	g := simConnect(t, b.cfg.VhostUserSocket, testCID, opts)
	g.start()
	t.Cleanup(g.checkViolations)
	return g
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), simWait)
	t.Cleanup(cancel)
	return ctx
}

// guestEcho echoes one connection until the host shuts down sending, then
// closes it. It may outlive its test; errors after teardown are ignored.
func guestEcho(t *testing.T, c *simConn) {
	report := func(format string, args ...any) {
		c.g.mu.Lock()
		closed := c.g.closed
		c.g.mu.Unlock()
		if !closed {
			t.Errorf(format, args...)
		}
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := c.read(buf)
		if n > 0 {
			if werr := c.write(buf[:n]); werr != nil {
				report("guest echo write: %v", werr)
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			report("guest echo read: %v", err)
			return
		}
	}
	if err := c.close(); err != nil {
		report("guest echo close: %v", err)
	}
}

func TestBackendDialEcho(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
	}{
		{"plain", featVersion1},
		{"event-idx", featVersion1 | featEventIdx},
		{"indirect", featVersion1 | featIndirectDesc},
		{"all", featVersion1 | featEventIdx | featIndirectDesc},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testBackend(t)
			opts := defaultSimOptions()
			opts.features = tc.features
			g := startSim(t, b, opts)
			ln := g.listen(1024)

			conn, err := b.Dial(ctxTimeout(t), 1024)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(simWait)) // fail, not hang, on a lost notification
			gc := g.accept(ln)
			done := make(chan struct{})
			go func() { defer close(done); guestEcho(t, gc) }()

			if got, want := conn.RemoteAddr().String(), "vm(7):1024"; got != want {
				t.Errorf("remote address %s, want %s", got, want)
			}
			if got := conn.LocalAddr().String(); !strings.HasPrefix(got, "host(2):") {
				t.Errorf("local address %s, want host(2):<port>", got)
			}
			for _, msg := range []string{"hello", strings.Repeat("x", 5000), "bye"} {
				if _, err := conn.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(conn, got); err != nil {
					t.Fatal(err)
				}
				if string(got) != msg {
					t.Fatalf("echo %q, want %q", got[:min(len(got), 20)], msg[:min(len(msg), 20)])
				}
			}
			if err := conn.(*Conn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("read after the guest closed: %d, %v; want EOF", n, err)
			}
			<-done
			if err := conn.Close(); err != nil {
				t.Fatal(err)
			}
			waitNoConns(t, b)
		})
	}
}

// waitNoConns waits until the back-end has forgotten every connection.
func waitNoConns(t *testing.T, b *Backend) {
	t.Helper()
	deadline := time.Now().Add(simWait)
	for {
		b.mu.Lock()
		n := len(b.conns)
		b.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func randomBytes(n int) []byte {
	p := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{1, 2, 3}).Read(p)
	return p
}

// TestBackendLargeTransfer moves megabytes both ways while one side does
// not read, so credit and back-pressure have to work in both directions.
func TestBackendLargeTransfer(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(6 * simWait))
	gc := g.accept(ln)
	const size = 8 << 20
	data := randomBytes(size)

	// Host to guest: the guest does not read yet, so the writer must stall
	// at our queue plus the guest's buffer.
	var written atomic.Int64
	writeDone := make(chan error, 1)
	go func() {
		for p := data; len(p) > 0; {
			n, err := conn.Write(p[:min(len(p), 100<<10)])
			written.Add(int64(n))
			if err != nil {
				writeDone <- err
				return
			}
			p = p[n:]
		}
		writeDone <- conn.(*Conn).CloseWrite()
	}()
	time.Sleep(300 * time.Millisecond)
	limit := txLimit + int(g.opts.bufAlloc) + 100<<10
	if w := written.Load(); w > int64(limit) {
		t.Fatalf("host wrote %d bytes to a guest that reads nothing, want at most %d", w, limit)
	}
	got, err := gc.readAll()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("guest received %d bytes that differ from the %d sent", len(got), len(data))
	}

	// Guest to host: the host does not read yet; the guest stalls on our
	// buffer until reads produce credit updates.
	guestDone := make(chan error, 1)
	go func() {
		if err := gc.write(data); err != nil {
			guestDone <- err
			return
		}
		guestDone <- gc.close()
	}()
	time.Sleep(300 * time.Millisecond)
	g.mu.Lock()
	sent := gc.txCnt
	g.mu.Unlock()
	if sent > bufAlloc {
		t.Fatalf("guest could send %d bytes to a host that reads nothing, want at most our buf_alloc %d", sent, bufAlloc)
	}
	var back bytes.Buffer
	buf := make([]byte, 7000) // odd sizes exercise the ring buffer wrap
	for {
		n, err := conn.Read(buf)
		back.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-guestDone; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(back.Bytes()) != sha256.Sum256(data) {
		t.Fatalf("host received %d bytes that differ from the %d sent", back.Len(), len(data))
	}
	conn.Close()
	waitNoConns(t, b)
}

// TestBackendSlowReaderDoesNotBlock: a connection whose host reader
// stalls must not hold up another one.
func TestBackendSlowReaderDoesNotBlock(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	stalled, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	sc := g.accept(ln)
	// Fill the stalled connection's buffer completely.
	go func() { _ = sc.write(make([]byte, 2*bufAlloc)) }()
	deadline := time.Now().Add(simWait)
	for {
		b.mu.Lock()
		full := stalled.(*Conn).rx.len() == bufAlloc
		b.mu.Unlock()
		if full {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stalled connection never filled its buffer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	other, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	oc := g.accept(ln)
	go guestEcho(t, oc)
	msg := []byte("still flowing")
	if _, err := other.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_ = other.SetReadDeadline(time.Now().Add(simWait))
	if _, err := io.ReadFull(other, got); err != nil {
		t.Fatalf("second connection blocked behind a stalled one: %v", err)
	}
	stalled.Close()
	other.Close()
}

func TestBackendDialRefused(t *testing.T) {
	b := testBackend(t)
	startSim(t, b, defaultSimOptions())
	start := time.Now()
	_, err := b.Dial(ctxTimeout(t), 4444)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a port nobody listens on: %v, want connection refused", err)
	}
	if !strings.Contains(err.Error(), "4444") {
		t.Errorf("error %q does not name the port", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusal took %v", d)
	}
	waitNoConns(t, b)
}

// TestBackendDialWaitsForDevice: a Dial made before QEMU connects goes out
// once the driver is up; one whose context ends first fails with it.
func TestBackendDialWaitsForDevice(t *testing.T) {
	b := testBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := b.Dial(ctx, 1024); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial without a device: %v, want deadline exceeded", err)
	}
	waitNoConns(t, b)

	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := b.Dial(ctxTimeout(t), 1024)
		res <- result{c, err}
	}()
	time.Sleep(50 * time.Millisecond)
	g := simConnect(t, b.cfg.VhostUserSocket, testCID, defaultSimOptions())
	ln := g.listen(1024)
	g.start()
	gc := g.accept(ln)
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	go guestEcho(t, gc)
	if _, err := r.c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r.c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	r.c.Close()
}

func TestBackendHostClose(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	gc := g.accept(ln)
	if _, err := conn.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	// Queued data still arrives, then the shutdown; the guest answers RST.
	got, err := gc.readAll()
	if err != nil || string(got) != "last words" {
		t.Fatalf("guest read %q, %v", got, err)
	}
	g.expectPacket("SHUTDOWN both", func(h header) bool { return h.op == opShutdown && h.flags == shutdownBoth })
	waitNoConns(t, b)
	if _, err := conn.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v, want net.ErrClosed", err)
	}
}

func TestBackendGuestShutdownAndReset(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)

	// The guest stops sending: the host reads EOF and may still write.
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	gc := g.accept(ln)
	if err := gc.write([]byte("data then eof")); err != nil {
		t.Fatal(err)
	}
	gc.shutdown(shutdownSend)
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "data then eof" {
		t.Fatalf("host read %q, %v", got, err)
	}
	if _, err := conn.Write([]byte("reply")); err != nil {
		t.Fatalf("write after the guest's SHUTDOWN SEND: %v", err)
	}
	buf := make([]byte, 5)
	if n, err := gc.read(buf); err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("guest read %q, %v", buf[:n], err)
	}
	// The guest stops receiving: host writes fail.
	gc.shutdown(shutdownRcv)
	g.expectPacket("RST answering the full shutdown", func(h header) bool { return h.op == opRST })
	if _, err := conn.Write([]byte("x")); err == nil {
		t.Fatal("write after the guest shut down receiving succeeded")
	}
	conn.Close()

	// A RST from the guest: reads end, writes fail with a reset.
	conn, err = b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	gc = g.accept(ln)
	g.mu.Lock()
	gc.sendLocked(opRST, 0, nil)
	g.mu.Unlock()
	if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after RST: %v, want EOF", err)
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after RST: %v, want connection reset", err)
	}
	conn.Close()
	waitNoConns(t, b)
}

// TestBackendRSTForUnknown: packets for no connection get a RST, a RST
// gets nothing.
func TestBackendRSTForUnknown(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	g.mu.Lock()
	g.sendLocked(header{srcPort: 3333, dstPort: 5555, op: opRW}, []byte("stray"))
	g.sendLocked(header{srcPort: 3334, dstPort: 5555, op: opRST}, nil)
	g.sendLocked(header{srcPort: 3335, dstPort: 5555, op: opRW, typ: 2}, []byte("seqpacket"))
	g.mu.Unlock()
	got := map[uint32]string{}
	timeout := time.After(500 * time.Millisecond)
	for done := false; !done; {
		select {
		case h := <-g.tap:
			if h.srcPort != 5555 || got[h.dstPort] != "" {
				t.Errorf("unexpected %v", h)
			}
			got[h.dstPort] = opName(h.op)
		case <-timeout:
			done = true
		}
	}
	if got[3333] != "RST" || got[3335] != "RST" || len(got) != 2 {
		t.Fatalf("host answered %v; want RST to 3333 and 3335, nothing to the RST from 3334", got)
	}
}

// TestBackendGuestConnectForward: guest connections to host port P reach
// the unix socket <HybridSocket>_P, or are reset when there is none.
func TestBackendGuestConnectForward(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln, err := net.Listen("unix", b.cfg.HybridSocket+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hostDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			hostDone <- err
			return
		}
		defer c.Close()
		got, err := io.ReadAll(c) // until the guest's SHUTDOWN SEND
		if err != nil {
			hostDone <- err
			return
		}
		_, err = c.Write(append([]byte("host saw: "), got...))
		if err == nil {
			err = c.(*net.UnixConn).CloseWrite()
		}
		hostDone <- err
	}()
	gc, err := g.connect(5000)
	if err != nil {
		t.Fatal(err)
	}
	if err := gc.write([]byte("hello host")); err != nil {
		t.Fatal(err)
	}
	gc.shutdown(shutdownSend)
	got, err := gc.readAll()
	if err != nil || string(got) != "host saw: hello host" {
		t.Fatalf("guest read %q, %v", got, err)
	}
	if err := <-hostDone; err != nil {
		t.Fatal(err)
	}
	if _, err := g.connect(5001); err == nil {
		t.Fatal("connection to a host port without a socket was accepted")
	}
	waitNoConns(t, b)
}

func TestBackendHybridSocket(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	go func() {
		for c := range ln {
			go guestEcho(t, c)
		}
	}()
	conn, err := HybridTransport{Path: b.cfg.HybridSocket}.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(1 << 20)
	go func() {
		conn.Write(data)
		conn.(*net.UnixConn).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo through the hybrid socket: got %d bytes, want %d", len(got), len(data))
	}
	conn.Close()

	if _, err := (HybridTransport{Path: b.cfg.HybridSocket}).Dial(ctxTimeout(t), 999); err == nil {
		t.Fatal("hybrid dial to a port nobody listens on succeeded")
	}
	for _, bad := range []string{"HELLO\n", "CONNECT x\n", "CONNECT 4294967296\n", strings.Repeat("C", 100)} {
		c, err := net.Dial("unix", b.cfg.HybridSocket)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(bad))
		c.SetReadDeadline(time.Now().Add(simWait))
		// EOF, or a reset when the server closed with our bytes unread.
		if n, err := c.Read(make([]byte, 10)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after %q the server answered %d bytes, %v; want it to close", bad, n, err)
		}
		c.Close()
	}
	waitNoConns(t, b)
}

// TestBackendMemTableRemap: QEMU may send a new memory table while rings
// run. The guest memory is copied into a new memfd and the old one is
// scribbled over, so a back-end still using the old mapping fails.
func TestBackendMemTableRemap(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	gc := g.accept(ln)
	go guestEcho(t, gc)
	echo := func(msg string) {
		t.Helper()
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		conn.SetReadDeadline(time.Now().Add(simWait))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q, %v", msg, got, err)
		}
	}
	echo("before")

	// Quiesce the simulated guest, move its RAM, tell the back-end.
	g.mu.Lock()
	memfd2, err := unixMemfd(simMemSize)
	if err != nil {
		t.Fatal(err)
	}
	mapping2, err := mmapShared(memfd2, simMemSize)
	if err != nil {
		t.Fatal(err)
	}
	copy(mapping2, g.mem)
	oldMem := g.mem
	half := uint64(simMemSize / 2)
	// Two regions this time, mapped from the new file at offset 0.
	g.setMemTable([]regionDesc{
		{gpa: simGPA, size: half, uaddr: simUA, mmapOffset: 0},
		{gpa: simGPA + half, size: half, uaddr: simUA + half, mmapOffset: half},
	}, memfd2, memfd2)
	for i := range oldMem {
		oldMem[i] = 0xff
	}
	g.mem = mapping2
	g.extra = append(g.extra, func() { unmapAndClose(mapping2, memfd2) })
	g.mu.Unlock()

	echo("after the new memory table")
	conn.Close()
}

// TestBackendRingStopRestart: QEMU stops the rings when the VM pauses
// (GET_VRING_BASE) and restarts them from the returned index; connections
// survive.
func TestBackendRingStopRestart(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	gc := g.accept(ln)
	go guestEcho(t, gc)
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	io.ReadFull(conn, make([]byte, 4))

	var bases [2]uint32
	g.mu.Lock()
	for i, q := range g.q {
		g.ack(vuSetVringEnable, encodeVringState(uint32(i), 0))
		p := g.call(vuGetVringBase, 0, encodeVringState(uint32(i), 0))
		// Every chain the back-end took it has returned, so its next
		// available index is the used index it wrote.
		idx, num, _ := (&vuMessage{payload: p}).vringState()
		if want := g.u16(q.used + 2); idx != uint32(i) || uint16(num) != want {
			t.Fatalf("GET_VRING_BASE(%d) = %d, %d; want %d, %d", i, idx, num, i, want)
		}
		bases[i] = num
	}
	g.mu.Unlock()
	// While stopped nothing moves.
	if _, err := conn.Write([]byte("paused")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from a stopped device: %d, %v", n, err)
	}
	g.mu.Lock()
	for i, q := range g.q {
		closeFd(&q.kick)
		q.kick = newEventfd(t)
		g.mustSend(vuSetVringBase, 0, encodeVringState(uint32(i), bases[i]))
		g.mustSend(vuSetVringAddr, 0, g.vringAddrPayload(i))
		g.mustSend(vuSetVringKick, 0, u64Payload(uint64(i)), q.kick)
		g.ack(vuSetVringEnable, encodeVringState(uint32(i), 1))
	}
	g.mu.Unlock()
	conn.SetReadDeadline(time.Now().Add(simWait))
	got := make([]byte, 6)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "paused" {
		t.Fatalf("after restart: %q, %v", got, err)
	}
	conn.Close()
}

// TestBackendQEMUDisconnect: the device reports QEMU going away, and
// connections and dials fail with that reason.
func TestBackendQEMUDisconnect(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	g.accept(ln)
	g.vu.Close()
	select {
	case <-b.Done():
	case <-time.After(simWait):
		t.Fatal("Done not closed after QEMU disconnected")
	}
	if err := b.Err(); err == nil || !strings.Contains(err.Error(), "QEMU disconnected") {
		t.Fatalf("Err() = %v, want QEMU disconnected", err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "QEMU disconnected") {
		t.Fatalf("read after the device stopped: %v", err)
	}
	if _, err := b.Dial(ctxTimeout(t), 1024); err == nil || !strings.Contains(err.Error(), "QEMU disconnected") {
		t.Fatalf("dial after the device stopped: %v", err)
	}
}

func TestBackendClose(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	g.accept(ln)
	hy, err := net.Dial("unix", b.cfg.HybridSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer hy.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		readErr <- err
	}()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := <-readErr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked read ended with %v, want net.ErrClosed", err)
	}
	select {
	case <-b.Done():
	default:
		t.Fatal("Done not closed")
	}
	if err := b.Err(); err != nil {
		t.Fatalf("Err() after Close = %v", err)
	}
	for _, p := range []string{b.cfg.VhostUserSocket, b.cfg.HybridSocket} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists: %v", p, err)
		}
	}
	if _, err := b.Dial(ctxTimeout(t), 1024); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("dial after close: %v", err)
	}
}

func TestNewBackendErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	existing := filepath.Join(dir, "exists")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vu := filepath.Join(dir, "vu.sock")
	for _, tc := range []struct {
		name string
		cfg  BackendConfig
		want string
	}{
		{"reserved CID", BackendConfig{GuestCID: 2, VhostUserSocket: vu}, "reserved"},
		{"no socket", BackendConfig{GuestCID: 3}, "no vhost-user socket"},
		{"long path", BackendConfig{GuestCID: 3, VhostUserSocket: "/" + strings.Repeat("a", 120)}, "longer than"},
		{"socket exists", BackendConfig{GuestCID: 3, VhostUserSocket: existing}, "address already in use"},
		{"hybrid exists", BackendConfig{GuestCID: 3, VhostUserSocket: vu, HybridSocket: existing}, "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBackend(tc.cfg)
			if err == nil {
				b.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("left behind: %v", entries)
			}
		})
	}
}

// BenchmarkBackendSim measures the back-end alone against the simulated
// guest: what it costs per round trip and per byte, without TCG.
func BenchmarkBackendSim(b *testing.B) {
	be := benchBackend(b)
	g := simConnect(b, be.cfg.VhostUserSocket, testCID, defaultSimOptions())
	g.start()
	ln := g.listen(1024)
	go func() {
		for c := range ln {
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.read(buf)
					if n > 0 && c.write(buf[:n]) != nil {
						return
					}
					if err != nil {
						c.close()
						return
					}
				}
			}()
		}
	}()
	dial := func(b *testing.B) net.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), simWait)
		defer cancel()
		c, err := be.Dial(ctx, 1024)
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

func benchBackend(b *testing.B) *Backend {
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	be, err := NewBackend(BackendConfig{GuestCID: testCID, VhostUserSocket: filepath.Join(dir, "vu.sock")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	return be
}

func TestConnDeadlinesAndCloseRead(t *testing.T) {
	b := testBackend(t)
	g := startSim(t, b, defaultSimOptions())
	ln := g.listen(1024)
	conn, err := b.Dial(ctxTimeout(t), 1024)
	if err != nil {
		t.Fatal(err)
	}
	gc := g.accept(ln)

	// The guest reads nothing: a write deadline ends a blocked Write.
	conn.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := conn.Write(make([]byte, 2<<20))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("blocked write: %d, %v; want a timeout", n, err)
	}
	if n < txLimit || n >= 2<<20 {
		t.Errorf("blocked write queued %d bytes", n)
	}
	conn.SetWriteDeadline(time.Time{})

	conn.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v", err)
	}
	// Clearing the deadline while a read waits lets it go on.
	got := make(chan error, 1)
	conn.SetReadDeadline(time.Now().Add(time.Hour))
	go func() {
		buf := make([]byte, 1)
		_, err := conn.Read(buf)
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	conn.SetReadDeadline(time.Time{})
	if err := gc.write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("read after the deadline was cleared: %v", err)
	}

	if err := conn.(*Conn).CloseRead(); err != nil {
		t.Fatal(err)
	}
	g.expectPacket("SHUTDOWN RCV", func(h header) bool { return h.op == opShutdown && h.flags == shutdownRcv })
	if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after CloseRead: %v, want EOF", err)
	}
	conn.Close()
}

// TestByteQueue checks the ring buffer against bytes.Buffer.
func TestByteQueue(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var q byteQueue
	var ref bytes.Buffer
	src := randomBytes(1 << 16)
	for i := range 20000 {
		switch r.IntN(4) {
		case 0:
			p := src[:r.IntN(9000)]
			q.write(p)
			ref.Write(p)
		case 1:
			n := r.IntN(9000)
			segs := [][]byte{src[:n/3], src[n/3 : n/2], src[n/2 : n]}
			off := r.IntN(n/3 + 1)
			q.writeFrom(segs, off, n-off)
			ref.Write(src[off:n])
		case 2:
			p := make([]byte, r.IntN(9000))
			got := q.read(p)
			want := ref.Next(len(p))
			if !bytes.Equal(p[:got], want) {
				t.Fatalf("op %d: read %d bytes that differ", i, got)
			}
		case 3:
			n := r.IntN(9000)
			a, b := q.head(n)
			want := ref.Bytes()[:min(n, ref.Len())]
			if !bytes.Equal(append(append([]byte(nil), a...), b...), want) {
				t.Fatalf("op %d: head(%d) differs", i, n)
			}
			q.discard(len(a) + len(b))
			ref.Next(len(a) + len(b))
		}
		if q.len() != ref.Len() {
			t.Fatalf("op %d: length %d, want %d", i, q.len(), ref.Len())
		}
	}
}
