// Package policy is the pod policy: what the pod's owner allows the untrusted
// host to ask of the agent in the pod VM. A policy is one Rego module (package
// agent_policy): the rules embedded from rules.rego, followed by the data
// generated from the pod YAML as `policy_data := {...}` (see Data). It
// travels inside an initdata document (package initdata) whose digest is the
// SNP HOSTDATA the VM is launched with, so the policy is part of what the
// hardware attests.
//
// The rule contract, which a hand-written policy must keep too: for each
// request kind (Kind) the module defines a rule of that name, for example
// `CreateContainer`, whose value is either a boolean or an object
// {"allow": bool, "reason": string}, optionally with "rule": the name of the
// check that failed, which the denial message shows. A kind whose rule is
// undefined is denied.
// The input of every rule is built from the request by enforce.Input.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Pod annotations that carry a policy: base64 of the Rego text. Ours first;
// Kata's is accepted so pods written for Kata's genpolicy run unchanged.
const (
	Annotation     = "io.contrast.policy"
	AnnotationKata = "io.katacontainers.config.agent.policy"
)

// Kind names a request the agent serves, and the rule that decides it.
type Kind string

// The request kinds, one per agent RPC the host can make once a policy is set.
// Health and SetPolicy are not decided by rules: Health answers before there
// is a policy, and SetPolicy is checked against HOSTDATA in Go.
const (
	CreateSandbox   Kind = "CreateSandbox"
	CreateContainer Kind = "CreateContainer"
	StartContainer  Kind = "StartContainer"
	ExecProcess     Kind = "ExecProcess"
	SignalProcess   Kind = "SignalProcess"
	WaitProcess     Kind = "WaitProcess"
	CloseStdin      Kind = "CloseStdin"
	ListProcesses   Kind = "ListProcesses"
	RemoveContainer Kind = "RemoveContainer"
	ResizePty       Kind = "ResizePty"
	PauseContainer  Kind = "PauseContainer"
	ResumeContainer Kind = "ResumeContainer"
	UpdateContainer Kind = "UpdateContainer"
	StatsContainer  Kind = "StatsContainer"
	WaitOOM         Kind = "WaitOOM"
	// GetReport asks the TEE for an attestation report carrying the
	// caller's nonce; it names no container.
	GetReport Kind = "GetReport"
	// ConfigureNetwork configures the pod VM's NICs, routes and neighbours
	// (the pod's CNI network); it names no container.
	ConfigureNetwork Kind = "ConfigureNetwork"
	// PortForward connects the host to a TCP port on the pod's loopback
	// (kubectl port-forward); it names no container. It is no RPC but a
	// connection to the agent's forward port (api/agent ForwardHeader).
	PortForward Kind = "PortForward"
	// ShareVolume puts a kubelet-managed volume (ConfigMap, Secret,
	// projected, downward API) into the VM or updates it; it names no
	// container.
	ShareVolume Kind = "ShareVolume"
)

// Kinds lists every request kind a policy decides.
var Kinds = []Kind{
	CreateSandbox, CreateContainer, StartContainer, ExecProcess, SignalProcess,
	WaitProcess, CloseStdin, ListProcesses, RemoveContainer, ResizePty,
	PauseContainer, ResumeContainer, UpdateContainer, StatsContainer, WaitOOM,
	GetReport, ConfigureNetwork, PortForward, ShareVolume,
}

// Hash is the SHA-256 of the exact policy bytes, which names a policy in
// logs; HOSTDATA is the digest of the initdata document that carries it.
func Hash(policy []byte) [32]byte { return sha256.Sum256(policy) }

// HashHex is Hash in lower-case hex.
func HashHex(policy []byte) string {
	h := Hash(policy)
	return hex.EncodeToString(h[:])
}

// DataVersion is the version of the Data schema the embedded rules read.
const DataVersion = 1

// Data is the generated part of a policy, written into the module as
// `policy_data := <Data as JSON>`. Container entries are keyed by the
// container's name, so a rule finds its entry by index instead of searching.
type Data struct {
	Version    int                  `json:"version"`
	Pod        Pod                  `json:"pod"`
	Containers map[string]Container `json:"containers"`
	// Requests allows or denies the requests that carry nothing to check
	// beyond the container they name (Pause, Update, Stats, ...), by Kind.
	// A kind missing here is denied.
	Requests map[Kind]bool `json:"requests"`
	// Network decides ConfigureNetwork: what the host may configure of the
	// pod VM's network. Left out (the zero value), every ConfigureNetwork is
	// denied.
	Network Network `json:"network,omitzero"`
	// PortForward decides PortForward: the ports the host may connect to.
	// Left out, every PortForward is denied.
	PortForward Forwarding `json:"port_forward,omitzero"`
}

// Forwarding is what the host may reach of the pod through the agent's
// forward port. Unlike the pod's network, which the host reaches anyway,
// it connects to the pod's loopback, where services listen that expect
// only the pod's own containers as clients; so only named ports are open.
type Forwarding struct {
	// Ports are the TCP ports (1..65535) on the pod's loopback the host
	// may connect to; none denies every PortForward.
	Ports []int `json:"ports"`
}

// Network is what the host may configure of the pod VM's network. The host
// runs CNI and picks the addresses, so the policy cannot pin them; it keeps
// the host from configuring what would reach or subvert traffic that stays
// inside the VM (loopback, the unspecified address, multicast) and from
// renaming or reconfiguring lo.
type Network struct {
	// Allow allows ConfigureNetwork at all; false denies every request.
	Allow bool `json:"allow"`
	// InterfacePattern is an RE2 pattern, anchored at both ends, that every
	// interface name must match; "lo" is denied whatever it says.
	InterfacePattern string `json:"interface_pattern"`
	// MaxInterfaces is the most interfaces one request may configure.
	MaxInterfaces int `json:"max_interfaces"`
	// MTUMin and MTUMax bound every interface's MTU (inclusive).
	MTUMin int `json:"mtu_min"`
	MTUMax int `json:"mtu_max"`
	// ForbiddenPrefixes are CIDR prefixes no interface address, route
	// destination, gateway or neighbour may lie inside. A route destination
	// is forbidden only when it lies wholly inside one: a default route
	// (0.0.0.0/0, ::/0) is not inside 0.0.0.0/32. Required (may be empty)
	// when Allow is set, so that a policy that forgot the list does not
	// silently forbid nothing.
	ForbiddenPrefixes []string `json:"forbidden_prefixes"`
}

// Pod is what the policy allows of the pod as a whole.
type Pod struct {
	// Namespace the pod must run in; empty allows any. Checked on every
	// CreateContainer (the io.kubernetes.cri.sandbox-namespace annotation):
	// CreateSandbox carries no namespace.
	Namespace string `json:"namespace,omitempty"`
	// HostnamePattern is an RE2 pattern, anchored at both ends, that the
	// sandbox hostname must match.
	HostnamePattern string `json:"hostname_pattern"`
	HostNetwork     bool   `json:"host_network"`
	HostPID         bool   `json:"host_pid"`
	HostIPC         bool   `json:"host_ipc"`
	// ShareProcessNamespace: the pod's containers share one PID namespace
	// (CRI NamespaceMode POD); without it a container that asks to join
	// the sandbox's is denied.
	ShareProcessNamespace bool `json:"share_process_namespace,omitempty"`
	// Sysctls are the pod's sysctls (securityContext.sysctls): a container
	// spec may set only these, each to exactly this value.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// InitContainers are the pod's init containers in the YAML's order,
	// which the kubelet runs one after another, each to completion (exit
	// 0) before the next, and all before the app containers; a sidecar
	// (restartPolicy: Always) need only have been created. An init
	// container other than a sidecar is not created again once an app
	// container has been.
	InitContainers []InitContainer `json:"init_containers,omitempty"`
	// Volumes are the kubelet-managed volumes the host may share with the
	// VM (ShareVolume); a container mounts one where its mounts allow.
	Volumes []Volume `json:"volumes,omitempty"`
}

// Volume is a kubelet-managed volume the host may put into the VM.
type Volume struct {
	// Kind is the kubelet's plugin: configmap, secret, projected or
	// downward-api.
	Kind string `json:"kind"`
	// NamePattern is an RE2 pattern, anchored at both ends, for the
	// volume's name in the pod (a name, quoted, or the service-account
	// token's kube-api-access-<5 random characters>).
	NamePattern string `json:"name_pattern"`
	// MaxBytes bounds the contents of the volume's files together.
	MaxBytes int64 `json:"max_bytes"`
	// Keys, when set, pins the volume's content: each key (a top-level
	// name of the volume, as the container sees it) and the SHA-256 (hex)
	// of the file it leads to. A share with other keys or content is
	// denied, and the container keeps the last content shared.
	Keys map[string]string `json:"keys,omitempty"`
}

// InitContainer is one init container of the pod.
type InitContainer struct {
	Name    string `json:"name"`
	Sidecar bool   `json:"sidecar"`
}

// Container is what the policy allows for one container of the pod.
type Container struct {
	// Image is the image reference pinned by digest (name@sha256:...).
	Image string `json:"image"`
	// Layers are the dm-verity root hashes (64 lower-case hex) of the
	// image's layers, lowest first: the agent opens each layer only through
	// dm-verity with the hash at its index, and the rules deny a container
	// whose entry pins none. Generated policies always fill it.
	Layers []string `json:"layers"`
	// Args is the exact process argv: the YAML's command and args, or the
	// image's entrypoint and cmd where the YAML leaves them out.
	Args []string `json:"args"`
	// Env holds the NAME=VALUE entries the process environment must contain,
	// as a set (value true) so a rule looks an entry up by index.
	Env map[string]bool `json:"env"`
	// EnvPatterns are RE2 patterns (anchored) for further entries the
	// environment may contain, e.g. values from secrets or the kubelet's
	// service variables. An entry neither in Env nor matching is denied.
	EnvPatterns []string `json:"env_patterns,omitempty"`
	// EnvRequiredNames are names the environment must hold although only
	// a pattern pins their value (HOSTNAME of a pod whose name is a
	// pattern): containerd always sets them.
	EnvRequiredNames []string `json:"env_required_names,omitempty"`
	// Cwd is the working directory.
	Cwd string `json:"cwd"`
	// User is the process's user; nil means the policy does not pin it
	// (the image config was not available and the YAML does not set it).
	User *User `json:"user,omitempty"`
	// Capabilities (CAP_ names) is the exact set the process's bounding set
	// must equal; its effective, permitted, inheritable and ambient sets must
	// be subsets of it. Ignored for a privileged container.
	Capabilities    []string `json:"capabilities"`
	Privileged      bool     `json:"privileged"`
	NoNewPrivileges bool     `json:"no_new_privileges"`
	ReadOnlyRoot    bool     `json:"read_only_root"`
	// Seccomp pins the container's seccomp filter in full; nil means none
	// (Unconfined, or a privileged container), and then a spec carrying a
	// filter is denied: a filter can make setuid or capset fail silently.
	Seccomp *Seccomp `json:"seccomp,omitempty"`
	// Rlimits are the process's resource limits by type (RLIMIT_NOFILE),
	// [soft, hard] with -1 for unlimited; none without an entry (CRI sends
	// none). The spec's must equal them.
	Rlimits map[string][2]int64 `json:"rlimits,omitempty"`
	// OOMScoreAdj bounds the process's oom_score_adj (inclusive): the
	// kubelet derives it from the pod's QoS class and containerd may only
	// raise it. A lower value would make the OOM killer pick the agent.
	OOMScoreAdj [2]int64 `json:"oom_score_adj"`
	// UserNamespace is the uid and gid mapping of a pod with hostUsers:
	// false; nil denies user namespaces and id mappings.
	UserNamespace *UserNamespace `json:"user_namespace,omitempty"`
	// ProcMountUnmasked allows the container to run without the runtime's
	// masked and read-only /proc and /sys paths (procMount: Unmasked).
	// Unprivileged containers otherwise must keep them.
	ProcMountUnmasked bool `json:"proc_mount_unmasked,omitempty"`
	// Mounts are the mounts the pod YAML adds, keyed by destination, beside
	// the runtime's default mounts the rules know.
	Mounts map[string]Mount `json:"mounts"`
	// BlockDevices are the container paths at which it may get raw block
	// volumes (the pod's volumeDevices[].devicePath), sorted; no others.
	BlockDevices []string `json:"block_devices,omitempty"`
	// Exec lists the command lines (exact argv) the host may exec in the
	// container: its probes' and lifecycle hooks' plus what the settings add.
	Exec [][]string `json:"exec"`
	// Stdin allows the host to write the container's stdin (and that of
	// processes exec'd in it); Logs allows it to read stdout and stderr.
	Stdin    bool `json:"stdin"`
	Logs     bool `json:"logs"`
	Terminal bool `json:"terminal"`
}

// Seccomp is a pinned seccomp filter.
type Seccomp struct {
	// Profile says where it comes from: "RuntimeDefault" (containerd's
	// default profile for the container's capabilities) or
	// "Localhost/<path>" (a profile the settings supply).
	Profile string `json:"profile"`
	// SHA256 holds the SeccompHash of each filter the profile may arrive
	// as, each naming who renders it ("containerd-2", "containerd-1.7",
	// or the profile for a Localhost one): a runtime's default profile
	// differs between release lines. The spec's filter must be one of them.
	SHA256 map[string]string `json:"sha256"`
}

// SeccompHash is the lower-case hex SHA-256 of a seccomp filter as
// encoding/json writes the runtime-spec value: the form the agent hands
// runc, so two filters with the same hash are the same filter.
func SeccompHash(sc *specs.LinuxSeccomp) (string, error) {
	b, err := json.Marshal(sc)
	if err != nil {
		return "", fmt.Errorf("encode seccomp filter: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// UserNamespace is the id mapping a container of a pod with hostUsers:
// false must get: the kubelet picks the host range when the pod starts, so
// the policy pins its shape: one range from container id 0 of Size ids,
// starting at a multiple of Size no lower than HostIDMin (never the VM's
// root), the same for uids and gids.
type UserNamespace struct {
	Size      int64 `json:"size"`
	HostIDMin int64 `json:"host_id_min"`
}

// User is a process's identity.
type User struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// AdditionalGIDs are the supplementary groups the process may hold
	// beside GID: the YAML's supplementalGroups and fsGroup and the groups
	// the image's /etc/group gives the user (CRI merges those in). A group
	// outside them is denied, except for UID 0.
	AdditionalGIDs []uint32 `json:"additional_gids,omitempty"`
}

// Mount is an allowed mount of a container.
type Mount struct {
	Type string `json:"type"`
	// SourcePattern is an RE2 pattern (anchored) for the mount source on the
	// host; the host chooses paths, so only their shape is pinned.
	SourcePattern string `json:"source_pattern"`
	ReadOnly      bool   `json:"read_only"`
	// WriteBack lets the host read back what the container wrote to the
	// guest copy of this host file, with the exit of its init process:
	// the kubelet's termination-message file, which it reads on the host.
	// It has no effect in a container whose output the host may not read.
	WriteBack bool `json:"write_back,omitempty"`
	// SubPathPattern and SubPathVolumePattern (RE2, anchored) allow a
	// directory subPath mount: the path inside the volume, and the
	// volume's host directory, the host names for it. Without them a
	// mount with a subPath is denied.
	SubPathPattern       string `json:"sub_path_pattern,omitempty"`
	SubPathVolumePattern string `json:"sub_path_volume_pattern,omitempty"`
	// Memory marks an emptyDir volume of medium Memory: the guest holds it
	// in a tmpfs, and the host must name it so (CreateContainer's
	// memory_volumes); every other emptyDir lives on the pod's encrypted
	// scratch disk, and the host must not name it.
	Memory bool `json:"memory,omitempty"`
}
