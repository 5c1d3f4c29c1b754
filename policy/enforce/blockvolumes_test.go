package enforce

import (
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
)

// TestInputBlockVolumes: the rules see every device entry in full and the
// raw block volumes' paths as a set; a path given twice or not clean is
// refused, naming it.
func TestInputBlockVolumes(t *testing.T) {
	spec := criSpec(testContainerNamed(t, "web"))
	spec.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/xvda", Type: "b", Major: 7, Minor: 3}}
	req := createRequest(t, "c-1", spec, nil)
	req.BlockVolumes = []*agentapi.BlockVolume{{Serial: "v1", ContainerPath: "/dev/xvda"}}
	in, err := Input(policy.CreateContainer, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantEntries := []any{map[string]any{"path": "/dev/xvda", "type": "b", "major": int64(7), "minor": int64(3)}}
	if !reflect.DeepEqual(in["device_entries"], wantEntries) {
		t.Errorf("device_entries %#v, want %#v", in["device_entries"], wantEntries)
	}
	if want := map[string]any{"/dev/xvda": true}; !reflect.DeepEqual(in["block_volumes"], want) {
		t.Errorf("block_volumes %#v, want %#v", in["block_volumes"], want)
	}

	req.BlockVolumes = nil
	if in, err := Input(policy.CreateContainer, req, nil); err != nil || !reflect.DeepEqual(in["block_volumes"], map[string]any{}) {
		t.Errorf("no volumes: block_volumes %#v, %v; want an empty set", in["block_volumes"], err)
	}

	for _, tc := range []struct {
		name    string
		volumes []*agentapi.BlockVolume
		wantErr string
	}{
		{"twice", []*agentapi.BlockVolume{{Serial: "v1", ContainerPath: "/dev/xvda"}, {Serial: "v2", ContainerPath: "/dev/xvda"}}, `block_volumes[1].container_path "/dev/xvda": given twice`},
		{"unclean", []*agentapi.BlockVolume{{Serial: "v1", ContainerPath: "/dev/./xvda"}}, `block_volumes[0].container_path "/dev/./xvda": not a clean absolute path`},
		{"relative", []*agentapi.BlockVolume{{Serial: "v1", ContainerPath: "xvda"}}, `block_volumes[0].container_path "xvda": not a clean absolute path`},
	} {
		req.BlockVolumes = tc.volumes
		if _, err := Input(policy.CreateContainer, req, nil); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}
