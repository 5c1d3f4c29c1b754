package enforce

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Every field of the OCI runtime spec a host request can carry has one
// treatment here, keyed by its JSON path ("[]" for a slice element or a
// map value). A field the table does not know, or one it refuses, that is
// set in a request makes Input fail naming the field, so a field added to
// the runtime-spec library cannot silently widen what the policy allows:
// TestSpecFieldsCovered walks the library's types and fails until the new
// field is given a treatment here.
type treatment int

const (
	// descend: the rules of the field's own fields apply.
	descend treatment = iota + 1
	// judged: Input hands the field to the rules, or checks it itself.
	judged
	// rewritten: the agent replaces or drops the field before runc reads
	// it (agent/guestspec), so what the host sent never takes effect.
	rewritten
	// free: the field cannot weaken isolation inside the VM (resource
	// limits the host, which runs the VM, controls anyway).
	free
	// refused: the field must be absent or empty.
	refused
)

// specFields are the treatments of the fields of specs.Spec, by JSON path.
var specFields = map[string]treatment{
	"ociVersion": free,
	// The process has fields of its own: processFields.
	"process":              judged,
	"root":                 descend,
	"root.path":            rewritten,
	"root.readonly":        judged,
	"hostname":             rewritten,
	"domainname":           rewritten,
	"mounts":               descend,
	"mounts[].destination": judged,
	"mounts[].type":        judged,
	"mounts[].source":      judged,
	"mounts[].options":     judged,
	// Idmapped mounts: the mount's files would belong to other ids.
	"mounts[].uidMappings": refused,
	"mounts[].gidMappings": refused,
	"hooks":                rewritten,
	"annotations":          judged,
	"linux":                descend,
	"solaris":              refused,
	"windows":              refused,
	"vm":                   refused,
	"zos":                  refused,
	"freebsd":              refused,

	"linux.uidMappings":       judged,
	"linux.gidMappings":       judged,
	"linux.sysctl":            judged,
	"linux.resources":         descend,
	"linux.resources.devices": judged,
	// Limits of the container's share of the VM: the host sizes the VM.
	"linux.resources.memory":         free,
	"linux.resources.cpu":            free,
	"linux.resources.pids":           free,
	"linux.resources.network":        free,
	"linux.resources.blockIO":        rewritten,
	"linux.resources.hugepageLimits": rewritten,
	"linux.resources.rdma":           rewritten,
	// The agent refuses keys outside the limit controllers
	// (guestspec.CheckUnifiedKey).
	"linux.resources.unified": free,
	"linux.cgroupsPath":       rewritten,
	"linux.namespaces":        judged,
	"linux.devices":           judged,
	"linux.netDevices":        refused,
	"linux.seccomp":           judged,
	"linux.rootfsPropagation": judged,
	"linux.maskedPaths":       judged,
	"linux.readonlyPaths":     judged,
	"linux.mountLabel":        rewritten,
	"linux.intelRdt":          rewritten,
	"linux.memoryPolicy":      refused,
	"linux.personality":       refused,
	"linux.timeOffsets":       refused,
}

// processFields are the treatments of the fields of specs.Process, the
// process of a container and of an exec alike.
var processFields = map[string]treatment{
	"terminal":    judged,
	"consoleSize": free, // the terminal's size
	"user":        descend,
	"user.uid":    judged,
	"user.gid":    judged,
	// CRI never sets a umask; runc's default (0022) is the image's world.
	"user.umask":          refused,
	"user.additionalGids": judged,
	"user.username":       refused,
	"args":                judged,
	"commandLine":         refused,
	"env":                 judged,
	"cwd":                 judged,
	"capabilities":        judged,
	"rlimits":             judged,
	"noNewPrivileges":     judged,
	"apparmorProfile":     rewritten,
	"oomScoreAdj":         judged,
	"scheduler":           refused,
	"selinuxLabel":        rewritten,
	"ioPriority":          refused,
	"execCPUAffinity":     refused,
}

// checkFields walks v (a decoded spec or process) and fails for the first
// set field, in path order, that fields does not know or refuses.
func checkFields(v any, fields map[string]treatment, prefix string) error {
	var bad []string
	walkSet(reflect.ValueOf(v), "", fields, &bad)
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("%s%s", prefix, bad[0])
}

func walkSet(v reflect.Value, path string, fields map[string]treatment, bad *[]string) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			fv := v.Field(i)
			if !f.IsExported() || fv.IsZero() || isEmpty(fv) {
				continue
			}
			p := joinPath(path, jsonName(f))
			switch tr, ok := fields[p]; {
			case !ok:
				*bad = append(*bad, fmt.Sprintf("%s: a field the policy does not know; it must be absent", p))
			case tr == refused:
				*bad = append(*bad, fmt.Sprintf("%s: must be absent in the pod VM", p))
			case tr == descend:
				walkSet(fv, p, fields, bad)
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			walkSet(v.Index(i), path+"[]", fields, bad)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			walkSet(it.Value(), path+"[]", fields, bad)
		}
	}
}

// isEmpty: an empty slice or map is as good as none.
func isEmpty(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Slice, reflect.Map:
		return v.Len() == 0
	}
	return false
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// jsonName is the field's name in JSON, as encoding/json reads it.
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}
