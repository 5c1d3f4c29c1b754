package agent

import (
	"context"
	"sync"
	"time"
)

// The guest's phases that are runc's own work, not the agent's: a
// container's start costs the runtime what is left.
const (
	PhaseRuncCreate = "runc-create"
	PhaseRuncStart  = "runc-start"
)

// Phases records the timed steps of one request, in the order they end.
// A nil *Phases records nothing, so code that may run without one (tests,
// requests nobody times) calls it unconditionally.
type Phases struct {
	mu   sync.Mutex
	list []*Phase
}

// Add records a step that took d.
func (p *Phases) Add(name string, d time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = append(p.list, &Phase{Name: name, DurationNs: d.Nanoseconds()})
}

// Since records a step that began at begin and ends now, and returns now:
// the begin of the next step.
func (p *Phases) Since(name string, begin time.Time) time.Time {
	now := time.Now()
	p.Add(name, now.Sub(begin))
	return now
}

// List returns the steps recorded so far.
func (p *Phases) List() []*Phase {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*Phase(nil), p.list...)
}

// Duration is the step's duration.
func (x *Phase) Duration() time.Duration { return time.Duration(x.GetDurationNs()) }

type phasesKey struct{}

// WithPhases returns a context whose request steps are recorded in p.
func WithPhases(ctx context.Context, p *Phases) context.Context {
	return context.WithValue(ctx, phasesKey{}, p)
}

// PhasesFrom returns the recorder of ctx's request, or nil (which records
// nothing).
func PhasesFrom(ctx context.Context) *Phases {
	p, _ := ctx.Value(phasesKey{}).(*Phases)
	return p
}
