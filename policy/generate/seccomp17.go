package generate

import (
	"encoding/json"
	"fmt"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// containerd 1.7's CRI renders RuntimeDefault from an older profile than
// 2.x's. containerd 1.7's module cannot be a dependency beside v2, so the
// 1.7 rendering is derived here from 2.x's by what differs between the two
// releases' contrib/seccomp (read at v1.7.35 and v2.4.2; on linux/amd64,
// the pod VM's platform). TestRuntimeDefaultSeccompMatchesContainerd holds
// the result to a rendering captured from a real containerd 1.7.

// syscallsNewerThan17 are allowed by 2.x's profile and unknown to 1.7's
// (kernels 6.8 to 6.13).
var syscallsNewerThan17 = []string{
	"getxattrat", "listmount", "listxattrat", "lsm_get_self_attr", "lsm_list_modules",
	"lsm_set_self_attr", "mseal", "removexattrat", "setxattrat", "statmount", "uretprobe",
}

// ioUring17 are allowed by 1.7's profile and not by 2.x's; 1.7 lists them
// right after io_submit.
var ioUring17 = []string{"io_uring_enter", "io_uring_register", "io_uring_setup"}

// socketRules17 are 1.7's socket(2) rules: every domain but AF_ALG and
// AF_VSOCK, as three one-sided comparisons (2.x lists the allowed domains).
func socketRules17() []specs.LinuxSyscall {
	rule := func(value uint64, op specs.LinuxSeccompOperator) specs.LinuxSyscall {
		return specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: value, Op: op}}}
	}
	return []specs.LinuxSyscall{
		rule(unix.AF_ALG, specs.OpLessThan),
		rule(unix.AF_ALG+1, specs.OpEqualTo),
		rule(unix.AF_VSOCK, specs.OpGreaterThan),
	}
}

// containerd17Profile turns containerd 2.x's RuntimeDefault rendering into
// what containerd 1.7 renders for the same container. It fails when v2 is
// not shaped as expected (a changed containerd), rather than guess.
func containerd17Profile(v2 *specs.LinuxSeccomp) (*specs.LinuxSeccomp, error) {
	raw, err := json.Marshal(v2)
	if err != nil {
		return nil, err
	}
	var p specs.LinuxSeccomp
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	var out []specs.LinuxSyscall
	sockets, allowList := -1, false
	for _, r := range p.Syscalls {
		if slices.Equal(r.Names, []string{"socket"}) && r.Action == specs.ActAllow && len(r.Args) == 1 && r.Args[0].Index == 0 {
			if sockets < 0 {
				sockets = len(out)
			}
			continue
		}
		if r.Action == specs.ActAllow && len(r.Args) == 0 && slices.Contains(r.Names, "io_submit") {
			names := slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return slices.Contains(syscallsNewerThan17, n) })
			at := slices.Index(names, "io_submit") + 1
			r.Names = slices.Insert(names, at, ioUring17...)
			allowList = true
		}
		out = append(out, r)
	}
	if sockets < 0 || !allowList {
		return nil, fmt.Errorf("containerd 2.x's RuntimeDefault profile has no socket rules or no allow-list with io_submit: cannot derive containerd 1.7's")
	}
	p.Syscalls = slices.Insert(out, sockets, socketRules17()...)
	return &p, nil
}
