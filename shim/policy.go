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
	"github.com/contrast-vm/contrast/policy/initdata"
)

// policyStatus is the content of podstate.PolicyStatusFile: which policy
// the agent installed and whether a TEE vouches for it, for whoever
// diagnoses the pod on the node.
type policyStatus struct {
	Source     string `json:"source"` // the annotation, or "default:<name>"
	PolicyHash string `json:"policy_hash"`
	// HostData is the initdata document's digest cut to 32 bytes (hex),
	// which the agent checked against the launch's HOSTDATA.
	HostData          string `json:"host_data"`
	InitdataAlgorithm string `json:"initdata_algorithm"`
	TEE               string `json:"tee"`
	Attested          bool   `json:"attested"`
}

// podInitdata returns the initdata document a pod runs under: the one its
// annotations carry (Kata's cc_init_data, or a bare policy wrapped into a
// minimal document), else the runtime's default policy, wrapped too. A
// deny-all default refuses the pod here, before a VM exists.
func podInitdata(ctx context.Context, cfg Config, podID string, annotations map[string]string) (*initdata.Document, string, error) {
	doc, key, err := initdata.FromAnnotations(annotations)
	if err != nil {
		return nil, "", fmt.Errorf("policy of pod %s: %w", podID, err)
	}
	if doc != nil {
		return doc, key, nil
	}
	switch cfg.Policy.Default {
	case DefaultPolicyAllowAll:
		log.G(ctx).WithField("pod", podID).Warnf("pod carries no policy (annotation %s or %s): running it under the allow-all default policy, which lets the host do anything in the pod VM (development only)", initdata.Annotation, policy.Annotation)
		raw, err := initdata.Wrap(policy.AllowAll())
		if err != nil {
			return nil, "", fmt.Errorf("default policy of pod %s: %w", podID, err)
		}
		doc, err := initdata.ParsePod(raw)
		if err != nil {
			return nil, "", fmt.Errorf("default policy of pod %s: %w", podID, err)
		}
		return doc, "default:" + DefaultPolicyAllowAll, nil
	default:
		return nil, "", fmt.Errorf("pod %s carries no policy (annotation %s or %s) and the runtime's default policy is %s: generate one with `contrast policy generate`, or set policy.default = %q in the runtime configuration (development only)",
			podID, initdata.Annotation, policy.Annotation, cfg.Policy.Default, DefaultPolicyAllowAll)
	}
}

// installPolicy sends the initdata document as the agent's first request
// after its health check; the agent checks its digest against the
// launch's host data and installs the policy inside.
func (p *pod) installPolicy(ctx context.Context, doc *initdata.Document, source string) error {
	resp, err := p.agent.SetPolicy(ctx, &agentapi.SetPolicyRequest{Initdata: doc.Raw()})
	if err != nil {
		return fmt.Errorf("install policy in pod %s: %w", p.id, err)
	}
	lg := log.G(ctx).WithFields(log.Fields{"pod": p.id, "policy_hash": resp.PolicyHash, "host_data": resp.HostData,
		"initdata_algorithm": resp.InitdataAlgorithm, "tee": resp.Tee, "source": source})
	if resp.Attested {
		lg.Info("policy installed, bound to the attested launch")
	} else {
		lg.Warn("policy installed and enforced, but nothing is attested: no hardware TEE vouches for this pod VM")
	}
	status, err := json.MarshalIndent(policyStatus{Source: source, PolicyHash: resp.PolicyHash, HostData: resp.HostData,
		InitdataAlgorithm: resp.InitdataAlgorithm, TEE: resp.Tee, Attested: resp.Attested}, "", "  ")
	if err != nil {
		return fmt.Errorf("policy status of pod %s: %w", p.id, err)
	}
	if err := os.WriteFile(filepath.Join(p.stateDir, podstate.PolicyStatusFile), append(status, '\n'), 0o644); err != nil {
		return fmt.Errorf("record policy status of pod %s: %w", p.id, err)
	}
	return nil
}
