package installer

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

const testDropIn = "/opt/contrast/contrast-cc-1a2b3c4d/containerd.toml"

func testRuntime() Runtime {
	return Runtime{
		Handler:     "contrast-cc-1a2b3c4d",
		RuntimePath: "/opt/contrast/contrast-cc-1a2b3c4d/bin/containerd-shim-contrast-v2",
		ConfigPath:  "/opt/contrast/contrast-cc-1a2b3c4d/runtime.toml",
	}
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func mustParse(t *testing.T, what string, data []byte) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s does not parse: %v\n%s", what, err, data)
	}
	if doc == nil {
		doc = map[string]any{}
	}
	return doc
}

func stringList(t *testing.T, v any) []string {
	t.Helper()
	if v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("%v is %T, not an array", v, v)
	}
	var out []string
	for _, e := range list {
		out = append(out, e.(string))
	}
	return out
}

func TestConfigVersion(t *testing.T) {
	tests := []struct {
		file    string
		want    int
		wantErr string
	}{
		{file: "containerd24-default.toml", want: 4},
		{file: "containerd17-default.toml", want: 2},
		{file: "k3s-v2.toml", want: 2},
		{file: "k3s-v3.toml", want: 3},
		{file: "runtimes-imports-v2.toml", want: 2},
		{file: "runtimes-imports-v3.toml", want: 3},
		{file: "crlf-no-imports-v3.toml", want: 3},
		{file: "bare-v2.toml", want: 2},
		{file: "empty.toml", wantErr: "no version key"},
		{file: "version1.toml", wantErr: "no version key"},
		{file: "version1-explicit.toml", wantErr: "version 1 is not supported"},
		{file: "version9.toml", wantErr: "unknown containerd config version 9"},
		{file: "version-string.toml", wantErr: "not an integer"},
		{file: "garbage.toml", wantErr: "does not parse at line 2"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			got, err := ConfigVersion(readTestdata(t, tc.file))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ConfigVersion error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("ConfigVersion = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestConfigure(t *testing.T) {
	tests := []struct {
		file        string
		dropInPath  string
		snapshotter string
		// wantMainUnchanged: dropInPath is imported already (by a glob).
		wantMainUnchanged bool
	}{
		{file: "containerd24-default.toml"},
		{file: "containerd24-default.toml", dropInPath: "/etc/containerd/conf.d/contrast.toml", wantMainUnchanged: true},
		{file: "containerd17-default.toml", snapshotter: "overlayfs"},
		{file: "k3s-v2.toml"},
		{file: "k3s-v3.toml", snapshotter: "overlayfs"},
		{file: "runtimes-imports-v2.toml"},
		{file: "runtimes-imports-v3.toml"},
		{file: "crlf-no-imports-v3.toml"},
		{file: "bare-v2.toml"},
	}
	for _, tc := range tests {
		t.Run(tc.file+tc.dropInPath, func(t *testing.T) {
			main := readTestdata(t, tc.file)
			dropInPath := testDropIn
			if tc.dropInPath != "" {
				dropInPath = tc.dropInPath
			}
			rt := testRuntime()
			rt.Snapshotter = tc.snapshotter

			newMain, dropIn, err := Configure(main, dropInPath, rt)
			if err != nil {
				t.Fatalf("Configure: %v", err)
			}
			oldDoc := mustParse(t, "old main", main)
			version := int(oldDoc["version"].(int64))
			oldImports := stringList(t, oldDoc["imports"])

			effectiveMain := newMain
			if tc.wantMainUnchanged {
				if newMain != nil {
					t.Fatalf("main changed although %s is imported:\n%s", dropInPath, newMain)
				}
				effectiveMain = main
			} else if newMain == nil {
				t.Fatal("main unchanged, want dropInPath added to imports")
			}

			// The new main keeps the version, every setting and gains
			// only dropInPath in imports.
			newDoc := mustParse(t, "new main", effectiveMain)
			if got := int(newDoc["version"].(int64)); got != version {
				t.Errorf("version %d became %d", version, got)
			}
			wantImports := oldImports
			if !tc.wantMainUnchanged {
				wantImports = append(slices.Clone(oldImports), dropInPath)
			}
			if got := stringList(t, newDoc["imports"]); !slices.Equal(got, wantImports) {
				t.Errorf("imports = %q, want %q", got, wantImports)
			}
			oldRest, newRest := maps.Clone(oldDoc), maps.Clone(newDoc)
			delete(oldRest, "imports")
			delete(newRest, "imports")
			if !reflect.DeepEqual(oldRest, newRest) {
				t.Errorf("settings besides imports changed:\nold %v\nnew %v", oldRest, newRest)
			}
			// Byte for byte outside the imports line: removing the
			// lines that differ must leave the rest identical.
			if !tc.wantMainUnchanged {
				oldLines := strings.Split(string(main), "\n")
				newLines := strings.Split(string(newMain), "\n")
				var changed int
				for _, l := range newLines {
					if !slices.Contains(oldLines, l) {
						changed++
						if !strings.Contains(l, "imports") && !strings.Contains(l, dropInPath) {
							t.Errorf("changed line is not the imports line: %q", l)
						}
					}
				}
				if changed != 1 {
					t.Errorf("%d lines changed, want 1:\n%s", changed, newMain)
				}
			}

			checkDropIn(t, dropIn, version, rt, oldDoc)

			// Idempotent: Configure on its own output changes nothing.
			again, dropInAgain, err := Configure(effectiveMain, dropInPath, rt)
			if err != nil {
				t.Fatalf("second Configure: %v", err)
			}
			if again != nil {
				t.Errorf("second Configure changed main:\n%s", again)
			}
			if !bytes.Equal(dropInAgain, dropIn) {
				t.Errorf("second Configure changed the drop-in:\n%s\nwas\n%s", dropInAgain, dropIn)
			}

			// Unconfigure restores the original bytes.
			restored, err := Unconfigure(effectiveMain, dropInPath)
			if err != nil {
				t.Fatalf("Unconfigure: %v", err)
			}
			if tc.wantMainUnchanged {
				if restored != nil {
					t.Errorf("Unconfigure changed a main that never listed %s:\n%s", dropInPath, restored)
				}
				return
			}
			if !bytes.Equal(restored, main) {
				t.Errorf("Unconfigure did not restore main:\n%q\nwant\n%q", restored, main)
			}
			if again, err := Unconfigure(restored, dropInPath); err != nil || again != nil {
				t.Errorf("second Unconfigure = %q, %v; want nil, nil", again, err)
			}
		})
	}
}

func checkDropIn(t *testing.T, dropIn []byte, version int, rt Runtime, mainDoc map[string]any) {
	t.Helper()
	doc := mustParse(t, "drop-in", dropIn)
	if got, _ := doc["version"].(int64); int(got) != version {
		t.Errorf("drop-in version = %v, want %d", doc["version"], version)
	}
	raw, ok := lookup(doc, RuntimeTablePath(version, rt.Handler))
	if !ok {
		t.Fatalf("drop-in has no %s:\n%s", strings.Join(RuntimeTablePath(version, rt.Handler), "."), dropIn)
	}
	table := raw.(map[string]any)
	want := map[string]any{
		"runtime_type":    RuntimeType,
		"runtime_path":    rt.RuntimePath,
		"pod_annotations": []any{"io.contrast.*", "io.katacontainers.*"},
		"options":         map[string]any{"ConfigPath": rt.ConfigPath},
	}
	if version >= 3 {
		want["sandboxer"] = "podsandbox"
	}
	if rt.Snapshotter != "" {
		want["snapshotter"] = rt.Snapshotter
	}
	if !reflect.DeepEqual(table, want) {
		t.Errorf("runtime table = %v, want %v", table, want)
	}
	plugins := doc["plugins"].(map[string]any)
	if len(plugins) != 1 {
		t.Errorf("drop-in configures plugins %v, want only %s", slices.Collect(maps.Keys(plugins)), CRIPluginID(version))
	}
	// containerd 1.7 replaces the whole CRI table: the drop-in must carry
	// main's CRI settings unchanged.
	if version == 2 {
		plugin := plugins[CRIPluginID(2)].(map[string]any)
		delete(plugin["containerd"].(map[string]any)["runtimes"].(map[string]any), rt.Handler)
		mainPlugin, _ := lookup(mainDoc, []string{"plugins", CRIPluginID(2)})
		if mainPlugin == nil {
			mainPlugin = map[string]any{"containerd": map[string]any{"runtimes": map[string]any{}}}
		}
		if !reflect.DeepEqual(plugin, mainPlugin) {
			t.Errorf("drop-in CRI table differs from main's:\n%v\n%v", plugin, mainPlugin)
		}
	}
}

func TestConfigureErrors(t *testing.T) {
	v3Kata := readTestdata(t, "runtimes-imports-v3.toml")
	v2Kata := readTestdata(t, "runtimes-imports-v2.toml")
	rt := testRuntime()
	named := func(name string) Runtime { r := testRuntime(); r.Handler = name; return r }
	tests := []struct {
		name    string
		main    []byte
		dropIn  string
		rt      Runtime
		wantErr string
	}{
		{name: "shadows v3 runtime", main: v3Kata, dropIn: testDropIn, rt: named("kata-qemu"), wantErr: `already defines runtime "kata-qemu"`},
		{name: "shadows v2 runtime", main: v2Kata, dropIn: testDropIn, rt: named("nvidia"), wantErr: `already defines runtime "nvidia"`},
		{name: "empty", main: readTestdata(t, "empty.toml"), dropIn: testDropIn, rt: rt, wantErr: "no version key"},
		{name: "version 1", main: readTestdata(t, "version1.toml"), dropIn: testDropIn, rt: rt, wantErr: "version 1"},
		{name: "version 9", main: readTestdata(t, "version9.toml"), dropIn: testDropIn, rt: rt, wantErr: "unknown containerd config version 9"},
		{name: "garbage", main: readTestdata(t, "garbage.toml"), dropIn: testDropIn, rt: rt, wantErr: "does not parse at line 2"},
		{name: "imports not an array", main: readTestdata(t, "imports-not-array.toml"), dropIn: testDropIn, rt: rt, wantErr: "imports is string, not an array"},
		{name: "relative drop-in", main: v3Kata, dropIn: "contrast.toml", rt: rt, wantErr: "not absolute"},
		{name: "no handler", main: v3Kata, dropIn: testDropIn, rt: named(""), wantErr: "handler name is empty"},
		{name: "relative shim", main: v3Kata, dropIn: testDropIn, rt: Runtime{Handler: "h", RuntimePath: "shim", ConfigPath: "/c"}, wantErr: "runtime path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			newMain, dropIn, err := Configure(tc.main, tc.dropIn, tc.rt)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Configure error = %v, want one containing %q", err, tc.wantErr)
			}
			if newMain != nil || dropIn != nil {
				t.Errorf("Configure returned output with an error")
			}
		})
	}
}

func TestUnconfigureKeepsOtherImports(t *testing.T) {
	tests := []struct {
		name, main, want string
	}{
		{
			name: "user listed it first",
			main: "version = 3\nimports = [\"/x.toml\", \"/a.toml\", \"/b.toml\"]\n",
			want: "version = 3\nimports = [\"/a.toml\", \"/b.toml\"]\n",
		},
		{
			name: "middle of multi-line array",
			main: "version = 3\nimports = [\n  \"/a.toml\",\n  \"/x.toml\", # ours\n  \"/b.toml\",\n]\n",
			want: "version = 3\nimports = [\n  \"/a.toml\", # ours\n  \"/b.toml\",\n]\n",
		},
		{
			name: "only entry, written by the user",
			main: "version = 2\nimports = ['/x.toml']\n",
			want: "version = 2\nimports = []\n",
		},
		{name: "absent", main: "version = 2\nimports = ['/a.toml']\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Unconfigure([]byte(tc.main), "/x.toml")
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if got != nil {
					t.Errorf("Unconfigure = %q, want nil", got)
				}
				return
			}
			if string(got) != tc.want {
				t.Errorf("Unconfigure = %q, want %q", got, tc.want)
			}
			mustParse(t, "result", got)
		})
	}
}

func TestTOMLStringRoundTrips(t *testing.T) {
	for _, s := range []string{"/plain", `/with "quotes" and \ backslash`, "/tab\tnew\nline\x01", "/ünïcode/'single'"} {
		var doc map[string]any
		if err := toml.Unmarshal([]byte("k = "+tomlString(s)), &doc); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if doc["k"] != s {
			t.Errorf("%q came back as %q", s, doc["k"])
		}
	}
}
