package shim

import (
	"time"

	"github.com/containerd/log"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// startBreakdownMessage is the message of the debug line that shows, once
// per container, where its create and start spent their time.
const startBreakdownMessage = "container start breakdown"

// logPrecision is what the breakdown's durations are rounded to.
const logPrecision = 10 * time.Microsecond

// startBreakdown is where a container's create and start spent their time:
// the shim's own steps, the agent round trips, and the steps the agent
// timed in the guest and handed back. Of it, runc's create and start in
// the guest are the container runtime's own work; the rest is ours.
type startBreakdown struct {
	host  []*agentapi.Phase
	guest []*agentapi.Phase
	// rpc is the time of the agent round trips (CreateContainer,
	// StartContainer), of which the guest's phases are a part.
	rpc time.Duration
	// total is the time of the shim's Create and Start of the container.
	total time.Duration
}

// addRequest adds a create's or start's steps: the shim's (recorded in
// host), the agent's, and the round trip and the whole request as the shim
// timed them.
func (b *startBreakdown) addRequest(host *agentapi.Phases, guest []*agentapi.Phase, rpc, total time.Duration) {
	b.host = append(b.host, host.List()...)
	b.guest = append(b.guest, guest...)
	b.rpc += rpc
	b.total += total
}

// runc is the time runc's create and start took in the guest.
func (b *startBreakdown) runc() time.Duration {
	var d time.Duration
	for _, p := range b.guest {
		if p.Name == agentapi.PhaseRuncCreate || p.Name == agentapi.PhaseRuncStart {
			d += p.Duration()
		}
	}
	return d
}

// fields is the breakdown as log fields: total, ours (total less runc's),
// runc, transport (the round trips less what the guest timed), and each
// step as host.<name> or guest.<name>, a step done once per layer summed.
func (b *startBreakdown) fields() log.Fields {
	f := log.Fields{}
	var guestSum time.Duration
	add := func(prefix string, list []*agentapi.Phase) {
		for _, p := range list {
			key := prefix + p.Name
			prev, _ := f[key].(time.Duration)
			f[key] = prev + p.Duration()
			if prefix == "guest." {
				guestSum += p.Duration()
			}
		}
	}
	add("host.", b.host)
	add("guest.", b.guest)
	f["transport"] = b.rpc - guestSum
	for k, v := range f {
		f[k] = v.(time.Duration).Round(logPrecision)
	}
	// rounded first, so that ours and runc add up to total in the log
	total, runc := b.total.Round(logPrecision), b.runc().Round(logPrecision)
	f["total"] = total
	f["runc"] = runc
	f["ours"] = total - runc
	return f
}
