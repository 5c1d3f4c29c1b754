package vsock

import (
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitStopped waits for the device to stop and returns why.
func waitStopped(t *testing.T, b *Backend) error {
	t.Helper()
	select {
	case <-b.Done():
		return b.Err()
	case <-time.After(simWait):
		t.Fatal("device did not stop")
	}
	return nil
}

func assertRunning(t *testing.T, b *Backend) {
	t.Helper()
	select {
	case <-b.Done():
		t.Fatalf("device stopped: %v", b.Err())
	default:
	}
}

// TestVhostUserRequests checks replies and REPLY_ACK answers, including
// failures that leave the session running.
func TestVhostUserRequests(t *testing.T) {
	b := testBackend(t)
	g := simDial(t, b.cfg.VhostUserSocket, testCID, defaultSimOptions())

	if f := g.getU64(vuGetFeatures); f != offeredFeatures {
		t.Errorf("GET_FEATURES = %#x, want %#x", f, offeredFeatures)
	}
	if p := g.getU64(vuGetProtocolFeatures); p&(vuProtoConfig|vuProtoReplyAck|vuProtoMQ) != vuProtoConfig|vuProtoReplyAck|vuProtoMQ {
		t.Errorf("GET_PROTOCOL_FEATURES = %#x lacks CONFIG, REPLY_ACK or MQ", p)
	}
	g.mustSend(vuSetProtocolFeatures, 0, u64Payload(offeredProtocol))
	if n := g.getU64(vuGetQueueNum); n != 3 {
		t.Errorf("GET_QUEUE_NUM = %d, want 3", n)
	}

	config := func(offset, size uint32) []byte {
		p := g.call(vuGetConfig, 0, encodeConfig(offset, 0, make([]byte, size)))
		if len(p) == 0 {
			return nil
		}
		if len(p) != 12+int(size) || binary.LittleEndian.Uint32(p[0:]) != offset || binary.LittleEndian.Uint32(p[4:]) != size {
			t.Fatalf("GET_CONFIG(%d, %d) reply %x", offset, size, p)
		}
		return p[12:]
	}
	if got := config(0, 8); binary.LittleEndian.Uint64(got) != testCID {
		t.Errorf("config space %x, want CID %d", got, testCID)
	}
	if got := config(0, 4); binary.LittleEndian.Uint32(got) != testCID {
		t.Errorf("low half of config space %x", got)
	}
	if got := config(4, 8); got != nil {
		t.Errorf("GET_CONFIG past the config space answered %x, want an empty (error) reply", got)
	}

	for _, tc := range []struct {
		name    string
		req     uint32
		payload []byte
		fds     func() []int
	}{
		{"queue size not a power of two", vuSetVringNum, encodeVringState(0, 100), nil},
		{"queue size too big", vuSetVringNum, encodeVringState(0, 65536), nil},
		{"ring index out of range", vuSetVringNum, encodeVringState(7, 128), nil},
		{"base out of range", vuSetVringBase, encodeVringState(0, 70000), nil},
		{"enable value", vuSetVringEnable, encodeVringState(0, 2), nil},
		{"kick polling", vuSetVringKick, u64Payload(vuVringNoFdMask), nil},
		{"dirty logging", vuSetVringAddr, func() []byte { p := make([]byte, 40); p[4] = 1; return p }(), nil},
		{"config write", vuSetConfig, encodeConfig(0, 0, make([]byte, 8)), nil},
		{"log base", vuSetLogBase, make([]byte, 16), nil},
		{"region beyond its file", vuSetMemTable, memTablePayload(regionDesc{gpa: 0, size: 1 << 20, uaddr: 1 << 30}), func() []int {
			fd, err := unixMemfd(4096)
			if err != nil {
				t.Fatal(err)
			}
			return []int{fd}
		}},
		{"overlapping regions", vuSetMemTable, memTablePayload(
			regionDesc{gpa: 0, size: 8192, uaddr: 1 << 30},
			regionDesc{gpa: 4096, size: 4096, uaddr: 2 << 30}), func() []int {
			fd, err := unixMemfd(8192)
			if err != nil {
				t.Fatal(err)
			}
			return []int{fd, fd}
		}},
	} {
		var fds []int
		if tc.fds != nil {
			fds = tc.fds()
		}
		if status := g.ackStatus(tc.req, tc.payload, fds...); status == 0 {
			t.Errorf("%s: %s succeeded", tc.name, vuRequestName(tc.req))
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if status := g.ackStatus(vuSetVringNum, encodeVringState(0, 256)); status != 0 {
		t.Errorf("SET_VRING_NUM 256 failed")
	}
	// A ring never started hands back the base it was given.
	g.mustSend(vuSetVringBase, 0, encodeVringState(1, 5))
	if idx, num, _ := (&vuMessage{payload: g.call(vuGetVringBase, 0, encodeVringState(1, 0))}).vringState(); idx != 1 || num != 5 {
		t.Errorf("GET_VRING_BASE = %d, %d; want 1, 5", idx, num)
	}
	g.getU64(vuGetFeatures)
	assertRunning(t, b)

	// One front-end per device: the socket is gone once QEMU is connected.
	if c, err := unixDial(b.cfg.VhostUserSocket); err == nil {
		c.Close()
		t.Error("a second front-end could connect")
	}
}

func unixDial(path string) (net.Conn, error) { return net.Dial("unix", path) }

func memTablePayload(regions ...regionDesc) []byte {
	p := binary.LittleEndian.AppendUint32(nil, uint32(len(regions)))
	p = binary.LittleEndian.AppendUint32(p, 0)
	for _, r := range regions {
		p = binary.LittleEndian.AppendUint64(p, r.gpa)
		p = binary.LittleEndian.AppendUint64(p, r.size)
		p = binary.LittleEndian.AppendUint64(p, r.uaddr)
		p = binary.LittleEndian.AppendUint64(p, r.mmapOffset)
	}
	return p
}

func rawMessage(req, flags, size uint32, payload []byte) []byte {
	m := binary.LittleEndian.AppendUint32(nil, req)
	m = binary.LittleEndian.AppendUint32(m, flags)
	m = binary.LittleEndian.AppendUint32(m, size)
	return append(m, payload...)
}

// TestVhostUserFatal: messages that break the protocol end the session with
// an error naming what was wrong, and never a panic.
func TestVhostUserFatal(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
		fds  int
		want string
	}{
		{"unknown request", rawMessage(99, vuVersion, 0, nil), 0, "request 99"},
		{"wrong version", rawMessage(vuGetFeatures, 0, 0, nil), 0, "protocol version 0"},
		{"reply flag", rawMessage(vuGetFeatures, vuVersion|vuFlagReply, 0, nil), 0, "sent a reply"},
		{"huge payload", rawMessage(vuSetFeatures, vuVersion, 1<<20, nil), 0, "exceeds"},
		{"short payload", rawMessage(vuSetVringNum, vuVersion, 4, make([]byte, 4)), 0, "payload is 4 bytes, want 8"},
		{"mem table without fds", rawMessage(vuSetMemTable, vuVersion, 40, memTablePayload(regionDesc{size: 4096})), 0, "carries 0 file descriptors, want 1"},
		{"mem table with 9 regions", rawMessage(vuSetMemTable, vuVersion, 8, binary.LittleEndian.AppendUint64(nil, 9)), 0, "9 regions"},
		{"fd with no-fd flag", rawMessage(vuSetVringCall, vuVersion, 8, u64Payload(vuVringNoFdMask)), 1, "carries 1 file descriptors, want 0"},
		{"unknown bits in ring index", rawMessage(vuSetVringCall, vuVersion, 8, u64Payload(1<<20)), 0, "unknown bits"},
		{"truncated", rawMessage(vuSetFeatures, vuVersion, 8, make([]byte, 3)), 0, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testBackend(t)
			g := simDial(t, b.cfg.VhostUserSocket, testCID, defaultSimOptions())
			var fds []int
			for range tc.fds {
				fds = append(fds, newEventfd(t))
			}
			var oob []byte
			if len(fds) > 0 {
				oob = unix.UnixRights(fds...)
			}
			if _, _, err := g.vu.WriteMsgUnix(tc.msg, oob, nil); err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			if tc.name == "truncated" {
				g.vu.CloseWrite()
			}
			err := waitStopped(t, b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("device stopped with %v, want an error containing %q", err, tc.want)
			}
			// The session is over: QEMU would see the socket close.
			g.vu.SetReadDeadline(time.Now().Add(simWait))
			if _, err := g.vu.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("socket after the error: %v, want EOF", err)
			}
		})
	}
}

// TestBackendBrokenGuest: a guest that corrupts its rings or memory stops
// the device with an error, never a panic, and connections learn why.
func TestBackendBrokenGuest(t *testing.T) {
	const hdrOff = simTxHdrs + 64*(simTxSlots-1)
	hdrGPA := uint64(simGPA + hdrOff)
	for _, tc := range []struct {
		name     string
		features uint64
		inject   func(g *simGuest, d int)
		want     string
	}{
		{"descriptor loop", featVersion1, func(g *simGuest, d int) {
			q := g.q[txQueue]
			g.setDesc(q, d, hdrGPA, hdrLen, descFNext, uint16(d+1))
			g.setDesc(q, d+1, hdrGPA, 8, descFNext, uint16(d))
			g.publishLocked(txQueue, uint16(d))
		}, "loop"},
		{"next out of range", featVersion1, func(g *simGuest, d int) {
			g.setDesc(g.q[txQueue], d, hdrGPA, hdrLen, descFNext, 500)
			g.publishLocked(txQueue, uint16(d))
		}, "descriptor index 500 out of range"},
		{"address outside memory", featVersion1, func(g *simGuest, d int) {
			g.setDesc(g.q[txQueue], d, 0x1000, hdrLen, 0, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "outside guest memory"},
		{"buffer past the end of memory", featVersion1, func(g *simGuest, d int) {
			g.setDesc(g.q[txQueue], d, simGPA+simMemSize-16, hdrLen, 0, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "outside guest memory"},
		{"address wraps", featVersion1, func(g *simGuest, d int) {
			g.setDesc(g.q[txQueue], d, ^uint64(0)-8, hdrLen, 0, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "wraps around"},
		{"head out of range", featVersion1, func(g *simGuest, d int) {
			g.publishLocked(txQueue, 200)
		}, "descriptor index 200 out of range"},
		{"available index jump", featVersion1, func(g *simGuest, d int) {
			q := g.q[txQueue]
			q.availIdx += 1000
			g.store16(q.avail+2, q.availIdx)
		}, "more than the queue size"},
		{"indirect not negotiated", featVersion1, func(g *simGuest, d int) {
			g.setDesc(g.q[txQueue], d, hdrGPA, 32, descFIndirect, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "not negotiated"},
		{"indirect table length", featVersion1 | featIndirectDesc, func(g *simGuest, d int) {
			g.setDesc(g.q[txQueue], d, hdrGPA, 20, descFIndirect, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "indirect table length 20"},
		{"nested indirect", featVersion1 | featIndirectDesc, func(g *simGuest, d int) {
			tab := g.mem[hdrOff:]
			binary.LittleEndian.PutUint64(tab[0:], hdrGPA)
			binary.LittleEndian.PutUint32(tab[8:], 16)
			binary.LittleEndian.PutUint16(tab[12:], descFIndirect)
			g.setDesc(g.q[txQueue], d, hdrGPA, 16, descFIndirect, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "nested indirect"},
		{"readable after writable", featVersion1, func(g *simGuest, d int) {
			q := g.q[txQueue]
			g.setDesc(q, d, hdrGPA, 8, descFWrite|descFNext, uint16(d+1))
			g.setDesc(q, d+1, hdrGPA, hdrLen, 0, 0)
			g.publishLocked(txQueue, uint16(d))
		}, "readable descriptor after a writable"},
		{"memory truncated under us", featVersion1, func(g *simGuest, d int) {
			if err := unix.Ftruncate(g.memfd, 0); err != nil {
				panic(err)
			}
			signal(g.q[txQueue].kick) // the simulated guest cannot touch the memory either
		}, "fault accessing guest memory"},
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
			g.accept(ln)
			g.mu.Lock()
			// Take the last tx slot so its descriptors are ours to corrupt.
			slot := -1
			err = g.waitLocked("the last tx slot", func() bool {
				for i, s := range g.freeSlots {
					if s == simTxSlots-1 {
						slot = i
						return true
					}
				}
				return false
			})
			if err != nil {
				g.mu.Unlock()
				t.Fatal(err)
			}
			g.freeSlots = append(g.freeSlots[:slot], g.freeSlots[slot+1:]...)
			tc.inject(g, 2*(simTxSlots-1))
			g.kickLocked(txQueue)
			g.mu.Unlock()

			err = waitStopped(t, b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("device stopped with %v, want an error containing %q", err, tc.want)
			}
			// QEMU hears of ring errors on the tx queue's error eventfd.
			var buf [8]byte
			if n, _ := unix.Read(g.errFds[txQueue], buf[:]); (n == 8) != strings.Contains(err.Error(), "tx queue") {
				t.Errorf("error eventfd signalled: %v, for %v", n == 8, err)
			}
			if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("read on a connection of the failed device: %v", err)
			}
		})
	}
}
