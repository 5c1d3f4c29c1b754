package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// The vhost-user wire format (QEMU docs/interop/vhost-user.rst): a 12-byte
// header (request, flags, payload size; native byte order, which is little
// endian on every host we run on) followed by the payload. File descriptors
// travel as SCM_RIGHTS ancillary data with the message.

// Front-end requests.
const (
	vuGetFeatures         = 1
	vuSetFeatures         = 2
	vuSetOwner            = 3
	vuResetOwner          = 4
	vuSetMemTable         = 5
	vuSetLogBase          = 6
	vuSetLogFd            = 7
	vuSetVringNum         = 8
	vuSetVringAddr        = 9
	vuSetVringBase        = 10
	vuGetVringBase        = 11
	vuSetVringKick        = 12
	vuSetVringCall        = 13
	vuSetVringErr         = 14
	vuGetProtocolFeatures = 15
	vuSetProtocolFeatures = 16
	vuGetQueueNum         = 17
	vuSetVringEnable      = 18
	vuSendRARP            = 19
	vuNetSetMTU           = 20
	vuSetBackendReqFd     = 21
	vuIOTLBMsg            = 22
	vuSetVringEndian      = 23
	vuGetConfig           = 24
	vuSetConfig           = 25
	vuResetDevice         = 34
	vuSetStatus           = 39
	vuGetStatus           = 40
)

var vuRequestNames = map[uint32]string{
	vuGetFeatures: "GET_FEATURES", vuSetFeatures: "SET_FEATURES", vuSetOwner: "SET_OWNER",
	vuResetOwner: "RESET_OWNER", vuSetMemTable: "SET_MEM_TABLE", vuSetLogBase: "SET_LOG_BASE",
	vuSetLogFd: "SET_LOG_FD", vuSetVringNum: "SET_VRING_NUM", vuSetVringAddr: "SET_VRING_ADDR",
	vuSetVringBase: "SET_VRING_BASE", vuGetVringBase: "GET_VRING_BASE", vuSetVringKick: "SET_VRING_KICK",
	vuSetVringCall: "SET_VRING_CALL", vuSetVringErr: "SET_VRING_ERR",
	vuGetProtocolFeatures: "GET_PROTOCOL_FEATURES", vuSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	vuGetQueueNum: "GET_QUEUE_NUM", vuSetVringEnable: "SET_VRING_ENABLE", vuSendRARP: "SEND_RARP",
	vuNetSetMTU: "NET_SET_MTU", vuSetBackendReqFd: "SET_BACKEND_REQ_FD", vuIOTLBMsg: "IOTLB_MSG",
	vuSetVringEndian: "SET_VRING_ENDIAN", vuGetConfig: "GET_CONFIG", vuSetConfig: "SET_CONFIG",
	vuResetDevice: "RESET_DEVICE", vuSetStatus: "SET_STATUS", vuGetStatus: "GET_STATUS",
}

func vuRequestName(r uint32) string {
	if n, ok := vuRequestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", r)
}

const (
	vuVersion       = 0x1
	vuVersionMask   = 0x3
	vuFlagReply     = 1 << 2
	vuFlagNeedReply = 1 << 3

	vuHeaderSize = 12
	// vuMaxPayload bounds what we read; QEMU's largest payload is well below.
	vuMaxPayload = 4096
	// vuMaxFds bounds descriptors per message; QEMU sends at most 8.
	vuMaxFds = 16
	// vuMaxRegions is VHOST_MEMORY_BASELINE_NREGIONS.
	vuMaxRegions = 8

	vuVringIdxMask  = 0xff
	vuVringNoFdMask = 1 << 8

	vuMaxConfigSize = 256
)

// Feature bits.
const (
	vuFProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES

	vuProtoMQ       = 1 << 0
	vuProtoReplyAck = 1 << 3
	vuProtoConfig   = 1 << 9
)

// vuMessage is one front-end request. fds are owned by the message until a
// handler takes them; closeFds releases the rest.
type vuMessage struct {
	request uint32
	flags   uint32
	payload []byte
	fds     []int
}

func (m *vuMessage) needReply() bool { return m.flags&vuFlagNeedReply != 0 }

func (m *vuMessage) name() string { return vuRequestName(m.request) }

func (m *vuMessage) closeFds() {
	for _, fd := range m.fds {
		_ = unix.Close(fd)
	}
	m.fds = nil
}

// takeFds hands over all descriptors, requiring exactly n of them.
func (m *vuMessage) takeFds(n int) ([]int, error) {
	if len(m.fds) != n {
		return nil, fmt.Errorf("%s carries %d file descriptors, want %d", m.name(), len(m.fds), n)
	}
	fds := m.fds
	m.fds = nil
	return fds, nil
}

// decodeVUHeader parses and checks a message header.
func decodeVUHeader(b []byte) (request, flags, size uint32, err error) {
	if len(b) < vuHeaderSize {
		return 0, 0, 0, fmt.Errorf("vhost-user header is %d bytes, want %d", len(b), vuHeaderSize)
	}
	request = binary.LittleEndian.Uint32(b[0:])
	flags = binary.LittleEndian.Uint32(b[4:])
	size = binary.LittleEndian.Uint32(b[8:])
	if flags&vuVersionMask != vuVersion {
		return 0, 0, 0, fmt.Errorf("vhost-user %s: protocol version %d, want %d", vuRequestName(request), flags&vuVersionMask, vuVersion)
	}
	if flags&vuFlagReply != 0 {
		return 0, 0, 0, fmt.Errorf("vhost-user %s: front-end sent a reply", vuRequestName(request))
	}
	if size > vuMaxPayload {
		return 0, 0, 0, fmt.Errorf("vhost-user %s: payload of %d bytes exceeds %d", vuRequestName(request), size, vuMaxPayload)
	}
	return request, flags, size, nil
}

// readVUMessage reads one request and the descriptors sent with it.
func readVUMessage(c *net.UnixConn) (*vuMessage, error) {
	var hdr [vuHeaderSize]byte
	var fds []int
	closeAll := func() {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
	}
	if err := readWithFds(c, hdr[:], &fds); err != nil {
		closeAll()
		return nil, err
	}
	request, flags, size, err := decodeVUHeader(hdr[:])
	if err != nil {
		closeAll()
		return nil, err
	}
	payload := make([]byte, size)
	if err := readWithFds(c, payload, &fds); err != nil {
		closeAll()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("vhost-user %s payload: %w", vuRequestName(request), err)
	}
	return &vuMessage{request: request, flags: flags, payload: payload, fds: fds}, nil
}

// readWithFds fills buf from the stream socket, collecting passed descriptors.
func readWithFds(c *net.UnixConn, buf []byte, fds *[]int) error {
	oob := make([]byte, unix.CmsgSpace(vuMaxFds*4))
	for got := 0; got < len(buf); {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf[got:], oob)
		if oobn > 0 {
			if perr := parseRights(oob[:oobn], fds); perr != nil && err == nil {
				err = perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 && err == nil {
			err = fmt.Errorf("more than %d file descriptors in one vhost-user message", vuMaxFds)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			if got > 0 {
				return io.ErrUnexpectedEOF
			}
			return io.EOF
		}
		got += n
	}
	if len(*fds) > vuMaxFds {
		return fmt.Errorf("%d file descriptors in one vhost-user message, at most %d", len(*fds), vuMaxFds)
	}
	return nil
}

func parseRights(oob []byte, fds *[]int) error {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("parse vhost-user ancillary data: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		rights, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fmt.Errorf("parse vhost-user file descriptors: %w", err)
		}
		*fds = append(*fds, rights...)
	}
	return nil
}

// encodeVUReply builds a reply: QEMU insists on flags == version|reply.
func encodeVUReply(request uint32, payload []byte) []byte {
	b := make([]byte, vuHeaderSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], request)
	binary.LittleEndian.PutUint32(b[4:], vuVersion|vuFlagReply)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[vuHeaderSize:], payload)
	return b
}

func u64Payload(v uint64) []byte {
	return binary.LittleEndian.AppendUint64(nil, v)
}

// Payload decoders. Each checks the exact size QEMU sends.

func (m *vuMessage) u64() (uint64, error) {
	if len(m.payload) != 8 {
		return 0, fmt.Errorf("%s payload is %d bytes, want 8", m.name(), len(m.payload))
	}
	return binary.LittleEndian.Uint64(m.payload), nil
}

// vringState decodes struct vhost_vring_state {u32 index; u32 num}.
func (m *vuMessage) vringState() (index, num uint32, err error) {
	if len(m.payload) != 8 {
		return 0, 0, fmt.Errorf("%s payload is %d bytes, want 8", m.name(), len(m.payload))
	}
	return binary.LittleEndian.Uint32(m.payload[0:]), binary.LittleEndian.Uint32(m.payload[4:]), nil
}

func encodeVringState(index, num uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, index)
	return binary.LittleEndian.AppendUint32(b, num)
}

// vringAddr is struct vhost_vring_addr.
type vringAddr struct {
	index, flags                uint32
	desc, used, avail, logGuest uint64
}

func (m *vuMessage) vringAddr() (vringAddr, error) {
	if len(m.payload) != 40 {
		return vringAddr{}, fmt.Errorf("%s payload is %d bytes, want 40", m.name(), len(m.payload))
	}
	p := m.payload
	le := binary.LittleEndian
	return vringAddr{
		index: le.Uint32(p[0:]), flags: le.Uint32(p[4:]),
		desc: le.Uint64(p[8:]), used: le.Uint64(p[16:]), avail: le.Uint64(p[24:]), logGuest: le.Uint64(p[32:]),
	}, nil
}

// vringFile decodes the u64 of SET_VRING_KICK/CALL/ERR: ring index in bits
// 0-7, bit 8 set when no descriptor is passed.
func (m *vuMessage) vringFile() (index uint32, noFd bool, err error) {
	v, err := m.u64()
	if err != nil {
		return 0, false, err
	}
	if v&^uint64(vuVringIdxMask|vuVringNoFdMask) != 0 {
		return 0, false, fmt.Errorf("%s payload %#x has unknown bits", m.name(), v)
	}
	return uint32(v & vuVringIdxMask), v&vuVringNoFdMask != 0, nil
}

// memTable decodes VhostUserMemory: u32 nregions, u32 padding, then the
// regions (u64 guest_phys_addr, memory_size, userspace_addr, mmap_offset).
func (m *vuMessage) memTable() ([]regionDesc, error) {
	p := m.payload
	if len(p) < 8 {
		return nil, fmt.Errorf("%s payload is %d bytes, want at least 8", m.name(), len(p))
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > vuMaxRegions {
		return nil, fmt.Errorf("%s has %d regions, want 1 to %d", m.name(), n, vuMaxRegions)
	}
	if want := 8 + 32*int(n); len(p) < want || len(p) > 8+32*vuMaxRegions {
		return nil, fmt.Errorf("%s payload is %d bytes for %d regions", m.name(), len(p), n)
	}
	regions := make([]regionDesc, n)
	le := binary.LittleEndian
	for i := range regions {
		r := p[8+32*i:]
		regions[i] = regionDesc{gpa: le.Uint64(r[0:]), size: le.Uint64(r[8:]), uaddr: le.Uint64(r[16:]), mmapOffset: le.Uint64(r[24:])}
	}
	return regions, nil
}

// config decodes VhostUserConfig: u32 offset, u32 size, u32 flags, data.
func (m *vuMessage) config() (offset, size, flags uint32, data []byte, err error) {
	p := m.payload
	if len(p) < 12 {
		return 0, 0, 0, nil, fmt.Errorf("%s payload is %d bytes, want at least 12", m.name(), len(p))
	}
	le := binary.LittleEndian
	offset, size, flags = le.Uint32(p[0:]), le.Uint32(p[4:]), le.Uint32(p[8:])
	if size > vuMaxConfigSize || len(p) != 12+int(size) {
		return 0, 0, 0, nil, fmt.Errorf("%s: config size %d does not match payload of %d bytes", m.name(), size, len(p))
	}
	return offset, size, flags, p[12:], nil
}

func encodeConfig(offset, flags uint32, data []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, offset)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	b = binary.LittleEndian.AppendUint32(b, flags)
	return append(b, data...)
}
