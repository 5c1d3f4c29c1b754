package enforce

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"

	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// The CRI annotations the rules read from a container's spec.
const (
	AnnotationContainerName    = "io.kubernetes.cri.container-name"
	AnnotationContainerType    = "io.kubernetes.cri.container-type"
	AnnotationImageName        = "io.kubernetes.cri.image-name"
	AnnotationSandboxName      = "io.kubernetes.cri.sandbox-name"
	AnnotationSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
)

// Input builds the document a rule sees as `input` from an agent request.
// containerName maps a container id to the name its CreateContainer was
// allowed under; it serves the requests that carry only an id.
//
// The document holds only JSON types (maps, slices, strings, bools,
// int64), so OPA converts it without a JSON round trip. Every document has
//
//	kind             string  the request kind
//	container_id     string  "" for CreateSandbox, WaitOOM, GetReport, ConfigureNetwork and PortForward
//	exec_id          string  the process of a request on processes ("" is the container's init)
//	container_name   string  CreateContainer: the CRI container-name annotation;
//	                         others: the name remembered for container_id, "" if none
//	container_known  bool    CreateContainer: true; others: container_id has a remembered name
//
// and by kind:
//
//	CreateSandbox    sandbox_id, hostname, sysctls {name: value} (the pod's, set in the VM)
//	CreateContainer  container_type, image, sandbox_name, sandbox_namespace (CRI annotations),
//	                 annotations (all of them), process (below), read_only_root,
//	                 mounts [{destination, type, source, read_only, nosuid, nodev, noexec,
//	                 flags (the set of those three that hold), propagation, data,
//	                 data_set (data as a set), runtime, runtime_why}],
//	                 mount_destinations (a set; a destination given twice is
//	                 refused), mounts_beyond_runtime (the mounts whose runtime
//	                 is not "ok": see judgeRuntimeMount),
//	                 namespaces {type: path} (a key per namespace the container gets),
//	                 masked_paths, readonly_paths (sets), devices [path],
//	                 device_rules [{allow, type, major, minor, access}],
//	                 sysctls {name: value}, seccomp {default_action} ("" without a filter),
//	                 stdio {stdin, stdout, stderr, terminal},
//	                 layers [{digest, root_hash}] (the image's layers, lowest first),
//	                 layer_root_hashes (their root hashes, in that order),
//	                 unverified_rootfs (the host offered a rootfs and no layers),
//	                 device_entries [{path, type, major, minor}] (linux.devices in full),
//	                 block_volumes (the set of the container paths of the raw block
//	                 volumes the request attaches);
//	                 a mount with a directory subPath carries sub_path {volume, path};
//	                 memory_volumes {name: size in bytes} (the emptyDir volumes the
//	                 host says are of medium Memory; Input refuses a name that no
//	                 bind mount's source names as an emptyDir, and size 0)
//	ExecProcess      process, stdio
//	SignalProcess    signal, all
//	ResizePty        width, height
//	UpdateContainer  resources (the OCI LinuxResources as an object)
//	GetReport        report_data (the nonce, lower-case hex)
//	ConfigureNetwork interfaces [{name, mac, mtu, addresses [cidr]}],
//	                 routes [{destination, gateway, source, device, link_scope}],
//	                 neighbors [{ip, mac, device}]
//	PortForward      port (1..65535)
//	ShareVolume      volume_kind, volume_name, total_bytes, files [{path, type, mode, uid, gid, size}],
//	                 keys {top-level name: SHA-256 (hex) of the regular file it leads to}
//	                 (Input refuses a tree api/agent.CheckVolumeTree refuses: other
//	                 types than files, directories and symlinks, links that leave the volume)
//
// where process is {args, env, cwd, user {uid, gid, additional_gids},
// capabilities {bounding, effective, permitted, inheritable, ambient},
// capabilities_beyond_bounding [[set, [CAP_...]]] (the capabilities of
// each other set outside the bounding set, sorted),
// no_new_privileges, terminal}. A set is an object whose keys are the
// members (values true): env is the set of NAME=VALUE entries, each
// capability set one of CAP_ names, so rules index them and compare them
// with set operations (object.keys) rather than iterate.
// Network values are canonical, so rules compare them as strings: a MAC is
// six lower-case colon-separated octets; an address is an IP in Go's
// netip form (lower-case, IPv6 compressed), gateway and source "" when
// unset; an interface address keeps its host bits (10.88.0.5/16); a route
// destination has none. Input refuses unparseable values, IPv4-mapped IPv6
// and zoned addresses, and an interface name or MAC given twice.
// Paths (mount destinations, masked and read-only paths) are cleaned
// absolute paths; a mount's type is "bind" whenever its options bind, and
// read_only says whether the mount ends up read-only (ro, rro; rw undoes).
//
// The Gate adds what it remembers: pod_state {created, completed} (sets of
// container names) to CreateContainer, and container_env (the env set the
// container was created with) to ExecProcess.
//
// Input decodes the OCI JSON as the agent does (encoding/json into the
// runtime-spec types, nothing after the value) and refuses what runc would
// misread or what the rules could not judge, naming the field.
func Input(kind policy.Kind, req proto.Message, containerName func(id string) (string, bool)) (map[string]any, error) {
	in := map[string]any{
		"kind":            string(kind),
		"container_id":    "",
		"exec_id":         "",
		"container_name":  "",
		"container_known": false,
	}
	named := func(id string) {
		in["container_id"] = id
		if containerName == nil {
			return
		}
		if name, ok := containerName(id); ok {
			in["container_name"] = name
			in["container_known"] = true
		}
	}
	wrongType := func() error {
		return fmt.Errorf("%s: request of type %T", kind, req)
	}
	switch kind {
	case policy.CreateSandbox:
		r, ok := req.(*agentapi.CreateSandboxRequest)
		if !ok {
			return nil, wrongType()
		}
		in["sandbox_id"] = r.GetSandboxId()
		in["hostname"] = r.GetHostname()
		sysctls := make(map[string]any, len(r.GetSysctls()))
		for k, v := range r.GetSysctls() {
			if err := agentapi.CheckSysctlName(k); err != nil {
				return nil, fmt.Errorf("%s: %w", kind, err)
			}
			sysctls[k] = v
		}
		in["sysctls"] = sysctls
	case policy.CreateContainer:
		r, ok := req.(*agentapi.CreateContainerRequest)
		if !ok {
			return nil, wrongType()
		}
		in["container_id"] = r.GetContainerId()
		if err := containerInput(in, r.GetSpec()); err != nil {
			return nil, fmt.Errorf("%s %s: spec: %w", kind, r.GetContainerId(), err)
		}
		if err := subPathsInput(in, r.GetSubPaths()); err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, r.GetContainerId(), err)
		}
		in["stdio"] = stdioInput(r.GetStdio())
		layers, err := layersInput(r.GetLayers())
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, r.GetContainerId(), err)
		}
		in["layers"] = layers
		hashes := make([]any, len(layers))
		for i, l := range layers {
			hashes[i] = l.(map[string]any)["root_hash"]
		}
		in["layer_root_hashes"] = hashes
		in["unverified_rootfs"] = r.GetRootfs() != nil && len(layers) == 0
		volumes, err := blockVolumesInput(r.GetBlockVolumes())
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, r.GetContainerId(), err)
		}
		in["block_volumes"] = volumes
		memory, err := memoryVolumesInput(r.GetMemoryVolumes(), in["mounts"])
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, r.GetContainerId(), err)
		}
		in["memory_volumes"] = memory
	case policy.ExecProcess:
		r, ok := req.(*agentapi.ExecProcessRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
		in["exec_id"] = r.GetExecId()
		var p specs.Process
		if err := decodeJSON(r.GetProcess(), &p); err != nil {
			return nil, fmt.Errorf("%s %s/%s: process: %w", kind, r.GetContainerId(), r.GetExecId(), err)
		}
		proc, err := processInput(&p)
		if err != nil {
			return nil, fmt.Errorf("%s %s/%s: process.%w", kind, r.GetContainerId(), r.GetExecId(), err)
		}
		in["process"] = proc
		in["stdio"] = stdioInput(r.GetStdio())
	case policy.StartContainer, policy.ListProcesses, policy.PauseContainer, policy.ResumeContainer, policy.StatsContainer:
		r, ok := req.(*agentapi.ContainerRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
	case policy.WaitProcess, policy.CloseStdin:
		r, ok := req.(*agentapi.ProcessRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
		in["exec_id"] = r.GetExecId()
	case policy.SignalProcess:
		r, ok := req.(*agentapi.SignalProcessRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
		in["exec_id"] = r.GetExecId()
		in["signal"] = int64(r.GetSignal())
		in["all"] = r.GetAll()
	case policy.RemoveContainer:
		r, ok := req.(*agentapi.RemoveContainerRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
	case policy.ResizePty:
		r, ok := req.(*agentapi.ResizePtyRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
		in["exec_id"] = r.GetExecId()
		in["width"] = int64(r.GetWidth())
		in["height"] = int64(r.GetHeight())
	case policy.UpdateContainer:
		r, ok := req.(*agentapi.UpdateContainerRequest)
		if !ok {
			return nil, wrongType()
		}
		named(r.GetContainerId())
		res, err := resourcesInput(r.GetResources())
		if err != nil {
			return nil, fmt.Errorf("%s %s: resources: %w", kind, r.GetContainerId(), err)
		}
		in["resources"] = res
	case policy.WaitOOM:
		if _, ok := req.(*agentapi.Empty); !ok {
			return nil, wrongType()
		}
	case policy.GetReport:
		r, ok := req.(*agentapi.GetReportRequest)
		if !ok {
			return nil, wrongType()
		}
		in["report_data"] = hex.EncodeToString(r.GetReportData())
	case policy.ConfigureNetwork:
		r, ok := req.(*agentapi.ConfigureNetworkRequest)
		if !ok {
			return nil, wrongType()
		}
		if err := networkInput(in, r); err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
	case policy.ShareVolume:
		r, ok := req.(*agentapi.ShareVolumeRequest)
		if !ok {
			return nil, wrongType()
		}
		if err := volumeInput(in, r); err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
	case policy.PortForward:
		r, ok := req.(*agentapi.PortForwardRequest)
		if !ok {
			return nil, wrongType()
		}
		if r.GetPort() == 0 || r.GetPort() > 65535 {
			return nil, fmt.Errorf("%s: port %d is not a TCP port (1..65535)", kind, r.GetPort())
		}
		in["port"] = int64(r.GetPort())
	default:
		return nil, fmt.Errorf("unknown request kind %q", kind)
	}
	return in, nil
}

// blockVolumesInput returns the container paths of the raw block volumes
// as a set, refusing a path given twice or not clean and absolute. The
// serials are not the rules' business: the host attaches every disk, so a
// volume on any of them holds nothing the host does not have.
func blockVolumesInput(volumes []*agentapi.BlockVolume) (map[string]any, error) {
	out := make(map[string]any, len(volumes))
	for i, v := range volumes {
		p := v.GetContainerPath()
		if !path.IsAbs(p) || path.Clean(p) != p {
			return nil, fmt.Errorf("block_volumes[%d].container_path %q: not a clean absolute path", i, p)
		}
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("block_volumes[%d].container_path %q: given twice", i, p)
		}
		out[p] = true
	}
	return out, nil
}

// memoryVolumesInput returns the Memory emptyDir volumes by name with their
// sizes. Each must be an emptyDir the spec's bind mounts name (their sources
// are what the rules judge), once, with a size: the guest then holds it in a
// tmpfs of at most that size instead of on the encrypted scratch disk.
func memoryVolumesInput(vols []*agentapi.MemoryVolume, mounts any) (map[string]any, error) {
	emptyDirs := map[string]bool{}
	ms, _ := mounts.([]any)
	for _, m := range ms {
		mm, _ := m.(map[string]any)
		if mm["type"] != "bind" {
			continue
		}
		src, _ := mm["source"].(string)
		if name, ok, _ := agentapi.EmptyDirName(src); ok {
			emptyDirs[name] = true
		}
	}
	out := make(map[string]any, len(vols))
	for i, v := range vols {
		name := v.GetName()
		switch {
		case !emptyDirs[name]:
			return nil, fmt.Errorf("memory_volumes[%d]: %q is no emptyDir volume the spec mounts", i, name)
		case out[name] != nil:
			return nil, fmt.Errorf("memory_volumes[%d]: %q given twice", i, name)
		case v.GetSizeBytes() == 0 || v.GetSizeBytes() > math.MaxInt64:
			return nil, fmt.Errorf("memory_volumes[%d]: %q has size %d", i, name, v.GetSizeBytes())
		}
		out[name] = int64(v.GetSizeBytes())
	}
	return out, nil
}

// layersInput returns the layers' digests and root hashes, refusing a value
// the rules would compare as a string in a form the generator never writes.
func layersInput(layers []*agentapi.Layer) ([]any, error) {
	out := make([]any, 0, len(layers))
	for i, l := range layers {
		digest, ok := strings.CutPrefix(l.GetDigest(), "sha256:")
		if !ok || !isLowerHex(digest, 64) {
			return nil, fmt.Errorf("layers[%d].digest %q: not sha256:<64 lower-case hex>", i, l.GetDigest())
		}
		if !isLowerHex(l.GetRootHash(), 64) {
			return nil, fmt.Errorf("layers[%d].root_hash %q: not 64 lower-case hex", i, l.GetRootHash())
		}
		out = append(out, map[string]any{"digest": l.GetDigest(), "root_hash": l.GetRootHash()})
	}
	return out, nil
}

// isLowerHex reports whether s is n lower-case hex digits.
func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// decodeJSON decodes one JSON value and refuses anything after it, as the
// agent's spec rewrite does, so both read the same spec.
func decodeJSON(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	// A field the runtime-spec types lack would be dropped silently; the
	// request is refused instead, naming it.
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// runcAnnotationPrefixes are annotations runc (and the systemd cgroup
// driver) read as settings; only the CRI's own annotations reach a rule.
var runcAnnotationPrefixes = []string{"org.systemd.property.", "org.criu.", "org.opencontainers.runc.", "run.oci."}

func containerInput(in map[string]any, raw []byte) error {
	var s specs.Spec
	if err := decodeJSON(raw, &s); err != nil {
		return err
	}
	if err := checkFields(&s, specFields, ""); err != nil {
		return err
	}
	if s.Process == nil {
		return errors.New("process: missing")
	}
	proc, err := processInput(s.Process)
	if err != nil {
		return fmt.Errorf("process.%w", err)
	}
	in["process"] = proc

	annotations := make(map[string]any, len(s.Annotations))
	for k, v := range s.Annotations {
		for _, p := range runcAnnotationPrefixes {
			if strings.HasPrefix(k, p) {
				return fmt.Errorf("annotations[%q]: runc reads annotations beginning %q as settings", k, p)
			}
		}
		annotations[k] = v
	}
	in["annotations"] = annotations
	in["container_name"] = s.Annotations[AnnotationContainerName]
	in["container_known"] = true
	in["container_type"] = s.Annotations[AnnotationContainerType]
	in["image"] = s.Annotations[AnnotationImageName]
	in["sandbox_name"] = s.Annotations[AnnotationSandboxName]
	in["sandbox_namespace"] = s.Annotations[AnnotationSandboxNamespace]
	in["read_only_root"] = s.Root != nil && s.Root.Readonly

	mounts := make([]any, 0, len(s.Mounts))
	destinations := make(map[string]any, len(s.Mounts))
	first := make(map[string]int, len(s.Mounts))
	beyond := []any{}
	for i, m := range s.Mounts {
		mi, err := mountInput(m)
		if err != nil {
			return fmt.Errorf("mounts[%d].%w", i, err)
		}
		// runc mounts over the earlier mount: what a rule judged at the
		// destination would not be what the container sees. No runtime
		// sends two.
		if j, dup := first[m.Destination]; dup {
			return fmt.Errorf("mounts[%d].destination: %q again (first mounts[%d]): two mounts at one destination", i, m.Destination, j)
		}
		first[m.Destination] = i
		destinations[m.Destination] = true
		mi["runtime"], mi["runtime_why"] = judgeRuntimeMount(mi, s.Root != nil && s.Root.Readonly)
		if mi["runtime"] != runtimeOK {
			beyond = append(beyond, mi)
		}
		mounts = append(mounts, mi)
	}
	in["mounts"] = mounts
	in["mount_destinations"] = destinations
	in["mounts_beyond_runtime"] = beyond

	l := s.Linux
	if l == nil {
		l = &specs.Linux{}
	}
	in["uid_mappings"] = idMappings(l.UIDMappings)
	in["gid_mappings"] = idMappings(l.GIDMappings)
	namespaces := make(map[string]any, len(l.Namespaces))
	for i, ns := range l.Namespaces {
		if ns.Type == "" {
			return fmt.Errorf("linux.namespaces[%d]: no type", i)
		}
		if _, dup := namespaces[string(ns.Type)]; dup {
			return fmt.Errorf("linux.namespaces[%d]: a second %s namespace", i, ns.Type)
		}
		namespaces[string(ns.Type)] = ns.Path
	}
	in["namespaces"] = namespaces

	masked, err := cleanPaths("linux.maskedPaths", l.MaskedPaths)
	if err != nil {
		return err
	}
	readonly, err := cleanPaths("linux.readonlyPaths", l.ReadonlyPaths)
	if err != nil {
		return err
	}
	in["masked_paths"], in["readonly_paths"] = masked, readonly
	in["rootfs_propagation"] = l.RootfsPropagation

	devices := make([]string, 0, len(l.Devices))
	entries := make([]any, 0, len(l.Devices))
	for _, d := range l.Devices {
		devices = append(devices, d.Path)
		entries = append(entries, map[string]any{"path": d.Path, "type": d.Type, "major": d.Major, "minor": d.Minor})
	}
	in["devices"] = devices
	in["device_entries"] = entries
	var rules []any
	if l.Resources != nil {
		for _, r := range l.Resources.Devices {
			rule := map[string]any{"allow": r.Allow, "type": r.Type, "access": r.Access, "major": nil, "minor": nil}
			if r.Major != nil {
				rule["major"] = *r.Major
			}
			if r.Minor != nil {
				rule["minor"] = *r.Minor
			}
			rules = append(rules, rule)
		}
	}
	if rules == nil {
		rules = []any{}
	}
	in["device_rules"] = rules

	sysctls := make(map[string]any, len(l.Sysctl))
	for k, v := range l.Sysctl {
		sysctls[k] = v
	}
	in["sysctls"] = sysctls

	seccomp, err := seccompInput(l.Seccomp)
	if err != nil {
		return fmt.Errorf("linux.seccomp: %w", err)
	}
	in["seccomp"] = seccomp
	return nil
}

// seccompInput is what rules see of a seccomp filter: null without one,
// else its default action and the SHA-256 of the whole filter as the agent
// hands it to runc (encoding/json of the decoded value), which a policy
// pins (policy.SeccompHash computes the same).
func seccompInput(sc *specs.LinuxSeccomp) (any, error) {
	if sc == nil {
		return nil, nil
	}
	if sc.DefaultAction == "" {
		return nil, errors.New("defaultAction: missing")
	}
	sum, err := policy.SeccompHash(sc)
	if err != nil {
		return nil, err
	}
	return map[string]any{"default_action": string(sc.DefaultAction), "sha256": sum, "syscall_rules": int64(len(sc.Syscalls))}, nil
}

func idMappings(ms []specs.LinuxIDMapping) []any {
	out := make([]any, 0, len(ms))
	for _, m := range ms {
		out = append(out, []any{int64(m.ContainerID), int64(m.HostID), int64(m.Size)})
	}
	return out
}

// processInput returns the process part of the input; its errors name the
// field below process. The fields processFields does not judge must be
// absent.
func processInput(p *specs.Process) (map[string]any, error) {
	if err := checkFields(p, processFields, ""); err != nil {
		return nil, err
	}
	if len(p.Args) == 0 {
		return nil, errors.New("args: empty")
	}
	// runc sets the entries in order (setenv): the last value of a name is
	// the one the process sees. Rules judge that effective environment.
	effective := make(map[string]string, len(p.Env))
	for i, e := range p.Env {
		name, value, ok := strings.Cut(e, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("env[%d]: %q is not NAME=VALUE", i, e)
		}
		if strings.IndexByte(e, 0) >= 0 {
			return nil, fmt.Errorf("env[%d]: %q holds a NUL byte", i, name)
		}
		effective[name] = value
	}
	env := make(map[string]any, len(effective))
	names := make(map[string]any, len(effective))
	for name, value := range effective {
		env[name+"="+value] = true
		names[name] = true
	}
	gids := make([]any, 0, len(p.User.AdditionalGids))
	for _, g := range p.User.AdditionalGids {
		gids = append(gids, int64(g))
	}
	// runc changes no capability of a process whose spec names none: it
	// would keep every capability of the agent's root.
	if p.Capabilities == nil {
		return nil, errors.New("capabilities: missing; runc would leave the process every capability of the VM's root")
	}
	c := *p.Capabilities
	caps := map[string]any{
		"bounding":    setOf(c.Bounding),
		"effective":   setOf(c.Effective),
		"permitted":   setOf(c.Permitted),
		"inheritable": setOf(c.Inheritable),
		"ambient":     setOf(c.Ambient),
	}
	// [set, [capabilities]] for each set but bounding that holds
	// capabilities outside the bounding set: whatever the policy, the
	// bounding set must hold every capability a process has.
	beyondBounding := []any{}
	for _, set := range []struct {
		name string
		caps []string
	}{{"effective", c.Effective}, {"permitted", c.Permitted}, {"inheritable", c.Inheritable}, {"ambient", c.Ambient}} {
		var extra []string
		for _, x := range set.caps {
			if !slices.Contains(c.Bounding, x) && !slices.Contains(extra, x) {
				extra = append(extra, x)
			}
		}
		if len(extra) > 0 {
			slices.Sort(extra)
			list := make([]any, len(extra))
			for i, x := range extra {
				list[i] = x
			}
			beyondBounding = append(beyondBounding, []any{set.name, list})
		}
	}
	// runc sets the limits in order: the last of a type holds.
	rlimits := make(map[string]any, len(p.Rlimits))
	for _, r := range p.Rlimits {
		rlimits[r.Type] = []any{int64FromU(r.Soft), int64FromU(r.Hard)}
	}
	var oom any
	if p.OOMScoreAdj != nil {
		oom = int64(*p.OOMScoreAdj)
	}
	return map[string]any{
		"args":      slices.Clone(p.Args),
		"env":       env,
		"env_names": names,
		"cwd":       p.Cwd,
		"user": map[string]any{
			"uid":             int64(p.User.UID),
			"gid":             int64(p.User.GID),
			"additional_gids": gids,
		},
		"capabilities":                 caps,
		"capabilities_beyond_bounding": beyondBounding,
		"no_new_privileges":            p.NoNewPrivileges,
		"terminal":                     p.Terminal,
		"rlimits":                      rlimits,
		"oom_score_adj":                oom,
	}, nil
}

// int64FromU maps a limit to int64, RLIM_INFINITY (and anything beyond
// int64) to -1.
func int64FromU(v uint64) int64 {
	if v > 1<<63-1 {
		return -1
	}
	return int64(v)
}

// setOf returns xs as an object whose keys are the members (values true):
// rules compare such sets with object.keys and set operations, which run
// in Go, instead of iterating in Rego.
func setOf(xs []string) map[string]any {
	set := make(map[string]any, len(xs))
	for _, x := range xs {
		set[x] = true
	}
	return set
}

// Mount options as runc reads them (libcontainer/specconv): flags a later
// option can undo, recursive attributes (bind mounts only), propagation,
// and everything else passed to the file system as data.
var (
	// flagOptions maps an option to the flag it sets (true) or clears.
	flagOptions = map[string]struct {
		flag string
		set  bool
	}{
		"ro": {"ro", true}, "rw": {"ro", false},
		"nosuid": {"nosuid", true}, "suid": {"nosuid", false},
		"nodev": {"nodev", true}, "dev": {"nodev", false},
		"noexec": {"noexec", true}, "exec": {"noexec", false},
		"rro": {"ro", true}, "rrw": {"ro", false},
		"rnosuid": {"nosuid", true}, "rsuid": {"nosuid", false},
		"rnodev": {"nodev", true}, "rdev": {"nodev", false},
		"rnoexec": {"noexec", true}, "rexec": {"noexec", false},
	}
	// timeOptions change only access-time bookkeeping.
	timeOptions = []string{
		"atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
		"ratime", "rnoatime", "rdiratime", "rnodiratime", "rrelatime", "rnorelatime", "rstrictatime", "rnostrictatime",
		"lazytime", "nolazytime", "sync", "async", "dirsync", "silent", "loud", "defaults",
	}
	propagationOptions = []string{"private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"}
	// refusedOptions change what a mount is beyond what the rules judge.
	refusedOptions = []string{
		"remount", "mand", "nomand", "acl", "noacl", "iversion", "noiversion",
		"symfollow", "nosymfollow", "rsymfollow", "rnosymfollow", "tmpcopyup", "idmap", "ridmap",
	}
)

// mountInput describes a mount as runc will make it: its destination as
// sent (a path that is not clean and absolute is refused: runc would
// resolve it otherwise than a rule reads it), "bind" as type whenever it
// binds, and whether it ends up read-only, nosuid, nodev and noexec.
// Within ro/rw and within rro/rrw the last option wins; on a bind mount runc
// applies the recursive attribute after the flag, so it decides when
// present, while the house rule reads the last of all four as deciding: a
// flag counts as set only when both readings set it. rro and the other
// recursive attributes are refused on a mount that does not bind.
func mountInput(m specs.Mount) (map[string]any, error) {
	if m.Destination == "" {
		return nil, errors.New("destination: empty")
	}
	if !path.IsAbs(m.Destination) || path.Clean(m.Destination) != m.Destination {
		return nil, fmt.Errorf("destination: %q is not a clean absolute path", m.Destination)
	}
	bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
	typ := m.Type
	if bind {
		typ = "bind"
	}
	type state struct {
		plain, last bool
		rec         *bool
	}
	flags := map[string]*state{"ro": {}, "nosuid": {}, "nodev": {}, "noexec": {}}
	propagation := ""
	data := []any{}
	for i, o := range m.Options {
		f, isFlag := flagOptions[o]
		recursive := isFlag && o != "ro" && o != "rw" && strings.HasPrefix(o, "r")
		switch {
		case o == "bind" || o == "rbind":
		case recursive && !bind:
			return nil, fmt.Errorf("options[%d]: %q on a mount that does not bind (runc applies recursive attributes to bind mounts only)", i, o)
		case recursive:
			st := flags[f.flag]
			st.rec, st.last = &f.set, f.set
		case isFlag:
			st := flags[f.flag]
			st.plain, st.last = f.set, f.set
		case slices.Contains(timeOptions, o):
		case slices.Contains(propagationOptions, o):
			propagation = o
		case slices.Contains(refusedOptions, o):
			return nil, fmt.Errorf("options[%d]: %q is not allowed in the pod VM", i, o)
		case o == "":
			return nil, fmt.Errorf("options[%d]: empty", i)
		default:
			if bind {
				return nil, fmt.Errorf("options[%d]: %q: a bind mount takes no file system data", i, o)
			}
			data = append(data, o)
		}
	}
	set := func(name string) bool {
		st := flags[name]
		runc := st.plain
		if st.rec != nil {
			runc = *st.rec
		}
		return runc && st.last
	}
	flagSet := make(map[string]any, 3)
	for _, f := range []string{"nosuid", "nodev", "noexec"} {
		if set(f) {
			flagSet[f] = true
		}
	}
	dataSet := make(map[string]any, len(data))
	for _, d := range data {
		dataSet[d.(string)] = true
	}
	return map[string]any{
		"destination": m.Destination,
		"type":        typ,
		"source":      m.Source,
		"read_only":   set("ro"),
		"nosuid":      set("nosuid"),
		"nodev":       set("nodev"),
		"noexec":      set("noexec"),
		"flags":       flagSet,
		"propagation": propagation,
		"data":        data,
		"data_set":    dataSet,
	}, nil
}

// cleanPaths returns the paths as a set, refusing one that is not already
// clean and absolute: runc masks exactly the path it is given and skips
// one it cannot find, so a rule must see that path, not a cleaned one.
func cleanPaths(field string, ps []string) (map[string]any, error) {
	out := make(map[string]any, len(ps))
	for i, p := range ps {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return nil, fmt.Errorf("%s[%d]: %q is not a clean absolute path", field, i, p)
		}
		out[p] = true
	}
	return out, nil
}

func stdioInput(s *agentapi.Stdio) map[string]any {
	return map[string]any{
		"stdin":    s.GetStdin(),
		"stdout":   s.GetStdout(),
		"stderr":   s.GetStderr(),
		"terminal": s.GetTerminal(),
	}
}

func resourcesInput(raw []byte) (any, error) {
	if len(raw) == 0 {
		return map[string]any{}, nil
	}
	var r specs.LinuxResources
	if err := decodeJSON(raw, &r); err != nil {
		return nil, err
	}
	// Re-encode what the agent will read, then hand rules the generic form.
	canonical, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(canonical))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return v, nil
}

// networkInput adds the interfaces, routes and neighbours of a
// ConfigureNetwork request to in; its errors name the field.
func networkInput(in map[string]any, r *agentapi.ConfigureNetworkRequest) error {
	interfaces := make([]any, 0, len(r.GetInterfaces()))
	names := make(map[string]int, len(r.GetInterfaces()))
	macs := make(map[string]int, len(r.GetInterfaces()))
	for i, nic := range r.GetInterfaces() {
		field := fmt.Sprintf("interfaces[%d]", i)
		if j, dup := names[nic.GetName()]; dup {
			return fmt.Errorf("%s.name: %q again (first interfaces[%d])", field, nic.GetName(), j)
		}
		names[nic.GetName()] = i
		mac, err := macInput(field+".mac", nic.GetMac())
		if err != nil {
			return err
		}
		if j, dup := macs[mac]; dup {
			return fmt.Errorf("%s.mac: %s again (first interfaces[%d]); the agent finds a NIC by its MAC", field, mac, j)
		}
		macs[mac] = i
		addresses := make([]any, 0, len(nic.GetAddresses()))
		for j, a := range nic.GetAddresses() {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return fmt.Errorf("%s.addresses[%d]: not an address in CIDR notation: %w", field, j, err)
			}
			if err := plainAddr(p.Addr()); err != nil {
				return fmt.Errorf("%s.addresses[%d]: %q %w", field, j, a, err)
			}
			addresses = append(addresses, p.String())
		}
		interfaces = append(interfaces, map[string]any{
			"name":      nic.GetName(),
			"mac":       mac,
			"mtu":       int64(nic.GetMtu()),
			"addresses": addresses,
		})
	}
	in["interfaces"] = interfaces

	routes := make([]any, 0, len(r.GetRoutes()))
	for i, rt := range r.GetRoutes() {
		field := fmt.Sprintf("routes[%d]", i)
		dest, err := netip.ParsePrefix(rt.GetDestination())
		if err != nil {
			return fmt.Errorf("%s.destination: not a prefix in CIDR notation: %w", field, err)
		}
		if err := plainAddr(dest.Addr()); err != nil {
			return fmt.Errorf("%s.destination: %q %w", field, rt.GetDestination(), err)
		}
		if m := dest.Masked(); m != dest {
			return fmt.Errorf("%s.destination: %q has host bits set (the prefix is %s)", field, rt.GetDestination(), m)
		}
		gateway, err := optionalIPInput(field+".gateway", rt.GetGateway())
		if err != nil {
			return err
		}
		source, err := optionalIPInput(field+".source", rt.GetSource())
		if err != nil {
			return err
		}
		routes = append(routes, map[string]any{
			"destination": dest.String(),
			"gateway":     gateway,
			"source":      source,
			"device":      rt.GetDevice(),
			"link_scope":  rt.GetLinkScope(),
		})
	}
	in["routes"] = routes

	neighbors := make([]any, 0, len(r.GetNeighbors()))
	for i, nb := range r.GetNeighbors() {
		field := fmt.Sprintf("neighbors[%d]", i)
		ip, err := netip.ParseAddr(nb.GetIp())
		if err != nil {
			return fmt.Errorf("%s.ip: not an IP address: %w", field, err)
		}
		if err := plainAddr(ip); err != nil {
			return fmt.Errorf("%s.ip: %q %w", field, nb.GetIp(), err)
		}
		mac, err := macInput(field+".mac", nb.GetMac())
		if err != nil {
			return err
		}
		neighbors = append(neighbors, map[string]any{"ip": ip.String(), "mac": mac, "device": nb.GetDevice()})
	}
	in["neighbors"] = neighbors
	return nil
}

// macInput returns an Ethernet MAC in lower-case colon form. The NIC is a
// virtio-net card: longer hardware addresses (EUI-64, InfiniBand) are not
// its.
func macInput(field, s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return "", fmt.Errorf("%s: not a MAC address: %w", field, err)
	}
	if len(hw) != 6 {
		return "", fmt.Errorf("%s: %q is not a 48-bit Ethernet MAC address", field, s)
	}
	return hw.String(), nil
}

// optionalIPInput returns an IP in canonical form, "" for "".
func optionalIPInput(field, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("%s: not an IP address: %w", field, err)
	}
	if err := plainAddr(ip); err != nil {
		return "", fmt.Errorf("%s: %q %w", field, s, err)
	}
	return ip.String(), nil
}

// plainAddr refuses the address forms rules could misjudge: OPA's
// net.cidr_contains reads an IPv4-mapped IPv6 address as IPv4, which the
// kernel would not, and cannot parse a zone.
func plainAddr(a netip.Addr) error {
	if a.Is4In6() {
		return errors.New("is an IPv4-mapped IPv6 address; write the IPv4 address")
	}
	if a.Zone() != "" {
		return errors.New("has a zone; the device names the link")
	}
	return nil
}

// volumeInput describes a ShareVolume request: the tree, checked as the
// agent checks it, and the content each top-level key leads to, resolved
// through the tree's own symlinks (the kubelet's key -> ..data/key ->
// ..<timestamp>/key), for the rules that pin it.
func volumeInput(in map[string]any, r *agentapi.ShareVolumeRequest) error {
	if err := agentapi.CheckVolumeName(r.GetKind(), r.GetName()); err != nil {
		return err
	}
	if err := agentapi.CheckVolumeTree(r.GetFiles()); err != nil {
		return fmt.Errorf("%s volume %s: %w", r.GetKind(), r.GetName(), err)
	}
	in["volume_kind"] = r.GetKind()
	in["volume_name"] = r.GetName()
	in["total_bytes"] = agentapi.VolumeBytes(r.GetFiles())
	byPath := map[string]*agentapi.VolumeFile{}
	files := make([]any, 0, len(r.GetFiles()))
	for _, f := range r.GetFiles() {
		byPath[f.GetPath()] = f
		files = append(files, map[string]any{
			"path": f.GetPath(), "type": f.GetType(), "mode": int64(f.GetMode()),
			"uid": int64(f.GetUid()), "gid": int64(f.GetGid()), "size": int64(len(f.GetContent())),
		})
	}
	in["files"] = files
	keys := map[string]any{}
	for _, f := range r.GetFiles() {
		if strings.Contains(f.GetPath(), "/") || strings.HasPrefix(f.GetPath(), "..") {
			continue // not a key the container sees
		}
		if target, ok := resolveVolumeFile(byPath, f.GetPath()); ok {
			sum := sha256.Sum256(target.GetContent())
			keys[f.GetPath()] = hex.EncodeToString(sum[:])
		} else {
			keys[f.GetPath()] = ""
		}
	}
	in["keys"] = keys
	return nil
}

// resolveVolumeFile follows p through the tree's symlinks (each relative
// to its own directory, downward only) to a regular file.
func resolveVolumeFile(byPath map[string]*agentapi.VolumeFile, p string) (*agentapi.VolumeFile, bool) {
	for hops := 0; hops < 16; hops++ {
		// Resolve the directories on the way first.
		dir, base := path.Split(p)
		if dir != "" {
			d, ok := resolveVolumeDir(byPath, strings.TrimSuffix(dir, "/"), hops)
			if !ok {
				return nil, false
			}
			p = path.Join(d, base)
		}
		f, ok := byPath[p]
		if !ok {
			return nil, false
		}
		switch f.GetType() {
		case agentapi.VolumeFileRegular:
			return f, true
		case agentapi.VolumeFileSymlink:
			p = path.Join(path.Dir(p), f.GetTarget())
		default:
			return nil, false
		}
	}
	return nil, false
}

// resolveVolumeDir resolves a directory path whose components may be
// symlinks to the real directory's path.
func resolveVolumeDir(byPath map[string]*agentapi.VolumeFile, p string, hops int) (string, bool) {
	resolved := ""
	for _, c := range strings.Split(p, "/") {
		next := path.Join(resolved, c)
		for ; hops < 16; hops++ {
			f, ok := byPath[next]
			if !ok {
				return "", false
			}
			if f.GetType() == agentapi.VolumeFileDir {
				break
			}
			if f.GetType() != agentapi.VolumeFileSymlink {
				return "", false
			}
			next = path.Join(path.Dir(next), f.GetTarget())
		}
		if hops >= 16 {
			return "", false
		}
		resolved = next
	}
	return resolved, true
}

// subPathsInput adds each directory subPath to its mount, refusing one
// for no bind mount, given twice, or a path that is not clean and
// relative or steps up.
func subPathsInput(in map[string]any, subPaths []*agentapi.SubPath) error {
	mounts, _ := in["mounts"].([]any)
	for i, sp := range subPaths {
		if err := agentapi.CheckRelativePath(sp.GetPath()); err != nil {
			return fmt.Errorf("sub_paths[%d]: path %q: %w", i, sp.GetPath(), err)
		}
		if v := sp.GetVolume(); !path.IsAbs(v) || path.Clean(v) != v {
			return fmt.Errorf("sub_paths[%d]: volume %q is not a clean absolute path", i, v)
		}
		var found map[string]any
		for _, m := range mounts {
			mi := m.(map[string]any)
			if mi["destination"] == path.Clean("/"+sp.GetDestination()) && mi["type"] == "bind" {
				found = mi
			}
		}
		if found == nil {
			return fmt.Errorf("sub_paths[%d]: no bind mount at %q", i, sp.GetDestination())
		}
		if _, dup := found["sub_path"]; dup {
			return fmt.Errorf("sub_paths[%d]: a second subPath for %q", i, sp.GetDestination())
		}
		found["sub_path"] = map[string]any{"volume": sp.GetVolume(), "path": sp.GetPath()}
	}
	return nil
}

// MountOptions are the mount options the pod VM takes: those runc applies
// there and the rules judge (or leave alone, as access-time
// bookkeeping); Input refuses every other, so a runtime that reports its
// features reports these.
func MountOptions() []string {
	out := []string{"bind", "rbind"}
	for o := range flagOptions {
		out = append(out, o)
	}
	out = append(out, timeOptions...)
	out = append(out, propagationOptions...)
	slices.Sort(out)
	return out
}
