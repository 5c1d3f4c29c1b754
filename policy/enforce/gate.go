package enforce

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/contrast-vm/contrast/policy"
	"google.golang.org/protobuf/proto"
)

// ServicePrefix is how the agent API's full ttrpc method names begin.
const ServicePrefix = "/contrast.agent.v1.Agent/"

// Gate authorizes the agent's requests against a policy and remembers which
// container ids were created under which container name, so that requests
// carrying only an id are judged against the right container. Safe for
// concurrent use.
type Gate struct {
	engine *Engine

	mu         sync.Mutex
	containers map[string]string // container id -> name, for allowed creates
	// discard holds the ids of allowed containers whose output the host
	// may not read.
	discard map[string]bool
	// writeBack holds, per allowed container id, the mount destinations
	// whose guest copies the host gets back (Decision.WriteBack).
	writeBack map[string][]string
	// env holds the effective environment (Input's set of NAME=VALUE) each
	// allowed container was created with: containerd builds an exec's
	// process from the container's, so the rules compare an exec's
	// environment with it (input.container_env).
	env map[string]map[string]any
	// created holds the names of the containers the agent has created,
	// completed those of containers whose process exited with status 0:
	// the pod's progress, which the rules read (input.pod_state) to keep
	// init containers in order.
	created, completed map[string]bool
}

// Engine is the engine the gate decides with.
func (g *Gate) Engine() *Engine { return g.engine }

// NewGate returns a gate deciding with e.
func NewGate(e *Engine) *Gate {
	return &Gate{
		engine: e, containers: map[string]string{}, discard: map[string]bool{}, env: map[string]map[string]any{},
		writeBack: map[string][]string{}, created: map[string]bool{}, completed: map[string]bool{},
	}
}

// Denial is the error of a request the policy does not allow. Its message
// reaches the user (crictl, kubectl describe), so it names the request, the
// check and what differs.
type Denial struct {
	Kind   policy.Kind
	Rule   string
	Reason string
}

func (d *Denial) Error() string {
	if d.Rule == "" {
		return fmt.Sprintf("policy denies %s: %s", d.Kind, d.Reason)
	}
	return fmt.Sprintf("policy denies %s: rule %s: %s", d.Kind, d.Rule, d.Reason)
}

// Authorize decides the request req of the full ttrpc method name (for
// example "/contrast.agent.v1.Agent/CreateContainer"). It returns nil when
// the policy allows it, a *Denial when it does not (also for a request it
// cannot read), and another error when asked about Health or SetPolicy,
// which the agent handles before any policy applies.
func (g *Gate) Authorize(ctx context.Context, method string, req any) error {
	name, ok := strings.CutPrefix(method, ServicePrefix)
	if !ok {
		return &Denial{Kind: policy.Kind(method), Reason: fmt.Sprintf("unknown method %q", method)}
	}
	switch name {
	case "Health", "SetPolicy":
		return fmt.Errorf("policy gate: %s is the agent's to handle, no policy decides it", name)
	}
	kind := policy.Kind(name)
	if !slices.Contains(policy.Kinds, kind) {
		return &Denial{Kind: kind, Reason: fmt.Sprintf("unknown method %q", method)}
	}
	msg, ok := req.(proto.Message)
	if !ok {
		return &Denial{Kind: kind, Rule: RuleInput, Reason: fmt.Sprintf("request of type %T is not an agent API message", req)}
	}

	in, err := Input(kind, msg, g.containerName)
	if err != nil {
		return &Denial{Kind: kind, Rule: RuleInput, Reason: err.Error()}
	}
	if kind == policy.CreateContainer {
		// An id names one container for its life: a second create under a
		// known id could rebind it to another container's rules.
		if id := in["container_id"].(string); g.known(id) {
			return &Denial{Kind: kind, Rule: "gate", Reason: fmt.Sprintf("container id %q exists already", id)}
		}
		in["pod_state"] = g.podState()
	}
	if kind == policy.ExecProcess {
		if env, ok := g.containerEnv(in["container_id"].(string)); ok {
			in["container_env"] = env
		}
	}
	v, err := g.engine.Value(in)
	if err != nil {
		return &Denial{Kind: kind, Rule: RuleInput, Reason: err.Error()}
	}
	d, err := g.engine.Decide(ctx, kind, v)
	if err != nil {
		return &Denial{Kind: kind, Rule: d.Rule, Reason: err.Error()}
	}
	if !d.Allow {
		return &Denial{Kind: kind, Rule: d.Rule, Reason: d.Reason}
	}

	switch kind {
	case policy.CreateContainer:
		id, name := in["container_id"].(string), in["container_name"].(string)
		g.mu.Lock()
		defer g.mu.Unlock()
		if _, dup := g.containers[id]; dup {
			return &Denial{Kind: kind, Rule: "gate", Reason: fmt.Sprintf("container id %q exists already", id)}
		}
		g.containers[id] = name
		g.discard[id] = d.DiscardOutput
		if len(d.WriteBack) > 0 && !d.DiscardOutput {
			g.writeBack[id] = d.WriteBack
		}
		g.env[id] = in["process"].(map[string]any)["env"].(map[string]any)
	}
	return nil
}

// DiscardOutput reports whether the host may not read the output of
// container id (and of what is exec'd in it): true for an id the gate did
// not allow, so nothing unknown leaks.
func (g *Gate) DiscardOutput(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	discard, ok := g.discard[id]
	return !ok || discard
}

// WriteBack returns the mount destinations of container id whose guest
// copies the host may read back: none for an id the gate did not allow or
// whose output is discarded, and none the policy did not mark.
func (g *Gate) WriteBack(id string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.discard[id] {
		return nil
	}
	return slices.Clone(g.writeBack[id])
}

// RuleInput is the rule of a Denial for a request the gate could not read.
const RuleInput = "input"

// Done tells the gate how a request it allowed ended, so that its record of
// containers follows the agent's: a create that failed frees its id for
// another try, and a remove forgets the id only once it succeeded (a failed
// remove leaves the container, and its rules, in place).
func (g *Gate) Done(method string, req any, err error) {
	r, ok := req.(interface{ GetContainerId() string })
	if !ok {
		return
	}
	switch policy.Kind(strings.TrimPrefix(method, ServicePrefix)) {
	case policy.CreateContainer:
		if err == nil {
			g.mu.Lock()
			if name, ok := g.containers[r.GetContainerId()]; ok {
				g.created[name] = true
			}
			g.mu.Unlock()
			return
		}
	case policy.RemoveContainer:
		if err != nil {
			return
		}
	default:
		return
	}
	g.mu.Lock()
	delete(g.containers, r.GetContainerId())
	delete(g.discard, r.GetContainerId())
	delete(g.writeBack, r.GetContainerId())
	delete(g.env, r.GetContainerId())
	g.mu.Unlock()
}

func (g *Gate) containerName(id string) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	name, ok := g.containers[id]
	return name, ok
}

// containerEnv returns the environment container id was created with.
func (g *Gate) containerEnv(id string) (map[string]any, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	env, ok := g.env[id]
	return env, ok
}

func (g *Gate) known(id string) bool {
	_, ok := g.containerName(id)
	return ok
}

// Exited tells the gate that the process of container id exited with
// status: a container that exits with 0 has completed (what an init
// container must do before the next may run).
func (g *Gate) Exited(id string, status int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if name, ok := g.containers[id]; ok && status == 0 {
		g.completed[name] = true
	}
}

// podState is the input's pod_state: the sets of container names created
// and completed so far.
func (g *Gate) podState() map[string]any {
	g.mu.Lock()
	defer g.mu.Unlock()
	created := make(map[string]any, len(g.created))
	for n := range g.created {
		created[n] = true
	}
	completed := make(map[string]any, len(g.completed))
	for n := range g.completed {
		completed[n] = true
	}
	return map[string]any{"created": created, "completed": completed}
}
