package qemu

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

func baseParams() launchParams {
	return launchParams{
		Name:            "pod1",
		Accel:           AccelTCG,
		CPUModel:        "max",
		VCPUs:           2,
		MemoryMiB:       512,
		Kernel:          "/img/bzImage",
		Initrd:          "/img/initrd.cpio",
		Append:          "console=ttyS0 quiet",
		HostData:        strings.Repeat("ab", 32),
		ConsoleLog:      "/run/vm/console.log",
		PIDFile:         "/run/vm/qemu.pid",
		QMPFD:           3,
		HotplugPorts:    2,
		VsockMode:       VsockVhostUser,
		VhostUserSocket: "/run/vm/vhost-user-vsock.sock",
	}
}

func TestBuildArgsFull(t *testing.T) {
	got, err := buildArgs(baseParams())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-name", "pod1",
		"-accel", "tcg,tb-size=32",
		"-machine", "q35,memory-backend=mem",
		"-cpu", "max",
		"-smp", "2",
		"-m", "512M",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", "/img/bzImage",
		"-initrd", "/img/initrd.cpio",
		"-append", "console=ttyS0 quiet",
		"-fw_cfg", "name=opt/io.contrast/hostdata,string=" + strings.Repeat("ab", 32),
		"-chardev", "file,id=console,path=/run/vm/console.log",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", "/run/vm/qemu.pid",
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
		"-device", "pcie-root-port,id=hotplug0,bus=pcie.0,chassis=1,addr=0x10.0,io-reserve=0,multifunction=on",
		"-device", "pcie-root-port,id=hotplug1,bus=pcie.0,chassis=2,addr=0x10.1,io-reserve=0",
		"-device", "virtio-rng-pci",
		"-device", "virtio-balloon-pci,free-page-reporting=on",
		"-chardev", "socket,id=vsock0-chr,path=/run/vm/vhost-user-vsock.sock",
		"-device", "vhost-user-vsock-pci,id=vsock0,chardev=vsock0-chr",
	}
	if !slices.Equal(got, want) {
		t.Errorf("args:\n got %q\nwant %q", got, want)
	}
}

// argAfter returns the values following every occurrence of flag.
func argsAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestBuildArgsVariants(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*launchParams)
		// flag → values that must all appear after that flag
		want map[string][]string
		// flag → values that must not appear after that flag
		absent map[string][]string
		// flags that must not appear at all
		noFlag []string
	}{
		{
			name: "kvm with kernel vhost-vsock",
			modify: func(p *launchParams) {
				p.Accel, p.CPUModel = AccelKVM, "host"
				p.VsockMode, p.GuestCID, p.VhostUserSocket = VsockKernel, 123456, ""
			},
			want: map[string][]string{
				"-accel":   {"kvm"},
				"-machine": {"q35,memory-backend=mem"},
				"-cpu":     {"host"},
				"-device":  {"vhost-vsock-pci,id=vsock0,guest-cid=123456"},
			},
			absent: map[string][]string{
				"-device":  {"vhost-user-vsock-pci,id=vsock0,chardev=vsock0-chr"},
				"-chardev": {"socket,id=vsock0-chr,path=/run/vm/vhost-user-vsock.sock"},
			},
		},
		{
			name:   "no initrd, firmware given",
			modify: func(p *launchParams) { p.Initrd, p.Firmware = "", "/fw/OVMF.fd" },
			want:   map[string][]string{"-bios": {"/fw/OVMF.fd"}},
			noFlag: []string{"-initrd"},
		},
		{
			name:   "root disk instead of an initrd",
			modify: func(p *launchParams) { p.Initrd, p.RootDisk = "", "/img/root,fs.img" },
			want: map[string][]string{
				// The comma needs no escaping in JSON.
				"-blockdev": {`{"driver":"raw","file":{"driver":"file","filename":"/img/root,fs.img","read-only":true},"node-name":"rootdisk","read-only":true}`},
				"-device":   {"virtio-blk-pci,id=rootdisk,drive=rootdisk,serial=contrast-rootdisk"},
			},
			noFlag: []string{"-initrd", "-drive"},
		},
		{
			name:   "no root disk by default",
			modify: func(*launchParams) {},
			noFlag: []string{"-blockdev"},
		},
		{
			name:   "no firmware by default",
			modify: func(*launchParams) {},
			noFlag: []string{"-bios"},
		},
		{
			name: "commas escaped in option values, literal in -kernel/-append",
			modify: func(p *launchParams) {
				p.Name = "a,b"
				p.ConsoleLog = "/run/x,y/console.log"
				p.VhostUserSocket = "/run/x,y/v.sock"
				p.Kernel = "/k,1"
				p.Append = "a=1,2"
			},
			want: map[string][]string{
				"-name":    {"a,,b"},
				"-chardev": {"file,id=console,path=/run/x,,y/console.log", "socket,id=vsock0-chr,path=/run/x,,y/v.sock"},
				"-kernel":  {"/k,1"},
				"-append":  {"a=1,2"},
			},
		},
		{
			name:   "no host data, no fw_cfg",
			modify: func(p *launchParams) { p.HostData = "" },
			noFlag: []string{"-fw_cfg"},
		},
		{
			name:   "memory and cpus",
			modify: func(p *launchParams) { p.MemoryMiB, p.VCPUs = 2048, 4 },
			want: map[string][]string{
				"-m":      {"2048M"},
				"-smp":    {"4"},
				"-object": {"memory-backend-memfd,id=mem,size=2048M,share=on"},
			},
		},
		{
			name: "network cards on inherited taps",
			modify: func(p *launchParams) {
				p.NICs = []nicParams{{TapFD: 4, MAC: "0a:58:0a:58:00:05", MTU: 1450}, {TapFD: 5, MAC: "02:00:00:00:00:02", MTU: 9000}}
			},
			want: map[string][]string{
				"-netdev": {"tap,id=net0,fd=4,vhost=off", "tap,id=net1,fd=5,vhost=off"},
				"-device": {
					"virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,host_mtu=1450,romfile=",
					"virtio-net-pci,netdev=net1,mac=02:00:00:00:00:02,host_mtu=9000,romfile=",
				},
			},
		},
		{
			name:   "no network card by default",
			modify: func(*launchParams) {},
			noFlag: []string{"-netdev"},
		},
		{
			name:   "root ports eight to a slot",
			modify: func(p *launchParams) { p.HotplugPorts = 10 },
			want: map[string][]string{"-device": {
				"pcie-root-port,id=hotplug7,bus=pcie.0,chassis=8,addr=0x10.7,io-reserve=0",
				"pcie-root-port,id=hotplug8,bus=pcie.0,chassis=9,addr=0x11.0,io-reserve=0,multifunction=on",
				"pcie-root-port,id=hotplug9,bus=pcie.0,chassis=10,addr=0x11.1,io-reserve=0",
			}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := baseParams()
			tc.modify(&p)
			args, err := buildArgs(p)
			if err != nil {
				t.Fatal(err)
			}
			for flag, vals := range tc.want {
				have := argsAfter(args, flag)
				for _, v := range vals {
					if !slices.Contains(have, v) {
						t.Errorf("%s %q missing; have %q", flag, v, have)
					}
				}
			}
			for flag, vals := range tc.absent {
				have := argsAfter(args, flag)
				for _, v := range vals {
					if slices.Contains(have, v) {
						t.Errorf("%s %q present, want it absent", flag, v)
					}
				}
			}
			for _, flag := range tc.noFlag {
				if slices.Contains(args, flag) {
					t.Errorf("flag %s present, want it absent", flag)
				}
			}
		})
	}
}

func TestBuildArgsInvalid(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*launchParams)
		want   string
	}{
		{"no vcpus", func(p *launchParams) { p.VCPUs = 0 }, "vcpus 0"},
		{"tiny memory", func(p *launchParams) { p.MemoryMiB = 16 }, "memory 16 MiB"},
		{"no kernel", func(p *launchParams) { p.Kernel = "" }, "no kernel"},
		{"bad accel", func(p *launchParams) { p.Accel = "hvf" }, `accelerator "hvf"`},
		{"no cpu model", func(p *launchParams) { p.CPUModel = "" }, "no CPU model"},
		{"reserved cid", func(p *launchParams) { p.VsockMode, p.GuestCID = VsockKernel, 2 }, "guest CID 2"},
		{"no vhost-user socket", func(p *launchParams) { p.VhostUserSocket = "" }, "no vhost-user socket"},
		{"bad vsock mode", func(p *launchParams) { p.VsockMode = "tcp" }, `vsock mode "tcp"`},
		{"too many ports", func(p *launchParams) { p.HotplugPorts = 65 }, "hot-plug ports 65"},
		{"stdio qmp fd", func(p *launchParams) { p.QMPFD = 1 }, "qmp descriptor 1"},
		{"short host data", func(p *launchParams) { p.HostData = "abcd" }, `host data "abcd"`},
		{"host data not hex", func(p *launchParams) { p.HostData = strings.Repeat("zz", 32) }, "want 64 hex characters"},
		{"nic on qmp fd", func(p *launchParams) { p.NICs = []nicParams{{TapFD: 3, MAC: "02:00:00:00:00:01", MTU: 1500}} }, "network card 0: tap descriptor 3"},
		{"nic bad mac", func(p *launchParams) { p.NICs = []nicParams{{TapFD: 4, MAC: "02:00:00", MTU: 1500}} }, `MAC "02:00:00"`},
		{"nic multicast mac", func(p *launchParams) { p.NICs = []nicParams{{TapFD: 4, MAC: "01:00:5e:00:00:01", MTU: 1500}} }, "multicast"},
		{"nic mtu", func(p *launchParams) { p.NICs = []nicParams{{TapFD: 4, MAC: "02:00:00:00:00:01", MTU: 0}} }, "MTU 0"},
		{"several at once", func(p *launchParams) { p.VCPUs, p.Kernel = -1, "" }, "no kernel"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := baseParams()
			tc.modify(&p)
			args, err := buildArgs(p)
			if err == nil {
				t.Fatalf("no error; args %q", args)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestQuoteCommand(t *testing.T) {
	got := quoteCommand("/usr/bin/qemu", []string{"-append", "console=ttyS0 quiet", "-name", "x"})
	want := `/usr/bin/qemu -append "console=ttyS0 quiet" -name x`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestCIDInUse(t *testing.T) {
	if !cidInUse("qemu-system-x86_64: -device vhost-vsock-pci,guest-cid=5: vhost-vsock: unable to set guest cid: Address already in use") {
		t.Error("QEMU's CID collision message not recognised")
	}
	if cidInUse("qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory") {
		t.Error("a missing device taken for a CID collision")
	}
	for i := 0; i < 1000; i++ {
		if c := randomCID(); c < 3 || c >= 1<<31 {
			t.Fatalf("random CID %d out of range", c)
		}
	}
}

func snpParams() launchParams {
	p := baseParams()
	p.Accel, p.CPUModel = AccelKVM, "EPYC-v4"
	p.Firmware = "/fw/OVMF.amdsev.fd"
	p.HostData = "00" + strings.Repeat("ab", 31)
	p.SNP = &snpSettings{CBitPos: 51, ReducedPhysBits: 1, Policy: 0x30000}
	return p
}

func TestBuildArgsSNPFull(t *testing.T) {
	got, err := buildArgs(snpParams())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-name", "pod1",
		"-accel", "kvm",
		"-machine", "q35,confidential-guest-support=sev0,memory-backend=mem",
		"-cpu", "EPYC-v4",
		"-smp", "2",
		"-m", "512M",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on",
		// host data: 0x00 0xab×31 in base64
		"-object", "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data=AKurq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", "/img/bzImage",
		"-initrd", "/img/initrd.cpio",
		"-append", "console=ttyS0 quiet",
		"-bios", "/fw/OVMF.amdsev.fd",
		"-chardev", "file,id=console,path=/run/vm/console.log",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", "/run/vm/qemu.pid",
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
		"-device", "pcie-root-port,id=hotplug0,bus=pcie.0,chassis=1,addr=0x10.0,io-reserve=0,multifunction=on",
		"-device", "pcie-root-port,id=hotplug1,bus=pcie.0,chassis=2,addr=0x10.1,io-reserve=0",
		"-device", "virtio-rng-pci,disable-legacy=on,iommu_platform=on",
		"-chardev", "socket,id=vsock0-chr,path=/run/vm/vhost-user-vsock.sock",
		"-device", "vhost-user-vsock-pci,id=vsock0,chardev=vsock0-chr,disable-legacy=on,iommu_platform=on",
	}
	if !slices.Equal(got, want) {
		t.Errorf("args:\n got %q\nwant %q", got, want)
	}
}

func TestBuildArgsSNPVariants(t *testing.T) {
	idBlock := base64.StdEncoding.EncodeToString(make([]byte, 96))
	idAuth := base64.StdEncoding.EncodeToString(make([]byte, 4096))
	tests := []struct {
		name   string
		modify func(*launchParams)
		want   map[string][]string
	}{
		{
			name: "kernel vhost-vsock",
			modify: func(p *launchParams) {
				p.VsockMode, p.GuestCID, p.VhostUserSocket = VsockKernel, 77, ""
			},
			want: map[string][]string{"-device": {"vhost-vsock-pci,id=vsock0,guest-cid=77,disable-legacy=on,iommu_platform=on"}},
		},
		{
			name:   "signed launch",
			modify: func(p *launchParams) { p.SNP.IDBlock, p.SNP.IDAuth = idBlock, idAuth },
			want: map[string][]string{"-object": {"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data=" +
				"AKurq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=,id-block=" + idBlock + ",id-auth=" + idAuth}},
		},
		{
			name:   "root disk through the DMA API",
			modify: func(p *launchParams) { p.Initrd, p.RootDisk = "", "/img/rootfs.img" },
			want:   map[string][]string{"-device": {"virtio-blk-pci,id=rootdisk,drive=rootdisk,serial=contrast-rootdisk,disable-legacy=on,iommu_platform=on"}},
		},
		{
			name:   "host cbitpos and policy with debugging",
			modify: func(p *launchParams) { p.SNP.CBitPos, p.SNP.ReducedPhysBits, p.SNP.Policy = 47, 5, 0xb0000 },
			want: map[string][]string{"-object": {"sev-snp-guest,id=sev0,cbitpos=47,reduced-phys-bits=5,policy=0xb0000,kernel-hashes=on,host-data=" +
				"AKurq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := snpParams()
			tc.modify(&p)
			args, err := buildArgs(p)
			if err != nil {
				t.Fatal(err)
			}
			for flag, vals := range tc.want {
				for _, v := range vals {
					if have := argsAfter(args, flag); !slices.Contains(have, v) {
						t.Errorf("%s %q missing; have %q", flag, v, have)
					}
				}
			}
		})
	}
}

// TestBuildArgsSNPOmitsPlainOnly: nothing that only a plain VM may have
// reaches an SNP command line, whatever else is set.
func TestBuildArgsSNPOmitsPlainOnly(t *testing.T) {
	for _, vsockMode := range []string{VsockKernel, VsockVhostUser} {
		p := snpParams()
		p.VsockMode, p.GuestCID = vsockMode, 5
		p.NICs = []nicParams{{TapFD: 4, MAC: "0a:58:0a:58:00:05", MTU: 1500}}
		args, err := buildArgs(p)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(args, "-fw_cfg") {
			t.Errorf("%s: -fw_cfg present (host data must come from the hardware): %q", vsockMode, argsAfter(args, "-fw_cfg"))
		}
		for _, cpu := range argsAfter(args, "-cpu") {
			if cpu == "host" || cpu == "max" {
				t.Errorf("%s: -cpu %s", vsockMode, cpu)
			}
		}
		for _, m := range argsAfter(args, "-machine") {
			if !strings.Contains(m, "confidential-guest-support=sev0") {
				t.Errorf("%s: -machine %s", vsockMode, m)
			}
		}
		if a := argsAfter(args, "-accel"); !slices.Equal(a, []string{AccelKVM}) {
			t.Errorf("%s: -accel %q, want only kvm", vsockMode, a)
		}
		for _, d := range argsAfter(args, "-device") {
			if strings.HasPrefix(d, "pcie-root-port,") {
				continue
			}
			if !strings.HasSuffix(d, ",disable-legacy=on,iommu_platform=on") {
				t.Errorf("%s: virtio device %q without disable-legacy=on,iommu_platform=on", vsockMode, d)
			}
		}
		for _, o := range argsAfter(args, "-object") {
			if strings.HasPrefix(o, "sev-snp-guest,") && !strings.Contains(o, ",kernel-hashes=on,") {
				t.Errorf("%s: %s without kernel-hashes=on", vsockMode, o)
			}
		}
		if len(argsAfter(args, "-bios")) != 1 {
			t.Errorf("%s: want exactly one -bios, have %q", vsockMode, argsAfter(args, "-bios"))
		}
	}

	// The plain VM keeps its fw_cfg items and carries no SNP object.
	p := baseParams()
	p.LaunchMeasurement = strings.Repeat("cd", 48)
	args, err := buildArgs(p)
	if err != nil {
		t.Fatal(err)
	}
	fwcfg := argsAfter(args, "-fw_cfg")
	if !slices.Equal(fwcfg, []string{
		"name=opt/io.contrast/hostdata,string=" + strings.Repeat("ab", 32),
		"name=opt/io.contrast/launch-measurement,string=" + strings.Repeat("cd", 48),
	}) {
		t.Errorf("plain VM fw_cfg items %q", fwcfg)
	}
	for _, o := range argsAfter(args, "-object") {
		if strings.HasPrefix(o, "sev-snp-guest") {
			t.Errorf("plain VM with %s", o)
		}
	}
}

func TestBuildArgsSNPInvalid(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*launchParams)
		want   string
	}{
		{"tcg", func(p *launchParams) { p.Accel = AccelTCG }, "SEV-SNP runs only under KVM"},
		{"host cpu", func(p *launchParams) { p.CPUModel = "host" }, `CPU model "host"`},
		{"max cpu", func(p *launchParams) { p.CPUModel = "max" }, `CPU model "max"`},
		{"max cpu with flags", func(p *launchParams) { p.CPUModel = "max,-erms,-fsrm" }, `CPU model "max,-erms,-fsrm"`},
		{"no firmware", func(p *launchParams) { p.Firmware = "" }, "no firmware"},
		{"no host data", func(p *launchParams) { p.HostData = "" }, "no host data"},
		{"measurement under snp", func(p *launchParams) { p.LaunchMeasurement = strings.Repeat("cd", 48) }, "the hardware measures"},
		{"cbitpos 0", func(p *launchParams) { p.SNP.CBitPos = 0 }, "cbitpos 0"},
		{"cbitpos 64", func(p *launchParams) { p.SNP.CBitPos = 64 }, "cbitpos 64"},
		{"reduced phys bits 0", func(p *launchParams) { p.SNP.ReducedPhysBits = 0 }, "reduced-phys-bits 0"},
		{"policy without bit 16", func(p *launchParams) { p.SNP.Policy = 0x20000 }, "bit 16"},
		{"id block alone", func(p *launchParams) { p.SNP.IDBlock = base64.StdEncoding.EncodeToString(make([]byte, 96)) }, "give both or neither"},
		{"short id block", func(p *launchParams) {
			p.SNP.IDBlock, p.SNP.IDAuth = base64.StdEncoding.EncodeToString(make([]byte, 95)), "AA=="
		}, "exactly 96 bytes"},
		{"id auth not base64", func(p *launchParams) {
			p.SNP.IDBlock, p.SNP.IDAuth = base64.StdEncoding.EncodeToString(make([]byte, 96)), "a,b"
		}, "ID auth"},
		{"plain measurement not hex", func(p *launchParams) { p.SNP, p.Accel, p.LaunchMeasurement = nil, AccelTCG, strings.Repeat("z", 96) }, "want 96 hex characters"},
		{"plain measurement short", func(p *launchParams) { p.SNP, p.Accel, p.LaunchMeasurement = nil, AccelTCG, "abcd" }, `launch measurement "abcd"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := snpParams()
			tc.modify(&p)
			args, err := buildArgs(p)
			if err == nil {
				t.Fatalf("no error; args %q", args)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}
