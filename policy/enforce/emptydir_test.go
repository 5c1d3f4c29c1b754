package enforce

import (
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
)

// TestInputMemoryVolumes: the host's Memory emptyDirs reach the rules by
// name with their sizes, and only for emptyDirs the judged spec mounts.
func TestInputMemoryVolumes(t *testing.T) {
	spec := criSpec(testContainerNamed(t, "web"))
	spec.Mounts = append(spec.Mounts, specs.Mount{
		Destination: "/fast", Type: "bind", Options: []string{"rbind", "rprivate", "rw"},
		Source: "/var/lib/kubelet/pods/0b6f3c2e/volumes/kubernetes.io~empty-dir/fast",
	}, specs.Mount{
		Destination: "/cm", Type: "bind", Options: []string{"rbind", "rprivate", "ro"},
		Source: "/var/lib/kubelet/pods/0b6f3c2e/volumes/kubernetes.io~configmap/cm",
	})
	raw := mustJSON(t, spec)
	req := func(vols ...*agentapi.MemoryVolume) *agentapi.CreateContainerRequest {
		return &agentapi.CreateContainerRequest{ContainerId: "c-1", Spec: raw, Layers: testLayers("web"), MemoryVolumes: vols}
	}
	in, err := Input(policy.CreateContainer, req(&agentapi.MemoryVolume{Name: "fast", SizeBytes: 1 << 20}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{"fast": int64(1 << 20)}; !reflect.DeepEqual(in["memory_volumes"], want) {
		t.Errorf("memory_volumes = %v, want %v", in["memory_volumes"], want)
	}
	in, err = Input(policy.CreateContainer, req(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{}; !reflect.DeepEqual(in["memory_volumes"], want) {
		t.Errorf("memory_volumes without any = %v, want %v", in["memory_volumes"], want)
	}
	for name, tc := range map[string]struct {
		vols []*agentapi.MemoryVolume
		want string
	}{
		"not mounted":     {[]*agentapi.MemoryVolume{{Name: "other", SizeBytes: 1}}, `"other" is no emptyDir`},
		"not an emptyDir": {[]*agentapi.MemoryVolume{{Name: "cm", SizeBytes: 1}}, `"cm" is no emptyDir`},
		"twice":           {[]*agentapi.MemoryVolume{{Name: "fast", SizeBytes: 1}, {Name: "fast", SizeBytes: 1}}, "given twice"},
		"size 0":          {[]*agentapi.MemoryVolume{{Name: "fast"}}, "size 0"},
	} {
		if _, err := Input(policy.CreateContainer, req(tc.vols...), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, tc.want)
		}
	}
}
