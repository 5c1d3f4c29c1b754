package enforce

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/contrast-vm/contrast/policy"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// PackagePath is the package every policy module declares.
const PackagePath = "data.agent_policy"

// moduleFile names the module in OPA's error messages ("policy.rego:12: ...").
const moduleFile = "policy.rego"

// Engine decides requests against one compiled policy module. It is
// immutable after Compile and safe for concurrent use.
type Engine struct {
	queries map[policy.Kind]rego.PreparedEvalQuery
	// defined holds the kinds the module has a rule for; the others are
	// denied without evaluation.
	defined map[policy.Kind]bool
	// inputKeys are the top-level input keys the module refers to, when it
	// refers to input only by constant keys (wholeInput false): a key no
	// rule names cannot change a decision, so Decide leaves it out of the
	// value it converts for OPA.
	inputKeys  map[string]bool
	wholeInput bool
}

// Decision is a policy's answer to one request. Rule names the check that
// decided a denial (for example "create_container.args"), Reason says what
// differs from the policy.
type Decision struct {
	Allow  bool
	Rule   string
	Reason string
	// DiscardOutput: an allowed CreateContainer whose output the host may
	// not read (the rule value's "discard_output"); the agent drains it.
	DiscardOutput bool
	// WriteBack: the mount destinations of an allowed CreateContainer whose
	// guest copies the host gets back with the init's exit (the rule
	// value's "write_back"); never any with DiscardOutput.
	WriteBack []string
}

// builtinsDenied are OPA built-ins a policy may not call: the agent decides
// from the request alone, without network access or its own environment.
var builtinsDenied = []string{"http.send", "net.lookup_ip_addr", "opa.runtime"}

func capabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = slices.DeleteFunc(c.Builtins, func(b *ast.Builtin) bool {
		return slices.Contains(builtinsDenied, b.Name)
	})
	c.AllowNet = []string{} // Empty: no host may be reached.
	return c
}

// Compile parses and compiles a policy module (Rego v1, package
// agent_policy) and prepares one query per request kind. Errors name the
// module line.
func Compile(module []byte) (*Engine, error) {
	caps := capabilities()
	m, err := ast.ParseModuleWithOpts(moduleFile, string(module), ast.ParserOptions{
		RegoVersion:  ast.RegoV1,
		Capabilities: caps,
	})
	if err != nil {
		return nil, fmt.Errorf("policy module: %w", err)
	}
	if m == nil {
		return nil, errors.New("policy module: empty")
	}
	if got := m.Package.Path.String(); got != PackagePath {
		return nil, fmt.Errorf("policy module: %s:%d: package %s, want package %s",
			moduleFile, m.Package.Location.Row, got[len("data."):], PackagePath[len("data."):])
	}
	compiler := ast.NewCompiler().WithCapabilities(caps)
	compiler.Compile(map[string]*ast.Module{moduleFile: m})
	if compiler.Failed() {
		return nil, fmt.Errorf("policy module: %w", compiler.Errors)
	}

	ctx := context.Background()
	store := inmem.New()
	e := &Engine{queries: make(map[policy.Kind]rego.PreparedEvalQuery, len(policy.Kinds)), defined: make(map[policy.Kind]bool, len(policy.Kinds))}
	e.inputKeys, e.wholeInput = inputKeysOf(compiler.Modules)
	for _, k := range policy.Kinds {
		ref := ast.MustParseRef(PackagePath + "." + string(k))
		if len(compiler.GetRules(ref)) == 0 {
			continue
		}
		e.defined[k] = true
		q, err := rego.New(
			rego.Compiler(compiler),
			rego.Store(store),
			rego.Capabilities(caps),
			rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(ref)))),
		).PrepareForEval(ctx)
		if err != nil {
			return nil, fmt.Errorf("policy module: prepare the %s query: %w", k, err)
		}
		e.queries[k] = q
	}
	return e, nil
}

// inputKeysOf returns the top-level input keys the modules refer to, and
// whether they refer to input otherwise (input whole, or by a key computed
// at evaluation), which needs all of it.
func inputKeysOf(modules map[string]*ast.Module) (map[string]bool, bool) {
	keys := map[string]bool{}
	whole := false
	var visit func(t *ast.Term) bool
	visit = func(t *ast.Term) bool {
		switch v := t.Value.(type) {
		case ast.Ref:
			if !v.HasPrefix(ast.InputRootRef) {
				return false
			}
			key, ok := ast.String(""), false
			if len(v) > 1 {
				key, ok = v[1].Value.(ast.String)
			}
			if !ok {
				whole = true
				return true
			}
			keys[string(key)] = true
			// Terms further down the ref may refer to input too.
			for _, rest := range v[2:] {
				ast.WalkTerms(rest, visit)
			}
			return true
		case ast.Var:
			if v.Equal(ast.InputRootDocument.Value) {
				whole = true
			}
		}
		return false
	}
	for _, m := range modules {
		ast.WalkTerms(m, visit)
	}
	return keys, whole
}

// Value converts an input document (as Input builds it) for Decide,
// leaving out the top-level keys the module never refers to.
func (e *Engine) Value(input map[string]any) (ast.Value, error) {
	if e.wholeInput {
		return ast.InterfaceToValue(input)
	}
	used := make(map[string]any, len(e.inputKeys))
	for k, v := range input {
		if e.inputKeys[k] {
			used[k] = v
		}
	}
	return ast.InterfaceToValue(used)
}

// Decide evaluates the rule for kind with input: the document Input builds,
// either as built or already converted (Value; the faster path). An error
// means the request could not be judged (malformed rule value, evaluation
// error); the Decision is a denial then too.
func (e *Engine) Decide(ctx context.Context, kind policy.Kind, input any) (Decision, error) {
	if !slices.Contains(policy.Kinds, kind) {
		return Decision{Rule: string(kind), Reason: "unknown request kind"}, fmt.Errorf("unknown request kind %q", kind)
	}
	q, ok := e.queries[kind]
	if !ok {
		return Decision{Rule: string(kind), Reason: fmt.Sprintf("the policy has no rule %s", kind)}, nil
	}
	var v ast.Value
	var err error
	if m, ok := input.(map[string]any); ok {
		v, err = e.Value(m)
	} else {
		v, err = ast.InterfaceToValue(input)
	}
	if err != nil {
		return Decision{Rule: string(kind), Reason: "input not convertible"}, fmt.Errorf("%s: input: %w", kind, err)
	}
	rs, err := q.Eval(ctx, rego.EvalParsedInput(v))
	if err != nil {
		return Decision{Rule: string(kind), Reason: "evaluation failed"}, fmt.Errorf("evaluate rule %s: %w", kind, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return Decision{Rule: string(kind), Reason: fmt.Sprintf("the policy's rule %s is undefined for this request", kind)}, nil
	}
	d, err := decisionOf(kind, rs[0].Expressions[0].Value)
	if err != nil {
		return Decision{Rule: string(kind), Reason: "malformed rule value"}, err
	}
	return d, nil
}

// decisionOf reads a rule value under the contract: a boolean or an object
// {"allow": bool, "reason": string, "rule": string}.
func decisionOf(kind policy.Kind, value any) (Decision, error) {
	switch v := value.(type) {
	case bool:
		if v {
			return Decision{Allow: true}, nil
		}
		return Decision{Rule: string(kind), Reason: fmt.Sprintf("the policy's rule %s is false", kind)}, nil
	case map[string]any:
		allow, ok := v["allow"].(bool)
		if !ok {
			return Decision{}, fmt.Errorf("rule %s: value has no boolean \"allow\": %v", kind, value)
		}
		reason, _ := v["reason"].(string)
		rule, _ := v["rule"].(string)
		if allow {
			discard, _ := v["discard_output"].(bool)
			writeBack, err := writeBackOf(v["write_back"])
			if err != nil {
				return Decision{}, fmt.Errorf("rule %s: %w", kind, err)
			}
			if discard {
				// A file's content is output too.
				writeBack = nil
			}
			return Decision{Allow: true, DiscardOutput: discard, WriteBack: writeBack}, nil
		}
		if rule == "" {
			rule = string(kind)
		}
		if reason == "" {
			reason = "denied"
		}
		return Decision{Rule: rule, Reason: reason}, nil
	default:
		return Decision{}, fmt.Errorf("rule %s: value %v is neither a boolean nor an object", kind, value)
	}
}

// writeBackOf reads a rule value's "write_back": absent, or a list of
// mount destinations.
func writeBackOf(value any) ([]string, error) {
	if value == nil {
		return nil, nil
	}
	list, ok := value.([]any)
	if !ok {
		return nil, fmt.Errorf("\"write_back\" is %v, not a list of mount destinations", value)
	}
	dests := make([]string, 0, len(list))
	for _, d := range list {
		dest, ok := d.(string)
		if !ok {
			return nil, fmt.Errorf("\"write_back\" holds %v, not a mount destination", d)
		}
		dests = append(dests, dest)
	}
	return dests, nil
}

// Defines reports whether the module has a rule for kind.
func (e *Engine) Defines(kind policy.Kind) bool { return e.defined[kind] }
