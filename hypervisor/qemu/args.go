package qemu

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// launchParams is everything the QEMU command line depends on. buildArgs
// turns it into arguments without touching the system, so the command line
// can be checked by table tests.
type launchParams struct {
	Name      string
	Accel     string // AccelKVM or AccelTCG
	CPUModel  string
	VCPUs     int
	MemoryMiB int

	Kernel, Initrd, Append string
	Firmware               string // optional -bios
	// HostData is the launch's host data in hex, passed as the fw_cfg item
	// HostDataFwCfg; empty passes none.
	HostData string

	ConsoleLog string
	PIDFile    string
	// QMPFD is the descriptor number, in QEMU, of an already listening unix
	// socket for QMP: the socket exists before QEMU does, so connecting never
	// races QEMU's start.
	QMPFD int

	// HotplugPorts is the number of pcie-root-ports left free for disks.
	HotplugPorts int

	VsockMode string // VsockKernel or VsockVhostUser
	GuestCID  uint32 // VsockKernel
	// VhostUserSocket is the backend's listening socket (VsockVhostUser).
	VhostUserSocket string
}

// Device and object ids on the command line, shared with the QMP code.
const (
	memID         = "mem"
	consoleID     = "console"
	qmpID         = "qmp"
	vsockID       = "vsock0"
	vsockCharID   = "vsock0-chr"
	rootPortIDFmt = "hotplug%d"
)

// HostDataFwCfg is the fw_cfg item that carries the launch's host data (64
// hex characters) into a VM without SEV-SNP; the guest sees it at
// /sys/firmware/qemu_fw_cfg/by_name/<HostDataFwCfg>/raw.
const HostDataFwCfg = "opt/io.contrast/hostdata"

func rootPortID(i int) string { return fmt.Sprintf(rootPortIDFmt, i) }

// Root ports sit eight to a slot, from slot 0x10 on, so that many fit on
// pcie.0 while the devices QEMU places itself take the low slots. Each has
// its own chassis number (required) and reserves no I/O ports: PCIe virtio
// devices have no I/O BAR, and 4 KiB of the 64 KiB I/O space per port
// would run out.
const (
	rootPortFirstSlot = 0x10
	maxHotplugPorts   = 64
)

func rootPortArg(i int) string {
	slot, fn := rootPortFirstSlot+i/8, i%8
	a := fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d,addr=0x%x.%d,io-reserve=0", rootPortID(i), i+1, slot, fn)
	if fn == 0 {
		a += ",multifunction=on"
	}
	return a
}

// escapeOpt escapes a value for QEMU's "key=value,key=value" option syntax,
// where a literal comma is written twice.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func buildArgs(p launchParams) ([]string, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	mem := strconv.Itoa(p.MemoryMiB)
	args := []string{
		"-name", escapeOpt(p.Name),
		// memory-backend: guest RAM is a shared memfd so that a vhost-user
		// device backend (another process, or our Go code) can map it.
		"-machine", "q35,accel=" + p.Accel + ",memory-backend=" + memID,
		"-cpu", p.CPUModel,
		"-smp", strconv.Itoa(p.VCPUs),
		"-m", mem + "M",
		"-object", "memory-backend-memfd,id=" + memID + ",size=" + mem + "M,share=on",
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot ends the VM: the pod is gone, the shim reports it.
		"-no-reboot",
		// -kernel, -initrd and -append take their value literally.
		"-kernel", p.Kernel,
	}
	if p.Initrd != "" {
		args = append(args, "-initrd", p.Initrd)
	}
	args = append(args, "-append", p.Append)
	if p.Firmware != "" {
		args = append(args, "-bios", p.Firmware)
	}
	if p.HostData != "" {
		args = append(args, "-fw_cfg", "name="+HostDataFwCfg+",string="+p.HostData)
	}
	args = append(args,
		"-chardev", "file,id="+consoleID+",path="+escapeOpt(p.ConsoleLog),
		"-serial", "chardev:"+consoleID,
		"-chardev", fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off", qmpID, p.QMPFD),
		"-mon", "chardev="+qmpID+",mode=control",
		"-pidfile", p.PIDFile,
		// Native PCIe hot-plug on the root ports; ACPI hot-plug would need
		// guest ACPI support and is slower.
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
	)
	for i := 0; i < p.HotplugPorts; i++ {
		args = append(args, "-device", rootPortArg(i))
	}
	args = append(args, "-device", "virtio-rng-pci")
	switch p.VsockMode {
	case VsockKernel:
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-pci,id=%s,guest-cid=%d", vsockID, p.GuestCID))
	case VsockVhostUser:
		args = append(args,
			"-chardev", "socket,id="+vsockCharID+",path="+escapeOpt(p.VhostUserSocket),
			"-device", "vhost-user-vsock-pci,id="+vsockID+",chardev="+vsockCharID,
		)
	}
	return args, nil
}

func (p launchParams) validate() error {
	var errs []error
	if p.Accel != AccelKVM && p.Accel != AccelTCG {
		errs = append(errs, fmt.Errorf("accelerator %q: want %q or %q", p.Accel, AccelKVM, AccelTCG))
	}
	if p.HostData != "" {
		if b, err := hex.DecodeString(p.HostData); err != nil || len(b) != 32 {
			errs = append(errs, fmt.Errorf("host data %q: want 64 hex characters (32 bytes)", p.HostData))
		}
	}
	if p.CPUModel == "" {
		errs = append(errs, errors.New("no CPU model"))
	}
	if p.VCPUs < 1 {
		errs = append(errs, fmt.Errorf("vcpus %d: want at least 1", p.VCPUs))
	}
	if p.MemoryMiB < minMemoryMiB {
		errs = append(errs, fmt.Errorf("memory %d MiB: want at least %d MiB", p.MemoryMiB, minMemoryMiB))
	}
	if p.Kernel == "" {
		errs = append(errs, errors.New("no kernel"))
	}
	if p.ConsoleLog == "" || p.PIDFile == "" {
		errs = append(errs, errors.New("no console log or pid file path"))
	}
	if p.QMPFD < 3 {
		errs = append(errs, fmt.Errorf("qmp descriptor %d: want an inherited descriptor ≥ 3", p.QMPFD))
	}
	if p.HotplugPorts < 0 || p.HotplugPorts > maxHotplugPorts {
		errs = append(errs, fmt.Errorf("hot-plug ports %d: want 0 to %d", p.HotplugPorts, maxHotplugPorts))
	}
	switch p.VsockMode {
	case VsockKernel:
		if p.GuestCID < 3 {
			errs = append(errs, fmt.Errorf("guest CID %d: want ≥ 3 (0-2 are reserved)", p.GuestCID))
		}
	case VsockVhostUser:
		if p.VhostUserSocket == "" {
			errs = append(errs, errors.New("no vhost-user socket for vsock"))
		}
	default:
		errs = append(errs, fmt.Errorf("vsock mode %q: want %q or %q", p.VsockMode, VsockKernel, VsockVhostUser))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("qemu arguments: %w", err)
	}
	return nil
}

// minMemoryMiB keeps obviously broken sizes (0, a number of bytes mistaken
// for MiB the other way round) away from QEMU.
const minMemoryMiB = 64
