package generate

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/pkg/cap"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// defaultCapabilities is the capability set of containerd's default OCI spec
// (pkg/oci defaultUnixCaps), which the CRI keeps for a container whose YAML
// adds or drops none. TestDefaultsMatchContainerd holds it to containerd's.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Paths the kubelet mounts into every container.
const (
	serviceAccountPath            = "/var/run/secrets/kubernetes.io/serviceaccount"
	defaultTerminationMessagePath = "/dev/termination-log"
	etcHostsPath                  = "/etc/hosts"
)

// pod is what the containers of one pod share.
type pod struct {
	spec *corev1.PodSpec
	// indexedJob: the pod is an Indexed Job's, whose controller adds
	// JOB_COMPLETION_INDEX to every container's env.
	indexedJob  bool
	labels      map[string]string
	annotations map[string]string
	namespace   string
	names       podNaming // the pod's name
	hostname    podNaming // the sandbox hostname
	settings    Settings
	warn        func(string)
	// objects are the input's ConfigMaps and Secrets, whose content the
	// policy pins where the settings say so.
	objects volumeObjects
}

// resolvedImage is a container's image as the generator knows it.
type resolvedImage struct {
	Image
	// known: the config and user files were read; without a resolver only
	// the digest is known and the image is taken to set nothing.
	known bool
	// layers are the root hashes of the image's layers, lowest first.
	layers []string
}

// containerData derives the policy entry of one container.
func (p *pod) containerData(c *corev1.Container, img resolvedImage) (policy.Container, error) {
	sc := c.SecurityContext
	privileged := sc != nil && sc.Privileged != nil && *sc.Privileged
	cfg := img.Config

	env, err := computeEnv(envInput{
		container:          c,
		indexedJob:         p.indexedJob,
		image:              cfg.Env,
		hostname:           p.hostnameValue(),
		enableServiceLinks: p.spec.EnableServiceLinks == nil || *p.spec.EnableServiceLinks,
		fieldRef:           p.fieldRef,
		warn:               p.warn,
	})
	if err != nil {
		return policy.Container{}, err
	}

	args, err := p.processArgs(c, img, env.kubelet)
	if err != nil {
		return policy.Container{}, err
	}

	cwd := c.WorkingDir
	if cwd == "" {
		cwd = cfg.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}

	usr, err := processUser(c.Name, p.spec.SecurityContext, sc, cfg.User, img.EtcPasswd, img.EtcGroup)
	if err != nil {
		return policy.Container{}, err
	}

	caps, err := capabilities(c.Name, sc, privileged)
	if err != nil {
		return policy.Container{}, err
	}

	mounts, err := p.mounts(c)
	if err != nil {
		return policy.Container{}, err
	}

	blockDevices, err := p.blockDevices(c)
	if err != nil {
		return policy.Container{}, err
	}

	seccomp, err := p.seccomp(c.Name, sc, privileged)
	if err != nil {
		return policy.Container{}, err
	}

	extraExec, stdin, logs, extraEnv := p.settings.forContainer(c.Name)
	envPatterns := append(env.patterns, extraEnv...)
	slices.Sort(envPatterns)
	envPatterns = slices.Compact(envPatterns)

	return policy.Container{
		Image:             img.Ref,
		Layers:            img.layers,
		Args:              args,
		Env:               env.exact,
		EnvPatterns:       envPatterns,
		EnvRequiredNames:  env.required,
		Cwd:               cwd,
		User:              usr,
		Capabilities:      caps,
		Privileged:        privileged,
		NoNewPrivileges:   sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		ReadOnlyRoot:      sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
		Seccomp:           seccomp,
		OOMScoreAdj:       p.oomScoreAdj(),
		UserNamespace:     p.userNamespace(),
		ProcMountUnmasked: sc != nil && sc.ProcMount != nil && *sc.ProcMount == corev1.UnmaskedProcMount,
		Mounts:            mounts,
		BlockDevices:      blockDevices,
		Exec:              execCommands(c, extraExec),
		Stdin:             c.Stdin || stdin,
		Logs:              logs,
		Terminal:          c.TTY,
	}, nil
}

// processArgs is the process's argv as containerd builds it from the
// kubelet's command and args (both $(VAR)-expanded) and the image: command
// replaces the entrypoint and drops the image's cmd; args replaces cmd.
func (p *pod) processArgs(c *corev1.Container, img resolvedImage, env envLookup) ([]string, error) {
	command, err := expandArgv("command", c.Name, c.Command, env)
	if err != nil {
		return nil, err
	}
	args, err := expandArgv("args", c.Name, c.Args, env)
	if err != nil {
		return nil, err
	}
	if len(command) == 0 {
		if !img.known {
			return nil, fmt.Errorf("container %s: no command, and the entrypoint of image %s is unknown without an image store; set command in the YAML or pass the containerd address", c.Name, img.Ref)
		}
		if len(args) == 0 {
			args = img.Config.Cmd
		}
		// An entrypoint of [""] is an explicit "none" (Docker's convention).
		if ep := img.Config.Entrypoint; len(ep) != 1 || ep[0] != "" {
			command = ep
		}
	}
	argv := append(slices.Clone(command), args...)
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %s: neither the YAML nor image %s gives a command to run", c.Name, img.Ref)
	}
	return argv, nil
}

// capabilities follows the CRI: containerd's default set; add ALL gives
// every capability and drop ALL none, then single adds and drops apply;
// privileged gives every capability.
func capabilities(container string, sc *corev1.SecurityContext, privileged bool) ([]string, error) {
	all := cap.Known()
	if privileged {
		return sortedCaps(all), nil
	}
	set := slices.Clone(defaultCapabilities)
	if sc == nil || sc.Capabilities == nil {
		return sortedCaps(set), nil
	}
	names := func(list []corev1.Capability) (out []string, hasAll bool, err error) {
		for _, c := range list {
			name := strings.ToUpper(string(c))
			if name == "ALL" {
				hasAll = true
				continue
			}
			if strings.HasPrefix(name, "CAP_") {
				return nil, false, fmt.Errorf("container %s: capability %q: Kubernetes names capabilities without the CAP_ prefix (containerd would look for CAP_%s)", container, c, name)
			}
			if !slices.Contains(all, "CAP_"+name) {
				return nil, false, fmt.Errorf("container %s: unknown capability %q", container, c)
			}
			out = append(out, "CAP_"+name)
		}
		return out, hasAll, nil
	}
	add, addAll, err := names(sc.Capabilities.Add)
	if err != nil {
		return nil, err
	}
	drop, dropAll, err := names(sc.Capabilities.Drop)
	if err != nil {
		return nil, err
	}
	if addAll {
		set = slices.Clone(all)
	}
	if dropAll {
		set = nil
	}
	for _, c := range add {
		if !slices.Contains(set, c) {
			set = append(set, c)
		}
	}
	set = slices.DeleteFunc(set, func(c string) bool { return slices.Contains(drop, c) })
	return sortedCaps(set), nil
}

func sortedCaps(caps []string) []string {
	out := slices.Clone(caps)
	slices.Sort(out)
	if out == nil {
		out = []string{}
	}
	return out
}

// seccomp is the filter CRI gives the container for the YAML's
// seccompProfile (the container's over the pod's): none for Unconfined, no
// profile or a privileged container; containerd's default profile for
// RuntimeDefault, which depends on the container's capabilities in CRI's
// order; a Localhost profile's content from the settings.
func (p *pod) seccomp(container string, sc *corev1.SecurityContext, privileged bool) (*policy.Seccomp, error) {
	var profile *corev1.SeccompProfile
	if p.spec.SecurityContext != nil {
		profile = p.spec.SecurityContext.SeccompProfile
	}
	if sc != nil && sc.SeccompProfile != nil {
		profile = sc.SeccompProfile
	}
	if privileged || profile == nil || profile.Type == corev1.SeccompProfileTypeUnconfined {
		return nil, nil
	}
	name := string(profile.Type)
	filters := map[string]*specs.LinuxSeccomp{}
	switch profile.Type {
	case corev1.SeccompProfileTypeRuntimeDefault:
		if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
			return nil, fmt.Errorf("container %s: seccompProfile RuntimeDefault: containerd's default profile depends on the architecture, and this generator (%s/%s) renders it only on linux/amd64, the pod VM's", container, runtime.GOOS, runtime.GOARCH)
		}
		caps, err := criCapabilityOrder(container, sc)
		if err != nil {
			return nil, err
		}
		spec := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps}}}
		for _, r := range p.settings.runtimeDefaultSeccomp() {
			switch r {
			case RuntimeContainerd2:
				filters[r] = seccomp.DefaultProfile(spec)
			case RuntimeContainerd17:
				if filters[r], err = containerd17Profile(seccomp.DefaultProfile(spec)); err != nil {
					return nil, fmt.Errorf("container %s: seccompProfile RuntimeDefault: %w", container, err)
				}
			default:
				return nil, fmt.Errorf("container %s: seccompProfile RuntimeDefault: no rendering for runtime %q", container, r)
			}
		}
	case corev1.SeccompProfileTypeLocalhost:
		if profile.LocalhostProfile == nil {
			return nil, fmt.Errorf("container %s: seccompProfile Localhost names no localhostProfile", container)
		}
		name = "Localhost/" + *profile.LocalhostProfile
		content, ok := p.settings.SeccompProfiles[*profile.LocalhostProfile]
		if !ok {
			return nil, fmt.Errorf("container %s: seccompProfile Localhost %s: the settings supply no content for it (seccompProfiles), and the policy pins a filter only by its content", container, *profile.LocalhostProfile)
		}
		filter := &specs.LinuxSeccomp{}
		// containerd reads the file with encoding/json into the same type.
		if err := json.Unmarshal(content, filter); err != nil {
			return nil, fmt.Errorf("container %s: seccomp profile %s from the settings: %w", container, *profile.LocalhostProfile, err)
		}
		filters[name] = filter
	default:
		return nil, fmt.Errorf("container %s: seccompProfile type %q is not one Kubernetes knows", container, profile.Type)
	}
	sums := make(map[string]string, len(filters))
	for by, f := range filters {
		sum, err := policy.SeccompHash(f)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", container, err)
		}
		if other, dup := sums[sum]; dup {
			by = min(by, other) + "," + max(by, other)
		}
		sums[sum] = by
	}
	return &policy.Seccomp{Profile: name, SHA256: sums}, nil
}

// criCapabilityOrder is the bounding set in the order CRI builds it
// (containerd's defaults, or every capability for add ALL, then the adds in
// the YAML's order, less the drops): containerd's default seccomp profile
// adds rules in that order.
func criCapabilityOrder(container string, sc *corev1.SecurityContext) ([]string, error) {
	set := slices.Clone(defaultCapabilities)
	if sc == nil || sc.Capabilities == nil {
		return set, nil
	}
	if slices.ContainsFunc(sc.Capabilities.Add, func(c corev1.Capability) bool { return strings.EqualFold(string(c), "ALL") }) {
		set = cap.Known()
	}
	if slices.ContainsFunc(sc.Capabilities.Drop, func(c corev1.Capability) bool { return strings.EqualFold(string(c), "ALL") }) {
		set = nil
	}
	for _, c := range sc.Capabilities.Add {
		name := "CAP_" + strings.ToUpper(string(c))
		if name != "CAP_ALL" && !slices.Contains(set, name) {
			set = append(set, name)
		}
	}
	set = slices.DeleteFunc(set, func(c string) bool {
		return slices.ContainsFunc(sc.Capabilities.Drop, func(d corev1.Capability) bool { return "CAP_"+strings.ToUpper(string(d)) == c })
	})
	if set == nil {
		set = []string{}
	}
	return set, nil
}

// oomScoreAdj is the range of oom_score_adj the kubelet gives the pod's
// containers by QoS class (BestEffort 1000, Burstable 2 to 999, Guaranteed
// -997); containerd may raise a score (restrict_oom_score_adj), never lower
// it.
func (p *pod) oomScoreAdj() [2]int64 {
	switch p.qosClass() {
	case corev1.PodQOSBestEffort:
		return [2]int64{1000, 1000}
	case corev1.PodQOSGuaranteed:
		return [2]int64{-997, 1000}
	default:
		return [2]int64{2, 1000}
	}
}

// qosClass follows the kubelet: BestEffort when no container requests or
// limits CPU or memory, Guaranteed when every container limits both and
// requests what it limits, Burstable otherwise.
func (p *pod) qosClass() corev1.PodQOSClass {
	requested, guaranteed := false, true
	all := slices.Concat(p.spec.InitContainers, p.spec.Containers)
	for _, c := range all {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			limit, hasLimit := c.Resources.Limits[r]
			request, hasRequest := c.Resources.Requests[r]
			if (hasLimit && !limit.IsZero()) || (hasRequest && !request.IsZero()) {
				requested = true
			}
			if !hasLimit || limit.IsZero() || (hasRequest && request.Cmp(limit) != 0) {
				guaranteed = false
			}
		}
	}
	switch {
	case !requested:
		return corev1.PodQOSBestEffort
	case guaranteed:
		return corev1.PodQOSGuaranteed
	}
	return corev1.PodQOSBurstable
}

// userNamespace is the id mapping a pod with hostUsers: false gets: the
// kubelet's 65536 ids per pod, from a range above the node's own ids.
func (p *pod) userNamespace() *policy.UserNamespace {
	if p.spec.HostUsers == nil || *p.spec.HostUsers {
		return nil
	}
	return &policy.UserNamespace{Size: 65536, HostIDMin: 65536}
}

// execCommands are the command lines the host may exec: exec probes (as the
// kubelet expands them), exec lifecycle hooks (sent as written) and the
// settings' extra commands.
func execCommands(c *corev1.Container, extra [][]string) [][]string {
	var out [][]string
	add := func(argv []string) {
		if len(argv) == 0 {
			return
		}
		if slices.ContainsFunc(out, func(have []string) bool { return slices.Equal(have, argv) }) {
			return
		}
		out = append(out, argv)
	}
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if probe != nil && probe.Exec != nil {
			add(expandStatic(probe.Exec.Command, c.Env))
		}
	}
	if c.Lifecycle != nil {
		for _, h := range []*corev1.LifecycleHandler{c.Lifecycle.PostStart, c.Lifecycle.PreStop} {
			if h != nil && h.Exec != nil {
				add(h.Exec.Command)
			}
		}
	}
	for _, argv := range extra {
		add(argv)
	}
	if out == nil {
		out = [][]string{}
	}
	return out
}

func (p *pod) hostnameValue() envValue {
	if p.hostname.exact != "" {
		return exactValue(p.hostname.exact)
	}
	return patternValue(p.hostname.pattern)
}

// fieldRef is the value of a downward-API env field.
func (p *pod) fieldRef(path string) (envValue, bool) {
	if key, ok := subscript(path, "metadata.labels"); ok {
		return p.metadataValue(p.labels, key), true
	}
	if key, ok := subscript(path, "metadata.annotations"); ok {
		return p.metadataValue(p.annotations, key), true
	}
	switch path {
	case "metadata.name":
		if p.names.exact != "" {
			return exactValue(p.names.exact), true
		}
		return patternValue(p.names.pattern), true
	case "metadata.namespace":
		if p.namespace != "" {
			return exactValue(p.namespace), true
		}
		return patternValue(dnsLabel), true
	case "metadata.uid":
		return patternValue(podUID), true
	case "spec.nodeName":
		return patternValue(nodeHostname), true
	case "spec.serviceAccountName":
		if name := p.spec.ServiceAccountName; name != "" {
			return exactValue(name), true
		}
		return exactValue("default"), true // the admission controller's default
	case "status.hostIP", "status.podIP":
		return patternValue(ipValue), true
	case "status.hostIPs", "status.podIPs":
		return patternValue(ipValue + `(?:,` + ipValue + `)*`), true
	}
	return envValue{}, false
}

// metadataValue: a label or annotation the template sets is pinned; one it
// does not may be added by a controller or admission webhook.
func (p *pod) metadataValue(m map[string]string, key string) envValue {
	if v, ok := m[key]; ok && key != policy.Annotation && key != initdata.Annotation {
		return exactValue(v)
	}
	p.warn(fmt.Sprintf("the pod template does not set %q, which an env fieldRef reads: its value is not pinned", key))
	return patternValue(anyValue)
}

var subscriptPattern = regexp.MustCompile(`^([a-z.]+)\['([^']*)'\]$`)

func subscript(path, field string) (string, bool) {
	m := subscriptPattern.FindStringSubmatch(path)
	if m == nil || m[1] != field {
		return "", false
	}
	return m[2], true
}

// mounts are the container's bind mounts from the kubelet: its volumeMounts,
// the service-account token, the termination-message file and /etc/hosts.
// The host picks the paths, so sources are pinned by shape; hostPath
// sources are pinned exactly.
func (p *pod) mounts(c *corev1.Container) (map[string]policy.Mount, error) {
	root := regexp.QuoteMeta(p.settings.kubeletRoot())
	podDir := root + `/pods/` + podUID
	volumes := map[string]*corev1.Volume{}
	for i := range p.spec.Volumes {
		volumes[p.spec.Volumes[i].Name] = &p.spec.Volumes[i]
	}
	out := map[string]policy.Mount{}
	for i, vm := range c.VolumeMounts {
		if _, dup := out[vm.MountPath]; dup {
			return nil, fmt.Errorf("container %s: two volumeMounts at %s", c.Name, vm.MountPath)
		}
		vol, ok := volumes[vm.Name]
		if !ok {
			return nil, fmt.Errorf("container %s: volumeMount %s names volume %q, which the pod does not declare", c.Name, vm.MountPath, vm.Name)
		}
		source, forcedRO, err := p.volumeSource(c.Name, vol, podDir)
		if err != nil {
			return nil, err
		}
		m := policy.Mount{Type: "bind", SourcePattern: source, ReadOnly: vm.ReadOnly || forcedRO}
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			// The kubelet binds the subpath to a per-mount file of its own;
			// a directory's volume and path reach the agent beside it.
			m.SourcePattern = podDir + `/volume-subpaths/` + regexp.QuoteMeta(vol.Name) + `/` + regexp.QuoteMeta(c.Name) + fmt.Sprintf(`/%d`, i)
			m.SubPathVolumePattern = source
			m.SubPathPattern = subPathPattern(vm)
		}
		m.Memory = vol.EmptyDir != nil && vol.EmptyDir.Medium == corev1.StorageMediumMemory && vm.SubPath == "" && vm.SubPathExpr == ""
		out[vm.MountPath] = m
	}
	automount := p.spec.AutomountServiceAccountToken == nil || *p.spec.AutomountServiceAccountToken
	if _, taken := out[serviceAccountPath]; automount && !taken {
		// The ServiceAccount admission controller adds the projected volume
		// kube-api-access-<5 random characters> to every container.
		out[serviceAccountPath] = policy.Mount{Type: "bind", SourcePattern: podDir + `/volumes/kubernetes\.io~projected/kube-api-access-[a-z0-9]{5}`, ReadOnly: true}
	}
	termination := c.TerminationMessagePath
	if termination == "" {
		termination = defaultTerminationMessagePath
	}
	if _, taken := out[termination]; !taken {
		// The kubelet's per-instance file: 8 random hex digits. It reads
		// the message there once the container exited, so the guest's
		// copy goes back to the host.
		out[termination] = policy.Mount{Type: "bind", SourcePattern: podDir + `/containers/` + regexp.QuoteMeta(c.Name) + `/[0-9a-f]{8}`, WriteBack: true}
	}
	if _, taken := out[etcHostsPath]; !taken {
		out[etcHostsPath] = policy.Mount{Type: "bind", SourcePattern: podDir + `/etc-hosts`}
	}
	return out, nil
}

// The most a kubelet-managed volume's files may hold together: a ConfigMap
// or Secret holds at most 1 MiB in Kubernetes, and so does each source of a
// projected volume; the service-account token's volume holds a token, the
// cluster's CA and the namespace.
const (
	maxVolumeSourceBytes = 1 << 20
	maxTokenVolumeBytes  = 64 << 10
)

// sharedVolumes are the pod's kubelet-managed volumes the host may put into
// the VM (ShareVolume): ConfigMaps, Secrets, projected and downward-API
// volumes by their names in the pod, and the service-account token's
// projected volume the admission controller adds.
func (p *pod) sharedVolumes() []policy.Volume {
	var out []policy.Volume
	for _, vol := range p.spec.Volumes {
		v := policy.Volume{NamePattern: regexp.QuoteMeta(vol.Name), MaxBytes: maxVolumeSourceBytes}
		switch {
		case vol.ConfigMap != nil:
			v.Kind = "configmap"
			v.Keys = p.pinned(&vol)
		case vol.Secret != nil:
			v.Kind = "secret"
			v.Keys = p.pinned(&vol)
		case vol.DownwardAPI != nil:
			v.Kind = "downward-api"
		case vol.Projected != nil:
			v.Kind = "projected"
			v.MaxBytes = int64(max(1, len(vol.Projected.Sources))) * maxVolumeSourceBytes
		default:
			continue
		}
		out = append(out, v)
	}
	if p.spec.AutomountServiceAccountToken == nil || *p.spec.AutomountServiceAccountToken {
		out = append(out, policy.Volume{Kind: "projected", NamePattern: `kube-api-access-[a-z0-9]{5}`, MaxBytes: maxTokenVolumeBytes})
	}
	return out
}

// subPathExprVar is a $(VAR) reference of a subPathExpr, after
// regexp.QuoteMeta.
var subPathExprVar = regexp.MustCompile(`\\\$\\\(([A-Za-z_][A-Za-z0-9_]*)\\\)`)

// subPathPattern is what the path of a volumeMount's subPath may be: the
// subPath itself, or a subPathExpr with each $(VAR) standing for any one
// path component (the kubelet expands it from the container's env).
func subPathPattern(vm corev1.VolumeMount) string {
	if vm.SubPath != "" {
		return regexp.QuoteMeta(path.Clean(vm.SubPath))
	}
	return subPathExprVar.ReplaceAllString(regexp.QuoteMeta(path.Clean(vm.SubPathExpr)), `[^/]*`)
}

// pinned is the pinned content of a ConfigMap or Secret volume, when the
// settings ask for it; a volume it cannot pin is left unpinned, with a
// warning.
func (p *pod) pinned(vol *corev1.Volume) map[string]string {
	if !p.settings.PinVolumeContent {
		return nil
	}
	keys, why := p.objects.pinnedKeys(p.namespace, vol)
	if keys == nil {
		p.warn(fmt.Sprintf("volume %s: content not pinned: %s", vol.Name, why))
		return nil
	}
	return keys
}

// volumeSource is the host path pattern of a volume and whether the kubelet
// always mounts it read-only (the ones it writes itself).
func (p *pod) volumeSource(container string, vol *corev1.Volume, podDir string) (string, bool, error) {
	plugin := func(name string) string {
		return podDir + `/volumes/kubernetes\.io~` + name + `/` + regexp.QuoteMeta(vol.Name)
	}
	switch {
	case vol.HostPath != nil:
		return regexp.QuoteMeta(vol.HostPath.Path), false, nil
	case vol.EmptyDir != nil:
		return plugin("empty-dir"), false, nil
	case vol.ConfigMap != nil:
		return plugin("configmap"), true, nil
	case vol.Secret != nil:
		return plugin("secret"), true, nil
	case vol.Projected != nil:
		return plugin("projected"), true, nil
	case vol.DownwardAPI != nil:
		return plugin("downward-api"), true, nil
	case vol.CSI != nil:
		return plugin("csi") + `/mount`, false, nil
	case vol.Image != nil:
		return "", false, fmt.Errorf("container %s: volume %s is an image volume, which this runtime does not support", container, vol.Name)
	default:
		// PersistentVolumeClaim, ephemeral and the remaining in-tree
		// plugins: the directory names the persistent volume, which is
		// only known once bound.
		p.warn(fmt.Sprintf("container %s: volume %s: its source on the host is pinned only to the pod's volume directory", container, vol.Name))
		return podDir + `/volumes/[^/]+/[^/]+(?:/mount)?`, false, nil
	}
}
