package vsock

import (
	"encoding/binary"
	"fmt"
)

// The virtio-vsock packet header (virtio spec 5.10.6), little endian, packed.
const hdrLen = 44

// Well-known context IDs.
const (
	hostCID = 2 // VMADDR_CID_HOST
)

// Socket types.
const (
	typeStream = 1
)

// Operations.
const (
	opInvalid       = 0
	opRequest       = 1
	opResponse      = 2
	opRST           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7
)

// SHUTDOWN flags: the sender will receive (RCV) or send (SEND) no more data.
const (
	shutdownRcv  = 1
	shutdownSend = 2
	shutdownBoth = shutdownRcv | shutdownSend
)

// maxPayload bounds one packet's payload; Linux never sends more
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE) and vhost drops larger packets.
const maxPayload = 64 << 10

type header struct {
	srcCID   uint64
	dstCID   uint64
	srcPort  uint32
	dstPort  uint32
	len      uint32
	typ      uint16
	op       uint16
	flags    uint32
	bufAlloc uint32
	fwdCnt   uint32
}

func (h *header) encode(b []byte) {
	_ = b[hdrLen-1]
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.srcCID)
	le.PutUint64(b[8:], h.dstCID)
	le.PutUint32(b[16:], h.srcPort)
	le.PutUint32(b[20:], h.dstPort)
	le.PutUint32(b[24:], h.len)
	le.PutUint16(b[28:], h.typ)
	le.PutUint16(b[30:], h.op)
	le.PutUint32(b[32:], h.flags)
	le.PutUint32(b[36:], h.bufAlloc)
	le.PutUint32(b[40:], h.fwdCnt)
}

func decodeHeader(b []byte) (header, error) {
	if len(b) < hdrLen {
		return header{}, fmt.Errorf("vsock packet header is %d bytes, want %d", len(b), hdrLen)
	}
	le := binary.LittleEndian
	return header{
		srcCID:   le.Uint64(b[0:]),
		dstCID:   le.Uint64(b[8:]),
		srcPort:  le.Uint32(b[16:]),
		dstPort:  le.Uint32(b[20:]),
		len:      le.Uint32(b[24:]),
		typ:      le.Uint16(b[28:]),
		op:       le.Uint16(b[30:]),
		flags:    le.Uint32(b[32:]),
		bufAlloc: le.Uint32(b[36:]),
		fwdCnt:   le.Uint32(b[40:]),
	}, nil
}

func opName(op uint16) string {
	switch op {
	case opRequest:
		return "REQUEST"
	case opResponse:
		return "RESPONSE"
	case opRST:
		return "RST"
	case opShutdown:
		return "SHUTDOWN"
	case opRW:
		return "RW"
	case opCreditUpdate:
		return "CREDIT_UPDATE"
	case opCreditRequest:
		return "CREDIT_REQUEST"
	}
	return fmt.Sprintf("op(%d)", op)
}

func (h header) String() string {
	return fmt.Sprintf("%s %d:%d->%d:%d len=%d type=%d flags=%#x buf_alloc=%d fwd_cnt=%d",
		opName(h.op), h.srcCID, h.srcPort, h.dstCID, h.dstPort, h.len, h.typ, h.flags, h.bufAlloc, h.fwdCnt)
}
