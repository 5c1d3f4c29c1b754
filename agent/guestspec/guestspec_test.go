package guestspec

import (
	"encoding/json"
	"errors"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	testID     = "c0ffee"
	testRootfs = "/run/contrast/containers/c0ffee/rootfs"
	testShared = "/run/contrast/containers/c0ffee/shared"
	sandboxDir = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/5a5"
)

var testInput = Input{
	ContainerID:  testID,
	RootfsPath:   testRootfs,
	SharedDir:    testShared,
	CgroupParent: "/containers",
	SharedFiles: []SharedFile{
		{Destination: "/etc/hosts", Content: []byte("127.0.0.1 localhost\n"), Mode: 0o644},
		{Destination: "/etc/hostname", Content: []byte("pod\n")},
		{Destination: "/etc/resolv.conf", Content: []byte("nameserver 10.0.0.10\n"), Mode: 0o100644},
	},
}

// criSpec is a container spec the way containerd's CRI plugin writes it for
// a pod container (trimmed to the parts the rewrite looks at).
func criSpec() *specs.Spec {
	oom := 1000
	return &specs.Spec{
		Version: "1.2.1",
		Process: &specs.Process{
			User:            specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{0, 10}},
			Args:            []string{"/bin/sh", "-c", "echo hi"},
			Env:             []string{"PATH=/usr/bin:/bin", "HOSTNAME=pod"},
			Cwd:             "/",
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{"CAP_CHOWN"}, Effective: []string{"CAP_CHOWN"}, Permitted: []string{"CAP_CHOWN"}},
			NoNewPrivileges: false,
			ApparmorProfile: "cri-containerd.apparmor.d",
			OOMScoreAdj:     &oom,
		},
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "pod",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/kubelet/pods/u1d/etc-hosts", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/etc/hostname", Type: "bind", Source: sandboxDir + "/hostname", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/etc/resolv.conf", Type: "bind", Source: sandboxDir + "/resolv.conf", Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/5a5/shm", Options: []string{"rbind", "rprivate", "rw"}},
		},
		Hooks: &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/nvidia-hook"}}},
		Annotations: map[string]string{
			"io.kubernetes.cri.container-type": "container",
			"io.kubernetes.cri.sandbox-id":     "5a5",
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				BlockIO: &specs.LinuxBlockIO{Weight: new(uint16)},
			},
			CgroupsPath: "kubepods-besteffort-podu1d.slice:cri-containerd:c0ffee",
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"},
				{Type: specs.UTSNamespace, Path: "/proc/42/ns/uts"},
				{Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1234"},
			},
			MaskedPaths:   []string{"/proc/kcore"},
			ReadonlyPaths: []string{"/proc/sys"},
			MountLabel:    "system_u:object_r:container_file_t:s0",
		},
	}
}

// guestSpec is criSpec as the guest must run it.
func guestSpec() *specs.Spec {
	s := criSpec()
	s.Process.ApparmorProfile = ""
	s.Root = &specs.Root{Path: testRootfs}
	s.Hostname = ""
	s.Hooks = nil
	s.Mounts[6].Source = testShared + "/00-etc_hosts"
	s.Mounts[7].Source = testShared + "/01-etc_hostname"
	s.Mounts[8].Source = testShared + "/02-etc_resolv.conf"
	s.Mounts[9] = specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}}
	s.Linux.Resources.BlockIO = nil
	s.Linux.CgroupsPath = "/containers/" + testID
	// a cgroup namespace is added: the guest runs cgroup v2 whatever the host does
	s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}}
	s.Linux.MountLabel = ""
	return s
}

func guestFiles() []File {
	return []File{
		{Path: testShared + "/00-etc_hosts", Content: []byte("127.0.0.1 localhost\n"), Mode: 0o644, Destination: "/etc/hosts"},
		{Path: testShared + "/01-etc_hostname", Content: []byte("pod\n"), Mode: 0o644, Destination: "/etc/hostname"},
		{Path: testShared + "/02-etc_resolv.conf", Content: []byte("nameserver 10.0.0.10\n"), Mode: 0o644, Destination: "/etc/resolv.conf"},
	}
}

func TestRewrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    func(*specs.Spec)
		input func(*Input)
		want  func(*specs.Spec)
		files func([]File) []File
	}{
		{name: "cri container"},
		{
			name: "container joins the sandbox's pid namespace (shareProcessNamespace)",
			in: func(s *specs.Spec) {
				s.Linux.Namespaces[0].Path = "/proc/42/ns/pid"
			},
			input: func(in *Input) {
				in.PodPIDNamespace = func() (string, error) { return "/proc/7/ns/pid", nil }
			},
			want: func(s *specs.Spec) { s.Linux.Namespaces[0].Path = "/proc/7/ns/pid" },
		},
		{
			name: "read-only root, selinux label",
			in: func(s *specs.Spec) {
				s.Root.Readonly = true
				s.Process.SelinuxLabel = "system_u:system_r:container_t:s0"
			},
			want: func(s *specs.Spec) { s.Root.Readonly = true },
		},
		{
			name: "bind given as options only, relative destination",
			in: func(s *specs.Spec) {
				s.Mounts[6].Type = ""
				s.Mounts[6].Destination = "etc/hosts"
			},
			want: func(s *specs.Spec) {
				s.Mounts[6].Type = ""
				s.Mounts[6].Destination = "etc/hosts"
			},
		},
		{
			name:  "shared file without a mount is ignored",
			input: func(in *Input) { in.SharedFiles = append(in.SharedFiles, SharedFile{Destination: "/etc/other"}) },
		},
		{
			name: "user and cgroup namespaces without path stay",
			in: func(s *specs.Spec) {
				s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace}, specs.LinuxNamespace{Type: specs.CgroupNamespace})
				s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
			},
			want: func(s *specs.Spec) {
				s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.UserNamespace}, {Type: specs.CgroupNamespace}}
				s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := criSpec()
			if tc.in != nil {
				tc.in(in)
			}
			input := testInput
			input.SharedFiles = slices.Clone(testInput.SharedFiles)
			if tc.input != nil {
				tc.input(&input)
			}
			raw, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Rewrite(raw, input)
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			want := guestSpec()
			if tc.want != nil {
				tc.want(want)
			}
			if !reflect.DeepEqual(res.Spec, want) {
				got, _ := json.MarshalIndent(res.Spec, "", " ")
				exp, _ := json.MarshalIndent(want, "", " ")
				t.Errorf("guest spec:\n%s\nwant:\n%s", got, exp)
			}
			if !reflect.DeepEqual(res.Files, guestFiles()) {
				t.Errorf("files %+v, want %+v", res.Files, guestFiles())
			}
			if len(res.Notes) == 0 {
				t.Error("no notes on what was changed")
			}
			t.Logf("notes: %s", strings.Join(res.Notes, "; "))
		})
	}
}

func TestRewriteRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      func(*specs.Spec)
		input   func(*Input)
		raw     string
		wantErr string
	}{
		{name: "host dir bind", in: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/pods/u1d/volumes/x", Options: []string{"rbind"}})
		}, wantErr: `bind mount of host path "/var/lib/kubelet/pods/u1d/volumes/x" to "/data"`},
		{name: "persistent volume", in: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/pods/u1d/volumes/kubernetes.io~csi/pvc-1/mount", Options: []string{"rbind"}})
		}, wantErr: `volume pvc-1 (csi) at "/data": bind mount of host path "/var/lib/kubelet/pods/u1d/volumes/kubernetes.io~csi/pvc-1/mount" is not supported in the VM: a host directory cannot be shared`},
		{name: "host bind without shared file", input: func(in *Input) { in.SharedFiles = in.SharedFiles[1:] },
			wantErr: `bind mount of host path "/var/lib/kubelet/pods/u1d/etc-hosts" to "/etc/hosts"`},
		{name: "block device mount", in: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "ext4", Source: "/dev/sdb"})
		}, wantErr: `mount of "/dev/sdb" (type "ext4") at "/data" refers to the host`},
		{name: "shared pid namespace without one", in: func(s *specs.Spec) { s.Linux.Namespaces[0].Path = "/proc/42/ns/pid" },
			wantErr: `pid namespace path "/proc/42/ns/pid": the pod's shared PID namespace is not available`},
		{name: "shared pid namespace that fails", in: func(s *specs.Spec) { s.Linux.Namespaces[0].Path = "/proc/42/ns/pid" },
			input: func(in *Input) {
				in.PodPIDNamespace = func() (string, error) { return "", errors.New("no holder") }
			}, wantErr: `pid namespace path "/proc/42/ns/pid": no holder`},
		{name: "user namespace path", in: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: "/proc/42/ns/user"})
		}, wantErr: `user namespace path "/proc/42/ns/user" refers to the host`},
		{name: "cgroup core file", in: func(s *specs.Spec) {
			s.Linux.Resources = &specs.LinuxResources{Unified: map[string]string{"memory.high": "1M", "cgroup.procs": "1"}}
		}, wantErr: `unified resource "cgroup.procs" is a cgroup core file`},
		{name: "no process", in: func(s *specs.Spec) { s.Process = nil }, wantErr: "OCI spec has no process"},
		{name: "no args", in: func(s *specs.Spec) { s.Process.Args = nil }, wantErr: "process has no args"},
		{name: "windows", in: func(s *specs.Spec) { s.Windows = &specs.Windows{} }, wantErr: "not for Linux"},
		{name: "net devices", in: func(s *specs.Spec) {
			s.Linux.NetDevices = map[string]specs.LinuxNetDevice{"eth1": {}}
		}, wantErr: "netDevices"},
		{name: "seccomp listener", in: func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{ListenerPath: "/run/seccomp-agent.sock"}
		}, wantErr: `seccomp listener "/run/seccomp-agent.sock"`},
		{name: "duplicate shared file", input: func(in *Input) { in.SharedFiles = append(in.SharedFiles, in.SharedFiles[0]) },
			wantErr: `two shared files for destination "/etc/hosts"`},
		{name: "relative shared file", input: func(in *Input) { in.SharedFiles[0].Destination = "etc/hosts" },
			wantErr: `shared file destination "etc/hosts" is not a clean absolute path`},
		{name: "two mounts on one shared file", in: func(s *specs.Spec) { s.Mounts = append(s.Mounts, s.Mounts[6]) },
			wantErr: `two bind mounts at "/etc/hosts"`},
		{name: "not json", raw: "{", wantErr: "parse OCI spec"},
		{name: "trailing data", raw: `{"process":{"args":["x"],"cwd":"/"}} {}`, wantErr: "trailing data"},
		{name: "wrong type", raw: `{"mounts":"x"}`, wantErr: "parse OCI spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			if tc.raw == "" {
				in := criSpec()
				if tc.in != nil {
					tc.in(in)
				}
				raw, _ = json.Marshal(in)
			}
			input := testInput
			input.SharedFiles = slices.Clone(testInput.SharedFiles)
			if tc.input != nil {
				tc.input(&input)
			}
			_, err := Rewrite(raw, input)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Rewrite error %v, want one containing %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), testID) {
				t.Errorf("error %q does not name the container", err)
			}
		})
	}
}

func TestRewriteProcess(t *testing.T) {
	p, notes, err := RewriteProcess([]byte(`{"args":["cat"],"cwd":"/","user":{"uid":1000,"gid":1000},"apparmorProfile":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.ApparmorProfile != "" || len(notes) != 1 || p.User.UID != 1000 {
		t.Errorf("process %+v notes %v", p, notes)
	}
	if p, _, err := RewriteProcess([]byte(`{"args":["sh"],"cwd":"/","terminal":true,"consoleSize":{"height":24,"width":80}}`)); err != nil || !p.Terminal || p.ConsoleSize.Width != 80 {
		t.Errorf("terminal exec: %+v %v", p, err)
	}
	if _, _, err := RewriteProcess([]byte(`{"cwd":"/"}`)); err == nil {
		t.Error("exec without args accepted")
	}
}

// FuzzRewrite feeds arbitrary JSON as the host's spec: the rewrite must never
// panic, and whatever it accepts must not refer to the host any more.
func FuzzRewrite(f *testing.F) {
	raw, _ := json.Marshal(criSpec())
	f.Add(raw)
	f.Add([]byte(`{"process":{"args":["x"],"cwd":"/"},"mounts":[{"destination":"/x","type":"bind","source":"/"}]}`))
	f.Add([]byte(`{"process":{"args":["x"],"cwd":"/"},"linux":{"namespaces":[{"type":"network","path":"/x"},{"type":"pid","path":"/y"}]}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		res, err := Rewrite(raw, testInput)
		if err != nil {
			return
		}
		s := res.Spec
		if s.Root == nil || s.Root.Path != testRootfs {
			t.Fatalf("root %+v", s.Root)
		}
		if s.Hooks != nil || s.Hostname != "" || s.Process == nil || s.Process.ApparmorProfile != "" || s.Process.SelinuxLabel != "" {
			t.Fatalf("host settings survived: %+v", s)
		}
		if s.Linux.CgroupsPath != "/containers/"+testID || s.Linux.MountLabel != "" {
			t.Fatalf("linux %+v", s.Linux)
		}
		if s.Linux.Resources != nil {
			for k := range s.Linux.Resources.Unified {
				if CheckUnifiedKey(k) != nil {
					t.Fatalf("unified resource %q accepted", k)
				}
			}
		}
		for _, ns := range s.Linux.Namespaces {
			if ns.Path != "" || ns.Type == specs.NetworkNamespace || ns.Type == specs.IPCNamespace || ns.Type == specs.UTSNamespace {
				t.Fatalf("namespace %+v survived", ns)
			}
		}
		for _, m := range s.Mounts {
			if isBind(m) && path.Dir(m.Source) != testShared {
				t.Fatalf("bind mount %+v from outside the shared dir", m)
			}
			if !isBind(m) && !slices.Contains(virtualFS, m.Type) {
				t.Fatalf("mount %+v refers to the host", m)
			}
		}
		for _, f := range res.Files {
			if path.Dir(f.Path) != testShared {
				t.Fatalf("file %s outside the shared dir", f.Path)
			}
		}
	})
}

// FuzzRewriteProcess feeds arbitrary JSON as an exec process.
func FuzzRewriteProcess(f *testing.F) {
	f.Add([]byte(`{"args":["cat"],"cwd":"/","user":{"uid":1000,"gid":1000},"apparmorProfile":"x"}`))
	f.Add([]byte(`{"args":["sh"],"cwd":"/","terminal":true}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, _, err := RewriteProcess(raw)
		if err != nil {
			return
		}
		if len(p.Args) == 0 || p.ApparmorProfile != "" || p.SelinuxLabel != "" {
			t.Fatalf("accepted %+v", p)
		}
	})
}

// TestRewriteAttestationMount checks that the agent's attestation endpoint
// is mounted read-only into the container, after (over) the spec's own
// mounts, and only when the agent serves one.
func TestRewriteAttestationMount(t *testing.T) {
	in := criSpec()
	// A tmpfs the spec puts over /run must not hide the endpoint.
	in.Mounts = append(in.Mounts, specs.Mount{Destination: "/run", Type: "tmpfs", Source: "tmpfs"})
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir  string
		want *specs.Mount
	}{
		{dir: ""},
		{dir: "/run/contrast/attestation", want: &specs.Mount{
			Destination: AttestationMountPoint, Type: "bind", Source: "/run/contrast/attestation",
			Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		}},
	} {
		input := testInput
		input.AttestationDir = tc.dir
		res, err := Rewrite(raw, input)
		if err != nil {
			t.Fatal(err)
		}
		mounts := res.Spec.Mounts
		last := mounts[len(mounts)-1]
		if tc.want == nil {
			if last.Destination != "/run" {
				t.Errorf("no endpoint: last mount %+v, want the spec's /run", last)
			}
			continue
		}
		if !reflect.DeepEqual(last, *tc.want) {
			t.Errorf("last mount %+v, want %+v", last, *tc.want)
		}
		if len(mounts) != len(in.Mounts)+1 {
			t.Errorf("%d mounts, want the spec's %d and the endpoint", len(mounts), len(in.Mounts))
		}
	}
}
