package vsock

import (
	"errors"
	"fmt"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// memRegion is one guest RAM region as the front-end described it in
// SET_MEM_TABLE: guest physical addresses [gpa, gpa+size) and front-end
// (QEMU) virtual addresses [uaddr, uaddr+size) both map onto data.
type memRegion struct {
	gpa, size, uaddr uint64
	data             []byte
	mapping          []byte // what to munmap; nil when data is not ours to unmap
}

// guestMemory translates guest physical and front-end virtual addresses into
// byte slices of the shared guest RAM. Every address comes from the guest or
// QEMU, so every translation is bounds checked.
type guestMemory struct {
	regions []memRegion
}

// regionDesc is a region entry of a SET_MEM_TABLE message.
type regionDesc struct {
	gpa, size, uaddr, mmapOffset uint64
}

// mapRegions mmaps every region from its file descriptor. It does not take
// ownership of fds. On error nothing stays mapped.
func mapRegions(descs []regionDesc, fds []int) (*guestMemory, error) {
	if len(descs) != len(fds) {
		return nil, fmt.Errorf("memory table has %d regions but %d file descriptors", len(descs), len(fds))
	}
	m := &guestMemory{}
	for i, d := range descs {
		if err := checkRegion(d); err != nil {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: %w", i, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: fstat: %w", i, err)
		}
		// Touching pages past the end of a file raises SIGBUS: refuse such a region up front.
		if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < d.mmapOffset+d.size {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: needs %d bytes at offset %d of a %d byte file",
				i, d.size, d.mmapOffset, st.Size)
		}
		pageOff := d.mmapOffset % uint64(os.Getpagesize())
		length := d.size + pageOff
		if length > math.MaxInt {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: size %d too large to map", i, d.size)
		}
		mapping, err := unix.Mmap(fds[i], int64(d.mmapOffset-pageOff), int(length),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		if err != nil {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: mmap %d bytes at offset %d: %w", i, length, d.mmapOffset, err)
		}
		m.regions = append(m.regions, memRegion{
			gpa: d.gpa, size: d.size, uaddr: d.uaddr,
			data: mapping[pageOff : pageOff+d.size : pageOff+d.size], mapping: mapping,
		})
	}
	if err := m.checkOverlap(); err != nil {
		m.unmap()
		return nil, err
	}
	return m, nil
}

func checkRegion(d regionDesc) error {
	switch {
	case d.size == 0:
		return errors.New("size is zero")
	case d.gpa+d.size < d.gpa:
		return fmt.Errorf("guest address %#x + size %#x overflows", d.gpa, d.size)
	case d.uaddr+d.size < d.uaddr:
		return fmt.Errorf("user address %#x + size %#x overflows", d.uaddr, d.size)
	case d.mmapOffset+d.size < d.mmapOffset:
		return fmt.Errorf("mmap offset %#x + size %#x overflows", d.mmapOffset, d.size)
	case d.mmapOffset > math.MaxInt64:
		return fmt.Errorf("mmap offset %#x too large", d.mmapOffset)
	}
	return nil
}

// checkOverlap refuses tables whose guest or user ranges overlap: a
// translation must have exactly one answer.
func (m *guestMemory) checkOverlap() error {
	for i, a := range m.regions {
		for _, b := range m.regions[i+1:] {
			if a.gpa < b.gpa+b.size && b.gpa < a.gpa+a.size {
				return fmt.Errorf("memory regions overlap in guest addresses: [%#x,+%#x) and [%#x,+%#x)", a.gpa, a.size, b.gpa, b.size)
			}
			if a.uaddr < b.uaddr+b.size && b.uaddr < a.uaddr+a.size {
				return fmt.Errorf("memory regions overlap in user addresses: [%#x,+%#x) and [%#x,+%#x)", a.uaddr, a.size, b.uaddr, b.size)
			}
		}
	}
	return nil
}

func (m *guestMemory) unmap() {
	if m == nil {
		return
	}
	for _, r := range m.regions {
		if r.mapping != nil {
			_ = unix.Munmap(r.mapping)
		}
	}
	m.regions = nil
}

// translate appends to segs the slices of guest memory that hold the n bytes
// at guest physical address gpa. A buffer may span adjacent regions.
func (m *guestMemory) translate(gpa uint64, n uint32, segs [][]byte) ([][]byte, error) {
	if gpa+uint64(n) < gpa {
		return segs, fmt.Errorf("guest buffer %#x+%d wraps around", gpa, n)
	}
	left := uint64(n)
	addr := gpa
	for left > 0 {
		r := m.findGPA(addr)
		if r == nil {
			return segs, fmt.Errorf("guest buffer %#x+%d is outside guest memory (at %#x)", gpa, n, addr)
		}
		off := addr - r.gpa
		take := min(left, r.size-off)
		segs = append(segs, r.data[off:off+take:off+take])
		addr += take
		left -= take
	}
	return segs, nil
}

func (m *guestMemory) findGPA(addr uint64) *memRegion {
	for i := range m.regions {
		r := &m.regions[i]
		if addr >= r.gpa && addr-r.gpa < r.size {
			return r
		}
	}
	return nil
}

// userSlice returns the n bytes at front-end virtual address uaddr, which
// must lie within one region (vring parts are contiguous in QEMU's memory).
func (m *guestMemory) userSlice(uaddr, n uint64) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if uaddr >= r.uaddr && uaddr-r.uaddr < r.size {
			off := uaddr - r.uaddr
			if n > r.size-off {
				return nil, fmt.Errorf("user address range %#x+%d crosses the end of its memory region", uaddr, n)
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("user address %#x is outside guest memory", uaddr)
}
