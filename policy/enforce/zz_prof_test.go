package enforce

import (
	"context"
	"fmt"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/profiler"
	"github.com/open-policy-agent/opa/v1/rego"
)

func TestZZProfile(t *testing.T) {
	m, err := policy.Build(testData())
	if err != nil {
		t.Fatal(err)
	}
	req := createRequest(t, "c-1", criSpec(testContainerNamed(t, "web")), nil)
	in, err := Input(policy.CreateContainer, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := ast.InterfaceToValue(in)
	p := profiler.New()
	r := rego.New(rego.Module("policy.rego", string(m)), rego.Query("data.agent_policy.CreateContainer"), rego.QueryTracer(p), rego.ParsedInput(v))
	pq, err := r.PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		rs, err := pq.Eval(context.Background(), rego.EvalParsedInput(v), rego.EvalQueryTracer(p))
		if err != nil || len(rs) == 0 {
			t.Fatal(err)
		}
	}
	for _, s := range p.ReportTopNResults(40, []string{"total_time_ns"}) {
		fmt.Printf("%8.1fus %6d %s\n", float64(s.ExprTimeNs)/200/1000, s.NumEval/200, s.Location)
	}
}
