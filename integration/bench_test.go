package integration

import (
	"context"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// BenchmarkPodStartup measures, per pod, the time from `crictl runp` to
// the pod being ready (runp returns) and to its first container running
// (runp + create + start), and the resident memory of the pod's shim and
// VM monitor, for runc and contrast-cc in the same run so the figures
// compare. Metrics: runp-ms, first-container-ms, shim-RSS-MiB and, for
// contrast, vmm-RSS-MiB (QEMU).
func BenchmarkPodStartup(b *testing.B) {
	for _, handler := range []string{"runc", contrastHandler} {
		b.Run(handler, func(b *testing.B) {
			var s *suite
			if handler == "runc" {
				s = newSuite(b)
			} else {
				s = newSuite(b, handlerSpec{name: handler})
			}
			var runp, first, bare time.Duration
			var shimKiB, vmmKiB int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if handler != "runc" {
					b.StopTimer()
					vm := startBareVM(b, s.env, bareSpec{name: "boot"})
					bare += vm.boot
					vm.stop()
					b.StartTimer()
				}
				begin := time.Now()
				pod, err := s.cri.RunPod(s.ctx, harness.PodConfig{Name: "bench", Handler: handler})
				if err != nil {
					b.Fatalf("runp: %v", err)
				}
				runp += time.Since(begin)
				c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{Name: "main", Command: []string{"sleep", "100000"}})
				if err != nil {
					b.Fatalf("create: %v", err)
				}
				if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
					b.Fatalf("start: %v", err)
				}
				first += time.Since(begin)
				b.StopTimer()
				tr, err := s.c.TracePod(pod.ID, c.ID)
				if err != nil {
					b.Fatal(err)
				}
				for _, p := range tr.Processes {
					m, err := harness.MemoryOf(p.PID)
					if err != nil {
						continue
					}
					kib := m.RSS
					switch name := strings.Fields(p.Cmdline)[0]; {
					case strings.Contains(name, "containerd-shim"):
						shimKiB += kib
					case strings.Contains(name, "qemu"):
						vmmKiB += kib
					}
				}
				if err := s.cri.StopContainer(s.ctx, c.ID, time.Second); err != nil {
					b.Fatal(err)
				}
				s.stopAndRemovePod(b, pod)
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(float64(runp.Milliseconds())/n, "runp-ms")
			b.ReportMetric(float64(first.Milliseconds())/n, "first-container-ms")
			b.ReportMetric(float64(shimKiB)/1024/n, "shim-RSS-MiB")
			if handler != "runc" {
				b.ReportMetric(float64(vmmKiB)/1024/n, "vmm-RSS-MiB")
				b.ReportMetric(float64(bare.Milliseconds())/n, "bare-boot-ms")
				b.ReportMetric(runp.Seconds()/bare.Seconds(), "runp/bare-boot")
			}
		})
	}
}

// BenchmarkGuestImage reports the size of the guest image a pod VM boots.
func BenchmarkGuestImage(b *testing.B) {
	env := testEnv(b)
	var total int64
	for _, f := range []string{"kernel", "initrd", "rootfs.img"} {
		st, err := os.Stat(filepath.Join(env.ImageDir, f))
		if os.IsNotExist(err) && f != "kernel" {
			continue // an image has one of initrd and rootfs.img
		}
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(st.Size())/(1<<20), f+"-MiB")
		total += st.Size()
	}
	b.ReportMetric(float64(total)/(1<<20), "image-MiB")
}

// BenchmarkExecLatency measures the round trip of `crictl exec <c> true`
// (the median of 20, including crictl's own start) in a runc pod and in a
// contrast-cc pod of the same containerd, in the same run. Metrics:
// runc-exec-ms, contrast-exec-ms and contrast/runc.
func BenchmarkExecLatency(b *testing.B) {
	const rounds = 20
	s := newSuite(b, handlerSpec{name: contrastHandler})
	ctrs := map[string]*harness.Container{}
	for _, h := range handlers {
		pod := s.runPod(b, h, "exec-bench")
		ctrs[h] = s.startContainer(b, pod, "sleeper", "sleep", "100000")
	}
	medians := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, h := range handlers {
			ds := make([]time.Duration, rounds)
			for j := range ds {
				begin := time.Now()
				r, err := s.cri.Exec(s.ctx, ctrs[h].ID, false, "true")
				ds[j] = time.Since(begin)
				if err != nil || r.ExitCode != 0 {
					b.Fatalf("crictl exec true (%s): exit %d, %v", h, r.ExitCode, err)
				}
			}
			medians[h] += median(ds)
		}
	}
	b.StopTimer()
	runc, contrast := medians["runc"]/time.Duration(b.N), medians[contrastHandler]/time.Duration(b.N)
	b.ReportMetric(float64(runc.Microseconds())/1000, "runc-exec-ms")
	b.ReportMetric(float64(contrast.Microseconds())/1000, "contrast-exec-ms")
	b.ReportMetric(contrast.Seconds()/runc.Seconds(), "contrast/runc")
}

// BenchmarkLogThroughput measures how fast a container's stdout reaches
// CRI's log: from `crictl start` of a container that writes 16 MiB of
// lines until `crictl logs` returns all of it, for runc and contrast-cc in
// the same run. Metrics: runc-log-MB/s, contrast-log-MB/s and
// contrast/runc.
func BenchmarkLogThroughput(b *testing.B) {
	const size = 16 << 20
	s := newSuite(b, handlerSpec{name: contrastHandler})
	pods := map[string]*harness.Pod{}
	for _, h := range handlers {
		pods[h] = s.runPod(b, h, "log-bench")
	}
	took := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, h := range handlers {
			b.StopTimer()
			c, err := s.cri.CreateContainer(s.ctx, pods[h], harness.ContainerConfig{
				Name:    fmt.Sprintf("writer-%d", i),
				Command: []string{"sh", "-c", fmt.Sprintf("yes %s | head -c %d", strings.Repeat("0123456789", 7), size)},
			})
			if err != nil {
				b.Fatalf("create log writer (%s): %v", h, err)
			}
			b.StartTimer()
			begin := time.Now()
			if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
				b.Fatalf("start log writer (%s): %v", h, err)
			}
			if _, err := s.cri.WaitContainerState(s.ctx, c.ID, "CONTAINER_EXITED", 5*time.Minute); err != nil {
				b.Fatalf("log writer (%s): %v", h, err)
			}
			for {
				out, _, err := s.cri.Logs(s.ctx, c.ID)
				if err != nil {
					b.Fatalf("crictl logs (%s): %v", h, err)
				}
				if len(out) == size {
					break
				}
				if len(out) > size || time.Since(begin) > 5*time.Minute {
					b.Fatalf("crictl logs (%s) has %d bytes, want %d", h, len(out), size)
				}
				time.Sleep(50 * time.Millisecond)
			}
			took[h] += time.Since(begin)
			b.StopTimer()
			if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
				b.Fatalf("crictl rm (%s): %v", h, err)
			}
			b.StartTimer()
		}
	}
	b.StopTimer()
	mbps := func(h string) float64 { return float64(size) * float64(b.N) / 1e6 / took[h].Seconds() }
	b.ReportMetric(mbps("runc"), "runc-log-MB/s")
	b.ReportMetric(mbps(contrastHandler), "contrast-log-MB/s")
	b.ReportMetric(mbps(contrastHandler)/mbps("runc"), "contrast/runc")
}

// BenchmarkTCPThroughput measures TCP throughput from the host to a pod
// over the bridge CNI network: the host sends 32 MiB to a busybox `nc`
// in the pod, which pipes them into `wc -c` and answers the count once the
// host has finished sending; the time runs from connect to that answer.
// runc and contrast-cc pods of the same containerd, in the same run.
// Metrics: runc-tcp-MB/s, contrast-tcp-MB/s and contrast/runc.
func BenchmarkTCPThroughput(b *testing.B) {
	const size = 32 << 20
	s := newSuite(b, handlerSpec{name: contrastHandler})
	addrs := map[string]string{}
	for _, h := range handlers {
		pod := s.runPod(b, h, "tcp-bench")
		st, err := s.cri.InspectPod(s.ctx, pod.ID)
		if err != nil || st.IP == "" {
			b.Fatalf("pod IP (%s): %q %v", h, st.IP, err)
		}
		// -ll: nc serves every connection, each with its own wc
		s.startContainer(b, pod, "sink", "sh", "-c", `printf '#!/bin/sh\nexec wc -c\n' > /count && chmod +x /count && exec nc -ll -p 5001 -e /count`)
		addrs[h] = net.JoinHostPort(st.IP, "5001")
		// the first connection waits for the server to listen
		if _, err := sendCounted(s.ctx, addrs[h], 1, time.Minute); err != nil {
			b.Fatalf("warm-up transfer to %s pod: %v", h, err)
		}
	}
	took := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, h := range handlers {
			d, err := sendCounted(s.ctx, addrs[h], size, 10*time.Second)
			if err != nil {
				b.Fatalf("transfer to %s pod: %v", h, err)
			}
			took[h] += d
		}
	}
	b.StopTimer()
	mbps := func(h string) float64 { return float64(size) * float64(b.N) / 1e6 / took[h].Seconds() }
	b.ReportMetric(mbps("runc"), "runc-tcp-MB/s")
	b.ReportMetric(mbps(contrastHandler), "contrast-tcp-MB/s")
	b.ReportMetric(mbps(contrastHandler)/mbps("runc"), "contrast/runc")
}

// BenchmarkLayerCache measures a pod's first container start (runp +
// create + start) with an image of one 64 MiB layer, with the node's layer
// cache empty (cold: the shim converts the layer to its dm-verity disk
// image) and holding the layer (warm), in the same run. Metrics: cold-ms,
// warm-ms and cold/warm.
func BenchmarkLayerCache(b *testing.B) {
	cache := b.TempDir()
	s := newSuite(b, handlerSpec{name: contrastHandler, edit: func(c *harness.ShimConfig) { c.LayerCache = cache }})
	const image = "localhost/contrast-test/big:1"
	spec, err := harness.BusyboxSpec(image, s.c.Tools().Busybox, []string{"sh"})
	if err != nil {
		b.Fatal(err)
	}
	// incompressible, and the same on every run
	big := make([]byte, 64<<20)
	if _, err := mathrand.NewChaCha8([32]byte{1}).Read(big); err != nil {
		b.Fatal(err)
	}
	spec.Files = append(spec.Files, harness.ImageFile{Path: "big.bin", Mode: 0o644, Data: big})
	archive := filepath.Join(b.TempDir(), "big.tar")
	if err := harness.WriteOCIArchive(archive, spec); err != nil {
		b.Fatal(err)
	}
	if _, err := s.c.Ctr(s.ctx, "images", "import", "--local", archive); err != nil {
		b.Fatalf("import %s: %v", image, err)
	}
	startOnce := func() time.Duration {
		begin := time.Now()
		pod, err := s.cri.RunPod(s.ctx, harness.PodConfig{Name: "layer-bench", Handler: contrastHandler})
		if err != nil {
			b.Fatalf("runp: %v", err)
		}
		c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{Name: "main", Image: image, Command: []string{"sleep", "100000"}})
		if err == nil {
			err = s.cri.StartContainer(s.ctx, c.ID)
		}
		if err != nil {
			b.Fatalf("first container: %v", err)
		}
		took := time.Since(begin)
		s.stopAndRemovePod(b, pod)
		return took
	}
	var cold, warm time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		entries, err := os.ReadDir(cache)
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(cache, e.Name())); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		cold += startOnce()
		warm += startOnce()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(cold.Milliseconds())/n, "cold-ms")
	b.ReportMetric(float64(warm.Milliseconds())/n, "warm-ms")
	b.ReportMetric(cold.Seconds()/warm.Seconds(), "cold/warm")
}

// sendCounted connects to addr (retrying for up to connectTimeout), sends
// size bytes, closes its sending side and reads the byte count the server
// answers; it returns the time from connect to the answer.
func sendCounted(ctx context.Context, addr string, size int, connectTimeout time.Duration) (time.Duration, error) {
	var conn net.Conn
	var err error
	deadline := time.Now().Add(connectTimeout)
	for {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err = d.DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	begin := time.Now()
	conn.SetDeadline(begin.Add(5 * time.Minute))
	chunk := make([]byte, 256<<10)
	for sent := 0; sent < size; {
		n := min(len(chunk), size-sent)
		if _, err := conn.Write(chunk[:n]); err != nil {
			return 0, fmt.Errorf("send: %w", err)
		}
		sent += n
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, fmt.Errorf("close sending side: %w", err)
	}
	answer, err := io.ReadAll(conn)
	took := time.Since(begin)
	if err != nil {
		return 0, fmt.Errorf("read the count: %w", err)
	}
	if got := strings.TrimSpace(string(answer)); got != strconv.Itoa(size) {
		return 0, fmt.Errorf("the pod counted %q bytes, want %d", got, size)
	}
	return took, nil
}

// median returns the median of ds (which it sorts).
func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	n := len(ds)
	if n%2 == 1 {
		return ds[n/2]
	}
	return (ds[n/2-1] + ds[n/2]) / 2
}
