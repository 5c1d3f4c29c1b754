package guestspec

import (
	"encoding/json"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withBlockDevice adds a raw block volume the way containerd's CRI writes
// it: the device entry with the host's numbers and an allow rule for them.
func withBlockDevice(s *specs.Spec, path string, major, minor int64) {
	s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: path, Type: "b", Major: major, Minor: minor})
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "mrw"})
}

func rewriteWith(t *testing.T, s *specs.Spec, volumes []BlockVolume) (*Result, error) {
	t.Helper()
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	in := testInput
	in.BlockVolumes = volumes
	return Rewrite(raw, in)
}

func TestBlockVolumeGetsGuestNumbers(t *testing.T) {
	s := criSpec()
	withBlockDevice(s, "/dev/xvda", 7, 3)
	withBlockDevice(s, "/dev/xvdb", 7, 4)
	r, err := rewriteWith(t, s, []BlockVolume{{ContainerPath: "/dev/xvdb", Major: 254, Minor: 16}, {ContainerPath: "/dev/xvda", Major: 254, Minor: 32}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]int64{}
	for _, d := range r.Spec.Linux.Devices {
		got[d.Path] = [2]int64{d.Major, d.Minor}
	}
	if got["/dev/xvda"] != [2]int64{254, 32} || got["/dev/xvdb"] != [2]int64{254, 16} {
		t.Errorf("devices after rewrite: %v, want /dev/xvda 254:32 and /dev/xvdb 254:16", got)
	}
	rules := r.Spec.Linux.Resources.Devices
	if len(rules) != 3 || rules[0].Allow || rules[0].Major != nil {
		t.Fatalf("device rules: %+v, want containerd's deny-all and two allow rules", rules)
	}
	for i, want := range [][2]int64{{254, 32}, {254, 16}} {
		r := rules[i+1]
		if !r.Allow || r.Type != "b" || r.Access != "mrw" || *r.Major != want[0] || *r.Minor != want[1] {
			t.Errorf("rule %d: %+v (%d:%d), want an allow rule for %d:%d", i+1, r, *r.Major, *r.Minor, want[0], want[1])
		}
	}
}

func TestBlockDeviceWithoutVolumeUnchanged(t *testing.T) {
	s := criSpec()
	withBlockDevice(s, "/dev/xvda", 7, 3)
	r, err := rewriteWith(t, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.Spec.Linux.Devices[0]; d.Major != 7 || d.Minor != 3 {
		t.Errorf("device without a volume changed to %d:%d", d.Major, d.Minor)
	}
}

func TestBlockVolumeRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    func(*specs.Spec)
		volumes []BlockVolume
		wantErr string
	}{
		{
			name:    "no device at the path",
			spec:    func(s *specs.Spec) { withBlockDevice(s, "/dev/xvda", 7, 3) },
			volumes: []BlockVolume{{ContainerPath: "/dev/xvdz", Major: 254, Minor: 0}},
			wantErr: "block volume for /dev/xvdz: the spec has no device there",
		},
		{
			name: "character device",
			spec: func(s *specs.Spec) {
				s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/xvda", Type: "c", Major: 1, Minor: 3})
			},
			volumes: []BlockVolume{{ContainerPath: "/dev/xvda", Major: 254, Minor: 0}},
			wantErr: `the spec's device there has type "c"`,
		},
		{
			name: "two entries at the path",
			spec: func(s *specs.Spec) {
				withBlockDevice(s, "/dev/xvda", 7, 3)
				withBlockDevice(s, "/dev/xvda", 7, 4)
			},
			volumes: []BlockVolume{{ContainerPath: "/dev/xvda", Major: 254, Minor: 0}},
			wantErr: "the spec lists two devices there",
		},
		{
			name: "two volumes naming one host device",
			spec: func(s *specs.Spec) {
				withBlockDevice(s, "/dev/xvda", 7, 3)
				withBlockDevice(s, "/dev/xvdb", 7, 3)
			},
			volumes: []BlockVolume{{ContainerPath: "/dev/xvda", Major: 254, Minor: 0}, {ContainerPath: "/dev/xvdb", Major: 254, Minor: 16}},
			wantErr: "same host device 7:3",
		},
		{
			name:    "two volumes at one path",
			spec:    func(s *specs.Spec) { withBlockDevice(s, "/dev/xvda", 7, 3) },
			volumes: []BlockVolume{{ContainerPath: "/dev/xvda", Major: 254, Minor: 0}, {ContainerPath: "/dev/xvda", Major: 254, Minor: 16}},
			wantErr: "two block volumes for /dev/xvda",
		},
		{
			name:    "unclean path",
			spec:    func(s *specs.Spec) { withBlockDevice(s, "/dev/../xvda", 7, 3) },
			volumes: []BlockVolume{{ContainerPath: "/dev/../xvda", Major: 254, Minor: 0}},
			wantErr: `block volume path "/dev/../xvda" is not a clean absolute path`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := criSpec()
			tc.spec(s)
			_, err := rewriteWith(t, s, tc.volumes)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
