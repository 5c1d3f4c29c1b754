// Package podstate is the one definition of where a pod VM's state lives on
// the node: the shim writes it, `contrast verify --pod` and the demos read
// it. A pod's state directory holds:
//
//	<state_dir>/<namespace>/<sandbox id>/
//	  policy.json   which policy the agent installed (PolicyStatusFile)
//	  disks/        rootfs images of tasks started outside CRI (DisksDir)
//	  console.log, sockets -> <socket_dir>/<hash>/, ...
//	                the hypervisor's own files (hypervisor.VMSpec.StateDir)
package podstate

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
)

// Defaults of the runtime configuration's state_dir and socket_dir, and
// the containerd namespace Kubernetes uses.
const (
	DefaultStateDir  = "/run/contrast"
	DefaultSocketDir = "/run/contrast/s"
	KubernetesNS     = "k8s.io"
)

// PolicyStatusFile, in a pod's state directory, records which policy the
// agent installed and whether a TEE vouches for it.
const PolicyStatusFile = "policy.json"

// DisksDir, in a pod's state directory, holds the rootfs images of tasks
// started outside CRI.
const DisksDir = "disks"

// Dir is the state directory of pod id in a containerd namespace.
func Dir(stateDir, namespace, id string) string {
	return filepath.Join(stateDir, namespace, id)
}

// SocketHashLen is how many hex digits of SHA-256 name a pod's socket
// directory: 128 bits, no collisions among a node's pods.
const SocketHashLen = 32

// SocketDir is where the VM of the pod whose state directory is podDir
// keeps its unix sockets: a path of fixed length under socketDir, whatever
// the state_dir, namespace and pod id, so that it fits sockaddr_un.
func SocketDir(socketDir, podDir string) string {
	sum := sha256.Sum256([]byte(podDir))
	return filepath.Join(socketDir, hex.EncodeToString(sum[:])[:SocketHashLen])
}
