package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// kubeBenchSamples is how many pods each figure is the median of.
const kubeBenchSamples = 10

// BenchmarkKubePodReady measures, on one node and in the same run, the
// time from `kubectl apply` of a one-container pod to the pod being Ready
// (`kubectl wait` returns), for runc and contrast-cc, and beside it the
// runtime's own share: the same pod started straight through CRI (crictl
// runp + create + start) on a second containerd instance without a
// kubelet (the node's kubelet would stop a sandbox it does not know). The
// difference of the medians is the kubelet's share (its sync loop, PLEG
// relist, status updates). Metrics, medians of kubeBenchSamples pods
// whatever b.N: apply-ready-ms, cri-ms, kubelet-share-ms.
func BenchmarkKubePodReady(b *testing.B) {
	ks := newKubeSuite(b, handlerSpec{name: contrastHandler})
	bare := newSuite(b, handlerSpec{name: contrastHandler})
	for _, rc := range kubeHandlers {
		b.Run(rc, func(b *testing.B) {
			var ready, cri []time.Duration
			for i := range max(b.N, kubeBenchSamples) {
				name := fmt.Sprintf("bench-%s-%d", rc, i)
				begin := time.Now()
				ks.apply(b, podSpec(name, rc, busybox("app", "exec sleep 3600")))
				ks.wait(b, "pod/"+name, "condition=Ready", 3*time.Minute)
				ready = append(ready, time.Since(begin))
				ks.kubectl(b, "delete", "pod", name, "--wait=true", "--grace-period=1", "--timeout=2m")

				begin = time.Now()
				pod, err := bare.cri.RunPod(bare.ctx, harness.PodConfig{Name: name, Handler: rc})
				if err != nil {
					b.Fatalf("runp: %v", err)
				}
				c, err := bare.cri.CreateContainer(bare.ctx, pod, harness.ContainerConfig{Name: "app", Command: []string{"sleep", "3600"}})
				if err != nil {
					b.Fatalf("create: %v", err)
				}
				if err := bare.cri.StartContainer(bare.ctx, c.ID); err != nil {
					b.Fatalf("start: %v", err)
				}
				cri = append(cri, time.Since(begin))
				if err := bare.cri.StopPod(bare.ctx, pod.ID); err != nil {
					b.Fatal(err)
				}
				if err := bare.cri.RemovePod(bare.ctx, pod.ID); err != nil {
					b.Fatal(err)
				}
			}
			r, c := median(ready), median(cri)
			b.ReportMetric(float64(r.Milliseconds()), "apply-ready-ms")
			b.ReportMetric(float64(c.Milliseconds()), "cri-ms")
			b.ReportMetric(float64((r - c).Milliseconds()), "kubelet-share-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
