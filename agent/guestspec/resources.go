package guestspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// RewriteResources checks the resources of an update (an OCI
// LinuxResources object as JSON, as containerd's task Update carries them)
// and returns what runc update is given, with notes on what was left out
// for the log. containerd sends the container's whole new resources
// section, device rules included.
func RewriteResources(raw []byte) (_ []byte, notes []string, _ error) {
	if len(raw) == 0 {
		return nil, nil, errors.New("no resources given")
	}
	d := json.NewDecoder(strings.NewReader(string(raw)))
	var r *specs.LinuxResources
	if err := d.Decode(&r); err != nil {
		return nil, nil, fmt.Errorf("parse resources (OCI LinuxResources as JSON): %w", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, nil, errors.New("parse resources: trailing data after the JSON object")
	}
	if r == nil {
		return nil, nil, errors.New("resources are null")
	}
	// runc update leaves device rules alone: the container keeps the ones
	// it was created with.
	if len(r.Devices) > 0 {
		notes = append(notes, fmt.Sprintf("device rules left unchanged (%d given)", len(r.Devices)))
		r.Devices = nil
	}
	// As at create (see guestspec): these name host devices or hardware.
	if r.BlockIO != nil {
		notes = append(notes, "dropped blockIO limits (they name host devices)")
		r.BlockIO = nil
	}
	if len(r.HugepageLimits) > 0 {
		notes = append(notes, "dropped hugepage limits (no hugetlb in the guest)")
		r.HugepageLimits = nil
	}
	if len(r.Rdma) > 0 {
		notes = append(notes, "dropped RDMA limits (host devices)")
		r.Rdma = nil
	}
	if r.Network != nil {
		notes = append(notes, "dropped network class and priorities (no net_cls/net_prio in the guest)")
		r.Network = nil
	}
	keys := make([]string, 0, len(r.Unified))
	for k := range r.Unified {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := CheckUnifiedKey(k); err != nil {
			return nil, nil, err
		}
	}
	out, err := json.Marshal(r)
	if err != nil {
		return nil, nil, fmt.Errorf("encode resources: %w", err)
	}
	return out, notes, nil
}

// CheckUnifiedKey admits a cgroup v2 file of a resource controller
// ("memory.high"). runc writes unified entries as files of the container's
// cgroup: the cgroup core files ("cgroup.procs", "cgroup.freeze") would
// move processes or freeze the container behind the agent's back.
func CheckUnifiedKey(k string) error {
	ctrl, file, ok := strings.Cut(k, ".")
	if !ok || ctrl == "" || file == "" || strings.ContainsAny(k, "/\x00") || k != strings.TrimSpace(k) {
		return fmt.Errorf("unified resource %q is not a cgroup controller file (<controller>.<name>)", k)
	}
	if ctrl == "cgroup" {
		return fmt.Errorf("unified resource %q is a cgroup core file, not a resource limit", k)
	}
	for _, c := range ctrl {
		if c < 'a' || c > 'z' {
			return fmt.Errorf("unified resource %q: controller name %q is not lower-case letters", k, ctrl)
		}
	}
	return nil
}
