package installer

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// FuzzConfigure feeds arbitrary main configs to Configure: it must never
// panic, and whenever it accepts one, the result parses with the same
// settings plus the import, is idempotent, and Unconfigure restores the input.
func FuzzConfigure(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.toml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	rt := testRuntime()
	f.Fuzz(func(t *testing.T, main []byte) {
		newMain, dropIn, err := Configure(main, testDropIn, rt)
		if err != nil {
			if newMain != nil || dropIn != nil {
				t.Fatalf("Configure returned output with error %v", err)
			}
			return
		}
		var oldDoc, newDoc, dropInDoc map[string]any
		if err := toml.Unmarshal(main, &oldDoc); err != nil {
			t.Fatalf("Configure accepted a config that does not parse: %v", err)
		}
		effective := main
		if newMain != nil {
			effective = newMain
		}
		if err := toml.Unmarshal(effective, &newDoc); err != nil {
			t.Fatalf("new main does not parse: %v\n%q", err, effective)
		}
		if err := toml.Unmarshal(dropIn, &dropInDoc); err != nil {
			t.Fatalf("drop-in does not parse: %v\n%q", err, dropIn)
		}
		version := int(oldDoc["version"].(int64))
		if _, ok := lookup(dropInDoc, RuntimeTablePath(version, rt.Handler)); !ok {
			t.Fatalf("drop-in lacks the runtime table:\n%s", dropIn)
		}
		imports, err := importsOf(newDoc)
		if err != nil {
			t.Fatal(err)
		}
		if !imported(imports, testDropIn) {
			t.Fatalf("new main does not import %s: %q", testDropIn, imports)
		}
		oldRest, newRest := maps.Clone(oldDoc), maps.Clone(newDoc)
		delete(oldRest, "imports")
		delete(newRest, "imports")
		if !reflect.DeepEqual(oldRest, newRest) {
			t.Fatalf("settings besides imports changed:\n%q\n%q", main, effective)
		}
		oldImports, _ := importsOf(oldDoc)
		if newMain != nil && !slices.Equal(append(oldImports, testDropIn), imports) {
			t.Fatalf("imports %q became %q", oldImports, imports)
		}

		again, dropInAgain, err := Configure(effective, testDropIn, rt)
		if err != nil || again != nil || !bytes.Equal(dropInAgain, dropIn) {
			t.Fatalf("second Configure = %q, %v (drop-in equal: %v)", again, err, bytes.Equal(dropInAgain, dropIn))
		}
		if newMain == nil {
			return
		}
		restored, err := Unconfigure(newMain, testDropIn)
		if err != nil {
			t.Fatalf("Unconfigure: %v", err)
		}
		if !bytes.Equal(restored, main) {
			t.Fatalf("Unconfigure did not restore main:\n%q\nwant\n%q", restored, main)
		}
	})
}
