package shim

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// TestInfoFeatures: containerd's CRI reads the features from Info as it
// reads runc's: a features.Features under the runtime-spec's type URL,
// offering recursive read-only mounts and not idmapped ones.
func TestInfoFeatures(t *testing.T) {
	info, err := manager{}.Info(context.Background(), strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if info.Features == nil {
		t.Fatal("Info carries no features")
	}
	if !strings.HasSuffix(info.Features.GetTypeUrl(), "opencontainers/runtime-spec/1/features/Features") {
		t.Errorf("features type URL %q is not the runtime-spec's", info.Features.GetTypeUrl())
	}
	v, err := typeurl.UnmarshalAny(info.Features)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := v.(*features.Features)
	if !ok {
		t.Fatalf("features are a %T", v)
	}
	if !slices.Contains(f.MountOptions, "rro") || !slices.Contains(f.MountOptions, "rbind") {
		t.Errorf("mount options %v lack rro or rbind", f.MountOptions)
	}
	for _, refused := range []string{"idmap", "tmpcopyup", "remount", "nosymfollow"} {
		if slices.Contains(f.MountOptions, refused) {
			t.Errorf("mount options offer %s, which the pod VM refuses", refused)
		}
	}
	if f.Linux == nil || f.Linux.MountExtensions == nil || *f.Linux.MountExtensions.IDMap.Enabled {
		t.Error("idmapped mounts offered")
	}
	if slices.Contains(f.Linux.Namespaces, "user") {
		t.Error("user namespaces offered")
	}
}
