package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Split virtqueue layout (virtio spec 2.7) and feature bits.
const (
	descSize = 16

	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	availFNoInterrupt = 1

	maxQueueSize = 32768

	featIndirectDesc = 1 << 28 // VIRTIO_RING_F_INDIRECT_DESC
	featEventIdx     = 1 << 29 // VIRTIO_RING_F_EVENT_IDX
	featVersion1     = 1 << 32 // VIRTIO_F_VERSION_1
)

// descChain is one available buffer: the device-readable segments (written
// by the driver) followed by the device-writable ones. The slices point into
// guest memory and are valid until the memory table changes.
type descChain struct {
	head     uint16
	readable [][]byte
	writable [][]byte
}

func segsLen(segs [][]byte) int {
	n := 0
	for _, s := range segs {
		n += len(s)
	}
	return n
}

// gather copies the bytes of segs starting at offset off into dst and
// returns how many it copied.
func gather(dst []byte, segs [][]byte, off int) int {
	n := 0
	for _, s := range segs {
		if off >= len(s) {
			off -= len(s)
			continue
		}
		c := copy(dst[n:], s[off:])
		n += c
		off = 0
		if n == len(dst) {
			break
		}
	}
	return n
}

// scatter copies src into segs starting at offset off and returns how many
// bytes it copied.
func scatter(segs [][]byte, off int, src []byte) int {
	n := 0
	for _, s := range segs {
		if off >= len(s) {
			off -= len(s)
			continue
		}
		c := copy(s[off:], src[n:])
		n += c
		off = 0
		if n == len(src) {
			break
		}
	}
	return n
}

// virtqueue is the device side of a split virtqueue in guest memory. It
// trusts nothing it reads from the rings: indexes, descriptors and addresses
// are checked, and chains are bounded in length.
type virtqueue struct {
	size      uint16
	desc      []byte // size * 16
	avail     []byte // 6 + 2*size: flags, idx, ring[size], used_event
	used      []byte // 6 + 8*size: flags, idx, ring[size]{id,len}, avail_event
	mem       *guestMemory
	eventIdx  bool
	indirect  bool
	lastAvail uint16 // next available ring entry to consume
	usedIdx   uint16 // next used ring entry to produce

	signalled      uint16 // usedIdx at the last interrupt decision (EVENT_IDX)
	signalledValid bool
	pushed         bool // used entries added since the last interrupt decision

	fence    atomic.Uint32
	scratchR [][]byte
	scratchW [][]byte
	indTable []byte
}

// bind checks the ring addresses (front-end virtual addresses) and points
// the queue at them in mem. It keeps the ring indexes, so a queue survives a
// new memory table. It does not read guest memory.
func (q *virtqueue) bind(mem *guestMemory, size uint32, descUA, availUA, usedUA uint64) error {
	q.unbind()
	if size == 0 || size > maxQueueSize || size&(size-1) != 0 {
		return fmt.Errorf("queue size %d is not a power of two in [1, %d]", size, maxQueueSize)
	}
	if descUA%16 != 0 || availUA%2 != 0 || usedUA%4 != 0 {
		return fmt.Errorf("misaligned ring addresses desc=%#x avail=%#x used=%#x", descUA, availUA, usedUA)
	}
	n := uint64(size)
	desc, err := mem.userSlice(descUA, n*descSize)
	if err != nil {
		return fmt.Errorf("descriptor table: %w", err)
	}
	avail, err := mem.userSlice(availUA, 6+2*n)
	if err != nil {
		return fmt.Errorf("available ring: %w", err)
	}
	used, err := mem.userSlice(usedUA, 6+8*n)
	if err != nil {
		return fmt.Errorf("used ring: %w", err)
	}
	// Indexes are accessed atomically, which needs natural alignment in host memory too.
	if uintptr(unsafe.Pointer(&avail[0]))%2 != 0 || uintptr(unsafe.Pointer(&used[0]))%4 != 0 {
		return errors.New("ring is misaligned in host memory")
	}
	q.size, q.desc, q.avail, q.used, q.mem = uint16(size), desc, avail, used, mem
	return nil
}

// unbind drops every reference into guest memory.
func (q *virtqueue) unbind() {
	q.desc, q.avail, q.used, q.mem = nil, nil, nil, nil
	clear(q.scratchR[:cap(q.scratchR)])
	clear(q.scratchW[:cap(q.scratchW)])
}

// start resets the indexes when the ring (re)starts: the driver's position
// comes from SET_VRING_BASE, the used index from guest memory.
func (q *virtqueue) start(base uint16) {
	q.lastAvail = base
	q.usedIdx = load16(q.used, 2)
	q.signalledValid = false
	q.pushed = false
}

// load16 atomically reads the little-endian u16 at b[off] (2-byte aligned)
// through the aligned 32-bit word containing it: Go has no 16-bit atomics,
// and the guest writes these indexes concurrently.
func load16(b []byte, off int) uint16 {
	ptr := unsafe.Pointer(&b[off])
	shift := uintptr(ptr) & 2
	w := atomic.LoadUint32((*uint32)(unsafe.Add(ptr, -int(shift))))
	var tmp [4]byte
	binary.NativeEndian.PutUint32(tmp[:], w)
	return binary.LittleEndian.Uint16(tmp[shift:])
}

// availIdx is the driver's available index.
func (q *virtqueue) availIdx() uint16 { return load16(q.avail, 2) }

// hasAvail reports whether a buffer is waiting.
func (q *virtqueue) hasAvail() bool { return q.availIdx() != q.lastAvail }

// pop takes the next available descriptor chain. ok is false when none is
// waiting. An error means the driver broke the ring.
func (q *virtqueue) pop() (c descChain, ok bool, err error) {
	idx := q.availIdx()
	if idx == q.lastAvail {
		return descChain{}, false, nil
	}
	if pending := idx - q.lastAvail; pending > q.size {
		return descChain{}, false, fmt.Errorf("available index moved from %d to %d, more than the queue size %d", q.lastAvail, idx, q.size)
	}
	slot := int(q.lastAvail % q.size)
	head := binary.LittleEndian.Uint16(q.avail[4+2*slot:])
	c, err = q.readChain(head)
	if err != nil {
		return descChain{}, false, err
	}
	q.lastAvail++
	return c, true, nil
}

// readChain walks the descriptor chain starting at head, following indirect
// tables when negotiated, and translates every buffer into guest memory.
func (q *virtqueue) readChain(head uint16) (descChain, error) {
	c := descChain{head: head, readable: q.scratchR[:0], writable: q.scratchW[:0]}
	defer func() { q.scratchR, q.scratchW = c.readable[:0], c.writable[:0] }()
	table := q.desc
	n := int(q.size)
	i := int(head)
	inIndirect := false
	for steps := 0; ; steps++ {
		if i >= n {
			return c, fmt.Errorf("chain at %d: descriptor index %d out of range %d", head, i, n)
		}
		if steps >= n {
			return c, fmt.Errorf("chain at %d: longer than %d descriptors (loop?)", head, n)
		}
		d := table[i*descSize : (i+1)*descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return c, fmt.Errorf("chain at %d: indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC not negotiated", head)
			case inIndirect:
				return c, fmt.Errorf("chain at %d: nested indirect descriptor", head)
			case flags&descFNext != 0 || steps != 0:
				return c, fmt.Errorf("chain at %d: indirect descriptor must be alone in its chain", head)
			case length == 0 || length%descSize != 0 || length/descSize > maxQueueSize:
				return c, fmt.Errorf("chain at %d: indirect table length %d invalid", head, length)
			}
			// Copy the table out so the guest cannot change it under us.
			segs, err := q.mem.translate(addr, length, nil)
			if err != nil {
				return c, fmt.Errorf("chain at %d: indirect table: %w", head, err)
			}
			if cap(q.indTable) < int(length) {
				q.indTable = make([]byte, length)
			}
			table = q.indTable[:length]
			gather(table, segs, 0)
			n = int(length / descSize)
			i = 0
			steps = -1
			inIndirect = true
			continue
		}
		var err error
		if flags&descFWrite != 0 {
			c.writable, err = q.mem.translate(addr, length, c.writable)
		} else {
			if len(c.writable) > 0 {
				return c, fmt.Errorf("chain at %d: device-readable descriptor after a writable one", head)
			}
			c.readable, err = q.mem.translate(addr, length, c.readable)
		}
		if err != nil {
			return c, fmt.Errorf("chain at %d: %w", head, err)
		}
		if flags&descFNext == 0 {
			return c, nil
		}
		i = int(next)
	}
}

// push returns chain head to the driver with n bytes written.
func (q *virtqueue) push(head uint16, n uint32) {
	slot := int(q.usedIdx % q.size)
	e := q.used[4+8*slot:]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], n)
	q.usedIdx++
	// One atomic store publishes the entry (release) and orders the later
	// read of the driver's notification settings (full barrier on amd64).
	var tmp [4]byte
	binary.LittleEndian.PutUint16(tmp[0:], 0) // used flags: we never suppress kicks this way
	binary.LittleEndian.PutUint16(tmp[2:], q.usedIdx)
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&q.used[0])), binary.NativeEndian.Uint32(tmp[:]))
	q.pushed = true
}

// needInterrupt decides whether the driver wants an interrupt for the used
// entries pushed since the last decision.
func (q *virtqueue) needInterrupt() bool {
	if !q.pushed {
		return false
	}
	q.pushed = false
	if !q.eventIdx {
		return load16(q.avail, 0)&availFNoInterrupt == 0
	}
	event := load16(q.avail, 4+2*int(q.size))
	old, valid := q.signalled, q.signalledValid
	q.signalled, q.signalledValid = q.usedIdx, true
	if !valid {
		return true
	}
	// vring_need_event: did usedIdx pass event since the last interrupt?
	return q.usedIdx-event-1 < q.usedIdx-old
}

// armKick asks the driver (EVENT_IDX) to kick when it makes the next buffer
// available, and reports whether one already is: the caller must then look
// again instead of waiting for a kick that will not come.
func (q *virtqueue) armKick() bool {
	if q.eventIdx {
		binary.LittleEndian.PutUint16(q.used[4+8*int(q.size):], q.lastAvail)
		q.fence.Add(1) // full barrier between the store above and the load below
	}
	return q.hasAvail()
}
