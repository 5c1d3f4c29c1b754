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

	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
	"github.com/contrast-vm/contrast/vmimage"
	"github.com/contrast-vm/contrast/vmimage/snp"
)

// DefaultConfigPath is read when the runtime handler passes no ConfigPath option.
const DefaultConfigPath = "/etc/contrast/runtime.toml"

// Config is the runtime configuration of one runtime handler (one TOML file).
type Config struct {
	// LogLevel of the shim: debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// StateDir is where pod state (console log, policy, disk images) lives:
	// <state_dir>/<namespace>/<pod id>. Its length does not matter.
	StateDir string `toml:"state_dir"`
	// SocketDir holds each pod VM's unix sockets in a directory named by a
	// hash of the pod's state directory, linked from it as "sockets": a
	// socket's path must fit 107 bytes whatever the namespace and pod id,
	// as containerd keeps its shims' sockets in /run/containerd/s.
	SocketDir  string           `toml:"socket_dir"`
	Hypervisor HypervisorConfig `toml:"hypervisor"`
	Timeouts   TimeoutsConfig   `toml:"timeouts"`
	Policy     PolicyConfig     `toml:"policy"`
	SNP        SNPConfig        `toml:"snp"`
	Layers     LayersConfig     `toml:"layers"`
	Volumes    VolumesConfig    `toml:"volumes"`
}

// VolumesConfig is where a pod's Kubernetes volumes live in its VM.
type VolumesConfig struct {
	// ScratchMiB is the size of each pod's scratch disk, which holds its
	// emptyDir volumes (other than medium Memory), encrypted with a key
	// only the guest knows. The disk is a sparse file in the pod's state
	// directory: the node's disk holds only what the pod writes. CRI does
	// not pass an emptyDir's sizeLimit, so this bounds them all together.
	ScratchMiB int64 `toml:"scratch_mib"`
}

// minScratchMiB is the smallest scratch disk: room for the file system's
// own structures and more.
const minScratchMiB = 16

// LayersConfig is the node's cache of container image layers converted to
// dm-verity disk images, shared by every pod (and every runtime handler that
// names the same directory).
type LayersConfig struct {
	// CacheDir holds the converted layers by diff ID.
	CacheDir string `toml:"cache_dir"`
	// CacheMaxMiB bounds the cache; the least recently used layers no pod
	// uses go first.
	CacheMaxMiB int64 `toml:"cache_max_mib"`
}

// Confidential computing modes (hypervisor.confidential).
const (
	// ConfidentialNone runs plain VMs: nothing is measured or attested.
	ConfidentialNone = "none"
	// ConfidentialSNP launches every pod VM under AMD SEV-SNP.
	ConfidentialSNP = "snp"
)

// SNPConfig is the AMD SEV-SNP launch. Its firmware also matters without
// SNP: a plain VM is then told the measurement the same launch would have,
// for the simulated SNP device of test images.
type SNPConfig struct {
	// Firmware is the OVMF AmdSevX64 build (QEMU -bios); required in snp mode.
	Firmware string `toml:"firmware"`
	// CPUModel is a named QEMU CPU model, never "host": its signature is
	// measured.
	CPUModel string `toml:"cpu_model"`
	// Policy is the SNP guest policy (64 bits, written as 0x30000). An
	// int64: the TOML decoder wraps a negative number into a uint64.
	Policy int64 `toml:"policy"`
	// CBitPos and ReducedPhysBits: 0 takes the host's C-bit position
	// (CPUID 0x8000001F) and 1 reduced bit.
	CBitPos         int `toml:"cbitpos"`
	ReducedPhysBits int `toml:"reduced_phys_bits"`
	// IDBlock and IDAuth are files holding a base64 ID block and ID
	// authentication structure (contrast measure --id-key writes them); the
	// firmware then refuses a launch whose measurement or policy differ.
	IDBlock string `toml:"id_block"`
	IDAuth  string `toml:"id_auth"`
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
	Accel        string `toml:"accel"`        // auto, kvm or tcg
	Confidential string `toml:"confidential"` // none or snp
	Kernel       string `toml:"kernel"`
	Initrd       string `toml:"initrd"`
	// RootDisk is the image's rootfs.img (an image built without
	// --format initrd): the guest's root file system, opened through
	// dm-verity by the image's command line. Setting it replaces initrd.
	RootDisk     string `toml:"rootfs"`
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
		LogLevel:  "info",
		StateDir:  podstate.DefaultStateDir,
		SocketDir: podstate.DefaultSocketDir,
		Hypervisor: HypervisorConfig{
			Binary:       "/usr/bin/qemu-system-x86_64",
			Accel:        "auto",
			Confidential: ConfidentialNone,
			Kernel:       "/opt/contrast/image/kernel",
			Initrd:       "/opt/contrast/image/initrd",
			VCPUs:        1,
			MemoryMiB:    512,
		},
		Timeouts: TimeoutsConfig{
			AgentReady: Duration{30 * time.Second},
			Stop:       Duration{10 * time.Second},
		},
		Policy: PolicyConfig{Default: DefaultPolicyDenyAll},
		Layers: LayersConfig{
			CacheDir:    "/var/cache/contrast/layers",
			CacheMaxMiB: 20 << 10,
		},
		Volumes: VolumesConfig{ScratchMiB: 10 << 10},
		SNP: SNPConfig{
			CPUModel: DefaultSNPCPUModel,
			Policy:   DefaultSNPPolicy,
		},
	}
}

// SNP launch defaults.
const (
	// DefaultSNPCPUModel runs on every SEV-SNP generation (Milan, Genoa,
	// Turin) and is what sev-snp-measure assumes.
	DefaultSNPCPUModel = "EPYC-v4"
	// DefaultSNPPolicy allows SMT (bit 17) and nothing else: no debugging,
	// no migration agent, single socket not required (bit 16 must be one).
	DefaultSNPPolicy = 0x30000
)

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
	// A root disk replaces the default initrd; one set in the file too is
	// a conflict Validate reports.
	if cfg.Hypervisor.RootDisk != "" && !md.IsDefined("hypervisor", "initrd") {
		cfg.Hypervisor.Initrd = ""
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
	// The longest pod state path must fit PATH_MAX: containerd namespaces
	// and ids are at most 76 characters.
	if n := len(filepath.Join(c.StateDir, strings.Repeat("n", maxContainerdName), strings.Repeat("i", maxContainerdName), longestStateFileName)); n >= pathMax {
		return fmt.Errorf("state_dir: %q is too long: a pod's files would need %d bytes of path, more than the kernel's %d", c.StateDir, n, pathMax-1)
	}
	if !filepath.IsAbs(c.SocketDir) {
		return fmt.Errorf("socket_dir: %q is not an absolute path", c.SocketDir)
	}
	if err := qemu.CheckSocketDir(podSocketDir(c, "")); err != nil {
		return fmt.Errorf("socket_dir: %q is too long for the pods' unix sockets: at most %d bytes fit", c.SocketDir, qemu.MaxSocketDirLen-1-podstate.SocketHashLen)
	}
	h := c.Hypervisor
	switch h.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("hypervisor.accel: %q is not one of auto, kvm, tcg", h.Accel)
	}
	root := struct{ key, val string }{"hypervisor.initrd", h.Initrd}
	switch {
	case h.Initrd != "" && h.RootDisk != "":
		return fmt.Errorf("hypervisor.initrd and hypervisor.rootfs: both set, the guest boots from one: set rootfs for an image with %s, initrd for one built with --format initrd", vmimage.RootDiskFile)
	case h.RootDisk != "":
		root = struct{ key, val string }{"hypervisor.rootfs", h.RootDisk}
	}
	for _, p := range []struct{ key, val string }{
		{"hypervisor.binary", h.Binary}, {"hypervisor.kernel", h.Kernel}, root,
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
	if err := c.validateSNP(); err != nil {
		return err
	}
	switch c.Policy.Default {
	case DefaultPolicyDenyAll, DefaultPolicyAllowAll:
	default:
		return fmt.Errorf("policy.default: %q is not one of %s, %s", c.Policy.Default, DefaultPolicyDenyAll, DefaultPolicyAllowAll)
	}
	if !filepath.IsAbs(c.Layers.CacheDir) {
		return fmt.Errorf("layers.cache_dir: %q is not an absolute path", c.Layers.CacheDir)
	}
	if c.Layers.CacheMaxMiB < 1 {
		return fmt.Errorf("layers.cache_max_mib: %d is not positive", c.Layers.CacheMaxMiB)
	}
	if c.Volumes.ScratchMiB < minScratchMiB || c.Volumes.ScratchMiB > 1<<30 {
		return fmt.Errorf("volumes.scratch_mib: %d is not between %d and %d", c.Volumes.ScratchMiB, minScratchMiB, 1<<30)
	}
	if c.Timeouts.AgentReady.Duration <= 0 {
		return fmt.Errorf("timeouts.agent_ready: must be positive, is %s", c.Timeouts.AgentReady)
	}
	if c.Timeouts.Stop.Duration <= 0 {
		return fmt.Errorf("timeouts.stop: must be positive, is %s", c.Timeouts.Stop)
	}
	return nil
}

// snpPolicyMustBeOne is bit 16 of the SNP guest policy, reserved as one.
const snpPolicyMustBeOne = 1 << 16

// validateSNP checks hypervisor.confidential and the [snp] section.
func (c Config) validateSNP() error {
	h, s := c.Hypervisor, c.SNP
	switch h.Confidential {
	case ConfidentialNone, ConfidentialSNP:
	default:
		return fmt.Errorf("hypervisor.confidential: %q is not one of %s, %s", h.Confidential, ConfidentialNone, ConfidentialSNP)
	}
	for _, p := range []struct{ key, val string }{
		{"snp.firmware", s.Firmware}, {"snp.id_block", s.IDBlock}, {"snp.id_auth", s.IDAuth},
	} {
		if p.val != "" && !filepath.IsAbs(p.val) {
			return fmt.Errorf("%s: %q is not an absolute path", p.key, p.val)
		}
	}
	switch s.CPUModel {
	case "host", "max":
		return fmt.Errorf("snp.cpu_model: %q depends on the host, but the CPU model is measured: name one (like %s)", s.CPUModel, DefaultSNPCPUModel)
	}
	if _, err := snp.VCPUSignature(s.CPUModel); err != nil {
		return fmt.Errorf("snp.cpu_model: %w", err)
	}
	if s.Policy < 0 {
		return fmt.Errorf("snp.policy: %d is negative", s.Policy)
	}
	if s.Policy&snpPolicyMustBeOne == 0 {
		return fmt.Errorf("snp.policy: %#x lacks bit 16 (0x10000), which SEV-SNP requires set", s.Policy)
	}
	if s.CBitPos < 0 || s.CBitPos > 63 {
		return fmt.Errorf("snp.cbitpos: %d is outside 0..63 (0: the host's)", s.CBitPos)
	}
	if s.ReducedPhysBits < 0 || s.ReducedPhysBits > 63 {
		return fmt.Errorf("snp.reduced_phys_bits: %d is outside 0..63 (0: 1)", s.ReducedPhysBits)
	}
	if (s.IDBlock == "") != (s.IDAuth == "") {
		return errors.New("snp.id_block, snp.id_auth: give both or neither (the firmware checks an ID block only with its signature)")
	}
	if h.Confidential != ConfidentialSNP {
		return nil
	}
	if s.Firmware == "" {
		return errors.New("snp.firmware: must be set when hypervisor.confidential is snp (an OVMF AmdSevX64 build)")
	}
	if h.Firmware != "" {
		return errors.New("hypervisor.firmware: must be empty when hypervisor.confidential is snp: the SNP firmware is snp.firmware")
	}
	if h.Accel == "tcg" {
		return errors.New("hypervisor.accel: tcg cannot run SEV-SNP guests (hypervisor.confidential is snp): use auto or kvm")
	}
	if h.KernelParams != "" {
		return errors.New("hypervisor.kernel_params: must be empty when hypervisor.confidential is snp: " +
			"the kernel command line is measured, and a verifier compares it with the image's reference values, " +
			"so the guest boots with the image's own command line (set it when building the image)")
	}
	return nil
}
