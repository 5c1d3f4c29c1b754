package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// vsocksourceImage is busybox with integration/vsocksource at /bin.
const vsocksourceImage = "localhost/contrast-test/vsocksource:1"

// vsocksourcePort is the guest vsock port vsocksource serves in
// BenchmarkLogPath: unprivileged (above 1023), none of the agent's.
const vsocksourcePort = 5201

// BenchmarkLogPath measures a container's stdout path in a contrast-cc pod
// (process → pipe → agent → vsock stream → shim → containerd's FIFO) against
// the raw vsock transport of the same pod in the same run: the same guest
// program writes the same bytes in the same chunks once to its stdout (an
// exec whose FIFOs ctr reads) and once to a plain vsock connection the
// benchmark opens through the pod's hybrid vsock socket, served by the same
// shim's vhost-user-vsock back-end. Both figures run from the first byte
// read on the host to the last, so neither counts process start-up.
// Metrics: log-MB/s, vsock-MB/s and log/vsock (issue 18's target: >= 0.5).
func BenchmarkLogPath(b *testing.B) {
	// Pairs of 8 MiB transfers, raw and log in turn, so that both see the
	// same load on a shared machine.
	const size, pairs = 8 << 20, 4
	s := newSuite(b, handlerSpec{name: contrastHandler})
	importVsocksourceImage(b, s)
	pod := s.runPod(b, contrastHandler, "logpath-bench")
	srv := s.startWith(b, pod, harness.ContainerConfig{
		Name: "source", Image: vsocksourceImage,
		Command: []string{"vsocksource", "-listen", strconv.Itoa(vsocksourcePort), "-bytes", strconv.Itoa(size)},
	})
	hybrid := filepath.Join(s.c.ShimState, "k8s.io", pod.ID, "sockets", "vsock.sock")
	for deadline := time.Now().Add(time.Minute); !strings.Contains(s.logs(b, srv), "listening on vsock port"); {
		if time.Now().After(deadline) {
			out, errOut, _ := s.cri.Logs(s.ctx, srv.ID)
			b.Fatalf("vsocksource did not listen within a minute; its log: %s%s", out, errOut)
		}
		time.Sleep(100 * time.Millisecond)
	}

	var logTook, rawTook time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range pairs {
			d, err := readGuestVsock(s.ctx, hybrid, vsocksourcePort, size)
			if err != nil {
				b.Fatalf("raw vsock stream: %v\nsource's log: %s", err, s.logs(b, srv))
			}
			rawTook += d
			d, err = readExecStdout(s.ctx, s.c, srv.ID, fmt.Sprintf("logpath-%d-%d", i, j), size,
				"vsocksource", "-bytes", strconv.Itoa(size))
			if err != nil {
				b.Fatalf("log path: %v", err)
			}
			logTook += d
		}
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * pairs * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(logTook), "log-MB/s")
	b.ReportMetric(mbps(rawTook), "vsock-MB/s")
	b.ReportMetric(mbps(logTook)/mbps(rawTook), "log/vsock")
}

// BenchmarkExecPath measures the round trip of `crictl exec <c> true` in a
// contrast-cc pod against the time the guest agent itself saw its `runc
// exec` take (from starting runc to the process's exit, which the shim logs
// at debug level for every exec), exec by exec in the same run: the
// difference is what the host and the protocol add. For scale it also
// times, in a runc pod of the same containerd, crictl exec and a plain
// `runc exec` of the same container on the host (their difference is what
// crictl and containerd add on their own, whatever the runtime).
// Metrics (medians): contrast-exec-ms, guest-runc-exec-ms,
// contrast-added-ms (issue 18's target: <= 25), runc-crictl-exec-ms,
// runc-exec-ms and runc-crictl-added-ms.
func BenchmarkExecPath(b *testing.B) {
	const rounds = 15
	s := newSuite(b, handlerSpec{name: contrastHandler})
	// the shim's debug lines break each exec down
	b.Cleanup(func() { keepLog(b, s.c.Log) })
	ctrs := map[string]*harness.Container{}
	for _, h := range handlers {
		pod := s.runPod(b, h, "execpath-bench")
		ctrs[h] = s.startContainer(b, pod, "sleeper", "sleep", "100000")
	}
	crictlExec := func(id string) time.Duration {
		begin := time.Now()
		r, err := s.cri.Exec(s.ctx, id, false, "true")
		took := time.Since(begin)
		if err != nil || r.ExitCode != 0 {
			b.Fatalf("crictl exec true: exit %d, %v", r.ExitCode, err)
		}
		return took
	}
	// warm both paths up: the first exec pages in runc and the tools
	for _, h := range handlers {
		crictlExec(ctrs[h].ID)
	}
	runcRoot := filepath.Join(s.c.RuncRoot, "k8s.io")
	var contrast, guest, added, runcCrictl, runcPlain, runcAdded []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for range rounds {
			seen := len(s.c.GuestExecTimes(ctrs[contrastHandler].ID))
			rt := crictlExec(ctrs[contrastHandler].ID)
			times := s.c.GuestExecTimes(ctrs[contrastHandler].ID)
			if len(times) != seen+1 {
				b.Fatalf("the shim logged %d guest runc exec times for one exec (want 1); is its log_level debug?", len(times)-seen)
			}
			g := times[len(times)-1]
			contrast, guest, added = append(contrast, rt), append(guest, g), append(added, rt-g)

			rt = crictlExec(ctrs["runc"].ID)
			begin := time.Now()
			if out, err := exec.CommandContext(s.ctx, s.c.Tools().Runc, "--root", runcRoot, "exec", ctrs["runc"].ID, "true").CombinedOutput(); err != nil {
				b.Fatalf("runc exec on the host: %v\n%s", err, out)
			}
			plain := time.Since(begin)
			runcCrictl, runcPlain, runcAdded = append(runcCrictl, rt), append(runcPlain, plain), append(runcAdded, rt-plain)
		}
	}
	b.StopTimer()
	// the agent's console log has its side of each exec (request and
	// policy durations)
	if dir := os.Getenv("CONTRAST_TEST_ARTIFACTS"); dir != "" {
		if data, err := os.ReadFile(filepath.Join(s.c.ShimState, "k8s.io", ctrs[contrastHandler].Pod.ID, "console.log")); err == nil {
			_ = os.WriteFile(filepath.Join(dir, b.Name()+"-console.log"), data, 0o644)
		}
	}
	ms := func(ds []time.Duration) float64 { return float64(median(ds).Microseconds()) / 1000 }
	b.ReportMetric(ms(contrast), "contrast-exec-ms")
	b.ReportMetric(ms(guest), "guest-runc-exec-ms")
	b.ReportMetric(ms(added), "contrast-added-ms")
	b.ReportMetric(ms(runcCrictl), "runc-crictl-exec-ms")
	b.ReportMetric(ms(runcPlain), "runc-exec-ms")
	b.ReportMetric(ms(runcAdded), "runc-crictl-added-ms")
}

// readGuestVsock connects to a guest vsock port through a hybrid vsock
// socket (`CONNECT <port>` → `OK <port>`), reads until EOF and returns the
// time from the first byte to the last; it fails unless size bytes came.
func readGuestVsock(ctx context.Context, hybrid string, port, size int) (time.Duration, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", hybrid)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return 0, err
	}
	r := bufio.NewReaderSize(conn, 256<<10)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		return 0, fmt.Errorf("connect to guest port %d: %q, %v", port, line, err)
	}
	return timedRead(r, size)
}

// readExecStdout runs cmd as an exec in container id through ctr, whose
// FIFOs it reads, and returns the time from the first byte of its stdout to
// the last; it fails unless size bytes came.
func readExecStdout(ctx context.Context, c *harness.Containerd, id, execID string, size int, cmd ...string) (time.Duration, error) {
	args := append([]string{"--address", c.Socket, "--namespace", "k8s.io", "task", "exec", "--exec-id", execID, id}, cmd...)
	ctr := exec.CommandContext(ctx, c.Tools().Ctr, args...)
	var stderr strings.Builder
	ctr.Stderr = &stderr
	out, err := ctr.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := ctr.Start(); err != nil {
		return 0, err
	}
	d, rerr := timedRead(bufio.NewReaderSize(out, 256<<10), size)
	if err := ctr.Wait(); err != nil {
		return 0, fmt.Errorf("ctr task exec: %v\n%s", err, stderr.String())
	}
	return d, rerr
}

// timedRead reads r to EOF and returns the time from the first byte to the
// last; it fails unless exactly size bytes came.
func timedRead(r io.Reader, size int) (time.Duration, error) {
	buf := make([]byte, 256<<10)
	var first time.Time
	total := 0
	for {
		n, err := r.Read(buf)
		if n > 0 && first.IsZero() {
			first = time.Now()
		}
		total += n
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("after %d bytes: %w", total, err)
		}
	}
	took := time.Since(first)
	if total != size {
		return 0, fmt.Errorf("read %d bytes, want %d", total, size)
	}
	return took, nil
}

// importVsocksourceImage builds integration/vsocksource statically and
// imports busybox with it at /bin/vsocksource.
func importVsocksourceImage(b *testing.B, s *suite) {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "vsocksource")
	cmd := exec.CommandContext(s.ctx, "go", "build", "-trimpath", "-o", bin, "./vsocksource")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build integration/vsocksource: %v\n%s", err, msg)
	}
	tool, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	spec, err := harness.BusyboxSpec(vsocksourceImage, s.c.Tools().Busybox, []string{"sh"})
	if err != nil {
		b.Fatal(err)
	}
	spec.Files = append(spec.Files, harness.ImageFile{Path: "bin/vsocksource", Mode: 0o755, Data: tool})
	archive := filepath.Join(b.TempDir(), "vsocksource.tar")
	if err := harness.WriteOCIArchive(archive, spec); err != nil {
		b.Fatal(err)
	}
	if _, err := s.c.Ctr(s.ctx, "images", "import", "--local", archive); err != nil {
		b.Fatalf("import the vsocksource image: %v", err)
	}
}
