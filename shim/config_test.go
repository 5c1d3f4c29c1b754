package shim

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
log_level = "debug"
state_dir = "/tmp/x"
[hypervisor]
binary = "/usr/bin/qemu-system-x86_64"
accel = "tcg"
kernel = "/img/kernel"
initrd = "/img/initrd"
kernel_params = "foo=bar"
vcpus = 2
memory_mib = 1024
[timeouts]
agent_ready = "5s"
stop = "3s"
[policy]
default = "allow-all"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LogLevel != "debug" || cfg.Hypervisor.VCPUs != 2 || cfg.Hypervisor.MemoryMiB != 1024 ||
		cfg.Timeouts.AgentReady.Duration != 5*time.Second || cfg.Hypervisor.KernelParams != "foo=bar" ||
		cfg.Policy.Default != DefaultPolicyAllowAll {
		t.Fatalf("parsed %+v", cfg)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg != DefaultConfig() {
		t.Fatalf("empty file gives %+v, want the defaults", cfg)
	}
}

func TestParseConfigRejects(t *testing.T) {
	cases := []struct{ toml, wantKey string }{
		{`loglevel = "info"`, "loglevel"},
		{"[hypervisor]\nbinaryy = \"/x\"", "hypervisor.binaryy"},
		{"[timeouts]\nboot = \"1s\"", "timeouts.boot"},
		{`log_level = "verbose"`, "log_level"},
		{"[hypervisor]\naccel = \"hvf\"", "hypervisor.accel"},
		{"[hypervisor]\nvcpus = 0", "hypervisor.vcpus"},
		{"[hypervisor]\nvcpus = \"two\"", "vcpus"},
		{"[hypervisor]\nmemory_mib = 1", "hypervisor.memory_mib"},
		{"[hypervisor]\nkernel = \"relative/kernel\"", "hypervisor.kernel"},
		{"[hypervisor]\ninitrd = \"\"", "hypervisor.initrd"},
		{"[hypervisor]\nfirmware = \"ovmf.fd\"", "hypervisor.firmware"},
		{"[timeouts]\nagent_ready = \"soon\"", "agent_ready"},
		{"[timeouts]\nstop = \"-1s\"", "timeouts.stop"},
		{`state_dir = "run"`, "state_dir"},
		{`log_level = `, "line 1"},
		{"[policy]\ndefault = \"allow\"", "policy.default"},
		{"[policy]\nfile = \"/x\"", "policy.file"},
	}
	for _, c := range cases {
		_, err := ParseConfig([]byte(c.toml))
		if err == nil {
			t.Errorf("%q: accepted", c.toml)
			continue
		}
		if !strings.Contains(err.Error(), c.wantKey) {
			t.Errorf("%q: error %q does not name %q", c.toml, err, c.wantKey)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("[hypervisor]\nvcpus = 2\n"))
	f.Add([]byte("log_level = \"info\"\n[timeouts]\nstop = \"1s\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("accepted a config that does not validate: %v", verr)
			}
		}
	})
}
