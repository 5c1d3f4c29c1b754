package generate

import (
	"encoding/json"
	"maps"
	"os"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/contrast-vm/contrast/policy"
)

// TestRuntimeDefaultSeccompMatchesContainerd holds the generator's
// renderings of RuntimeDefault to what real containerd 2.4.2 and 1.7.35
// sent for a container with capabilities drop ALL, add NET_BIND_SERVICE
// (testdata/containerd/runtime-default-*.json, from `ctr containers info`
// of a container the integration harness created through CRI): each
// matches its own release line's and not the other's.
func TestRuntimeDefaultSeccompMatchesContainerd(t *testing.T) {
	spec := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_NET_BIND_SERVICE"}}}}
	rendered := map[string]*specs.LinuxSeccomp{
		"2.4": seccomp.DefaultProfile(spec),
		"1.7": must17(t, seccomp.DefaultProfile(spec)),
	}
	real := map[string]string{}
	for _, v := range []string{"2.4", "1.7"} {
		raw, err := os.ReadFile("testdata/containerd/runtime-default-" + v + ".json")
		if err != nil {
			t.Fatal(err)
		}
		var f specs.LinuxSeccomp
		if err := json.Unmarshal(raw, &f); err != nil {
			t.Fatal(err)
		}
		if real[v], err = policy.SeccompHash(&f); err != nil {
			t.Fatal(err)
		}
	}
	for v, f := range rendered {
		sum, err := policy.SeccompHash(f)
		if err != nil {
			t.Fatal(err)
		}
		for w, want := range real {
			if same := sum == want; same != (v == w) {
				t.Errorf("rendering for containerd %s equals containerd %s's real profile: %v", v, w, same)
			}
		}
	}
}

// TestSeccompSettings: the settings narrow the RuntimeDefault renderings
// the policy accepts, refuse a runtime they do not know, and carry a
// Localhost profile's content from a settings file into the policy.
func TestSeccompSettings(t *testing.T) {
	spec := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_NET_BIND_SERVICE"}}}}
	hash := func(f *specs.LinuxSeccomp) string {
		sum, err := policy.SeccompHash(f)
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	v2, v17 := hash(seccomp.DefaultProfile(spec)), hash(must17(t, seccomp.DefaultProfile(spec)))
	local := `{"defaultAction":"SCMP_ACT_ALLOW"}`
	cases := []struct {
		name, settings, profile string
		want                    map[string]string
		err                     string
	}{
		{name: "default: both release lines", profile: "{type: RuntimeDefault}", want: map[string]string{v2: RuntimeContainerd2, v17: RuntimeContainerd17}},
		{name: "2.x only", settings: "runtimeDefaultSeccomp: [containerd-2]", profile: "{type: RuntimeDefault}", want: map[string]string{v2: RuntimeContainerd2}},
		{name: "1.7 only", settings: "runtimeDefaultSeccomp: [containerd-1.7]", profile: "{type: RuntimeDefault}", want: map[string]string{v17: RuntimeContainerd17}},
		{name: "unknown runtime", settings: "runtimeDefaultSeccomp: [cri-o]", err: `runtimeDefaultSeccomp[0] "cri-o"`},
		{
			name: "localhost profile from the file", settings: "seccompProfiles: {p.json: " + local + "}", profile: "{type: Localhost, localhostProfile: p.json}",
			want: map[string]string{hash(&specs.LinuxSeccomp{DefaultAction: specs.ActAllow}): "Localhost/p.json"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSettings([]byte(tc.settings))
			if tc.err != "" {
				if err == nil || !contains(err.Error(), tc.err) {
					t.Fatalf("settings: %v, want an error saying %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := &pod{settings: s, spec: &corev1.PodSpec{}}
			sc := &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}}}
			if err := yaml.UnmarshalStrict([]byte(tc.profile), &sc.SeccompProfile); err != nil {
				t.Fatal(err)
			}
			got, err := p.seccomp("c", sc, false)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got.SHA256, tc.want) {
				t.Errorf("renderings %v, want %v", got.SHA256, tc.want)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// must17 is containerd17Profile, which must succeed on 2.x's rendering.
func must17(t *testing.T, v2 *specs.LinuxSeccomp) *specs.LinuxSeccomp {
	t.Helper()
	p, err := containerd17Profile(v2)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestContainerd17ProfileRefusesStrangeInput: a 2.x rendering without the
// parts the derivation rewrites is an error, not a guess.
func TestContainerd17ProfileRefusesStrangeInput(t *testing.T) {
	if _, err := containerd17Profile(&specs.LinuxSeccomp{DefaultAction: specs.ActErrno}); err == nil {
		t.Error("derived a 1.7 profile from an empty one")
	}
}
