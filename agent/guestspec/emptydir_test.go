package guestspec

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const podVolumes = "/var/lib/kubelet/pods/0b6f3c2e/volumes/kubernetes.io~empty-dir/"

func emptyDirInput() Input {
	in := testInput
	in.EmptyDirs = EmptyDirInput{
		ScratchDir: "/run/contrast/emptydir/scratch",
		MemoryDir:  "/run/contrast/emptydir/memory",
		Memory:     map[string]bool{"fast": true},
	}
	return in
}

func TestRewriteEmptyDirs(t *testing.T) {
	s := criSpec()
	rw := []string{"rbind", "rprivate", "rw"}
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/cache", Type: "bind", Source: podVolumes + "cache", Options: rw},
		specs.Mount{Destination: "/also-cache", Type: "bind", Source: podVolumes + "cache", Options: rw},
		specs.Mount{Destination: "/fast", Type: "bind", Source: podVolumes + "fast", Options: rw},
	)
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Rewrite(raw, emptyDirInput())
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{}
	for _, m := range res.Spec.Mounts {
		sources[m.Destination] = m.Source
	}
	for dest, want := range map[string]string{
		"/cache":      "/run/contrast/emptydir/scratch/cache",
		"/also-cache": "/run/contrast/emptydir/scratch/cache",
		"/fast":       "/run/contrast/emptydir/memory/fast",
	} {
		if sources[dest] != want {
			t.Errorf("mount at %s: source %q, want %q", dest, sources[dest], want)
		}
	}
	want := []EmptyDir{
		{Name: "cache", Dir: "/run/contrast/emptydir/scratch/cache"},
		{Name: "fast", Memory: true, Dir: "/run/contrast/emptydir/memory/fast"},
	}
	if !reflect.DeepEqual(res.EmptyDirs, want) {
		t.Errorf("EmptyDirs = %+v, want %+v", res.EmptyDirs, want)
	}
}

func TestRewriteEmptyDirRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		source string
		in     func(*Input)
		want   string
	}{
		"bad volume name":   {source: podVolumes + "Not_A_Label", want: "not a DNS-1123 label"},
		"no place for it":   {source: podVolumes + "cache", in: func(in *Input) { in.EmptyDirs = EmptyDirInput{} }, want: "no place for emptyDir volumes"},
		"subPath is no dir": {source: "/var/lib/kubelet/pods/0b6f3c2e/volume-subpaths/cache/c/0", want: "not supported in the VM"},
	} {
		t.Run(name, func(t *testing.T) {
			s := criSpec()
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/cache", Type: "bind", Source: tc.source, Options: []string{"rbind", "rw"}})
			raw, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			in := emptyDirInput()
			if tc.in != nil {
				tc.in(&in)
			}
			_, err = Rewrite(raw, in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Rewrite: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
