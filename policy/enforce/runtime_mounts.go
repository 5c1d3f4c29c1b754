package enforce

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// runtimeMount is a mount containerd's CRI plugin adds to every container
// itself: its type, the flags runc must set, its file system data exactly
// as containerd writes it (the same in 1.7 and 2.x), and whether an
// unprivileged container must get it read-only. Its source is a virtual
// file system or a file the agent replaces with the copy the host sends
// (/etc/hosts and the like), so the source does not count. The table does
// not depend on the policy: Input judges these mounts, the rules the rest.
type runtimeMount struct {
	flags []string
	data  []string
	ro    bool
	// roAsRoot: containerd binds the file read-only exactly when the
	// container's root is read-only.
	roAsRoot bool
}

// runtimeFile is a file the agent replaces with the copy the host sends;
// criFile one of containerd's own files for the container, read-only with
// a read-only root.
var (
	runtimeFile = runtimeMount{}
	criFile     = runtimeMount{roAsRoot: true}
)

// runtimeMounts are the runtime mounts by destination and type.
var runtimeMounts = map[string]map[string]runtimeMount{
	"/proc":       {"proc": {flags: []string{"nosuid", "noexec", "nodev"}}},
	"/dev":        {"tmpfs": {flags: []string{"nosuid"}, data: []string{"mode=755", "size=65536k"}}},
	"/dev/pts":    {"devpts": {flags: []string{"nosuid", "noexec"}, data: []string{"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}}},
	"/dev/mqueue": {"mqueue": {flags: []string{"nosuid", "noexec", "nodev"}}},
	"/sys":        {"sysfs": {flags: []string{"nosuid", "noexec", "nodev"}, ro: true}},
	"/sys/fs/cgroup": {
		"cgroup":  {flags: []string{"nosuid", "noexec", "nodev"}, ro: true},
		"cgroup2": {flags: []string{"nosuid", "noexec", "nodev"}, ro: true},
	},
	// The sandbox's shm, which the agent replaces with a tmpfs of its own,
	// or such a tmpfs.
	"/dev/shm": {
		"bind":  runtimeFile,
		"tmpfs": {flags: []string{"nosuid", "noexec", "nodev"}, data: []string{"mode=1777", "size=65536k"}},
	},
	"/etc/hosts":           {"bind": criFile},
	"/etc/hostname":        {"bind": criFile},
	"/etc/resolv.conf":     {"bind": criFile},
	"/dev/termination-log": {"bind": runtimeFile},
}

// quietPropagation is the propagation a mount may have: shared would carry
// mounts between the container and the VM.
var quietPropagation = []string{"", "private", "rprivate", "slave", "rslave"}

// Values of a mount's "runtime" field in the input.
const (
	runtimeOK       = "ok"       // a runtime mount as containerd sends it
	runtimeWritable = "writable" // one, but writable where an unprivileged container needs it read-only
	runtimeOther    = "other"    // not a runtime mount: the policy must allow it
)

// judgeRuntimeMount classifies a mount of the input (mountInput's map) of
// a container whose root is read-only or not against runtimeMounts: its
// "runtime" value and, unless ok, why it is not a runtime mount (what the
// rules say when the policy does not allow it either).
func judgeRuntimeMount(m map[string]any, readOnlyRoot bool) (string, string) {
	dest, typ := m["destination"].(string), m["type"].(string)
	q := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	types, ok := runtimeMounts[dest]
	if !ok {
		return runtimeOther, fmt.Sprintf("mount of %s at %s (%s) is neither a runtime default nor in the policy", q(m["source"]), q(dest), typ)
	}
	r, ok := types[typ]
	if !ok {
		return runtimeOther, fmt.Sprintf("mount at %s has type %s, the runtime's is %s", q(dest), q(typ), q(slices.Sorted(maps.Keys(types))))
	}
	var missing []string
	for _, f := range r.flags {
		if m[f] != true {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return runtimeOther, fmt.Sprintf("mount at %s lacks %s, which runtime mounts have", q(dest), q(missing))
	}
	data := m["data_set"].(map[string]any)
	same := len(data) == len(r.data)
	for _, d := range r.data {
		same = same && data[d] == true
	}
	if !same {
		want := slices.Sorted(slices.Values(r.data))
		if want == nil {
			want = []string{}
		}
		return runtimeOther, fmt.Sprintf("mount at %s has options %s, the runtime's are %s", q(dest), q(slices.Sorted(maps.Keys(data))), q(want))
	}
	if p := m["propagation"].(string); !slices.Contains(quietPropagation, p) {
		return runtimeOther, fmt.Sprintf("mount at %s has propagation %s", q(dest), q(p))
	}
	if ro := m["read_only"] == true; r.roAsRoot && ro != readOnlyRoot {
		return runtimeOther, fmt.Sprintf("mount at %s is read-only %v in a container whose root is read-only %v; containerd binds it as the root", q(dest), ro, readOnlyRoot)
	}
	if r.ro && m["read_only"] != true {
		return runtimeWritable, fmt.Sprintf("mount at %s is writable; it must be read-only in an unprivileged container", q(dest))
	}
	return runtimeOK, ""
}
