package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// CRI drives a containerd instance through crictl, the way a person or
// kubelet's CRI calls would.
type CRI struct {
	Bin      string
	Endpoint string
	// ConfigDir receives the pod and container JSON configs crictl reads.
	ConfigDir string
	// LogDir holds one CRI log directory per pod.
	LogDir string
	// KubeletRoot stands for the kubelet's --root-dir: the files the
	// kubelet gives containers (ContainerConfig.KubeletFiles) live under it.
	KubeletRoot string
	// CgroupParent is the pods' cgroup parent (empty: CRI's default).
	CgroupParent string
	// Timeout is crictl's per-call timeout (default 2m: a pod VM boots
	// in seconds under TCG, longer on a loaded machine).
	Timeout time.Duration
}

// CmdError is a crictl (or ctr) call that failed; Stderr carries the
// message the user would see.
type CmdError struct {
	Tool     string // "ctr"; empty for crictl
	Args     []string
	ExitCode int
	Stdout   string
	Stderr   string
	Err      error
}

// runTool runs cmd to its end and returns its stdout and stderr; a failure
// is a *CmdError for tool called with args (as the caller wrote them).
func runTool(cmd *exec.Cmd, tool string, args []string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		ce := &CmdError{Tool: tool, Args: args, ExitCode: -1, Stdout: out.String(), Stderr: errb.String(), Err: err}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ce.ExitCode = ee.ExitCode()
		}
		return out.String(), errb.String(), ce
	}
	return out.String(), errb.String(), nil
}

func (e *CmdError) Error() string {
	tool := e.Tool
	if tool == "" {
		tool = "crictl"
	}
	return fmt.Sprintf("%s %s: %v: %s", tool, strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

func (e *CmdError) Unwrap() error { return e.Err }

// Run runs crictl with args and returns its stdout and stderr. A non-zero
// exit is a *CmdError.
func (c *CRI) Run(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return c.RunStdin(ctx, nil, args...)
}

// RunStdin is Run with crictl's stdin read from stdin (nil: no input).
func (c *CRI) RunStdin(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	full, err := c.fullArgs(args)
	if err != nil {
		return "", "", err
	}
	cmd := exec.CommandContext(ctx, c.Bin, full...)
	cmd.Stdin = stdin
	return runTool(cmd, "", args)
}

// fullArgs prepends the flags that point crictl at this instance.
func (c *CRI) fullArgs(args []string) ([]string, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	full := append([]string{
		"--runtime-endpoint", c.Endpoint, "--image-endpoint", c.Endpoint,
		"--timeout", timeout.String(),
		// No /etc/crictl.yaml: flags alone configure this client.
		"--config", filepath.Join(c.ConfigDir, "crictl.yaml"),
	}, args...)
	if err := os.MkdirAll(c.ConfigDir, 0o755); err != nil {
		return nil, fmt.Errorf("create crictl config dir: %w", err)
	}
	// crictl insists on reading a config file; an empty one keeps the
	// flags authoritative.
	if cfg := filepath.Join(c.ConfigDir, "crictl.yaml"); !exists(cfg) {
		if err := os.WriteFile(cfg, nil, 0o644); err != nil {
			return nil, fmt.Errorf("write crictl config: %w", err)
		}
	}
	return full, nil
}

// Ready tells whether CRI reports its runtime and network ready.
func (c *CRI) Ready(ctx context.Context) (bool, error) {
	out, _, err := c.Run(ctx, "info", "-o", "json")
	if err != nil {
		return false, err
	}
	var info struct {
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status bool   `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return false, fmt.Errorf("parse crictl info: %w", err)
	}
	ready := 0
	for _, cond := range info.Status.Conditions {
		if (cond.Type == "RuntimeReady" || cond.Type == "NetworkReady") && cond.Status {
			ready++
		}
	}
	return ready == 2, nil
}

// PodConfig is what a pod is created with.
type PodConfig struct {
	Name      string
	Namespace string // default "default"
	// Handler is the runtime handler (runc, contrast-cc, ...).
	Handler     string
	Annotations map[string]string
	Labels      map[string]string
	// Resources are the pod's resources (linux.resources: what kubelet
	// sets to the sum of its containers' limits); CRI passes them to the
	// runtime as io.kubernetes.cri.sandbox-* annotations.
	Resources *Resources
	// HostPID puts the pod's containers in the PID namespace of the node
	// (CRI NamespaceMode NODE); for a pod VM, the node is the VM.
	HostPID bool
	// HostNetwork puts the pod in the node's network namespace.
	HostNetwork bool
	// HostIPC puts the pod in the node's IPC namespace.
	HostIPC bool
	// DNS is the pod's DNS config, which CRI writes into the pod's
	// resolv.conf; nil takes the node's.
	DNS *DNSConfig
	// Sysctls are the pod's (linux.sysctls), as the kubelet sends a pod's
	// securityContext.sysctls.
	Sysctls map[string]string
	// Privileged lets the pod have privileged containers (the kubelet sets
	// it when one of them is; CRI refuses a privileged container otherwise).
	Privileged bool
}

// securityContext is the pod's linux.security_context (CRI JSON): its
// namespace modes and whether it may have privileged containers.
func (pc PodConfig) securityContext() map[string]any {
	nsOptions := map[string]any{}
	if pc.HostPID {
		nsOptions["pid"] = namespaceModeNode
	}
	if pc.HostIPC {
		nsOptions["ipc"] = namespaceModeNode
	}
	if pc.HostNetwork {
		nsOptions["network"] = namespaceModeNode
	}
	sc := map[string]any{}
	if len(nsOptions) > 0 {
		sc["namespace_options"] = nsOptions
	}
	if pc.Privileged {
		sc["privileged"] = true
	}
	return sc
}

// DNSConfig is CRI's DNSConfig.
type DNSConfig struct {
	Servers, Searches, Options []string
}

// CRI's NamespaceModes.
const (
	namespaceModePod       = 0
	namespaceModeContainer = 1
	namespaceModeNode      = 2
)

// Resources are CRI LinuxContainerResources; zero fields are left out.
type Resources struct {
	CPUPeriod   int64
	CPUQuota    int64
	CPUShares   int64
	MemoryLimit int64 // bytes
}

func (r *Resources) json() map[string]any {
	m := map[string]any{}
	for k, v := range map[string]int64{
		"cpu_period": r.CPUPeriod, "cpu_quota": r.CPUQuota, "cpu_shares": r.CPUShares,
		"memory_limit_in_bytes": r.MemoryLimit,
	} {
		if v != 0 {
			m[k] = v
		}
	}
	return m
}

// Pod is a pod sandbox created through CRI.
type Pod struct {
	ID string
	// UID is the pod's metadata.uid, a UUID as the API server gives it;
	// the kubelet's files for the pod lie under KubeletRoot/pods/<UID>.
	UID        string
	Config     PodConfig
	ConfigFile string
	LogDir     string
	// CgroupParent is the pod's own cgroup (under CRI.CgroupParent), which
	// RunPod creates and RemovePod removes, as kubelet does; CRI reads the
	// pod's usage for `crictl statsp` from it.
	CgroupParent string
}

// RunPod writes the pod's JSON config and runs `crictl runp`.
func (c *CRI) RunPod(ctx context.Context, pc PodConfig) (*Pod, error) {
	if pc.Namespace == "" {
		pc.Namespace = "default"
	}
	suffix, err := randomHex(4)
	if err != nil {
		return nil, err
	}
	uid := pc.Name + "-" + suffix
	podUID, err := randomUUID()
	if err != nil {
		return nil, err
	}
	pod := &Pod{
		UID:        podUID,
		Config:     pc,
		ConfigFile: filepath.Join(c.ConfigDir, "pod-"+uid+".json"),
		LogDir:     filepath.Join(c.LogDir, uid),
	}
	// kubelet creates the log directory, not CRI.
	if err := os.MkdirAll(pod.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("create pod log directory: %w", err)
	}
	cfg := map[string]any{
		"metadata":      map[string]any{"name": pc.Name, "namespace": pc.Namespace, "uid": podUID, "attempt": 0},
		"hostname":      pc.Name,
		"log_directory": pod.LogDir,
		"annotations":   pc.Annotations,
		"labels":        pc.Labels,
	}
	linux := map[string]any{}
	if c.CgroupParent != "" {
		pod.CgroupParent = c.CgroupParent + "/pod-" + uid
		if err := createCgroup(pod.CgroupParent); err != nil {
			return nil, fmt.Errorf("create cgroup of pod %s: %w", pc.Name, err)
		}
		linux["cgroup_parent"] = pod.CgroupParent
	}
	if pc.Resources != nil {
		linux["resources"] = pc.Resources.json()
	}
	if len(pc.Sysctls) > 0 {
		linux["sysctls"] = pc.Sysctls
	}
	if pc.HostNetwork {
		// CRI refuses a hostname for a pod in the node's network
		delete(cfg, "hostname")
	}
	if sc := pc.securityContext(); len(sc) > 0 {
		linux["security_context"] = sc
	}
	cfg["linux"] = linux
	if pc.DNS != nil {
		cfg["dns_config"] = map[string]any{"servers": pc.DNS.Servers, "searches": pc.DNS.Searches, "options": pc.DNS.Options}
	}
	if err := writeJSON(pod.ConfigFile, cfg); err != nil {
		return nil, err
	}
	args := []string{"runp"}
	if pc.Handler != "" {
		args = append(args, "--runtime", pc.Handler)
	}
	out, _, err := c.Run(ctx, append(args, pod.ConfigFile)...)
	if err != nil {
		if pod.CgroupParent != "" {
			if cerr := removeCgroups(pod.CgroupParent); cerr != nil {
				err = errors.Join(err, fmt.Errorf("after the failed runp: %w", cerr))
			}
		}
		return nil, err
	}
	pod.ID = strings.TrimSpace(out)
	if len(pod.ID) != 64 {
		return nil, fmt.Errorf("crictl runp printed %q, want a pod id", out)
	}
	return pod, nil
}

// ContainerConfig is what a container is created with.
type ContainerConfig struct {
	Name    string
	Image   string // default BusyboxImage
	Command []string
	Args    []string
	Env     map[string]string
	// WorkingDir overrides the image's working directory.
	WorkingDir string
	// TTY gives the container a terminal (its stdout and stderr are the
	// terminal, one stream in the log).
	TTY bool
	// Stdin keeps the container's stdin open for `crictl attach -i`;
	// with StdinOnce it is closed when the first attach ends.
	Stdin     bool
	StdinOnce bool
	Resources *Resources
	// HostPID: see PodConfig.HostPID; set both.
	HostPID bool
	// SharePID puts the container in the pod's shared PID namespace, as
	// the kubelet does for a pod with shareProcessNamespace (CRI
	// NamespaceMode POD); without it the container gets its own, as from
	// the kubelet.
	SharePID bool
	// OOMScoreAdj is linux.resources.oom_score_adj, which the kubelet
	// always sends (by QoS class: 1000 for BestEffort); nil sends none,
	// as a bare crictl client does.
	OOMScoreAdj *int64
	// Security is the part of linux.security_context beyond the masked
	// and read-only paths; nil sends none.
	Security *SecurityContext
	// Init marks an init container (PodFromYAML): the kubelet runs it to
	// completion before the next container; CreateContainer does not
	// read it.
	Init bool
	// KubeletFiles gives the container the files the kubelet mounts into
	// every container of a pod in its own network: its /etc/hosts
	// (KubeletRoot/pods/<uid>/etc-hosts) and a termination log
	// (pods/<uid>/containers/<name>/<8 hex>) at /dev/termination-log.
	KubeletFiles bool
	// Devices are the host devices the container gets (the kubelet's
	// raw block volumes, volumeDevices).
	Devices []Device
	// Mounts are more CRI mounts (after the kubelet files), for host
	// directories the test made as the kubelet would (volumes).
	Mounts []CRIMount
}

// Device is a host device at a path in the container (CRI Device).
type Device struct {
	ContainerPath, HostPath string
	// Permissions are the device cgroup's (the kubelet sends "mrw").
	Permissions string
}

// CRIMount is a CRI mount of a host path.
type CRIMount struct {
	HostPath, ContainerPath string
	ReadOnly                bool
}

// SecurityContext is the part of CRI's LinuxContainerSecurityContext the
// tests set, as the kubelet fills it from a pod's and a container's
// securityContext.
type SecurityContext struct {
	RunAsUser, RunAsGroup *int64
	SupplementalGroups    []int64
	ReadOnlyRootfs        bool
	NoNewPrivs            bool
	// CapAdd and CapDrop are capability names as the YAML writes them
	// (NET_BIND_SERVICE, ALL).
	CapAdd, CapDrop []string
	// Privileged is securityContext.privileged: all capabilities and the
	// node's devices, no seccomp, masked or read-only paths (the pod must
	// be Privileged too).
	Privileged bool
	// Seccomp is the profile type: "RuntimeDefault", "Unconfined" (what
	// the kubelet sends without a profile or seccompDefault), or "" to
	// send none.
	Seccomp string
}

// json renders the context into sc (CRI JSON, as crictl reads it).
func (s *SecurityContext) json(sc map[string]any) error {
	if s.RunAsUser != nil {
		sc["run_as_user"] = map[string]any{"value": *s.RunAsUser}
	}
	if s.RunAsGroup != nil {
		sc["run_as_group"] = map[string]any{"value": *s.RunAsGroup}
	}
	if len(s.SupplementalGroups) > 0 {
		sc["supplemental_groups"] = s.SupplementalGroups
	}
	if s.Privileged {
		sc["privileged"] = true
	}
	sc["readonly_rootfs"] = s.ReadOnlyRootfs
	sc["no_new_privs"] = s.NoNewPrivs
	if len(s.CapAdd) > 0 || len(s.CapDrop) > 0 {
		sc["capabilities"] = map[string]any{"add_capabilities": s.CapAdd, "drop_capabilities": s.CapDrop}
	}
	// CRI's SecurityProfile.ProfileType: RuntimeDefault 0, Unconfined 1.
	switch s.Seccomp {
	case "":
	case "RuntimeDefault":
		sc["seccomp"] = map[string]any{"profile_type": 0}
	case "Unconfined":
		sc["seccomp"] = map[string]any{"profile_type": 1}
	default:
		return fmt.Errorf("seccomp profile %q is not emulated", s.Seccomp)
	}
	return nil
}

// kubelet's default masked and read-only paths (k8s.io/kubernetes
// pkg/securitycontext), which it sends for every container with the Default
// procMount.
var (
	kubeletMaskedPaths = []string{
		"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	kubeletReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// Container is a container created through CRI.
type Container struct {
	ID         string
	Pod        *Pod
	Config     ContainerConfig
	ConfigFile string
	LogPath    string
}

// CreateContainer writes the container's JSON config and runs
// `crictl create`.
func (c *CRI) CreateContainer(ctx context.Context, pod *Pod, cc ContainerConfig) (*Container, error) {
	if cc.Image == "" {
		cc.Image = BusyboxImage
	}
	ctr := &Container{
		Pod:        pod,
		Config:     cc,
		ConfigFile: filepath.Join(c.ConfigDir, fmt.Sprintf("ctr-%s-%s.json", pod.ID[:12], cc.Name)),
		LogPath:    filepath.Join(pod.LogDir, cc.Name+".log"),
	}
	var envs []map[string]string
	for k, v := range cc.Env {
		envs = append(envs, map[string]string{"key": k, "value": v})
	}
	cfg := map[string]any{
		"metadata":    map[string]any{"name": cc.Name},
		"image":       map[string]any{"image": cc.Image},
		"command":     cc.Command,
		"args":        cc.Args,
		"envs":        envs,
		"working_dir": cc.WorkingDir,
		"log_path":    cc.Name + ".log",
		"tty":         cc.TTY,
		"stdin":       cc.Stdin,
		"stdin_once":  cc.StdinOnce,
	}
	if len(cc.Devices) > 0 {
		var devices []map[string]string
		for _, d := range cc.Devices {
			devices = append(devices, map[string]string{"container_path": d.ContainerPath, "host_path": d.HostPath, "permissions": d.Permissions})
		}
		cfg["devices"] = devices
	}
	if cc.KubeletFiles {
		mounts, err := c.kubeletFiles(pod, cc.Name)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", cc.Name, err)
		}
		cfg["mounts"] = mounts
	}
	for _, m := range cc.Mounts {
		mounts, _ := cfg["mounts"].([]map[string]any)
		cfg["mounts"] = append(mounts, map[string]any{"container_path": m.ContainerPath, "host_path": m.HostPath, "readonly": m.ReadOnly})
	}
	linux := map[string]any{}
	if cc.Resources != nil || cc.OOMScoreAdj != nil {
		res := map[string]any{}
		if cc.Resources != nil {
			res = cc.Resources.json()
		}
		if cc.OOMScoreAdj != nil {
			res["oom_score_adj"] = *cc.OOMScoreAdj
		}
		linux["resources"] = res
	}
	// kubelet always sends the masked and read-only /proc and /sys paths
	// (procMount Default); CRI leaves them empty when a client does not.
	sc := map[string]any{"masked_paths": kubeletMaskedPaths, "readonly_paths": kubeletReadonlyPaths}
	if cc.Security != nil {
		if err := cc.Security.json(sc); err != nil {
			return nil, fmt.Errorf("container %s: %w", cc.Name, err)
		}
	}
	// The kubelet gives each container a PID namespace of its own
	// (CONTAINER) unless the pod shares one (POD) or the node's (NODE);
	// CRI's default, for a client that says nothing, is POD.
	pidMode := namespaceModeContainer
	switch {
	case cc.HostPID:
		pidMode = namespaceModeNode
	case cc.SharePID:
		pidMode = namespaceModePod
	}
	sc["namespace_options"] = map[string]any{"pid": pidMode}
	linux["security_context"] = sc
	cfg["linux"] = linux
	if err := writeJSON(ctr.ConfigFile, cfg); err != nil {
		return nil, err
	}
	out, _, err := c.Run(ctx, "create", pod.ID, ctr.ConfigFile, pod.ConfigFile)
	if err != nil {
		return nil, err
	}
	ctr.ID = strings.TrimSpace(out)
	if len(ctr.ID) != 64 {
		return nil, fmt.Errorf("crictl create printed %q, want a container id", out)
	}
	return ctr, nil
}

// kubeletFiles writes the files the kubelet mounts into a container
// (pkg/kubelet/kubelet_pods.go makeMounts: etc-hosts, and the termination
// log the kubelet reads back after the container exits) and returns them
// as CRI mounts.
func (c *CRI) kubeletFiles(pod *Pod, container string) ([]map[string]any, error) {
	if c.KubeletRoot == "" {
		return nil, errors.New("kubelet files asked for, but the CRI has no KubeletRoot")
	}
	podDir := filepath.Join(c.KubeletRoot, "pods", pod.UID)
	hostname := pod.Config.Name
	hosts := filepath.Join(podDir, "etc-hosts")
	hostsContent := "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if hostname != "" {
		hostsContent += "127.0.1.1\t" + hostname + "\n"
	}
	id, err := randomHex(4)
	if err != nil {
		return nil, err
	}
	termDir := filepath.Join(podDir, "containers", container)
	term := filepath.Join(termDir, id)
	if err := os.MkdirAll(termDir, 0o750); err != nil {
		return nil, err
	}
	if err := os.WriteFile(hosts, []byte(hostsContent), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(term, nil, 0o666); err != nil {
		return nil, err
	}
	return []map[string]any{
		{"container_path": "/etc/hosts", "host_path": hosts},
		{"container_path": "/dev/termination-log", "host_path": term},
	}, nil
}

// StartContainer runs `crictl start`.
func (c *CRI) StartContainer(ctx context.Context, id string) error {
	_, _, err := c.Run(ctx, "start", id)
	return err
}

// StopContainer runs `crictl stop --timeout`: SIGTERM, then SIGKILL
// after timeout.
func (c *CRI) StopContainer(ctx context.Context, id string, timeout time.Duration) error {
	_, _, err := c.Run(ctx, "stop", "--timeout", fmt.Sprint(int(timeout.Seconds())), id)
	return err
}

// RemoveContainer runs `crictl rm`.
func (c *CRI) RemoveContainer(ctx context.Context, id string) error {
	_, _, err := c.Run(ctx, "rm", id)
	return err
}

// StopPod runs `crictl stopp`.
func (c *CRI) StopPod(ctx context.Context, id string) error {
	_, _, err := c.Run(ctx, "stopp", id)
	return err
}

// RemovePod runs `crictl rmp`.
func (c *CRI) RemovePod(ctx context.Context, id string) error {
	// The pod's cgroup, which RunPod created, goes with it, as kubelet
	// removes it: a process left in it makes that fail.
	var cgroup string
	if out, _, err := c.Run(ctx, "inspectp", "-o", "go-template", "--template", "{{.info.config.linux.cgroup_parent}}", id); err == nil {
		cgroup = strings.TrimSpace(out)
	}
	if _, _, err := c.Run(ctx, "rmp", id); err != nil {
		return err
	}
	if c.CgroupParent != "" && strings.HasPrefix(cgroup, c.CgroupParent+"/pod-") {
		if err := removeCgroups(cgroup); err != nil {
			return fmt.Errorf("pod %s removed, but not its cgroup: %w", id, err)
		}
	}
	return nil
}

// PodIDs lists the ids of all pods (`crictl pods -q`).
func (c *CRI) PodIDs(ctx context.Context) ([]string, error) {
	out, _, err := c.Run(ctx, "pods", "-q")
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// ContainerIDs lists the ids of all containers, running or not.
func (c *CRI) ContainerIDs(ctx context.Context) ([]string, error) {
	out, _, err := c.Run(ctx, "ps", "-a", "-q")
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// Logs returns what `crictl logs` prints: the container's stdout and
// stderr.
func (c *CRI) Logs(ctx context.Context, id string) (stdout, stderr string, err error) {
	return c.Run(ctx, "logs", id)
}

// ExecResult is the outcome of `crictl exec`.
type ExecResult struct {
	Stdout, Stderr string
	ExitCode       int
}

// crictl reports a command's non-zero exit in an error message and
// itself exits 1: streaming exec says "command terminated with exit code
// N", --sync says "command '...' exited with N: <stderr>".
var (
	streamExitRe = regexp.MustCompile(`command terminated with exit code (\d+)`)
	syncExitRe   = regexp.MustCompile(`command '.*' exited with (\d+):`)
)

// Exec runs cmd in the container with `crictl exec` (streaming through
// CRI's stream server) or, with sync, `crictl exec --sync` (ExecSync,
// which prints stdout and stderr both to stdout, and nothing of stdout
// when the command fails). A non-zero exit of cmd is not an error; a
// failure to run it is.
func (c *CRI) Exec(ctx context.Context, id string, sync bool, cmd ...string) (ExecResult, error) {
	args := []string{"exec"}
	re := streamExitRe
	if sync {
		args = append(args, "--sync")
		re = syncExitRe
	}
	args = append(append(args, id), cmd...)
	out, errOut, err := c.Run(ctx, args...)
	res := ExecResult{Stdout: out, Stderr: errOut}
	var ce *CmdError
	if errors.As(err, &ce) {
		if m := re.FindStringSubmatch(errOut); m != nil {
			res.ExitCode, _ = strconv.Atoi(m[1])
			return res, nil
		}
	}
	return res, err
}

// ContainerStatus is the part of `crictl inspect` the tests read.
type ContainerStatus struct {
	ID       string
	State    string // CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED
	ExitCode int
	Reason   string
	Message  string
	PID      int // host pid of the init process as CRI reports it (0 if unknown)
	Raw      json.RawMessage
}

// InspectContainer runs `crictl inspect`.
func (c *CRI) InspectContainer(ctx context.Context, id string) (ContainerStatus, error) {
	out, _, err := c.Run(ctx, "inspect", "-o", "json", id)
	if err != nil {
		return ContainerStatus{}, err
	}
	var v struct {
		Status struct {
			ID       string `json:"id"`
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
			Reason   string `json:"reason"`
			Message  string `json:"message"`
		} `json:"status"`
		Info struct {
			PID int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return ContainerStatus{}, fmt.Errorf("parse crictl inspect %s: %w", id, err)
	}
	return ContainerStatus{
		ID: v.Status.ID, State: v.Status.State, ExitCode: v.Status.ExitCode,
		Reason: v.Status.Reason, Message: v.Status.Message, PID: v.Info.PID, Raw: json.RawMessage(out),
	}, nil
}

// PodStatus is the part of `crictl inspectp` the tests read.
type PodStatus struct {
	ID             string
	State          string // SANDBOX_READY, SANDBOX_NOTREADY
	RuntimeHandler string
	// IP is the pod's address CNI gave it ("" without one).
	IP string
	// NetNS is the path of the sandbox's network namespace ("" in the node's).
	NetNS string
	Raw   json.RawMessage
}

// InspectPod runs `crictl inspectp`.
func (c *CRI) InspectPod(ctx context.Context, id string) (PodStatus, error) {
	out, _, err := c.Run(ctx, "inspectp", "-o", "json", id)
	if err != nil {
		return PodStatus{}, err
	}
	var v struct {
		Status struct {
			ID             string `json:"id"`
			State          string `json:"state"`
			RuntimeHandler string `json:"runtimeHandler"`
			Network        struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return PodStatus{}, fmt.Errorf("parse crictl inspectp %s: %w", id, err)
	}
	st := PodStatus{
		ID: v.Status.ID, State: v.Status.State, RuntimeHandler: v.Status.RuntimeHandler,
		IP: v.Status.Network.IP, Raw: json.RawMessage(out),
	}
	for _, ns := range v.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			st.NetNS = ns.Path
		}
	}
	return st, nil
}

// WaitContainerState polls `crictl inspect` until the container is in
// state or timeout passes.
func (c *CRI) WaitContainerState(ctx context.Context, id, state string, timeout time.Duration) (ContainerStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.InspectContainer(ctx, id)
		if err != nil {
			return st, err
		}
		if st.State == state {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("container %s is %s after %s, want %s", id[:12], st.State, timeout, state)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// randomUUID returns a random (version 4) UUID.
func randomUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
