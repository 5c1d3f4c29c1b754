package qemu

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"

	"github.com/contrast-vm/contrast/hypervisor/vsock"
)

// vsockBackend is the host end of the guest's vsock device: the kernel's
// AF_VSOCK, or our Go vhost-user device backend.
type vsockBackend interface {
	Dial(ctx context.Context, port uint32) (net.Conn, error)
	// Close releases the backend (a no-op for kernel vsock).
	Close() error
}

type kernelVsock struct{ t vsock.KernelTransport }

func newKernelVsock(cid uint32) vsockBackend { return kernelVsock{t: vsock.KernelTransport{CID: cid}} }

func (k kernelVsock) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	return k.t.Dial(ctx, port)
}
func (kernelVsock) Close() error { return nil }

// newVhostUserVsock starts the Go vhost-user-vsock device backend; it must
// listen before QEMU starts, because QEMU connects to it at start-up.
func newVhostUserVsock(guestCID uint32, vhostUserSocket, hybridSocket string) (*vsock.Backend, error) {
	b, err := vsock.NewBackend(vsock.BackendConfig{
		GuestCID:        guestCID,
		VhostUserSocket: vhostUserSocket,
		HybridSocket:    hybridSocket,
	})
	if err != nil {
		return nil, fmt.Errorf("start vhost-user-vsock backend on %s: %w", vhostUserSocket, err)
	}
	return b, nil
}

// vhostUserGuestCID is the guest CID behind our own backend. Every VM has
// its own backend, so the CID needs no host-wide uniqueness.
const vhostUserGuestCID = 3

// randomCID picks a guest CID for kernel vhost-vsock, where CIDs are
// host-wide. 0-2 are reserved and 0xFFFFFFFF is VMADDR_CID_ANY.
func randomCID() uint32 { return 3 + rand.Uint32N(1<<31-3) }

// cidInUse tells whether QEMU failed because kernel vhost-vsock already
// gives the requested CID to another VM.
func cidInUse(qemuStderr string) bool {
	s := strings.ToLower(qemuStderr)
	return strings.Contains(s, "unable to set guest cid") && strings.Contains(s, "in use")
}
