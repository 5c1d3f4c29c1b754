package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// A VM's unix sockets live in a short directory of their own (VMSpec.
// SocketDir), linked from its state directory, because a socket's path must
// fit sockaddr_un while the state directory's path grows with the runtime's
// state_dir, containerd's namespace and the pod id.

// socketsLinkName is the link in the state directory to the VM's socket
// directory: tools that know only the state directory (Cleanup, DialGuest,
// contrast verify --pod) find the sockets through it.
const socketsLinkName = "sockets"

// socketNames are the sockets a VM's socket directory holds, besides the
// guest-initiated hybrid vsock connections on <hybridSocketName>_<port>.
var socketNames = []string{qmpSocketName, hybridSocketName, vhostUserSocketName}

// longestSocketName is the longest name a socket directory must take.
var longestSocketName = func() int {
	n := len(hybridSocketName) + hybridPortSuffix
	for _, s := range socketNames {
		n = max(n, len(s))
	}
	return n
}()

// MaxSocketDirLen is the longest socket directory path whose sockets fit
// sockaddr_un.
var MaxSocketDirLen = maxSocketPath - 1 - longestSocketName

// CheckSocketDir tells whether dir can hold a VM's sockets: an absolute
// path short enough for every socket in it.
func CheckSocketDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("socket directory %q: not an absolute path", dir)
	}
	if len(dir) > MaxSocketDirLen {
		return fmt.Errorf("socket directory %s is too long for its unix sockets (%d bytes, at most %d fit)",
			dir, len(dir), MaxSocketDirLen)
	}
	return nil
}

// socketDirOf is where the VM of stateDir keeps its sockets: the target of
// its sockets link, or stateDir itself.
func socketDirOf(stateDir string) string {
	if target, err := os.Readlink(filepath.Join(stateDir, socketsLinkName)); err == nil && filepath.IsAbs(target) {
		return target
	}
	return stateDir
}

// makeSocketDir creates the VM's socket directory and links it from the
// state directory; a leftover of an earlier run of the same VM is replaced.
// It returns the directory the sockets go into.
func makeSocketDir(stateDir, socketDir string) (string, error) {
	if socketDir == "" {
		return stateDir, nil
	}
	removeSocketFiles(socketDir)
	if err := os.Remove(socketDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("socket directory %s is in use: %w", socketDir, err)
	}
	if err := os.MkdirAll(filepath.Dir(socketDir), 0o711); err != nil {
		return "", fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Mkdir(socketDir, 0o700); err != nil {
		return "", fmt.Errorf("socket directory: %w", err)
	}
	link := filepath.Join(stateDir, socketsLinkName)
	os.Remove(link)
	if err := os.Symlink(socketDir, link); err != nil {
		os.Remove(socketDir)
		return "", fmt.Errorf("link socket directory from state directory: %w", err)
	}
	return socketDir, nil
}

// removeSocketFiles deletes the sockets in dir.
func removeSocketFiles(dir string) {
	for _, n := range socketNames {
		os.Remove(filepath.Join(dir, n))
	}
	// Guest-initiated hybrid vsock connections land on <socket>_<port>.
	if m, err := filepath.Glob(filepath.Join(dir, hybridSocketName+"_*")); err == nil {
		for _, f := range m {
			os.Remove(f)
		}
	}
}

// removeRuntimeFiles deletes the sockets, their directory and link, and
// the pid file, keeping the logs a person reads after a failure.
func removeRuntimeFiles(stateDir string) {
	sockDir := socketDirOf(stateDir)
	removeSocketFiles(sockDir)
	if sockDir != stateDir {
		// Only the directory we made, and only once empty: never a tree.
		os.Remove(sockDir)
		os.Remove(filepath.Join(stateDir, socketsLinkName))
	}
	for _, n := range []string{pidFileName, guestCIDName} {
		os.Remove(filepath.Join(stateDir, n))
	}
}

// socketDirFor is the directory that checkSpec checks and launch uses.
func socketDirFor(stateDir, socketDir string) string {
	if socketDir != "" {
		return socketDir
	}
	return stateDir
}
