package enforce

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

func method(k policy.Kind) string { return ServicePrefix + string(k) }

func TestGateLifecycle(t *testing.T) {
	ctx := context.Background()
	g := NewGate(testEngine(t))
	web := testContainerNamed(t, "web")
	probe := &agentapi.ExecProcessRequest{ContainerId: "w1", ExecId: "p1", Process: mustJSON(t, execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz"))}

	steps := []struct {
		name string
		kind policy.Kind
		req  any
		want string // "" allowed, else a substring of the denial
	}{
		{"sandbox", policy.CreateSandbox, &agentapi.CreateSandboxRequest{SandboxId: testSandboxID, Hostname: testHostname, Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}}, ""},
		{"start before create", policy.StartContainer, &agentapi.ContainerRequest{ContainerId: "w1"}, `policy denies StartContainer: rule start_container.container: container "w1" was not created under the policy`},
		{"exec before create", policy.ExecProcess, probe, "rule exec_process.container"},
		{"create web", policy.CreateContainer, createRequest(t, "w1", criSpec(web), nil), ""},
		{"create web again under its id", policy.CreateContainer, createRequest(t, "w1", criSpec(testContainerNamed(t, "api")), nil), `rule gate: container id "w1" exists already`},
		{"start", policy.StartContainer, &agentapi.ContainerRequest{ContainerId: "w1"}, ""},
		{"probe", policy.ExecProcess, probe, ""},
		{"exec shell", policy.ExecProcess, &agentapi.ExecProcessRequest{ContainerId: "w1", ExecId: "p2", Process: mustJSON(t, execProcess(web, "sh"))}, `rule exec_process.args: command ["sh"]`},
		{"wait probe", policy.WaitProcess, &agentapi.ProcessRequest{ContainerId: "w1", ExecId: "p1"}, ""},
		{"signal", policy.SignalProcess, &agentapi.SignalProcessRequest{ContainerId: "w1", Signal: 15}, ""},
		{"stats", policy.StatsContainer, &agentapi.ContainerRequest{ContainerId: "w1"}, ""},
		{"oom", policy.WaitOOM, &agentapi.Empty{}, ""},
		{"remove", policy.RemoveContainer, &agentapi.RemoveContainerRequest{ContainerId: "w1"}, ""},
		{"start after remove", policy.StartContainer, &agentapi.ContainerRequest{ContainerId: "w1"}, "rule start_container.container"},
		{"exec after remove", policy.ExecProcess, probe, "rule exec_process.container"},
		{"create again after remove", policy.CreateContainer, createRequest(t, "w1", criSpec(web), nil), ""},
		{"tampered create", policy.CreateContainer, createRequest(t, "w2", func() *specs.Spec {
			s := criSpec(web)
			s.Process.Args = []string{"sh", "-c", "evil"}
			return s
		}(), nil), `policy denies CreateContainer: rule create_container.args: command ["sh","-c","evil"] is not the policy's ["/docker-entrypoint.sh","nginx","-g","daemon off;"]`},
		{"start the denied", policy.StartContainer, &agentapi.ContainerRequest{ContainerId: "w2"}, "rule start_container.container"},
		{"malformed spec", policy.CreateContainer, &agentapi.CreateContainerRequest{ContainerId: "w3", Spec: []byte(`{"process":{"args":[]}}`)},
			"policy denies CreateContainer: rule input: CreateContainer w3: spec: process.args: empty"},
		{"wrong message type", policy.StartContainer, &agentapi.ProcessRequest{ContainerId: "w1"}, "rule input: StartContainer: request of type"},
		{"not a message", policy.StartContainer, "w1", "rule input: request of type string"},
	}
	for _, s := range steps {
		err := g.Authorize(ctx, method(s.kind), s.req)
		if s.want == "" {
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			g.Done(method(s.kind), s.req, nil) // the agent did what was allowed
			continue
		}
		var d *Denial
		if !errors.As(err, &d) {
			t.Fatalf("%s: error %v, want a denial", s.name, err)
		}
		if d.Kind != s.kind || !strings.Contains(err.Error(), s.want) {
			t.Fatalf("%s: %v (kind %s), want %q", s.name, err, d.Kind, s.want)
		}
	}
}

func TestGateMethods(t *testing.T) {
	g := NewGate(testEngine(t))
	ctx := context.Background()
	for _, m := range []string{"/contrast.agent.v1.Agent/Health", "/contrast.agent.v1.Agent/SetPolicy"} {
		err := g.Authorize(ctx, m, &agentapi.Empty{})
		var d *Denial
		if err == nil || errors.As(err, &d) || !strings.Contains(err.Error(), "agent's to handle") {
			t.Errorf("%s: %v", m, err)
		}
	}
	for _, m := range []string{"/contrast.agent.v1.Agent/Reboot", "/other.Service/StartContainer", "StartContainer", ""} {
		err := g.Authorize(ctx, m, &agentapi.ContainerRequest{})
		var d *Denial
		if !errors.As(err, &d) || !strings.Contains(err.Error(), fmt.Sprintf("unknown method %q", m)) {
			t.Errorf("%q: %v", m, err)
		}
	}
}

func TestDenialError(t *testing.T) {
	tests := []struct {
		d    Denial
		want string
	}{
		{Denial{Kind: policy.CreateContainer, Rule: "create_container.args", Reason: "command differs"}, "policy denies CreateContainer: rule create_container.args: command differs"},
		{Denial{Kind: "Reboot", Reason: `unknown method "/x/Reboot"`}, `policy denies Reboot: unknown method "/x/Reboot"`},
	}
	for _, tt := range tests {
		if got := tt.d.Error(); got != tt.want {
			t.Errorf("%q, want %q", got, tt.want)
		}
	}
}

// TestGateConcurrent creates, uses and removes containers from many
// goroutines (run with -race), each checking its own decisions.
func TestGateConcurrent(t *testing.T) {
	g := NewGate(testEngine(t))
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := testContainers()[i%3]
			for j := range 4 {
				id := fmt.Sprintf("c-%d-%d", i, j)
				steps := []struct {
					kind policy.Kind
					req  any
				}{
					{policy.CreateContainer, createRequest(t, id, criSpec(c), nil)},
					{policy.StartContainer, &agentapi.ContainerRequest{ContainerId: id}},
					{policy.StatsContainer, &agentapi.ContainerRequest{ContainerId: id}},
					{policy.RemoveContainer, &agentapi.RemoveContainerRequest{ContainerId: id}},
				}
				for _, s := range steps {
					if err := g.Authorize(ctx, method(s.kind), s.req); err != nil {
						errs <- fmt.Errorf("%s %s: %w", s.kind, id, err)
						return
					}
					g.Done(method(s.kind), s.req, nil)
				}
				if err := g.Authorize(ctx, method(policy.StartContainer), &agentapi.ContainerRequest{ContainerId: id}); err == nil {
					errs <- fmt.Errorf("start %s after remove allowed", id)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestGateDone checks that the gate's record of containers follows how the
// agent's requests ended: a failed create frees its id, a failed remove
// keeps the container and its rules, a successful remove forgets them.
func TestGateDone(t *testing.T) {
	g := NewGate(testEngine(t))
	ctx := context.Background()
	c := testContainers()[0]
	create := createRequest(t, "c1", criSpec(c), nil)
	remove := &agentapi.RemoveContainerRequest{ContainerId: "c1"}
	start := &agentapi.ContainerRequest{ContainerId: "c1"}
	authorize := func(kind policy.Kind, req any) error { return g.Authorize(ctx, method(kind), req) }

	if err := authorize(policy.CreateContainer, create); err != nil {
		t.Fatal(err)
	}
	g.Done(method(policy.CreateContainer), create, errors.New("image device never appeared"))
	if err := authorize(policy.StartContainer, start); err == nil {
		t.Error("start allowed for a container whose create failed")
	}
	if err := authorize(policy.CreateContainer, create); err != nil {
		t.Fatalf("second create after a failed one: %v", err)
	}
	g.Done(method(policy.CreateContainer), create, nil)

	if err := authorize(policy.RemoveContainer, remove); err != nil {
		t.Fatal(err)
	}
	g.Done(method(policy.RemoveContainer), remove, errors.New("container is running"))
	if err := authorize(policy.StartContainer, start); err != nil {
		t.Errorf("start after a failed remove: %v", err)
	}
	if err := authorize(policy.RemoveContainer, remove); err != nil {
		t.Fatal(err)
	}
	g.Done(method(policy.RemoveContainer), remove, nil)
	if err := authorize(policy.StartContainer, start); err == nil {
		t.Error("start allowed after the container was removed")
	}
	// A denied create must not free the id of the container that holds it.
	if err := authorize(policy.CreateContainer, create); err != nil {
		t.Fatal(err)
	}
	g.Done(method(policy.CreateContainer), create, nil)
	if err := authorize(policy.CreateContainer, create); err == nil {
		t.Fatal("second create under a live id allowed")
	}
	if err := authorize(policy.StartContainer, start); err != nil {
		t.Errorf("start after a refused duplicate create: %v", err)
	}
}

// TestGateDiscardOutput: a container whose policy allows no logs is created
// (containerd opens its streams regardless) and the gate tells the agent to
// discard its output; unknown ids are discarded too.
func TestGateDiscardOutput(t *testing.T) {
	d := testData()
	web := d.Containers["web"]
	web.Logs = false
	d.Containers["web"] = web
	g := NewGate(engineFor(t, d))
	ctx := context.Background()
	for _, name := range []string{"web", "api"} {
		req := createRequest(t, "c-"+name, criSpec(testContainerNamed(t, name)), nil)
		if err := g.Authorize(ctx, ServicePrefix+"CreateContainer", req); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	if !g.DiscardOutput("c-web") || g.DiscardOutput("c-api") || !g.DiscardOutput("c-unknown") {
		t.Errorf("discard web %v, api %v, unknown %v; want true, false, true", g.DiscardOutput("c-web"), g.DiscardOutput("c-api"), g.DiscardOutput("c-unknown"))
	}
}

// TestGateExecEnvAsCreated: an exec's environment is the one its container
// was created with, which the gate remembers per container, values only a
// pattern pins (HOSTNAME here) included.
func TestGateExecEnvAsCreated(t *testing.T) {
	ctx := context.Background()
	g := NewGate(testEngine(t))
	web := testContainerNamed(t, "web")
	withHostname := func(env []string, hostname string) []string {
		env = slices.DeleteFunc(slices.Clone(env), func(e string) bool { return strings.HasPrefix(e, "HOSTNAME=") })
		return append(env, "HOSTNAME="+hostname)
	}
	spec := criSpec(web)
	spec.Process.Env = withHostname(spec.Process.Env, "web-other")
	create := createRequest(t, "w1", spec, nil)
	if err := g.Authorize(ctx, method(policy.CreateContainer), create); err != nil {
		t.Fatal(err)
	}
	g.Done(method(policy.CreateContainer), create, nil)
	probe := func(hostname string) *agentapi.ExecProcessRequest {
		p := execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz")
		p.Env = withHostname(p.Env, hostname)
		return &agentapi.ExecProcessRequest{ContainerId: "w1", ExecId: "p1", Process: mustJSON(t, p)}
	}
	if err := g.Authorize(ctx, method(policy.ExecProcess), probe("web-other")); err != nil {
		t.Fatalf("exec with the created environment: %v", err)
	}
	err := g.Authorize(ctx, method(policy.ExecProcess), probe(testHostname))
	if err == nil || !strings.Contains(err.Error(), `rule exec_process.env_as_created`) || !strings.Contains(err.Error(), `["HOSTNAME"]`) {
		t.Fatalf("exec with another HOSTNAME the pattern allows: %v, want a denial by exec_process.env_as_created naming HOSTNAME", err)
	}

	// A removed container's environment is forgotten: the next create's is
	// the one an exec must have.
	g.Done(method(policy.RemoveContainer), &agentapi.RemoveContainerRequest{ContainerId: "w1"}, nil)
	create = createRequest(t, "w1", criSpec(web), nil)
	if err := g.Authorize(ctx, method(policy.CreateContainer), create); err != nil {
		t.Fatal(err)
	}
	g.Done(method(policy.CreateContainer), create, nil)
	if err := g.Authorize(ctx, method(policy.ExecProcess), probe(testHostname)); err != nil {
		t.Fatalf("exec in the re-created container: %v", err)
	}
	if err := g.Authorize(ctx, method(policy.ExecProcess), probe("web-other")); err == nil {
		t.Fatal("exec with the removed container's environment allowed")
	}
}

// TestGateWriteBack: the host gets back the guest copy of a host file only
// at a destination the policy marks write_back, and only from a container
// whose output it may read; an unknown or removed id gets nothing.
func TestGateWriteBack(t *testing.T) {
	const termination = "/dev/termination-log"
	d := testData()
	mark := func(name string, logs bool) {
		c := d.Containers[name]
		c.Mounts = maps.Clone(c.Mounts)
		c.Mounts[termination] = policy.Mount{
			Type: "bind", SourcePattern: `/var/lib/kubelet/pods/[0-9a-f-]+/containers/` + name + `/[0-9a-f]{8}`, WriteBack: true,
		}
		c.Logs = logs
		d.Containers[name] = c
	}
	mark("web", true)
	mark("metrics", false) // marked, but the host may not read its output
	g := NewGate(engineFor(t, d))
	ctx := context.Background()
	for _, name := range []string{"web", "api", "metrics"} {
		req := createRequest(t, "c-"+name, criSpec(testContainerNamed(t, name)), nil)
		if err := g.Authorize(ctx, method(policy.CreateContainer), req); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		g.Done(method(policy.CreateContainer), req, nil)
	}
	for id, want := range map[string][]string{
		"c-web": {termination}, "c-api": nil, "c-metrics": nil, "c-unknown": nil,
	} {
		if got := g.WriteBack(id); !slices.Equal(got, want) {
			t.Errorf("write back of %s: %q, want %q", id, got, want)
		}
	}
	g.Done(method(policy.RemoveContainer), &agentapi.RemoveContainerRequest{ContainerId: "c-web"}, nil)
	if got := g.WriteBack("c-web"); got != nil {
		t.Errorf("write back of a removed container: %q", got)
	}
}
