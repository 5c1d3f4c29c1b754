package generate

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

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
	return Settings{Requests: requests, KubeletRootDir: DefaultKubeletRootDir}
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
