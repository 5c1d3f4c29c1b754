package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// volumeBenchSamples is how many ConfigMap updates the update latency is
// the median of (each waits for the kubelet's next sync, up to 10 s).
const volumeBenchSamples = 5

// BenchmarkKubeVolumeUpdate measures, for runc and contrast-cc in the same
// run, how long a ConfigMap update takes from the kubelet's write on the
// host to a watcher in the container seeing it (median of
// volumeBenchSamples updates of a 1 MiB ConfigMap), and for contrast-cc
// what the ConfigMap's copy costs the VM: the guest's used memory
// (MemTotal - MemAvailable) with the 1 MiB ConfigMap, less the same VM's
// once the ConfigMap shrank to one byte. Metrics: update-ms, vm-cost-KiB.
func BenchmarkKubeVolumeUpdate(b *testing.B) {
	ks := newKubeSuite(b, handlerSpec{name: contrastHandler})
	configMap := func(name string, size int, stamp int) string {
		return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  stamp: \"%d\"\n  blob: %q\n", name, stamp, strings.Repeat("x", size))
	}
	// Server-side apply: a client-side apply would keep the whole object
	// in an annotation, which may not exceed 256 KiB.
	applyCM := func(manifest string) {
		if out, err := ks.k.KubectlStdin(ks.ctx, strings.NewReader(manifest), "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
			b.Fatalf("kubectl apply --server-side: %v\n%s%s", err, out, cmdErrText(err))
		}
	}
	pod := func(name, rc, cm string) string {
		return podSpec(name, rc, busybox("app", "exec sleep 3600", "volumeMounts: [{name: cm, mountPath: /etc/cm}]")) +
			fmt.Sprintf("  volumes:\n  - {name: cm, configMap: {name: %s}}\n", cm)
	}
	usedKiB := func(name string) int {
		out := ks.kubectl(b, "exec", name, "--", "cat", "/proc/meminfo")
		var total, avail int
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			v, _ := strconv.Atoi(f[1])
			switch f[0] {
			case "MemTotal:":
				total = v
			case "MemAvailable:":
				avail = v
			}
		}
		return total - avail
	}
	for _, rc := range kubeHandlers {
		b.Run(rc, func(b *testing.B) {
			cm, name := "bench-cm-"+rc, "bench-vol-"+rc
			applyCM(configMap(cm, 1<<20-64, 0))
			ks.apply(b, pod(name, rc, cm))
			ks.wait(b, "pod/"+name, "condition=Ready", 3*time.Minute)
			uid := ks.kubectl(b, "get", "pod", name, "-o", "jsonpath={.metadata.uid}")
			hostStamp := filepath.Join(ks.k.KubeletRoot, "pods", uid, "volumes", "kubernetes.io~configmap", "cm", "stamp")
			var updates []time.Duration
			for i := 1; i <= max(b.N, volumeBenchSamples); i++ {
				want := strconv.Itoa(i)
				watcher, err := ks.k.StartKubectlSession(ks.ctx, "exec", name, "--", "sh", "-c",
					"until [ \"$(cat /etc/cm/stamp)\" = "+want+" ]; do sleep 0.02; done; echo seen")
				if err != nil {
					b.Fatal(err)
				}
				time.Sleep(time.Second)
				applyCM(configMap(cm, 1<<20-64, i))
				deadline := time.Now().Add(3 * time.Minute)
				for {
					if got, _ := os.ReadFile(hostStamp); string(got) == want {
						break
					}
					if time.Now().After(deadline) {
						b.Fatal("the kubelet did not write the update")
					}
					time.Sleep(10 * time.Millisecond)
				}
				onHost := time.Now()
				if err := watcher.WaitOutput("seen", time.Minute); err != nil {
					b.Fatal(err)
				}
				updates = append(updates, time.Since(onHost))
				watcher.Kill()
			}
			b.ReportMetric(float64(median(updates).Microseconds())/1000, "update-ms")
			if rc != "runc" {
				// The same VM before and after the ConfigMap shrinks to
				// one byte: what its copy took.
				withBlob := usedKiB(name)
				last := strconv.Itoa(len(updates) + 1)
				applyCM(configMap(cm, 1, len(updates)+1))
				if _, err := ks.k.Kubectl(ks.ctx, "exec", name, "--", "sh", "-c",
					"i=0; until [ \"$(cat /etc/cm/stamp)\" = "+last+" ]; do i=$((i+1)); [ $i -lt 6000 ] || exit 1; sleep 0.05; done"); err != nil {
					b.Fatalf("the shrunk ConfigMap did not arrive: %v", err)
				}
				b.ReportMetric(float64(withBlob-usedKiB(name)), "vm-cost-KiB")
			}
			ks.kubectl(b, "delete", "pod", name, "--wait=true", "--grace-period=1", "--timeout=2m")
			ks.kubectl(b, "delete", "configmap", cm)
			b.ReportMetric(0, "ns/op")
		})
	}
}
