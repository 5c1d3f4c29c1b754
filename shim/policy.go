package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/policy"
)

// policyStatus is the content of podstate.PolicyStatusFile: which policy
// the agent installed and whether a TEE vouches for it, for whoever
// diagnoses the pod on the node.
type policyStatus struct {
	Source     string `json:"source"` // the annotation, or "default:<name>"
	PolicyHash string `json:"policy_hash"`
	TEE        string `json:"tee"`
	Attested   bool   `json:"attested"`
}

// podPolicy returns the policy a pod runs under: the one its annotations
// carry, else the runtime's default. A deny-all default refuses the pod
// here, before a VM exists.
func podPolicy(ctx context.Context, cfg Config, podID string, annotations map[string]string) ([]byte, string, error) {
	module, key, err := policy.DecodeAnnotation(annotations)
	if err != nil {
		return nil, "", fmt.Errorf("policy of pod %s: %w", podID, err)
	}
	if module != nil {
		return module, key, nil
	}
	switch cfg.Policy.Default {
	case DefaultPolicyAllowAll:
		log.G(ctx).WithField("pod", podID).Warnf("pod carries no policy (annotation %s): running it under the allow-all default policy, which lets the host do anything in the pod VM (development only)", policy.Annotation)
		return policy.AllowAll(), "default:" + DefaultPolicyAllowAll, nil
	default:
		return nil, "", fmt.Errorf("pod %s carries no policy (annotation %s) and the runtime's default policy is %s: generate one with `contrast policy generate`, or set policy.default = %q in the runtime configuration (development only)",
			podID, policy.Annotation, cfg.Policy.Default, DefaultPolicyAllowAll)
	}
}

// installPolicy sends the policy as the agent's first request after its
// health check; the agent checks it against the launch's host data.
func (p *pod) installPolicy(ctx context.Context, module []byte, source string) error {
	resp, err := p.agent.SetPolicy(ctx, &agentapi.SetPolicyRequest{Policy: module})
	if err != nil {
		return fmt.Errorf("install policy in pod %s: %w", p.id, err)
	}
	lg := log.G(ctx).WithFields(log.Fields{"pod": p.id, "policy_hash": resp.PolicyHash, "tee": resp.Tee, "source": source})
	if resp.Attested {
		lg.Info("policy installed, bound to the attested launch")
	} else {
		lg.Warn("policy installed and enforced, but nothing is attested: no hardware TEE vouches for this pod VM")
	}
	status, err := json.MarshalIndent(policyStatus{Source: source, PolicyHash: resp.PolicyHash, TEE: resp.Tee, Attested: resp.Attested}, "", "  ")
	if err != nil {
		return fmt.Errorf("policy status of pod %s: %w", p.id, err)
	}
	if err := os.WriteFile(filepath.Join(p.stateDir, podstate.PolicyStatusFile), append(status, '\n'), 0o644); err != nil {
		return fmt.Errorf("record policy status of pod %s: %w", p.id, err)
	}
	return nil
}
