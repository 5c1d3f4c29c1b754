package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/contrast-vm/contrast/hypervisor/vsock"
)

// DialGuest connects to a vsock port of the running VM whose state
// directory is stateDir, from another process on the host: through the
// vhost-user backend's hybrid socket, or to the guest CID recorded for
// kernel vhost-vsock.
func DialGuest(ctx context.Context, stateDir string, port uint32) (net.Conn, error) {
	// The socket's own path is short; stateDir's may not be.
	sock := filepath.Join(socketDirOf(stateDir), hybridSocketName)
	if _, err := os.Stat(sock); err == nil {
		return vsock.HybridTransport{Path: sock}.Dial(ctx, port)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(stateDir, guestCIDName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no VM in %s: neither %s nor %s exists (is the pod running, under this state directory?)", stateDir, hybridSocketName, guestCIDName)
	}
	if err != nil {
		return nil, err
	}
	cid, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 32)
	if err != nil || cid < 3 {
		return nil, fmt.Errorf("%s: %q is not a guest CID", filepath.Join(stateDir, guestCIDName), strings.TrimSpace(string(raw)))
	}
	return vsock.KernelTransport{CID: uint32(cid)}.Dial(ctx, port)
}
