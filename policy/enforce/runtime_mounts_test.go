package enforce

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestJudgeRuntimeMount: containerd's runtime mounts as 1.7 and 2.4 send
// them pass; each way a mount differs from the table is named.
func TestJudgeRuntimeMount(t *testing.T) {
	cases := []struct {
		name    string
		m       specs.Mount
		roRoot  bool
		want    string
		wantWhy string
	}{
		{"/proc", specs.Mount{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}}, false, runtimeOK, ""},
		{"/dev", specs.Mount{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}}, false, runtimeOK, ""},
		{"/sys read-only", specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}}, false, runtimeOK, ""},
		{"/sys/fs/cgroup v1", specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}}, false, runtimeOK, ""},
		{"/dev/shm of the sandbox", specs.Mount{Destination: "/dev/shm", Type: "bind", Source: "/run/x/shm", Options: []string{"rbind", "rprivate", "rw"}}, false, runtimeOK, ""},
		{"/etc/hostname", specs.Mount{Destination: "/etc/hostname", Type: "bind", Source: "/x/hostname", Options: []string{"rbind", "rprivate", "rw"}}, false, runtimeOK, ""},
		{"/etc/hostname read-only with a read-only root", specs.Mount{Destination: "/etc/hostname", Type: "bind", Source: "/x/hostname", Options: []string{"rbind", "rprivate", "ro"}}, true, runtimeOK, ""},
		// Controls.
		{"/etc/resolv.conf writable with a read-only root", specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: "/x/resolv.conf", Options: []string{"rbind", "rprivate", "rw"}}, true, runtimeOther, "containerd binds it as the root"},
		{"/etc/hostname read-only with a writable root", specs.Mount{Destination: "/etc/hostname", Type: "bind", Source: "/x/hostname", Options: []string{"rbind", "ro"}}, false, runtimeOther, "containerd binds it as the root"},
		{"/sys writable", specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "rw"}}, false, runtimeWritable, "must be read-only"},
		{"/sys ro undone", specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro", "rw"}}, false, runtimeWritable, "must be read-only"},
		{"/dev larger", specs.Mount{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755", "size=1g"}}, false, runtimeOther, `options ["mode=755","size=1g"], the runtime's are ["mode=755","size=65536k"]`},
		{"/dev with an option more", specs.Mount{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755", "size=65536k", "uid=0"}}, false, runtimeOther, "options"},
		{"/proc without noexec", specs.Mount{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "nodev"}}, false, runtimeOther, `lacks ["noexec"]`},
		{"/proc with exec undoing noexec", specs.Mount{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev", "exec"}}, false, runtimeOther, `lacks ["noexec"]`},
		{"/proc as a bind", specs.Mount{Destination: "/proc", Type: "bind", Source: "/proc", Options: []string{"rbind"}}, false, runtimeOther, `type "bind", the runtime's is ["proc"]`},
		{"/dev/shm shared", specs.Mount{Destination: "/dev/shm", Type: "bind", Source: "/run/x/shm", Options: []string{"rbind", "rshared", "rw"}}, false, runtimeOther, `propagation "rshared"`},
		{"a volume", specs.Mount{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/x", Options: []string{"rbind"}}, false, runtimeOther, "neither a runtime default nor in the policy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mi, err := mountInput(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			got, why := judgeRuntimeMount(mi, tc.roRoot)
			if got != tc.want || (tc.wantWhy == "") != (why == "") || !strings.Contains(why, tc.wantWhy) {
				t.Errorf("%s, %q; want %s, %q", got, why, tc.want, tc.wantWhy)
			}
		})
	}
}
