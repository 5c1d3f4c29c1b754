package shim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultConfigPath is read when the runtime handler passes no ConfigPath option.
const DefaultConfigPath = "/etc/contrast/runtime.toml"

// Config is the runtime configuration of one runtime handler (one TOML file).
type Config struct {
	// LogLevel of the shim: debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// StateDir is where pod state (sockets, console log, disk images) lives.
	StateDir   string           `toml:"state_dir"`
	Hypervisor HypervisorConfig `toml:"hypervisor"`
	Timeouts   TimeoutsConfig   `toml:"timeouts"`
	Policy     PolicyConfig     `toml:"policy"`
}

// Default policies for pods that carry no policy annotation.
const (
	// DefaultPolicyDenyAll refuses such pods before a VM is started.
	DefaultPolicyDenyAll = "deny-all"
	// DefaultPolicyAllowAll runs them under a policy that allows every
	// request: for development only, and logged as such for every pod.
	DefaultPolicyAllowAll = "allow-all"
)

// PolicyConfig chooses what happens to pods without a policy.
type PolicyConfig struct {
	Default string `toml:"default"`
}

// HypervisorConfig names the VM monitor and the guest image.
type HypervisorConfig struct {
	Binary       string `toml:"binary"`
	Accel        string `toml:"accel"` // auto, kvm or tcg
	Kernel       string `toml:"kernel"`
	Initrd       string `toml:"initrd"`
	Firmware     string `toml:"firmware"`
	KernelParams string `toml:"kernel_params"`
	VCPUs        int    `toml:"vcpus"`
	MemoryMiB    int    `toml:"memory_mib"`
}

// TimeoutsConfig bounds the slow steps of a pod's life.
type TimeoutsConfig struct {
	// AgentReady bounds VM boot until the guest agent answers.
	AgentReady Duration `toml:"agent_ready"`
	// Stop bounds a VM's orderly shutdown before it is killed.
	Stop Duration `toml:"stop"`
}

// Duration is a time.Duration written as "30s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration (like \"30s\"): %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig is what a configuration file overrides.
func DefaultConfig() Config {
	return Config{
		LogLevel: "info",
		StateDir: "/run/contrast",
		Hypervisor: HypervisorConfig{
			Binary:    "/usr/bin/qemu-system-x86_64",
			Accel:     "auto",
			Kernel:    "/opt/contrast/image/kernel",
			Initrd:    "/opt/contrast/image/initrd",
			VCPUs:     1,
			MemoryMiB: 512,
		},
		Timeouts: TimeoutsConfig{
			AgentReady: Duration{30 * time.Second},
			Stop:       Duration{10 * time.Second},
		},
		Policy: PolicyConfig{Default: DefaultPolicyDenyAll},
	}
}

// LoadConfig reads a configuration file. Unknown keys and bad values are
// errors that name the key.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read runtime configuration: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("runtime configuration %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses TOML on top of DefaultConfig and validates the result.
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return Config{}, fmt.Errorf("%s", perr.ErrorWithPosition())
		}
		return Config{}, err
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("unknown key %s", strings.Join(keys, ", "))
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks values that parse but make no sense.
func (c Config) Validate() error {
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("state_dir: %q is not an absolute path", c.StateDir)
	}
	h := c.Hypervisor
	switch h.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("hypervisor.accel: %q is not one of auto, kvm, tcg", h.Accel)
	}
	for _, p := range []struct{ key, val string }{
		{"hypervisor.binary", h.Binary}, {"hypervisor.kernel", h.Kernel}, {"hypervisor.initrd", h.Initrd},
	} {
		if p.val == "" {
			return fmt.Errorf("%s: must be set", p.key)
		}
		if !filepath.IsAbs(p.val) {
			return fmt.Errorf("%s: %q is not an absolute path", p.key, p.val)
		}
	}
	if h.Firmware != "" && !filepath.IsAbs(h.Firmware) {
		return fmt.Errorf("hypervisor.firmware: %q is not an absolute path", h.Firmware)
	}
	if h.VCPUs < 1 || h.VCPUs > 255 {
		return fmt.Errorf("hypervisor.vcpus: %d is outside 1..255", h.VCPUs)
	}
	if h.MemoryMiB < 64 || h.MemoryMiB > 1<<20 {
		return fmt.Errorf("hypervisor.memory_mib: %d is outside 64..1048576", h.MemoryMiB)
	}
	if strings.ContainsAny(h.KernelParams, "\n\x00") {
		return fmt.Errorf("hypervisor.kernel_params: contains a newline or NUL")
	}
	switch c.Policy.Default {
	case DefaultPolicyDenyAll, DefaultPolicyAllowAll:
	default:
		return fmt.Errorf("policy.default: %q is not one of %s, %s", c.Policy.Default, DefaultPolicyDenyAll, DefaultPolicyAllowAll)
	}
	if c.Timeouts.AgentReady.Duration <= 0 {
		return fmt.Errorf("timeouts.agent_ready: must be positive, is %s", c.Timeouts.AgentReady)
	}
	if c.Timeouts.Stop.Duration <= 0 {
		return fmt.Errorf("timeouts.stop: must be positive, is %s", c.Timeouts.Stop)
	}
	return nil
}
