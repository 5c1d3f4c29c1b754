package installer

import (
	"slices"
	"testing"
)

// TestDialectFor pins what each config version means: containerd 2.x's
// versions 3 and 4 write alike, containerd 1.7's version 2 differs in
// every respect.
func TestDialectFor(t *testing.T) {
	for _, tc := range []struct {
		version int
		want    dialect
	}{
		{2, dialect{version: 2, criPlugin: "io.containerd.grpc.v1.cri", carryMainCRI: true, oneDropIn: true}},
		{3, dialect{version: 3, criPlugin: "io.containerd.cri.v1.runtime", sandboxer: "podsandbox"}},
		{4, dialect{version: 4, criPlugin: "io.containerd.cri.v1.runtime", sandboxer: "podsandbox"}},
	} {
		if got := dialectFor(tc.version); got != tc.want {
			t.Errorf("dialectFor(%d) = %+v, want %+v", tc.version, got, tc.want)
		}
	}
	got := dialectFor(3).runtimeTablePath("contrast")
	if want := []string{"plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "contrast"}; !slices.Equal(got, want) {
		t.Errorf("runtime table path %v, want %v", got, want)
	}
}
