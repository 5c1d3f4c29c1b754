package policy

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAnnotationRoundTrip(t *testing.T) {
	for _, module := range []string{
		"package agent_policy\n",
		"package agent_policy\n\ndefault CreateContainer := false\n# ünïcödé\n",
		"x", "xy", "xyz", // every padding length
	} {
		value := EncodeAnnotation([]byte(module))
		got, key, err := DecodeAnnotation(map[string]string{Annotation: value})
		if err != nil || key != Annotation || string(got) != module {
			t.Errorf("round trip of %q: got %q, key %q, err %v", module, got, key, err)
		}
	}
}

func TestDecodeAnnotation(t *testing.T) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	const module = "package agent_policy\n"
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		wantModule  string
		wantKey     string
		wantErr     []string // substrings the error must contain; nil: no error
	}{
		{name: "none", annotations: map[string]string{"other": "x"}},
		{name: "nil map", annotations: nil},
		{name: "ours", annotations: map[string]string{Annotation: enc(module)}, wantModule: module, wantKey: Annotation},
		{name: "kata", annotations: map[string]string{AnnotationKata: enc(module)}, wantModule: module, wantKey: AnnotationKata},
		{name: "both equal", annotations: map[string]string{Annotation: enc(module), AnnotationKata: enc(module)}, wantModule: module, wantKey: Annotation},
		{
			name:        "both different",
			annotations: map[string]string{Annotation: enc(module), AnnotationKata: enc(module + "# other\n")},
			wantErr:     []string{Annotation, AnnotationKata, "different"},
		},
		{name: "empty", annotations: map[string]string{Annotation: ""}, wantErr: []string{Annotation, "empty"}},
		{name: "empty kata", annotations: map[string]string{AnnotationKata: ""}, wantErr: []string{AnnotationKata, "empty"}},
		{
			name:        "bad base64 offset",
			annotations: map[string]string{Annotation: "cGFja2Fn*WdlIGE="},
			wantErr:     []string{Annotation, "not valid base64", "offset 8"},
		},
		{
			name:        "bad padding",
			annotations: map[string]string{Annotation: "cGFja2FnZQ"},
			wantErr:     []string{Annotation, "not valid base64"},
		},
		{
			name:        "url alphabet",
			annotations: map[string]string{Annotation: "_-__"},
			wantErr:     []string{Annotation, "offset 0"},
		},
		{
			name:        "bad kata beside ours",
			annotations: map[string]string{Annotation: enc(module), AnnotationKata: "!!!!"},
			wantErr:     []string{AnnotationKata, "not valid base64"},
		},
		{
			name:        "not utf-8",
			annotations: map[string]string{Annotation: base64.StdEncoding.EncodeToString([]byte{0xff, 0xfe, 'a'})},
			wantErr:     []string{Annotation, "UTF-8"},
		},
		{
			name:        "too large",
			annotations: map[string]string{Annotation: enc(strings.Repeat("a", MaxModuleSize+1))},
			wantErr:     []string{Annotation, "bound"},
		},
		{
			name:        "too much base64",
			annotations: map[string]string{Annotation: strings.Repeat("A", 2*MaxModuleSize)},
			wantErr:     []string{Annotation, "bound"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, key, err := DecodeAnnotation(tc.annotations)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("got module %q, key %q; want an error", got, key)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				if got != nil || key != "" {
					t.Errorf("an error came with module %q, key %q", got, key)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.wantModule || key != tc.wantKey {
				t.Errorf("got module %q key %q; want %q key %q", got, key, tc.wantModule, tc.wantKey)
			}
			if tc.wantModule == "" && got != nil {
				t.Errorf("no annotation gave a non-nil module %q", got)
			}
		})
	}
}

func TestMaxModuleSizeAccepted(t *testing.T) {
	module := bytes.Repeat([]byte("a"), MaxModuleSize)
	got, _, err := DecodeAnnotation(map[string]string{Annotation: EncodeAnnotation(module)})
	if err != nil || len(got) != MaxModuleSize {
		t.Fatalf("a module of exactly the bound: %d bytes, %v", len(got), err)
	}
}

// FuzzDecodeAnnotation checks that any pair of annotation values either
// decodes to a bounded UTF-8 module that re-encodes to the same module, or
// fails with an error naming an annotation; it must never panic.
func FuzzDecodeAnnotation(f *testing.F) {
	f.Add("cGFja2FnZSBhZ2VudF9wb2xpY3kK", "", false)
	f.Add("cGFja2FnZSBhZ2VudF9wb2xpY3kK", "cGFja2FnZSBhZ2VudF9wb2xpY3kK", true)
	f.Add("", "eA==", true)
	f.Add("!!", "", false)
	f.Fuzz(func(t *testing.T, ours, kata string, withKata bool) {
		annotations := map[string]string{Annotation: ours}
		if withKata {
			annotations[AnnotationKata] = kata
		}
		module, key, err := DecodeAnnotation(annotations)
		if err != nil {
			if !strings.Contains(err.Error(), "annotation") {
				t.Fatalf("error names no annotation: %v", err)
			}
			if module != nil || key != "" {
				t.Fatalf("error %v came with a module", err)
			}
			return
		}
		if key != Annotation {
			t.Fatalf("key %q; want %q", key, Annotation)
		}
		if len(module) > MaxModuleSize || !utf8.Valid(module) {
			t.Fatalf("accepted a module of %d bytes, utf-8 %v", len(module), utf8.Valid(module))
		}
		again, _, err := DecodeAnnotation(map[string]string{Annotation: EncodeAnnotation(module)})
		if err != nil || !bytes.Equal(again, module) {
			t.Fatalf("re-encoded module does not decode the same: %v", err)
		}
	})
}
