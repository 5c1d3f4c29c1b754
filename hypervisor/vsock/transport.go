// Package vsock reaches vsock ports inside a pod VM from the host, in three
// ways behind hypervisor.Transport:
//
//   - KernelTransport: AF_VSOCK through the host kernel (vhost-vsock-pci);
//   - HybridTransport: the unix socket of Firecracker and Cloud Hypervisor
//     (write "CONNECT <port>\n", read "OK <port>\n");
//   - Backend: our own vhost-user-vsock device back-end for QEMU on hosts
//     without vhost_vsock, which also serves the hybrid protocol.
//
// The guest always uses plain AF_VSOCK.
package vsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/mdlayher/vsock"
)

var (
	_ hypervisor.Transport = KernelTransport{}
	_ hypervisor.Transport = HybridTransport{}
	_ hypervisor.Transport = (*Backend)(nil)
)

// KernelTransport dials the guest through the host kernel's AF_VSOCK.
type KernelTransport struct {
	CID uint32
}

// Dial connects to port of the guest, bounded by ctx.
func (t KernelTransport) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := vsock.DialContext(ctx, t.CID, port, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dial vsock cid %d port %d: %w", t.CID, port, ctx.Err())
		}
		return nil, fmt.Errorf("dial vsock cid %d port %d: %w", t.CID, port, err)
	}
	return c, nil
}

// HybridTransport dials the guest through a hybrid vsock unix socket.
type HybridTransport struct {
	Path string
}

// maxHybridLine bounds the handshake lines: "CONNECT 4294967295\n" is 19 bytes.
const maxHybridLine = 32

// Dial connects to port of the guest, bounded by ctx. The returned
// connection carries the stream right after the handshake.
func (t HybridTransport) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", t.Path)
	if err != nil {
		return nil, fmt.Errorf("dial hybrid vsock %s port %d: %w", t.Path, port, err)
	}
	if err := handshake(ctx, c, port); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("dial hybrid vsock %s port %d: %w", t.Path, port, err)
	}
	return c, nil
}

func handshake(ctx context.Context, c net.Conn, port uint32) (err error) {
	// When ctx ends, a deadline in the past unblocks the reads and writes below.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		// Once the AfterFunc ran, the connection is spoilt even if the
		// handshake finished.
		if !stop() {
			err = ctx.Err()
		}
	}()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return fmt.Errorf("send CONNECT: %w", err)
	}
	line, err := readLine(c)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("connection closed before OK (nothing listening on the guest port?)")
		}
		return fmt.Errorf("read CONNECT reply: %w", err)
	}
	rest, ok := bytes.CutPrefix(line, []byte("OK "))
	if !ok {
		return fmt.Errorf("CONNECT answered %q, want OK <port>", line)
	}
	if _, err := strconv.ParseUint(string(rest), 10, 32); err != nil {
		return fmt.Errorf("CONNECT answered %q: bad port", line)
	}
	return c.SetDeadline(time.Time{})
}

// readLine reads one line byte by byte: whatever follows the newline
// belongs to the stream and must stay unread.
func readLine(r io.Reader) ([]byte, error) {
	var line []byte
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return line, nil
			}
			if len(line) == maxHybridLine {
				return nil, fmt.Errorf("line longer than %d bytes", maxHybridLine)
			}
			line = append(line, b[0])
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// readConnect reads the client's "CONNECT <port>\n".
func readConnect(r io.Reader) (uint32, error) {
	line, err := readLine(r)
	if err != nil {
		return 0, fmt.Errorf("read CONNECT: %w", err)
	}
	arg, ok := bytes.CutPrefix(line, []byte("CONNECT "))
	if !ok {
		return 0, fmt.Errorf("got %q, want CONNECT <port>", line)
	}
	port, err := strconv.ParseUint(string(arg), 10, 32)
	if err != nil || port == portAny {
		return 0, fmt.Errorf("CONNECT %q: bad port", arg)
	}
	return uint32(port), nil
}
