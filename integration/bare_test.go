package integration

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/qemu"
	"github.com/contrast-vm/contrast/integration/harness"
	"github.com/contrast-vm/contrast/vmimage"
)

// bareVM is the benchmarks' baseline: QEMU booting a guest image as the
// shim boots a pod VM (same QEMU, accelerator, size and command line), with
// no containerd and no shim; its vsock backend runs in the test's process.
type bareVM struct {
	vm    hypervisor.VM
	agent agentapi.AgentService
	// boot is the time from starting QEMU to the agent's first answer.
	boot time.Duration
}

// bareSpec says what differs between the bare VMs.
type bareSpec struct {
	name  string
	image *vmimage.Image // nil: the image of the suite's environment
	nics  []hypervisor.NIC
}

// startBareVM boots a bare VM and waits for its agent to answer; the VM is
// stopped when tb ends, or earlier by stop.
func startBareVM(tb testing.TB, env harness.Env, spec bareSpec) *bareVM {
	tb.Helper()
	ctx := context.Background()
	im := spec.image
	if im == nil {
		var err error
		if im, err = vmimage.Load(env.ImageDir); err != nil {
			tb.Fatal(err)
		}
	}
	cfg := harness.DefaultShimConfig(env, "")
	hv, err := qemu.New(qemu.Config{Binary: cfg.Binary, Accel: cfg.Accel})
	if err != nil {
		tb.Fatal(err)
	}
	// Not tb.TempDir(): the VM's unix sockets live here, and a test's
	// temporary directory can make their paths too long.
	stateDir, err := os.MkdirTemp("", "bare")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(stateDir) })
	// The guest's log level as the shim passes it (shim/launch.go).
	kernelArgs := im.KernelCmdline()
	if cfg.LogLevel != "info" {
		kernelArgs += " contrast.log_level=" + cfg.LogLevel
	}
	begin := time.Now()
	vm, err := hv.Start(ctx, hypervisor.VMSpec{
		ID: "bare-" + spec.name, StateDir: stateDir,
		Kernel: im.Kernel(), Initrd: im.Initrd(), RootDisk: im.RootDisk(), KernelArgs: kernelArgs,
		VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB, NICs: spec.nics,
	})
	if err != nil {
		tb.Fatalf("start the bare VM %s: %v", spec.name, err)
	}
	v := &bareVM{vm: vm}
	tb.Cleanup(v.stop) // a second Stop is harmless
	deadline := begin.Add(3 * time.Minute)
	for {
		conn, err := vm.Dial(ctx, agentapi.AgentPort)
		if err == nil {
			client := ttrpc.NewClient(conn)
			agent := agentapi.NewAgentClient(client)
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = agent.Health(hctx, &agentapi.HealthRequest{})
			cancel()
			if err == nil {
				v.boot = time.Since(begin)
				v.agent = agent
				tb.Cleanup(func() { client.Close() })
				return v
			}
			client.Close()
		}
		select {
		case <-vm.Done():
			console, _ := os.ReadFile(vm.ConsoleLog())
			tb.Fatalf("bare VM %s ended before its agent answered: %v; console:\n%s", spec.name, vm.Err(), console)
		default:
		}
		if time.Now().After(deadline) {
			console, _ := os.ReadFile(vm.ConsoleLog())
			tb.Fatalf("bare VM %s: the agent did not answer within 3 minutes: %v; console:\n%s", spec.name, err, console)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops the VM.
func (v *bareVM) stop() { _ = v.vm.Stop(context.Background()) }
