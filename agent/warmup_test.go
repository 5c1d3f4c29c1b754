package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
)

// TestPolicyWarmUp: the made-up requests are ones the policy can judge
// (their input builds, the rules evaluate without error) under a generated
// policy and under allow-all, and deciding them leaves the gate's state as
// it was: the made-up container is not known afterwards.
func TestPolicyWarmUp(t *testing.T) {
	ctx := context.Background()
	generated, err := policy.Build(policy.Data{Version: policy.DataVersion})
	if err != nil {
		t.Fatal(err)
	}
	for name, module := range map[string][]byte{"generated": generated, "allow-all": policy.AllowAll()} {
		t.Run(name, func(t *testing.T) {
			g := newPolicyGate(nil)
			if err := g.warmUp(ctx); err != nil {
				t.Errorf("warm-up without a policy: %v", err)
			}
			if _, err := g.set(ctx, wrapped(module)); err != nil {
				t.Fatal(err)
			}
			// the first container's create cuts it short
			cut, cancel := context.WithCancel(ctx)
			cancel()
			if err := g.warmUp(cut); !errors.Is(err, context.Canceled) {
				t.Errorf("warm-up with its context ended: %v, want context.Canceled", err)
			}
			if err := g.warmUp(ctx); err != nil {
				t.Fatalf("warm-up: %v", err)
			}
			reqs, err := warmUpRequests()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := enforce.Input(reqs[0].kind, reqs[0].req, nil); err != nil {
				t.Fatalf("warm-up create input: %v", err)
			}
			if !g.installed.Load().gate.DiscardOutput(warmUpID) {
				t.Errorf("the gate knows the warm-up container %s after the warm-up", warmUpID)
			}
		})
	}
}
