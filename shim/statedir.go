package shim

import (
	"github.com/contrast-vm/contrast/api/podstate"
)

// podStateDir is where a pod's console log, policy and disks live
// (api/podstate has the layout).
func podStateDir(cfg Config, namespace, id string) string {
	return podstate.Dir(cfg.StateDir, namespace, id)
}

// podSocketDir is where the VM of the pod whose state directory is
// stateDir keeps its unix sockets.
func podSocketDir(cfg Config, stateDir string) string {
	return podstate.SocketDir(cfg.SocketDir, stateDir)
}

// Limits a state_dir must leave room for.
const (
	// maxContainerdName is the longest containerd namespace or id.
	maxContainerdName = 76
	// longestStateFileName bounds the names of the files in a pod's state
	// directory, disk images named by a layer digest among them.
	longestStateFileName = "sha256-0000000000000000000000000000000000000000000000000000000000000000.img"
	pathMax              = 4096
)
