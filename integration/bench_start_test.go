package integration

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// BenchmarkContainerStart measures, per pod, the start of its first
// container (crictl create + start, after runp) and where it went, from the
// breakdown the shim logs at debug level: the shim's steps (host.*), the
// steps the agent timed in the guest (guest.*), and of the whole, runc's
// create and start in the guest against the rest, which is ours. Metrics
// (per container, same run): runp-ms (the pod's boot before it),
// create+start-ms as crictl sees it, shim-ms
// (the shim's Create and Start), ours-ms, runc-ms, ours/runc, and each
// step in ms; the same, prefixed second:, for a second container of the
// same pod (layers attached, code paths warm).
func BenchmarkContainerStart(b *testing.B) {
	s := newSuite(b, handlerSpec{name: contrastHandler})
	// first is the pod's first container, the start that follows runp;
	// second another container of the same pod, for comparison.
	first, second := &startSums{steps: map[string]time.Duration{}}, &startSums{steps: map[string]time.Duration{}}
	var runp time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		begin := time.Now()
		pod, err := s.cri.RunPod(s.ctx, harness.PodConfig{Name: fmt.Sprintf("start%d", i), Handler: contrastHandler})
		if err != nil {
			b.Fatalf("runp: %v", err)
		}
		runp += time.Since(begin)
		b.StartTimer()
		c1 := first.start(b, s, pod, "main")
		b.StopTimer()
		c2 := second.start(b, s, pod, "second")
		for _, c := range []string{c1, c2} {
			if err := s.cri.StopContainer(s.ctx, c, time.Second); err != nil {
				b.Fatal(err)
			}
		}
		s.stopAndRemovePod(b, pod)
		b.StartTimer()
	}
	// what the pod's boot costs: work moved off the first container's
	// start must not move into it
	b.ReportMetric(float64(runp)/float64(time.Millisecond)/float64(b.N), "runp-ms")
	first.report(b, "")
	second.report(b, "second:")
}

// startSums adds up container starts: as crictl saw them, and the shim's
// breakdown of each.
type startSums struct {
	crictl time.Duration
	steps  map[string]time.Duration
	n      int
}

// start creates and starts a container in pod, timed, and adds its
// breakdown; it returns the container's id.
func (t *startSums) start(b *testing.B, s *suite, pod *harness.Pod, name string) string {
	begin := time.Now()
	c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{Name: name, Command: []string{"sleep", "100000"}})
	if err != nil {
		b.Fatalf("create %s: %v", name, err)
	}
	if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	t.crictl += time.Since(begin)
	steps, err := s.c.StartBreakdown(c.ID)
	if err != nil {
		b.Fatal(err)
	}
	for k, v := range steps {
		t.steps[k] += v
	}
	t.n++
	return c.ID
}

// report reports the averages, each metric's unit prefixed with prefix.
func (t *startSums) report(b *testing.B, prefix string) {
	if t.n == 0 {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(t.n) }
	b.ReportMetric(ms(t.crictl), prefix+"create+start-ms")
	b.ReportMetric(ms(t.steps["total"]), prefix+"shim-ms")
	b.ReportMetric(ms(t.steps["ours"]), prefix+"ours-ms")
	b.ReportMetric(ms(t.steps["runc"]), prefix+"runc-ms")
	if t.steps["runc"] > 0 {
		b.ReportMetric(float64(t.steps["ours"])/float64(t.steps["runc"]), prefix+"ours/runc")
	}
	keys := make([]string, 0, len(t.steps))
	for k := range t.steps {
		if strings.HasPrefix(k, "host.") || strings.HasPrefix(k, "guest.") || k == "transport" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.ReportMetric(ms(t.steps[k]), prefix+k+"-ms")
	}
}
