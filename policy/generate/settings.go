package generate

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/contrast-vm/contrast/policy"
)

// Settings is what the pod YAML cannot say: what the pod's owner allows the
// host to do beyond starting the pod. It is read from JSON or YAML by
// LoadSettings; the package documentation describes the file.
type Settings struct {
	// Containers holds settings per container name; the entry "*" applies to
	// every container. A named entry's Stdin and Logs win over "*"; Exec and
	// EnvPatterns of both are added together.
	Containers map[string]ContainerSettings `json:"containers,omitempty"`
	// Requests allows (true) or denies (false) each request kind that the
	// rules decide by the container's name alone. A kind left out keeps its
	// default (DefaultSettings).
	Requests map[policy.Kind]bool `json:"requests,omitempty"`
	// KubeletRootDir is the kubelet's --root-dir, under which the host keeps
	// the pod's volumes; default /var/lib/kubelet.
	KubeletRootDir string `json:"kubeletRootDir,omitempty"`
	// Network says what the host may configure of the pod VM's network
	// (ConfigureNetwork). A field left out keeps its default.
	Network NetworkSettings `json:"network,omitzero"`
	// SeccompProfiles holds the content (an OCI LinuxSeccomp as JSON) of
	// each Localhost seccomp profile the pods name, by localhostProfile:
	// the file lives on the node, so the policy pins it only when given.
	SeccompProfiles map[string]json.RawMessage `json:"seccompProfiles,omitempty"`
	// RuntimeDefaultSeccomp names the runtimes whose rendering of
	// seccompProfile RuntimeDefault the policy accepts, each pinned in
	// full: RuntimeContainerd2 and RuntimeContainerd17; none named means
	// both, the release lines nodes run. containerd 1.7's profile allows io_uring,
	// which 2.x's denies: leave it out where no node runs 1.7.
	RuntimeDefaultSeccomp []string `json:"runtimeDefaultSeccomp,omitempty"`
	// PortForward says which ports on the pod's loopback the host may
	// connect to (kubectl port-forward).
	PortForward PortForwardSettings `json:"portForward,omitzero"`
	// PinVolumeContent pins the content of each ConfigMap and Secret volume
	// whose object is in the input beside the workload: the host can then
	// serve no other keys or content (an update it cannot pin is refused,
	// and the container keeps the content it had). Default false: a
	// ConfigMap changes without a new policy.
	PinVolumeContent bool `json:"pinVolumeContent,omitempty"`
}

// PortForwardSettings choose the TCP ports the host may forward to. By
// default they are the ports the pod's containers declare (containerPorts
// of protocol TCP): the ports a Kubernetes user port-forwards to. A port on
// the pod's loopback that no container declares (an admin endpoint, a
// sidecar's local API) stays closed unless named here.
type PortForwardSettings struct {
	// DeclaredPorts opens the containers' declared TCP ports; default true.
	DeclaredPorts *bool `json:"declaredPorts,omitempty"`
	// Ports are further TCP ports (1..65535) to open.
	Ports []int `json:"ports,omitempty"`
}

// data is the policy's port list for the pod spec: the declared TCP ports
// (when allowed) and the named ones, sorted, each once.
func (f PortForwardSettings) data(spec *corev1.PodSpec) policy.Forwarding {
	var ports []int
	if f.DeclaredPorts == nil || *f.DeclaredPorts {
		for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for _, c := range list {
				for _, p := range c.Ports {
					if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
						ports = append(ports, int(p.ContainerPort))
					}
				}
			}
		}
	}
	ports = append(ports, f.Ports...)
	slices.Sort(ports)
	return policy.Forwarding{Ports: slices.Compact(ports)}
}

func (f PortForwardSettings) validate() error {
	for i, p := range f.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("ports[%d] %d is not a TCP port (1..65535)", i, p)
		}
	}
	return nil
}

// The runtimes whose RuntimeDefault seccomp profile the generator renders.
const (
	RuntimeContainerd2  = "containerd-2"
	RuntimeContainerd17 = "containerd-1.7"
)

// seccompRuntimes are the runtimes RuntimeDefaultSeccomp may name.
var seccompRuntimes = []string{RuntimeContainerd2, RuntimeContainerd17}

// runtimeDefaultSeccomp are the runtimes whose RuntimeDefault rendering
// the policy accepts.
func (s Settings) runtimeDefaultSeccomp() []string {
	if len(s.RuntimeDefaultSeccomp) == 0 {
		return seccompRuntimes
	}
	return s.RuntimeDefaultSeccomp
}

// NetworkSettings bound what the host may configure of the pod VM's network
// from the pod's CNI interface. The zero value of a field means its default,
// so settings built in code need not start from DefaultSettings.
type NetworkSettings struct {
	// Allow lets the host configure the pod VM's network. Default true;
	// false denies ConfigureNetwork, leaving the VM with only loopback.
	Allow *bool `json:"allow,omitempty"`
	// InterfacePattern is an RE2 pattern, anchored at both ends, for the
	// interface names; default DefaultInterfacePattern. lo is denied always.
	InterfacePattern string `json:"interfacePattern,omitempty"`
	// MaxInterfaces is the most interfaces the host may configure; default
	// DefaultMaxInterfaces. To allow none, set Allow to false.
	MaxInterfaces int `json:"maxInterfaces,omitempty"`
	// MTUMin and MTUMax bound the interfaces' MTU; defaults DefaultMTUMin
	// and DefaultMTUMax.
	MTUMin int `json:"mtuMin,omitempty"`
	MTUMax int `json:"mtuMax,omitempty"`
	// ForbiddenPrefixes are CIDR prefixes (no host bits) no address, route
	// destination, gateway or neighbour may lie in, e.g. the node network or
	// a metadata service. They add to DefaultForbiddenPrefixes, which always
	// apply.
	ForbiddenPrefixes []string `json:"forbiddenPrefixes,omitempty"`
}

// The network defaults: one CNI interface named like the bridge, Calico and
// Cilium plugins name it, any MTU an Ethernet link can have (68 is IPv4's
// minimum).
const (
	DefaultInterfacePattern = "eth[0-9]+"
	DefaultMaxInterfaces    = 1
	DefaultMTUMin           = 68
	DefaultMTUMax           = 65535
)

// DefaultForbiddenPrefixes are the prefixes whose traffic stays inside the
// VM or is no station's: loopback, the unspecified addresses (as addresses;
// a default route's 0.0.0.0/0 does not lie inside 0.0.0.0/32), multicast
// and IPv4's limited broadcast. Link-local 169.254.0.0/16 is not among
// them: Calico routes through 169.254.1.1.
func DefaultForbiddenPrefixes() []string {
	return []string{
		"127.0.0.0/8", "::1/128",
		"0.0.0.0/32", "::/128",
		"224.0.0.0/4", "ff00::/8",
		"255.255.255.255/32",
	}
}

// ContainerSettings are the settings for one container (or all, as "*").
type ContainerSettings struct {
	// Exec lists further command lines (exact argv) the host may exec in the
	// container, e.g. for `kubectl exec`.
	Exec [][]string `json:"exec,omitempty"`
	// Stdin allows the host to write the container's stdin even when the
	// YAML does not set stdin: true. Default false.
	Stdin *bool `json:"stdin,omitempty"`
	// Logs allows the host to read the container's stdout and stderr (and
	// so `kubectl logs`). Default true.
	Logs *bool `json:"logs,omitempty"`
	// EnvPatterns are further RE2 patterns, NAME=VALUE and anchored at both
	// ends, for environment entries the container may have.
	EnvPatterns []string `json:"envPatterns,omitempty"`
}

// AllContainers is the Settings.Containers key that applies to every container.
const AllContainers = "*"

// DefaultKubeletRootDir is the kubelet's default --root-dir.
const DefaultKubeletRootDir = "/var/lib/kubelet"

// idOnlyKinds are the request kinds the rules decide by Data.Requests: they
// name a container (or, WaitOOM and GetReport, none) and carry nothing else
// the policy checks. GetReport is allowed by default: a report reveals
// only what a verifier checks (measurement, policy hash, the caller's nonce).
var idOnlyKinds = []policy.Kind{
	policy.StartContainer, policy.SignalProcess, policy.WaitProcess, policy.CloseStdin,
	policy.ListProcesses, policy.RemoveContainer, policy.ResizePty, policy.PauseContainer,
	policy.ResumeContainer, policy.UpdateContainer, policy.StatsContainer, policy.WaitOOM,
	policy.GetReport,
}

// DefaultSettings allows every request kind decided by the container alone,
// logs for every container and nothing else beyond the YAML.
func DefaultSettings() Settings {
	requests := make(map[policy.Kind]bool, len(idOnlyKinds))
	for _, k := range idOnlyKinds {
		requests[k] = true
	}
	allow := true
	return Settings{
		Requests:       requests,
		KubeletRootDir: DefaultKubeletRootDir,
		Network: NetworkSettings{
			Allow:            &allow,
			InterfacePattern: DefaultInterfacePattern,
			MaxInterfaces:    DefaultMaxInterfaces,
			MTUMin:           DefaultMTUMin,
			MTUMax:           DefaultMTUMax,
		},
	}
}

// LoadSettings reads settings from a JSON or YAML file over DefaultSettings:
// a request kind or field the file leaves out keeps its default. Unknown keys
// are an error, so a misspelt setting is not silently ignored.
func LoadSettings(path string) (Settings, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Settings{}, fmt.Errorf("read settings: %w", err)
	}
	s, err := ParseSettings(raw)
	if err != nil {
		return Settings{}, fmt.Errorf("settings %s: %w", path, err)
	}
	return s, nil
}

// ParseSettings is LoadSettings for settings already in memory.
func ParseSettings(raw []byte) (Settings, error) {
	var file Settings
	if err := yaml.UnmarshalStrict(raw, &file); err != nil {
		return Settings{}, err
	}
	s := DefaultSettings()
	s.Containers = file.Containers
	for k, v := range file.Requests {
		s.Requests[k] = v
	}
	if file.KubeletRootDir != "" {
		s.KubeletRootDir = file.KubeletRootDir
	}
	s.Network = s.Network.over(file.Network)
	s.SeccompProfiles = file.SeccompProfiles
	s.RuntimeDefaultSeccomp = file.RuntimeDefaultSeccomp
	s.PortForward = file.PortForward
	s.PinVolumeContent = file.PinVolumeContent
	if err := s.validate(); err != nil {
		return Settings{}, err
	}
	return s, nil
}

// envEntryPattern is the shape every env pattern must have, so a pattern
// cannot stand for more than one entry or leave the name open by accident.
var envPatternShape = regexp.MustCompile(`^[^=]+=`)

func (s Settings) validate() error {
	for k := range s.Requests {
		if !slices.Contains(idOnlyKinds, k) {
			return fmt.Errorf("requests: %q is not a request kind decided by the container alone (those are %s)", k, kindList(idOnlyKinds))
		}
	}
	if s.KubeletRootDir != "" && !strings.HasPrefix(s.KubeletRootDir, "/") {
		return fmt.Errorf("kubeletRootDir %q is not an absolute path", s.KubeletRootDir)
	}
	if err := s.Network.validate(); err != nil {
		return fmt.Errorf("network.%w", err)
	}
	if err := s.PortForward.validate(); err != nil {
		return fmt.Errorf("portForward.%w", err)
	}
	for i, r := range s.RuntimeDefaultSeccomp {
		if !slices.Contains(seccompRuntimes, r) {
			return fmt.Errorf("runtimeDefaultSeccomp[%d] %q is not one of %s", i, r, strings.Join(seccompRuntimes, ", "))
		}
	}
	for name, c := range s.Containers {
		if name == "" {
			return fmt.Errorf("containers: an empty container name (use %q for every container)", AllContainers)
		}
		for i, argv := range c.Exec {
			if len(argv) == 0 {
				return fmt.Errorf("containers.%s.exec[%d] is empty; an exec needs at least the program", name, i)
			}
		}
		for i, p := range c.EnvPatterns {
			if !envPatternShape.MatchString(p) {
				return fmt.Errorf("containers.%s.envPatterns[%d] %q is not of the form NAME=VALUE", name, i, p)
			}
			if _, err := regexp.Compile("^(?:" + p + ")$"); err != nil {
				return fmt.Errorf("containers.%s.envPatterns[%d]: %w", name, i, err)
			}
		}
	}
	return nil
}

func kindList(kinds []policy.Kind) string {
	s := make([]string, len(kinds))
	for i, k := range kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// forContainer merges the "*" entry and the container's own entry.
func (s Settings) forContainer(name string) (exec [][]string, stdin, logs bool, envPatterns []string) {
	logs = true
	for _, key := range []string{AllContainers, name} {
		c, ok := s.Containers[key]
		if !ok {
			continue
		}
		exec = append(exec, c.Exec...)
		envPatterns = append(envPatterns, c.EnvPatterns...)
		if c.Stdin != nil {
			stdin = *c.Stdin
		}
		if c.Logs != nil {
			logs = *c.Logs
		}
	}
	return exec, stdin, logs, envPatterns
}

func (s Settings) kubeletRoot() string {
	if s.KubeletRootDir == "" {
		return DefaultKubeletRootDir
	}
	return strings.TrimRight(s.KubeletRootDir, "/")
}

// over returns n with the fields file sets replacing n's.
func (n NetworkSettings) over(file NetworkSettings) NetworkSettings {
	if file.Allow != nil {
		n.Allow = file.Allow
	}
	if file.InterfacePattern != "" {
		n.InterfacePattern = file.InterfacePattern
	}
	if file.MaxInterfaces != 0 {
		n.MaxInterfaces = file.MaxInterfaces
	}
	if file.MTUMin != 0 {
		n.MTUMin = file.MTUMin
	}
	if file.MTUMax != 0 {
		n.MTUMax = file.MTUMax
	}
	n.ForbiddenPrefixes = append(slices.Clone(n.ForbiddenPrefixes), file.ForbiddenPrefixes...)
	return n
}

// validate checks the settings as they resolve with defaults; its errors
// start with the field name.
func (n NetworkSettings) validate() error {
	d := n.data()
	if _, err := regexp.Compile("^(?:" + d.InterfacePattern + ")$"); err != nil {
		return fmt.Errorf("interfacePattern: %w", err)
	}
	if n.MaxInterfaces < 0 {
		return fmt.Errorf("maxInterfaces %d is negative", n.MaxInterfaces)
	}
	if n.MTUMin < 0 || n.MTUMax < 0 || d.MTUMin > d.MTUMax {
		return fmt.Errorf("mtuMin %d and mtuMax %d are no range", d.MTUMin, d.MTUMax)
	}
	for i, p := range n.ForbiddenPrefixes {
		if err := policy.CheckPrefix(p); err != nil {
			return fmt.Errorf("forbiddenPrefixes[%d]: %w", i, err)
		}
	}
	return nil
}

// data is the policy's network section for these settings: zero fields take
// their defaults, and the forbidden prefixes are the defaults and the
// settings' own, without repeats.
func (n NetworkSettings) data() policy.Network {
	d := policy.Network{
		Allow:             n.Allow == nil || *n.Allow,
		InterfacePattern:  cmp.Or(n.InterfacePattern, DefaultInterfacePattern),
		MaxInterfaces:     cmp.Or(n.MaxInterfaces, DefaultMaxInterfaces),
		MTUMin:            cmp.Or(n.MTUMin, DefaultMTUMin),
		MTUMax:            cmp.Or(n.MTUMax, DefaultMTUMax),
		ForbiddenPrefixes: DefaultForbiddenPrefixes(),
	}
	for _, p := range n.ForbiddenPrefixes {
		if !slices.Contains(d.ForbiddenPrefixes, p) {
			d.ForbiddenPrefixes = append(d.ForbiddenPrefixes, p)
		}
	}
	return d
}
