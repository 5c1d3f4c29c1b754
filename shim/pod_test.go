package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/internal/testenv"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/vmimage"
)

// testImage is the guest image `make image` built; tests run through make.
// One of initrd and rootDisk is set, as the image has one.
func testImage(t testing.TB) (kernel, initrd, rootDisk string) {
	dir := testenv.Path(t, "CONTRAST_IMAGE", "image", "the guest image directory")
	im, err := vmimage.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return im.Kernel(), im.Initrd(), im.RootDisk()
}

func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.StateDir = filepath.Join(t.TempDir(), "st")
	// A short socket dir of the test's own: the default, /run/contrast/s,
	// would stay on the host after the test.
	sockets, err := os.MkdirTemp("", "ss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockets) })
	cfg.SocketDir = filepath.Join(sockets, "s")
	cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd, cfg.Hypervisor.RootDisk = testImage(t)
	cfg.Hypervisor.MemoryMiB = 256
	cfg.Timeouts.AgentReady = Duration{30 * time.Second}
	return cfg
}

// processesMentioning lists host processes whose command line contains s.
func processesMentioning(t testing.TB, s string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), s) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

// assertNothingLeft checks that a failed boot left no process and no state.
func assertNothingLeft(t *testing.T, cfg Config, id string) {
	t.Helper()
	dir := podStateDir(cfg, "test", id)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory %s remains (%v)", dir, err)
	}
	if procs := processesMentioning(t, dir); len(procs) > 0 {
		t.Errorf("processes remain: %v", procs)
	}
}

func bootForTest(t *testing.T, cfg Config, id string) (*pod, error) {
	ctx := context.Background()
	hv, err := NewQEMU(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return bootPod(ctx, hv, cfg, podLaunch{
		Namespace: "test", ID: id, Hostname: "h-" + id,
		Size:     vmSize{VCPUs: cfg.Hypervisor.VCPUs, MemoryMiB: cfg.Hypervisor.MemoryMiB},
		Initdata: testInitdata(t, policy.AllowAll()), PolicySource: "test",
	})
}

func TestBootPod(t *testing.T) {
	cfg := testConfig(t)
	p, err := bootForTest(t, cfg, "boot")
	if err != nil {
		t.Fatal(err)
	}
	health, err := p.agent.Health(context.Background(), &agentapi.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(health.KernelRelease, "contrast") {
		t.Errorf("guest kernel %q is not ours", health.KernelRelease)
	}
	if _, err := os.Stat(p.vm.ConsoleLog()); err != nil {
		t.Errorf("console log: %v", err)
	}
	if err := p.stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, cfg, "boot")
}

func TestBootPodFailures(t *testing.T) {
	// An initrd whose /init is busybox's init: the guest boots, but no agent ever answers.
	silent := filepath.Join(t.TempDir(), "silent.cpio")
	f, err := os.Create(silent)
	if err != nil {
		t.Fatal(err)
	}
	err = vmimage.WriteInitramfs(f, []vmimage.Entry{
		{Name: "dev", Mode: vmimage.ModeDir | 0o755},
		{Name: "dev/console", Mode: vmimage.ModeChar | 0o600, Major: 5, Minor: 1},
		{Name: "init", Mode: vmimage.ModeRegular | 0o755, Source: "/bin/busybox"},
	})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"missing kernel", func(c *Config) { c.Hypervisor.Kernel = "/nonexistent/kernel" }, "hypervisor.kernel"},
		{"missing initrd", func(c *Config) { c.Hypervisor.Initrd, c.Hypervisor.RootDisk = "/nonexistent/initrd", "" }, "hypervisor.initrd"},
		{"missing root disk", func(c *Config) { c.Hypervisor.Initrd, c.Hypervisor.RootDisk = "", "/nonexistent/rootfs.img" }, "hypervisor.rootfs"},
		{"qemu fails", func(c *Config) { c.Hypervisor.Binary = "/bin/false" }, "start VM for pod"},
		{"agent never answers", func(c *Config) {
			c.Hypervisor.Initrd, c.Hypervisor.RootDisk = silent, ""
			c.Timeouts.AgentReady = Duration{4 * time.Second}
		}, "did not answer within 4s (timeouts.agent_ready)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t)
			c.modify(&cfg)
			id := strings.ReplaceAll(c.name, " ", "-")
			p, err := bootForTest(t, cfg, id)
			if err == nil {
				p.stop(context.Background())
				t.Fatal("boot succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			assertNothingLeft(t, cfg, id)
		})
	}
}

// consoleOnlyVM is a hypervisor.VM of which only the console log is used.
type consoleOnlyVM struct {
	hypervisor.VM
	console string
}

func (vm consoleOnlyVM) ConsoleLog() string { return vm.console }

// TestConsoleTailQuotesVerityErrors: a kernel panic after a dm-verity
// error quotes the error, though it is not among the last lines.
func TestConsoleTailQuotesVerityErrors(t *testing.T) {
	console := filepath.Join(t.TempDir(), "console.log")
	lines := []string{"booting", "device-mapper: verity: 254:0: data block 1234 is corrupted", "Failed to execute /init (error -5)",
		"Kernel panic - not syncing: Requested init /init failed (error -5)."}
	for i := range 10 {
		lines = append(lines, fmt.Sprintf("panic trace line %d", i))
	}
	if err := os.WriteFile(console, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := (&pod{vm: consoleOnlyVM{console: console}}).consoleTail()
	if !strings.Contains(got, "data block 1234 is corrupted") || !strings.Contains(got, "Requested init /init failed") ||
		!strings.Contains(got, "panic trace line 9") || strings.Contains(got, "booting") {
		t.Errorf("console tail:\n%s", got)
	}
	// Without verity errors: the last 8 lines only.
	if err := os.WriteFile(console, []byte(strings.Join(lines[4:], "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := (&pod{vm: consoleOnlyVM{console: console}}).consoleTail(); strings.Contains(got, "Failed to execute") || strings.Contains(got, "...") {
		t.Errorf("console tail without verity errors:\n%s", got)
	}
}
