package enforce

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	"github.com/open-policy-agent/opa/v1/rego"
)

func TestBuildDeterministic(t *testing.T) {
	a, err := policy.Build(testData())
	if err != nil {
		t.Fatal(err)
	}
	// The same data assembled in another order gives the same bytes.
	d := testData()
	env := map[string]bool{}
	c := d.Containers["web"]
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	for i := len(keys) - 1; i >= 0; i-- {
		env[keys[i]] = true
	}
	c.Env = env
	d.Containers = map[string]policy.Container{"web": c, "metrics": d.Containers["metrics"], "api": d.Containers["api"]}
	b, err := policy.Build(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) || policy.HashHex(a) != policy.HashHex(b) {
		t.Fatal("the same data built twice differs")
	}
	if !bytes.HasPrefix(a, policy.Rules()) {
		t.Fatal("module does not start with the embedded rules")
	}
}

// TestParseData: the data of a built module reads back equal; modules
// without generated data, or with data of another shape, are errors.
func TestParseData(t *testing.T) {
	m, err := policy.Build(testData())
	if err != nil {
		t.Fatal(err)
	}
	d, err := policy.ParseData(m)
	if err != nil {
		t.Fatal(err)
	}
	again, err := policy.Build(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m, again) {
		t.Error("parsed data builds another module")
	}
	for name, module := range map[string][]byte{
		"allow-all":     policy.AllowAll(),
		"unknown field": append(policy.Rules(), []byte("\npolicy_data := {\"version\":1,\"surprise\":true}\n")...),
		"not JSON":      append(policy.Rules(), []byte("\npolicy_data := {\n")...),
	} {
		if _, err := policy.ParseData(module); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestBuildLayout(t *testing.T) {
	m, err := policy.Build(policy.Data{
		Version:  policy.DataVersion,
		Pod:      policy.Pod{HostnamePattern: "a<b>&c"},
		Requests: map[policy.Kind]bool{policy.WaitOOM: true, policy.StartContainer: false},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "\npolicy_data := " +
		`{"version":1,"pod":{"hostname_pattern":"a<b>&c","host_network":false,"host_pid":false,"host_ipc":false},` +
		`"containers":null,"requests":{"StartContainer":false,"WaitOOM":true}}` + "\n"
	if !strings.HasSuffix(string(m), want) {
		t.Fatalf("module ends with\n%s\nwant\n%s", m[len(policy.Rules()):], want)
	}
	if _, err := Compile(m); err != nil {
		t.Fatal(err)
	}
}

func TestBuildRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*policy.Data)
		want   string
	}{
		{"version", func(d *policy.Data) { d.Version = 0 }, "version 0, the rules read version 1"},
		{"hostname pattern", func(d *policy.Data) { d.Pod.HostnamePattern = "web-(" }, "pod.hostname_pattern: error parsing regexp"},
		{"env pattern", func(d *policy.Data) {
			c := d.Containers["web"]
			c.EnvPatterns = []string{"A=.*", "B=[z-a]"}
			d.Containers["web"] = c
		}, `containers["web"].env_patterns[1]`},
		{"env false", func(d *policy.Data) {
			c := d.Containers["api"]
			c.Env = map[string]bool{"A=1": false}
			d.Containers["api"] = c
		}, `containers["api"].env["A=1"]: false`},
		{"env without =", func(d *policy.Data) {
			c := d.Containers["api"]
			c.Env = map[string]bool{"A": true}
			d.Containers["api"] = c
		}, `containers["api"].env: "A" is not NAME=VALUE`},
		{"mount destination", func(d *policy.Data) {
			c := d.Containers["api"]
			c.Mounts = map[string]policy.Mount{"/tmp/": {Type: "bind", SourcePattern: ".*"}}
			d.Containers["api"] = c
		}, `destination "/tmp/" is not a clean absolute path`},
		{"mount source pattern", func(d *policy.Data) {
			c := d.Containers["api"]
			c.Mounts = map[string]policy.Mount{"/tmp": {Type: "bind", SourcePattern: "("}}
			d.Containers["api"] = c
		}, `containers["api"].mounts["/tmp"].source_pattern`},
		{"capability", func(d *policy.Data) {
			c := d.Containers["api"]
			c.Capabilities = []string{"NET_ADMIN"}
			d.Containers["api"] = c
		}, `"NET_ADMIN" has no CAP_ prefix`},
		{"empty exec", func(d *policy.Data) {
			c := d.Containers["api"]
			c.Exec = [][]string{{"true"}, {}}
			d.Containers["api"] = c
		}, `containers["api"].exec[1]: empty command`},
		{"unnamed container", func(d *policy.Data) { d.Containers[""] = policy.Container{} }, "a container without a name"},
		{"request kind", func(d *policy.Data) { d.Requests["Reboot"] = true }, `unknown request kind "Reboot"`},
		{"interface pattern", func(d *policy.Data) { d.Network.InterfacePattern = "eth[0-9" }, "network.interface_pattern: error parsing regexp"},
		{"max interfaces", func(d *policy.Data) { d.Network.MaxInterfaces = -1 }, "network.max_interfaces: -1 is negative"},
		{"MTU range", func(d *policy.Data) { d.Network.MTUMin, d.Network.MTUMax = 1500, 1280 }, "mtu_min 1500 and mtu_max 1280 are no range"},
		{"forbidden prefixes missing", func(d *policy.Data) { d.Network.ForbiddenPrefixes = nil }, "network.forbidden_prefixes: missing while network.allow is set"},
		{"forbidden prefix not a prefix", func(d *policy.Data) { d.Network.ForbiddenPrefixes[2] = "127.0.0.1" }, `network.forbidden_prefixes[2]: "127.0.0.1" is not a CIDR prefix`},
		{"forbidden prefix with host bits", func(d *policy.Data) { d.Network.ForbiddenPrefixes[0] = "127.0.0.1/8" }, `"127.0.0.1/8" has host bits set; the prefix is 127.0.0.0/8`},
		{"forbidden prefix IPv4-mapped", func(d *policy.Data) { d.Network.ForbiddenPrefixes[0] = "::ffff:127.0.0.0/104" }, "IPv4-mapped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testData()
			tt.mutate(&d)
			_, err := policy.Build(d)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// constantModuleHashes are the SHA-256 of the constant modules: what a
// pod's HOSTDATA holds when it runs one, and what a verifier compares it
// with. Changing a module is a deliberate act that updates these.
var constantModuleHashes = map[string]string{
	"AllowAll": "38d7325d7ab4cf9360776e546c29935f9eae7b5182420e57857a37a5ef8e40b1",
	"DenyAll":  "0bbe4d6e2a2f49aeb7a944495ff101697d54deefe1a171e86a0a5f6d286deafd",
}

func TestConstantModules(t *testing.T) {
	checkConstantModules(t, map[string]func() []byte{"AllowAll": policy.AllowAll, "DenyAll": policy.DenyAll}, policy.HashHex)
}

// TestConstantModulesCheckFails breaks, one at a time, what
// checkConstantModules checks, and requires it to notice.
func TestConstantModulesCheckFails(t *testing.T) {
	calls := 0
	unstable := func() []byte { calls++; return append(policy.AllowAll(), fmt.Sprintf("# %d\n", calls)...) }
	edited := func() []byte { return append(policy.AllowAll(), "# edited\n"...) }
	for name, c := range map[string]struct {
		modules map[string]func() []byte
		hashHex func([]byte) string
		want    string
	}{
		"unstable bytes":  {map[string]func() []byte{"AllowAll": unstable, "DenyAll": policy.DenyAll}, policy.HashHex, "differ between calls"},
		"edited module":   {map[string]func() []byte{"AllowAll": edited, "DenyAll": policy.DenyAll}, policy.HashHex, "hash changed"},
		"allow is deny":   {map[string]func() []byte{"AllowAll": policy.DenyAll, "DenyAll": policy.DenyAll}, policy.HashHex, "are the same module"},
		"hash not sha256": {map[string]func() []byte{"AllowAll": policy.AllowAll, "DenyAll": policy.DenyAll}, func([]byte) string { return constantModuleHashes["AllowAll"] }, "is not its SHA-256"},
		"rule left out":   {map[string]func() []byte{"AllowAll": func() []byte { return bytes.Replace(policy.AllowAll(), []byte("\nWaitOOM := true"), nil, 1) }, "DenyAll": policy.DenyAll}, policy.HashHex, "lacks WaitOOM"},
	} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			checkConstantModules(rec, c.modules, c.hashHex)
			if !strings.Contains(rec.errors.String(), c.want) {
				t.Errorf("the check said %q, want %q", rec.errors.String(), c.want)
			}
		})
	}
}

// checkT is what checkConstantModules reports to: a test, or recorder.
type checkT interface {
	Helper()
	Errorf(format string, args ...any)
}

type recorder struct{ errors strings.Builder }

func (*recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	fmt.Fprintf(&r.errors, format+"\n", args...)
}

// checkConstantModules requires each module to be the same bytes at every
// call, to define every request kind, to hash (with hashHex) to its
// SHA-256 and to the pinned value, and the modules to differ.
func checkConstantModules(t checkT, modules map[string]func() []byte, hashHex func([]byte) string) {
	t.Helper()
	seen := map[string]string{}
	for name, module := range modules {
		m := module()
		if !bytes.HasPrefix(m, []byte("# A policy that")) || !bytes.Contains(m, []byte("\npackage agent_policy\n")) {
			t.Errorf("%s is not a constant module:\n%s", name, m)
		}
		for _, k := range policy.Kinds {
			if !bytes.Contains(m, []byte("\n"+string(k)+" := ")) {
				t.Errorf("%s lacks %s", name, k)
			}
		}
		if again := module(); !bytes.Equal(m, again) {
			t.Errorf("%s: the bytes differ between calls", name)
		}
		sum := sha256.Sum256(m)
		h := hashHex(m)
		if h != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: hash %s is not its SHA-256 %x", name, h, sum)
		}
		if want := constantModuleHashes[name]; h != want {
			t.Errorf("%s: hash changed: %s, pinned %s (HOSTDATA of every pod that runs it changes)", name, h, want)
		}
		if other, dup := seen[string(m)]; dup {
			t.Errorf("%s and %s are the same module", other, name)
		}
		seen[string(m)] = name
	}
}

// TestCheckSets: the set of checks a kind compares against is its ordered
// list of checks (which names the rule of a denial), name for name, so
// neither can drop a check the other has.
func TestCheckSets(t *testing.T) {
	m, err := policy.Build(testData())
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"create_container", "exec_process"} {
		r := rego.New(
			rego.Query(fmt.Sprintf("[data.agent_policy.%[1]s_checks, data.agent_policy.%[1]s_check_set]", kind)),
			rego.Module("policy.rego", string(m)),
		)
		rs, err := r.Eval(context.Background())
		if err != nil || len(rs) != 1 {
			t.Fatalf("%s: %v, %v", kind, rs, err)
		}
		pair := rs[0].Expressions[0].Value.([]any)
		list, set := pair[0].([]any), pair[1].([]any)
		names := map[string]int{}
		for _, c := range list {
			names[c.(string)]++
		}
		if len(list) == 0 || len(names) != len(list) {
			t.Fatalf("%s_checks %v: empty or a name twice", kind, list)
		}
		inSet := map[string]bool{}
		for _, c := range set {
			inSet[c.(string)] = true
		}
		if len(inSet) != len(names) {
			t.Errorf("%s: %d checks listed, %d in the set", kind, len(names), len(inSet))
		}
		for n := range names {
			if !inSet[n] {
				t.Errorf("%s: check %q listed, not in the set", kind, n)
			}
		}
	}
}
