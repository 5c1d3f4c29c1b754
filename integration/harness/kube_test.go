package harness

import (
	"reflect"
	"strings"
	"testing"
)

// TestPodFromYAMLSecurity checks the kubelet's merge of the pod's and the
// container's securityContext and the QoS oom_score_adj, and that fields
// the harness does not emulate are refused rather than dropped.
func TestPodFromYAMLSecurity(t *testing.T) {
	const head = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  automountServiceAccountToken: false\n"
	i64 := func(v int64) *int64 { return &v }
	cases := []struct {
		name, spec string
		want       *SecurityContext
		err        string
	}{
		{
			name: "none: Unconfined, as the kubelet sends without seccompDefault",
			spec: "  containers: [{name: c, image: i}]\n",
			want: &SecurityContext{Seccomp: "Unconfined"},
		},
		{
			name: "container over pod",
			spec: "  securityContext: {runAsUser: 1, runAsGroup: 2, supplementalGroups: [7], seccompProfile: {type: RuntimeDefault}}\n" +
				"  containers:\n  - name: c\n    image: i\n    securityContext:\n      runAsUser: 1000\n      allowPrivilegeEscalation: false\n" +
				"      readOnlyRootFilesystem: true\n      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n",
			want: &SecurityContext{
				RunAsUser: i64(1000), RunAsGroup: i64(2), SupplementalGroups: []int64{7}, ReadOnlyRootfs: true, NoNewPrivs: true,
				CapAdd: []string{"NET_BIND_SERVICE"}, CapDrop: []string{"ALL"}, Seccomp: "RuntimeDefault",
			},
		},
		{
			name: "allowPrivilegeEscalation true keeps no_new_privs off",
			spec: "  containers: [{name: c, image: i, securityContext: {allowPrivilegeEscalation: true, seccompProfile: {type: Unconfined}}}]\n",
			want: &SecurityContext{Seccomp: "Unconfined"},
		},
		{name: "privileged refused", spec: "  containers: [{name: c, image: i, securityContext: {privileged: true}}]\n", err: "only runAsUser"},
		{name: "fsGroup refused", spec: "  securityContext: {fsGroup: 3}\n  containers: [{name: c, image: i}]\n", err: "pod's securityContext"},
		{name: "localhost profile refused", spec: "  containers: [{name: c, image: i, securityContext: {seccompProfile: {type: Localhost, localhostProfile: x}}}]\n", err: "Localhost"},
		{name: "requests refused", spec: "  containers: [{name: c, image: i, resources: {requests: {cpu: 1}}}]\n", err: "requests"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, ccs, err := PodFromYAML([]byte(head+tc.spec), "runc")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ccs) != 1 {
				t.Fatalf("%d containers", len(ccs))
			}
			if !reflect.DeepEqual(ccs[0].Security, tc.want) {
				t.Errorf("security %+v, want %+v", *ccs[0].Security, *tc.want)
			}
			if ccs[0].OOMScoreAdj == nil || *ccs[0].OOMScoreAdj != 1000 {
				t.Errorf("oom_score_adj %v, want BestEffort's 1000", ccs[0].OOMScoreAdj)
			}
		})
	}
}
