package generate_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/enforce"
	"github.com/contrast-vm/contrast/policy/generate"
)

const pinnedInput = `apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  mode: production
---
apiVersion: v1
kind: Secret
metadata:
  name: app-secret
stringData:
  password: hunter2
---
apiVersion: v1
kind: Pod
metadata:
  name: pinned
spec:
  automountServiceAccountToken: false
  containers:
  - name: app
    image: busybox:1.36
    command: ["sleep", "3600"]
    volumeMounts:
    - {name: config, mountPath: /etc/config}
    - {name: secret, mountPath: /etc/secret}
    - {name: renamed, mountPath: /etc/renamed}
    - {name: elsewhere, mountPath: /etc/elsewhere}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - {name: secret, secret: {secretName: app-secret}}
  - {name: renamed, configMap: {name: app-config, items: [{key: mode, path: run-mode}]}}
  - {name: elsewhere, configMap: {name: not-in-the-input}}
`

// TestPinnedVolumeContent: with pinVolumeContent, the policy pins the keys
// and content of the ConfigMap and Secret volumes whose objects are in the
// input, and the host can share nothing else for them.
func TestPinnedVolumeContent(t *testing.T) {
	s := testSettings()
	s.PinVolumeContent = true
	var warnings []string
	res, err := generate.Generate(context.Background(), []byte(pinnedInput), generate.Options{
		Settings: s, Images: generate.StaticImages(testImages), Layers: testLayerSource{},
		Warn: func(w string) { warnings = append(warnings, w) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Policies) != 1 {
		t.Fatalf("%d policies", len(res.Policies))
	}
	if !strings.Contains(strings.Join(warnings, "\n"), "volume elsewhere: content not pinned: ConfigMap not-in-the-input is not in the input") {
		t.Errorf("no warning for the volume whose object is missing: %q", warnings)
	}
	engine, err := enforce.Compile(res.Policies[0].Policy)
	if err != nil {
		t.Fatal(err)
	}
	gate := enforce.NewGate(engine)
	decide := func(kind, name, key, content string) string {
		_, req := share(kind, name, []byte(content))(nil)
		r := req.(*agentapi.ShareVolumeRequest)
		// share names its key "key"; rename it.
		for _, f := range r.Files {
			f.Path = strings.Replace(f.Path, "key", key, 1)
			f.Target = strings.Replace(f.Target, "/key", "/"+key, 1)
		}
		err := gate.Authorize(context.Background(), enforce.ServicePrefix+string(policy.ShareVolume), r)
		var d *enforce.Denial
		switch {
		case err == nil:
			return ""
		case errors.As(err, &d):
			return d.Rule
		}
		t.Fatalf("%s/%s: %v", kind, name, err)
		return ""
	}
	for _, tc := range []struct{ kind, name, key, content, want string }{
		{"configmap", "config", "mode", "production", ""},
		{"configmap", "config", "mode", "debug", "share_volume.content"},
		{"configmap", "config", "other", "production", "share_volume.content"},
		{"secret", "secret", "password", "hunter2", ""},
		{"secret", "secret", "password", "letmein", "share_volume.content"},
		{"configmap", "renamed", "run-mode", "production", ""},
		{"configmap", "renamed", "mode", "production", "share_volume.content"},
		{"configmap", "elsewhere", "anything", "at all", ""},
	} {
		if got := decide(tc.kind, tc.name, tc.key, tc.content); got != tc.want {
			t.Errorf("%s %s with %s=%q: denied by %q, want %q", tc.kind, tc.name, tc.key, tc.content, got, tc.want)
		}
	}
}
