package generate

import "testing"

// TestEmptyDirMedium: a mount of a Memory emptyDir is marked memory, any
// other (a disk emptyDir, a subPath of a Memory one) is not.
func TestEmptyDirMedium(t *testing.T) {
	spec := `automountServiceAccountToken: false
volumes:
- {name: disk, emptyDir: {}}
- {name: fast, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
containers:
- name: c
  image: busybox
  volumeMounts:
  - {name: disk, mountPath: /disk}
  - {name: fast, mountPath: /fast}
  - {name: fast, mountPath: /one, subPath: one}
`
	res, _ := generate(t, podYAML(spec), Options{})
	c := onlyContainer(t, res, "c")
	for dest, want := range map[string]bool{"/disk": false, "/fast": true, "/one": false} {
		m, ok := c.Mounts[dest]
		if !ok {
			t.Errorf("no mount at %s", dest)
			continue
		}
		if m.Memory != want {
			t.Errorf("mount at %s: memory %v, want %v", dest, m.Memory, want)
		}
	}
}
