package agent

import "testing"

func TestEmptyDirName(t *testing.T) {
	const pod = "/var/lib/kubelet/pods/0b6f3c2e-5a4d-4c1e-9f2a-1d2e3f4a5b6c"
	for _, tc := range []struct {
		source   string
		name     string
		emptyDir bool
		wantErr  bool
	}{
		{source: pod + "/volumes/kubernetes.io~empty-dir/cache", name: "cache", emptyDir: true},
		{source: pod + "/volumes/kubernetes.io~empty-dir/cache/", name: "cache", emptyDir: true},
		{source: pod + "/volumes/kubernetes.io~empty-dir/a-1", name: "a-1", emptyDir: true},
		{source: pod + "/volumes/kubernetes.io~configmap/cache"},
		{source: pod + "/volume-subpaths/cache/c/0"},
		{source: "/kubernetes.io~empty-dir/cache"},
		{source: "volumes/kubernetes.io~empty-dir/cache"},
		{source: pod + "/volumes/kubernetes.io~empty-dir/Cache", wantErr: true},
		{source: pod + "/volumes/kubernetes.io~empty-dir/..x", wantErr: true},
		{source: pod + "/volumes/kubernetes.io~empty-dir/-x", wantErr: true},
	} {
		name, ok, err := EmptyDirName(tc.source)
		if (err != nil) != tc.wantErr || ok != tc.emptyDir || name != tc.name {
			t.Errorf("EmptyDirName(%q) = %q, %v, %v; want %q, %v, error %v", tc.source, name, ok, err, tc.name, tc.emptyDir, tc.wantErr)
		}
	}
}
