package agent

import (
	"strings"
	"testing"
)

func TestParseVolumeSource(t *testing.T) {
	for src, want := range map[string]string{
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~configmap/config":                "configmap/config",
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~secret/db/":                      "secret/db",
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~projected/kube-api-access-x7k2q": "projected/kube-api-access-x7k2q",
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~downward-api/labels":             "downward-api/labels",
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~empty-dir/cache":                 "",
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~csi/pv/mount":                    "",
		"/var/lib/kubelet/pods/0b6f/volumes/kubernetes.io~configmap/config/sub":            "",
		"/var/lib/kubelet/pods/0b6f/etc-hosts":                                             "",
		"/srv/kubernetes.io~configmap/config":                                              "",
	} {
		kind, name, ok := ParseVolumeSource(src)
		got := ""
		if ok {
			got = kind + "/" + name
		}
		if got != want {
			t.Errorf("%s: %q, want %q", src, got, want)
		}
	}
}

func TestCheckVolumeTree(t *testing.T) {
	dir := &VolumeFile{Path: "..ts", Type: VolumeFileDir, Mode: 0o755}
	file := &VolumeFile{Path: "..ts/key", Type: VolumeFileRegular, Mode: 0o644, Content: []byte("v")}
	data := &VolumeFile{Path: "..data", Type: VolumeFileSymlink, Target: "..ts"}
	key := &VolumeFile{Path: "key", Type: VolumeFileSymlink, Target: "..data/key"}
	if err := CheckVolumeTree([]*VolumeFile{dir, file, data, key}); err != nil {
		t.Fatalf("the kubelet's layout: %v", err)
	}
	for name, tc := range map[string]struct {
		files []*VolumeFile
		want  string
	}{
		"link up":            {[]*VolumeFile{{Path: "k", Type: VolumeFileSymlink, Target: "../etc/passwd"}}, `".." component`},
		"link down and up":   {[]*VolumeFile{dir, {Path: "k", Type: VolumeFileSymlink, Target: "..ts/../../x"}}, "not clean"},
		"link to the parent": {[]*VolumeFile{{Path: "k", Type: VolumeFileSymlink, Target: "../.."}}, `".." component`},
		"absolute link":      {[]*VolumeFile{{Path: "k", Type: VolumeFileSymlink, Target: "/etc/passwd"}}, "absolute"},
		"empty link":         {[]*VolumeFile{{Path: "k", Type: VolumeFileSymlink}}, "empty"},
		"fifo":               {[]*VolumeFile{{Path: "p", Type: "p---------"}}, "only file, dir and symlink"},
		"device":             {[]*VolumeFile{{Path: "d", Type: "D---------"}}, "only file, dir and symlink"},
		"absolute path":      {[]*VolumeFile{{Path: "/k", Type: VolumeFileRegular}}, "absolute"},
		"dot path":           {[]*VolumeFile{{Path: "./k", Type: VolumeFileRegular}}, "not clean"},
		"parent path":        {[]*VolumeFile{{Path: "..", Type: VolumeFileDir}}, `".." component`},
		"twice":              {[]*VolumeFile{file0(), file0()}, "given twice"},
		"orphan":             {[]*VolumeFile{{Path: "sub/k", Type: VolumeFileRegular}}, "not a directory given before it"},
		"under a link":       {[]*VolumeFile{data, {Path: "..data/k", Type: VolumeFileRegular}}, "not a directory given before it"},
		"dir content":        {[]*VolumeFile{{Path: "d", Type: VolumeFileDir, Content: []byte("x")}}, "has content"},
		"file target":        {[]*VolumeFile{{Path: "f", Type: VolumeFileRegular, Target: "x"}}, "symlink target"},
		"mode bits":          {[]*VolumeFile{{Path: "f", Type: VolumeFileRegular, Mode: 0o170644}}, "beyond the permissions"},
	} {
		err := CheckVolumeTree(tc.files)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func file0() *VolumeFile { return &VolumeFile{Path: "k", Type: VolumeFileRegular} }

func FuzzCheckVolumeTree(f *testing.F) {
	f.Add("..ts", "..ts/key", "key", "..data/key")
	f.Add("a", "a/b", "c", "a/../../etc")
	f.Fuzz(func(t *testing.T, dir, file, link, target string) {
		files := []*VolumeFile{
			{Path: dir, Type: VolumeFileDir},
			{Path: file, Type: VolumeFileRegular},
			{Path: link, Type: VolumeFileSymlink, Target: target},
		}
		if CheckVolumeTree(files) != nil {
			return
		}
		// What passes never climbs out of the volume.
		for _, p := range []string{dir, file, link, target} {
			for _, c := range strings.Split(p, "/") {
				if c == ".." || c == "." || c == "" {
					t.Fatalf("accepted %q with a %q component", p, c)
				}
			}
			if strings.HasPrefix(p, "/") {
				t.Fatalf("accepted absolute %q", p)
			}
		}
	})
}
