package guestspec

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// criUpdate is what containerd's CRI plugin sends for
// UpdateContainerResources: the container's whole resources section.
const criUpdate = `{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}],` +
	`"memory":{"limit":67108864,"swap":67108864},"cpu":{"shares":512,"quota":50000,"period":100000},` +
	`"pids":{"limit":100},"blockIO":{"weight":10,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1}]},` +
	`"hugepageLimits":[{"pageSize":"2MB","limit":0}],"unified":{"memory.high":"50000000","memory.oom.group":"1"}}`

func TestRewriteResources(t *testing.T) {
	out, notes, err := RewriteResources([]byte(criUpdate))
	if err != nil {
		t.Fatal(err)
	}
	var got specs.LinuxResources
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	i := func(v int64) *int64 { return &v }
	u := func(v uint64) *uint64 { return &v }
	want := specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: i(64 << 20), Swap: i(64 << 20)},
		CPU:     &specs.LinuxCPU{Shares: u(512), Quota: i(50000), Period: u(100000)},
		Pids:    &specs.LinuxPids{Limit: i(100)},
		Unified: map[string]string{"memory.high": "50000000", "memory.oom.group": "1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("runc gets %s", out)
	}
	if len(notes) != 3 || !strings.Contains(notes[0], "device rules left unchanged (2 given)") {
		t.Errorf("notes %q", notes)
	}
	if out, notes, err := RewriteResources([]byte(`{}`)); err != nil || string(out) != `{}` || len(notes) != 0 {
		t.Errorf("empty update: %s %q %v", out, notes, err)
	}
}

func TestRewriteResourcesRefuses(t *testing.T) {
	for _, tc := range []struct{ raw, wantErr string }{
		{``, "no resources given"},
		{`null`, "resources are null"},
		{`{"memory":{"limit":"64M"}}`, "parse resources"},
		{`{"memory":`, "parse resources"},
		{`[1]`, "parse resources"},
		{`{} {}`, "trailing data"},
		{`{"unified":{"cgroup.procs":"1"}}`, `"cgroup.procs" is a cgroup core file`},
		{`{"unified":{"cgroup.freeze":"1"}}`, `"cgroup.freeze" is a cgroup core file`},
		{`{"unified":{"../memory.max":"1"}}`, `"../memory.max" is not a cgroup controller file`},
		{`{"unified":{"memory":"1"}}`, `"memory" is not a cgroup controller file`},
		{`{"unified":{"Memory.max":"1"}}`, `controller name "Memory"`},
	} {
		_, _, err := RewriteResources([]byte(tc.raw))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%q: %v, want %q", tc.raw, err, tc.wantErr)
		}
	}
}

// FuzzRewriteResources feeds arbitrary bytes as an update's resources:
// never a panic, and what runc gets parses, names no device and writes no
// cgroup core file; rewriting it again changes nothing.
func FuzzRewriteResources(f *testing.F) {
	f.Add([]byte(criUpdate))
	f.Add([]byte(`{"unified":{"cgroup.procs":"1"}}`))
	f.Add([]byte(`{"memory":{"limit":-1},"cpu":{"cpus":"0-1"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		out, _, err := RewriteResources(raw)
		if err != nil {
			return
		}
		var r specs.LinuxResources
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("runc would get %q: %v", out, err)
		}
		if len(r.Devices) > 0 || r.BlockIO != nil || len(r.HugepageLimits) > 0 || len(r.Rdma) > 0 || r.Network != nil {
			t.Fatalf("host devices survived: %s", out)
		}
		for k := range r.Unified {
			if CheckUnifiedKey(k) != nil || strings.HasPrefix(k, "cgroup.") || slices.Contains([]byte(k), '/') {
				t.Fatalf("unified key %q survived", k)
			}
		}
		again, _, err := RewriteResources(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("second rewrite of %s: %s %v", out, again, err)
		}
	})
}
