package enforce

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/policy"
	"github.com/open-policy-agent/opa/v1/ast"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name, module string
		want         []string
	}{
		{"syntax", "package agent_policy\n\nCreateSandbox := {\n", []string{"policy.rego:4", "rego_parse_error"}},
		{"other package", "package other\n\nCreateSandbox := true\n", []string{"policy.rego:1", "package other", "want package agent_policy"}},
		{"no package", "CreateSandbox := true\n", []string{"policy.rego:1"}},
		{"unsafe variable", "package agent_policy\n\nCreateSandbox if {\n\tx == 1\n}\n", []string{"policy.rego:4", "var x is unsafe"}},
		{"http.send", "package agent_policy\n\nCreateSandbox if {\n\thttp.send({\"method\": \"get\", \"url\": \"http://example.com\"}).status_code == 200\n}\n",
			[]string{"policy.rego:4", "http.send"}},
		{"opa.runtime", "package agent_policy\n\nCreateSandbox if opa.runtime().env.X == \"1\"\n", []string{"policy.rego:3", "opa.runtime"}},
		{"rego v0 syntax", "package agent_policy\n\nCreateSandbox { true }\n", []string{"policy.rego:3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile([]byte(tt.module))
			if err == nil {
				t.Fatal("compiled")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestDecideContract(t *testing.T) {
	ctx := context.Background()
	in := map[string]any{"kind": "StartContainer", "container_id": "x"}
	tests := []struct {
		name    string
		module  string
		kind    policy.Kind
		want    Decision
		wantErr string
	}{
		{name: "true", module: "StartContainer := true", kind: policy.StartContainer, want: Decision{Allow: true}},
		{name: "false", module: "StartContainer := false", kind: policy.StartContainer,
			want: Decision{Rule: "StartContainer", Reason: "the policy's rule StartContainer is false"}},
		{name: "object allow", module: `StartContainer := {"allow": true}`, kind: policy.StartContainer, want: Decision{Allow: true}},
		{name: "object deny with reason", module: `StartContainer := {"allow": false, "reason": "no"}`, kind: policy.StartContainer,
			want: Decision{Rule: "StartContainer", Reason: "no"}},
		{name: "object deny with rule", module: `StartContainer := {"allow": false, "rule": "start.x", "reason": "no"}`, kind: policy.StartContainer,
			want: Decision{Rule: "start.x", Reason: "no"}},
		{name: "undefined for the input", module: `StartContainer if input.container_id == "y"`, kind: policy.StartContainer,
			want: Decision{Rule: "StartContainer", Reason: "the policy's rule StartContainer is undefined for this request"}},
		{name: "no rule", module: "PauseContainer := true", kind: policy.StartContainer,
			want: Decision{Rule: "StartContainer", Reason: "the policy has no rule StartContainer"}},
		{name: "input read", module: `StartContainer if input.container_id == "x"`, kind: policy.StartContainer, want: Decision{Allow: true}},
		{name: "number", module: "StartContainer := 1", kind: policy.StartContainer, wantErr: "neither a boolean nor an object"},
		{name: "object without allow", module: `StartContainer := {"reason": "x"}`, kind: policy.StartContainer, wantErr: `no boolean "allow"`},
		{name: "conflict", module: "StartContainer := true if input.kind\nStartContainer := false if input.container_id", kind: policy.StartContainer,
			wantErr: "evaluate rule StartContainer"},
		{name: "unknown kind", module: "StartContainer := true", kind: "Reboot", wantErr: `unknown request kind "Reboot"`},
		{name: "write back", module: `StartContainer := {"allow": true, "write_back": ["/dev/termination-log"]}`, kind: policy.StartContainer,
			want: Decision{Allow: true, WriteBack: []string{"/dev/termination-log"}}},
		{name: "write back of discarded output", module: `StartContainer := {"allow": true, "discard_output": true, "write_back": ["/dev/termination-log"]}`,
			kind: policy.StartContainer, want: Decision{Allow: true, DiscardOutput: true}},
		{name: "write back not a list", module: `StartContainer := {"allow": true, "write_back": true}`, kind: policy.StartContainer,
			wantErr: `"write_back" is true, not a list`},
		{name: "write back not a path", module: `StartContainer := {"allow": true, "write_back": [1]}`, kind: policy.StartContainer,
			wantErr: `"write_back" holds 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Compile([]byte("package agent_policy\n\n" + tt.module + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := e.Decide(ctx, tt.kind, in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				if d.Allow {
					t.Fatal("an error allowed the request")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d, tt.want) {
				t.Fatalf("decision %+v, want %+v", d, tt.want)
			}
		})
	}
}

func TestAllowAllDenyAll(t *testing.T) {
	ctx := context.Background()
	allow, err := Compile(policy.AllowAll())
	if err != nil {
		t.Fatal(err)
	}
	deny, err := Compile(policy.DenyAll())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range policy.Kinds {
		if !allow.Defines(k) || !deny.Defines(k) {
			t.Fatalf("%s undefined", k)
		}
		if d, err := allow.Decide(ctx, k, map[string]any{}); err != nil || !d.Allow {
			t.Errorf("AllowAll %s: %+v, %v", k, d, err)
		}
		if d, err := deny.Decide(ctx, k, map[string]any{}); err != nil || d.Allow || d.Rule != "deny_all" {
			t.Errorf("DenyAll %s: %+v, %v", k, d, err)
		}
	}
}

// TestDecideParsedInput checks that an ast.Value input decides as the map does.
func TestDecideParsedInput(t *testing.T) {
	e := testEngine(t)
	req := createRequest(t, "c-1", criSpec(testContainerNamed(t, "api")), nil)
	in, err := Input(policy.CreateContainer, req, known)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ast.InterfaceToValue(in)
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.Decide(context.Background(), policy.CreateContainer, v)
	if err != nil || !d.Allow {
		t.Fatalf("%+v, %v", d, err)
	}
}

// BenchmarkDecide measures a decision as the gate makes it: the input built
// from the request and evaluated. trivial runs AllowAll; create-container
// runs the generated rules for a realistic pod.
func BenchmarkDecide(b *testing.B) {
	ctx := context.Background()
	req := createRequest(b, "c-1", criSpec(testContainerNamed(b, "web")), nil)
	allowAll, err := Compile(policy.AllowAll())
	if err != nil {
		b.Fatal(err)
	}
	var nsTrivial float64
	run := func(b *testing.B, e *Engine) {
		b.ReportAllocs()
		for b.Loop() {
			in, err := Input(policy.CreateContainer, req, nil)
			if err != nil {
				b.Fatal(err)
			}
			d, err := e.Decide(ctx, policy.CreateContainer, in)
			if err != nil || !d.Allow {
				b.Fatalf("%+v, %v", d, err)
			}
		}
	}
	b.Run("trivial", func(b *testing.B) {
		start := time.Now()
		run(b, allowAll)
		nsTrivial = float64(time.Since(start).Nanoseconds()) / float64(b.N)
	})
	b.Run("create-container", func(b *testing.B) {
		e := testEngine(b)
		start := time.Now()
		run(b, e)
		if nsTrivial > 0 {
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/nsTrivial, "x-trivial")
		}
	})
	b.Run("exec-process", func(b *testing.B) {
		e := testEngine(b)
		web := testContainerNamed(b, "web")
		req := &agentapi.ExecProcessRequest{ContainerId: "c-web", ExecId: "e", Process: mustJSON(b, execProcess(web, "curl", "-fsS", "http://localhost:8080/healthz"))}
		// What the gate adds: the environment the container was created with.
		created := map[string]any{"container_id": "c-web"}
		addCreatedEnv(b, created)
		b.ReportAllocs()
		for b.Loop() {
			in, err := Input(policy.ExecProcess, req, known)
			if err != nil {
				b.Fatal(err)
			}
			in["container_env"] = created["container_env"]
			if d, err := e.Decide(ctx, policy.ExecProcess, in); err != nil || !d.Allow {
				b.Fatalf("%+v, %v", d, err)
			}
		}
	})
	b.Run("configure-network", func(b *testing.B) {
		e := testEngine(b)
		req := podNetwork()
		b.ReportAllocs()
		for b.Loop() {
			in, err := Input(policy.ConfigureNetwork, req, nil)
			if err != nil {
				b.Fatal(err)
			}
			if d, err := e.Decide(ctx, policy.ConfigureNetwork, in); err != nil || !d.Allow {
				b.Fatalf("%+v, %v", d, err)
			}
		}
	})
	b.Run("compile", func(b *testing.B) {
		m, err := policy.Build(testData())
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := Compile(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestInputKeys: the engine converts only the input keys the module names,
// and all of input where a rule reads it whole or by a computed key.
func TestInputKeys(t *testing.T) {
	tests := []struct {
		name   string
		module string
		keys   []string
		whole  bool
	}{
		{"constant keys", "StartContainer if input.a.b == 1\n\nStopped if input.c[input.d] == 2", []string{"a", "c", "d"}, false},
		{"none", "StartContainer := true", nil, false},
		{"whole", "StartContainer if count(input) > 2", nil, true},
		{"computed key", "StartContainer if {\n\tsome k\n\tinput[k] == 1\n}", nil, true},
		{"as an argument", "f(x) := x.a\n\nStartContainer if f(input) == 1", nil, true},
		{"in a comprehension", "StartContainer if count([x | some x in input.list; x == input.want]) > 0", []string{"list", "want"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Compile([]byte("package agent_policy\n\n" + tt.module + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			if e.wholeInput != tt.whole {
				t.Fatalf("whole input %v, want %v", e.wholeInput, tt.whole)
			}
			if !tt.whole {
				got := slices.Sorted(maps.Keys(e.inputKeys))
				if !slices.Equal(got, tt.keys) {
					t.Fatalf("keys %q, want %q", got, tt.keys)
				}
			}
		})
	}

	// A key no rule names is not converted: a value OPA cannot convert
	// there changes nothing, while a module that reads input whole fails.
	in := map[string]any{"a": map[string]any{"b": int64(1)}, "unread": make(chan int)}
	e, err := Compile([]byte("package agent_policy\n\nStartContainer if input.a.b == 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := e.Decide(context.Background(), policy.StartContainer, in); err != nil || !d.Allow {
		t.Fatalf("module reading input.a: %+v, %v", d, err)
	}
	e, err = Compile([]byte("package agent_policy\n\nStartContainer if count(input) == 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Decide(context.Background(), policy.StartContainer, in); err == nil {
		t.Fatal("module reading input whole: converted a channel")
	}
	// The generated rules read neither the whole input nor every key.
	g := testEngine(t)
	if g.wholeInput || g.inputKeys["mounts"] || g.inputKeys["annotations"] || !g.inputKeys["mounts_beyond_runtime"] {
		t.Fatalf("generated rules: whole %v, keys %v", g.wholeInput, g.inputKeys)
	}
}
