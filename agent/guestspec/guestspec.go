// Package guestspec rewrites an OCI runtime spec written by containerd on the
// host into one runc can run inside the pod VM: everything in it that refers
// to the host (paths, namespaces, security labels, hooks) is replaced or
// refused. It only computes; the caller writes files and runs runc.
package guestspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SharedFile is a file the host sent for the bind mount at Destination.
type SharedFile struct {
	Destination string
	Content     []byte
	Mode        uint32
}

// Input is what the rewrite needs to know about the guest side.
type Input struct {
	ContainerID string
	// RootfsPath is the container's root filesystem in the guest (the overlay).
	RootfsPath string
	// SharedDir is the directory the caller writes shared files into.
	SharedDir string
	// CgroupParent is the guest cgroup under which the container's cgroup goes.
	CgroupParent string
	SharedFiles  []SharedFile
	// AttestationDir is the guest directory of the agent's attestation
	// endpoint, bind-mounted read-only at AttestationMountPoint; "" mounts
	// nothing.
	AttestationDir string
	// SubPaths are the directory subPath mounts, by destination: the
	// mount binds Path inside the volume whose host directory is Volume.
	SubPaths map[string]SubPath
	// VolumeSource maps a bind mount's host source to the guest directory
	// of the kubelet-managed volume it is (isVolume), or fails for a
	// volume the host has not shared; nil: no volumes.
	VolumeSource func(hostSource string) (guest string, isVolume bool, err error)
	// BlockVolumes are the container's raw block volumes (see blockvolumes.go).
	BlockVolumes []BlockVolume
	// PodPIDNamespace returns the pod's shared PID namespace, for a
	// container that asks to join the sandbox's (CRI NamespaceMode POD);
	// nil refuses such a container.
	PodPIDNamespace func() (string, error)
	// EmptyDirs says where the pod's emptyDir volumes are (emptydir.go).
	EmptyDirs EmptyDirInput
}

// SubPath is a directory inside a volume that a mount binds.
type SubPath struct {
	Volume string // the volume's host directory
	Path   string // relative to the volume, clean, no "." or ".." components
}

// SubPathMount is a mount of the rewritten spec whose source is a volume's
// guest directory, of which the agent must bind Path instead (resolving
// it inside the volume, never through a symlink: a container may have
// planted one).
type SubPathMount struct {
	Index int // in Spec.Mounts
	Path  string
}

// AttestationMountPoint is where a container finds the agent's attestation
// endpoint: a directory holding its unix socket.
const AttestationMountPoint = "/run/contrast/attestation"

// File is a file the caller must write before running runc.
type File struct {
	Path    string
	Content []byte
	Mode    uint32
	// Destination is the mount destination of the shared file this is the
	// guest copy of.
	Destination string
}

// Result is the guest spec, the files it refers to and notes on what was
// changed, for the log.
type Result struct {
	Spec  *specs.Spec
	Files []File
	Notes []string
	// SubPaths are the mounts whose source the agent must narrow to a
	// path inside the volume.
	SubPaths []SubPathMount
	// EmptyDirs are the emptyDir volumes the spec mounts, each once.
	EmptyDirs []EmptyDir
}

// virtualFS are mount types that refer to no host path or device.
var virtualFS = []string{"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "ramfs"}

// Rewrite parses the host's config.json and returns the guest spec.
func Rewrite(raw []byte, in Input) (*Result, error) {
	var s specs.Spec
	if err := decodeStrict(raw, &s); err != nil {
		return nil, fmt.Errorf("container %s: parse OCI spec: %w", in.ContainerID, err)
	}
	r := &Result{Spec: &s}
	if err := r.rewrite(in); err != nil {
		return nil, fmt.Errorf("container %s: %w", in.ContainerID, err)
	}
	return r, nil
}

// RewriteProcess parses an exec process (OCI Process as JSON) for the guest.
func RewriteProcess(raw []byte) (*specs.Process, []string, error) {
	var p specs.Process
	if err := decodeStrict(raw, &p); err != nil {
		return nil, nil, fmt.Errorf("parse OCI process: %w", err)
	}
	var notes []string
	if err := checkProcess(&p, &notes); err != nil {
		return nil, nil, err
	}
	return &p, notes, nil
}

// decodeStrict decodes one JSON value and refuses anything after it.
func decodeStrict(raw []byte, v any) error {
	d := json.NewDecoder(strings.NewReader(string(raw)))
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func checkProcess(p *specs.Process, notes *[]string) error {
	if len(p.Args) == 0 {
		return errors.New("process has no args")
	}
	if p.ApparmorProfile != "" {
		*notes = append(*notes, fmt.Sprintf("dropped AppArmor profile %q (it is the host's)", p.ApparmorProfile))
		p.ApparmorProfile = ""
	}
	if p.SelinuxLabel != "" {
		*notes = append(*notes, fmt.Sprintf("dropped SELinux label %q (it is the host's)", p.SelinuxLabel))
		p.SelinuxLabel = ""
	}
	return nil
}

func (r *Result) rewrite(in Input) error {
	s := r.Spec
	switch {
	case s.Windows != nil, s.Solaris != nil, s.VM != nil, s.ZOS != nil, s.FreeBSD != nil:
		return errors.New("OCI spec is not for Linux containers")
	case s.Process == nil:
		return errors.New("OCI spec has no process")
	}
	if err := checkProcess(s.Process, &r.Notes); err != nil {
		return err
	}

	readonly := s.Root != nil && s.Root.Readonly
	s.Root = &specs.Root{Path: in.RootfsPath, Readonly: readonly}

	if s.Hooks != nil {
		h := s.Hooks
		//lint:ignore SA1019 Prestart is deprecated in the spec, but runc still runs it: it is counted and dropped like the others.
		n := len(h.Prestart) + len(h.CreateRuntime) + len(h.CreateContainer) + len(h.StartContainer) + len(h.Poststart) + len(h.Poststop)
		if n > 0 {
			r.note("dropped %d OCI hooks (they name host binaries)", n)
		}
		s.Hooks = nil
	}
	// Containers share the VM's UTS namespace; the VM's hostname is the pod's.
	if s.Hostname != "" || s.Domainname != "" {
		r.note("dropped hostname %q and domainname %q (the VM's hostname is the pod's)", s.Hostname, s.Domainname)
		s.Hostname, s.Domainname = "", ""
	}

	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if err := r.rewriteLinux(in); err != nil {
		return err
	}
	if err := r.rewriteBlockVolumes(in.BlockVolumes); err != nil {
		return err
	}
	return r.rewriteMounts(in)
}

func (r *Result) rewriteLinux(in Input) error {
	l := r.Spec.Linux
	var nss []specs.LinuxNamespace
	for _, ns := range l.Namespaces {
		switch ns.Type {
		case specs.NetworkNamespace, specs.IPCNamespace, specs.UTSNamespace:
			// The VM is the pod: its network, IPC and UTS namespaces are the pod's.
			if ns.Path != "" {
				r.note("dropped %s namespace %s (containers join the VM's)", ns.Type, ns.Path)
			} else {
				r.note("dropped new %s namespace (containers join the VM's)", ns.Type)
			}
			continue
		case specs.PIDNamespace:
			if ns.Path != "" {
				// CRI's NamespaceMode POD (shareProcessNamespace): the
				// sandbox's namespace, on the host the pause process's; in
				// the VM the pod's shared one.
				if in.PodPIDNamespace == nil {
					return fmt.Errorf("pid namespace path %q: the pod's shared PID namespace is not available", ns.Path)
				}
				p, err := in.PodPIDNamespace()
				if err != nil {
					return fmt.Errorf("pid namespace path %q: %w", ns.Path, err)
				}
				r.note("pid namespace %q becomes the pod's shared one, %s", ns.Path, p)
				ns.Path = p
			}
		default:
			if ns.Path != "" {
				return fmt.Errorf("%s namespace path %q refers to the host", ns.Type, ns.Path)
			}
		}
		nss = append(nss, ns)
	}
	// The guest runs cgroup v2 even when the host (whose CRI wrote the spec)
	// runs v1 and asked for no cgroup namespace: give every container one,
	// so it sees its own cgroup as the root, as on a v2 host.
	hasCgroupNS := false
	for _, ns := range nss {
		hasCgroupNS = hasCgroupNS || ns.Type == specs.CgroupNamespace
	}
	if !hasCgroupNS {
		nss = append(nss, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	l.Namespaces = nss

	if l.MountLabel != "" {
		r.note("dropped SELinux mount label %q (it is the host's)", l.MountLabel)
		l.MountLabel = ""
	}
	if len(l.NetDevices) > 0 {
		return errors.New("netDevices move host network devices and are not supported in the VM")
	}
	if l.Seccomp != nil && l.Seccomp.ListenerPath != "" {
		return fmt.Errorf("seccomp listener %q is a host path", l.Seccomp.ListenerPath)
	}
	if l.IntelRdt != nil {
		r.note("dropped Intel RDT settings (host hardware)")
		l.IntelRdt = nil
	}
	if res := l.Resources; res != nil {
		if res.BlockIO != nil {
			r.note("dropped blockIO limits (they name host devices)")
			res.BlockIO = nil
		}
		if len(res.HugepageLimits) > 0 {
			r.note("dropped hugepage limits (no hugetlb in the guest)")
			res.HugepageLimits = nil
		}
		if len(res.Rdma) > 0 {
			r.note("dropped RDMA limits (host devices)")
			res.Rdma = nil
		}
		for k := range res.Unified {
			if err := CheckUnifiedKey(k); err != nil {
				return err
			}
		}
	}
	cg := path.Join("/", in.CgroupParent, in.ContainerID)
	if l.CgroupsPath != cg {
		r.note("cgroups path %q becomes %q", l.CgroupsPath, cg)
		l.CgroupsPath = cg
	}
	return nil
}

func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

func (r *Result) rewriteMounts(in Input) error {
	shared := map[string]SharedFile{}
	for _, f := range in.SharedFiles {
		if !path.IsAbs(f.Destination) || path.Clean(f.Destination) != f.Destination {
			return fmt.Errorf("shared file destination %q is not a clean absolute path", f.Destination)
		}
		if _, dup := shared[f.Destination]; dup {
			return fmt.Errorf("two shared files for destination %q", f.Destination)
		}
		shared[f.Destination] = f
	}
	used := map[string]bool{}
	subUsed := map[string]bool{}
	for i := range r.Spec.Mounts {
		m := &r.Spec.Mounts[i]
		dest := path.Clean("/" + m.Destination)
		if sp, ok := in.SubPaths[dest]; ok && isBind(*m) {
			// The volume itself is mapped below like any volume mount;
			// the agent then narrows it to the subPath.
			if subUsed[dest] {
				return fmt.Errorf("two bind mounts at %q", m.Destination)
			}
			subUsed[dest] = true
			r.note("subPath mount at %s: %q is %s inside volume %s", m.Destination, m.Source, sp.Path, sp.Volume)
			m.Source = sp.Volume
			r.SubPaths = append(r.SubPaths, SubPathMount{Index: i, Path: sp.Path})
		}
		if !isBind(*m) {
			if !slices.Contains(virtualFS, m.Type) {
				return fmt.Errorf("mount of %q (type %q) at %q refers to the host", m.Source, m.Type, m.Destination)
			}
			continue
		}
		if in.VolumeSource != nil {
			// A kubelet-managed volume the host shared (ShareVolume).
			guest, isVolume, err := in.VolumeSource(m.Source)
			if err != nil {
				return fmt.Errorf("bind mount at %s: %w", m.Destination, err)
			}
			if isVolume {
				r.note("bind mount at %s: host volume %q replaced by the guest's copy %s", m.Destination, m.Source, guest)
				m.Source = guest
				continue
			}
		}
		if f, ok := shared[dest]; ok {
			if used[dest] {
				return fmt.Errorf("two bind mounts at %q", m.Destination)
			}
			used[dest] = true
			p := path.Join(in.SharedDir, fmt.Sprintf("%02d-%s", len(r.Files), safeName(dest)))
			mode := f.Mode & 0o7777
			if mode == 0 {
				mode = 0o644
			}
			r.Files = append(r.Files, File{Path: p, Content: f.Content, Mode: mode, Destination: dest})
			r.note("bind mount at %s: host file %q replaced by the shared copy %s", m.Destination, m.Source, p)
			m.Source = p
			continue
		}
		// --- emptyDir volumes (emptydir.go) ---
		if ok, err := r.rewriteEmptyDir(in.EmptyDirs, m); err != nil {
			return err
		} else if ok {
			continue
		}
		// --- end of emptyDir volumes ---
		if dest == "/dev/shm" {
			// The pod's shm is the sandbox's on the host; in the VM a tmpfs
			// per container (as CRI mounts for the sandbox itself).
			r.note("bind mount of %q at /dev/shm becomes a tmpfs", m.Source)
			*m = specs.Mount{
				Destination: m.Destination, Type: "tmpfs", Source: "shm",
				Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"},
			}
			continue
		}
		return unsupportedBind(*m)
	}
	for dest := range in.SubPaths {
		if !subUsed[dest] {
			return fmt.Errorf("subPath for %s: no bind mount there", dest)
		}
	}
	for _, f := range in.SharedFiles {
		if !used[f.Destination] {
			r.note("shared file for %s ignored: no bind mount there", f.Destination)
		}
	}
	if in.AttestationDir != "" {
		// Last, so that no mount of the spec covers it.
		r.Spec.Mounts = append(r.Spec.Mounts, specs.Mount{
			Destination: AttestationMountPoint,
			Type:        "bind",
			Source:      in.AttestationDir,
			Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
	return nil
}

// safeName turns a mount destination into a file name for the shared dir.
func safeName(dest string) string {
	var b strings.Builder
	for _, c := range strings.TrimPrefix(dest, "/") {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return b.String()
}

// kubeletVolumeDir matches a kubelet volume directory, naming its plugin
// and the volume.
var kubeletVolumeDir = regexp.MustCompile(`/pods/[^/]+/volumes/kubernetes\.io~([^/]+)/([^/]+)(?:/mount)?$`)

// unsupportedBind is the error for a bind of a host directory the VM has
// no copy of: hostPath and filesystem persistent volumes, whose data lives
// on the host and would reach the guest in the clear, unverified.
func unsupportedBind(m specs.Mount) error {
	const why = "a host directory cannot be shared into a confidential pod VM (hostPath and filesystem persistent volumes are not supported; ConfigMap, Secret, projected, downward-API, emptyDir and raw block volumes are)"
	if v := kubeletVolumeDir.FindStringSubmatch(m.Source); v != nil {
		return fmt.Errorf("volume %s (%s) at %q: bind mount of host path %q is not supported in the VM: %s", v[2], v[1], m.Destination, m.Source, why)
	}
	return fmt.Errorf("bind mount of host path %q to %q is not supported in the VM: %s", m.Source, m.Destination, why)
}
