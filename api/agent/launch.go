package agent

// QEMU fw_cfg items the host sets at launch in a VM without SEV-SNP, which
// only the simulated SNP device of test images reads (the guest sees them at
// /sys/firmware/qemu_fw_cfg/by_name/<item>/raw). They are unmeasured: a
// release agent never trusts them.
const (
	// FwCfgHostData carries the launch's host data, the digest of the
	// pod's initdata document, as exactly 64 lower-case hex characters.
	FwCfgHostData = "opt/io.contrast/hostdata"
	// FwCfgLaunchMeasurement carries the MEASUREMENT the same launch would
	// have under SEV-SNP, as exactly 96 lower-case hex characters.
	FwCfgLaunchMeasurement = "opt/io.contrast/launch-measurement"
)
