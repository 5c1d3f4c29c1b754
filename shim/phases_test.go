package shim

import (
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

func TestStartBreakdownFields(t *testing.T) {
	var b startBreakdown
	host := &agentapi.Phases{}
	host.Add("layer-attach", 5*time.Millisecond)
	host.Add("agent-create", 60*time.Millisecond)
	b.addRequest(host, []*agentapi.Phase{
		{Name: "verity-open", DurationNs: int64(3 * time.Millisecond)},
		{Name: "verity-open", DurationNs: int64(4 * time.Millisecond)}, // a second layer
		{Name: agentapi.PhaseRuncCreate, DurationNs: int64(40 * time.Millisecond)},
	}, 60*time.Millisecond, 70*time.Millisecond)
	start := &agentapi.Phases{}
	start.Add("agent-start", 25*time.Millisecond)
	b.addRequest(start, []*agentapi.Phase{
		{Name: agentapi.PhaseRuncStart, DurationNs: int64(20 * time.Millisecond)},
	}, 25*time.Millisecond, 30*time.Millisecond)

	f := b.fields()
	for key, want := range map[string]time.Duration{
		"total":                             100 * time.Millisecond,
		"runc":                              60 * time.Millisecond,
		"ours":                              40 * time.Millisecond,
		"transport":                         (60 + 25 - 3 - 4 - 40 - 20) * time.Millisecond,
		"host.layer-attach":                 5 * time.Millisecond,
		"guest.verity-open":                 7 * time.Millisecond,
		"guest." + agentapi.PhaseRuncCreate: 40 * time.Millisecond,
		"guest." + agentapi.PhaseRuncStart:  20 * time.Millisecond,
		"host.agent-start":                  25 * time.Millisecond,
	} {
		if got, ok := f[key].(time.Duration); !ok || got != want {
			t.Errorf("%s = %v, want %v", key, f[key], want)
		}
	}
}

// TestStartBreakdownLogged: a container's create and start on the agent VM
// leave one debug line with the host's and the guest's steps, runc's part
// and ours adding up to the whole.
func TestStartBreakdownLogged(t *testing.T) {
	e := newTaskEnv(t)
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	e.ctx = log.WithLogger(e.ctx, logrus.NewEntry(logger))
	e.startSandbox("pod")
	e.mustRun("c1", e.containerSpec("pod", "", "sleep", "100"))
	e.kill("c1")
	e.wait("c1", "")
	if err := e.delete("c1", ""); err != nil {
		t.Fatal(err)
	}

	var lines []*logrus.Entry
	for _, entry := range hook.AllEntries() {
		if entry.Message == startBreakdownMessage {
			lines = append(lines, entry)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d %q lines, want 1 (for c1; the sandbox runs nothing)", len(lines), startBreakdownMessage)
	}
	f := lines[0].Data
	t.Logf("breakdown: %v", f)
	if lines[0].Level != logrus.DebugLevel || f["container"] != "c1" {
		t.Errorf("breakdown at level %v for container %v, want debug for c1", lines[0].Level, f["container"])
	}
	step := func(key string) time.Duration {
		d, ok := f[key].(time.Duration)
		if !ok || d <= 0 {
			t.Errorf("%s = %v, want a positive duration; fields: %v", key, f[key], f)
		}
		return d
	}
	for _, key := range []string{
		"host.rootfs-disk", "host.stdio-open", "host.agent-create", "host.agent-start",
		"guest.policy", "guest.rootfs-device", "guest.rootfs-mount", "guest.bundle",
		"guest." + agentapi.PhaseRuncCreate, "guest." + agentapi.PhaseRuncStart,
	} {
		step(key)
	}
	total, ours, runc := step("total"), step("ours"), step("runc")
	if ours+runc != total {
		t.Errorf("ours %v + runc %v != total %v", ours, runc, total)
	}
	if want := step("guest."+agentapi.PhaseRuncCreate) + step("guest."+agentapi.PhaseRuncStart); (runc - want).Abs() > 2*logPrecision {
		t.Errorf("runc = %v, want runc-create + runc-start = %v", runc, want)
	}
}
