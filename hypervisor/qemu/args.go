package qemu

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
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
	// RootDisk, optional, is a disk image attached read-only as the VM's
	// only disk at boot, so the guest names it /dev/vda.
	RootDisk string
	Firmware string // -bios: optional, required under SNP
	// HostData is the launch's host data in hex: under SNP the measured
	// HOSTDATA, otherwise the fw_cfg item HostDataFwCfg; empty passes none.
	HostData string
	// SNP, when set, launches the VM under AMD SEV-SNP.
	SNP *snpSettings
	// LaunchMeasurement (plain VMs only) is the SNP launch measurement in
	// hex, passed as the fw_cfg item LaunchMeasurementFwCfg; empty passes none.
	LaunchMeasurement string

	ConsoleLog string
	PIDFile    string
	// QMPFD is the descriptor number, in QEMU, of an already listening unix
	// socket for QMP: the socket exists before QEMU does, so connecting never
	// races QEMU's start.
	QMPFD int

	// HotplugPorts is the number of pcie-root-ports left free for disks.
	HotplugPorts int

	// NICs are virtio-net cards on tap devices QEMU inherits.
	NICs []nicParams

	VsockMode string // VsockKernel or VsockVhostUser
	GuestCID  uint32 // VsockKernel
	// VhostUserSocket is the backend's listening socket (VsockVhostUser).
	VhostUserSocket string
}

// Device and object ids on the command line, shared with the QMP code.
const (
	memID         = "mem"
	sevID         = "sev0"
	consoleID     = "console"
	qmpID         = "qmp"
	vsockID       = "vsock0"
	vsockCharID   = "vsock0-chr"
	rootPortIDFmt = "hotplug%d"
	rootDiskID    = "rootdisk"
	// RootDiskSerial is the root disk's virtio-blk serial: the guest finds
	// hot-plugged disks by serial, and none of theirs may be this one.
	RootDiskSerial = "contrast-rootdisk"
)

// The fw_cfg items that carry, into a VM without SEV-SNP, the launch's host
// data and the measurement the same launch would have under SNP (the
// contract with the guest is in api/agent).
const (
	HostDataFwCfg          = agentapi.FwCfgHostData
	LaunchMeasurementFwCfg = agentapi.FwCfgLaunchMeasurement
)

// nicParams is one network card: the descriptor number, in QEMU, of its
// tap device, and what the guest sees.
type nicParams struct {
	TapFD int
	MAC   string
	MTU   int
}

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
	machine := "q35,memory-backend=" + memID
	if p.SNP != nil {
		machine = "q35,confidential-guest-support=" + sevID + ",memory-backend=" + memID
	}
	args := []string{
		"-name", escapeOpt(p.Name),
		"-accel", accelArg(p.Accel),
		// memory-backend: guest RAM is a shared memfd so that a vhost-user
		// device backend (another process, or our Go code) can map it. Under
		// SNP, QEMU backs private memory with a guest_memfd of its own and
		// the memfd holds only the pages the guest shares (its DMA buffers).
		"-machine", machine,
		"-cpu", p.CPUModel,
		"-smp", strconv.Itoa(p.VCPUs),
		"-m", mem + "M",
		"-object", "memory-backend-memfd,id=" + memID + ",size=" + mem + "M,share=on",
	}
	if p.SNP != nil {
		args = append(args, "-object", p.SNP.objectArg(p.HostData))
	}
	args = append(args,
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot ends the VM: the pod is gone, the shim reports it.
		"-no-reboot",
		// -kernel, -initrd and -append take their value literally.
		"-kernel", p.Kernel,
	)
	if p.Initrd != "" {
		args = append(args, "-initrd", p.Initrd)
	}
	args = append(args, "-append", p.Append)
	if p.Firmware != "" {
		args = append(args, "-bios", p.Firmware)
	}
	// Unmeasured launch data exists only without SNP: under SNP the
	// hardware reports host data and measurement itself.
	if p.HostData != "" && p.SNP == nil {
		args = append(args, "-fw_cfg", "name="+HostDataFwCfg+",string="+p.HostData)
	}
	if p.LaunchMeasurement != "" {
		args = append(args, "-fw_cfg", "name="+LaunchMeasurementFwCfg+",string="+p.LaunchMeasurement)
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
	// An SNP guest refuses virtio devices that do not promise to go through
	// the DMA API (VIRTIO_F_ACCESS_PLATFORM), which puts their buffers in
	// memory it shares with the host; modern virtio only. QEMU makes both
	// the default for every virtio device once confidential-guest-support
	// is set (hot-plugged disks too); the command line says so explicitly.
	virtio := ""
	if p.SNP != nil {
		virtio = ",disable-legacy=on,iommu_platform=on"
	}
	if p.RootDisk != "" {
		// JSON takes any path as is. Read-only from QEMU down to the file:
		// every pod VM shares the one image (and the host's page cache of it).
		node, err := json.Marshal(map[string]any{
			"driver": "raw", "node-name": rootDiskID, "read-only": true,
			"file": map[string]any{"driver": "file", "filename": p.RootDisk, "read-only": true},
		})
		if err != nil {
			return nil, fmt.Errorf("root disk %s: %w", p.RootDisk, err)
		}
		args = append(args,
			"-blockdev", string(node),
			"-device", "virtio-blk-pci,id="+rootDiskID+",drive="+rootDiskID+",serial="+RootDiskSerial+virtio,
		)
	}
	args = append(args, "-device", "virtio-rng-pci"+virtio)
	if p.SNP == nil {
		// Free page reporting: the guest tells QEMU which pages it freed
		// (the unpacked boot files, exited containers' memory), and QEMU
		// punches them out of the memfd, so an idle pod holds on the host
		// only what its guest uses. Not under SEV-SNP: private memory is
		// not the memfd's, and a page given back would have to be
		// validated anew by the guest.
		args = append(args, "-device", "virtio-balloon-pci,free-page-reporting=on")
	}
	for i, n := range p.NICs {
		// vhost=off: the packets go through QEMU, which works without the
		// vhost-net kernel module. romfile= drops the PXE option ROM, which
		// a direct kernel boot never runs.
		id := fmt.Sprintf("net%d", i)
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=%s,fd=%d,vhost=off", id, n.TapFD),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=%s,mac=%s,host_mtu=%d,romfile=", id, n.MAC, n.MTU)+virtio,
		)
	}
	switch p.VsockMode {
	case VsockKernel:
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-pci,id=%s,guest-cid=%d", vsockID, p.GuestCID)+virtio)
	case VsockVhostUser:
		args = append(args,
			"-chardev", "socket,id="+vsockCharID+",path="+escapeOpt(p.VhostUserSocket),
			"-device", "vhost-user-vsock-pci,id="+vsockID+",chardev="+vsockCharID+virtio,
		)
	}
	return args, nil
}

// tcgTranslationCacheMiB is the size of QEMU's cache of translated guest
// code under TCG. QEMU's default (1 GiB) fills to about 57 MiB of host
// memory per VM by the time the agent answers; 32 MiB made no measurable
// difference to the CPU time of a boot (about 4.1 s either way, 16 and 8 MiB
// cost up to 10% more), as the cache is flushed and refilled when full.
const tcgTranslationCacheMiB = 32

// accelArg is QEMU's -accel option for the accelerator.
func accelArg(accel string) string {
	if accel == AccelTCG {
		return fmt.Sprintf("%s,tb-size=%d", accel, tcgTranslationCacheMiB)
	}
	return accel
}

// objectArg is the sev-snp-guest object. kernel-hashes=on puts the hashes
// of kernel, initrd and command line into the measured firmware, which
// refuses to boot anything else. hostDataHex is 64 hex characters.
func (s *snpSettings) objectArg(hostDataHex string) string {
	hostData, _ := hex.DecodeString(hostDataHex) // validated
	a := fmt.Sprintf("sev-snp-guest,id=%s,cbitpos=%d,reduced-phys-bits=%d,policy=%#x,kernel-hashes=on,host-data=%s",
		sevID, s.CBitPos, s.ReducedPhysBits, s.Policy, base64.StdEncoding.EncodeToString(hostData))
	// Base64 has no commas: nothing to escape.
	if s.IDBlock != "" {
		a += ",id-block=" + s.IDBlock + ",id-auth=" + s.IDAuth
	}
	return a
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
	if p.LaunchMeasurement != "" {
		if b, err := hex.DecodeString(p.LaunchMeasurement); err != nil || len(b) != hypervisor.SNPLaunchMeasurementSize {
			errs = append(errs, fmt.Errorf("launch measurement %q: want %d hex characters (%d bytes)",
				p.LaunchMeasurement, 2*hypervisor.SNPLaunchMeasurementSize, hypervisor.SNPLaunchMeasurementSize))
		}
	}
	if p.SNP != nil {
		errs = append(errs, p.validateSNP())
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
	for i, n := range p.NICs {
		if err := n.validate(p.QMPFD); err != nil {
			errs = append(errs, fmt.Errorf("network card %d: %w", i, err))
		}
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

// QEMU's virtio-net accepts a host MTU from 68 (IPv4's minimum) to 65535.
const (
	minNICMTU = 68
	maxNICMTU = 65535
)

func (n nicParams) validate(qmpFD int) error {
	var errs []error
	if n.TapFD < 3 || n.TapFD == qmpFD {
		errs = append(errs, fmt.Errorf("tap descriptor %d: want an inherited descriptor ≥ 3 other than QMP's", n.TapFD))
	}
	if mac, err := net.ParseMAC(n.MAC); err != nil || len(mac) != 6 {
		errs = append(errs, fmt.Errorf("MAC %q: want a 6-byte MAC such as 02:00:00:00:00:01", n.MAC))
	} else if mac[0]&1 != 0 {
		errs = append(errs, fmt.Errorf("MAC %s is a multicast address", n.MAC))
	}
	if n.MTU < minNICMTU || n.MTU > maxNICMTU {
		errs = append(errs, fmt.Errorf("MTU %d: want %d to %d", n.MTU, minNICMTU, maxNICMTU))
	}
	return errors.Join(errs...)
}

// validateSNP refuses what cannot launch, or would launch something other
// than what is measured, under SEV-SNP.
func (p launchParams) validateSNP() error {
	var errs []error
	if p.Accel != AccelKVM {
		errs = append(errs, fmt.Errorf("accelerator %q: SEV-SNP runs only under KVM", p.Accel))
	}
	// a model may carry feature flags after a comma ("max,-erms")
	if model, _, _ := strings.Cut(p.CPUModel, ","); model == "host" || model == "max" {
		// The measurement covers the CPU model's signature: it must not
		// depend on the host the VM happens to run on.
		errs = append(errs, fmt.Errorf("CPU model %q: SEV-SNP needs a named model (like EPYC-v4)", p.CPUModel))
	}
	if p.Firmware == "" {
		errs = append(errs, errors.New("no firmware: SEV-SNP needs an OVMF AmdSevX64 build"))
	}
	if p.HostData == "" {
		errs = append(errs, errors.New("no host data: SEV-SNP always sets HOSTDATA"))
	}
	if p.LaunchMeasurement != "" {
		errs = append(errs, errors.New("launch measurement given: under SEV-SNP the hardware measures the launch"))
	}
	errs = append(errs, p.SNP.validate())
	return errors.Join(errs...)
}

// minMemoryMiB keeps obviously broken sizes (0, a number of bytes mistaken
// for MiB the other way round) away from QEMU.
const minMemoryMiB = 64
