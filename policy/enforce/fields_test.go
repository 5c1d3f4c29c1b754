package enforce

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestSpecFieldsCovered walks the runtime-spec types by reflection: every
// field a host request can carry has a treatment in specFields or
// processFields, so a field a new runtime-spec version adds fails here
// (and, until it is given one, is refused in every request).
func TestSpecFieldsCovered(t *testing.T) {
	for _, tc := range []struct {
		name   string
		typ    reflect.Type
		fields map[string]treatment
	}{
		{"spec", reflect.TypeFor[specs.Spec](), specFields},
		{"process", reflect.TypeFor[specs.Process](), processFields},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			var walk func(typ reflect.Type, path string)
			walk = func(typ reflect.Type, path string) {
				for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map || typ.Kind() == reflect.Array {
					if typ.Kind() != reflect.Pointer {
						path += "[]"
					}
					typ = typ.Elem()
				}
				if typ.Kind() != reflect.Struct {
					return
				}
				for f := range typ.Fields() {
					if !f.IsExported() {
						continue
					}
					p := joinPath(path, jsonName(f))
					seen[p] = true
					tr, ok := tc.fields[p]
					switch {
					case !ok:
						t.Errorf("%s: %s (%s) has no treatment: judge it or refuse it", tc.name, p, f.Type)
					case tr == descend:
						walk(f.Type, p)
					}
				}
			}
			walk(tc.typ, "")
			for p := range tc.fields {
				if !seen[p] {
					t.Errorf("%s: %s has a treatment but is no field of the runtime-spec types", tc.name, p)
				}
			}
		})
	}
}

// TestRefusedFieldsRefused sets every refused field, and every field the
// tables do not know, of a realistic spec and checks that Input names it.
func TestRefusedFieldsRefused(t *testing.T) {
	web := testContainerNamed(t, "web")
	var refusedPaths []string
	for p, tr := range specFields {
		if tr == refused {
			refusedPaths = append(refusedPaths, p)
		}
	}
	for p, tr := range processFields {
		if tr == refused {
			refusedPaths = append(refusedPaths, "process."+p)
		}
	}
	slices.Sort(refusedPaths)
	for _, p := range refusedPaths {
		t.Run(p, func(t *testing.T) {
			s := criSpec(web)
			if !setPath(reflect.ValueOf(s).Elem(), strings.Split(strings.ReplaceAll(p, "[]", ""), ".")) {
				t.Fatalf("cannot set %s", p)
			}
			_, err := Input("CreateContainer", createRequest(t, "c-1", s, nil), known)
			want := strings.ReplaceAll(p, "[]", "")
			if err == nil || !strings.Contains(strings.ReplaceAll(err.Error(), "[]", ""), want+": must be absent") {
				t.Fatalf("error %v, want one naming %s", err, p)
			}
		})
	}
}

// setPath gives the field at path (JSON names) a non-zero value, making the
// structs, slices and maps on the way.
func setPath(v reflect.Value, path []string) bool {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	if len(path) == 0 {
		return fill(v)
	}
	switch v.Kind() {
	case reflect.Slice:
		if v.Len() == 0 {
			v.Set(reflect.Append(v, reflect.New(v.Type().Elem()).Elem()))
		}
		return setPath(v.Index(0), path)
	case reflect.Struct:
		for i := range v.NumField() {
			if jsonName(v.Type().Field(i)) == path[0] {
				return setPath(v.Field(i), path[1:])
			}
		}
	}
	return false
}

// fill makes v non-zero.
func fill(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint32, reflect.Uint64, reflect.Uint8, reflect.Uint16:
		v.SetUint(1)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		return fill(v.Elem()) || true
	case reflect.Slice:
		e := reflect.New(v.Type().Elem()).Elem()
		fill(e)
		v.Set(reflect.Append(reflect.MakeSlice(v.Type(), 0, 1), e))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		e := reflect.New(v.Type().Elem()).Elem()
		fill(e)
		m.SetMapIndex(reflect.ValueOf("x").Convert(v.Type().Key()), e)
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i))
				break
			}
		}
		if v.IsZero() {
			return false
		}
	default:
		return false
	}
	return true
}
