package generate

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

func TestSplitDocuments(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string // chunks as prefix|body
	}{
		{"one", "a: 1\n", []string{"|a: 1\n"}},
		{"marker first", "---\na: 1\n---\nb: 2\n", []string{"---\n|a: 1\n", "---\n|b: 2\n"}},
		{"comments travel with the next document", "a: 1\n---\n# about b\n---\nb: 2", []string{"|a: 1\n", "---\n# about b\n|", "---\n|b: 2"}},
		{"leading comment before marker", "# c\n---\na: 1\n", []string{"# c\n---\n|a: 1\n"}},
		{"marker with content", "--- {a: 1}\n--- # just a comment\nb: 2\n", []string{"|--- {a: 1}\n", "--- # just a comment\n|b: 2\n"}},
		{"end marker", "a: 1\n...\nb: 2\n", []string{"|a: 1\n...\n", "|b: 2\n"}},
		{"not markers", "a: ---\nb: |\n  ---x\n----\n", []string{"|a: ---\nb: |\n  ---x\n----\n"}},
		{"directive", "%YAML 1.2\n---\na: 1\n", []string{"%YAML 1.2\n---\n|a: 1\n"}},
		{"crlf", "a: 1\r\n---\r\nb: 2\r\n", []string{"|a: 1\r\n", "---\r\n|b: 2\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			var joined strings.Builder
			for _, c := range splitDocuments([]byte(tc.in)) {
				got = append(got, string(c.prefix)+"|"+string(c.body))
				joined.Write(c.bytes())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("chunks %q; want %q", got, tc.want)
			}
			if joined.String() != tc.in {
				t.Errorf("chunks do not add up to the input: %q", joined.String())
			}
		})
	}
}

func TestExpand(t *testing.T) {
	lookup := envLookup{
		known:   map[string]envValue{"A": exactValue("x"), "P": patternValue("[0-9]+")},
		sources: []envSource{envFromSource("CFG_")},
	}
	for _, tc := range []struct {
		in      string
		exact   string // when the result is exact
		matches []string
		refuses []string
	}{
		{in: "plain", exact: "plain"},
		{in: "$(A)$(A)", exact: "xx"},
		{in: "$$(A)", exact: "$(A)"},
		{in: "$$$(A)", exact: "$x"},
		{in: "a$b$", exact: "a$b$"},
		{in: "$(A", exact: "$(A"},
		{in: "$(UNKNOWN)", exact: "$(UNKNOWN)"},
		{in: "$()", exact: "$()"},
		{in: "", exact: ""},
		{in: "n=$(P).", matches: []string{"n=12."}, refuses: []string{"n=x.", "n=12"}},
		{in: "$(CFG_X)", matches: []string{"anything", "$(CFG_X)"}},
		{in: "[$(P)]", matches: []string{"[1]"}, refuses: []string{"1"}},
	} {
		got := expand(tc.in, lookup)
		if tc.matches == nil {
			if !got.exact || got.value != tc.exact {
				t.Errorf("expand(%q) = %+v; want exactly %q", tc.in, got, tc.exact)
			}
			continue
		}
		if got.exact {
			t.Errorf("expand(%q) = exact %q; want a pattern", tc.in, got.value)
			continue
		}
		for _, m := range tc.matches {
			if !matchesAny(t, []string{got.pattern}, m) {
				t.Errorf("expand(%q) = %q does not match %q", tc.in, got.pattern, m)
			}
		}
		for _, m := range tc.refuses {
			if matchesAny(t, []string{got.pattern}, m) {
				t.Errorf("expand(%q) = %q matches %q", tc.in, got.pattern, m)
			}
		}
	}
}

func TestSettingsFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, file, body string
		err              string
		check            func(t *testing.T, s Settings)
	}{
		{name: "yaml", file: "s.yaml", body: "containers:\n  '*': {logs: false}\n  app:\n    exec: [[sh, -c, date]]\n    stdin: true\n    envPatterns: ['DEBUG=[01]']\nrequests: {UpdateContainer: false}\nkubeletRootDir: /k\n",
			check: func(t *testing.T, s Settings) {
				exec, stdin, logs, env := s.forContainer("app")
				if !stdin || logs || len(exec) != 1 || !slices.Equal(env, []string{"DEBUG=[01]"}) {
					t.Errorf("app: exec %q stdin %v logs %v env %q", exec, stdin, logs, env)
				}
				if _, stdin, logs, _ := s.forContainer("other"); stdin || logs {
					t.Errorf("other: stdin %v logs %v", stdin, logs)
				}
				if s.Requests[policy.UpdateContainer] || !s.Requests[policy.StatsContainer] || s.kubeletRoot() != "/k" {
					t.Errorf("requests %v root %q", s.Requests, s.kubeletRoot())
				}
			}},
		{name: "json", file: "s.json", body: `{"requests": {"WaitOOM": false}}`,
			check: func(t *testing.T, s Settings) {
				if s.Requests[policy.WaitOOM] || !s.Requests[policy.ResizePty] || s.kubeletRoot() != DefaultKubeletRootDir {
					t.Errorf("requests %v", s.Requests)
				}
				if _, _, logs, _ := s.forContainer("x"); !logs {
					t.Error("logs not on by default")
				}
			}},
		{name: "empty", file: "e.yaml", body: "", check: func(t *testing.T, s Settings) {
			if len(s.Requests) != len(idOnlyKinds) {
				t.Errorf("requests %v", s.Requests)
			}
		}},
		{name: "network off", file: "n.yaml", body: "network: {allow: false}\n", check: func(t *testing.T, s Settings) {
			if n := s.Network.data(); n.Allow || n.InterfacePattern != DefaultInterfacePattern || n.MaxInterfaces != 1 || n.MTUMin != 68 || n.MTUMax != 65535 {
				t.Errorf("network %+v", n)
			}
		}},
		{name: "network bounds", file: "n2.yaml", body: "network:\n  interfacePattern: 'net[0-9]'\n  maxInterfaces: 2\n  mtuMin: 1280\n  mtuMax: 9000\n  forbiddenPrefixes: [10.0.0.0/24, '::1/128']\n",
			check: func(t *testing.T, s Settings) {
				n := s.Network.data()
				want := append(DefaultForbiddenPrefixes(), "10.0.0.0/24")
				if !n.Allow || n.InterfacePattern != "net[0-9]" || n.MaxInterfaces != 2 || n.MTUMin != 1280 || n.MTUMax != 9000 || !slices.Equal(n.ForbiddenPrefixes, want) {
					t.Errorf("network %+v", n)
				}
			}},
		{name: "network defaults", file: "n3.yaml", body: "kubeletRootDir: /k\n", check: func(t *testing.T, s Settings) {
			if n := s.Network.data(); !n.Allow || !slices.Equal(n.ForbiddenPrefixes, DefaultForbiddenPrefixes()) {
				t.Errorf("network %+v", n)
			}
		}},
		{name: "network pattern", file: "n4.yaml", body: "network: {interfacePattern: 'eth('}\n", err: "network.interfacePattern"},
		{name: "network MTU range", file: "n5.yaml", body: "network: {mtuMin: 9000, mtuMax: 1500}\n", err: "network.mtuMin 9000 and mtuMax 1500 are no range"},
		{name: "network MTU negative", file: "n6.yaml", body: "network: {mtuMin: -1}\n", err: "network.mtuMin -1"},
		{name: "network interfaces negative", file: "n7.yaml", body: "network: {maxInterfaces: -2}\n", err: "network.maxInterfaces -2 is negative"},
		{name: "network prefix host bits", file: "n8.yaml", body: "network: {forbiddenPrefixes: [10.0.0.1/24]}\n", err: `network.forbiddenPrefixes[0]: "10.0.0.1/24" has host bits set`},
		{name: "network unknown key", file: "n9.yaml", body: "network: {allowed: true}\n", err: `unknown field "allowed"`},
		{name: "unknown key", file: "u.yaml", body: "containers: {'*': {log: true}}\n", err: `unknown field "log"`},
		{name: "unknown top key", file: "u2.yaml", body: "request: {}\n", err: `unknown field "request"`},
		{name: "not id-only kind", file: "k.yaml", body: "requests: {ExecProcess: true}\n", err: "ExecProcess"},
		{name: "bad pattern", file: "p.yaml", body: "containers: {a: {envPatterns: ['X=(']}}\n", err: "containers.a.envPatterns[0]"},
		{name: "pattern shape", file: "p2.yaml", body: "containers: {a: {envPatterns: ['.*']}}\n", err: "NAME=VALUE"},
		{name: "empty exec", file: "x.yaml", body: "containers: {a: {exec: [[]]}}\n", err: "containers.a.exec[0]"},
		{name: "relative root", file: "r.yaml", body: "kubeletRootDir: var/lib\n", err: "absolute"},
		{name: "missing file", file: "", err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "missing.yaml")
			if tc.file != "" {
				path = write(tc.file, tc.body)
			}
			s, err := LoadSettings(path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v; want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestSettingsUnknownContainerWarns(t *testing.T) {
	s := DefaultSettings()
	s.Containers = map[string]ContainerSettings{"typo": {Stdin: ptr(true)}}
	_, w := generate(t, podYAML("containers: [{name: c, image: busybox}]"), Options{Settings: s})
	if !w.contains(`"typo"`) {
		t.Errorf("no warning for a settings container no workload has: %q", w)
	}
}

func TestExtract(t *testing.T) {
	res, _ := generate(t, multiDoc[:strings.Index(multiDoc, "---\napiVersion: v1\nkind: ConfigMap")], Options{})
	got, err := Extract(res.YAML)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Document != 2 || got[0].Kind != "Deployment" || got[0].Name != "web" || got[0].Namespace != "shop" || got[0].Key != initdata.Annotation {
		t.Fatalf("extracted %+v", got)
	}
	if string(got[0].Policy) != string(res.Policies[0].Policy) {
		t.Error("extracted policy differs")
	}
	kata := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: k\n  annotations: {" + policy.AnnotationKata + ": " + policy.EncodeAnnotation([]byte("package agent_policy\n")) + "}\nspec: {}\n"
	got, err = Extract([]byte(kata))
	if err != nil || len(got) != 1 || got[0].Key != policy.AnnotationKata || string(got[0].Policy) != "package agent_policy\n" {
		t.Errorf("Kata annotation: %+v, %v", got, err)
	}
	// A bare policy under ours is wrapped as the shim wraps it.
	ours := strings.Replace(kata, policy.AnnotationKata, policy.Annotation, 1)
	got, err = Extract([]byte(ours))
	if want, _ := initdata.Wrap([]byte("package agent_policy\n")); err != nil || len(got) != 1 || got[0].Key != policy.Annotation || !bytes.Equal(got[0].Initdata.Raw(), want) {
		t.Errorf("bare policy annotation: %+v, %v", got, err)
	}
	both := strings.Replace(kata, "annotations: {", "annotations: {"+initdata.Annotation+": x, ", 1)
	if _, err := Extract([]byte(both)); err == nil || !strings.Contains(err.Error(), "both set") {
		t.Errorf("initdata and a bare policy: %v", err)
	}
	bad := "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  annotations: {" + policy.Annotation + ": '!!'}\n"
	if _, err := Extract([]byte(bad)); err == nil || !strings.Contains(err.Error(), "document 2 (Pod b)") {
		t.Errorf("bad annotation: %v", err)
	}
	if got, err := Extract([]byte("apiVersion: v1\nkind: Service\n")); err != nil || len(got) != 0 {
		t.Errorf("no workloads: %+v, %v", got, err)
	}
}

// FuzzGenerate feeds arbitrary YAML to the generator: it must not panic, and
// what it accepts it must accept again, unchanged, from its own output.
func FuzzGenerate(f *testing.F) {
	f.Add(multiDoc)
	f.Add(podYAML("containers: [{name: c, image: busybox, env: [{name: A, value: '$(B)$$'}]}]"))
	f.Add("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: &m {labels: {a: b}}\n    spec: {containers: [{name: c, image: busybox}]}\n")
	f.Add("--- {a: 1}\n...\n%YAML 1.2\n---\n")
	f.Fuzz(func(t *testing.T, in string) {
		opts := Options{Images: testImages(), Warn: func(string) {}}
		res, err := Generate(context.Background(), []byte(in), opts)
		if err != nil {
			if !strings.Contains(err.Error(), "document") && !strings.Contains(err.Error(), "settings") {
				t.Fatalf("error names no document: %v", err)
			}
			return
		}
		again, err := Generate(context.Background(), res.YAML, opts)
		if err != nil {
			t.Fatalf("the output is refused: %v\n%s", err, shorten(res.YAML))
		}
		if len(again.Policies) != len(res.Policies) {
			t.Fatalf("%d policies, then %d", len(res.Policies), len(again.Policies))
		}
		for i := range res.Policies {
			if string(again.Policies[i].Policy) != string(res.Policies[i].Policy) {
				t.Fatalf("policy of %s changed on the second run", res.Policies[i].Name)
			}
		}
	})
}

func TestNetworkFromSettings(t *testing.T) {
	pod := podYAML("containers: [{name: c, image: busybox}]")
	defaults := policy.Network{
		Allow: true, InterfacePattern: "eth[0-9]+", MaxInterfaces: 1, MTUMin: 68, MTUMax: 65535,
		ForbiddenPrefixes: []string{"127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32"},
	}
	for _, tc := range []struct {
		name     string
		settings Settings
		want     policy.Network
	}{
		{"zero settings", Settings{}, defaults},
		{"default settings", DefaultSettings(), defaults},
		{"denied", Settings{Network: NetworkSettings{Allow: ptr(false)}}, func() policy.Network { n := defaults; n.Allow = false; return n }()},
		{"a prefix added once", Settings{Network: NetworkSettings{ForbiddenPrefixes: []string{"169.254.169.254/32", "::1/128", "169.254.169.254/32"}}},
			func() policy.Network {
				n := defaults
				n.ForbiddenPrefixes = append(DefaultForbiddenPrefixes(), "169.254.169.254/32")
				return n
			}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := generate(t, pod, Options{Settings: tc.settings})
			if got := res.Policies[0].Data.Network; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("network %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := Generate(context.Background(), []byte(pod), Options{Settings: Settings{Network: NetworkSettings{MTUMax: 10}}}); err == nil || !strings.Contains(err.Error(), "settings: network.mtuMin 68 and mtuMax 10") {
		t.Errorf("MTU range below the default minimum: %v", err)
	}
}
