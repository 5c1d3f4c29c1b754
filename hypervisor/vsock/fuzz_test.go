package vsock

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// quietBackend is a back-end without listeners whose logs go nowhere: fuzz
// workers block once their captured output fills up.
func quietBackend() *Backend {
	b := newBackend(BackendConfig{GuestCID: 3, VhostUserSocket: "fuzz"})
	l := logrus.New()
	l.Out = io.Discard
	b.ctx = log.WithLogger(b.ctx, logrus.NewEntry(l))
	return b
}

// FuzzVhostUserMessages feeds a byte stream from "QEMU" through the socket
// reader and the request handler. Whatever arrives, the back-end must answer,
// fail the session with an error, or ignore it; never panic or hang.
func FuzzVhostUserMessages(f *testing.F) {
	var seed []byte
	add := func(req, flags uint32, payload []byte) {
		seed = append(seed, rawMessage(req, vuVersion|flags, uint32(len(payload)), payload)...)
	}
	add(vuGetFeatures, 0, nil)
	add(vuGetProtocolFeatures, 0, nil)
	add(vuSetProtocolFeatures, 0, u64Payload(offeredProtocol))
	add(vuGetQueueNum, 0, nil)
	add(vuSetOwner, 0, nil)
	add(vuGetConfig, 0, encodeConfig(0, 0, make([]byte, 8)))
	add(vuSetFeatures, 0, u64Payload(offeredFeatures))
	add(vuSetVringNum, vuFlagNeedReply, encodeVringState(0, 128))
	add(vuSetVringBase, 0, encodeVringState(0, 0))
	add(vuSetVringAddr, 0, make([]byte, 40))
	add(vuSetVringEnable, vuFlagNeedReply, encodeVringState(0, 1))
	add(vuSetVringCall, 0, u64Payload(vuVringNoFdMask))
	add(vuGetVringBase, 0, encodeVringState(0, 0))
	add(vuSetMemTable, vuFlagNeedReply, memTablePayload(regionDesc{gpa: 0, size: 4096}))
	f.Add(seed)
	f.Add(rawMessage(vuGetConfig, vuVersion, 12, encodeConfig(4, 0, nil)))
	f.Add(rawMessage(vuSetStatus, vuVersion|vuFlagNeedReply, 8, u64Payload(15)))

	f.Fuzz(func(t *testing.T, data []byte) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		w := os.NewFile(uintptr(fds[0]), "qemu")
		rf := os.NewFile(uintptr(fds[1]), "backend")
		fc, err := net.FileConn(rf)
		rf.Close()
		if err != nil {
			w.Close()
			t.Fatal(err)
		}
		conn := fc.(*net.UnixConn)
		defer conn.Close()
		go func() {
			w.Write(data) // ends with EPIPE if the reader gives up early
			w.Close()
		}()

		b := quietBackend()
		defer b.shutdown(net.ErrClosed)
		for {
			m, err := readVUMessage(conn)
			if err != nil {
				return
			}
			reply, err := b.handleVU(m)
			m.closeFds()
			if len(reply) > vuMaxPayload {
				t.Fatalf("%s: %d byte reply", m.name(), len(reply))
			}
			var fatal fatalError
			if errors.As(err, &fatal) {
				return
			}
		}
	})
}

// Layout of the fuzzed guest memory: two 16-entry rings and buffers, kept
// small because the fuzzer minimizes whole inputs.
const (
	fzGPA, fzUA, fzSize           = 0x10000, 0x7000_0000, 0x1800
	fzQueueSize                   = 16
	fzTxDesc, fzTxAvail, fzTxUsed = 0x000, 0x100, 0x140
	fzRxDesc, fzRxAvail, fzRxUsed = 0x200, 0x300, 0x340
	fzData                        = 0x400
	fzRxBuf                       = 256
)

// fuzzSeedMemory is a valid image: tx packets for an established
// connection and for nobody, rx buffers for the replies.
func fuzzSeedMemory(eventIdx bool) []byte {
	mem := make([]byte, fzSize)
	le := binary.LittleEndian
	desc := func(table, i int, addr uint64, n uint32, flags, next uint16) {
		d := mem[table+16*i:]
		le.PutUint64(d[0:], addr)
		le.PutUint32(d[8:], n)
		le.PutUint16(d[12:], flags)
		le.PutUint16(d[14:], next)
	}
	off := fzData
	packets := []header{
		{op: opRW, srcPort: 1024, dstPort: firstHostPort, len: 100, bufAlloc: 4096},
		{op: opCreditUpdate, srcPort: 1024, dstPort: firstHostPort, bufAlloc: 1 << 20},
		{op: opRequest, srcPort: 2000, dstPort: 5000},
		{op: opShutdown, srcPort: 1024, dstPort: firstHostPort, flags: shutdownSend, bufAlloc: 4096},
		{op: opRW, srcPort: 9, dstPort: 9, len: 10},
	}
	for i, h := range packets {
		h.srcCID, h.dstCID, h.typ = 3, hostCID, typeStream
		h.encode(mem[off:])
		desc(fzTxDesc, 2*i, fzGPA+uint64(off), hdrLen, descFNext, uint16(2*i+1))
		desc(fzTxDesc, 2*i+1, fzGPA+uint64(off+hdrLen), h.len, 0, 0)
		le.PutUint16(mem[fzTxAvail+4+2*i:], uint16(2*i))
		off += hdrLen + int(h.len)
	}
	le.PutUint16(mem[fzTxAvail+2:], uint16(len(packets)))
	for i := range fzQueueSize {
		desc(fzRxDesc, i, fzGPA+uint64(off), fzRxBuf, descFWrite, 0)
		le.PutUint16(mem[fzRxAvail+4+2*i:], uint16(i))
		off += fzRxBuf
	}
	le.PutUint16(mem[fzRxAvail+2:], fzQueueSize)
	if eventIdx {
		mem[fzSize-1] = 1
	}
	return mem
}

// FuzzVirtqueue runs the worker over guest memory the fuzzer controls:
// ring indexes, descriptor chains, indirect tables and vsock packets, with
// a connection in each state on the host side.
func FuzzVirtqueue(f *testing.F) {
	f.Add(fuzzSeedMemory(false))
	f.Add(fuzzSeedMemory(true))
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := make([]byte, fzSize)
		copy(mem, data)
		b := quietBackend()
		defer b.shutdown(net.ErrClosed)
		b.mu.Lock()
		defer b.mu.Unlock()
		d := &b.dev
		d.mem = &guestMemory{regions: []memRegion{{gpa: fzGPA, size: fzSize, uaddr: fzUA, data: mem}}}
		d.features = featVersion1 | featIndirectDesc | vuFProtocolFeatures
		if mem[fzSize-1]&1 != 0 {
			d.features |= featEventIdx
		}
		for i, a := range []vringAddr{
			{desc: fzUA + fzRxDesc, avail: fzUA + fzRxAvail, used: fzUA + fzRxUsed},
			{desc: fzUA + fzTxDesc, avail: fzUA + fzTxAvail, used: fzUA + fzTxUsed},
		} {
			r := &d.rings[i]
			r.num, r.addr, r.addrSet, r.started, r.enabled, r.needInit = fzQueueSize, a, true, true, true, true
		}
		// Host side: an established connection with data to send, one
		// being dialed, one closing.
		est := b.newConnLocked(connKey{firstHostPort, 1024}, stateEstablished)
		est.peerBuf = 4096
		est.tx.write(make([]byte, 3000))
		b.queueLocked(est)
		dial := b.newConnLocked(connKey{firstHostPort + 1, 1025}, stateConnecting)
		dial.wantRequest = true
		b.queueLocked(dial)
		closing := b.newConnLocked(connKey{firstHostPort + 2, 1026}, stateClosing)
		closing.shutWant, closing.closed = shutdownBoth, true
		b.queueLocked(closing)

		_ = b.processLocked() // errors are expected; panics and hangs are not

		for _, c := range b.conns {
			if c.rx.len() > bufAlloc {
				t.Fatalf("connection buffered %d bytes, more than the %d it advertised", c.rx.len(), bufAlloc)
			}
		}
	})
}

// FuzzHeader: decoding and encoding agree.
func FuzzHeader(f *testing.F) {
	f.Add(make([]byte, hdrLen))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := decodeHeader(data)
		if err != nil {
			if len(data) >= hdrLen {
				t.Fatal(err)
			}
			return
		}
		var out [hdrLen]byte
		h.encode(out[:])
		if string(out[:]) != string(data[:hdrLen]) {
			t.Fatalf("header %v does not round-trip", h)
		}
	})
}

// TestVirtqueueSeed checks that the fuzz seed really drives packets both
// ways, so the fuzzer starts from a meaningful state.
func TestVirtqueueSeed(t *testing.T) {
	mem := fuzzSeedMemory(true)
	b := newBackend(BackendConfig{GuestCID: 3, VhostUserSocket: "seed"})
	defer b.shutdown(net.ErrClosed)
	b.mu.Lock()
	defer b.mu.Unlock()
	d := &b.dev
	d.mem = &guestMemory{regions: []memRegion{{gpa: fzGPA, size: fzSize, uaddr: fzUA, data: mem}}}
	d.features = featVersion1 | featIndirectDesc | featEventIdx | vuFProtocolFeatures
	for i, a := range []vringAddr{
		{desc: fzUA + fzRxDesc, avail: fzUA + fzRxAvail, used: fzUA + fzRxUsed},
		{desc: fzUA + fzTxDesc, avail: fzUA + fzTxAvail, used: fzUA + fzTxUsed},
	} {
		r := &d.rings[i]
		r.num, r.addr, r.addrSet, r.started, r.enabled, r.needInit = fzQueueSize, a, true, true, true, true
	}
	est := b.newConnLocked(connKey{firstHostPort, 1024}, stateEstablished)
	est.peerBuf = 4096
	est.tx.write(make([]byte, 3000))
	b.queueLocked(est)
	if err := b.processLocked(); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if n := le.Uint16(mem[fzTxUsed+2:]); n != 5 {
		t.Errorf("tx used index %d, want 5", n)
	}
	if est.rx.len() != 100 || est.peerShut != shutdownSend || est.peerBuf != 4096 {
		t.Errorf("connection has %d bytes, shutdown %#x, peer buffer %d", est.rx.len(), est.peerShut, est.peerBuf)
	}
	var ops []string
	for i := range int(le.Uint16(mem[fzRxUsed+2:])) {
		e := mem[fzRxUsed+4+8*i:]
		id, n := le.Uint32(e), le.Uint32(e[4:])
		buf := mem[int(le.Uint64(mem[fzRxDesc+16*int(id):]))-fzGPA:]
		h, _ := decodeHeader(buf)
		if n != hdrLen+h.len {
			t.Errorf("rx used length %d for %v", n, h)
		}
		ops = append(ops, opName(h.op))
	}
	// RSTs for the stray packet and for the request to a port nobody
	// forwards, then the 3000 bytes in 256-byte buffers (212 bytes of
	// payload each) until the 16 buffers run out.
	want := []string{"RST", "RST"}
	for range fzQueueSize - 2 {
		want = append(want, "RW")
	}
	if len(ops) != len(want) {
		t.Fatalf("host sent %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Fatalf("host sent %v, want %v", ops, want)
		}
	}
}
