package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"path"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
	"github.com/contrast-vm/contrast/policy/initdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The requests the policy does not decide: Health answers before there is a
// policy, and SetPolicy is bound to HOSTDATA instead.
const (
	healthMethod    = enforce.ServicePrefix + "Health"
	setPolicyMethod = enforce.ServicePrefix + "SetPolicy"
)

// createContainerMethod is the request the policy warm-up prepares for.
const createContainerMethod = enforce.ServicePrefix + "CreateContainer"

// policyGate is the agent's policy state. The host is untrusted: until
// SetPolicy installs a policy whose initdata document's digest is the VM's
// HOSTDATA, every request but Health and SetPolicy is denied; afterwards
// the policy decides each one. A policy is installed once and never replaced.
type policyGate struct {
	tee tee.TEE // nil in a development VM: nothing is attested

	setMu     sync.Mutex // one SetPolicy at a time
	installed atomic.Pointer[installedPolicy]

	// stopWarmUp cancels the warm-up (warmup.go); nil before it started.
	warmUpMu   sync.Mutex
	stopWarmUp context.CancelFunc
}

// installedPolicy is a policy SetPolicy accepted.
type installedPolicy struct {
	gate *enforce.Gate
	hash string // hex SHA-256 of the policy bytes
}

func newPolicyGate(t tee.TEE) *policyGate {
	return &policyGate{tee: t}
}

// authorize decides a decoded request (method is the full ttrpc method
// name). Its errors name the request: PermissionDenied, or InvalidArgument
// for a request the policy cannot read.
func (g *policyGate) authorize(ctx context.Context, method string, req any) error {
	if method == healthMethod || method == setPolicyMethod {
		return nil
	}
	if method == createContainerMethod {
		g.endWarmUp()
	}
	name := path.Base(method)
	p := g.installed.Load()
	if p == nil {
		return status.Errorf(codes.PermissionDenied, "%s denied: no policy installed yet (the host must send SetPolicy first)", name)
	}
	err := p.gate.Authorize(ctx, method, req)
	var denial *enforce.Denial
	switch {
	case err == nil:
		return nil
	case errors.As(err, &denial) && denial.Rule == enforce.RuleInput:
		// Malformed, not judged: the code says so, as the service's own
		// checks would.
		return status.Error(codes.InvalidArgument, denial.Error())
	case errors.As(err, &denial):
		// The user reads this in crictl: it names the request already.
		return status.Error(codes.PermissionDenied, denial.Error())
	default:
		return status.Errorf(codes.PermissionDenied, "%s denied: %v", name, err)
	}
}

// discardOutput reports whether the policy allows the host no logs of the
// container id; true without a policy.
func (g *policyGate) discardOutput(id string) bool {
	p := g.installed.Load()
	return p == nil || p.gate.DiscardOutput(id)
}

// writeBack returns the mount destinations whose guest copies the host may
// read back from container id; none without a policy.
func (g *policyGate) writeBack(id string) []string {
	if p := g.installed.Load(); p != nil {
		return p.gate.WriteBack(id)
	}
	return nil
}

// exited tells the installed policy's gate that the init process of
// container id exited with status (see enforce.Gate.Exited).
func (g *policyGate) exited(id string, status int) {
	if p := g.installed.Load(); p != nil {
		p.gate.Exited(id, status)
	}
}

// done tells the installed policy's gate how an allowed request ended (see
// enforce.Gate.Done).
func (g *policyGate) done(method string, req any, err error) {
	if p := g.installed.Load(); p != nil {
		p.gate.Done(method, req, err)
	}
}

// set checks an initdata document against HOSTDATA and installs the policy
// inside it. A refused document installs nothing, so the host may try
// again; an installed policy stays.
func (g *policyGate) set(ctx context.Context, raw []byte) (*api.SetPolicyResponse, error) {
	g.setMu.Lock()
	defer g.setMu.Unlock()
	if p := g.installed.Load(); p != nil {
		return nil, status.Errorf(codes.AlreadyExists, "SetPolicy refused: policy %s is installed already, and a policy is set once and never replaced", p.hash)
	}
	if len(raw) == 0 {
		return nil, status.Error(codes.InvalidArgument, "SetPolicy refused: the request carries no initdata document")
	}
	doc, err := initdata.ParsePod(raw)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "SetPolicy refused: %v", err)
	}
	module := doc.Policy()
	hash := policy.HashHex(module)
	resp := &api.SetPolicyResponse{Tee: "none", PolicyHash: hash, InitdataAlgorithm: doc.Algorithm, HostData: doc.HostDataHex()}
	lg := log.G(ctx).WithFields(log.Fields{"policy_hash": hash, "host_data": resp.HostData, "initdata_algorithm": doc.Algorithm})
	if g.tee != nil {
		resp.Tee = g.tee.Name()
		// Only the hardware vouches for HOSTDATA; the simulated device
		// reads what the host configured.
		resp.Attested = g.tee.Name() == tee.NameSNP
		hostData, err := g.tee.HostData(ctx)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "SetPolicy: read HOSTDATA from the %s TEE: %v", g.tee.Name(), err)
		}
		if hostData == ([32]byte{}) {
			return nil, status.Errorf(codes.PermissionDenied, "SetPolicy refused: HOSTDATA is all zero: the VM was launched without an initdata digest (TEE %s)", g.tee.Name())
		}
		if hostData != doc.HostData() {
			return nil, status.Errorf(codes.PermissionDenied, "SetPolicy refused: the initdata document's %s digest is %s (HOSTDATA %s) but the VM was launched with HOSTDATA %s (TEE %s): this is not the initdata the pod was started with",
				doc.Algorithm, hex.EncodeToString(doc.Digest()), resp.HostData, hex.EncodeToString(hostData[:]), g.tee.Name())
		}
	}
	engine, err := enforce.Compile(module)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "SetPolicy refused: policy %s (%s of the initdata document): %v", hash, initdata.PolicyKey, err)
	}
	g.installed.Store(&installedPolicy{gate: enforce.NewGate(engine), hash: hash})
	if others := otherEntries(doc); len(others) > 0 {
		// No attestation agent or data hub runs here to read them; they
		// are bound by the digest all the same.
		lg = lg.WithField("unused_entries", others)
	}
	switch {
	case resp.Attested:
		lg.Infof("policy installed from initdata, bound to HOSTDATA of the %s TEE", resp.Tee)
	case g.tee != nil:
		lg.Warnf("policy installed from initdata and enforced, bound to HOSTDATA of the %s TEE, which is not hardware: nothing is attested", resp.Tee)
	default:
		lg.Warn("policy installed from initdata and enforced, but there is no TEE (development VM): nothing is attested")
	}
	return resp, nil
}

// otherEntries lists the document's entries other than the policy.
func otherEntries(doc *initdata.Document) []string {
	var keys []string
	for k := range doc.Data {
		if k != initdata.PolicyKey {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// SetPolicy installs the pod policy once from the pod's initdata document,
// bound to HOSTDATA (see policyGate).
func (s *Service) SetPolicy(ctx context.Context, req *api.SetPolicyRequest) (*api.SetPolicyResponse, error) {
	return s.policy.set(ctx, req.Initdata)
}
