package generate_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/generate"
)

// TestInitContainersInOrder: the policy names the init containers in the
// YAML's order, sidecars (restartPolicy: Always) marked; a pod without
// any has none.
func TestInitContainersInOrder(t *testing.T) {
	const yaml = `apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  automountServiceAccountToken: false
  initContainers:
  - {name: migrate, image: "busybox:1.36", command: [sh, -c, "true"]}
  - {name: proxy, image: "busybox:1.36", command: [sh], restartPolicy: Always}
  - {name: warm, image: "busybox:1.36", command: [sh, -c, "true"]}
  containers:
  - {name: app, image: "busybox:1.36", command: [sh]}
`
	for _, tc := range []struct {
		name, yaml string
		want       []policy.InitContainer
	}{
		{"three init containers", yaml, []policy.InitContainer{{Name: "migrate"}, {Name: "proxy", Sidecar: true}, {Name: "warm"}}},
		{"none", testPods["debug"], nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := generate.Generate(context.Background(), []byte(tc.yaml), generate.Options{
				Settings: testSettings(), Images: generate.StaticImages(testImages), Layers: testLayerSource{},
			})
			if err != nil {
				t.Fatal(err)
			}
			d, err := policy.ParseData(res.Policies[0].Policy)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.Pod.InitContainers, tc.want) {
				t.Errorf("init containers %+v, want %+v", d.Pod.InitContainers, tc.want)
			}
		})
	}
}
