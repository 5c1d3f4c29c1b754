package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/contrast-vm/contrast/api/agent"
)

// CreateContainer with image layers: bad layers are refused naming the
// layer and field, and a layer that cannot be opened (the host has no
// device-mapper) leaves nothing behind. Opening layers for real is tested
// in the guest (agent/storage).
func TestCreateContainerLayersRefused(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if _, err := h.client.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	spec, err := json.Marshal(podSpec("true"))
	if err != nil {
		t.Fatal(err)
	}
	good := func(serial string) *api.Layer {
		return &api.Layer{Serial: serial, Digest: "sha256:" + strings.Repeat("a", 64), RootHash: strings.Repeat("b", 64), DataBlocks: 1}
	}
	withRootHash := func(l *api.Layer, h string) *api.Layer { l.RootHash = h; return l }
	withDigest := func(l *api.Layer, d string) *api.Layer { l.Digest = d; return l }
	withBlocks := func(l *api.Layer, n uint64) *api.Layer { l.DataBlocks = n; return l }
	for _, tc := range []struct {
		name    string
		id      string
		layers  []*api.Layer
		code    codes.Code
		wantErr []string
	}{
		{"bad root hash", "l1", []*api.Layer{good("img1"), withRootHash(good("img1"), "ABC")}, codes.InvalidArgument, []string{"l1", "layer|1", "root_hash", `"ABC"`}},
		{"bad digest", "l2", []*api.Layer{withDigest(good("img1"), "sha256:x")}, codes.InvalidArgument, []string{"l2", "layer|0", "digest"}},
		{"bad serial", "l3", []*api.Layer{good("../x")}, codes.InvalidArgument, []string{"l3", "layer 0", "serial", `"../x"`}},
		{"no data blocks", "l4", []*api.Layer{withBlocks(good("img1"), 0)}, codes.InvalidArgument, []string{"l4", "layer 0", "data_blocks"}},
		{"missing device", "l5", []*api.Layer{good("nope")}, codes.Unknown, []string{"l5", "layer 0", `serial "nope"`}},
		{"cannot open", "l6", []*api.Layer{good("img1")}, codes.Unknown, []string{"l6", "layer 0", "img1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No rootfs device: with layers it is not needed.
			_, err := h.client.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: tc.id, Spec: spec, Layers: tc.layers,
				SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts", Content: []byte("l")}}})
			if err == nil {
				t.Fatal("accepted")
			}
			if status.Code(err) != tc.code {
				t.Errorf("code %v, want %v (%v)", status.Code(err), tc.code, err)
			}
			for _, w := range tc.wantErr {
				// The policy gate checks the format first and names the
				// layer its way ("layers[1]"); the agent says "layer 1".
				if i, ok := strings.CutPrefix(w, "layer|"); ok {
					if !strings.Contains(err.Error(), "layer "+i) && !strings.Contains(err.Error(), "layers["+i+"]") {
						t.Errorf("error %q does not name layer %s", err, i)
					}
					continue
				}
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			t.Logf("error: %v", err)
			h.assertClean()
			entries, err := os.ReadDir(filepath.Join(h.runDir, "layers"))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if len(entries) > 0 {
				t.Errorf("left in the layers directory: %v", entries)
			}
		})
	}
}
