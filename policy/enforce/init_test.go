package enforce

import (
	"context"
	"errors"
	"testing"

	"github.com/contrast-vm/contrast/policy"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// TestInitContainerOrder drives a gate through pod lifecycles: the policy's
// init containers are api (runs to completion) then metrics (a sidecar),
// web is the app container. Each case is a sequence of steps; every step
// but the last must be allowed, the last is allowed or denied by the rule.
func TestInitContainerOrder(t *testing.T) {
	d := testData()
	d.Pod.InitContainers = []policy.InitContainer{{Name: "api"}, {Name: "metrics", Sidecar: true}}
	m, err := policy.Build(d)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	type step struct {
		op   string // create, exit0, exit1, remove
		name string
	}
	cases := []struct {
		name  string
		steps []step
		want  string // the last step's denying rule; "" allowed
	}{
		{name: "first init container first", steps: []step{{"create", "api"}}},
		{name: "in order: init, sidecar, app", steps: []step{{"create", "api"}, {"exit0", "api"}, {"create", "metrics"}, {"create", "web"}}},
		{name: "failed init container created again", steps: []step{{"create", "api"}, {"exit1", "api"}, {"remove", "api"}, {"create", "api"}}},
		{name: "sidecar restarted after the app started", steps: []step{{"create", "api"}, {"exit0", "api"}, {"create", "metrics"}, {"create", "web"}, {"exit1", "metrics"}, {"remove", "metrics"}, {"create", "metrics"}}},
		// Controls.
		{name: "app before the init containers", steps: []step{{"create", "web"}}, want: "create_container.init_order"},
		{name: "sidecar before the first init container", steps: []step{{"create", "metrics"}}, want: "create_container.init_order"},
		{name: "sidecar while the first runs", steps: []step{{"create", "api"}, {"create", "metrics"}}, want: "create_container.init_order"},
		{name: "sidecar after the first failed", steps: []step{{"create", "api"}, {"exit1", "api"}, {"create", "metrics"}}, want: "create_container.init_order"},
		{name: "app before the sidecar", steps: []step{{"create", "api"}, {"exit0", "api"}, {"create", "web"}}, want: "create_container.init_order"},
		{name: "init container again after the app started", steps: []step{{"create", "api"}, {"exit0", "api"}, {"create", "metrics"}, {"create", "web"}, {"remove", "api"}, {"create", "api"}}, want: "create_container.init_order"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGate(e)
			ctx := context.Background()
			ids := map[string]string{}
			n := 0
			for i, s := range tc.steps {
				last := i == len(tc.steps)-1
				var err error
				switch s.op {
				case "create":
					n++
					id := "c-" + s.name + "-" + string(rune('0'+n))
					req := createRequest(t, id, criSpec(testContainerNamed(t, s.name)), nil)
					err = g.Authorize(ctx, ServicePrefix+string(policy.CreateContainer), req)
					if err == nil {
						g.Done(ServicePrefix+string(policy.CreateContainer), req, nil)
						ids[s.name] = id
					}
				case "exit0", "exit1":
					status := 0
					if s.op == "exit1" {
						status = 1
					}
					g.Exited(ids[s.name], status)
				case "remove":
					req := &agentapi.RemoveContainerRequest{ContainerId: ids[s.name]}
					err = g.Authorize(ctx, ServicePrefix+string(policy.RemoveContainer), req)
					g.Done(ServicePrefix+string(policy.RemoveContainer), req, err)
				}
				if !last || tc.want == "" {
					if err != nil {
						t.Fatalf("step %d (%s %s): %v", i+1, s.op, s.name, err)
					}
					continue
				}
				var den *Denial
				if !errors.As(err, &den) || den.Rule != tc.want {
					t.Fatalf("step %d (%s %s): %v, want a denial by %s", i+1, s.op, s.name, err, tc.want)
				}
				t.Logf("denied: %v", err)
			}
		})
	}
}
