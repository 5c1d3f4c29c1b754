// Package hypervisor defines what the shim needs from a virtual machine
// monitor: start a pod VM, reach its vsock ports, attach disks, stop it.
// Backends live in sub-packages (qemu); vsock transports in vsock.
package hypervisor

import (
	"context"
	"net"
	"os"
)

// Transport reaches vsock ports inside the guest.
type Transport interface {
	// Dial opens a stream connection to the guest's vsock port.
	Dial(ctx context.Context, port uint32) (net.Conn, error)
}

// Hypervisor starts pod VMs.
type Hypervisor interface {
	// Start boots a VM. On error nothing it created is left behind (no
	// process, socket or file outside spec.StateDir; the caller removes StateDir).
	Start(ctx context.Context, spec VMSpec) (VM, error)
	// Cleanup ends a VM this hypervisor started with state directory
	// stateDir whose handle is lost (its shim died), and removes what it
	// held outside stateDir (its sockets). Nothing to end is no error.
	Cleanup(ctx context.Context, stateDir string) error
}

// VMSpec is what a pod VM is booted with.
type VMSpec struct {
	// ID names the VM in logs and errors (the sandbox id).
	ID string
	// StateDir holds the VM's console log, pid file and other runtime
	// files. It exists and belongs to this VM alone; its path may be of any
	// length.
	StateDir string
	// SocketDir is a short path for the VM's unix sockets, whose paths must
	// fit sockaddr_un (107 bytes). Start creates it (it must not exist) and
	// links it from StateDir as "sockets"; stopping the VM removes both.
	// Empty keeps the sockets in StateDir itself, which must then be short.
	SocketDir string
	// Kernel, Initrd: guest image for direct kernel boot.
	Kernel string
	Initrd string
	// RootDisk, optional, is a disk image the guest boots its root file
	// system from (instead of an initrd): attached read-only as the first
	// disk, ahead of every hot-plugged one, so the guest kernel names it
	// /dev/vda, which KernelArgs (dm-mod.create) opens.
	RootDisk string
	// Firmware is optional (empty: the hypervisor's default). A confidential
	// VM names its firmware in Confidential instead.
	Firmware string
	// KernelArgs is the exact kernel command line.
	KernelArgs string
	VCPUs      int
	MemoryMiB  int
	// HostData is the 32 bytes the launch binds to the VM: the digest of
	// the pod's initdata document (policy/initdata). Under SEV-SNP it is the measured HOSTDATA; in a
	// plain VM it is passed as unmeasured launch data (QEMU fw_cfg), which
	// only the simulated SNP device of test images reads.
	HostData [32]byte
	// Confidential, when set, launches the VM under AMD SEV-SNP. The
	// hardware then measures firmware, kernel, initrd, KernelArgs, the vCPU
	// count and CPU model, so each of them must be exactly what the verifier's
	// reference values were computed from.
	Confidential *SNPLaunch
	// LaunchMeasurement is for plain VMs only (nil: none): the SEV-SNP launch
	// measurement (48 bytes) the same launch would have. Like HostData it is
	// passed as unmeasured launch data, for the simulated SNP device to report.
	LaunchMeasurement []byte
	// NICs are the VM's network cards, in order.
	NICs []NIC
}

// NIC is a virtio network card backed by a tap device on the host.
type NIC struct {
	// Tap is the tap device's queue, opened with IFF_VNET_HDR and without
	// IFF_MULTI_QUEUE. The VM monitor gets its own copy; the caller keeps
	// and closes this one.
	Tap *os.File
	// MAC is the card's address as the guest sees it.
	MAC net.HardwareAddr
	// MTU is offered to the guest driver (virtio-net's host MTU feature).
	MTU int
}

// SNPLaunch is what an AMD SEV-SNP launch needs beyond a plain VM's.
type SNPLaunch struct {
	// Firmware is the OVMF AmdSevX64 image; its pages are measured, and it
	// checks kernel, initrd and command line against the measured hashes.
	Firmware string
	// CPUModel is a named CPU model such as EPYC-v4, never the host's: its
	// CPU signature is part of the measurement.
	CPUModel string
	// Policy is the SNP guest policy (0x30000: SMT allowed, no debugging,
	// no migration agent).
	Policy uint64
	// CBitPos is the page-table bit that marks encrypted memory; 0 takes
	// the host's (CPUID 0x8000001F), the only value SEV-SNP accepts.
	CBitPos int
	// ReducedPhysBits is how many physical address bits the guest loses to
	// encryption; 0 takes 1, the value QEMU itself reports for every host.
	ReducedPhysBits int
	// IDBlock and IDAuth, optional, sign the launch: the base64 ID block
	// (96 bytes) and ID authentication structure (at most 4096 bytes).
	IDBlock, IDAuth string
}

// SNPLaunchMeasurementSize is the size of an SEV-SNP launch measurement
// (a SHA-384 digest).
const SNPLaunchMeasurementSize = 48

// Disk is a block device image attached to a running VM.
type Disk struct {
	// Serial identifies the disk in the guest (/sys/block/*/serial); at most 20 bytes.
	Serial   string
	Path     string
	ReadOnly bool
}

// VM is a running pod VM.
type VM interface {
	Transport
	// AttachDisk hot-plugs a disk.
	AttachDisk(ctx context.Context, disk Disk) error
	// DetachDisk unplugs a disk attached with AttachDisk.
	DetachDisk(ctx context.Context, serial string) error
	// Pid is the host process id of the VM monitor.
	Pid() int
	// Done is closed when the VM has stopped, for whatever reason.
	Done() <-chan struct{}
	// Err tells why the VM stopped, once Done is closed (nil after Stop).
	Err() error
	// ConsoleLog is the path of the guest console log file.
	ConsoleLog() string
	// Stop ends the VM (forcefully if it does not end in time), waits for it
	// and releases everything it holds on the host. Safe to call more than once.
	Stop(ctx context.Context) error
}
