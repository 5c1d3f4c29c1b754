package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/agent/tee"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testTEE stands in for the hardware at the TEE boundary: it reports the
// HOSTDATA a test launched the "VM" with.
type testTEE struct {
	name     string
	hostData [32]byte
	err      error // returned by HostData
}

func (t testTEE) Name() string { return t.name }

func (t testTEE) HostData(context.Context) ([32]byte, error) { return t.hostData, t.err }

func (t testTEE) Report(context.Context, [64]byte) ([]byte, error) {
	return nil, errors.New("testTEE makes no reports")
}

// snpLaunchedWith is SNP hardware whose VM was launched with the digest of
// the initdata document that wraps module, as the shim launches a pod
// with a bare policy.
func snpLaunchedWith(module []byte) testTEE {
	return testTEE{name: tee.NameSNP, hostData: hostDataOf(module)}
}

// wrapped is the minimal initdata document that carries module.
func wrapped(module []byte) []byte {
	raw, err := initdata.Wrap(module)
	if err != nil {
		panic(fmt.Sprintf("wrap test policy: %v", err))
	}
	return raw
}

// hostDataOf is the HOSTDATA of module wrapped into initdata.
func hostDataOf(module []byte) [32]byte {
	doc, err := initdata.ParsePod(wrapped(module))
	if err != nil {
		panic(err)
	}
	return doc.HostData()
}

// setPolicy is the SetPolicy request that carries module wrapped into
// initdata, as the shim sends a bare policy.
func setPolicy(module []byte) *api.SetPolicyRequest {
	return &api.SetPolicyRequest{Initdata: wrapped(module)}
}

// kataDocument is an initdata document as Kata users write it: SHA-384,
// with an attestation agent's configuration beside the policy.
func kataDocument(module []byte) []byte {
	return []byte("algorithm = \"sha384\"\nversion = \"0.1.0\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs]\n'''\n\"policy.rego\" = '''\n" + string(module) + "'''\n")
}

// gateClient serves a Service whose only outside dependency is t (nil: no
// TEE) over ttrpc on a unix socket, as the shim reaches the agent, and
// returns a client. Nothing here runs containers: the requests the tests
// let through are CreateSandbox (which only records the pod) and Health.
func gateClient(t *testing.T, tt tee.TEE) api.AgentService {
	t.Helper()
	dir := t.TempDir()
	cfg := hostTestConfig(dir, testBinary(t))
	cfg.DeviceTimeout = 100 * time.Millisecond
	if tt != nil {
		cfg.TEE = tt
	}
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, _, _ := serveOverUnix(t, svc, dir, nil)
	return client
}

// wantStatus checks an error's code and that its message has every part.
func wantStatus(t *testing.T, what string, err error, code codes.Code, parts ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: %v, want code %v", what, err, code)
		return
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %q does not contain %q", what, err, p)
		}
	}
	t.Logf("%s: %v", what, err)
}

// denyCreateSandbox is a policy in the rule contract (package agent_policy,
// one rule per request kind) that denies CreateSandbox with a reason.
var denyCreateSandbox = []byte(`package agent_policy

CreateSandbox := {"allow": false, "reason": "this pod may not start (test policy)"}
`)

func TestSetPolicyBinding(t *testing.T) {
	allow := policy.AllowAll()
	other := policy.DenyAll()
	allowDoc := wrapped(allow)
	allowHD, otherHD := hostDataOf(allow), hostDataOf(other)
	kata := kataDocument(allow)
	kataParsed, err := initdata.ParsePod(kata)
	if err != nil {
		t.Fatal(err)
	}
	kataHD := kataParsed.HostData()
	hexOf := func(b [32]byte) string { return fmt.Sprintf("%x", b[:]) }
	for _, tc := range []struct {
		name string
		tee  tee.TEE
		doc  []byte
		// on success
		wantTEE      string
		wantAttested bool
		wantHostData [32]byte
		// on refusal
		code  codes.Code
		parts []string
	}{
		{name: "snp, digest matches", tee: snpLaunchedWith(allow), doc: allowDoc, wantTEE: "snp", wantAttested: true, wantHostData: allowHD},
		{name: "snp-simulated, digest matches", tee: testTEE{name: tee.NameSNPSimulated, hostData: allowHD}, doc: allowDoc, wantTEE: "snp-simulated", wantHostData: allowHD},
		{name: "no TEE", doc: allowDoc, wantTEE: "none", wantHostData: allowHD},
		{name: "snp, Kata's SHA-384 document", tee: testTEE{name: tee.NameSNP, hostData: kataHD}, doc: kata, wantTEE: "snp", wantAttested: true, wantHostData: kataHD},
		{name: "snp, other policy", tee: snpLaunchedWith(other), doc: allowDoc,
			code: codes.PermissionDenied, parts: []string{"HOSTDATA", "initdata document's sha256 digest is " + hexOf(allowHD), hexOf(otherHD)}},
		{name: "snp, SHA-384 document, other HOSTDATA", tee: snpLaunchedWith(allow), doc: kata,
			code: codes.PermissionDenied, parts: []string{fmt.Sprintf("sha384 digest is %x", kataParsed.Digest()), "(HOSTDATA " + hexOf(kataHD) + ")", hexOf(allowHD)}},
		{name: "snp, zero HOSTDATA", tee: testTEE{name: tee.NameSNP}, doc: allowDoc,
			code: codes.PermissionDenied, parts: []string{"HOSTDATA is all zero: the VM was launched without an initdata digest"}},
		{name: "snp-simulated, zero HOSTDATA", tee: testTEE{name: tee.NameSNPSimulated}, doc: allowDoc,
			code: codes.PermissionDenied, parts: []string{"HOSTDATA is all zero"}},
		{name: "HOSTDATA unreadable", tee: testTEE{name: tee.NameSNP, err: errors.New("firmware said no")}, doc: allowDoc,
			code: codes.Internal, parts: []string{"read HOSTDATA", "firmware said no"}},
		{name: "empty request", tee: snpLaunchedWith(allow), doc: nil,
			code: codes.InvalidArgument, parts: []string{"carries no initdata document"}},
		{name: "bare policy, not initdata", tee: snpLaunchedWith(allow), doc: allow,
			code: codes.InvalidArgument, parts: []string{"SetPolicy refused", "initdata document"}},
		{name: "no policy.rego", tee: snpLaunchedWith(allow), doc: []byte("algorithm = \"sha256\"\nversion = \"0.1.0\"\n[data]\n\"aa.toml\" = \"\"\n"),
			code: codes.InvalidArgument, parts: []string{`no "policy.rego" entry`}},
		{name: "bad version", tee: snpLaunchedWith(allow), doc: []byte(strings.Replace(string(allowDoc), "0.1.0", "9", 1)),
			code: codes.InvalidArgument, parts: []string{`unsupported version "9"`}},
		{name: "not Rego", tee: testTEE{name: tee.NameSNP, hostData: hostDataOf([]byte("allow everything"))}, doc: wrapped([]byte("allow everything")),
			code: codes.InvalidArgument, parts: []string{"SetPolicy refused", policy.HashHex([]byte("allow everything")), "policy.rego"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c := gateClient(t, tc.tee)
			resp, err := c.SetPolicy(ctx, &api.SetPolicyRequest{Initdata: tc.doc})
			if tc.code != codes.OK {
				wantStatus(t, "SetPolicy", err, tc.code, tc.parts...)
				// Nothing was installed: the gate still denies everything.
				_, err := c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"})
				wantStatus(t, "CreateSandbox after a refused policy", err, codes.PermissionDenied, "no policy installed yet")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.Tee != tc.wantTEE || resp.Attested != tc.wantAttested || resp.PolicyHash != policy.HashHex(allow) || resp.HostData != hexOf(tc.wantHostData) {
				t.Errorf("SetPolicy = %+v, want tee %q, attested %v, policy_hash %s, host_data %s", resp, tc.wantTEE, tc.wantAttested, policy.HashHex(allow), hexOf(tc.wantHostData))
			}
			if _, err := c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); err != nil {
				t.Errorf("CreateSandbox under the allow-all policy: %v", err)
			}
		})
	}
}

// TestPolicyGate follows a pod VM's life: nothing but Health before a
// policy; a refused policy installs nothing and may be retried; the policy
// decides every request after; it is never replaced.
func TestPolicyGate(t *testing.T) {
	ctx := context.Background()
	module := denyCreateSandbox
	c := gateClient(t, snpLaunchedWith(module))

	if _, err := c.Health(ctx, &api.HealthRequest{}); err != nil {
		t.Fatalf("Health before a policy: %v", err)
	}
	_, err := c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"})
	wantStatus(t, "CreateSandbox before a policy", err, codes.PermissionDenied,
		"CreateSandbox denied: no policy installed yet (the host must send SetPolicy first)")
	_, err = c.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: "c1"})
	wantStatus(t, "RemoveContainer before a policy", err, codes.PermissionDenied, "RemoveContainer denied: no policy installed yet")

	// The host tries its own policy first: refused, nothing installed.
	_, err = c.SetPolicy(ctx, setPolicy(policy.AllowAll()))
	wantStatus(t, "SetPolicy of a policy that is not the launched one", err, codes.PermissionDenied, "HOSTDATA")
	_, err = c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"})
	wantStatus(t, "CreateSandbox after a refused policy", err, codes.PermissionDenied, "no policy installed yet")

	resp, err := c.SetPolicy(ctx, setPolicy(module))
	if err != nil {
		t.Fatalf("SetPolicy of the launched policy: %v", err)
	}
	if want := policy.HashHex(module); resp.PolicyHash != want || resp.Tee != "snp" || !resp.Attested {
		t.Errorf("SetPolicy = %+v, want policy_hash %s on attested snp", resp, want)
	}
	// The policy decides now; its reason reaches the host.
	_, err = c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"})
	wantStatus(t, "CreateSandbox under a policy that denies it", err, codes.PermissionDenied,
		"CreateSandbox", "this pod may not start (test policy)")
	// A kind the policy has no rule for is denied too.
	_, err = c.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c1"})
	wantStatus(t, "StartContainer without a rule", err, codes.PermissionDenied, "StartContainer")
	if _, err := c.Health(ctx, &api.HealthRequest{}); err != nil {
		t.Errorf("Health under a policy: %v", err)
	}

	// Never replaced, by the same policy or another.
	for _, m := range [][]byte{module, policy.AllowAll()} {
		_, err = c.SetPolicy(ctx, setPolicy(m))
		wantStatus(t, "second SetPolicy", err, codes.AlreadyExists, "a policy is set once and never replaced", policy.HashHex(module))
	}
	_, err = c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"})
	wantStatus(t, "CreateSandbox after a refused second policy", err, codes.PermissionDenied, "this pod may not start")
}

// TestPolicyDenyAll checks the deny-all policy with no TEE: enforced,
// reported as not attested.
func TestPolicyDenyAll(t *testing.T) {
	ctx := context.Background()
	c := gateClient(t, nil)
	resp, err := c.SetPolicy(ctx, setPolicy(policy.DenyAll()))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Tee != "none" || resp.Attested {
		t.Errorf("SetPolicy without a TEE = %+v, want tee none, not attested", resp)
	}
	_, err = c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"})
	wantStatus(t, "CreateSandbox under deny-all", err, codes.PermissionDenied, "CreateSandbox")
	if _, err := c.Health(ctx, &api.HealthRequest{}); err != nil {
		t.Errorf("Health under deny-all: %v", err)
	}
}

// TestSetPolicyRace sends the launched policy from many connections at
// once: exactly one installs it.
func TestSetPolicyRace(t *testing.T) {
	ctx := context.Background()
	module := policy.AllowAll()
	c := gateClient(t, snpLaunchedWith(module))
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = c.SetPolicy(ctx, setPolicy(module))
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.AlreadyExists:
		default:
			t.Errorf("concurrent SetPolicy: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent SetPolicy calls installed the policy, want 1", ok, n)
	}
}

// TestFailedCreateFreesID checks that a create the policy allowed but the
// service failed (here: the image device never appears) leaves its id free
// for another try.
func TestFailedCreateFreesID(t *testing.T) {
	ctx := context.Background()
	c := gateClient(t, nil)
	if _, err := c.SetPolicy(ctx, setPolicy(policy.AllowAll())); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSandbox(ctx, &api.CreateSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(podSpec("true"))
	if err != nil {
		t.Fatal(err)
	}
	for try := 1; try <= 2; try++ {
		_, err := c.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "c1", Spec: raw,
			Rootfs: &api.BlockDevice{Serial: "absent", Fstype: "ext4"}, SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts"}}})
		wantStatus(t, fmt.Sprintf("create %d", try), err, codes.Unknown, "c1", `serial "absent"`)
	}
}
