package harness

import (
	"reflect"
	"testing"
)

// TestPrivilegedReachesCRI: a privileged pod and container say so in the
// CRI JSON (containerd refuses a privileged container in a pod that does
// not), and an unprivileged one sends no privileged field at all.
func TestPrivilegedReachesCRI(t *testing.T) {
	if got := (PodConfig{Privileged: true, HostPID: true}).securityContext(); !reflect.DeepEqual(got, map[string]any{
		"privileged":        true,
		"namespace_options": map[string]any{"pid": namespaceModeNode},
	}) {
		t.Errorf("privileged pod with host PID: security_context %v", got)
	}
	if got := (PodConfig{}).securityContext(); len(got) != 0 {
		t.Errorf("plain pod: security_context %v, want none", got)
	}
	for _, privileged := range []bool{true, false} {
		sc := map[string]any{}
		if err := (&SecurityContext{Privileged: privileged}).json(sc); err != nil {
			t.Fatal(err)
		}
		if v, ok := sc["privileged"]; ok != privileged || (ok && v != true) {
			t.Errorf("container with Privileged=%v: security_context privileged is %v (present %v)", privileged, v, ok)
		}
	}
}
