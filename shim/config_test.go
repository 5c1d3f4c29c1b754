package shim

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
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

func TestParseConfigSNP(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
[hypervisor]
accel = "kvm"
confidential = "snp"
[snp]
firmware = "/opt/contrast/OVMF.amdsev.fd"
cpu_model = "EPYC-Genoa"
policy = 0x30000
cbitpos = 51
reduced_phys_bits = 1
id_block = "/etc/contrast/id-block.b64"
id_auth = "/etc/contrast/id-auth.b64"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := SNPConfig{
		Firmware: "/opt/contrast/OVMF.amdsev.fd", CPUModel: "EPYC-Genoa", Policy: 0x30000, CBitPos: 51, ReducedPhysBits: 1,
		IDBlock: "/etc/contrast/id-block.b64", IDAuth: "/etc/contrast/id-auth.b64",
	}
	if cfg.Hypervisor.Confidential != ConfidentialSNP || cfg.SNP != want {
		t.Fatalf("parsed %+v, %+v", cfg.Hypervisor, cfg.SNP)
	}

	// The firmware alone, for a plain VM's expected measurement.
	cfg, err = ParseConfig([]byte("[snp]\nfirmware = \"/fw/OVMF.amdsev.fd\"\n[hypervisor]\nkernel_params = \"x=1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hypervisor.Confidential != ConfidentialNone || cfg.SNP.CPUModel != DefaultSNPCPUModel || cfg.SNP.Policy != DefaultSNPPolicy {
		t.Fatalf("defaults not kept: %+v, %+v", cfg.Hypervisor, cfg.SNP)
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

// TestParseConfigRootDisk: rootfs replaces the default initrd, and an
// empty initrd beside it (as an installer template may render) is none.
func TestParseConfigRootDisk(t *testing.T) {
	for _, text := range []string{
		"[hypervisor]\nkernel = \"/img/kernel\"\nrootfs = \"/img/rootfs.img\"",
		"[hypervisor]\nkernel = \"/img/kernel\"\ninitrd = \"\"\nrootfs = \"/img/rootfs.img\"",
	} {
		cfg, err := ParseConfig([]byte(text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if cfg.Hypervisor.RootDisk != "/img/rootfs.img" || cfg.Hypervisor.Initrd != "" {
			t.Errorf("%q: rootfs %q, initrd %q", text, cfg.Hypervisor.RootDisk, cfg.Hypervisor.Initrd)
		}
	}
	// An initrd alone keeps working; rootfs stays unset.
	cfg, err := ParseConfig([]byte("[hypervisor]\ninitrd = \"/img/initrd\""))
	if err != nil || cfg.Hypervisor.Initrd != "/img/initrd" || cfg.Hypervisor.RootDisk != "" {
		t.Errorf("initrd only: %+v, %v", cfg.Hypervisor, err)
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
		{"[hypervisor]\nrootfs = \"rootfs.img\"", "hypervisor.rootfs"},
		{"[hypervisor]\ninitrd = \"/img/initrd\"\nrootfs = \"/img/rootfs.img\"", "hypervisor.initrd and hypervisor.rootfs"},
		{"[hypervisor]\nfirmware = \"ovmf.fd\"", "hypervisor.firmware"},
		{"[timeouts]\nagent_ready = \"soon\"", "agent_ready"},
		{"[timeouts]\nstop = \"-1s\"", "timeouts.stop"},
		{`state_dir = "run"`, "state_dir"},
		{`log_level = `, "line 1"},
		{"[policy]\ndefault = \"allow\"", "policy.default"},
		{"[layers]\ncache_dir = \"cache\"", "layers.cache_dir"},
		{"[layers]\ncache_max_mib = 0", "layers.cache_max_mib"},
		{"[volumes]\nscratch_mib = 1", "volumes.scratch_mib"},
		{"[volumes]\nscratch = 1", "volumes.scratch"},
		{"[layers]\ncache = \"/x\"", "layers.cache"},
		{"[policy]\nfile = \"/x\"", "policy.file"},
		{"[hypervisor]\nconfidential = \"sev\"", "hypervisor.confidential"},
		{"[hypervisor]\nconfidential = true", "confidential"},
		{"[snp]\nfirmwre = \"/x\"", "snp.firmwre"},
		{"[snp]\nfirmware = \"ovmf.fd\"", "snp.firmware"},
		{"[snp]\ncpu_model = \"host\"", "snp.cpu_model"},
		{"[snp]\ncpu_model = \"max\"", "snp.cpu_model"},
		{"[snp]\ncpu_model = \"Skylake-Server\"", "snp.cpu_model"},
		{"[snp]\ncpu_model = \"\"", "snp.cpu_model"},
		{"[snp]\npolicy = 0x20000", "snp.policy"},
		{"[snp]\npolicy = -1", "policy"},
		{"[snp]\npolicy = \"0x30000\"", "policy"},
		{"[snp]\ncbitpos = 64", "snp.cbitpos"},
		{"[snp]\ncbitpos = -1", "snp.cbitpos"},
		{"[snp]\nreduced_phys_bits = 99", "snp.reduced_phys_bits"},
		{"[snp]\nid_block = \"/a\"", "snp.id_block, snp.id_auth"},
		{"[snp]\nid_auth = \"/a\"\nid_block = \"b\"", "snp.id_block"},
		{"[hypervisor]\nconfidential = \"snp\"", "snp.firmware: must be set"},
		{"[hypervisor]\nconfidential = \"snp\"\nfirmware = \"/fw/OVMF.fd\"\n[snp]\nfirmware = \"/fw/amdsev.fd\"", "hypervisor.firmware"},
		{"[hypervisor]\nconfidential = \"snp\"\naccel = \"tcg\"\n[snp]\nfirmware = \"/fw/amdsev.fd\"", "hypervisor.accel"},
		{"[hypervisor]\nconfidential = \"snp\"\nkernel_params = \"debug\"\n[snp]\nfirmware = \"/fw/amdsev.fd\"", "hypervisor.kernel_params: must be empty when hypervisor.confidential is snp: the kernel command line is measured"},
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

// TestSocketPathsFit: whatever the state dir (60 characters here), the
// containerd namespace and the pod id, a pod's sockets fit sockaddr_un;
// only socket_dir's length matters, and it is checked at load.
func TestSocketPathsFit(t *testing.T) {
	stateDir := "/run/" + strings.Repeat("a-platform-team-state-", 3)[:55]
	cfg, err := ParseConfig([]byte(fmt.Sprintf("state_dir = %q\n", stateDir)))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.StateDir) != 60 || cfg.SocketDir != "/run/contrast/s" {
		t.Fatalf("state_dir %q (%d), socket_dir %q", cfg.StateDir, len(cfg.StateDir), cfg.SocketDir)
	}
	seen := map[string]bool{}
	for _, ns := range []string{"k8s.io", "a-very-long-namespace-name-used-by-some-platform-team", strings.Repeat("n", 76)} {
		for _, id := range []string{"p", strings.Repeat("f", 64), strings.Repeat("i", 76)} {
			dir := podSocketDir(cfg, podStateDir(cfg, ns, id))
			if err := qemu.CheckSocketDir(dir); err != nil {
				t.Errorf("namespace %s, pod %s: %v", ns, id, err)
			}
			if len(dir) != len(cfg.SocketDir)+1+podstate.SocketHashLen || seen[dir] {
				t.Errorf("namespace %s, pod %s: socket dir %s is not of fixed length or not unique", ns, id, dir)
			}
			seen[dir] = true
		}
	}
	// The longest socket_dir load accepts still fits.
	longest := "/" + strings.Repeat("s", qemu.MaxSocketDirLen-podstate.SocketHashLen-2)
	if cfg, err := ParseConfig([]byte(fmt.Sprintf("socket_dir = %q\n", longest))); err != nil {
		t.Errorf("socket_dir of %d bytes: %v", len(longest), err)
	} else if err := qemu.CheckSocketDir(podSocketDir(cfg, "/run/contrast/ns/pod")); err != nil {
		t.Errorf("socket_dir of %d bytes: %v", len(longest), err)
	}
	if _, err := ParseConfig([]byte(fmt.Sprintf("socket_dir = %q\n", longest+"s"))); err == nil {
		t.Errorf("socket_dir of %d bytes accepted", len(longest)+1)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("[hypervisor]\nvcpus = 2\n"))
	f.Add([]byte("log_level = \"info\"\n[timeouts]\nstop = \"1s\"\n"))
	f.Add([]byte("[hypervisor]\nconfidential = \"snp\"\n[snp]\nfirmware = \"/fw/amdsev.fd\"\npolicy = 0x30000\n"))
	f.Add([]byte("[snp]\ncpu_model = \"EPYC-Milan\"\ncbitpos = 51\nreduced_phys_bits = 1\nid_block = \"/b\"\nid_auth = \"/a\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("accepted a config that does not validate: %v", verr)
			}
		}
	})
}
